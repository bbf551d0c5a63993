"""`MadnessDeblender`: MAP deblending of blends in the latent space (paper section 3.5).

Flow of one call: validate and cut each blend (`prepare_blend`); initialise every source's
latents with the VAE-deblender encoder on its peak-centred cutout; pack blends into batches
padded to the largest blend; run Adam on all latents of a batch at once, one compiled
value-and-gradient step per iteration, each blend stopping on its own (`EwmaStopping`) and
finished blends leaving the compiled batch; decode the final latents and measure diagnostics.
"""

from __future__ import annotations

__all__ = ["MadnessDeblender"]

import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from ..backend import compile_value_and_grad
from ..errors import MadnessBundleError, MadnessValueError
from ..io.bundle import BundleMetadata, ModelBundle
from ..networks import Decoder, Encoder, LinearNormalization, MaskedAutoregressiveFlow, with_precision
from ..networks.layout import from_network_layout, to_network_layout
from .geometry import paste_stamps, placement_matrices, shift_stamps, stamp_overlap
from .objective import blend_objective, blend_objective_with_offsets
from .observation import PreparedBlend, prepare_blend
from .result import DeblendResult
from .settings import MapSettings
from .stopping import EwmaStopping

_log = logging.getLogger(__name__)


def _next_power_of_two(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


class MadnessDeblender:
    """Deblend galaxies by maximising their posterior in a VAE latent space.

    Parameters
    ----------
    decoder : `lsst.meas.madness.networks.Decoder`
        Latents -> ``(S, S, bands)`` stamps in network units.
    flow : `lsst.meas.madness.networks.MaskedAutoregressiveFlow`
        Prior density over the latents.
    deblender_encoder : `lsst.meas.madness.networks.Encoder`
        VAE-deblender: blended cutout -> latents of its central galaxy (initialisation).
    bands : sequence of `str`
        Band of each network channel, in order.
    normalization : `LinearNormalization` or `float`
        Flux units per network unit.
    settings : `MapSettings`, optional
        MAP settings; the paper's by default.
    metadata : `lsst.meas.madness.io.BundleMetadata`, optional
        Metadata of the bundle the networks came from.

    Examples
    --------
    >>> deblender = MadnessDeblender.from_bundle("path/to/bundle")  # doctest: +SKIP
    >>> result = deblender.deblend(image, peaks_xy, variance=variance)  # doctest: +SKIP
    >>> result.models.shape  # doctest: +SKIP
    (3, 6, 45, 45)
    """

    def __init__(
        self,
        decoder: Decoder,
        flow: MaskedAutoregressiveFlow,
        deblender_encoder: Encoder,
        *,
        bands: Sequence[str],
        normalization: LinearNormalization | float = LinearNormalization(),
        settings: MapSettings | None = None,
        metadata: BundleMetadata | None = None,
    ):
        self.decoder = decoder
        self.flow = flow
        self.deblender_encoder = deblender_encoder
        self.bands = tuple(bands)
        if not isinstance(normalization, LinearNormalization):
            normalization = LinearNormalization(float(normalization))
        self.normalization = normalization
        self.settings = settings or MapSettings()
        self.metadata = metadata
        if not flow.built:
            flow.build()
        if decoder.latent_dim != flow.latent_dim or decoder.latent_dim != deblender_encoder.latent_dim:
            raise MadnessValueError(
                f"Latent dimensions differ: decoder {decoder.latent_dim}, flow {flow.latent_dim}, "
                f"encoder {deblender_encoder.latent_dim}."
            )
        if decoder.num_bands != len(self.bands) or deblender_encoder.num_bands != len(self.bands):
            raise MadnessValueError(
                f"Bands {self.bands} do not match the networks' {decoder.num_bands} channels."
            )
        if decoder.stamp_size != deblender_encoder.stamp_size:
            raise MadnessValueError("Decoder and encoder stamp sizes differ.")
        self._steps: dict[tuple, object] = {}
        # The decoder the MAP steps call, per precision (a bfloat16 copy shares nothing with it).
        self._step_decoders: dict[str, Decoder] = {decoder.dtype_policy.name: decoder}

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike | None = None,
        *,
        settings: MapSettings | None = None,
        allow_untrained: bool = False,
    ) -> "MadnessDeblender":
        """Build a deblender from a model bundle.

        Parameters
        ----------
        path : path-like, optional
            Bundle directory; `None` for the packaged default LSST bundle.
        settings : `MapSettings`, optional
            MAP settings.
        allow_untrained : `bool`
            Accept a bundle whose metadata say ``trained: false`` (tests, timing benchmarks).

        Raises
        ------
        MadnessBundleError
            The bundle is missing, damaged, or untrained while ``allow_untrained`` is False.
        """
        bundle = ModelBundle.load(path)
        if not bundle.metadata.trained and not allow_untrained:
            raise MadnessBundleError(
                f"The bundle at {path} holds untrained weights; pass allow_untrained=True only for "
                "tests and timing."
            )
        return cls.from_model_bundle(bundle, settings=settings)

    @classmethod
    def from_model_bundle(cls, bundle: ModelBundle, *, settings: MapSettings | None = None) -> "MadnessDeblender":
        """Build a deblender from an in-memory `ModelBundle`."""
        meta = bundle.metadata
        return cls(
            bundle.decoder,
            bundle.flow,
            bundle.deblender_encoder,
            bands=meta.bands,
            normalization=meta.normalization,
            settings=settings,
            metadata=meta,
        )

    # --- properties and network helpers ---------------------------------------------------------

    @property
    def stamp_size(self) -> int:
        """Side of the model stamps in pixels."""
        return self.decoder.stamp_size

    @property
    def latent_dim(self) -> int:
        """Dimension of the latent space."""
        return self.decoder.latent_dim

    def decode(self, latents: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Decode ``(n, L)`` latents to ``(n, bands, S, S)`` models in flux units."""
        latents = np.asarray(latents, dtype=np.float32).reshape(-1, self.latent_dim)
        stamps = self.decoder.predict(latents, batch_size=batch_size, verbose=0)
        return self.normalization.denormalize(from_network_layout(stamps))

    def log_prior(self, latents: np.ndarray) -> np.ndarray:
        """Flow log-density ``(n,)`` of ``(n, L)`` latents."""
        latents = np.asarray(latents, dtype=np.float32).reshape(-1, self.latent_dim)
        return np.asarray(keras.ops.convert_to_numpy(self.flow.log_prob(latents)), dtype=np.float64)

    def initial_latents(self, cutouts: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """VAE-deblender latents ``(n, L)`` of ``(n, bands, S, S)`` peak-centred cutouts (network units)."""
        stamps = np.ascontiguousarray(to_network_layout(np.asarray(cutouts, dtype=np.float32)))
        return np.asarray(self.deblender_encoder.encode_mean(stamps, batch_size=batch_size), dtype=np.float32)

    def _check_bands(self, bands: Sequence[str] | None) -> None:
        if bands is None:
            return
        bands = tuple(bands)
        if bands != self.bands:
            if sorted(bands) == sorted(self.bands):
                order = [bands.index(b) for b in self.bands]
                raise MadnessValueError(
                    f"Bands {bands} are in another order than the model's {self.bands}; "
                    f"reorder the planes with image[{order}]."
                )
            raise MadnessValueError(f"Bands {bands} do not match the model's bands {self.bands}.")

    # --- public deblending API -----------------------------------------------------------------

    def deblend(
        self,
        image: np.ndarray,
        peaks_xy: np.ndarray,
        *,
        variance: np.ndarray,
        mask: np.ndarray | None = None,
        bands: Sequence[str] | None = None,
        settings: MapSettings | None = None,
    ) -> DeblendResult:
        """Deblend one blend.

        Parameters
        ----------
        image : `numpy.ndarray`
            ``(bands, H, W)`` image, flux units per pixel, bands in the model's order.
        peaks_xy : `numpy.ndarray`
            ``(n, 2)`` source positions, ``(x, y)`` pixels in the image's frame.
        variance : `numpy.ndarray`
            ``(bands, H, W)`` per-pixel variance, flux units squared.
        mask : `numpy.ndarray`, optional
            ``(bands, H, W)`` or ``(H, W)``; non-zero marks a pixel to ignore.
        bands : sequence of `str`, optional
            Band names of the planes, checked against the model's `bands`.
        settings : `MapSettings`, optional
            Overrides the deblender's settings for this call.

        Returns
        -------
        result : `DeblendResult`
            Models, latents and diagnostics.

        Raises
        ------
        MadnessValueError, MadnessRangeError, MadnessNoDataError
            Bad input; see `lsst.meas.madness.engine.observation` for which input raises and
            which is flagged per source.
        """
        return self.deblend_batch(
            [dict(image=image, peaks_xy=peaks_xy, variance=variance, mask=mask)],
            bands=bands,
            settings=settings,
        )[0]

    def deblend_batch(
        self,
        blends: Sequence[Mapping],
        *,
        bands: Sequence[str] | None = None,
        settings: MapSettings | None = None,
        progress: bool = False,
    ) -> list[DeblendResult]:
        """Deblend many blends, several per compiled step.

        Parameters
        ----------
        blends : sequence of mapping
            Each with keys ``image``, ``peaks_xy``, ``variance`` and optionally ``mask``, as
            in `deblend`. Blends may have different image sizes and numbers of peaks.
        bands : sequence of `str`, optional
            Band names of the planes, checked against the model's.
        settings : `MapSettings`, optional
            Overrides the deblender's settings for this call.
        progress : `bool`
            Show a progress bar over batches.

        Returns
        -------
        results : `list` [`DeblendResult`]
            One per blend, in input order. Invalid input raises before any fitting.
        """
        settings = settings or self.settings
        self._check_bands(bands)
        prepared = [
            prepare_blend(
                b["image"],
                b["peaks_xy"],
                b.get("variance"),
                b.get("mask"),
                num_bands=len(self.bands),
                stamp_size=self.stamp_size,
                normalization=self.normalization,
                max_sources=settings.max_sources,
            )
            for b in blends
        ]
        if not prepared:
            return []
        t0 = time.perf_counter()
        init = self.initial_latents(np.concatenate([p.cutouts for p in prepared]))
        splits = np.cumsum([p.n_sources for p in prepared])[:-1]
        init_per_blend = np.split(init, splits)

        results: list[DeblendResult | None] = [None] * len(prepared)
        batches = self._plan_batches(prepared, settings.batch_sources)
        iterator = batches
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(batches, desc="MADNESS deblend", unit="batch")
        for batch in iterator:
            fitted = self._fit_batch([prepared[i] for i in batch], [init_per_blend[i] for i in batch], settings)
            for i, res in zip(batch, fitted):
                results[i] = res
        _log.debug(
            "Deblended %d blends (%d sources) in %.2f s",
            len(prepared),
            int(sum(p.n_sources for p in prepared)),
            time.perf_counter() - t0,
        )
        return results  # type: ignore[return-value]

    # --- internals ------------------------------------------------------------------------------

    @staticmethod
    def _plan_batches(prepared: Sequence[PreparedBlend], batch_sources: int) -> list[list[int]]:
        """Group blends, largest first, so that blends x (largest blend) <= batch_sources."""
        order = sorted(range(len(prepared)), key=lambda i: -prepared[i].n_sources)
        batches: list[list[int]] = []
        for i in order:
            n = prepared[i].n_sources
            if batches:
                width = max(prepared[j].n_sources for j in batches[-1])
                if (len(batches[-1]) + 1) * max(width, n) <= batch_sources:
                    batches[-1].append(i)
                    continue
            batches.append([i])
        return batches

    def _step_fn(self, settings: MapSettings):
        if settings.fit_offsets:
            key = (float(settings.prior_weight), float(settings.offset_max), float(settings.offset_sigma))
            loss = functools.partial(blend_objective_with_offsets, prior_weight=key[0], offset_max=key[1],
                                     offset_sigma=key[2])
        else:
            key = (float(settings.prior_weight),)
            loss = functools.partial(blend_objective, prior_weight=key[0])
        key += (settings.precision,)
        if key not in self._steps:
            if settings.precision not in self._step_decoders:
                self._step_decoders[settings.precision] = with_precision(self.decoder, settings.precision)
            self._steps[key] = compile_value_and_grad(
                loss, [self._step_decoders[settings.precision], self.flow]  # the flow's call is its log_prob
            )
        return self._steps[key]

    def _pack(self, blends: Sequence[PreparedBlend], fit_offsets: bool = False) -> tuple[np.ndarray, ...]:
        """Pad blends to common (sources, region) sizes; layouts as `blend_objective` wants.

        With ``fit_offsets`` the placement matrices are integer (one-hot) and the sub-pixel
        shifts come as an extra ``(B, N, 2)`` array, as `blend_objective_with_offsets` wants.
        """
        s = self.stamp_size
        n_max = max(b.n_sources for b in blends)
        h_max = max(b.data.shape[1] for b in blends)
        w_max = max(b.data.shape[2] for b in blends)
        nb, c = len(blends), len(self.bands)
        source_mask = np.zeros((nb, n_max), np.float32)
        data = np.zeros((nb, h_max, c, w_max), np.float32)
        weights = np.zeros((nb, h_max, c, w_max), np.float32)
        rows = np.zeros((nb, n_max, h_max, s), np.float32)
        cols = np.zeros((nb, n_max, w_max, s), np.float32)
        shifts = np.zeros((nb, n_max, 2), np.float32)
        for k, b in enumerate(blends):
            n, (_, h, w) = b.n_sources, b.data.shape
            source_mask[k, :n] = 1.0
            data[k, :h, :, :w] = np.transpose(b.data, (1, 0, 2))
            weights[k, :h, :, :w] = np.transpose(b.weights, (1, 0, 2))
            # Stamp origin in the region plus the sub-pixel shift: the placement also shifts.
            offsets = b.origins - np.array(b.region[:2]) + (0.0 if fit_offsets else b.shifts)
            rows[k, :n, :h] = placement_matrices(offsets[:, 0], h, s)
            cols[k, :n, :w] = placement_matrices(offsets[:, 1], w, s)
            shifts[k, :n] = b.shifts
        if fit_offsets:
            return source_mask, data, weights, rows, cols, shifts
        return source_mask, data, weights, rows, cols

    def _fit_batch(
        self, blends: Sequence[PreparedBlend], init: Sequence[np.ndarray], settings: MapSettings
    ) -> list[DeblendResult]:
        nb = len(blends)
        n_max = max(b.n_sources for b in blends)
        # The optimised variables: each source's latents, then (fit_offsets) two offset parameters.
        n_extra = 2 if settings.fit_offsets else 0
        latents = np.zeros((nb, n_max, self.latent_dim + n_extra), np.float32)
        for k, z0 in enumerate(init):
            latents[k, : len(z0), : self.latent_dim] = z0
        initial = latents.copy()
        packed = [keras.ops.convert_to_tensor(a) for a in self._pack(blends, settings.fit_offsets)]
        step = self._step_fn(settings)

        m = np.zeros_like(latents)
        v = np.zeros_like(latents)
        b1, b2, eps = settings.adam_beta1, settings.adam_beta2, settings.adam_epsilon
        active = np.ones(nb, bool)
        n_iter = np.zeros(nb, int)
        converged = np.zeros(nb, bool)
        history = np.full((settings.max_iter, nb), np.nan)
        stopping = EwmaStopping(nb, settings.ewma_window, settings.rtol, settings.min_iter)
        selection = np.arange(nb)
        selected = packed

        for t in range(1, settings.max_iter + 1):
            loss, grad = step(keras.ops.convert_to_tensor(latents[selection]), *selected)
            loss = np.asarray(keras.ops.convert_to_numpy(loss), np.float64)
            grad = np.asarray(keras.ops.convert_to_numpy(grad), np.float32)
            # A blend can appear twice in a padded selection; use its first slot.
            blend_ids, slots = np.unique(selection, return_index=True)
            live = active[blend_ids]
            blend_ids, slots = blend_ids[live], slots[live]
            step_losses = np.full(nb, np.nan)
            step_losses[blend_ids] = loss[slots]
            history[t - 1, blend_ids] = loss[slots]

            g = grad[slots]
            lr = settings.learning_rate * settings.lr_decay ** ((t - 1) // settings.lr_decay_steps)
            m[blend_ids] = b1 * m[blend_ids] + (1 - b1) * g
            v[blend_ids] = b2 * v[blend_ids] + (1 - b2) * g * g
            m_hat = m[blend_ids] / (1 - b1**t)
            v_hat = v[blend_ids] / (1 - b2**t)
            latents[blend_ids] -= (lr * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)
            n_iter[blend_ids] = t

            stop = stopping.update(step_losses) & active
            converged |= stop & (t < settings.max_iter)
            active &= ~stop
            if not active.any():
                break
            n_active = int(active.sum())
            if settings.compact and n_active * 2 <= len(selection) and len(selection) > 1:
                size = _next_power_of_two(n_active)
                ids = np.flatnonzero(active)
                selection = np.concatenate([ids, np.full(size - n_active, ids[0])])
                selected = [keras.ops.take(a, keras.ops.convert_to_tensor(selection), axis=0) for a in packed]

        # Decode and evaluate the prior for the whole batch at once (one network call each).
        offsets = settings.offset_max * np.tanh(latents[..., self.latent_dim:].astype(np.float64))  # (dy, dx)
        latents, initial = latents[..., : self.latent_dim], initial[..., : self.latent_dim]
        final = np.concatenate([latents[k, : b.n_sources] for k, b in enumerate(blends)])
        start = np.concatenate([initial[k, : b.n_sources] for k, b in enumerate(blends)])
        models = self.decode(np.concatenate([final, start]))
        priors = self.log_prior(np.concatenate([final, start]))
        n_total = len(final)
        bounds = np.cumsum([0] + [b.n_sources for b in blends])
        return [
            self._finish(
                b,
                latents[k, : b.n_sources],
                initial[k, : b.n_sources],
                models=models[bounds[k] : bounds[k + 1]],
                initial_models=models[n_total + bounds[k] : n_total + bounds[k + 1]],
                log_prior=priors[bounds[k] : bounds[k + 1]],
                initial_log_prior=priors[n_total + bounds[k] : n_total + bounds[k + 1]],
                n_iter=int(n_iter[k]),
                converged=bool(converged[k]),
                history=history[: n_iter[k], k],
                settings=settings,
                offsets=offsets[k, : b.n_sources] if n_extra else None,
            )
            for k, b in enumerate(blends)
        ]

    def _finish(
        self,
        blend: PreparedBlend,
        latents: np.ndarray,
        initial: np.ndarray,
        *,
        models: np.ndarray,
        initial_models: np.ndarray,
        log_prior: np.ndarray,
        initial_log_prior: np.ndarray,
        n_iter: int,
        converged: bool,
        history: np.ndarray,
        settings: MapSettings,
        offsets: np.ndarray | None = None,
    ) -> DeblendResult:
        """Diagnostics of one fitted blend; ``models`` in flux units, centred (as decoded)."""
        norm = self.normalization
        s = self.stamp_size
        # The models as the fit placed them: each moved by its peak's sub-pixel shift (plus the
        # fitted offset, which starts at zero: the initial models are at the peaks).
        fitted = np.zeros_like(blend.shifts) if offsets is None else np.asarray(offsets, np.float64)
        models = shift_stamps(models, blend.shifts + fitted).astype(np.float32)
        initial_models = shift_stamps(initial_models, blend.shifts)

        y0, x0, y1, x1 = blend.region
        data = norm.denormalize(blend.data)
        weights = blend.weights.astype(np.float64) / float(norm.scale) ** 2  # flux units
        offsets = blend.origins - np.array([y0, x0])

        def region_model(stamps):
            return paste_stamps(stamps, offsets, data.shape[1:], dtype=data.dtype)

        resid_sq = weights * (data - region_model(models)) ** 2
        resid_init = weights * (data - region_model(initial_models)) ** 2
        w = settings.prior_weight
        objective_final = 0.5 * resid_sq.sum() - w * log_prior.sum()
        if offsets is not None:
            objective_final += 0.5 * float((fitted**2).sum()) / settings.offset_sigma**2
        objective_initial = 0.5 * resid_init.sum() - w * initial_log_prior.sum()

        chi2 = np.full((len(latents), len(self.bands)), np.nan)
        for i, origin in enumerate(offsets):
            _, (ry, rx) = stamp_overlap(origin, (s, s), (0, 0, y1 - y0, x1 - x0))
            n_valid = (weights[:, ry, rx] > 0).sum(axis=(1, 2))
            total = resid_sq[:, ry, rx].sum(axis=(1, 2))
            with np.errstate(invalid="ignore", divide="ignore"):
                chi2[i] = np.where(n_valid > 0, total / n_valid, np.nan)

        return DeblendResult(
            bands=self.bands,
            image_shape=blend.image_shape,
            peaks_xy=blend.peaks_xy,
            stamp_yx0=blend.origins,
            models=models,
            latents=latents.copy(),
            initial_latents=initial.copy(),
            log_prior=log_prior,
            chi2=chi2,
            n_iter=n_iter,
            converged=converged,
            objective_initial=float(objective_initial),
            objective_final=float(objective_final),
            loss_history=np.asarray(history, np.float64),
            edge=blend.edge,
            no_data=blend.no_data,
            masked_fraction=blend.masked_fraction,
            offsets_xy=fitted[:, ::-1].copy(),
        )

