"""Simulated LSST patches in a local SQLite butler, and `pipetask run` on them (no obs_base).

What `madness demo` and ``scripts/run-patches.py`` share:

* `simulate_patch` draws one square patch of CatSim-format galaxies (SkyPy catalogue, the
  paper's SNR >= 10 cut in r) under SurveyCodex's LSST 10-year conditions, each galaxy with
  BTK's profile on its own stamp, pasted into the patch, with BTK's noise;
* `create_local_repo` makes a SQLite repository and inserts the dimension records directly
  with ``syncDimensionData`` (instrument, one physical_filter per band, skymap, tract, patches);
* `ingest_patch` puts the per-band coadds as lsst.images ``MaskedImage`` (``deepCoadd_calexp``,
  storage class ``MaskedImageV2``) and the truth catalogue (``deepCoadd_madnessTruth``,
  ``ArrowAstropy``);
* `pipetask_command` / `run_logged` run ``pipelines/madness.yaml`` in a subprocess.

Patches of one repository lie side by side along x in tract 0 of the skymap ``madness_sim``,
whose geometry (inner boxes, overlapping outer boxes) `lsst.meas.madness.skymap.SimSkyMap`
owns; the repository holds it as the ``madnessSkyMap`` dataset (run ``skymaps``), from which
the measurement sets ``detect_isPrimary``. `simulate_tract` draws one scene over all patches
and `SimulatedPatch.cutout` cuts each patch out of it, so overlapping patches hold the same
pixels and galaxies there, as real coadds do.
"""

from __future__ import annotations

__all__ = [
    "INSTRUMENT",
    "SKYMAP",
    "TRACT",
    "COADD_DATASET",
    "TRUTH_DATASET",
    "SimulatedPatch",
    "simulate_patch",
    "simulate_tract",
    "plan_patch",
    "create_local_repo",
    "ingest_patch",
    "pipeline_path",
    "pipetask_command",
    "run_logged",
    "primary_counts",
]

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .errors import MadnessValueError

INSTRUMENT = "MadnessSim"
SKYMAP = "madness_sim"
TRACT = 0
COADD_DATASET = "deepCoadd_calexp"
TRUTH_DATASET = "deepCoadd_madnessTruth"
# SNR-cut CatSim-like galaxies per square degree (measured on the SkyPy catalogue: ~86 in one
# arcmin^2 after the appendix-A cut); the catalogue area is sized from it with a margin.
_DENSITY_PER_DEG2 = 3.0e5


