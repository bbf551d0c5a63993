"""The MAP objective of a batch of blends (paper eq. 13-15), written with ``keras.ops`` only."""

from __future__ import annotations

__all__ = ["blend_models", "blend_objective", "blend_objective_with_offsets", "fourier_shift_matrices"]

import math

import keras


def blend_models(latents, source_mask, rows, cols, decode, log_amplitudes=None):
    """Model of every blend's fit region: the sum of its sources' decoded, placed stamps (eq. 13).

    Parameters
    ----------
    latents : tensor
        ``(B, N, L)`` latents; blends are padded to ``N`` sources.
    source_mask : tensor
        ``(B, N)`` 1 for a real source, 0 for padding.
    rows, cols : tensor
        ``(B, N, h, S)`` and ``(B, N, w, S)`` placement matrices
        (`lsst.meas.madness.engine.geometry.placement_matrices`: one-hot, with each source's
        sub-pixel shift folded in); stamps are cropped where they leave the region.
    decode : callable
        ``(B * N, L) -> (B * N, S, S, C)`` decoder.
    log_amplitudes : tensor, optional
        ``(B, N, C)`` natural log of a flux factor per source and band applied to the decoded
        stamp (`blend_objective`'s ``amplitude_sigma``); `None`: factors of 1 (the paper).

    Returns
    -------
    model : tensor
        ``(B, h, C, w)`` model of each region in network units (band axis between rows and
        columns so both placements are plain matmuls).
    """
    ops = keras.ops
    b, n, s = ops.shape(rows)[0], ops.shape(rows)[1], ops.shape(rows)[3]
    h, w = ops.shape(rows)[2], ops.shape(cols)[2]
    # A bfloat16 decoder (MapSettings.precision) hands back bfloat16: place and compare in float32.
    stamps = ops.cast(decode(ops.reshape(latents, (b * n, -1))), "float32")  # (B*N, S, S, C)
    c = ops.shape(stamps)[-1]
    if log_amplitudes is not None:
        stamps = stamps * ops.reshape(ops.exp(log_amplitudes), (b * n, 1, 1, c))
    stamps = ops.reshape(stamps, (b, n, s, s * c)) * source_mask[:, :, None, None]
    placed_rows = ops.matmul(rows, stamps)  # (B, N, h, S*C)
    placed_rows = ops.reshape(placed_rows, (b, n, h, s, c))
    placed_rows = ops.reshape(ops.transpose(placed_rows, (0, 2, 4, 1, 3)), (b, h, c, n * s))
    cols_t = ops.reshape(ops.transpose(cols, (0, 1, 3, 2)), (b, 1, n * s, w))  # broadcast over rows
    return ops.matmul(placed_rows, cols_t)  # (B, h, C, w)


def blend_objective(latents, source_mask, data, weights, rows, cols, *, calls, prior_weight: float = 1.0,
                    amplitude_sigma: float | None = None):
    """Negative log-posterior of each blend: ``chi2 / 2 - prior_weight * sum_i log p(z_i)``.

    ``chi2 = sum w (y - X)^2`` with ``w`` the per-pixel inverse variance (zero on bad pixels),
    which is eq. 14-15 with the Gaussian's factor 1/2 kept, so ``prior_weight=1`` is the actual
    posterior. Padding sources add neither flux nor prior (the authors' code counted them).

    With ``amplitude_sigma`` each source also carries a flux factor per band, ``exp(a_b)``, with
    a Gaussian prior ``sum a_b^2 / (2 amplitude_sigma^2)``: the decoder draws the morphology
    and the colours, and the factors correct what its finite reach gets wrong in each band's
    flux (doc/error-budget.md). ``latents`` then holds each source's latents followed by its
    ``C`` log-factors.

    Parameters
    ----------
    latents : tensor
        ``(B, N, L)`` latents, or ``(B, N, L + C)`` latents and log-factors with
        ``amplitude_sigma``.
    source_mask, rows, cols
        As in `blend_models`.
    data, weights : tensor
        ``(B, h, C, w)`` observed region and inverse variance, network units.
    calls : `tuple` of callable
        ``(decode, log_prob)``: the decoder and the flow's log-density.
    prior_weight : `float`
        Weight of the log-prior.
    amplitude_sigma : `float`, optional
        Prior width of the per-band log flux factors; `None`: no factors (the paper).

    Returns
    -------
    loss : tensor
        ``(B,)`` objective per blend.
    """
    ops = keras.ops
    decode, log_prob = calls
    log_amplitudes = None
    penalty = 0.0
    if amplitude_sigma is not None:
        c = ops.shape(data)[2]
        log_amplitudes = latents[..., -c:]
        latents = latents[..., :-c]
        penalty = 0.5 * ops.sum(ops.sum(log_amplitudes * log_amplitudes, axis=-1) * source_mask,
                                axis=1) / amplitude_sigma**2
    model = blend_models(latents, source_mask, rows, cols, decode, log_amplitudes)
    residual = data - model
    chi2 = ops.sum(weights * residual * residual, axis=(1, 2, 3))
    b, n = ops.shape(latents)[0], ops.shape(latents)[1]
    log_prior = ops.reshape(log_prob(ops.reshape(latents, (b * n, -1))), (b, n))
    return 0.5 * chi2 - prior_weight * ops.sum(log_prior * source_mask, axis=1) + penalty


