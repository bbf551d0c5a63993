"""``MadnessDetectionTask``: parent footprints and their peaks on a multiband coadd.

For the pip-only stack, which has no ``DetectCoaddSourcesTask``/``MergeDetectionsTask``.

``config.method`` picks the finder (`lsst.meas.madness.tasks.detection_methods`): the default
``prominence`` (PSF-matched footprints on the inverse-variance weighted mean of the bands, peaks
by their prominence in noise units), ``sep`` (the method before issue 14: sep's thresholding and
multi-threshold deblending with ``deblend_cont``), ``sepPsf``, ``rubinLike`` (per-band detection
merged with Rubin's rules) and ``scarletLite``. Their completeness, purity, unrecognised blends
and resolved pairs on simulated patches are in ``doc/detection.md``
(``scripts/detection_benchmark.py``).
"""

from __future__ import annotations

__all__ = [
    "MadnessDetectionConnections",
    "MadnessDetectionConfig",
    "MadnessDetectionTask",
    "ProminenceConfig",
    "RubinLikeConfig",
    "ScarletLiteDetectConfig",
    "SepPeaksConfig",
    "detect_footprints",
    "find_detections",
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
from .detection_methods import (
    Detections,
    detect_prominence,
    detect_rubin_like,
    detect_scarlet_lite,
    detect_sep,
    gaussian_kernel,
)
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


class SepPeaksConfig(pexConfig.Config):
    """sep's thresholding and multi-threshold deblending (``method="sep"`` and ``"sepPsf"``)."""

    thresholdSigma = pexConfig.Field[float](
        default=3.0,
        doc="Detection threshold in units of the detection image's per-pixel noise, applied to the "
        "image filtered by sep's default 3x3 kernel (``sep``) or the PSF's Gaussian (``sepPsf``).",
    )
    minArea = pexConfig.Field[int](default=5, doc="Fewest pixels above threshold for a footprint (pixels).")
    footprintGrow = pexConfig.Field[int](
        default=2,
        doc="Grow each footprint by this many pixels into undetected pixels (never into another "
        "footprint), so that children footprints keep the wings just below threshold (pixels; 0: off).",
    )
    deblendNThresh = pexConfig.Field[int](default=32, doc="sep deblend_nthresh of the peak pass.")
    deblendCont = pexConfig.Field[float](
        default=0.005,
        doc="sep deblend_cont of the peak pass (``method=\"sep\"``): smallest fraction of a footprint's "
        "flux a branch must hold to be a separate peak.",
    )
    psfDeblendCont = pexConfig.Field[float](
        default=0.0005,
        doc="sep deblend_cont of the peak pass with the PSF-matched filter (``method=\"sepPsf\"``).",
    )


class RubinLikeConfig(pexConfig.Config):
    """Per-band detection and a merge with Rubin's rules (``method="rubinLike"``).

    The defaults are those of ``SourceDetectionTask`` on coadds and of ``MergeDetectionsTask``
    with ``CullPeaksConfig`` (lsst/meas_algorithms, lsst/pipe_tasks).
    """

    thresholdValue = pexConfig.Field[float](
        default=5.0,
        doc="Threshold on each band's PSF-smoothed image in units of its per-pixel noise (pixel_stdev).",
    )
    minPixels = pexConfig.Field[int](default=1, doc="Fewest pixels above threshold for a footprint.")
    nSigmaToGrow = pexConfig.Field[float](
        default=2.4, doc="Grow footprints by this many PSF sigma; grown footprints that touch merge."
    )
    priorityList = pexConfig.ListField[str](
        default=["i", "r", "z", "y", "g", "u"],
        doc="Bands in merge order; peaks of the first band are all kept, later bands only add new ones.",
    )
    minNewPeak = pexConfig.Field[float](
        default=1.0, doc="A later band's peak is new only beyond this distance from every merged peak (arcsec)."
    )
    maxSamePeak = pexConfig.Field[float](
        default=0.3, doc="A later band's peak within this distance of a merged peak is that peak (arcsec)."
    )
    nBandsSufficient = pexConfig.Field[int](default=2, doc="Cull: always keep peaks detected in this many bands.")
    rankSufficient = pexConfig.Field[int](default=20, doc="Cull: always keep this many peaks in each family.")
    rankConsidered = pexConfig.Field[int](
        default=30, doc="Cull: keep peaks of lower rank that also meet rankNormalizedConsidered."
    )
    rankNormalizedConsidered = pexConfig.Field[float](
        default=0.7, doc="Cull: keep peaks whose rank is below this fraction of the family size."
    )


class ScarletLiteDetectConfig(pexConfig.Config):
    """scarlet_lite's ``detect_footprints`` on the bands (``method="scarletLite"``); its defaults."""

    minSeparation = pexConfig.Field[float](default=4.0, doc="Smallest separation of two peaks (pixels).")
    minArea = pexConfig.Field[int](default=4, doc="Fewest pixels of a footprint.")
    peakThreshold = pexConfig.Field[float](default=5.0, doc="scarlet_lite's peak_thresh.")
    footprintThreshold = pexConfig.Field[float](default=5.0, doc="scarlet_lite's footprint_thresh.")
    scales = pexConfig.Field[int](default=1, doc="Wavelet scales; the finest is removed before peak finding.")


class ProminenceConfig(pexConfig.Config):
    """Matched-filter footprints and prominent peaks on the band stack (``method="prominence"``)."""

    thresholdSigma = pexConfig.Field[float](
        default=5.0,
        doc="Footprints: pixels where the detection image smoothed by the PSF's Gaussian exceeds this many "
        "times its own per-pixel noise (Rubin's 5 sigma, on all bands at once).",
    )
    minArea = pexConfig.Field[int](default=5, doc="Fewest pixels above threshold for a footprint (pixels).")
    nSigmaToGrow = pexConfig.Field[float](
        default=2.4, doc="Grow footprints by this many PSF sigma; grown footprints that touch merge (Rubin's)."
    )
    peakSmoothing = pexConfig.Field[float](
        default=0.5,
        doc="Sigma of the Gaussian that smooths the image peaks are found in, in units of the PSF's sigma "
        "(0: none). Smoothing by the full PSF merges pairs closer than ~1.2 FWHM.",
    )
    prominence = pexConfig.Field[float](
        default=2.5,
        doc="Smallest prominence of a peak (the dip between it and any higher peak), in units of the peak "
        "image's per-pixel noise. Lower finds fainter companions and more noise peaks.",
    )
    peakThreshold = pexConfig.Field[float](
        default=3.0, doc="Smallest significance of a peak in the peak image (units of its noise)."
    )
    doBandPassPeaks = pexConfig.Field[bool](
        default=True,
        doc="Also take the maxima of a difference of Gaussians (bandPassInner - bandPassOuter) as peaks: "
        "a faint galaxy on a brighter one's wing shows there as a maximum of its own where the smoothed "
        "image has only a shoulder (doc/detection.md, 'Band-pass peaks').",
    )
    bandPassInner = pexConfig.RangeField[float](
        default=0.5, min=0.0, inclusiveMin=False,
        doc="Sigma of the band-pass's narrow Gaussian, in units of the PSF's sigma.",
    )
    bandPassOuter = pexConfig.RangeField[float](
        default=3.0, min=0.0, inclusiveMin=False,
        doc="Sigma of the band-pass's wide Gaussian (subtracted), in units of the PSF's sigma; light smooth "
        "on this scale (a neighbour's wing) is removed.",
    )
    bandPassThreshold = pexConfig.Field[float](
        default=6.0, doc="Smallest significance of a band-pass peak (units of the band-pass image's noise)."
    )
    bandPassMinSeparation = pexConfig.Field[float](
        default=0.6,
        doc="Smallest distance of a band-pass peak from a prominent peak (arcsec); a nearer one is that peak.",
    )

    def validate(self):
        super().validate()
        if self.doBandPassPeaks and not self.bandPassInner < self.bandPassOuter:
            raise pexConfig.FieldValidationError(
                ProminenceConfig.bandPassOuter, self,
                f"must exceed bandPassInner ({self.bandPassInner}), got {self.bandPassOuter}",
            )


# LSST 10-year PSF FWHM per band (SurveyCodex 1.3, the simulations' conditions), arcsec.
_LSST_PSF_FWHM = {"u": 0.90, "g": 0.86, "r": 0.81, "i": 0.79, "z": 0.77, "y": 0.76}


class MadnessDetectionConfig(pipeBase.PipelineTaskConfig, pipelineConnections=MadnessDetectionConnections):
    """Configuration of `MadnessDetectionTask`.

    ``method`` picks the footprint and peak finder (`lsst.meas.madness.tasks.detection_methods`);
    each has its own group of fields. The task's behaviour before issue 14 is
    ``method="sep"`` (with ``sep``'s defaults). The measurements behind the default are in
    ``doc/detection.md``.
    """

    method = pexConfig.ChoiceField[str](
        default="prominence",
        doc="Footprint and peak finder.",
        allowed={
            "sep": "sep on the inverse-variance weighted band mean, 3x3 filter, deblend_cont (the method "
            "before issue 14)",
            "sepPsf": "sep as above with a PSF-matched Gaussian filter and sep.psfDeblendCont",
            "rubinLike": "each band smoothed by its PSF, 5 sigma, local maxima, bands merged with "
            "MergeDetectionsTask's rules",
            "scarletLite": "scarlet_lite's detect_footprints on the bands",
            "prominence": "PSF-matched footprints on the band mean, peaks by prominence in noise units",
        },
    )
    sep = pexConfig.ConfigField(dtype=SepPeaksConfig, doc="Settings of methods sep and sepPsf.")
    rubinLike = pexConfig.ConfigField(dtype=RubinLikeConfig, doc="Settings of method rubinLike.")
    scarletLite = pexConfig.ConfigField(dtype=ScarletLiteDetectConfig, doc="Settings of method scarletLite.")
    prominence = pexConfig.ConfigField(dtype=ProminenceConfig, doc="Settings of method prominence.")
    # PSF: the pip-only coadds carry none, so its FWHM per band is configured.
    psfFwhm = pexConfig.DictField(
        keytype=str,
        itemtype=float,
        default=dict(_LSST_PSF_FWHM),
        doc="PSF FWHM per band (arcsec) of the smoothing kernels; LSST 10-year values by default.",
    )
    defaultPsfFwhm = pexConfig.Field[float](default=0.8, doc="PSF FWHM of a band not in psfFwhm (arcsec).")
    pixelScale = pexConfig.Field[float](default=0.2, doc="Pixel scale of the coadds (arcsec per pixel).")
    # Input
    subtractBackground = pexConfig.Field[bool](
        default=False,
        doc="Subtract a sep background from the detection image first (coadds are usually "
        "background-subtracted already; methods sep, sepPsf and prominence).",
    )
    badMask = pexConfig.ListField[str](
        default=list(DEFAULT_BAD_MASK_PLANES),
        doc="Mask planes whose pixels are ignored; names a coadd lacks are skipped.",
    )
    pixelStack = pexConfig.Field[int](
        default=1_000_000,
        doc="sep's pixel buffer (set_extract_pixstack); raised to the image size when smaller.",
    )

    def psf_sigma(self, bands: Sequence[str]) -> np.ndarray:
        """``(bands,)`` Gaussian sigma of each band's PSF, pixels."""
        fwhm = np.array([self.psfFwhm.get(b, self.defaultPsfFwhm) for b in bands], float)
        return fwhm / self.pixelScale / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def find_detections(coadd: MultibandCoadd, config: MadnessDetectionConfig) -> Detections:
    """Footprints and peaks of ``coadd`` with the configured method, in array pixels.

    Parameters
    ----------
    coadd : `MultibandCoadd`
        Stacked bands.
    config : `MadnessDetectionConfig`
        Method and its settings.

    Returns
    -------
    detections : `lsst.meas.madness.tasks.detection_methods.Detections`
        Label map of the parents and their peaks.
    """
    image, variance, bad = coadd.detection_image()
    if config.subtractBackground and config.method in ("sep", "sepPsf", "prominence"):
        import sep

        image = np.ascontiguousarray(image, dtype=np.float32)
        image = image - sep.Background(image, mask=bad).back().astype(np.float32)
        image[bad] = 0.0
    sigmas = config.psf_sigma(coadd.bands)
    # The band mean's PSF: the bands' sigmas weighted as the mean weights them (median weights).
    with np.errstate(divide="ignore"):
        w = np.array([np.median(1.0 / v[~m]) if (~m).any() else 0.0 for v, m in zip(coadd.variance, coadd.bad)])
    mean_sigma = float((w * sigmas).sum() / w.sum()) if w.sum() > 0 else float(sigmas.mean())
    if config.method in ("sep", "sepPsf"):
        c = config.sep
        psf = config.method == "sepPsf"
        return detect_sep(image, variance, bad, threshold=c.thresholdSigma, min_area=c.minArea,
                          deblend_nthresh=c.deblendNThresh,
                          deblend_cont=c.psfDeblendCont if psf else c.deblendCont,
                          filter_kernel=gaussian_kernel(mean_sigma) if psf else None,
                          grow=c.footprintGrow, pixel_stack=config.pixelStack)
    if config.method == "rubinLike":
        c = config.rubinLike
        return detect_rubin_like(
            coadd.image, coadd.variance, coadd.bad, coadd.bands, sigmas, threshold=c.thresholdValue,
            min_pixels=c.minPixels, n_sigma_grow=c.nSigmaToGrow, priority=list(c.priorityList),
            min_new_peak=c.minNewPeak / config.pixelScale, max_same_peak=c.maxSamePeak / config.pixelScale,
            n_bands_sufficient=c.nBandsSufficient, rank_sufficient=c.rankSufficient,
            rank_considered=c.rankConsidered, rank_normalized_considered=c.rankNormalizedConsidered,
        )
    if config.method == "scarletLite":
        c = config.scarletLite
        return detect_scarlet_lite(coadd.image, coadd.variance, coadd.bad, min_separation=c.minSeparation,
                                   min_area=c.minArea, peak_threshold=c.peakThreshold,
                                   footprint_threshold=c.footprintThreshold, scales=c.scales)
    c = config.prominence
    return detect_prominence(image, variance, bad, mean_sigma, threshold=c.thresholdSigma, min_area=c.minArea,
                             n_sigma_grow=c.nSigmaToGrow, peak_smoothing=c.peakSmoothing,
                             prominence=c.prominence, peak_threshold=c.peakThreshold,
                             band_pass=(c.bandPassInner, c.bandPassOuter) if c.doBandPassPeaks else None,
                             band_pass_threshold=c.bandPassThreshold,
                             band_pass_min_separation=c.bandPassMinSeparation / config.pixelScale)


def detect_footprints(
    coadd: MultibandCoadd,
    config: MadnessDetectionConfig,
    id_prefix: int = 0,
) -> tuple[Table, Table]:
    """Detect parent footprints and peaks on the coadd with the configured method.

    Parameters
    ----------
    coadd : `MultibandCoadd`
        Stacked bands.
    config : `MadnessDetectionConfig`
        Method and settings.
    id_prefix : `int`
        Added to the running source number (see `lsst.meas.madness.tasks.catalogs`).

    Returns
    -------
    detections : `astropy.table.Table`
        Parents and peaks (`DETECTION_COLUMNS`), tract-frame pixels.
    spans : `astropy.table.Table`
        Span table of the parent footprints.
    """
    from scipy import ndimage

    if not (~coadd.bad).any():
        return make_table(DETECTION_COLUMNS, 0), footprints_to_table({})
    found = find_detections(coadd, config)
    y0, x0 = coadd.yx0
    seg = found.labels
    slices = ndimage.find_objects(seg, max_label=found.n_parents)
    parents = []
    for k in range(found.n_parents):
        sl = slices[k]
        if sl is None:
            continue
        fp = Footprint.from_mask(seg[sl] == k + 1, (sl[0].start + y0, sl[1].start + x0))
        mine = found.peak_parent == k + 1
        parents.append((fp, found.peaks_xy[mine] + np.array([x0, y0]), found.peak_value[mine],
                        found.peak_significance[mine]))
    detections, spans = detection_tables(parents, id_prefix=id_prefix)
    detections.meta["bands"] = list(coadd.bands)
    detections.meta["method"] = config.method
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
