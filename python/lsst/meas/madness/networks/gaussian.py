"""The encoder's output head: a full-covariance Gaussian over the latent space.

The encoder predicts ``latent_dim + latent_dim * (latent_dim + 1) / 2`` numbers per stamp
(152 for 16 latents, as in the authors' code): the mean, then the lower triangle of the scale
matrix, row by row. The diagonal passes through ``softplus(.) + 1e-5`` so the scale is positive
definite (TFP's ``FillScaleTriL`` convention). Only ``keras.ops`` are used, so the functions run
on every backend and inside compiled steps.
"""

from __future__ import annotations

__all__ = ["gaussian_params_size", "latent_mean", "latent_scale_tril"]

import keras
import numpy as np


def gaussian_params_size(latent_dim: int) -> int:
    """Number of encoder outputs for a ``latent_dim``-d full-covariance Gaussian.

    Examples
    --------
    >>> gaussian_params_size(16)
    152
    """
    return latent_dim + latent_dim * (latent_dim + 1) // 2


def latent_mean(params, latent_dim: int):
    """Mean of the latent Gaussian: the first ``latent_dim`` outputs, shape ``(batch, latent_dim)``."""
    return params[..., :latent_dim]


def latent_scale_tril(params, latent_dim: int):
    """Lower-triangular scale matrix ``(batch, latent_dim, latent_dim)`` from the encoder outputs."""
    rows, cols = np.tril_indices(latent_dim)
    flat_index = np.zeros((latent_dim, latent_dim), dtype="int32")
    # Position latent_dim + k of params fills entry (rows[k], cols[k]); 0 marks "upper triangle".
    flat_index[rows, cols] = np.arange(rows.size) + 1
    tril_values = params[..., latent_dim:]
    padded = keras.ops.concatenate([keras.ops.zeros_like(tril_values[..., :1]), tril_values], axis=-1)
    matrix = keras.ops.take(padded, flat_index.reshape(-1), axis=-1)
    matrix = keras.ops.reshape(matrix, (-1, latent_dim, latent_dim))
    eye = keras.ops.eye(latent_dim, dtype=matrix.dtype)
    diag = keras.ops.softplus(matrix) + 1e-5
    return matrix * (1.0 - eye) + diag * eye