@dataclasses.dataclass
class SimulatedPatch:
    """One simulated patch: the noisy coadds and the truth.

    Attributes
    ----------
    bands : `tuple` [`str`, ...]
        Band of each plane (BTK's LSST order, ugrizy).
    image : `numpy.ndarray`
        ``(bands, S, S)`` float32 noisy image, electrons per pixel, sky subtracted.
    variance : `numpy.ndarray`
        ``(bands, S, S)`` float32 variance: sky level plus the noiseless source electrons (gain 1).
    stamps : `tuple` [`numpy.ndarray`, ...]
        Per galaxy, its ``(bands, h, w)`` float32 noiseless image alone, electrons per pixel, on
        its own stamp (drawn as large as GalSim's good image size, then clipped to the patch);
        zero everywhere else in the patch. `isolated_image` pastes one at full patch size.
    stamp_yx0 : `numpy.ndarray`
        ``(n, 2)`` int64 tract-frame ``(y0, x0)`` of each stamp's first pixel.
    truth : `astropy.table.Table`
        One row per galaxy: ``truth_id``, tract-frame ``x``/``y`` (pixel index of the centre),
        the catalogue's columns, ``flux_<band>`` (noiseless electrons in the patch) and
        ``blendedness_<band>`` (paper eq. 16).
    yx0 : `tuple` [`int`, `int`]
        Tract-frame ``(y, x)`` of pixel ``[0, 0]``.
    seed : `int`
        Seed of the draw.
    unit : `str`
        Unit of ``image``, ``stamps`` and the truth's ``flux_<band>`` (``variance`` is in its
        square): ``"electron"`` as drawn, ``"nJy"`` after `to_nanojansky`.
    """

    bands: tuple[str, ...]
    image: np.ndarray
    variance: np.ndarray
    stamps: tuple
    stamp_yx0: np.ndarray
    truth: object
    yx0: tuple[int, int]
    seed: int
    unit: str = "electron"

    @property
    def size(self) -> int:
        """Side of the patch in pixels (its width, for a scene that is not square)."""
        return int(self.image.shape[-1])

    def cutout(self, bbox: tuple[int, int, int, int]) -> "SimulatedPatch":
        """The part of this scene in the tract-frame box ``(y0, x0, y1, x1)`` (end exclusive).

        Pixels are copied; the truth keeps the galaxies whose centre pixel lies in the box, with
        their stamps clipped to it and ``flux_<band>`` summed over what is left (blendedness stays
        the scene's). ``truth_id`` is unchanged, so the cut-outs of one scene share ids.
        """
        from .engine.geometry import stamp_overlap

        y0, x0, y1, x1 = (int(v) for v in bbox)
        sy, sx = y0 - self.yx0[0], x0 - self.yx0[1]
        if sy < 0 or sx < 0 or y1 - self.yx0[0] > self.image.shape[-2] or x1 - self.yx0[1] > self.image.shape[-1]:
            raise MadnessValueError(f"cutout: box {bbox} is not inside the scene (yx0 {self.yx0}, "
                                    f"shape {self.image.shape[-2:]}).")
        window = (slice(None), slice(sy, sy + y1 - y0), slice(sx, sx + x1 - x0))
        x, y = np.asarray(self.truth["x"]), np.asarray(self.truth["y"])
        keep = np.flatnonzero((x >= x0) & (x < x1) & (y >= y0) & (y < y1))
        stamps, stamp_yx0 = [], np.zeros((len(keep), 2), np.int64)
        for k, t in enumerate(keep):
            stamp = self.stamps[t]
            overlap = stamp_overlap(self.stamp_yx0[t], stamp.shape[-2:], bbox)
            stamp_slices, box_slices = overlap  # the centre pixel is in the box, so they overlap
            stamps.append(np.ascontiguousarray(stamp[(slice(None), *stamp_slices)]))
            stamp_yx0[k] = (y0 + box_slices[0].start, x0 + box_slices[1].start)
        truth = self.truth[keep]
        for b, band in enumerate(self.bands):
            truth[f"flux_{band}"] = np.array([float(st[b].sum()) for st in stamps], dtype=np.float64)
        return dataclasses.replace(self, image=self.image[window].copy(), variance=self.variance[window].copy(),
                                   stamps=tuple(stamps), stamp_yx0=stamp_yx0, truth=truth, yx0=(y0, x0))

    def isolated_image(self, index: int) -> np.ndarray:
        """``(bands, S, S)`` float32 image of galaxy ``index`` alone at full patch size (its stamp pasted)."""
        from .engine.geometry import paste_stamps

        return paste_stamps(self.stamps[index][None], self.stamp_yx0[index : index + 1],
                            self.image.shape[-2:], image_yx0=self.yx0, dtype=np.float32)

    @property
    def isolated(self) -> np.ndarray:
        """``(n, bands, S, S)`` float32 image of each galaxy alone at full patch size, built on demand.

        ``n * bands * S**2`` floats: for small patches (tests); `stamps` hold the same pixels.
        """
        out = np.zeros((len(self.stamps), *self.image.shape), np.float32)
        for k in range(len(self.stamps)):
            out[k] = self.isolated_image(k)
        return out

    def masked_images(self) -> dict:
        """``{band: lsst.images.MaskedImage}`` at the patch's tract-frame box (no pixel masked), with
        the patch's `unit`."""
        import astropy.units as u
        import lsst.images as li

        schema = li.MaskSchema(
            [
                li.MaskPlane("BAD", "Bad pixel."),
                li.MaskPlane("SAT", "Saturated pixel."),
                li.MaskPlane("NO_DATA", "No data."),
            ]
        )
        unit = u.Unit(self.unit)
        y0, x0 = self.yx0
        box = li.Box.factory[y0 : y0 + self.size, x0 : x0 + self.size]
        out = {}
        for b, band in enumerate(self.bands):
            image = li.Image(np.ascontiguousarray(self.image[b]), bbox=box, unit=unit)
            variance = li.Image(np.ascontiguousarray(self.variance[b]), bbox=box, unit=unit**2)
            out[band] = li.MaskedImage(image, mask_schema=schema, variance=variance)
        return out

    def to_nanojansky(self) -> "SimulatedPatch":
        """The patch in nJy, as Rubin's coadds are (a copy; this one must be in electrons).

        The electrons are those of SurveyCodex's LSST 10-year conditions that BTK drew them with,
        so each band is divided by ``exposure_time * 10**(0.4 * (zeropoint - 31.4))`` electrons
        per nJy (`lsst.meas.madness.units.electrons_per_nanojansky`); the variance by its square.
        """
        from .simulation.conditions import LsstConditions
        from .units import electrons_per_nanojansky

        if self.unit != "electron":
            raise MadnessValueError(f"to_nanojansky: the patch is in {self.unit}, not electrons.")
        conditions = LsstConditions.from_surveycodex(bands=self.bands)
        k = electrons_per_nanojansky(conditions.zeropoint, conditions.exposure_time)
        per_band = k.reshape(-1, 1, 1)
        truth = self.truth.copy()
        for b, band in enumerate(self.bands):
            truth[f"flux_{band}"] = np.asarray(truth[f"flux_{band}"], dtype=np.float64) / k[b]
            truth[f"flux_{band}"].unit = "nJy"
            truth[f"flux_{band}"].description = f"noiseless {band} flux of the galaxy inside the patch, nJy"
        return dataclasses.replace(
            self,
            image=(self.image / per_band).astype(np.float32),
            variance=(self.variance / per_band**2).astype(np.float32),
            stamps=tuple((stamp / per_band).astype(np.float32) for stamp in self.stamps),
            truth=truth,
            unit="nJy",
        )


