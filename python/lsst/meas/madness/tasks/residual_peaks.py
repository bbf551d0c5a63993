"""Residual peaks: sources the detection missed, found in a first deblend's residual.

After a parent is deblended, the observed pixels minus all models (its children and the
neighbours fitted with it) should be noise. A galaxy the detection missed (a faint companion on
a bright wing, one of an unresolved pair) leaves a positive bump there. `residual_significance`
filters the band-summed residual with the PSF (a matched filter, in units of its own noise) and
`find_residual_peaks` takes its local maxima above a threshold inside the parent's footprint, away
from the existing peaks. The task then refits the parent with these peaks added and keeps them
only when the MAP objective (chi^2 / 2 minus log-prior) falls by more than `bic_penalty` per
added source: the extra ``latent_dim`` parameters must pay for themselves.

The significance is of the summed residual, not a chi^2 image: chi^2 also rises where a model is
too bright, and a missing source shows as a positive residual only. Its noise may include a
fractional model error, so that the imperfect drawing of a bright galaxy is not read as a source.

A galaxy bigger than the stamp is the exception the model error cannot cover: cut at its stamp
(``deblend_truncated``) its wings are all residual, and drawn with larger pixels (``deblend_zoom``
> 1) its profile is coarser than the PSF. `unmodelled_light` marks where such a source's light
lies, and no residual peak is taken there: a bump in those wings is the big galaxy itself, not a
galaxy the detection missed.
"""

from __future__ import annotations

__all__ = ["bic_penalty", "find_residual_peaks", "residual_significance", "unmodelled_light"]

import numpy as np
from scipy import ndimage