def fourier_shift_matrices(shifts, size: int):
    """``(..., size, size)`` Fourier shift matrices of ``(...)`` shifts, written with ``keras.ops``.

    The differentiable twin of `lsst.meas.madness.engine.geometry.shift_matrices` with
    ``kernel="fourier"``: ``K[t, s] = D(t - s - d)`` with the periodic sinc
    ``D(x) = (1 + 2 sum_{k=1}^{(S-1)/2} cos(2 pi k x / S) [+ cos(pi x)]) / S`` (the bracket for even
    ``S``), evaluated on the ``2 S - 1`` differences and gathered into the Toeplitz matrix.
    """
    ops = keras.ops
    shifts = ops.convert_to_tensor(shifts, "float32")
    j = ops.arange(-(size - 1), size, dtype="float32")  # t - s
    x = j - shifts[..., None]  # (..., 2S - 1)
    k = ops.arange(1, (size - 1) // 2 + 1, dtype="float32")
    values = 1.0 + 2.0 * ops.sum(ops.cos((2.0 * math.pi / size) * x[..., None] * k), axis=-1)
    if size % 2 == 0:
        values = values + ops.cos(math.pi * x)
    values = values / size
    t = ops.arange(size, dtype="int32")
    index = t[:, None] - t[None, :] + (size - 1)  # (S, S) into the differences
    gathered = ops.take(values, ops.reshape(index, (-1,)), axis=-1)  # (..., S * S)
    return ops.reshape(gathered, tuple(ops.shape(shifts)) + (size, size))


def blend_objective_with_offsets(x, source_mask, data, weights, rows, cols, shifts, *, calls,
                                 prior_weight: float = 1.0, offset_max: float = 1.0,
                                 offset_sigma: float = 0.5, amplitude_sigma: float | None = None):
    """`blend_objective` with a position offset per source fitted alongside its latents.

    ``x`` holds each source's latents followed by two unconstrained numbers ``u``; the offset is
    ``d = offset_max * tanh(u)`` ``(dy, dx)`` pixels (so ``|d| < offset_max``), with a weak
    Gaussian prior ``sum |d|^2 / (2 offset_sigma^2)``. Each stamp is shifted by its peak's
    sub-pixel remainder plus ``d`` (`fourier_shift_matrices`) and placed by the integer
    placement matrices ``rows``, ``cols``.

    Parameters
    ----------
    x : tensor
        ``(B, N, L + 2)`` latents and offset parameters (``(B, N, L + C + 2)`` with
        ``amplitude_sigma``: the log flux factors between them).
    source_mask, data, weights, calls, prior_weight, amplitude_sigma
        As in `blend_objective`.
    rows, cols : tensor
        ``(B, N, h, S)`` and ``(B, N, w, S)`` one-hot placement of the stamps' pixel grids.
    shifts : tensor
        ``(B, N, 2)`` ``(dy, dx)`` sub-pixel remainder of each peak, pixels.
    offset_max, offset_sigma : `float`
        Bound and prior width of the fitted offsets, pixels.

    Returns
    -------
    loss : tensor
        ``(B,)`` objective per blend.
    """
    ops = keras.ops
    latents = x[..., :-2]
    offsets = offset_max * ops.tanh(x[..., -2:])
    size = ops.shape(rows)[-1]
    ky = fourier_shift_matrices(shifts[..., 0] + offsets[..., 0], size)
    kx = fourier_shift_matrices(shifts[..., 1] + offsets[..., 1], size)
    loss = blend_objective(latents, source_mask, data, weights, ops.matmul(rows, ky), ops.matmul(cols, kx),
                           calls=calls, prior_weight=prior_weight, amplitude_sigma=amplitude_sigma)
    penalty = 0.5 * ops.sum(ops.sum(offsets * offsets, axis=-1) * source_mask, axis=1) / offset_sigma**2
    return loss + penalty