def _catalogue(n_galaxies: int, seed: int, min_snr: float):
    """At least ``n_galaxies`` SNR-cut SkyPy galaxies (the area grows until there are enough)."""
    from .simulation.catalog import apply_snr_cut
    from .simulation.skypy_catalog import generate_catsim_catalog

    area = max(2.0 * n_galaxies / _DENSITY_PER_DEG2, 1e-4)
    for _ in range(6):
        table = apply_snr_cut(generate_catsim_catalog(area, seed), min_snr)
        if len(table) >= n_galaxies:
            return table
        area *= 2.0
    raise MadnessValueError(f"Only {len(table)} galaxies pass the SNR cut in {area / 2:.2g} deg^2; "
                            f"{n_galaxies} were asked for.")


def _shape(size) -> tuple[int, int]:
    """``(height, width)`` of a patch given as one side or as ``(height, width)``."""
    return (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))


def _group_positions(rng: np.random.Generator, n: int, low: int, high, max_group: int,
                     group_shift: int) -> np.ndarray:
    """``(n, 2)`` distinct integer ``(x, y)`` pixels in ``[low, high]^2``, in groups.

    ``high`` is one bound for both axes, or ``[high_x, high_y]``.

    Groups of 1 to ``max_group`` galaxies (uniform) have centres uniform in the square; members
    lie uniformly within ``group_shift`` pixels of their group's centre (clipped to the square),
    as the paper's BlendedSims place 1-3 galaxies in a 20x20 pixel box.
    """
    if np.prod(np.asarray(high) - low + 1) * (1 if np.ndim(high) else np.asarray(high) - low + 1) < n:
        raise MadnessValueError(f"{n} galaxies do not fit in distinct pixels of [{low}, {high}]^2.")
    chosen: dict[tuple[int, int], None] = {}
    while len(chosen) < n:
        size = int(rng.integers(1, max_group + 1))
        centre = rng.integers(low, high + 1, size=2)
        for _ in range(min(size, n - len(chosen))):
            for _attempt in range(100):
                xy = np.clip(centre + rng.integers(-group_shift, group_shift + 1, size=2), low, high)
                if tuple(xy.tolist()) not in chosen:
                    chosen[tuple(xy.tolist())] = None
                    break
    return np.array(list(chosen), dtype=np.int64)


