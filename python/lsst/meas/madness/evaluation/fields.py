"""TestFields for the side-by-side evaluation: read from a dataset or simulated on the fly.

A `TestField` is one noisy field with everything the metrics need: the per-band variance the
deblenders are given, the true centres, each galaxy's noiseless isolated image on the field
grid and its catalogue row. `iter_test_fields` reads them from a TestFields dataset written
by ``madness simulate datasets`` (`lsst.meas.madness.simulation.SimulatedDataset`);
`simulate_test_fields` makes such a dataset first (SkyPy catalogue, the paper's SNR cut, BTK).
"""

from __future__ import annotations

__all__ = ["TestField", "iter_test_fields", "simulate_test_fields"]

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
        ``(n, bands, H, W)`` float32 noiseless isolated image of each galaxy on the field grid
        (the dataset's ``truth`` windows painted at ``truth_yx0``).
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
    for arrays, columns in dataset.iter_shards("fields", "truth", "truth_yx0"):
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
            isolated = paint_stamps(arrays["truth"][rows], arrays["truth_yx0"][rows],
                                    fields.shape[-2:]).astype(np.float32)
            yield TestField(field_id=offset + k, image=np.asarray(fields[k], np.float32),
                            variance=variance.copy(), isolated=isolated, catalog=table[rows], bands=bands)
            done += 1
        offset += len(fields)


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
