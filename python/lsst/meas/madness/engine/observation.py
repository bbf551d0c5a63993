"""Validation of one blend's arrays and their conversion into what the MAP fit needs.

What counts as bad input, and what happens to it:

==================================  =========================================================
wrong number of bands               `MadnessValueError`
image/variance/mask shapes differ   `MadnessValueError`
no peaks; NaN/inf peak coordinates  `MadnessValueError`
peak outside the image              `MadnessValueError` naming the peaks (drop or flag them
                                    before calling: the engine cannot place them)
two peaks in the same pixel         `MadnessValueError` naming the pairs (their models would
                                    be degenerate)
more peaks than ``max_sources``     `MadnessRangeError` (the task flags ``tooManyPeaks``)
NaN/inf pixel, NaN/inf/<=0 variance the pixel gets zero weight (excluded from the fit and
or masked pixel                     zeroed in the encoder cutouts); counted per source in
                                    ``masked_fraction``
source with no usable pixel         per-source flag ``no_data``: its latents follow the prior
stamp crossing the image edge       per-source flag ``edge``; the model is cropped in the fit
no usable pixel in the whole blend  `MadnessNoDataError`
zoom not an integer in [1, 4], or   `MadnessValueError`
not one per peak
==================================  =========================================================

A source with ``zoom`` z > 1 is drawn with z-times larger pixels (a galaxy bigger than the
stamp, `lsst.meas.madness.engine.geometry.zoom_placement_matrices`): its footprint, over which
``edge`` and ``masked_fraction`` are counted and which the fit region covers, is
``zoom_footprint_size(S, z)`` pixels wide, and its encoder cutout is the image binned by z
around its peak (`lsst.meas.madness.engine.geometry.zoom_bin_stamps`).
"""

from __future__ import annotations

__all__ = ["PreparedBlend", "bad_pixels", "prepare_blend"]

import dataclasses

import numpy as np

from ..errors import MadnessNoDataError, MadnessRangeError, MadnessValueError
from ..networks.normalization import LinearNormalization
from .geometry import (
    crop_stamps,
    fit_region,
    peaks_to_pixels,
    shift_stamps,
    stamp_origins,
    subpixel_shifts,
    zoom_bin_stamps,
    zoom_footprint_size,
)


@dataclasses.dataclass
class PreparedBlend:
    """One validated blend, normalised and cut to its fit region.

    Attributes
    ----------
    image_shape : `tuple` [`int`, `int`]
        ``(H, W)`` of the input image.
    peaks_xy : `numpy.ndarray`
        ``(n, 2)`` input peak positions, ``(x, y)`` pixels.
    origins : `numpy.ndarray`
        ``(n, 2)`` ``(y0, x0)`` of each source's stamp in image pixels (centred on the peak's
        pixel, `lsst.meas.madness.engine.geometry.stamp_origins`).
    shifts : `numpy.ndarray`
        ``(n, 2)`` ``(dy, dx)`` sub-pixel offset of each peak from its pixel's centre, in
        ``[-0.5, 0.5)`` pixels: the fit draws each source's model shifted by it.
    region : `tuple`
        ``(y0, x0, y1, x1)`` fit region in image pixels (end exclusive).
    data : `numpy.ndarray`
        ``(bands, h, w)`` float32 image of the region, network units, bad pixels zeroed.
    weights : `numpy.ndarray`
        ``(bands, h, w)`` float32 inverse variance in network units, zero for bad pixels.
    cutouts : `numpy.ndarray`
        ``(n, bands, S, S)`` float32 peak-centred cutouts, network units, zero off the image
        and on bad pixels, shifted by ``-shifts`` so each source sits at the cutout's centre
        as in the encoder's training stamps (the encoder's input); binned by ``zoom`` for
        zoomed sources.
    edge, no_data : `numpy.ndarray`
        ``(n,)`` bool flags: footprint crosses the image edge; footprint has no usable pixel.
    masked_fraction : `numpy.ndarray`
        ``(n,)`` fraction of the in-image footprint pixels (all bands) with zero weight.
    zoom : `numpy.ndarray`
        ``(n,)`` int64 image pixels per stamp pixel of each source (1: the decoder's stamp as is).
    offset_free : `numpy.ndarray`
        ``(n,)`` bool: the source's position may move with ``MapSettings.fit_offsets`` (every
        zoom-1 source by default; a zoomed source never, its window is placed on its float peak).
    """

    image_shape: tuple[int, int]
    peaks_xy: np.ndarray
    origins: np.ndarray
    shifts: np.ndarray
    region: tuple[int, int, int, int]
    data: np.ndarray
    weights: np.ndarray
    cutouts: np.ndarray
    edge: np.ndarray
    no_data: np.ndarray
    masked_fraction: np.ndarray
    zoom: np.ndarray | None = None
    offset_free: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.zoom is None:
            self.zoom = np.ones(len(self.peaks_xy), np.int64)
        if self.offset_free is None:
            self.offset_free = self.zoom == 1

    @property
    def n_sources(self) -> int:
        return len(self.peaks_xy)

    @property
    def footprint_sizes(self) -> np.ndarray:
        """``(n,)`` side of each source's footprint (`zoom_footprint_size`), pixels."""
        return np.atleast_1d(zoom_footprint_size(self.cutouts.shape[-1], self.zoom))

    @property
    def footprint_origins(self) -> np.ndarray:
        """``(n, 2)`` ``(y0, x0)`` of each footprint, centred on its peak's pixel like ``origins``."""
        s = self.cutouts.shape[-1]
        return self.origins + s // 2 - (self.footprint_sizes // 2)[:, None]