def simulate_patch(
    seed: int,
    *,
    size: int | tuple[int, int] = 301,
    n_galaxies: int = 40,
    margin: int = 8,
    max_group: int = 3,
    group_shift: int = 10,
    min_snr: float = 10.0,
    yx0: tuple[int, int] = (0, 0),
    subpixel: bool = False,
    knots: float = 0.0,
) -> SimulatedPatch:
    """Draw one LSST patch of SkyPy CatSim-format galaxies with BTK (seeded).

    ``n_galaxies`` galaxies are picked at random among those of a SkyPy catalogue that pass the
    paper's SNR >= ``min_snr`` cut in r (appendix A), and placed on distinct pixel centres at
    least ``margin`` pixels inside the patch, in groups of 1 to ``max_group`` galaxies within
    ``group_shift`` pixels of a group centre (uniform), so that most of them are blended, as in
    the paper's BlendedSims (1-3 galaxies in a 20x20 pixel box). Each galaxy is drawn alone on
    its own stamp with BTK's profile (bulge + disk + AGN, Kolmogorov + Airy PSF per band;
    `lsst.meas.madness.simulation.btk_draw.draw_galaxy_stamps`), clipped to the patch and pasted
    into it; BTK's Poisson noise from the sources and the 10-year sky is added (sky subtracted,
    gain 1; `~lsst.meas.madness.simulation.btk_draw.add_btk_noise`). Memory grows with the
    galaxies' stamps, not with ``n_galaxies * size**2`` as BTK's full-size isolated images did
    (doc/tasks.md, "Simulated patches").

    Parameters
    ----------
    seed : `int`
        Seed of the catalogue, the selection, the positions and the noise.
    size : `int` or `tuple` [`int`, `int`]
        Side of the square patch in pixels, or its ``(height, width)``; 0.2"/pixel.
    n_galaxies : `int`
        Number of galaxies in the patch.
    margin : `int`
        Smallest distance of a galaxy centre from the patch edge, pixels.
    max_group, group_shift : `int`
        Largest number of galaxies in a group, and their largest offset (pixels, per axis) from
        the group's centre; ``max_group=1`` places every galaxy independently.
    min_snr : `float`
        Appendix-A SNR cut in r.
    yx0 : `tuple` [`int`, `int`]
        Tract-frame ``(y, x)`` of the patch's pixel ``[0, 0]``.
    subpixel : `bool`
        Move each centre off its pixel centre by a uniform offset in [-0.5, 0.5) pixel per
        axis, as real galaxies are (BTK draws at float positions). Off by default, which keeps
        the patches, and every number measured on them, as they were; the truth table's
        ``x_true``/``y_true`` hold the float centres either way.
    knots : `float`
        Fraction of each disc's flux drawn as star-forming knots
        (`lsst.meas.madness.simulation.btk_draw.knotty_galaxy`): light that is not symmetric,
        as real discs' is not. 0 (default): BTK's smooth CatSim profiles.
    """
    from astropy.table import Table

    from .engine.geometry import crop_stamps, paste_stamps, round_half_up, stamp_overlap
    from .simulation.btk_draw import add_btk_noise, draw_galaxy_stamps, lsst_survey
    from .simulation.conditions import LsstConditions

    catalog, rows, centers_xy = plan_patch(seed, size=size, n_galaxies=n_galaxies, margin=margin,
                                           max_group=max_group, group_shift=group_shift, min_snr=min_snr,
                                           subpixel=subpixel)
    survey = lsst_survey()
    drawn, origins = draw_galaxy_stamps(catalog, rows, centers_xy, survey=survey, knots=knots)
    conditions = LsstConditions.from_surveycodex()
    bands = tuple(conditions.bands)
    # Each stamp clipped to the patch (what BTK's full-size isolated images held) and added into
    # the noiseless patch; float64 as BTK sums its galaxies.
    stamps, stamp_yx0 = [], np.zeros((n_galaxies, 2), np.int64)
    shape = _shape(size)
    noiseless64 = np.zeros((len(bands), *shape), np.float64)
    for k, (stamp, yx) in enumerate(zip(drawn, origins)):
        stamp_slices, patch_slices = stamp_overlap(yx, stamp.shape[-2:], (0, 0, *shape))
        stamps.append(np.ascontiguousarray(stamp[(slice(None), *stamp_slices)]))
        stamp_yx0[k] = (patch_slices[0].start, patch_slices[1].start)
        paste_stamps(stamps[k][None], stamp_yx0[k : k + 1], shape, out=noiseless64)
    del drawn
    image = add_btk_noise(noiseless64, int(seed), survey=survey)
    noiseless = noiseless64.astype(np.float32)
    del noiseless64
    variance = (conditions.sky_levels[:, None, None] + np.clip(noiseless, 0.0, None)).astype(np.float32)

    truth = Table()
    truth["truth_id"] = np.arange(n_galaxies, dtype=np.int64)
    x_true = centers_xy[:, 0] + int(yx0[1])
    y_true = centers_xy[:, 1] + int(yx0[0])
    truth["x"] = round_half_up(x_true).astype(np.int32)
    truth["y"] = round_half_up(y_true).astype(np.int32)
    truth["x"].description = truth["y"].description = "tract-frame pixel index of the galaxy's centre"
    truth["x_true"], truth["y_true"] = x_true, y_true
    truth["x_true"].description = truth["y_true"].description = "tract-frame position of the galaxy's centre"
    for name in ("galtileid", "redshift", *(f"{b}_ab" for b in bands), "a_d", "b_d", "a_b", "b_b",
                 "fluxnorm_bulge", "fluxnorm_disk", "snr_r"):
        if name in catalog.colnames:
            truth[name] = np.asarray(catalog[name])[rows]
    flux = np.stack([stamp.sum(axis=(1, 2)) for stamp in stamps]).astype(np.float64)  # (n, bands)
    # Paper eq. 16 over each galaxy's own pixels (it is zero elsewhere).
    total = np.stack([(stamp * crop_stamps(noiseless, stamp_yx0[k : k + 1], stamp.shape[-2:])[0]).sum(axis=(1, 2))
                      for k, stamp in enumerate(stamps)])
    own = np.stack([(stamp**2).sum(axis=(1, 2)) for stamp in stamps])
    for b, band in enumerate(bands):
        truth[f"flux_{band}"] = flux[:, b]
        truth[f"flux_{band}"].unit = "electron"
        truth[f"flux_{band}"].description = f"noiseless {band} electrons of the galaxy inside the patch"
        with np.errstate(divide="ignore", invalid="ignore"):
            truth[f"blendedness_{band}"] = np.where(total[:, b] > 0, 1.0 - own[:, b] / total[:, b], 0.0)
        truth[f"blendedness_{band}"].description = "1 - sum(I_i^2) / sum(I_i I_all), paper eq. 16"
    return SimulatedPatch(bands=bands, image=image.astype(np.float32), variance=variance,
                          stamps=tuple(stamps), stamp_yx0=stamp_yx0 + np.asarray(yx0, np.int64), truth=truth,
                          yx0=(int(yx0[0]), int(yx0[1])), seed=int(seed))


