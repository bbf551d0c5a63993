"""TestFields for the side-by-side evaluation: read from a dataset or simulated on the fly.

A `TestField` is one noisy field with everything the metrics need: the per-band variance the
deblenders are given, the true centres, each galaxy's noiseless isolated image on the field
grid and its catalogue row. `iter_test_fields` reads them from a TestFields dataset written
by ``madness simulate datasets`` (`lsst.meas.madness.simulation.SimulatedDataset`);
`simulate_test_fields` makes such a dataset first (SkyPy catalogue, the paper's SNR cut, BTK).
"""

from __future__ import annotations

__all__ = ["TestField", "attribute_far_light", "iter_test_fields", "simulate_test_fields"]

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import MadnessValueError
from .stamps import paint_stamps

_log = logging.getLogger(__name__)

# Galaxies per square degree that pass the paper's SNR >= 10 cut in r with the calibrated
# SkyPy catalogue (paper: ~317k of ~858k per square degree).
_CUT_DENSITY_PER_DEG2 = 3.0e5


@dataclasses.dataclass(frozen=True)
class TestField:
    """One TestFields field, ready for the deblenders and the metrics.

    Attributes
    ----------
    field_id : `int`
        Index of the field in its dataset.
    image : `numpy.ndarray`
        ``(bands, H, W)`` float32 noisy field, electrons per pixel, sky subtracted.
    variance : `numpy.ndarray`
        ``(bands,)`` per-pixel variance of each band, electrons squared: the sky level
        (gain 1), the variance every method is given.
    isolated : `numpy.ndarray`
        ``(n, bands, H, W)`` float32 noiseless isolated image of each galaxy on the field grid:
        the dataset's ``truth`` windows painted at ``truth_yx0``, plus the light each galaxy
        has beyond its window (`attribute_far_light`), so that they add up to the noiseless
        field.
    catalog : `astropy.table.Table`
        The ``n`` galaxies' rows (CatSim columns, ``x_peak``/``y_peak``, ``snr_r``, ...).
    bands : `tuple` [`str`]
        Band of each plane.
    """

    __test__ = False  # not a pytest test class, despite its name

    field_id: int
    image: np.ndarray
    variance: np.ndarray
    isolated: np.ndarray
    catalog: object
    bands: tuple[str, ...]

    @property
    def centers_xy(self) -> np.ndarray:
        """``(n, 2)`` true centres, ``(x, y)`` pixels."""
        return np.stack([np.asarray(self.catalog["x_peak"], np.float64),
                         np.asarray(self.catalog["y_peak"], np.float64)], axis=1)

    @property
    def n_galaxies(self) -> int:
        return len(self.catalog)


def _sky_variance(dataset, bands: Sequence[str], conditions) -> np.ndarray:
    levels = (dataset.manifest.info or {}).get("sky_level") or {}
    if all(b in levels for b in bands):
        return np.array([float(levels[b]) for b in bands])
    return np.array([conditions.sky_level(b) for b in bands])


