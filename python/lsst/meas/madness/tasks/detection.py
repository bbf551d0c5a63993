"""``MadnessDetectionTask``: sep detection of parent footprints and their peaks on a multiband coadd.

For the pip-only stack, which has no ``DetectCoaddSourcesTask``/``MergeDetectionsTask``.

How peaks are found
-------------------
sep runs twice on the detection image (the inverse-variance weighted mean of the bands) with the
same threshold, filter and mask:

1. with its deblending turned off (``deblend_cont=1``): each connected region above threshold is
   one object, and its segmentation-map label is one parent footprint;
2. with its multi-threshold deblending on (``deblend_cont=deblendCont``): each deblended object's
   brightest pixel is a peak, and it belongs to the parent whose segment contains it.

Both passes threshold the same pixels, so every deblended object lies inside one segment of the
first pass and all peaks of a blend stay in one parent. sep's contrast criterion (a branch of the
isophotal tree must hold ``deblendCont`` of the total flux) rejects the noise maxima that a plain
local-maximum search inside each segment would turn into peaks, at no extra cost.
"""

from __future__ import annotations

__all__ = [
    "MadnessDetectionConnections",
    "MadnessDetectionConfig",
    "MadnessDetectionTask",
    "detect_footprints",
    "detection_tables",
]

from collections.abc import Sequence

import numpy as np
from astropy.table import Table

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.utils.timer import timeMethod

from .catalogs import DETECTION_COLUMNS, make_table, source_id_prefix
from .coadds import DEFAULT_BAD_MASK_PLANES, MultibandCoadd
from .footprints import Footprint, footprints_to_table

_TEMPLATES = {"inputCoaddName": "deep", "outputCoaddName": "deep"}


class MadnessDetectionConnections(
    pipeBase.PipelineTaskConnections,
    dimensions=("tract", "patch", "skymap"),
    defaultTemplates=_TEMPLATES,
):
    coadds = cT.Input(
        doc="Per-band coadds (lsst.images MaskedImage or CellCoadd) to detect on.",
        name="{inputCoaddName}Coadd_calexp",
        storageClass="MaskedImageV2",
        dimensions=("tract", "patch", "band", "skymap"),
        multiple=True,
    )
    detections = cT.Output(
        doc="Parent footprints (parent == 0) and their peaks (parent == footprint id), one row each.",
        name="{outputCoaddName}Coadd_madnessDet",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
    )
    detectionSpans = cT.Output(
        doc="Spans of the parent footprints, one row per span (see lsst.meas.madness.tasks.footprints).",
        name="{outputCoaddName}Coadd_madnessDet_spans",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
    )


class MadnessDetectionConfig(pipeBase.PipelineTaskConfig, pipelineConnections=MadnessDetectionConnections):
    """Configuration of `MadnessDetectionTask`."""

    # Detection
    thresholdSigma = pexConfig.Field[float](
        default=3.0,
        doc="Detection threshold in units of the detection image's per-pixel noise, applied to the "
        "image filtered by sep's default 3x3 kernel.",
    )
    minArea = pexConfig.Field[int](default=5, doc="Fewest pixels above threshold for a footprint (pixels).")
    subtractBackground = pexConfig.Field[bool](
        default=False,
        doc="Subtract a sep background from the detection image first (coadds are usually "
        "background-subtracted already).",
    )
    badMask = pexConfig.ListField[str](
        default=list(DEFAULT_BAD_MASK_PLANES),
        doc="Mask planes whose pixels are ignored; names a coadd lacks are skipped.",
    )
    footprintGrow = pexConfig.Field[int](
        default=2,
        doc="Grow each footprint by this many pixels into undetected pixels (never into another "
        "footprint), so that children footprints keep the wings just below threshold (pixels; 0: off).",
    )
    # Peaks
    deblendNThresh = pexConfig.Field[int](default=32, doc="sep deblend_nthresh of the peak pass.")
    deblendCont = pexConfig.Field[float](
        default=0.005,
        doc="sep deblend_cont of the peak pass: smallest fraction of a footprint's flux a branch "
        "must hold to be a separate peak.",
    )
    pixelStack = pexConfig.Field[int](
        default=1_000_000,
        doc="sep's pixel buffer (set_extract_pixstack); raised to the image size when smaller.",
    )


