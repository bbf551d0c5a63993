"""The MAP objective of a batch of blends (paper eq. 13-15), written with ``keras.ops`` only."""

from __future__ import annotations

__all__ = ["blend_models", "blend_objective"]

import keras


def blend_models(latents, source_mask, rows, cols, decode):
    """Model of every blend's fit region: the sum of its sources' decoded, placed stamps (eq. 13).

    Parameters
    ----------
    latents : tensor
        ``(B, N, L)`` latents; blends are padded to ``N`` sources.
    source_mask : tensor
        ``(B, N)`` 1 for a real source, 0 for padding.
    rows, cols : tensor
        ``(B, N, h, S)`` and ``(B, N, w, S)`` one-hot placement matrices
        (`lsst.meas.madness.engine.geometry.placement_matrices`); stamps are cropped where
        they leave the region.
    decode : callable
        ``(B * N, L) -> (B * N, S, S, C)`` decoder.

    Returns
    -------
    model : tensor
        ``(B, h, C, w)`` model of each region in network units (band axis between rows and
        columns so both placements are plain matmuls).
    """
    ops = keras.ops
    b, n, s = ops.shape(rows)[0], ops.shape(rows)[1], ops.shape(rows)[3]
    h, w = ops.shape(rows)[2], ops.shape(cols)[2]
    stamps = decode(ops.reshape(latents, (b * n, -1)))  # (B*N, S, S, C)
    c = ops.shape(stamps)[-1]
    stamps = ops.reshape(stamps, (b, n, s, s * c)) * source_mask[:, :, None, None]
    placed_rows = ops.matmul(rows, stamps)  # (B, N, h, S*C)
    placed_rows = ops.reshape(placed_rows, (b, n, h, s, c))
    placed_rows = ops.reshape(ops.transpose(placed_rows, (0, 2, 4, 1, 3)), (b, h, c, n * s))
    cols_t = ops.reshape(ops.transpose(cols, (0, 1, 3, 2)), (b, 1, n * s, w))  # broadcast over rows
    return ops.matmul(placed_rows, cols_t)  # (B, h, C, w)


def blend_objective(latents, source_mask, data, weights, rows, cols, *, calls, prior_weight: float = 1.0):
    """Negative log-posterior of each blend: ``chi2 / 2 - prior_weight * sum_i log p(z_i)``.

    ``chi2 = sum w (y - X)^2`` with ``w`` the per-pixel inverse variance (zero on bad pixels),
    which is eq. 14-15 with the Gaussian's factor 1/2 kept, so ``prior_weight=1`` is the actual
    posterior. Padding sources add neither flux nor prior (the authors' code counted them).

    Parameters
    ----------
    latents, source_mask, rows, cols
        As in `blend_models`.
    data, weights : tensor
        ``(B, h, C, w)`` observed region and inverse variance, network units.
    calls : `tuple` of callable
        ``(decode, log_prob)``: the decoder and the flow's log-density.
    prior_weight : `float`
        Weight of the log-prior.

    Returns
    -------
    loss : tensor
        ``(B,)`` objective per blend.
    """
    ops = keras.ops
    decode, log_prob = calls
    model = blend_models(latents, source_mask, rows, cols, decode)
    residual = data - model
    chi2 = ops.sum(weights * residual * residual, axis=(1, 2, 3))
    b, n = ops.shape(latents)[0], ops.shape(latents)[1]
    log_prior = ops.reshape(log_prob(ops.reshape(latents, (b * n, -1))), (b, n))
    return 0.5 * chi2 - prior_weight * ops.sum(log_prior * source_mask, axis=1)
