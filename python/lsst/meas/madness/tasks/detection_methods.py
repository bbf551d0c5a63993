"""Footprint and peak finders on numpy arrays, one function per method, for `MadnessDetectionTask`.

Every finder takes ``(bands, H, W)`` images, variances and bad-pixel masks (or their
inverse-variance weighted mean, `MultibandCoadd.detection_image`) and returns a `Detections`:
a label map of the parent footprints and their peaks, in array ``(x, y)`` pixels. The task turns
that into tables; ``scripts/detection_benchmark.py`` runs every method on the same simulated
patches (``doc/detection.md``).

Methods
-------
`detect_sep`
    SExtractor's thresholding and multi-threshold deblending (sep): the task's method before
    issue 14 (3x3 filter, ``deblend_cont=0.005``), or with a PSF-matched filter.
`detect_rubin_like`
    What Rubin's DRP does, written here with scipy (nothing of afw is needed): each band is
    smoothed by a Gaussian of its PSF's sigma and thresholded at 5 sigma of the smoothed noise
    (``SourceDetectionTask``, ``thresholdType="pixel_stdev"``), footprints are grown by 2.4 PSF
    sigma and merged when they touch, the local maxima of the smoothed band are its peaks, and
    the bands are merged in priority order with ``MergeDetectionsTask``'s rules (a later band's
    peak is new only beyond ``minNewPeak``; ``CullPeaksConfig``'s culling).
`detect_scarlet_lite`
    scarlet_lite's ``detect_footprints`` (wavelet-filtered, SNR-weighted band sum) on the bands.
`detect_prominence`
    This package's default: footprints where the PSF-smoothed inverse-variance weighted mean of
    the bands exceeds a threshold in its own noise (a matched filter for faint galaxies, all bands
    at once), grown and merged as Rubin's; peaks are the maxima of a less smoothed copy (in
    units of its noise) whose *prominence* (how far one must descend from the peak before
    reaching a higher one, `skimage.morphology.h_maxima`) exceeds ``prominence`` sigma. A faint
    companion on a bright galaxy's wing is kept when its dip is significant, whatever its share
    of the blend's flux (sep's ``deblend_cont`` is a flux fraction, so it drops such companions);
    a noise bump is not. Optionally (``band_pass``) the maxima of a difference of two Gaussians
    are peaks too (`band_pass_significance`): a faint galaxy on a brighter one's wing often makes
    no maximum of its own in the smoothed image, only a shoulder, but the band-pass removes the
    wing's smooth gradient and leaves the companion a maximum of its own.
"""

from __future__ import annotations

__all__ = [
    "Detections",
    "detect_sep",
    "detect_rubin_like",
    "detect_scarlet_lite",
    "detect_prominence",
    "band_pass_significance",
    "gaussian_kernel",
    "gaussian_smooth",
    "grow_and_merge",
    "grow_labels",
    "local_maxima",
]

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..errors import MadnessValueError


