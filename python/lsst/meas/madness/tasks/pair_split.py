"""Pair splits: one source of a fit that holds an unresolved pair, tried as two.

Two galaxies closer than about the PSF's FWHM make one maximum in any image that is not
deconvolved, so no peak finder and no residual peak separates them (the residual of one model
fitted to a symmetric pair is symmetric and small). The fit itself says where to look: the light
that a source's model was given (the observed pixels minus every other model of the fit) is
elongated along the pair's axis, and one model leaves an excess of chi^2 there that two would
remove. `light_moments` measures that light's centroid and adaptive second moments;
`pair_positions` places two sources on its major axis, as far apart as two equal round Gaussians
with those moments (`LightMoments.pair_separation`); `chi2_excess` bounds what a second source
could gain, so that only sources where a split can pay its penalty are refitted. The task then
refits, and keeps the pair only when the MAP objective with a model error in the noise
(`model_error_objective`) falls by more than the penalty of the added parameters: a single galaxy
the decoder draws imperfectly must not be cut in two. Two tests of the fitted members come last:
`member_overlap` (the halves of one flat galaxy overlap more than two galaxies that the data can
tell apart) and `neighbour_light_ratio` (a member on a much brighter neighbour's light is taking
the light that neighbour's model did not hold).
"""

from __future__ import annotations

__all__ = [
    "LightMoments", "chi2_excess", "light_moments", "member_overlap", "model_error_objective",
    "neighbour_light_ratio", "pair_positions",
]

import dataclasses
import logging

import numpy as np

from ..engine.geometry import peaks_to_pixels

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LightMoments:
    """Centroid and second moments of a source's light (GalSim HSM adaptive moments).

    Attributes
    ----------
    x, y : `float`
        Centroid, pixels of the grid measured.
    major2, minor2 : `float`
        Squared semi-axes ``a^2 >= b^2`` of the adaptive elliptical Gaussian, pixels^2.
    angle : `float`
        Position angle of the major axis, radians from +x towards +y.
    kurtosis : `float`
        Excess kurtosis of the light along the major axis, weighted by the adaptive Gaussian
        (0 for a Gaussian). Two members apart make it negative (two equal Gaussians ``t``
        widths apart: ``-2 t^4 / (1 + t^2)^2`` unweighted); an exponential or de Vaucouleurs
        profile, however flat and elongated, is peakier than a Gaussian and makes it positive.
    """

    x: float
    y: float
    major2: float
    minor2: float
    angle: float
    kurtosis: float = float("nan")

    @property
    def pair_separation(self) -> float:
        """Separation of two equal round Gaussians with these adaptive moments, pixels.

        Across the pair's axis its light is one Gaussian of width ``b``, so ``b`` is each
        member's width. Along it, the adaptive Gaussian weight (variance ``M b^2``) of two
        Gaussians ``t b`` apart meets the self-consistency of HSM's moments when
        ``M^2 - 1 = (t^2 / 2) M``; so ``t = sqrt(2 (M^2 - 1) / M)`` with ``M = a^2 / b^2``. (The
        unweighted moments would give ``2 sqrt(a^2 - b^2)``; the adaptive weight stretches
        towards the members, by ~20% at ``t = 2``.)
        """
        if not self.minor2 > 0:
            return 0.0
        ratio = max(self.major2 / self.minor2, 1.0)
        return float(np.sqrt(self.minor2 * 2.0 * (ratio * ratio - 1.0) / ratio))


