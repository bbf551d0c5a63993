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

Nor can the model error cover a bright galaxy whose decoded model holds only its core: there
the model is near zero where the galaxy's light is bright, and the whole profile around the core
is residual. Such a residual is the galaxy's own light, symmetric about its centre as galaxies
are (the symmetry the SDSS and Rubin ``meas_deblender`` templates are built on), while a missed
galaxy leaves a bump on one side only: `mirrored_significance` reads the residual at a bump's
mirror image through each fitted centre within reach, and `find_residual_peaks` drops a bump
whose mirror image is nearly as significant (``symmetry``).

Nor does the mirror catch a bright galaxy whose decoded profile stops inside its stamp, nearer its
centre on one side than on the other (the decoder's output is cut to zero where it runs short
of its range): its light beyond the cut is a ring of residual all around it, brightest where the
cut is nearest, and that arc's mirror image is faint. `ring_significance` takes the median over
the ring through a bump around each fitted centre within reach; a ring that is significant all
around (``ring``, noise units) and bright against the bump (``ring_fraction`` of it: a very bright
companion near a centre lights the ring through it with its own wings) is that source's light,
and nothing on it is taken as new.

Nor does either catch the smaller errors of a model that holds its galaxy: drawn a pixel off, or
a little too narrow along one axis, it leaves a bump beside its centre that the model error's 5%
does not cover when the galaxy is bright. Such a bump is faint against the models around it:
`model_contrast` is the filtered models over the filtered residual, and opt-in no peak is taken
where it exceeds a bound (``MadnessDeblendConfig.residualPeakMaxModelContrast``). Opt-in, because a
faint galaxy whose near side a neighbour's first model took is faint against that model too.

