"""Helpers of the task tests: a small multiband patch with known truth, as lsst.images coadds."""

from __future__ import annotations

import functools

import numpy as np
from utils import BANDS, SKY_VARIANCE, make_blend, quick_bundle_path, synthetic_galaxies

# Tract-frame origin of the test patch, non-zero so that frame mistakes show.
PATCH_YX0 = (1000, 2000)
PATCH_SHAPE = (130, 190)
# (x, y) local positions: a 3-source blend, a 2-source blend, an isolated galaxy, one at the
# left edge, one with a NaN hole next to its centre.
SCENE_PEAKS = np.array(
    [
        [40, 40],
        [47, 45],
        [35, 49],  # blend A
        [110, 45],
        [117, 39],  # blend B
        [150, 92],  # isolated C
        [2, 100],  # D on the edge
        [95, 98],  # E, NaN hole
    ],
    dtype=float,
)
SCENE_GROUPS = [[0, 1, 2], [3, 4], [5], [6], [7]]
NAN_HOLE = (slice(94, 101), slice(99, 103))  # (y, x) local


@functools.lru_cache(maxsize=1)
def deblender():
    from lsst.meas.madness import MadnessDeblender

    return MadnessDeblender.from_bundle(quick_bundle_path())


@functools.lru_cache(maxsize=1)
def scene(seed: int = 7):
    """Image, variance, truth (n, bands, H, W) and local peaks of the test patch (cached)."""
    deb = deblender()
    gal = synthetic_galaxies(len(SCENE_PEAKS), seed=seed)
    # Bright enough for sep to split the blends at the default threshold.
    gal[:, :] *= 3.0
    latents = deb.initial_latents(deb.normalization.normalize(gal))
    image, var, truth = make_blend(deb, latents, SCENE_PEAKS, PATCH_SHAPE, seed)
    image[:, NAN_HOLE[0], NAN_HOLE[1]] = np.nan
    return image, var, truth


def masked_images(image, variance, bands=BANDS, yx0=PATCH_YX0, unit="electron"):
    """``{band: lsst.images.MaskedImage}`` of ``(bands, H, W)`` arrays at tract-frame ``yx0``.

    ``unit`` (astropy unit or string; `None` for none) is the image's; the variance's is its square.
    The test scenes are drawn by the test model's decoder, so they are in its units (electrons).
    """
    import astropy.units as u
    import lsst.images as li

    unit = None if unit is None else u.Unit(unit)

    schema = li.MaskSchema(
        [
            li.MaskPlane("BAD", "Bad pixel."),
            li.MaskPlane("SAT", "Saturated."),
            li.MaskPlane("NO_DATA", "No data."),
        ]
    )
    h, w = image.shape[1:]
    box = li.Box.factory[yx0[0] : yx0[0] + h, yx0[1] : yx0[1] + w]
    out = {}
    for b, band in enumerate(bands):
        img = li.Image(np.ascontiguousarray(image[b], dtype=np.float32), bbox=box, unit=unit)
        var = li.Image(
            np.ascontiguousarray(variance[b], dtype=np.float32),
            bbox=box,
            unit=None if unit is None else unit**2,
        )
        out[band] = li.MaskedImage(img, mask_schema=schema, variance=var)
    return out


def truth_detections(truth, groups=SCENE_GROUPS, peaks=SCENE_PEAKS, yx0=PATCH_YX0, threshold=5.0):
    """Detection tables with one parent per group: footprint = union of the members' truth above
    ``threshold`` (band-summed), the members' peaks as peaks."""
    from lsst.meas.madness.tasks import Footprint, detection_tables

    parents = []
    for members in groups:
        mask = truth[members].sum(axis=(0, 1)) > threshold
        for i in members:  # the peak pixel itself, in case a faint source is below threshold
            mask[int(peaks[i, 1]), int(peaks[i, 0])] = True
        parents.append(
            (Footprint.from_mask(mask, yx0), peaks[members].astype(int) + np.array([yx0[1], yx0[0]]))
        )
    return detection_tables(parents)


