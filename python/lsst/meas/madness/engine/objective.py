"""The MAP objective of a batch of blends (paper eq. 13-15), written with ``keras.ops`` only."""

from __future__ import annotations

__all__ = ["blend_models", "blend_objective", "blend_objective_with_offsets", "fitted_models",
           "fourier_shift_matrices", "sky_weights", "stamp_asymmetry", "subtract_envelopes"]

import math

import keras


def blend_models(latents, source_mask, blend_of, rows, cols, starts, decode, region_shape, log_amplitudes=None):
    """Model of every blend's fit region: the sum of its sources' decoded, placed stamps (eq. 13).

    Sources come flat, every blend's one after another (no padding to the largest blend: a
    batch of blends of 12 and 20 sources decodes 32 stamps, not 40). Each source's stamp is
    placed into an ``Lw``-row band of its region by two small matmuls (``rows @ stamp @
    cols^T``: ``rows`` its ``Lw x S`` window of region rows, ``cols`` its ``w x S`` placement over
    the region's whole width; the sub-pixel shift or zoom folded in), and the bands are added
    into their blend's region at their first row (a scatter-add of whole region rows). A step
    so costs ``~Lw S C (S + w)`` per source: a dense placement over the region costs ``h w C S``,
    and a scatter of single pixels (one index per window pixel) is slow on TensorFlow's CPU
    kernels (5-8 ms for the ~150,000 pixels of 12 sources, doc/benchmarks.md).

    Parameters
    ----------
    latents : tensor
        ``(M, L)`` latents of the batch's ``M`` sources.
    source_mask : tensor
        ``(M,)`` 1 for a real source, 0 for padding (which adds nothing).
    blend_of : tensor
        ``(M,)`` int32 index of each source's blend in the batch.
    rows : tensor
        ``(M, Lw, S)`` placement windows along the rows
        (`lsst.meas.madness.engine.geometry.placement_windows` of `placement_matrices`: the
        sub-pixel shift folded in); window rows past the region's end are zero.
    cols : tensor
        ``(M, w, S)`` placement matrices along the columns over the region's (padded) width
        (`placement_matrices`; zero past a blend's own width).
    starts : tensor
        ``(M, 2)`` int32 region ``(row, column)`` of each row window's first pixel (the column
        is not used: columns are placed over the whole width).
    decode : callable
        ``(M, L) -> (M, S, S, C)`` decoder.
    region_shape : tuple
        ``(B, h, w)``: blends in the batch and the (padded) size of their regions.
    log_amplitudes : tensor, optional
        ``(M, C)`` natural log of a flux factor per source and band applied to the decoded
        stamp (`blend_objective`'s ``amplitude_sigma``); `None`: factors of 1 (the paper).

    Returns
    -------
    model : tensor
        ``(B, h, C, w)`` model of each region in network units (band axis between rows and
        columns, the layout of the data).
    """
    ops = keras.ops
    m, lw, s = ops.shape(rows)[0], ops.shape(rows)[1], ops.shape(rows)[2]
    b, h, w = region_shape
    # A bfloat16 decoder (MapSettings.precision) hands back bfloat16: place and compare in float32.
    stamps = ops.cast(decode(latents), "float32")  # (M, S, S, C)
    c = ops.shape(stamps)[-1]
    if log_amplitudes is not None:
        stamps = stamps * ops.exp(log_amplitudes)[:, None, None, :]
    stamps = ops.reshape(stamps, (m, s, s * c)) * source_mask[:, None, None]
    placed = ops.reshape(ops.matmul(rows, stamps), (m, lw, s, c))  # rows placed
    placed = ops.transpose(placed, (0, 1, 3, 2))  # (M, Lw, C, S)
    bands = ops.matmul(placed, ops.transpose(cols, (0, 2, 1))[:, None])  # (M, Lw, C, w): whole rows
    # (blend, row, band) of every placed row in a (B, h + 1, C, w) array whose last row collects
    # what falls past the region's end (zero by construction of the windows).
    ys = ops.cast(starts[:, 0:1], "int32") + ops.arange(lw, dtype="int32")  # (M, Lw)
    ys = ops.where(ys < h, ys, h)
    shape = (m, lw, c)
    index = ops.stack([
        ops.broadcast_to(ops.reshape(ops.cast(blend_of, "int32"), (m, 1, 1)), shape),
        ops.broadcast_to(ys[:, :, None], shape),
        ops.broadcast_to(ops.reshape(ops.arange(c, dtype="int32"), (1, 1, c)), shape),
    ], axis=-1)
    model = ops.scatter(ops.reshape(index, (-1, 3)), ops.reshape(bands, (-1, w)), (b, h + 1, c, w))
    return model[:, :h]