def simulate_tract(seed: int, skymap, n_patches: int, *, n_galaxies: int, **kwargs) -> SimulatedPatch:
    """Draw one scene over the outer boxes of patches ``0 .. n_patches - 1`` of ``skymap``.

    `simulate_patch` over ``skymap.outer_bbox(n_patches)`` (all the pixels of the patches, the
    overlaps once); cut each patch out with
    ``scene.cutout(skymap.patch_outer_bbox(p))``, so neighbouring patches share their overlap's
    pixels and galaxies, as overlapping coadds of one sky do.

    Parameters
    ----------
    seed : `int`
        Seed of the scene.
    skymap : `lsst.meas.madness.skymap.SimSkyMap`
        Patch geometry.
    n_patches : `int`
        Patches in a row.
    n_galaxies : `int`
        Galaxies in the whole scene.
    **kwargs
        Other `simulate_patch` arguments (``min_snr``, ``group_shift``, ``margin``...).
    """
    y0, x0, y1, x1 = skymap.outer_bbox(n_patches)
    return simulate_patch(seed, size=(y1 - y0, x1 - x0), n_galaxies=n_galaxies, yx0=(y0, x0), **kwargs)


def plan_patch(
    seed: int,
    *,
    size: int | tuple[int, int] = 301,
    n_galaxies: int = 40,
    margin: int = 8,
    max_group: int = 3,
    group_shift: int = 10,
    min_snr: float = 10.0,
    subpixel: bool = False,
):
    """Which galaxies `simulate_patch` draws, and where (seeded; the arguments are its own).

    Returns
    -------
    catalog : `astropy.table.Table`
        The SNR-cut SkyPy CatSim-format catalogue.
    rows : `numpy.ndarray`
        ``(n_galaxies,)`` sorted rows of ``catalog``.
    centers_xy : `numpy.ndarray`
        ``(n_galaxies, 2)`` float ``(x, y)`` centre of each galaxy in the patch's pixels.
    """
    height, width = _shape(size)
    if min(height, width) < 47:
        raise MadnessValueError(f"simulate_patch: the patch must be >= 47 pixels on a side, got {size}.")
    if n_galaxies < 1 or 2 * margin >= min(height, width):
        raise MadnessValueError(f"simulate_patch: need n_galaxies >= 1 and margin < size / 2 "
                                f"(n_galaxies={n_galaxies}, margin={margin}, size={size}).")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 17]))
    catalog = _catalogue(n_galaxies, int(seed), min_snr)
    rows = np.sort(rng.choice(len(catalog), size=n_galaxies, replace=False))
    high = width - 1 - margin if height == width else np.array([width - 1 - margin, height - 1 - margin])
    xy = _group_positions(rng, n_galaxies, margin, high, max_group, group_shift)
    # A separate stream, so the default (on-pixel) patches are unchanged by the option.
    offset_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 18]))
    offsets = offset_rng.uniform(-0.5, 0.5, (n_galaxies, 2)) if subpixel else np.zeros((n_galaxies, 2))
    return catalog, rows, xy.astype(np.float64) + offsets


