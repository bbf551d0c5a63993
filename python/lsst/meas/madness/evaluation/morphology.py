"""Morphology and shape of deblended galaxies: SSIM, cosine similarity (paper eq. 22) and
adaptive-moment ellipticities (eq. 23), paper section 4.4.

Each metric compares a model with the *noiseless isolated* galaxy, band by band, on the same
pixel grid. `lsst.meas.madness.evaluation.metrics` uses 45x45 cutouts centred on the true
centre (the MADNESS stamp grid) for every method, because SSIM, unlike the cosine, changes
with the amount of empty sky around the galaxy.
"""

from __future__ import annotations

__all__ = [
    "SSIM_SIGMA",
    "SSIM_TRUNCATE",
    "AdaptiveMoments",
    "adaptive_moments",
    "cosine_similarity",
    "ellipticity_residual",
    "ssim",
]

import dataclasses
import logging

import numpy as np

from ..errors import MadnessValueError

_log = logging.getLogger(__name__)

SSIM_SIGMA = 1.5
"""Width (pixels) of SSIM's Gaussian window: Wang et al. (2004) and the authors' evaluation."""
SSIM_TRUNCATE = 3.5
"""The window is cut at 3.5 sigma: an 11x11 window, as scikit-image does for sigma=1.5."""
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _pair(prediction, truth) -> tuple[np.ndarray, np.ndarray]:
    prediction = np.asarray(prediction, np.float64)
    truth = np.asarray(truth, np.float64)
    if prediction.shape != truth.shape or prediction.ndim < 2:
        raise MadnessValueError(
            f"prediction and truth must be images (..., H, W) of one shape; got {prediction.shape} "
            f"and {truth.shape}."
        )
    return prediction, truth


def ssim(prediction, truth) -> np.ndarray:
    """Structural similarity index (Wang et al. 2004) per image, as in paper sections 3.2 and 4.4.

    Conventions (those of the authors' evaluation, identical to
    ``skimage.metrics.structural_similarity(p, t, data_range=1, gaussian_weights=True,
    use_sample_covariance=False)`` on the normalised images):

    - each image is divided by its own maximum, so both lie in [0, 1] and ``data_range = 1``
      (section 3.2); SSIM therefore measures structure, not flux, which dF/F measures;
    - a Gaussian window of sigma 1.5 pixels truncated at 3.5 sigma (11x11), population
      (co)variances, ``K1 = 0.01``, ``K2 = 0.03`` (Wang et al.'s values);
    - reflecting boundaries, and the mean of the SSIM map excludes a 5-pixel border (the
      window's radius), as scikit-image does.

    Parameters
    ----------
    prediction, truth : `numpy.ndarray`
        ``(..., H, W)`` model and noiseless isolated galaxy, e.g. ``(n, bands, 45, 45)``;
        ``H, W >= 11``.

    Returns
    -------
    ssim : `numpy.ndarray`
        ``(...)`` float64 in [-1, 1]. NaN where the truth has no positive pixel (undefined);
        0 where the prediction has none (an empty model, scored as no similarity, as the
        authors did).

    Examples
    --------
    >>> yy, xx = np.mgrid[:21, :21] - 10.0
    >>> g = np.exp(-(xx**2 + yy**2) / 8)
    >>> float(ssim(3 * g, g))
    1.0
    """
    from scipy.ndimage import gaussian_filter

    prediction, truth = _pair(prediction, truth)
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if min(truth.shape[-2:]) < 2 * radius + 1:
        raise MadnessValueError(
            f"SSIM needs images of at least {2 * radius + 1} pixels a side; got {truth.shape[-2:]}."
        )
    p_max = prediction.max(axis=(-2, -1), keepdims=True)
    t_max = truth.max(axis=(-2, -1), keepdims=True)
    p = prediction / np.where(p_max > 0, p_max, 1.0)
    t = truth / np.where(t_max > 0, t_max, 1.0)
    sigma = (0,) * (truth.ndim - 2) + (SSIM_SIGMA, SSIM_SIGMA)

    def blur(a):
        return gaussian_filter(a, sigma=sigma, mode="reflect", truncate=SSIM_TRUNCATE)

    mu_p, mu_t = blur(p), blur(t)
    var_p = blur(p * p) - mu_p**2
    var_t = blur(t * t) - mu_t**2
    cov = blur(p * t) - mu_p * mu_t
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2  # data_range = 1
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    value = ssim_map[..., radius:-radius, radius:-radius].mean(axis=(-2, -1))
    value = np.where(p_max[..., 0, 0] > 0, value, 0.0)
    return np.where(t_max[..., 0, 0] > 0, value, np.nan)


def cosine_similarity(prediction, truth) -> np.ndarray:
    """Pixel cosine similarity ``S_cos = sum G P / (|G| |P|)`` per image, paper eq. 22.

    The cosine of the angle between the flattened model ``P`` and noiseless isolated galaxy
    ``G``: 1 for a perfect model up to a flux scale, independent of zero padding.

    Parameters
    ----------
    prediction, truth : `numpy.ndarray`
        ``(..., H, W)`` model and noiseless isolated galaxy.

    Returns
    -------
    cosine : `numpy.ndarray`
        ``(...)`` float64 in [-1, 1]; NaN where the truth is empty, 0 where the model is.

    Examples
    --------
    >>> round(float(cosine_similarity(np.eye(3)[None] * 2, np.eye(3)[None])[0]), 12)
    1.0
    """
    prediction, truth = _pair(prediction, truth)
    dot = np.einsum("...ij,...ij->...", prediction, truth)
    norm_p = np.sqrt(np.einsum("...ij,...ij->...", prediction, prediction))
    norm_t = np.sqrt(np.einsum("...ij,...ij->...", truth, truth))
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(norm_p > 0, dot / (norm_p * norm_t), 0.0)
    return np.where(norm_t > 0, value, np.nan)