@dataclasses.dataclass
class Detections:
    """Parent footprints and their peaks, in array pixels.

    Attributes
    ----------
    labels : `numpy.ndarray`
        ``(H, W)`` int64 label map: 0 outside every footprint, ``k`` inside parent ``k``
        (``1 .. n_parents``).
    peaks_xy : `numpy.ndarray`
        ``(n, 2)`` int64 array ``(x, y)`` of every peak; each lies in a footprint.
    peak_parent : `numpy.ndarray`
        ``(n,)`` int64 label of each peak's parent.
    peak_value : `numpy.ndarray`
        ``(n,)`` float32 value of the method's detection image at the peak (image units).
    peak_significance : `numpy.ndarray`
        ``(n,)`` float32 peak value over its noise, in that image.
    """

    labels: np.ndarray
    peaks_xy: np.ndarray
    peak_parent: np.ndarray
    peak_value: np.ndarray
    peak_significance: np.ndarray

    @property
    def n_parents(self) -> int:
        """Number of parent footprints."""
        return int(self.labels.max()) if self.labels.size else 0

    @classmethod
    def build(cls, labels: np.ndarray, peaks_xy: np.ndarray, value: np.ndarray, significance: np.ndarray,
              fallback: np.ndarray) -> Detections:
        """Attach peaks to footprints: drop peaks outside them, give a peakless parent its brightest
        pixel of ``fallback`` (``(H, W)``), sort each parent's peaks brightest first.

        ``value`` and ``significance`` are ``(H, W)`` images sampled at the peaks.
        """
        labels = np.asarray(labels, np.int64)
        peaks_xy = np.asarray(peaks_xy, np.int64).reshape(-1, 2)
        owner = labels[peaks_xy[:, 1], peaks_xy[:, 0]] if len(peaks_xy) else np.zeros(0, np.int64)
        peaks_xy, owner = peaks_xy[owner > 0], owner[owner > 0]
        n = int(labels.max()) if labels.size else 0
        missing = np.setdiff1d(np.arange(1, n + 1), owner)
        if len(missing):
            idx = ndimage.maximum_position(np.where(labels > 0, fallback, -np.inf), labels, missing)
            extra = np.array([[x, y] for y, x in idx], np.int64).reshape(-1, 2)
            peaks_xy = np.concatenate([peaks_xy, extra])
            owner = np.concatenate([owner, missing])
        peaks_xy, first = np.unique(np.concatenate([owner[:, None], peaks_xy], axis=1), axis=0,
                                    return_index=True)
        owner, peaks_xy = peaks_xy[:, 0], peaks_xy[:, 1:]
        v = value[peaks_xy[:, 1], peaks_xy[:, 0]] if len(peaks_xy) else np.zeros(0)
        order = np.lexsort((-v, owner))
        peaks_xy, owner = peaks_xy[order], owner[order]
        return cls(
            labels=labels,
            peaks_xy=peaks_xy,
            peak_parent=owner,
            peak_value=np.asarray(value[peaks_xy[:, 1], peaks_xy[:, 0]], np.float32),
            peak_significance=np.asarray(significance[peaks_xy[:, 1], peaks_xy[:, 0]], np.float32),
        )