A galaxy bigger than the stamp is the exception the model error cannot cover: cut at its stamp
(``deblend_truncated``) its wings are all residual, and drawn with larger pixels (``deblend_zoom``
> 1) its profile is coarser than the PSF. `unmodelled_light` marks where such a source's light
lies, and no residual peak is taken there: a bump in those wings is the big galaxy itself, not a
galaxy the detection missed.
"""

from __future__ import annotations

__all__ = [
    "bic_penalty",
    "find_residual_peaks",
    "model_contrast",
    "mirrored_significance",
    "residual_significance",
    "ring_significance",
    "unmodelled_light",
]

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
    signal = _filtered_band_sum(residual, good, sigma)
    # Variance of a filtered sum: the variance filtered by the kernel squared, a Gaussian of
    # sigma / sqrt(2) scaled by 1 / (4 pi sigma^2).
    noise_var = _filtered_band_sum(variance, good, sigma / np.sqrt(2))
    noise_var /= 4.0 * np.pi * sigma**2
    if model_error > 0:
        noise_var += (model_error * _filtered_band_sum(model, good, sigma)) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(noise_var > 0, signal / np.sqrt(noise_var), 0.0)


def model_contrast(
    residual: np.ndarray, model: np.ndarray, bad: np.ndarray, sigma: float
) -> np.ndarray:
    """The fitted models over the residual, both band-summed and filtered as the significance is.

    A bump of the residual much fainter than the models around it may be their error (a dipole
    where a model sits a pixel off, an arc where its profile is too narrow), or a faint galaxy
    whose light a neighbour's model partly took.

    Parameters
    ----------
    residual, model : `numpy.ndarray`
        ``(bands, H, W)`` observed minus model, and the fitted models' sum, flux units per pixel.
    bad : `numpy.ndarray`
        ``(bands, H, W)`` bool, pixels to ignore.
    sigma : `float`
        Gaussian sigma of the filter (the PSF's), pixels, > 0.

    Returns
    -------
    contrast : `numpy.ndarray`
        ``(H, W)`` float64: filtered model over filtered residual, ``inf`` where the filtered
        residual is <= 0.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 pixels; got {sigma=}.")
    good = ~np.asarray(bad, bool) & np.isfinite(residual) & np.isfinite(model)
    light, models = (_filtered_band_sum(a, good, sigma) for a in (residual, model))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(light > 0, np.maximum(models, 0.0) / light, np.inf)


def _filtered_band_sum(planes: np.ndarray, good: np.ndarray, sigma: float) -> np.ndarray:
    """``(H, W)`` float64: the band sum of ``planes`` over the ``good`` pixels, filtered by a
    Gaussian of ``sigma`` (zero beyond the grid)."""
    summed = np.where(good, planes, 0.0).sum(axis=0).astype(np.float64)
    return ndimage.gaussian_filter(summed, sigma, mode="constant")


def unmodelled_light(
    shape: tuple[int, int],
    centers_xy: np.ndarray,
    zoom: np.ndarray,
    truncated: np.ndarray,
    stamp_size: int,
    enveloped: np.ndarray | None = None,
) -> np.ndarray:
    """Where the light of sources drawn zoomed or cut at their stamp lies, as a pixel mask.

    A source drawn with ``zoom > 1`` covers a window of ``stamp_size * zoom`` pixels; within the
    circle through the window's sides its model is coarser than the PSF, and a smooth profile it
    draws too steep leaves a broad positive residual. A source whose model is cut by its stamp
    (``truncated``) runs short of light towards its window's edge (the decoder draws light that
    fits inside the stamp) and has light beyond it: from that circle out to one with the window's
    full side as radius (twice as far, where a disc cut at ~2 half-light radii still has light
    above the noise), the residual is its wings. Inside the circle through a truncated source's
    window sides the model holds the light and a companion may still be found. A source with an
    envelope (its light went on beyond its stamp, `DeblendResult.enveloped`) is a bright galaxy
    the decoder did not hold inside its stamp either (an r = 17 de Vaucouleurs galaxy is drawn to
    ~10 px and its light 10-30 px out is all residual, `tests/test_task_envelope.py`): its whole
    circle of the window's side is its light.

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
    enveloped : `numpy.ndarray`, optional
        ``(n,)`` bool: the source has an envelope (none by default).

    Returns
    -------
    mask : `numpy.ndarray`
        ``(H, W)`` bool, True within the circle of a zoomed source, in the ring of a truncated
        one and within the window's side of an enveloped one; all False when no source is any.
    """
    centers_xy = np.asarray(centers_xy, np.float64).reshape(-1, 2)
    zoom = np.asarray(zoom).reshape(-1)
    truncated = np.asarray(truncated, bool).reshape(-1)
    enveloped = np.zeros(len(centers_xy), bool) if enveloped is None else np.asarray(enveloped, bool).reshape(-1)
    if not (len(zoom) == len(truncated) == len(enveloped) == len(centers_xy)):
        raise ValueError(
            f"centers_xy, zoom, truncated and enveloped must have one row per source; got {len(centers_xy)}, "
            f"{len(zoom)}, {len(truncated)} and {len(enveloped)}."
        )
    mask = np.zeros(shape, bool)
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    for (x, y), z, cut, env in zip(centers_xy, zoom, truncated, enveloped):
        if z <= 1 and not cut and not env:
            continue  # most sources: no full-grid work for them
        side = stamp_size * z
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        if z > 1 or env:
            mask |= r2 <= (side / 2) ** 2
        if cut or env:
            mask |= (r2 > (side / 2) ** 2) & (r2 <= side**2)
    return mask


def _bump_and_centres(significance, xy, centers_xy, reach):
    """The arguments of `mirrored_significance` and `ring_significance` as float64 arrays of
    shapes ``(H, W)``, ``(2,)``, ``(n, 2)`` and ``(n,)`` (a scalar reach holds for every centre)."""
    centers_xy = np.asarray(centers_xy, np.float64).reshape(-1, 2)
    return (np.asarray(significance, np.float64), np.asarray(xy, np.float64).reshape(2), centers_xy,
            np.broadcast_to(np.asarray(reach, np.float64), (len(centers_xy),)))


def mirrored_significance(
    significance: np.ndarray, xy: np.ndarray, centers_xy: np.ndarray, reach: np.ndarray
) -> np.ndarray:
    """Significance at the mirror image of a pixel through each fitted centre.

    Parameters
    ----------
    significance : `numpy.ndarray`
        ``(H, W)`` significance (`residual_significance`).
    xy : `numpy.ndarray`
        ``(2,)`` ``(x, y)`` pixel of a residual bump.
    centers_xy : `numpy.ndarray`
        ``(n, 2)`` ``(x, y)`` fitted centres, pixels of the same grid.
    reach : `numpy.ndarray`
        ``(n,)`` distance in pixels out to which each source's light is read as its own (e.g.
        its window's side).

    Returns
    -------
    mirrored : `numpy.ndarray`
        ``(n,)`` float64: the largest significance in the 3x3 pixels around ``2 c - xy`` for each
        centre ``c`` no farther than its reach (the mirror of a bump half a pixel off a pixel's
        centre lands between pixels); ``-inf`` for a centre out of reach or a mirror image off
        the grid, where there is no evidence either way.
    """
    significance, xy, centers_xy, reach = _bump_and_centres(significance, xy, centers_xy, reach)
    h, w = significance.shape
    out = np.full(len(centers_xy), -np.inf)
    for k, (c, r) in enumerate(zip(centers_xy, reach)):
        if np.hypot(*(xy - c)) > r:
            continue
        mx, my = np.rint(2.0 * c - xy).astype(np.int64)
        if not (0 <= mx < w and 0 <= my < h):
            continue
        out[k] = significance[max(my - 1, 0):my + 2, max(mx - 1, 0):mx + 2].max()
    return out


def ring_significance(
    significance: np.ndarray, xy: np.ndarray, centers_xy: np.ndarray, reach: np.ndarray, width: float = 1.0
) -> np.ndarray:
    """Median significance on the ring through a pixel around each fitted centre.

    A source whose outer light the model does not hold (a bright galaxy drawn short of its
    stamp's edge, its PSF's wing inside the stamp) leaves positive residual all around it at
    that radius, uneven where the decoded profile is not round; a missed galaxy is a bump on an
    arc of the ring only. The median over the ring reads the first and not the second.

    Parameters
    ----------
    significance : `numpy.ndarray`
        ``(H, W)`` significance (`residual_significance`).
    xy : `numpy.ndarray`
        ``(2,)`` ``(x, y)`` pixel of a residual bump.
    centers_xy : `numpy.ndarray`
        ``(n, 2)`` ``(x, y)`` fitted centres, pixels of the same grid.
    reach : `numpy.ndarray`
        ``(n,)`` distance in pixels out to which each source's light is read as its own.
    width : `float`, optional
        Half-width of the ring, pixels.

    Returns
    -------
    ring : `numpy.ndarray`
        ``(n,)`` float64: for each centre no farther than its reach, the median significance of
        the grid's pixels whose distance to it is within ``width`` of the bump's; ``-inf`` for a
        centre out of reach, at the bump itself (no ring) or whose ring has fewer than 8 pixels
        on the grid.
    """
    significance, xy, centers_xy, reach = _bump_and_centres(significance, xy, centers_xy, reach)
    out = np.full(len(centers_xy), -np.inf)
    yy, xx = np.ogrid[: significance.shape[0], : significance.shape[1]]
    for k, (c, r) in enumerate(zip(centers_xy, reach)):
        d = np.hypot(*(xy - c))
        if d > r or d < 2 * width:
            continue
        on_ring = np.abs(np.hypot(xx - c[0], yy - c[1]) - d) <= width
        if on_ring.sum() >= 8:
            out[k] = np.median(significance[on_ring])
    return out


def find_residual_peaks(
    significance: np.ndarray,
    footprint: np.ndarray,
    peaks_xy: np.ndarray,
    *,
    threshold: float,
    min_separation: float,
    max_peaks: int,
    centers_xy: np.ndarray | None = None,
    reach: np.ndarray | None = None,
    symmetry: float = 0.0,
    ring: float | None = None,
    ring_fraction: float = 0.1,
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
    centers_xy, reach : `numpy.ndarray`, optional
        ``(n, 2)`` fitted centres and ``(n,)`` their reach in pixels, for ``symmetry``.
    symmetry : `float`, optional
        With ``centers_xy``, a maximum whose mirror image through a centre within reach has at
        least ``symmetry`` times its significance (`mirrored_significance`) is that source's
        own symmetric light, not a new peak; 0 keeps every maximum.
    ring : `float`, optional
        With ``centers_xy``, a maximum where the median significance on the ring through it
        around a centre within reach is at least ``ring`` (noise units, `ring_significance`)
        and at least ``ring_fraction`` of its own lies in that source's outer light, which its
        model does not hold all around it: not a new peak. `None` (default) keeps every maximum.
    ring_fraction : `float`, optional
        With ``ring``: the least ratio of the ring's median to the maximum's significance. A
        bright galaxy next to a fitted centre lights the ring through it with its own light (a
        median of 8 sigma for a 3,000-sigma companion 8 px out), a small fraction of its peak.

    Returns
    -------
    peaks_xy : `numpy.ndarray`
        ``(k, 2)`` int64 ``(x, y)`` pixels of the new peaks, ``k <= max_peaks``.
    """
    if not symmetry >= 0:
        raise ValueError(f"symmetry must be >= 0; got {symmetry=}.")
    if ring is not None and not np.isfinite(ring):
        raise ValueError(f"ring must be finite or None; got {ring=}.")
    if not 0 <= ring_fraction < 1:
        raise ValueError(f"ring_fraction must be in [0, 1); got {ring_fraction=}.")
    if (symmetry > 0 or ring is not None) and (centers_xy is None or reach is None):
        raise ValueError("symmetry > 0 or a ring level needs the fitted centres and their reach.")
    maxima = (significance == ndimage.maximum_filter(significance, size=3, mode="nearest"))
    maxima &= (significance > threshold) & np.asarray(footprint, bool)
    ys, xs = np.nonzero(maxima)
    order = np.argsort(-significance[ys, xs], kind="stable")
    taken = [np.asarray(p, np.float64) for p in np.asarray(peaks_xy, np.float64).reshape(-1, 2)]
    found = []
    for i in order:
        xy = np.array([xs[i], ys[i]], np.float64)
        # The separation first: it is cheap, and `taken` grows only with accepted peaks, so the
        # order of the tests does not change which are found.
        if any(np.hypot(*(xy - p)) < min_separation for p in taken):
            continue
        if symmetry > 0 and (mirrored_significance(significance, xy, centers_xy, reach)
                             >= symmetry * significance[ys[i], xs[i]]).any():
            continue
        if ring is not None and (ring_significance(significance, xy, centers_xy, reach)
                                 >= max(ring, ring_fraction * significance[ys[i], xs[i]])).any():
            continue
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
