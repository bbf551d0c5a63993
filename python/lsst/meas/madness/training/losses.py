"""Training losses in ``keras.ops`` (every backend): reconstruction, KL, SSIM, latent L2.

Images are in network layout ``(batch, H, W, bands)`` and network units (flux / 1e4).
"""

from __future__ import annotations

__all__ = ["gaussian_kl", "latent_l2", "reconstruction_chi2", "ssim_per_band"]

import keras
import numpy as np

from ..networks.gaussian import latent_mean, latent_scale_tril


def reconstruction_chi2(target, prediction, truth, sky_variance, scale: float):
    """Per-stamp ``sum((target - prediction)^2 / (sky + truth / scale))`` (paper's code).

    In network units the variance of a pixel is ``(sky_e + truth_e) / scale^2`` with ``sky_e``
    and ``truth_e`` in electrons (gain 1): ``sky_variance`` is the first term, already in
    network units, and ``truth / scale`` the second. So the sum is the chi^2 of the stamp in
    electrons.

    Parameters
    ----------
    target, prediction, truth : tensors ``(batch, H, W, bands)``
        What is fitted, the decoder's output, and the noiseless galaxy that sets the Poisson
        term.
    sky_variance : array-like ``(bands,)``
        Sky variance per pixel in network units.
    scale : `float`
        Normalisation (flux units per network unit).
    """
    variance = keras.ops.convert_to_tensor(np.asarray(sky_variance, np.float32)) + keras.ops.maximum(truth, 0.0) / scale
    return keras.ops.sum(keras.ops.square(target - prediction) / variance, axis=(1, 2, 3))


def gaussian_kl(params, latent_dim: int):
    """KL( N(mu, L L^T) || N(0, I) ) per stamp for the encoder's full-covariance Gaussian."""
    mu = latent_mean(params, latent_dim)
    tril = latent_scale_tril(params, latent_dim)
    diag = keras.ops.diagonal(tril, axis1=-2, axis2=-1)
    trace = keras.ops.sum(keras.ops.square(tril), axis=(-2, -1))
    return 0.5 * (trace + keras.ops.sum(keras.ops.square(mu), axis=-1) - latent_dim
                  - 2.0 * keras.ops.sum(keras.ops.log(diag), axis=-1))


def sample_latents(params, latent_dim: int, seed):
    """Reparameterised draw ``mu + L eps`` from the encoder's Gaussian."""
    mu = latent_mean(params, latent_dim)
    tril = latent_scale_tril(params, latent_dim)
    eps = keras.random.normal(keras.ops.shape(mu), seed=seed, dtype=mu.dtype)
    return mu + keras.ops.squeeze(keras.ops.matmul(tril, keras.ops.expand_dims(eps, -1)), -1)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    return np.outer(g, g).astype(np.float32)


def ssim_per_band(a, b, window: int = 11, sigma: float = 1.5):
    """Mean SSIM per stamp and band ``(batch, bands)`` after per-band max normalisation.

    Each band of ``a`` and ``b`` is divided by its own maximum (paper section 3.2) so values
    lie in [0, 1] (data range 1); Gaussian window 11 px, sigma 1.5, K1 0.01, K2 0.03 (Wang et
    al. 2004), valid windows only.
    """
    eps = 1e-12
    a = a / (keras.ops.max(a, axis=(1, 2), keepdims=True) + eps)
    b = b / (keras.ops.max(b, axis=(1, 2), keepdims=True) + eps)
    bands = keras.ops.shape(a)[-1]
    kernel = np.repeat(_gaussian_window(window, sigma)[:, :, None, None], int(bands), axis=2)
    kernel = keras.ops.convert_to_tensor(kernel)

    def blur(x):
        return keras.ops.depthwise_conv(x, kernel, strides=1, padding="valid")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return keras.ops.mean(ssim_map, axis=(1, 2))


def latent_l2(prediction, target):
    """Squared Euclidean distance per stamp between latent vectors (VAE-deblender loss)."""
    return keras.ops.sum(keras.ops.square(prediction - target), axis=-1)