def grow_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Grow a label map by ``n`` pixels (4-connected steps) into its zero pixels only.

    Footprints never merge: a pixel reached by two labels keeps the first one's.
    """
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


def grow_and_merge(mask: np.ndarray, radius: float, min_area: int = 1) -> np.ndarray:
    """Label map of ``mask``'s 8-connected regions of at least ``min_area`` pixels, grown by a disc
    of ``radius`` pixels and relabelled, so that regions whose grown footprints touch become one
    parent (Rubin's ``combinedGrow=True, isotropicGrow=True``).
    """
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n and min_area > 1:
        area = np.bincount(labels.ravel(), minlength=n + 1)
        mask = (area >= min_area)[labels] & (labels > 0)
    r = int(radius + 0.5)
    if r > 0:
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        mask = ndimage.binary_dilation(mask, structure=(xx**2 + yy**2) <= r * r)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    return labels.astype(np.int64)


def gaussian_smooth(image: np.ndarray, variance: np.ndarray, bad: np.ndarray, sigma: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Image smoothed by a unit-sum Gaussian of ``sigma`` pixels, and its per-pixel variance.

    Bad pixels count as zero with zero variance. The variance is ``variance`` smoothed by the
    square of the kernel (independent pixels), what ``pixel_stdev`` thresholds use.

    Returns
    -------
    smoothed, smoothed_variance : `numpy.ndarray`
        ``(H, W)`` float64.
    """
    good = ~bad
    img = np.where(good, image, 0.0).astype(np.float64)
    var = np.where(good, variance, 0.0).astype(np.float64)
    if sigma <= 0:
        return img, var
    smoothed = ndimage.gaussian_filter(img, sigma, mode="constant", truncate=4.0)
    # Kernel squared: a Gaussian of sigma / sqrt(2), times 1 / (4 pi sigma^2).
    smoothed_var = ndimage.gaussian_filter(var, sigma / np.sqrt(2.0), mode="constant", truncate=4.0)
    smoothed_var /= 4.0 * np.pi * sigma**2
    return smoothed, smoothed_var


def local_maxima(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(n, 2)`` ``(x, y)`` of pixels in ``mask`` that are >= their 8 neighbours and > at least one
    (afw's peak finder; on a plateau the first pixel in row order is kept)."""
    finite = np.where(mask, image, -np.inf)
    upper = ndimage.maximum_filter(finite, size=3, mode="constant", cval=-np.inf)
    lower = ndimage.minimum_filter(np.where(mask, image, np.inf), size=3, mode="constant", cval=np.inf)
    peak = mask & (finite >= upper) & (finite > lower)
    lab, n = ndimage.label(peak, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros((0, 2), np.int64)
    first = ndimage.minimum_position(np.arange(lab.size).reshape(lab.shape), lab, np.arange(1, n + 1))
    return np.array([[x, y] for y, x in first], np.int64).reshape(-1, 2)


def detect_sep(
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    *,
    threshold: float = 3.0,
    min_area: int = 5,
    deblend_nthresh: int = 32,
    deblend_cont: float = 0.005,
    filter_kernel: np.ndarray | None = None,
    grow: int = 2,
    pixel_stack: int = 1_000_000,
) -> Detections:
    """sep's footprints (deblending off) and the peaks of its deblended objects.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        ``(H, W)`` detection image and its variance.
    bad : `numpy.ndarray`
        ``(H, W)`` bool, pixels to ignore.
    threshold : `float`
        sep's threshold in units of the (matched-filtered) noise.
    min_area : `int`
        Fewest pixels above threshold, pixels.
    deblend_nthresh, deblend_cont : `int`, `float`
        sep's multi-threshold deblending of the peak pass.
    filter_kernel : `numpy.ndarray`, optional
        Filter kernel; `None` for sep's default 3x3 one.
    grow : `int`
        Grow each footprint by this many pixels into undetected pixels (never into another).
    pixel_stack : `int`
        sep's pixel buffer; raised to the image size when smaller.

    Notes
    -----
    sep runs twice with the same threshold, filter and mask: with deblending off, each connected
    region is one parent; with it on, each deblended object's brightest pixel is a peak of the
    parent whose region holds it. Both passes threshold the same pixels, so every peak lies in a
    parent.
    """
    import sep

    image = np.ascontiguousarray(np.where(bad, 0.0, image), dtype=np.float32)
    good_err = np.sqrt(variance[~bad]) if (~bad).any() else np.array([1.0])
    err = np.where(bad, np.median(good_err), np.sqrt(np.where(bad, 1.0, variance))).astype(np.float32)
    sep.set_extract_pixstack(max(int(pixel_stack), image.size))
    common = dict(err=err, mask=bad.astype(np.uint8), minarea=min_area)
    if filter_kernel is not None:
        common["filter_kernel"] = np.ascontiguousarray(filter_kernel, dtype=np.float64)
    sigma = np.sqrt(np.where(bad, np.inf, variance))
    if not (~bad).any():
        return Detections.build(np.zeros(image.shape, np.int64), np.zeros((0, 2)), image, image, image)
    _, seg = sep.extract(image, threshold, deblend_cont=1.0, segmentation_map=True, **common)
    peaks = sep.extract(image, threshold, deblend_nthresh=deblend_nthresh, deblend_cont=deblend_cont, **common)
    labels = grow_labels(seg.astype(np.int64), grow)
    xy = np.stack([peaks["xpeak"], peaks["ypeak"]], axis=1) if len(peaks) else np.zeros((0, 2))
    return Detections.build(labels, xy, image, image / sigma, image)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Unit-sum square Gaussian kernel of ``sigma`` pixels, 3.5 sigma on either side."""
    half = max(1, int(3.5 * sigma + 0.5))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    kernel = np.exp(-0.5 * (xx**2 + yy**2) / sigma**2)
    return kernel / kernel.sum()


def detect_rubin_like(
    images: np.ndarray,
    variances: np.ndarray,
    bads: np.ndarray,
    bands: Sequence[str],
    psf_sigma: Sequence[float],
    *,
    threshold: float = 5.0,
    min_pixels: int = 1,
    n_sigma_grow: float = 2.4,
    priority: Sequence[str] = ("i", "r", "z", "y", "g", "u"),
    min_new_peak: float = 5.0,
    max_same_peak: float = 1.5,
    n_bands_sufficient: int = 2,
    rank_sufficient: int = 20,
    rank_considered: int = 30,
    rank_normalized_considered: float = 0.7,
) -> Detections:
    """Per-band PSF-smoothed 5 sigma detection, merged across bands as Rubin's DRP merges them.

    Parameters
    ----------
    images, variances : `numpy.ndarray`
        ``(bands, H, W)`` images and variances.
    bads : `numpy.ndarray`
        ``(bands, H, W)`` bool, pixels to ignore.
    bands : sequence of `str`
        Band of each plane.
    psf_sigma : sequence of `float`
        Gaussian sigma of each band's PSF, pixels (the smoothing kernel).
    threshold : `float`
        Threshold on the smoothed image in units of its per-pixel noise (``pixel_stdev``).
    min_pixels : `int`
        Fewest pixels above threshold for a footprint.
    n_sigma_grow : `float`
        Grow footprints by this many PSF sigma (per band), merging those that touch.
    priority : sequence of `str`
        Bands in merge order (DRP's ``priorityList``); bands not listed come last.
    min_new_peak, max_same_peak : `float`
        A later band's peak is new only farther than ``min_new_peak`` pixels from every peak
        already in its merged footprint; one within ``max_same_peak`` counts as detected in that
        band too (pixels; Rubin's 1" and 0.3").
    n_bands_sufficient, rank_sufficient, rank_considered, rank_normalized_considered
        ``CullPeaksConfig``: a peak is kept if detected in ``n_bands_sufficient`` bands, or among
        the ``rank_sufficient`` brightest of its family, or its rank is below both
        ``rank_considered`` and ``rank_normalized_considered`` times the family's size.

    Notes
    -----
    Peaks are ranked within a family by their value in the band that found them, as afw's
    ``sortPeaks`` does with the merged peak catalogue.
    """
    order = [bands.index(b) for b in priority if b in bands] + [i for i, b in enumerate(bands)
                                                                 if b not in priority]
    shape = images.shape[1:]
    union = np.zeros(shape, bool)
    per_band = []
    for b in order:
        smoothed, svar = gaussian_smooth(images[b], variances[b], bads[b], psf_sigma[b])
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = np.where(svar > 0, smoothed / np.sqrt(svar), 0.0)
        above = (snr >= threshold) & ~bads[b]
        raw, _ = ndimage.label(above, structure=np.ones((3, 3), bool))
        labels = grow_and_merge(above, n_sigma_grow * psf_sigma[b], min_pixels)
        # afw finds peaks inside each footprint before growing it: local maxima above threshold.
        peaks = local_maxima(smoothed, above & (labels > 0))
        per_band.append((b, labels, peaks, smoothed, snr))
        union |= labels > 0
    merged, _ = ndimage.label(union, structure=np.ones((3, 3), bool))
    merged = merged.astype(np.int64)
    # Merge peaks band by band, in priority order.
    kept_xy, kept_parent, kept_value, kept_snr, kept_nbands = [], [], [], [], []
    for b, _labels, peaks, smoothed, snr in per_band:
        if not len(peaks):
            continue
        parent = merged[peaks[:, 1], peaks[:, 0]]
        existing = np.array(kept_xy, float).reshape(-1, 2)
        existing_parent = np.array(kept_parent, np.int64)
        for (x, y), p in zip(peaks, parent):
            same = existing_parent == p
            if same.any():
                d = np.hypot(existing[same, 0] - x, existing[same, 1] - y)
                if d.min() <= max_same_peak:
                    kept_nbands[np.flatnonzero(same)[np.argmin(d)]] += 1
                if d.min() <= min_new_peak:
                    continue
            kept_xy.append((int(x), int(y)))
            kept_parent.append(int(p))
            kept_value.append(float(smoothed[y, x]))
            kept_snr.append(float(snr[y, x]))
            kept_nbands.append(1)
            existing = np.array(kept_xy, float).reshape(-1, 2)
            existing_parent = np.array(kept_parent, np.int64)
    xy = np.array(kept_xy, np.int64).reshape(-1, 2)
    parent = np.array(kept_parent, np.int64)
    value = np.array(kept_value)
    nbands = np.array(kept_nbands)
    keep = np.zeros(len(xy), bool)
    for p in np.unique(parent):
        idx = np.flatnonzero(parent == p)
        idx = idx[np.argsort(-value[idx], kind="stable")]
        size = len(idx)
        for rank, i in enumerate(idx):
            keep[i] = (rank < rank_sufficient or nbands[i] >= n_bands_sufficient
                       or (rank < rank_considered and rank < rank_normalized_considered * size))
    value_img = np.zeros(shape)
    snr_img = np.zeros(shape)
    value_img[xy[keep, 1], xy[keep, 0]] = value[keep]
    snr_img[xy[keep, 1], xy[keep, 0]] = np.array(kept_snr)[keep]
    fallback = per_band[0][3] if per_band else np.zeros(shape)
    return Detections.build(merged, xy[keep], np.where(value_img != 0, value_img, fallback), snr_img, fallback)


def detect_scarlet_lite(
    images: np.ndarray,
    variances: np.ndarray,
    bads: np.ndarray,
    *,
    min_separation: float = 4.0,
    min_area: int = 4,
    peak_threshold: float = 5.0,
    footprint_threshold: float = 5.0,
    scales: int = 1,
) -> Detections:
    """scarlet_lite's ``detect_footprints`` on the bands (its own SNR-weighted band sum).

    Parameters
    ----------
    images, variances : `numpy.ndarray`
        ``(bands, H, W)``.
    bads : `numpy.ndarray`
        ``(bands, H, W)`` bool; bad pixels enter as zero flux with the median variance.
    min_separation, min_area, peak_threshold, footprint_threshold, scales
        scarlet_lite's ``min_separation`` (pixels), ``min_area`` (pixels), ``peak_thresh``,
        ``footprint_thresh`` and ``scales`` (its defaults).
    """
    from lsst.scarlet.lite.detect import detect_footprints

    good_var = np.array([np.median(v[~m]) if (~m).any() else 1.0 for v, m in zip(variances, bads)])
    imgs = np.where(bads, 0.0, images).astype(np.float32)
    var = np.where(bads, good_var[:, None, None], variances).astype(np.float32)
    shape = images.shape[1:]
    footprints = detect_footprints(imgs, var, scales=scales, min_separation=min_separation, min_area=min_area,
                                   peak_thresh=peak_threshold, footprint_thresh=footprint_threshold)
    labels = np.zeros(shape, np.int64)
    xy = []
    for k, fp in enumerate(footprints, start=1):
        y0, x0 = fp.yx0
        data = np.asarray(fp.data, bool)
        sub = labels[y0 : y0 + data.shape[0], x0 : x0 + data.shape[1]]
        sub[data & (sub == 0)] = k
        xy += [(int(p.x), int(p.y)) for p in fp.peaks]
    sigma = np.sqrt(np.median(var, axis=(1, 2)))
    detection = (imgs / sigma[:, None, None]).sum(axis=0)
    noise = np.sqrt(len(sigma))
    return Detections.build(labels, np.array(xy).reshape(-1, 2), detection, detection / noise, detection)


def detect_prominence(
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    psf_sigma: float,
    *,
    threshold: float = 5.0,
    min_area: int = 5,
    n_sigma_grow: float = 2.4,
    peak_smoothing: float = 0.5,
    prominence: float = 2.5,
    peak_threshold: float = 3.0,
    band_pass: tuple[float, float] | None = None,
    band_pass_threshold: float = 5.0,
    band_pass_min_separation: float = 3.0,
) -> Detections:
    """Matched-filter footprints on the band stack, peaks by their prominence in noise units.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        ``(H, W)`` inverse-variance weighted mean of the bands and its variance.
    bad : `numpy.ndarray`
        ``(H, W)`` bool, pixels with no good band.
    psf_sigma : `float`
        Gaussian sigma of the PSF, pixels.
    threshold : `float`
        Footprints: pixels where the PSF-smoothed image exceeds ``threshold`` times its own
        per-pixel noise (a 5 sigma matched-filter detection of a point source at 5).
    min_area : `int`
        Fewest pixels above threshold for a footprint.
    n_sigma_grow : `float`
        Grow footprints by this many PSF sigma, merging those that touch.
    peak_smoothing : `float`
        Sigma of the Gaussian that smooths the peak image, in units of ``psf_sigma`` (0: none).
        Less than the footprints' 1: smoothing by the PSF merges pairs closer than ~1.2 FWHM.
    prominence : `float`
        Smallest prominence of a peak in units of the peak image's noise: the depth of the dip
        between it and any higher peak of its footprint.
    peak_threshold : `float`
        Smallest significance of a peak in the peak image (units of its noise).
    band_pass : `tuple` [`float`, `float`], optional
        ``(inner, outer)`` sigmas of a difference of Gaussians, in units of ``psf_sigma``: its
        local maxima of at least ``band_pass_threshold`` significance inside a footprint and at
        least ``band_pass_min_separation`` pixels from every prominent peak are peaks too (a
        companion on a brighter galaxy's wing). None: prominent peaks only.
    band_pass_threshold : `float`
        Smallest significance of a band-pass peak (`band_pass_significance`).
    band_pass_min_separation : `float`
        Smallest distance of a band-pass peak from a prominent peak, pixels.
    """
    from skimage.morphology import h_maxima

    smoothed, svar = gaussian_smooth(image, variance, bad, psf_sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(svar > 0, smoothed / np.sqrt(svar), 0.0)
    above = (snr >= threshold) & ~bad
    labels = grow_and_merge(above, n_sigma_grow * psf_sigma, min_area)
    if not (labels > 0).any():
        return Detections.build(labels, np.zeros((0, 2)), smoothed, snr, smoothed)
    peak_img, peak_var = gaussian_smooth(image, variance, bad, peak_smoothing * psf_sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        peak_snr = np.where(peak_var > 0, peak_img / np.sqrt(peak_var), 0.0)
    xy = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[sl] == k
        sub = np.where(inside, peak_snr[sl], peak_snr[sl][inside].min() - prominence - 1.0)
        maxima = h_maxima(sub, prominence).astype(bool) & inside & (sub >= peak_threshold)
        lab, n = ndimage.label(maxima, structure=np.ones((3, 3), bool))
        if n:
            pos = ndimage.maximum_position(sub, lab, np.arange(1, n + 1))
            xy += [(x + sl[1].start, y + sl[0].start) for y, x in pos]
    xy = np.array(xy, np.int64).reshape(-1, 2)
    if band_pass is not None:
        bp_snr = band_pass_significance(image, variance, bad, band_pass[0] * psf_sigma, band_pass[1] * psf_sigma)
        extra = local_maxima(bp_snr, labels > 0)
        extra = extra[bp_snr[extra[:, 1], extra[:, 0]] >= band_pass_threshold]
        if len(extra) and len(xy):
            # A band-pass maximum beside a prominent peak is that peak, seen through another filter.
            gap = np.hypot(extra[:, None, 0] - xy[None, :, 0], extra[:, None, 1] - xy[None, :, 1]).min(axis=1)
            extra = extra[gap >= band_pass_min_separation]
        xy = np.concatenate([xy, extra])
    return Detections.build(labels, xy, peak_img, peak_snr, smoothed)


def band_pass_significance(image: np.ndarray, variance: np.ndarray, bad: np.ndarray, inner: float,
                           outer: float) -> np.ndarray:
    """Significance of the image filtered by a difference of two unit-sum Gaussians.

    The kernel ``G(inner) - G(outer)`` keeps structure between the two scales and removes what is
    smooth on the larger one (a bright neighbour's wing, the sky's residual): on it a faint galaxy
    is a maximum even where the smoothed image only bends. Its noise is the variance convolved
    with the square of the discrete kernel (independent pixels), so the significance is exact for
    the kernel as sampled, however narrow ``inner``; bad pixels count as zero with zero variance.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        ``(H, W)`` image and per-pixel variance.
    bad : `numpy.ndarray`
        ``(H, W)`` bool, pixels to ignore.
    inner, outer : `float`
        Sigmas of the two Gaussians, pixels (``0 < inner < outer``).

    Returns
    -------
    significance : `numpy.ndarray`
        ``(H, W)`` float64 filtered image over its noise; 0 where the noise is zero.
    """
    from scipy.signal import fftconvolve

    if not 0.0 < inner < outer:
        raise MadnessValueError(f"band_pass_significance: need 0 < inner < outer, got {inner}, {outer}.")
    half = max(1, int(np.ceil(4.0 * outer)))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    r2 = (xx**2 + yy**2).astype(np.float64)
    narrow, wide = np.exp(-0.5 * r2 / inner**2), np.exp(-0.5 * r2 / outer**2)
    kernel = narrow / narrow.sum() - wide / wide.sum()
    good = ~bad
    img = np.where(good, image, 0.0).astype(np.float64)
    var = np.where(good, variance, 0.0).astype(np.float64)
    filtered = fftconvolve(img, kernel, mode="same")
    # FFT round-off can leave tiny negative variances where the image is all bad.
    noise2 = np.maximum(fftconvolve(var, kernel**2, mode="same"), 0.0)
    floor = 1e-12 * float(noise2.max()) if noise2.size else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(noise2 > floor, filtered / np.sqrt(noise2), 0.0)