def create_local_repo(root: str | os.PathLike, skymap, *, bands: Sequence[str] = ("u", "g", "r", "i", "z", "y"),
                      n_patches: int = 1) -> None:
    """Make a SQLite repository at ``root`` with the dimension records of ``n_patches`` patches.

    No obs_base: ``instrument`` (``MadnessSim``), one ``physical_filter`` per band
    (``sim_<band>``), ``skymap`` (``skymap.name``), ``tract`` 0 and ``patch`` 0..n-1 are inserted
    with ``registry.syncDimensionData``, the dataset types `COADD_DATASET`, `TRUTH_DATASET` and
    ``madnessSkyMap`` are registered, and ``skymap`` (a `lsst.meas.madness.skymap.SimSkyMap`)
    is put in the RUN collection ``skymaps``, as ``butler register-skymap`` puts Rubin's. Running
    it again on an existing repository adds what is missing; a different skymap geometry under
    the same name is an error.
    """
    from lsst.daf.butler import Butler, DatasetType

    from .skymap import MAX_PATCHES, SKYMAP_DATASET, SKYMAP_RUN

    if not 1 <= n_patches <= MAX_PATCHES:
        raise MadnessValueError(f"create_local_repo: n_patches must be in [1, {MAX_PATCHES}], got {n_patches}.")
    root = str(root)
    if not os.path.exists(os.path.join(root, "butler.yaml")):
        Butler.makeRepo(root)  # SQLite registry, file datastore
    with Butler.from_config(root, writeable=True) as butler:
        reg = butler.registry
        reg.syncDimensionData(
            "instrument",
            {"name": INSTRUMENT, "visit_max": 1, "exposure_max": 1, "detector_max": 1, "class_name": "none"},
        )
        for band in bands:
            reg.syncDimensionData(
                "physical_filter", {"instrument": INSTRUMENT, "name": f"sim_{band}", "band": band}
            )
        # syncDimensionData refuses a record that differs from the stored one, so the skymap
        # record is sized generously once (up to MAX_PATCHES patches in a row).
        reg.syncDimensionData(
            "skymap",
            {"name": skymap.name, "hash": b"madness-sim-v1", "tract_max": 1, "patch_nx_max": MAX_PATCHES,
             "patch_ny_max": 1},
        )
        reg.syncDimensionData("tract", {"skymap": skymap.name, "id": skymap.tract})
        for patch in range(n_patches):
            reg.syncDimensionData(
                "patch", {"skymap": skymap.name, "tract": skymap.tract, "id": patch, "cell_x": patch,
                          "cell_y": 0}
            )
        universe = butler.dimensions
        reg.registerDatasetType(
            DatasetType(COADD_DATASET, ("skymap", "tract", "patch", "band"), "MaskedImageV2",
                        universe=universe)
        )
        reg.registerDatasetType(
            DatasetType(TRUTH_DATASET, ("skymap", "tract", "patch"), "ArrowAstropy", universe=universe)
        )
        reg.registerDatasetType(DatasetType(SKYMAP_DATASET, ("skymap",), "StructuredDataDict", universe=universe))
        reg.registerRun(SKYMAP_RUN)
        ref = butler.find_dataset(SKYMAP_DATASET, {"skymap": skymap.name}, collections=SKYMAP_RUN)
        if ref is None:
            butler.put(skymap.to_dict(), SKYMAP_DATASET, {"skymap": skymap.name}, run=SKYMAP_RUN)
        elif butler.get(ref) != skymap.to_dict():
            raise MadnessValueError(f"{root} holds skymap {skymap.name!r} as {butler.get(ref)}, "
                                    f"not {skymap.to_dict()}.")