def iter_test_fields(directory, *, max_fields: int | None = None, conditions=None) -> Iterator[TestField]:
    """Yield the fields of a TestFields dataset, in order, one shard in memory at a time.

    Parameters
    ----------
    directory : path-like
        A ``testfields`` dataset directory (``manifest.json`` + shards).
    max_fields : `int`, optional
        Stop after this many fields.
    conditions : `lsst.meas.madness.simulation.LsstConditions`, optional
        Sky levels, if the manifest does not record them; SurveyCodex's by default.
    """
    from astropy.table import Table

    from ..simulation import LsstConditions, SimulatedDataset

    dataset = SimulatedDataset(directory)
    if dataset.kind != "testfields":
        raise MadnessValueError(f"{directory} holds a {dataset.kind!r} dataset, not TestFields.")
    bands = tuple(dataset.bands)
    conditions = conditions or LsstConditions.from_surveycodex(bands=bands)
    variance = _sky_variance(dataset, bands, conditions)
    done = 0
    offset = 0
    warned = False
    for arrays, columns in dataset.iter_shards("fields", "truth", "truth_yx0", "noiseless"):
        table = Table(columns)
        fields = arrays["fields"]
        field_ids = np.asarray(table["field_id"])
        for k in range(len(fields)):
            if max_fields is not None and done >= max_fields:
                return
            # field_id counts fields across shards; accept a per-shard count too.
            rows = np.flatnonzero(field_ids == offset + k)
            if len(rows) == 0:
                rows = np.flatnonzero(field_ids == k)
            if len(rows) == 0:
                raise MadnessValueError(f"No catalogue rows for field {offset + k} of {directory}.")
            truth = arrays["truth"][rows]
            isolated = paint_stamps(truth, arrays["truth_yx0"][rows], fields.shape[-2:])
            missing = _missing_flux(truth, table[rows], bands)
            if missing is None and not warned:
                _log.warning("%s has no truth_flux_fraction_<band> columns: the truth of each galaxy is its "
                             "stored window alone, without its light beyond it.", directory)
                warned = True
            if missing is not None:
                isolated = attribute_far_light(isolated, arrays["noiseless"][k], arrays["truth_yx0"][rows],
                                               truth.shape[-1], missing)
            isolated = isolated.astype(np.float32)
            yield TestField(field_id=offset + k, image=np.asarray(fields[k], np.float32),
                            variance=variance.copy(), isolated=isolated, catalog=table[rows], bands=bands)
            done += 1
        offset += len(fields)