def light_moments(image: np.ndarray, guess_xy: tuple[float, float]) -> LightMoments | None:
    """Adaptive moments of a source's light: its centroid, axes and orientation.

    Parameters
    ----------
    image : `numpy.ndarray`
        ``(H, W)`` the source's light (e.g. band-summed observed pixels minus the other sources'
        models), flux per pixel.
    guess_xy : `tuple` [`float`, `float`]
        First guess of the centroid, ``(x, y)`` pixels of ``image`` (0 at the first pixel's centre).

    Returns
    -------
    moments : `LightMoments` or `None`
        `None` where HSM does not converge or the image holds no positive flux (logged at debug).
    """
    import galsim

    image = np.ascontiguousarray(image, np.float64)
    if image.ndim != 2:
        raise ValueError(f"image must be (H, W); got shape {image.shape}.")
    if not (np.isfinite(image).all() and (image > 0).any()):
        return None
    # GalSim images start at pixel (1, 1).
    guess = galsim.PositionD(float(guess_xy[0]) + 1.0, float(guess_xy[1]) + 1.0)
    result = galsim.hsm.FindAdaptiveMom(galsim.Image(image), guess_centroid=guess, strict=False)
    if result.moments_status != 0 or result.error_message:
        _log.debug("HSM failed on a source's light: %s", result.error_message)
        return None
    shape = result.observed_shape
    e = min(float(shape.e), 0.999)
    sigma2 = float(result.moments_sigma) ** 2
    # Distortion |e| = (a^2 - b^2) / (a^2 + b^2) and sigma^2 = a b (HSM's det(Q)^(1/4)).
    total = 2.0 * sigma2 / np.sqrt(1.0 - e * e)
    x, y = float(result.moments_centroid.x) - 1.0, float(result.moments_centroid.y) - 1.0
    major2, minor2 = 0.5 * total * (1.0 + e), 0.5 * total * (1.0 - e)
    angle = 0.5 * float(np.arctan2(shape.e2, shape.e1))
    return LightMoments(x, y, major2, minor2, angle, _major_axis_kurtosis(image, x, y, major2, minor2, angle))


def _major_axis_kurtosis(
    image: np.ndarray, x: float, y: float, major2: float, minor2: float, angle: float
) -> float:
    """Excess kurtosis along the major axis of the light under its adaptive Gaussian weight."""
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    dx, dy = xx - x, yy - y
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    weighted = np.exp(-0.5 * (u**2 / major2 + v**2 / minor2)) * image
    m0 = float(weighted.sum())
    m2 = float((weighted * u**2).sum()) / m0 if m0 > 0 else 0.0
    if not m2 > 0:
        return float("nan")
    return float((weighted * u**4).sum()) / m0 / m2**2 - 3.0


def pair_positions(moments: LightMoments) -> np.ndarray:
    """Two positions on the major axis, ``pair_separation`` apart, about the centroid.

    Parameters
    ----------
    moments : `LightMoments`
        The light's moments.

    Returns
    -------
    positions_xy : `numpy.ndarray`
        ``(2, 2)`` ``(x, y)`` of the two sources, pixels of the grid ``moments`` was measured on.
    """
    half = 0.5 * moments.pair_separation
    step = half * np.array([np.cos(moments.angle), np.sin(moments.angle)])
    centre = np.array([moments.x, moments.y])
    return np.stack([centre - step, centre + step])


def member_overlap(first: np.ndarray, second: np.ndarray) -> float:
    """Cosine of two members' models: how much of one profile the two draw together.

    Two galaxies far enough apart to be told from one make models that overlap little (two round
    Gaussians of width ``s`` a distance ``d`` apart: ``exp(-d^2 / 4 s^2)``, 0.5 at ``d = 1.7 s``);
    one flat galaxy cut in two makes two halves as wide as itself, a few pixels apart, that
    overlap much more.

    Parameters
    ----------
    first, second : `numpy.ndarray`
        The members' models on one grid, any shape (e.g. ``(bands, H, W)``); summed over nothing.

    Returns
    -------
    overlap : `float`
        ``sum(first * second) / sqrt(sum(first^2) sum(second^2))``, 1 for proportional models; 0
        where either is zero.
    """
    a, b = np.asarray(first, np.float64), np.asarray(second, np.float64)
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / norm if norm > 0 else 0.0