def ingest_patch(root: str | os.PathLike, patch: SimulatedPatch, patch_id: int, run: str) -> None:
    """Put ``patch``'s coadds (one ``MaskedImageV2`` per band) and truth table into ``run``.

    The patch must lie where the repository's skymap puts patch ``patch_id`` (its outer box);
    `SimSkyMap.patch_yx0` gives that place.
    """
    from lsst.daf.butler import Butler

    data_id = {"skymap": SKYMAP, "tract": TRACT, "patch": int(patch_id)}
    with Butler.from_config(str(root), writeable=True, run=run) as butler:
        for band, coadd in patch.masked_images().items():
            butler.put(coadd, COADD_DATASET, data_id, band=band)
        butler.put(patch.truth, TRUTH_DATASET, data_id)


def pipeline_path() -> Path:
    """``pipelines/madness.yaml``: under ``$MEAS_MADNESS_DIR`` (EUPS) or the source tree."""
    candidates = []
    if os.environ.get("MEAS_MADNESS_DIR"):
        candidates.append(Path(os.environ["MEAS_MADNESS_DIR"]) / "pipelines" / "madness.yaml")
    # python/lsst/meas/madness/localrepo.py -> the package root holds pipelines/.
    candidates.append(Path(__file__).resolve().parents[4] / "pipelines" / "madness.yaml")
    for path in candidates:
        if path.is_file():
            return path
    raise MadnessValueError(
        f"pipelines/madness.yaml not found (looked at {[str(p) for p in candidates]}); set "
        "MEAS_MADNESS_DIR to the meas_madness source directory."
    )