def _grow_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Grow a label map by ``n`` pixels (4-connected) into its zero pixels only."""
    labels = labels.copy()
    for _ in range(n):
        grown = labels.copy()
        for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
            neighbour = np.roll(labels, shift, axis=axis)
            # np.roll wraps: blank the wrapped row/column.
            edge = [slice(None), slice(None)]
            edge[axis] = 0 if shift == 1 else -1
            neighbour[tuple(edge)] = 0
            take = (grown == 0) & (neighbour > 0)
            grown[take] = neighbour[take]
        labels = grown
    return labels


def detect_footprints(
    coadd: MultibandCoadd,
    config: MadnessDetectionConfig,
    id_prefix: int = 0,
) -> tuple[Table, Table]:
    """Detect parent footprints and peaks on the coadd's detection image.

    Parameters
    ----------
    coadd : `MultibandCoadd`
        Stacked bands.
    config : `MadnessDetectionConfig`
        Thresholds and sep settings.
    id_prefix : `int`
        Added to the running source number (see `lsst.meas.madness.tasks.catalogs`).

    Returns
    -------
    detections : `astropy.table.Table`
        Parents and peaks (`DETECTION_COLUMNS`), tract-frame pixels.
    spans : `astropy.table.Table`
        Span table of the parent footprints.
    """
    import sep

    image, variance, bad = coadd.detection_image()
    image = np.ascontiguousarray(image, dtype=np.float32)
    if config.subtractBackground:
        image = image - sep.Background(image, mask=bad).back().astype(np.float32)
        image[bad] = 0.0
    good_err = np.sqrt(variance[~bad]) if (~bad).any() else np.array([1.0])
    err = np.where(bad, np.median(good_err), np.sqrt(np.where(bad, 1.0, variance))).astype(np.float32)
    sep.set_extract_pixstack(max(int(config.pixelStack), image.size))
    common = dict(err=err, mask=bad.astype(np.uint8), minarea=config.minArea)

    y0, x0 = coadd.yx0
    if not (~bad).any():
        return make_table(DETECTION_COLUMNS, 0), footprints_to_table({})
    objects, seg = sep.extract(
        image, config.thresholdSigma, deblend_cont=1.0, segmentation_map=True, **common
    )
    peaks = sep.extract(
        image,
        config.thresholdSigma,
        deblend_nthresh=config.deblendNThresh,
        deblend_cont=config.deblendCont,
        **common,
    )
    seg = _grow_labels(seg.astype(np.int64), config.footprintGrow)

    # Peaks of each parent: the deblended objects' brightest pixels that fall in its segment;
    # a parent none falls in keeps its own brightest pixel.
    peak_xy = (
        np.stack([peaks["xpeak"], peaks["ypeak"]], axis=1).astype(np.int64)
        if len(peaks)
        else np.zeros((0, 2), np.int64)
    )
    owner = seg[peak_xy[:, 1], peak_xy[:, 0]] - 1 if len(peak_xy) else np.zeros(0, np.int64)

    n_parents = len(objects)
    peak_lists = []
    for k in range(n_parents):
        mine = peak_xy[owner == k]
        if len(mine) == 0:
            mine = np.array([[objects["xpeak"][k], objects["ypeak"][k]]], dtype=np.int64)
        mine = np.unique(mine, axis=0)
        values = image[mine[:, 1], mine[:, 0]]
        order = np.argsort(-values, kind="stable")
        peak_lists.append(mine[order])

    # Footprints from the (grown) segmentation map, one bounding-box slice per label.
    from scipy import ndimage

    slices = ndimage.find_objects(seg, max_label=n_parents)
    sigma = np.sqrt(np.where(bad, np.inf, variance))
    parents = []
    for k in range(n_parents):
        sl = slices[k]
        fp = Footprint.from_mask(seg[sl] == k + 1, (sl[0].start + y0, sl[1].start + x0))
        pk = peak_lists[k]
        value = image[pk[:, 1], pk[:, 0]]
        parents.append((fp, pk + np.array([x0, y0]), value, value / sigma[pk[:, 1], pk[:, 0]]))
    detections, spans = detection_tables(parents, id_prefix=id_prefix)
    detections.meta["bands"] = list(coadd.bands)
    return detections, spans


def detection_tables(parents: Sequence[tuple], id_prefix: int = 0) -> tuple[Table, Table]:
    """Detection table and span table of given parent footprints and peaks.

    Also the way to feed `MadnessDeblendTask` detections made elsewhere (a truth catalog, BTK).

    Parameters
    ----------
    parents : sequence of `tuple`
        ``(footprint, peaks_xy)`` or ``(footprint, peaks_xy, peak_values, peak_significance)``
        per parent: a `Footprint` and ``(n, 2)`` integer ``(x, y)`` peaks, tract frame, brightest
        first (``n`` may be 0).
    id_prefix : `int`
        Added to the running source number (see `lsst.meas.madness.tasks.catalogs`).

    Returns
    -------
    detections, spans : `astropy.table.Table`
        Parents (``parent == 0``) each followed by its peaks; the parents' span table.
    """
    n_rows = len(parents) + sum(len(p[1]) for p in parents)
    table = make_table(DETECTION_COLUMNS, n_rows)
    footprints = {}
    row = 0
    number = 1
    for entry in parents:
        fp, pk = entry[0], np.asarray(entry[1], dtype=np.int64).reshape(-1, 2)
        values = np.asarray(entry[2], np.float32) if len(entry) > 2 else np.full(len(pk), np.nan, np.float32)
        signif = np.asarray(entry[3], np.float32) if len(entry) > 3 else np.full(len(pk), np.nan, np.float32)
        parent_id = id_prefix + number
        number += 1
        footprints[parent_id] = fp
        by0, bx0, by1, bx1 = fp.bbox
        table["id"][row] = parent_id
        if len(pk):
            table["peak_x"][row], table["peak_y"][row] = pk[0]
            table["peak_value"][row], table["peak_significance"][row] = values[0], signif[0]
        table["n_peaks"][row] = len(pk)
        table["footprint_area"][row] = fp.area
        table["bbox_x0"][row], table["bbox_y0"][row] = bx0, by0
        table["bbox_width"][row], table["bbox_height"][row] = bx1 - bx0, by1 - by0
        row += 1
        for j in range(len(pk)):
            table["id"][row] = id_prefix + number
            number += 1
            table["parent"][row] = parent_id
            table["peak_x"][row], table["peak_y"][row] = pk[j]
            table["peak_value"][row], table["peak_significance"][row] = values[j], signif[j]
            row += 1
    return table, footprints_to_table(footprints)


class MadnessDetectionTask(pipeBase.PipelineTask):
    """Detect parent footprints and their peaks on the inverse-variance weighted sum of the bands.

    Writes the detection table (parents and peaks) and the span table of the parent footprints
    that `MadnessDeblendTask` reads; see the module docstring for how peaks are found.
    """

    ConfigClass = MadnessDetectionConfig
    _DefaultName = "madnessDetection"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        bands = [ref.dataId["band"] for ref in inputRefs.coadds]
        coadds = dict(zip(bands, butlerQC.get(inputRefs.coadds)))
        data_id = butlerQC.quantum.dataId
        outputs = self.run(coadds=coadds, idPrefix=source_id_prefix(data_id["tract"], data_id["patch"]))
        butlerQC.put(outputs, outputRefs)

    @timeMethod
    def run(self, coadds, idPrefix: int = 0) -> pipeBase.Struct:
        """Detect on a dict of per-band coadds.

        Parameters
        ----------
        coadds : `dict` [`str`, `lsst.images.MaskedImage`]
            Coadd of each band; all bands are summed.
        idPrefix : `int`
            Source-id prefix of the patch (`source_id_prefix`).

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``detections`` and ``detectionSpans`` tables.
        """
        coadd = MultibandCoadd.from_masked_images(coadds, bad_mask_planes=self.config.badMask)
        self.log.info(
            "Detecting on %d bands %s of a %dx%d coadd", len(coadd.bands), coadd.bands, *coadd.shape[::-1]
        )
        detections, spans = detect_footprints(coadd, self.config, id_prefix=idPrefix)
        parents = detections["parent"] == 0
        n_parents = int(parents.sum())
        n_peaks = len(detections) - n_parents
        self.log.info("Found %d parent footprints with %d peaks", n_parents, n_peaks)
        self.metadata["n_parents"] = n_parents
        self.metadata["n_peaks"] = n_peaks
        return pipeBase.Struct(detections=detections, detectionSpans=spans)