@dataclasses.dataclass(frozen=True)
class AdaptiveMoments:
    """Adaptive-moment shapes of a set of images (GalSim HSM, Hirata & Seljak 2003).

    Attributes
    ----------
    e1, e2 : `numpy.ndarray`
        Distortion ellipticity of eq. 23, ``(Qxx - Qyy) / (Qxx + Qyy)`` and
        ``2 Qxy / (Qxx + Qyy)`` (x along columns); NaN where HSM failed.
    sigma : `numpy.ndarray`
        ``det(Q)^(1/4)``, pixels; NaN where HSM failed.
    x, y : `numpy.ndarray`
        Adaptive centroid, pixels (``(0, 0)`` at the centre of the first pixel).
    failed : `numpy.ndarray`
        Bool: HSM did not converge or the image has no positive flux.
    """

    e1: np.ndarray
    e2: np.ndarray
    sigma: np.ndarray
    x: np.ndarray
    y: np.ndarray
    failed: np.ndarray


def adaptive_moments(images, centers_xy=None, *, max_iter: int | None = None) -> AdaptiveMoments:
    """Ellipticities of eq. 23 from GalSim HSM adaptive moments (``galsim.hsm.FindAdaptiveMom``).

    Convention: the *distortion* ``e = (Qxx - Qyy + 2i Qxy) / (Qxx + Qyy)`` of the paper's
    eq. 23 (``observed_shape.e1/e2`` in GalSim), not the reduced shear ``g`` (``.g1/.g2``);
    ``|e| = (a^2 - b^2) / (a^2 + b^2)`` for an ellipse of axes ``a, b``. No PSF correction,
    as in the paper: models and truths are both PSF-convolved.

    Parameters
    ----------
    images : `numpy.ndarray`
        ``(..., H, W)`` images (models or noiseless isolated galaxies), e.g. ``(n, bands, 45, 45)``.
    centers_xy : `numpy.ndarray`, optional
        First guess of each centroid, ``(x, y)`` pixels in the image's frame: ``(..., 2)``
        with leading axes matching those of ``images`` from the left (``(n, 2)`` serves all
        bands of ``(n, bands, H, W)``); default the image centre.
    max_iter : `int`, optional
        HSM's iteration limit (its default when `None`).

    Returns
    -------
    moments : `AdaptiveMoments`
        Arrays of shape ``images.shape[:-2]``. Failures are NaN with ``failed`` set; they are
        logged at debug level, never raised.
    """
    import galsim

    images = np.asarray(images, np.float64)
    if images.ndim < 2:
        raise MadnessValueError(f"images must be (..., H, W); got shape {images.shape}.")
    lead = images.shape[:-2]
    flat = images.reshape(-1, *images.shape[-2:])
    if centers_xy is None:
        guess = None
    else:
        guess = np.asarray(centers_xy, np.float64)
        while guess.ndim - 1 < len(lead):  # (n, 2) guesses for (n, bands, H, W) images
            guess = guess[..., None, :]
        guess = np.broadcast_to(guess, (*lead, 2)).reshape(-1, 2)
    hsmparams = None if max_iter is None else galsim.hsm.HSMParams(max_mom2_iter=int(max_iter))
    out = np.full((len(flat), 5), np.nan)
    failed = np.ones(len(flat), bool)
    for i, img in enumerate(flat):
        if not (np.isfinite(img).all() and (img > 0).any()):
            continue
        kwargs = {}
        if guess is not None:
            # GalSim images start at pixel (1, 1).
            kwargs["guess_centroid"] = galsim.PositionD(guess[i, 0] + 1.0, guess[i, 1] + 1.0)
        res = galsim.hsm.FindAdaptiveMom(galsim.Image(np.ascontiguousarray(img)), strict=False,
                                         hsmparams=hsmparams, **kwargs)
        if res.moments_status != 0 or res.error_message:
            _log.debug("HSM failed on image %d: %s", i, res.error_message)
            continue
        shape = res.observed_shape
        out[i] = (shape.e1, shape.e2, res.moments_sigma, res.moments_centroid.x - 1.0,
                  res.moments_centroid.y - 1.0)
        failed[i] = False
    out = out.reshape(*lead, 5)
    return AdaptiveMoments(e1=out[..., 0], e2=out[..., 1], sigma=out[..., 2], x=out[..., 3],
                           y=out[..., 4], failed=failed.reshape(lead))


def ellipticity_residual(e_model, e_truth) -> np.ndarray:
    """Ellipticity residual ``e_model - e_truth`` (of ``e1`` or ``e2``, eq. 23), section 4.4.

    ``e_truth`` is measured on the noiseless isolated galaxy. NaN where either is NaN (an HSM
    failure).
    """
    return np.asarray(e_model, np.float64) - np.asarray(e_truth, np.float64)