def _per_blend(values, source_mask, blend_of, num_blends):
    """``(B,)`` sums of per-source ``(M,)`` values over each blend's real sources."""
    ops = keras.ops
    return ops.segment_sum(values * source_mask, ops.cast(blend_of, "int32"), num_segments=num_blends)


def subtract_envelopes(residual, weights, envelopes):
    """``residual`` minus the envelopes that best fit it, and their prior term.

    The envelopes (`lsst.meas.madness.engine.envelope`) are linear in their profile values, so
    their best values for the present residual are one precomputed solve. The values are held
    constant for the gradient: at their optimum the objective's gradient in the latents is the
    same with or without their change (the envelope theorem), so the MAP fits the sources
    against the profiled envelopes.

    Parameters
    ----------
    residual, weights : tensor
        ``(B, h, C, w)`` data minus the sources' stamp models, and the inverse variance.
    envelopes : `tuple` of tensor
        ``(profiles, solve, precision)``: ``(B, K, h, w)`` profiles, ``(B, C, K, K)`` solves and
        ``(B, C, K)`` prior precisions (`EnvelopeBasis`, padded to one layout).

    Returns
    -------
    residual : tensor
        ``(B, h, C, w)`` residual minus the envelopes.
    penalty : tensor
        ``(B,)`` prior term of the values.
    """
    ops = keras.ops
    profiles, solve, precision = envelopes
    rhs = ops.einsum("bkhw,bhcw->bck", profiles, weights * residual)
    values = ops.stop_gradient(ops.einsum("bckl,bcl->bck", solve, rhs))
    surface = ops.einsum("bck,bkhw->bhcw", values, profiles)
    penalty = 0.5 * ops.sum(precision * values * values, axis=(1, 2))
    return residual - surface, penalty