def residual_significance(
    residual: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    sigma: float,
    model: np.ndarray | None = None,
    model_error: float = 0.0,
) -> np.ndarray:
    """Matched-filter significance of the band-summed residual, noise units.

    Parameters
    ----------
    residual : `numpy.ndarray`
        ``(bands, H, W)`` observed minus model, flux units per pixel.
    variance : `numpy.ndarray`
        ``(bands, H, W)`` pixel variance, flux units squared.
    bad : `numpy.ndarray`
        ``(bands, H, W)`` bool, pixels to ignore (zero weight).
    sigma : `float`
        Gaussian sigma of the filter (the PSF's), pixels, > 0.
    model : `numpy.ndarray`, optional
        ``(bands, H, W)`` the fitted models' sum; needed when ``model_error > 0``.
    model_error : `float`, optional
        Fractional error of the fitted models, >= 0. The filtered model times ``model_error``
        is added in quadrature to the noise: a decoder that cannot draw a bright galaxy's
        exact profile leaves a residual that scales with the galaxy, and this keeps such a
        residual from reading as a new source, while a companion on a faint wing stays
        significant. The error is taken as coherent over the filter (not averaged down).

    Returns
    -------
    significance : `numpy.ndarray`
        ``(H, W)`` float64: the Gaussian-filtered band sum of the residual divided by the
        standard deviation that filtered sum has under the variance and the model error
        (0 where no pixel counts).
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 pixels; got {sigma=}.")
    if not model_error >= 0:
        raise ValueError(f"model_error must be >= 0; got {model_error=}.")
    if model_error > 0 and model is None:
        raise ValueError("model_error > 0 needs the fitted model.")
    good = ~np.asarray(bad, bool) & np.isfinite(residual) & np.isfinite(variance) & (variance > 0)
    summed = np.where(good, residual, 0.0).sum(axis=0)
    summed_var = np.where(good, variance, 0.0).sum(axis=0)
    signal = ndimage.gaussian_filter(summed.astype(np.float64), sigma, mode="constant")
    # Variance of a filtered sum: the variance filtered by the kernel squared, a Gaussian of
    # sigma / sqrt(2) scaled by 1 / (4 pi sigma^2).
    noise_var = ndimage.gaussian_filter(summed_var.astype(np.float64), sigma / np.sqrt(2), mode="constant")
    noise_var /= 4.0 * np.pi * sigma**2
    if model_error > 0:
        summed_model = np.where(good, model, 0.0).sum(axis=0).astype(np.float64)
        noise_var += (model_error * ndimage.gaussian_filter(summed_model, sigma, mode="constant")) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(noise_var > 0, signal / np.sqrt(noise_var), 0.0)


def unmodelled_light(
    shape: tuple[int, int],
    centers_xy: np.ndarray,
    zoom: np.ndarray,
    truncated: np.ndarray,
    stamp_size: int,
) -> np.ndarray:
    """Where the light of sources drawn zoomed or cut at their stamp lies, as a pixel mask.

    A source drawn with ``zoom > 1`` covers a window of ``stamp_size * zoom`` pixels; within the
    circle through the window's sides its model is coarser than the PSF, and a smooth profile it
    draws too steep leaves a broad positive residual. A source whose model is cut by its stamp
    (``truncated``) runs short of light towards its window's edge (the decoder draws light that
    fits inside the stamp) and has light beyond it: from that circle out to one with the window's
    full side as radius (twice as far, where a disc cut at ~2 half-light radii still has light
    above the noise), the residual is its wings. Inside the circle through a truncated source's
    window sides the model holds the light and a companion may still be found.

    Parameters
    ----------
    shape : `tuple` [`int`, `int`]
        ``(H, W)`` of the grid.
    centers_xy : `numpy.ndarray`
        ``(n, 2)`` ``(x, y)`` centres of the fitted sources, pixels of the same grid.
    zoom : `numpy.ndarray`
        ``(n,)`` image pixels per stamp pixel of each source's model (1: as decoded).
    truncated : `numpy.ndarray`
        ``(n,)`` bool: the source's model runs into its stamp's edge.
    stamp_size : `int`
        Side of the decoder's stamp, pixels.

    Returns
    -------
    mask : `numpy.ndarray`
        ``(H, W)`` bool, True within the circle of a zoomed source and in the ring of a
        truncated one; all False when no source is either.
    """
    centers_xy = np.asarray(centers_xy, np.float64).reshape(-1, 2)
    zoom = np.asarray(zoom).reshape(-1)
    truncated = np.asarray(truncated, bool).reshape(-1)
    if not (len(zoom) == len(truncated) == len(centers_xy)):
        raise ValueError(
            f"centers_xy, zoom and truncated must have one row per source; got {len(centers_xy)}, "
            f"{len(zoom)} and {len(truncated)}."
        )
    mask = np.zeros(shape, bool)
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    for (x, y), z, cut in zip(centers_xy, zoom, truncated):
        if z <= 1 and not cut:
            continue  # most sources: no full-grid work for them
        side = stamp_size * z
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        if z > 1:
            mask |= r2 <= (side / 2) ** 2
        if cut:
            mask |= (r2 > (side / 2) ** 2) & (r2 <= side**2)
    return mask


def find_residual_peaks(
    significance: np.ndarray,
    footprint: np.ndarray,
    peaks_xy: np.ndarray,
    *,
    threshold: float,
    min_separation: float,
    max_peaks: int,
) -> np.ndarray:
    """Local maxima of a significance image above ``threshold``, strongest first.

    Parameters
    ----------
    significance : `numpy.ndarray`
        ``(H, W)`` significance (`residual_significance`).
    footprint : `numpy.ndarray`
        ``(H, W)`` bool: where a new peak may lie (the parent's footprint).
    peaks_xy : `numpy.ndarray`
        ``(n, 2)`` ``(x, y)`` peaks already fitted (the parent's and its neighbours'), pixels of
        the same grid.
    threshold : `float`
        Least significance of a new peak, noise units.
    min_separation : `float`
        Least distance of a new peak to any other peak, old or new, pixels.
    max_peaks : `int`
        Most peaks returned.

    Returns
    -------
    peaks_xy : `numpy.ndarray`
        ``(k, 2)`` int64 ``(x, y)`` pixels of the new peaks, ``k <= max_peaks``.
    """
    maxima = (significance == ndimage.maximum_filter(significance, size=3, mode="nearest"))
    maxima &= (significance > threshold) & np.asarray(footprint, bool)
    ys, xs = np.nonzero(maxima)
    order = np.argsort(-significance[ys, xs], kind="stable")
    taken = [np.asarray(p, np.float64) for p in np.asarray(peaks_xy, np.float64).reshape(-1, 2)]
    found = []
    for i in order:
        xy = np.array([xs[i], ys[i]], np.float64)
        if all(np.hypot(*(xy - p)) >= min_separation for p in taken):
            found.append(xy)
            taken.append(xy)
            if len(found) >= max_peaks:
                break
    return np.array(found, np.int64).reshape(-1, 2)


def bic_penalty(latent_dim: int, n_pixels: int) -> float:
    """Objective decrease one more source must bring: the BIC's ``k/2 * ln(n)`` for its latents.

    Parameters
    ----------
    latent_dim : `int`
        Parameters of a source (its latents).
    n_pixels : `int`
        Data points of the fit (usable pixels over all bands), >= 1.

    Returns
    -------
    penalty : `float`
        In the units of the MAP objective (chi^2 / 2 minus log-prior).
    """
    return 0.5 * latent_dim * float(np.log(max(n_pixels, 1)))