def bad_pixels(image: np.ndarray, variance: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Pixels that carry no information and get zero weight in the fit (the module table).

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        ``(bands, H, W)`` image and its variance.
    mask : `numpy.ndarray` or `None`
        ``(bands, H, W)`` or ``(H, W)``, bool or integer: non-zero marks a bad pixel.

    Returns
    -------
    bad : `numpy.ndarray`
        ``(bands, H, W)`` bool: NaN/inf pixel, NaN/inf/<=0 variance, or masked.

    Raises
    ------
    MadnessValueError
        ``mask`` has neither the image's shape nor that of one band.
    """
    image = np.asarray(image)
    variance = np.asarray(variance)
    bad = ~np.isfinite(image) | ~np.isfinite(variance) | ~(variance > 0)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape == image.shape[1:]:
            mask = np.broadcast_to(mask, image.shape)
        if mask.shape != image.shape:
            raise MadnessValueError(
                f"mask shape {mask.shape} matches neither {image.shape} nor {image.shape[1:]}."
            )
        bad |= mask.astype(bool)
    return bad


def _check_peaks(peaks_xy, image_shape, max_sources: int) -> tuple[np.ndarray, np.ndarray]:
    peaks_xy = np.asarray(peaks_xy, dtype=np.float64)
    if peaks_xy.ndim == 1 and peaks_xy.size == 2:
        peaks_xy = peaks_xy[None, :]
    if peaks_xy.ndim != 2 or peaks_xy.shape[1] != 2:
        raise MadnessValueError(f"peaks_xy must have shape (n, 2) of (x, y) pixels; got {peaks_xy.shape}.")
    n = len(peaks_xy)
    if n == 0:
        raise MadnessValueError("No peaks: a blend needs at least one peak to deblend.")
    if n > max_sources:
        raise MadnessRangeError(f"Too many peaks in one blend ({n}).", n, 1, max_sources)
    if not np.all(np.isfinite(peaks_xy)):
        bad = np.flatnonzero(~np.all(np.isfinite(peaks_xy), axis=1)).tolist()
        raise MadnessValueError(f"Peaks {bad} have non-finite coordinates.")
    pix = peaks_to_pixels(peaks_xy)
    height, width = image_shape
    off = (pix[:, 0] < 0) | (pix[:, 0] >= height) | (pix[:, 1] < 0) | (pix[:, 1] >= width)
    if off.any():
        idx = np.flatnonzero(off)
        raise MadnessValueError(
            f"Peaks {idx.tolist()} at (x, y) {peaks_xy[idx].tolist()} lie outside the {width}x{height} image."
        )
    _, first, counts = np.unique(pix, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup_pixels = {tuple(pix[i]) for i in first[counts > 1]}
        groups = [np.flatnonzero((pix == p).all(axis=1)).tolist() for p in sorted(dup_pixels)]
        raise MadnessValueError(f"Peaks {groups} fall in the same pixel; pass one peak per source.")
    return peaks_xy, pix


def prepare_blend(
    image: np.ndarray,
    peaks_xy: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray | None,
    *,
    num_bands: int,
    stamp_size: int,
    normalization: LinearNormalization,
    max_sources: int,
    zoom=None,
    fit_offsets=None,
    whole_image: bool = False,
) -> PreparedBlend:
    """Validate one blend and cut what the fit needs (see the module table for bad input).

    Parameters
    ----------
    image : `numpy.ndarray`
        ``(bands, H, W)`` image, flux units per pixel.
    peaks_xy : `numpy.ndarray`
        ``(n, 2)`` peak positions, ``(x, y)`` pixels in the image's frame.
    variance : `numpy.ndarray`
        ``(bands, H, W)`` per-pixel variance, flux units squared.
    mask : `numpy.ndarray` or `None`
        ``(bands, H, W)`` or ``(H, W)``, bool or integer: non-zero marks a bad pixel.
    num_bands : `int`
        Bands the model expects.
    stamp_size : `int`
        Model stamp side in pixels.
    normalization : `LinearNormalization`
        The model's flux normalisation.
    max_sources : `int`
        Largest accepted number of peaks.
    zoom : `int` or array-like, optional
        ``(n,)`` or one zoom factor per source (see the module docstring); 1 by default.
    fit_offsets : array-like of `bool`, optional
        ``(n,)``: which sources' positions ``MapSettings.fit_offsets`` fits (every zoom-1
        source by default). A zoomed source's cannot be fitted.
    whole_image : `bool`
        Fit every pixel of the image, not only the bounding box of the stamps: the region the
        envelopes of bright galaxies (their light beyond their stamps) may reach
        (`lsst.meas.madness.engine.envelope`). Pixels outside every stamp only add a constant
        to the objective of a fit without envelopes.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise MadnessValueError(f"image must be (bands, H, W); got shape {image.shape}.")
    if image.shape[0] != num_bands:
        raise MadnessValueError(
            f"image has {image.shape[0]} bands but the model expects {num_bands}; "
            "pass the bands in the model's order (see MadnessDeblender.bands)."
        )
    if variance is None:
        raise MadnessValueError("variance is required: the fit weights pixels by their own inverse variance.")
    variance = np.asarray(variance)
    if variance.shape != image.shape:
        raise MadnessValueError(f"variance shape {variance.shape} differs from image shape {image.shape}.")
    bad = bad_pixels(image, variance, mask)

    image_shape = image.shape[1:]
    peaks_xy, pix = _check_peaks(peaks_xy, image_shape, max_sources)
    origins = stamp_origins(pix, stamp_size)
    if zoom is None:
        zoom = np.ones(len(pix), np.int64)
    try:
        zoom = np.broadcast_to(np.asarray(zoom), (len(pix),))
        sizes = np.atleast_1d(zoom_footprint_size(stamp_size, zoom))
    except ValueError as err:
        raise MadnessValueError(f"zoom must be one integer in [1, 4] or one per peak: {err}") from None
    zoom = zoom.astype(np.int64)
    offset_free = None  # PreparedBlend's default: every zoom-1 source
    if fit_offsets is not None:
        offset_free = np.asarray(fit_offsets, bool).reshape(-1)
        if offset_free.shape != zoom.shape:
            raise MadnessValueError(f"fit_offsets must hold one bool per peak ({len(zoom)}); got {offset_free.shape}.")
        if (offset_free & (zoom > 1)).any():
            raise MadnessValueError(
                "fit_offsets marks a source drawn at zoom > 1: a zoomed window has no fitted offset."
            )
    footprints = pix - (sizes // 2)[:, None]
    if whole_image:
        y0, x0, y1, x1 = 0, 0, *image_shape
    else:
        y0, x0, y1, x1 = fit_region(footprints, sizes, image_shape)

    region_bad = bad[:, y0:y1, x0:x1]
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = np.where(region_bad, 0.0, 1.0 / normalization.normalize_variance(variance[:, y0:y1, x0:x1]))
    data = np.where(region_bad, 0.0, normalization.normalize(image[:, y0:y1, x0:x1]))
    if not (weights > 0).any():
        raise MadnessNoDataError(
            "No usable pixel in the blend: every pixel is masked, non-finite or has non-positive variance."
        )

    # Encoder cutouts, zero off the image and on bad pixels, each source moved to the centre
    # of its cutout; per-source bad-pixel statistics over the in-image stamp pixels.
    shifts = subpixel_shifts(peaks_xy)
    clean = np.where(bad, 0.0, image).astype(np.float32)
    cutouts = shift_stamps(crop_stamps(clean, origins, stamp_size), -shifts).astype(np.float32)
    in_image = np.zeros(len(pix))
    n_bad = np.zeros(len(pix))
    for size in np.unique(sizes):
        idx = np.flatnonzero(sizes == size)
        in_image[idx] = crop_stamps(np.ones((1, *image_shape), np.float32), footprints[idx],
                                    int(size)).sum(axis=(1, 2, 3))
        n_bad[idx] = crop_stamps(bad.astype(np.float32), footprints[idx], int(size)).sum(axis=(1, 2, 3))
    zoomed = np.flatnonzero(zoom > 1)
    if len(zoomed):
        peaks_yx = peaks_xy[zoomed, ::-1]
        cutouts[zoomed] = zoom_bin_stamps(clean, peaks_yx, zoom[zoomed], stamp_size)
    edge = in_image < sizes.astype(np.float64) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        masked_fraction = np.where(in_image > 0, n_bad / (num_bands * in_image), 1.0)
    cutouts = normalization.normalize(cutouts)

    return PreparedBlend(
        image_shape=tuple(image_shape),
        peaks_xy=peaks_xy,
        origins=origins,
        shifts=shifts,
        region=(y0, x0, y1, x1),
        data=data.astype(np.float32),
        weights=weights.astype(np.float32),
        cutouts=cutouts,
        edge=edge,
        no_data=masked_fraction >= 1.0,
        masked_fraction=masked_fraction,
        zoom=zoom,
        offset_free=offset_free,
    )