def blend_objective(latents, source_mask, blend_of, data, weights, rows, cols, starts, *, calls,
                    prior_weight: float = 1.0, amplitude_sigma: float | None = None, envelopes=None,
                    symmetry_weight: float = 0.0):
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
        ``(M, L)`` latents, or ``(M, L + C)`` latents and log-factors with ``amplitude_sigma``.
    source_mask, blend_of, rows, cols, starts
        As in `blend_models`.
    data, weights : tensor
        ``(B, h, C, w)`` observed regions and inverse variance, network units.
    calls : `tuple` of callable
        ``(decode, log_prob)``: the decoder and the flow's log-density.
    prior_weight : `float`
        Weight of the log-prior.
    amplitude_sigma : `float`, optional
        Prior width of the per-band log flux factors; `None`: no factors (the paper).
    envelopes : `tuple` of tensor, optional
        The extended galaxies' light beyond their stamps, fitted with the sources
        (`subtract_envelopes`, ``MapSettings.fit_envelopes``); `None`: none (the paper).
    symmetry_weight : `float`
        Weight of each source's `stamp_asymmetry` (``MapSettings.symmetry_weight``), in the units
        of the objective; 0: none (the paper).

    Returns
    -------
    loss : tensor
        ``(B,)`` objective per blend.
    """
    ops = keras.ops
    decode, log_prob = calls
    b, h, c, w = (ops.shape(data)[i] for i in range(4))
    log_amplitudes = None
    penalty = 0.0
    if amplitude_sigma is not None:
        log_amplitudes = latents[:, -c:]
        latents = latents[:, :-c]
        penalty = _per_blend(0.5 * ops.sum(log_amplitudes * log_amplitudes, axis=-1) / amplitude_sigma**2,
                             source_mask, blend_of, b)
    if symmetry_weight:
        stamps = ops.cast(decode(latents), "float32")  # (M, S, S, C), decoded once for both terms
        scaled = stamps if log_amplitudes is None else stamps * ops.exp(log_amplitudes)[:, None, None, :]
        asymmetry = stamp_asymmetry(scaled, sky_weights(weights, blend_of))
        penalty = penalty + symmetry_weight * _per_blend(asymmetry, source_mask, blend_of, b)
        model = blend_models(latents, source_mask, blend_of, rows, cols, starts, lambda _: stamps, (b, h, w),
                             log_amplitudes)
    else:
        model = blend_models(latents, source_mask, blend_of, rows, cols, starts, decode, (b, h, w),
                             log_amplitudes)
    residual = data - model
    if envelopes is not None:
        residual, envelope_penalty = subtract_envelopes(residual, weights, envelopes)
        penalty = penalty + envelope_penalty
    chi2 = ops.sum(weights * residual * residual, axis=(1, 2, 3))
    log_prior = _per_blend(log_prob(latents), source_mask, blend_of, b)
    return 0.5 * chi2 - prior_weight * log_prior + penalty


def stamp_asymmetry(stamps, sky_weights):
    """``(M,)`` asymmetry of each decoded stamp about its central pixel, a number in [0, 1].

    ``sum_c w_c sum_p (s_p - s_-p)^2 / (2 sum_c w_c sum_p s_p^2)``, i.e. ``2 |a|^2 / |s|^2`` with
    ``a = (s - s_rot) / 2`` the part of the stamp that changes sign under a rotation by 180
    degrees (norms over pixels and bands, each band weighted by the sky's inverse variance
    ``w_c``): 0 for a symmetric stamp, 1 for light with no counterpart across the centre. It
    does not depend on the stamp's flux, so a prior on it shapes a model without pulling on its
    flux: it weighs on faint models, whose chi^2 is small, and hardly on bright ones, whose data
    can carry an asymmetry of their own.

    Parameters
    ----------
    stamps : tensor
        ``(M, S, S, C)`` decoded stamps (flux factors applied), ``S`` odd.
    sky_weights : tensor
        ``(M, C)`` inverse variance of the sky per source and band, in the stamps' units.
    """
    ops = keras.ops
    diff = stamps - ops.flip(stamps, axis=(1, 2))
    odd = ops.sum(ops.sum(diff * diff, axis=(1, 2)) * sky_weights, axis=-1)
    power = ops.sum(ops.sum(stamps * stamps, axis=(1, 2)) * sky_weights, axis=-1)
    return odd / (2.0 * power + 1e-30)


def sky_weights(weights, blend_of):
    """``(M, C)`` sky inverse variance of each source's blend and band: the largest weight of its
    ``(B, h, C, w)`` region (the background alone; a source's own light only lowers it)."""
    ops = keras.ops
    return ops.take(ops.max(weights, axis=(1, 3)), ops.cast(blend_of, "int32"), axis=0)


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


def blend_objective_with_offsets(x, source_mask, blend_of, data, weights, rows, cols, starts, shifts,
                                 offset_bounds, *, calls, prior_weight: float = 1.0,
                                 offset_sigma: float = 0.5, amplitude_sigma: float | None = None,
                                 envelopes=None, symmetry_weight: float = 0.0):
    """`blend_objective` with a position offset per source fitted alongside its latents.

    ``x`` holds each source's latents followed by two unconstrained numbers ``u``; the offset is
    ``d = b * tanh(u)`` ``(dy, dx)`` pixels with ``b`` the source's bound (so ``|d| < b``; a
    source whose bound is zero stays at its peak), with a weak Gaussian prior
    ``sum |d|^2 / (2 offset_sigma^2)``. Each stamp is shifted by its peak's
    sub-pixel remainder plus ``d`` (`fourier_shift_matrices`) and placed by the integer
    placement windows ``rows``, ``cols``.

    Parameters
    ----------
    x : tensor
        ``(M, L + 2)`` latents and offset parameters (``(M, L + C + 2)`` with
        ``amplitude_sigma``: the log flux factors between them).
    source_mask, blend_of, data, weights, calls, prior_weight, amplitude_sigma, envelopes, symmetry_weight
        As in `blend_objective` (the asymmetry is the decoded stamp's, about its own centre,
        before its shift).
    rows, cols, starts : tensor
        ``(M, Lw, S)`` one-hot row windows, ``(M, w, S)`` one-hot column placements and the
        ``(M, 2)`` window starts of the stamps' pixel grids (`blend_models`).
    shifts : tensor
        ``(M, 2)`` ``(dy, dx)`` sub-pixel remainder of each peak, pixels.
    offset_bounds : tensor
        ``(M,)`` bound of each source's fitted offset components, pixels.
    offset_sigma : `float`
        Prior width of the fitted offsets, pixels.

    Returns
    -------
    loss : tensor
        ``(B,)`` objective per blend.
    """
    ops = keras.ops
    latents = x[:, :-2]
    offsets = offset_bounds[:, None] * ops.tanh(x[:, -2:])
    rows, cols = _shifted_placements(rows, cols, shifts, offsets)
    loss = blend_objective(latents, source_mask, blend_of, data, weights, rows, cols, starts, calls=calls,
                           prior_weight=prior_weight, amplitude_sigma=amplitude_sigma, envelopes=envelopes,
                           symmetry_weight=symmetry_weight)
    penalty = _per_blend(0.5 * ops.sum(offsets * offsets, axis=-1) / offset_sigma**2, source_mask, blend_of,
                         ops.shape(data)[0])
    return loss + penalty


def _shifted_placements(rows, cols, shifts, offsets):
    """One-hot placements ``rows``, ``cols`` composed with the Fourier shift of each stamp by its
    sub-pixel remainder ``shifts`` plus its fitted ``offsets`` (both ``(M, 2)`` ``(dy, dx)``)."""
    ops = keras.ops
    size = ops.shape(rows)[-1]
    ky = fourier_shift_matrices(shifts[:, 0] + offsets[:, 0], size)
    kx = fourier_shift_matrices(shifts[:, 1] + offsets[:, 1], size)
    return ops.matmul(rows, ky), ops.matmul(cols, kx)


def fitted_models(x, source_mask, blend_of, rows, cols, starts, shifts=None, offset_bounds=None, *, decode,
                  region_shape, n_amplitudes: int = 0):
    """The ``(B, h, C, w)`` region models of sources with the fitted variables ``x``, placed as
    `blend_objective` (``shifts`` `None`) or `blend_objective_with_offsets` place them.

    The MAP uses it for the sources it freezes (``MapSettings.freeze_drift``): their models are
    taken out of the data once, so later steps no longer decode them.

    Parameters
    ----------
    x : tensor
        ``(M, L [+ C] [+ 2])`` latents, then ``n_amplitudes`` log flux factors, then (with
        ``shifts``) the two offset parameters, as the objectives take them.
    source_mask, blend_of, rows, cols, starts, decode, region_shape
        As in `blend_models` (``rows``, ``cols`` one-hot with ``shifts``).
    shifts, offset_bounds : tensor, optional
        ``(M, 2)`` sub-pixel remainders and ``(M,)`` offset bounds of
        `blend_objective_with_offsets` (both or neither).
    n_amplitudes : `int`
        Number of log flux factors in ``x`` (0 or the band count).
    """
    ops = keras.ops
    if shifts is not None:
        rows, cols = _shifted_placements(rows, cols, shifts, offset_bounds[:, None] * ops.tanh(x[:, -2:]))
        x = x[:, :-2]
    log_amplitudes = x[:, -n_amplitudes:] if n_amplitudes else None
    latents = x[:, :-n_amplitudes] if n_amplitudes else x
    return blend_models(latents, source_mask, blend_of, rows, cols, starts, decode, region_shape, log_amplitudes)