def run_config(**overrides):
    """A deblend config for tests: the quick bundle, fewer MAP steps."""
    from lsst.meas.madness.tasks import MadnessDeblendConfig

    config = MadnessDeblendConfig()
    config.bundlePath = str(quick_bundle_path())
    config.maxIter = 60
    config.minIter = 20
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


INSTRUMENT = "MadnessSim"
SKYMAP = "madness_sim"
DATA_ID = {"skymap": SKYMAP, "tract": 0, "patch": 0}


def add_patch_records(butler, bands=BANDS, tract=0, patch=0):
    """Insert the dimension records of one patch (no obs_base): instrument, one physical_filter
    per band, skymap, tract, patch."""
    reg = butler.registry
    reg.syncDimensionData(
        "instrument",
        {"name": INSTRUMENT, "visit_max": 1, "exposure_max": 1, "detector_max": 1, "class_name": "none"},
    )
    for band in bands:
        reg.syncDimensionData(
            "physical_filter", {"instrument": INSTRUMENT, "name": f"sim_{band}", "band": band}
        )
    reg.syncDimensionData(
        "skymap",
        {"name": SKYMAP, "hash": b"madness-test", "tract_max": 1, "patch_nx_max": 1, "patch_ny_max": 1},
    )
    reg.syncDimensionData("tract", {"skymap": SKYMAP, "id": tract})
    reg.syncDimensionData("patch", {"skymap": SKYMAP, "tract": tract, "id": patch, "cell_x": 0, "cell_y": 0})


def register_connections(butler, task_config):
    """Register the dataset types of a task's connections."""
    from lsst.daf.butler import DatasetType

    connections = task_config.ConnectionsClass(config=task_config)
    for name in (*connections.inputs, *connections.outputs):
        conn = getattr(connections, name)
        butler.registry.registerDatasetType(
            DatasetType(conn.name, conn.dimensions, conn.storageClass, universe=butler.dimensions)
        )


__all__ = [
    "INSTRUMENT",
    "SKYMAP",
    "DATA_ID",
    "add_patch_records",
    "register_connections",
    "BANDS",
    "SKY_VARIANCE",
    "PATCH_YX0",
    "PATCH_SHAPE",
    "SCENE_PEAKS",
    "SCENE_GROUPS",
    "NAN_HOLE",
    "deblender",
    "scene",
    "masked_images",
    "truth_detections",
    "run_config",
]


def aperture_oracle(exposure, child, radius):
    """Sum of a child's deblended pixels (its HeavyFootprint, zero off it) in a circular aperture
    of ``radius`` around its peak, and 5 sigma of the noise over the aperture's other pixels:
    what afw measurement with the noise replacer must measure there (needs afw)."""
    import lsst.afw.geom as afwGeom
    import lsst.geom

    heavy = child.getFootprint()
    peak = heavy.getPeaks()[0]
    centre = lsst.geom.Point2D(peak.getIx(), peak.getIy())
    aperture = afwGeom.SpanSet.fromShape(afwGeom.Ellipse(afwGeom.ellipses.Axes(radius, radius, 0.0), centre))
    aperture = aperture.clippedTo(exposure.getBBox())
    xy0 = exposure.getXY0()
    image = np.zeros(exposure.image.array.shape, np.float32)
    heavy.getSpans().unflatten(image, heavy.getImageArray(), xy0)
    values = np.zeros(aperture.getArea(), np.float32)
    aperture.flatten(values, image, xy0)
    own = np.zeros(exposure.image.array.shape, np.float32)
    heavy.getSpans().unflatten(own, np.ones(heavy.getArea(), np.float32), xy0)
    inOwn = np.zeros(aperture.getArea(), np.float32)
    aperture.flatten(inOwn, own, xy0)
    variance = np.zeros(aperture.getArea(), np.float32)
    aperture.flatten(variance, exposure.variance.array, xy0)
    return float(values.sum()), 5.0 * float(np.sqrt(variance[inOwn == 0].sum()))