def neighbour_light_ratio(own: np.ndarray, others: np.ndarray, positions_xy: np.ndarray) -> np.ndarray:
    """At each position, the other sources' models together over a source's own model.

    A split's member placed where a much brighter neighbour's light dominates is taking that light
    (the neighbour's profile the decoder did not hold), not a galaxy of the source's own.

    Parameters
    ----------
    own, others : `numpy.ndarray`
        ``(H, W)`` the source's model and the sum of the other sources' models (e.g. band-summed),
        one grid.
    positions_xy : `numpy.ndarray`
        ``(n, 2)`` ``(x, y)`` pixels of that grid (0 at the first pixel's centre), read at the
        pixel that holds it (`lsst.meas.madness.engine.geometry.peaks_to_pixels`).

    Returns
    -------
    ratio : `numpy.ndarray`
        ``(n,)`` ``others / own`` there, >= 0; ``inf`` off the grid or where ``own <= 0`` (and
        0 where both are <= 0 on the grid).
    """
    y, x = peaks_to_pixels(positions_xy).T
    height, width = np.shape(own)
    on_grid = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    xc, yc = np.clip(x, 0, width - 1), np.clip(y, 0, height - 1)
    mine = np.asarray(own, np.float64)[yc, xc]
    theirs = np.maximum(np.asarray(others, np.float64)[yc, xc], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(mine > 0, theirs / np.where(mine > 0, mine, 1.0), np.where(theirs > 0, np.inf, 0.0))
    return np.where(on_grid, ratio, np.inf)


def _noise_variance(variance: np.ndarray, model: np.ndarray, model_error: float) -> np.ndarray:
    """Pixel variance with a fractional model error added in quadrature."""
    return np.asarray(variance, np.float64) + (model_error * np.asarray(model, np.float64)) ** 2


def _usable(image: np.ndarray, variance: np.ndarray, bad: np.ndarray) -> np.ndarray:
    return ~np.asarray(bad, bool) & np.isfinite(image) & np.isfinite(variance) & (np.asarray(variance) > 0)


def model_error_objective(
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    model: np.ndarray,
    noise_model: np.ndarray,
    model_error: float,
) -> float:
    """Half the chi^2 of a fit with a fractional model error in the noise.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        ``(bands, H, W)`` observed pixels and their variance.
    bad : `numpy.ndarray`
        ``(bands, H, W)`` bool, pixels to ignore.
    model : `numpy.ndarray`
        ``(bands, H, W)`` the fit's model.
    noise_model : `numpy.ndarray`
        ``(bands, H, W)`` the model whose ``model_error`` times is added to the noise (one model
        for every fit compared, so that they share one noise).
    model_error : `float`
        Fractional model error, >= 0.

    Returns
    -------
    half_chi2 : `float`
        ``0.5 * sum((image - model)^2 / (variance + (model_error * noise_model)^2))`` over the
        usable pixels.
    """
    if not model_error >= 0:
        raise ValueError(f"model_error must be >= 0; got {model_error=}.")
    good = _usable(image, variance, bad)
    noise = _noise_variance(variance, noise_model, model_error)
    resid = np.where(good, np.asarray(image, np.float64) - model, 0.0)
    return 0.5 * float(np.sum(np.where(good, resid**2 / np.where(good, noise, 1.0), 0.0)))


def chi2_excess(
    residual: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    model: np.ndarray,
    model_error: float,
    center_xy: tuple[float, float],
    radius: float,
) -> float:
    """Chi^2 of the residual within a circle beyond what noise gives there.

    What a second source there could remove of the objective is at most half of this: a model
    that left only noise would still leave one unit of chi^2 per usable pixel.

    Parameters
    ----------
    residual, variance : `numpy.ndarray`
        ``(bands, H, W)`` observed minus model, and the pixel variance.
    bad : `numpy.ndarray`
        ``(bands, H, W)`` bool, pixels to ignore.
    model : `numpy.ndarray`
        ``(bands, H, W)`` the fit's model (for the model error).
    model_error : `float`
        Fractional model error added to the noise, >= 0.
    center_xy : `tuple` [`float`, `float`]
        ``(x, y)`` centre of the circle, pixels.
    radius : `float`
        Radius of the circle, pixels.

    Returns
    -------
    excess : `float`
        Sum of ``residual^2 / noise`` over the usable pixels in the circle, minus their number.
    """
    height, width = np.shape(residual)[-2:]
    yy, xx = np.ogrid[:height, :width]
    inside = (xx - center_xy[0]) ** 2 + (yy - center_xy[1]) ** 2 <= radius**2
    good = _usable(residual, variance, bad) & inside[None]
    noise = _noise_variance(variance, model, model_error)
    chi2 = np.where(good, np.asarray(residual, np.float64) ** 2 / np.where(good, noise, 1.0), 0.0)
    return float(chi2.sum() - good.sum())