def _missing_flux(truth: np.ndarray, table, bands: Sequence[str]) -> np.ndarray | None:
    """``(n, bands)`` flux of each galaxy beyond its stored truth window, from the catalogue's
    ``truth_flux_fraction_<band>`` (window flux over field flux; `None` if a band lacks it)."""
    if not all(f"truth_flux_fraction_{b}" in table.colnames for b in bands):
        return None
    fraction = np.stack([np.asarray(table[f"truth_flux_fraction_{b}"], np.float64) for b in bands], axis=1)
    window = truth.sum(axis=(-2, -1), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        missing = window * (1.0 / fraction - 1.0)
    return np.where(np.isfinite(missing) & (missing > 0), missing, 0.0)


def attribute_far_light(isolated: np.ndarray, noiseless: np.ndarray, yx0: np.ndarray, window: int,
                        missing: np.ndarray, *, power: float = 3.0, iterations: int = 30) -> np.ndarray:
    """Complete truncated truth images with the light beyond their windows.

    A TestFields dataset keeps each galaxy's noiseless image only in a ``window``-pixel square
    around it (65 px), but the field holds all of its light: a bright disc puts a few per cent
    of its flux, at a fraction of the sky noise per pixel, across the field. Left out of the
    truth, that light would be counted as the neighbours' own flux (the reference flux of
    eq. 19 is the field minus the true neighbours) and a deblender that models it would be
    charged with taking it. The dataset also keeps the noiseless field, so the light beyond the
    windows is known exactly, ``R = noiseless - sum(windows)``, and so is each galaxy's share
    of it (``missing``, from the catalogue's window flux fraction); only its split between
    galaxies at a pixel is not. Each pixel of ``R`` is split among the galaxies whose window does
    not cover it, in proportion to ``missing`` times ``distance ** -power`` from the galaxy's
    centre, then rows and pixels are rescaled in turn (iterative proportional fitting) so that
    each galaxy receives its ``missing`` flux and the galaxies add up to the noiseless field.
    Where one galaxy's light dominates (nearly always: the faint wings of others beyond 32 px
    are thousands of times smaller) the split is exact whatever the weights.

    Parameters
    ----------
    isolated : `numpy.ndarray`
        ``(n, bands, H, W)`` the windows painted on the field grid.
    noiseless : `numpy.ndarray`
        ``(bands, H, W)`` the noiseless field.
    yx0 : `numpy.ndarray`
        ``(n, 2)`` first pixel of each window on the grid.
    window : `int`
        Side of the windows, pixels.
    missing : `numpy.ndarray`
        ``(n, bands)`` flux of each galaxy on the field beyond its window (>= 0).
    power : `float`
        Fall-off of the initial split with distance.
    iterations : `int`
        Largest number of proportional-fitting sweeps (they stop when every galaxy has its
        ``missing`` flux to 1e-4).

    Returns
    -------
    isolated : `numpy.ndarray`
        ``(n, bands, H, W)`` float64: ``isolated`` plus each galaxy's far light.
    """
    isolated = np.asarray(isolated, np.float64)
    n, nb, height, width = isolated.shape
    missing = np.asarray(missing, np.float64).reshape(n, nb)
    far = np.clip(np.asarray(noiseless, np.float64) - isolated.sum(axis=0), 0.0, None)  # (bands, H, W)
    if not far.any() or not missing.any():
        return isolated
    yy, xx = np.mgrid[:height, :width]
    yx0 = np.asarray(yx0, np.int64).reshape(n, 2)
    centre = yx0 + window // 2
    # each galaxy's own window holds all of its light there: none of R is its
    inside = paint_stamps(np.ones((n, 1, window, window)), yx0, (height, width))[:, 0] > 0
    distance = np.hypot(yy[None] - centre[:, 0, None, None], xx[None] - centre[:, 1, None, None])
    kernel = np.where(inside, 0.0, np.maximum(distance, 1.0) ** -power)
    share = missing[:, :, None, None] * kernel[:, None]  # (n, bands, H, W)
    for _ in range(iterations):
        total = share.sum(axis=0)
        share *= np.divide(far, total, out=np.zeros_like(far), where=total > 0)[None]
        got = share.sum(axis=(2, 3))
        scale = np.divide(missing, got, out=np.ones_like(got), where=got > 0)
        if np.all(np.abs(scale - 1.0) < 1e-4):
            break
        share *= scale[:, :, None, None]
    total = share.sum(axis=0)
    share *= np.divide(far, total, out=np.zeros_like(far), where=total > 0)[None]  # pixels add up exactly
    return isolated + share


def simulate_test_fields(output, n_fields: int, seed: int, *, workers: int = 1, progress: bool = True,
                         config=None, catalog=None):
    """Simulate ``n_fields`` TestFields (paper section 2.2) into ``output`` and return the dataset.

    The catalogue is drawn with `generate_catsim_catalog` over just enough area (seeded by
    ``seed``), cut at the paper's SNR >= 10 in r, and drawn by BTK with
    `simulate_dataset` (layout and noise seeded by ``seed``). Rerunning with the same
    arguments reuses the finished dataset.

    Parameters
    ----------
    output : path-like
        Dataset directory.
    n_fields : `int`
        Number of fields (>= 1).
    seed : `int`
        Seed of the catalogue, the layout and the noise.
    workers : `int`
        Drawing processes.
    progress : `bool`
        Progress bar while drawing.
    config : `lsst.meas.madness.simulation.TestFieldsConfig`, optional
        Field layout; the paper's by default.
    catalog : `astropy.table.Table`, optional
        A CatSim-format catalogue to draw from instead of generating one (SNR cut applied).

    Returns
    -------
    dataset : `lsst.meas.madness.simulation.SimulatedDataset`
    """
    from ..simulation import TestFieldsConfig, simulate_dataset
    from ..simulation.catalog import apply_snr_cut

    if n_fields < 1:
        raise MadnessValueError(f"n_fields must be >= 1; got {n_fields}.")
    config = config or TestFieldsConfig()
    needed = n_fields * config.max_galaxies
    if catalog is not None:
        table = apply_snr_cut(catalog, 10.0)
        source = "given catalogue"
    else:
        from ..simulation.skypy_catalog import generate_catsim_catalog

        area = max(1e-4, 1.5 * needed / _CUT_DENSITY_PER_DEG2)
        while True:
            table = apply_snr_cut(generate_catsim_catalog(area, seed), 10.0)
            if len(table) >= needed or area > 1.0:
                break
            area *= 2.0
        source = f"generate_catsim_catalog(area_deg2={area:.6g}, seed={seed}) with SNR_r >= 10"
    if len(table) < needed:
        raise MadnessValueError(f"{n_fields} fields need up to {needed} galaxies; "
                                f"the catalogue has {len(table)}.")
    _log.info("Simulating %d TestFields from %d galaxies (%s)", n_fields, len(table), source)
    return simulate_dataset("testfields", table, Path(output), split="test", seed=seed, n=n_fields,
                            config=config, workers=workers, progress=progress, catalog_source=source)