def pipetask_command(
    repo: str | os.PathLike,
    inputs: str,
    output: str,
    *,
    pipeline: str | os.PathLike | None = None,
    config: Sequence[str] = (),
    where: str | None = None,
    jobs: int = 1,
    log_level: str = "lsst.meas.madness=INFO",
) -> list[str]:
    """The ``pipetask run`` command line (argv) for ``pipelines/madness.yaml``.

    ``config`` items are ``label:field=value`` overrides (``-c``). The command starts with this
    interpreter (``python -c "...pipetask main()"``), so it runs in the same environment even
    when ``pipetask`` is not on ``PATH``.
    """
    command = [
        sys.executable, "-c",
        "import sys; from lsst.ctrl.mpexec.cli.pipetask import main; sys.exit(main())",
        "--log-level", log_level,
        "run", "-b", str(repo), "-i", inputs, "-o", output,
        "-p", str(pipeline or pipeline_path()), "--register-dataset-types",
    ]
    for item in config:
        command += ["-c", item]
    if where:
        command += ["-d", where]
    if jobs > 1:
        command += ["-j", str(int(jobs))]
    return command


def run_logged(command: Sequence[str], log_path: str | os.PathLike, *, prefix: str = "",
               echo: Callable[[str], None] | None = print, env: dict | None = None,
               cwd: str | os.PathLike | None = None) -> float:
    """Run ``command``, copy its output to ``log_path`` and, line by line, to ``echo``.

    Returns the wall time in seconds; raises `subprocess.CalledProcessError` (with the last
    lines of the log) if the command fails.
    """
    start = time.perf_counter()
    lines: list[str] = []
    with open(log_path, "w") as log, subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env=env, cwd=cwd,
    ) as proc:
        for line in proc.stdout:
            log.write(line)
            lines.append(line)
            del lines[:-40]
            if echo is not None:
                echo(prefix + line.rstrip())
        code = proc.wait()
    if code != 0:
        raise subprocess.CalledProcessError(code, list(command), output="".join(lines))
    return time.perf_counter() - start


def primary_counts(truth, object_tables: Sequence, match_radius: float = 3.0) -> dict:
    """How many times each truth galaxy is detected, and detected primary, over several patches.

    In each patch's object table, every truth galaxy is matched to its nearest object within
    ``match_radius`` pixels (tract frame) among all objects (leaves of the blend tree, in or out
    of the patch's inner region) and, separately, among the primary ones (``detect_isPrimary``).

    Parameters
    ----------
    truth : `astropy.table.Table`
        The scene's truth (``truth_id``, tract-frame ``x``, ``y``).
    object_tables : sequence of `astropy.table.Table`
        Object table of each patch (``deepCoadd_madnessObj``).
    match_radius : `float`
        Largest truth-to-centroid distance, pixels.

    Returns
    -------
    counts : `dict`
        ``"detected"`` and ``"primary"``: ``(n_truth,)`` int arrays, the number of patches in
        which each galaxy has a leaf object (any) or a primary object within the radius.
    """
    tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    detected = np.zeros(len(truth), np.int64)
    primary = np.zeros(len(truth), np.int64)
    for objects in object_tables:
        leaf = (np.asarray(objects["parent"]) != 0) | (np.asarray(objects["deblend_nChild"]) == 0)
        for selection, counts in ((leaf, detected), (np.asarray(objects["detect_isPrimary"], bool), primary)):
            ox = np.asarray(objects["x"], float)[selection]
            oy = np.asarray(objects["y"], float)[selection]
            if not len(ox):
                continue
            dist = np.hypot(tx[:, None] - ox[None], ty[:, None] - oy[None])
            counts += np.nanmin(np.where(np.isfinite(dist), dist, np.inf), axis=1) <= match_radius
    return {"detected": detected, "primary": primary}
