"""`MadnessDeblender`: MAP deblending of blends in the latent space (paper section 3.5).

Flow of one call: validate and cut each blend (`prepare_blend`); initialise every source's
latents with the VAE-deblender encoder on its peak-centred cutout; choose a zoom for sources
bigger than the stamp (`MapSettings.max_zoom`, up to 3 by default); pack blends into batches
padded to the largest blend; run Adam on all latents of a batch at once, one compiled
value-and-gradient step per iteration, each blend stopping on its own (`EwmaStopping`) and
finished blends leaving the compiled batch; with `MapSettings.fit_envelopes`, fit again the
blends where a source's light goes on beyond its stamp, with an envelope for that light
(`lsst.meas.madness.engine.envelope`); decode the final latents and measure diagnostics.
"""

from __future__ import annotations

__all__ = ["MadnessDeblender"]

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from ..backend import compile_function, compile_value_and_grad, compiles_per_shape
from ..errors import MadnessBundleError, MadnessFitError, MadnessValueError
from ..io.bundle import BundleMetadata, ModelBundle
from ..networks import Decoder, Encoder, LinearNormalization, MaskedAutoregressiveFlow
from ..precision import with_precision
from ..networks.gaussian import latent_mean
from ..networks.layout import from_network_layout, to_network_layout
from .envelope import EnvelopeBasis, envelope_profiles, model_ellipse, pixel_noise
from .geometry import (
    paste_stamps,
    placement_matrices,
    placement_windows,
    shift_stamps,
    stamp_overlap,
    zoom_footprint_size,
    zoom_place_stamps,
    zoom_placement_matrices,
)
from .lbfgs import BlendLbfgs
from .objective import (blend_objective, blend_objective_with_offsets, fitted_models, sky_weights,
                        stamp_asymmetry)
from .observation import PreparedBlend, prepare_blend
from .refit import beside_brighter, cleaned_image
from .result import DeblendResult
from .settings import ENVELOPE_DOMINANCE, ENVELOPE_REACH, REFIT_STOP_FLOOR, MapSettings
from .stopping import DriftFreezing, EwmaStopping
from .wings import check_psf, complete_outskirts, wing_profiles

_log = logging.getLogger(__name__)


def _with_envelopes(x, *args, calls, objective):
    """``objective`` with the envelopes' three per-blend arrays, which come last (`_select`)."""
    return objective(x, *args[:-3], calls=calls, envelopes=args[-3:])


class _Freezer:
    """The per-source stop of one batch fit (``MapSettings.freeze_drift``): which sources froze
    (`DriftFreezing`), their models taken out of the packed data (in place), and each blend's
    sum of its frozen sources' prior terms, which the step no longer computes but the stopping
    rule's objective keeps."""

    def __init__(self, deblender: "MadnessDeblender", packed: list, source_blend: np.ndarray,
                 step_scale: np.ndarray, n_amp: int, settings: MapSettings):
        self.deblender = deblender
        self.packed = packed
        self.source_blend = source_blend
        self.n_amp = n_amp
        self.settings = settings
        self.rule = DriftFreezing(len(source_blend), settings.ewma_window, settings.freeze_drift,
                                  settings.min_iter, step_scale)
        self.constant = np.zeros(int(source_blend.max()) + 1 if len(source_blend) else 0)

    @property
    def frozen(self) -> np.ndarray:
        return self.rule.frozen

    def all_frozen(self, n_blends: int) -> np.ndarray:
        """``(n_blends,)`` bool: every source of the blend is frozen."""
        return np.bincount(self.source_blend[~self.frozen], minlength=n_blends) == 0

    def update(self, x: np.ndarray, t: int, learning_rate: float, active: np.ndarray) -> bool:
        """Freeze the sources of ``active`` blends that stopped moving; `True` if any did."""
        newly = np.flatnonzero(self.rule.update(x, t, learning_rate, active[self.source_blend]))
        if not len(newly):
            return False
        # Adam near an optimum swings about it: a source is frozen at the centre of its swing.
        x[newly] = self.rule.window_mean()[newly]
        self.freeze(x, newly)
        return True

    def freeze(self, x: np.ndarray, newly: np.ndarray) -> None:
        """Freeze the flat sources ``newly`` at their variables in ``x``: their models leave the
        packed data and their own terms of the objective go to `constant`."""
        self.rule.frozen[newly] = True
        settings, ld = self.settings, self.deblender.latent_dim
        data, _, rows, cols, starts, *rest = self.packed
        shifts, offset_bounds = (rest[0][newly], rest[1][newly]) if settings.fit_offsets else (None, None)
        blends, local = np.unique(self.source_blend[newly], return_inverse=True)
        ops = keras.ops
        model = fitted_models(
            ops.convert_to_tensor(x[newly]), ops.ones((len(newly),)), ops.convert_to_tensor(local.astype(np.int32)),
            ops.convert_to_tensor(rows[newly]), ops.convert_to_tensor(cols[newly]),
            ops.convert_to_tensor(starts[newly]), None if shifts is None else ops.convert_to_tensor(shifts),
            None if shifts is None else ops.convert_to_tensor(offset_bounds),
            decode=self.deblender._step_decoders[settings.precision],
            region_shape=(len(blends), data.shape[1], data.shape[3]), n_amplitudes=self.n_amp)
        data[blends] -= np.asarray(ops.convert_to_numpy(model), np.float32)
        # The terms of the objective that belong to the frozen sources alone (constant from now).
        terms = -settings.prior_weight * self.deblender.log_prior(x[newly, :ld])
        if self.n_amp:
            a = x[newly, ld : ld + self.n_amp].astype(np.float64)
            terms += 0.5 * np.sum(a * a, axis=1) / settings.amplitude_sigma**2
        if settings.fit_offsets:
            d = offset_bounds[:, None] * np.tanh(x[newly, -2:].astype(np.float64))
            terms += 0.5 * np.sum(d * d, axis=1) / settings.offset_sigma**2
        if settings.symmetry_weight:
            decode = self.deblender._step_decoders[settings.precision]
            stamps = ops.cast(decode(ops.convert_to_tensor(x[newly, :ld])), "float32")
            if self.n_amp:
                stamps = stamps * np.exp(a).astype(np.float32)[:, None, None, :]
            sky = sky_weights(ops.convert_to_tensor(self.packed[1]), self.source_blend[newly])
            terms += settings.symmetry_weight * np.asarray(ops.convert_to_numpy(stamp_asymmetry(stamps, sky)))
        np.add.at(self.constant, self.source_blend[newly], terms)


ENVELOPE_RING = 8
"""Width (pixels) of the ring outside a footprint where `MadnessDeblender` looks for light
beyond it (``MapSettings.fit_envelopes``)."""

ENVELOPE_MIN_PIXELS = 64
"""Fewest ring pixels outside every footprint on which that light is judged."""


def _overlap_groups(origins: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``(n,)`` group label of each square footprint: footprints that overlap, directly or
    through others, share a label (connected components)."""
    origins = np.asarray(origins, np.int64)
    sizes = np.asarray(sizes, np.int64)
    lo, hi = origins, origins + sizes[:, None]
    touch = ((lo[:, None] < hi[None]) & (lo[None] < hi[:, None])).all(axis=-1)
    label = np.arange(len(sizes))
    while True:  # propagate the smallest label along overlaps until nothing changes
        new = np.where(touch, label[None], len(sizes)).min(axis=1)
        if np.array_equal(new, label):
            return np.unique(label, return_inverse=True)[1]
        label = new


def _next_power_of_two(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


EDGE_WIDTH = 2
"""Width (stamp pixels) of the border ring over which `edge_flux_fraction` is measured."""


def edge_flux_fraction(stamps: np.ndarray, width: int = EDGE_WIDTH) -> np.ndarray:
    """Fraction of each stamp's flux (band sum, negative pixels clipped) in its outer ``width`` pixels.

    A galaxy that the stamp holds has almost none of its light there; a galaxy cut off by the
    stamp edge has its profile running into it. Used to choose each source's zoom
    (`MapSettings.max_zoom`) and returned per source (`DeblendResult.edge_flux_fraction`).

    Parameters
    ----------
    stamps : `numpy.ndarray`
        ``(n, bands, S, S)`` stamps.
    width : `int`
        Ring width, stamp pixels.

    Returns
    -------
    fraction : `numpy.ndarray`
        ``(n,)`` in [0, 1]; 0 for a stamp without positive flux.

    Examples
    --------
    >>> stamps = np.zeros((1, 1, 9, 9))
    >>> stamps[0, 0, 4, :] = 1.0
    >>> edge_flux_fraction(stamps).tolist()  # 4 of the row's 9 pixels lie in the 2-px ring
    [0.4444444444444444]
    """
    total = np.clip(np.asarray(stamps, np.float64), 0.0, None).sum(axis=1)  # (n, S, S)
    inner = total[:, width:-width, width:-width].sum(axis=(1, 2))
    whole = total.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(whole > 0, 1.0 - inner / whole, 0.0)


def outside_window_fraction(placed: np.ndarray, window: int) -> np.ndarray:
    """Fraction of each model's flux (band sum, negative pixels clipped) outside its central window.

    Parameters
    ----------
    placed : `numpy.ndarray`
        ``(n, bands, P, P)`` models on the image grid, centred in their windows (odd ``P``).
    window : `int`
        Side of the central window, pixels (rounded up to odd).

    Returns
    -------
    fraction : `numpy.ndarray`
        ``(n,)`` in [0, 1]; 0 for a model without positive flux.

    Examples
    --------
    >>> placed = np.ones((1, 1, 5, 5))
    >>> outside_window_fraction(placed, 3).tolist()
    [0.64]
    """
    total = np.clip(np.asarray(placed, np.float64), 0.0, None).sum(axis=1)
    size = total.shape[-1]
    half = min(int(window) // 2, size // 2)
    c = size // 2
    inner = total[:, c - half : c + half + 1, c - half : c + half + 1].sum(axis=(1, 2))
    whole = total.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(whole > 0, 1.0 - inner / whole, 0.0)


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
        self._inference_calls: dict[str, object] = {}  # compiled decoder / encoder calls (`_inference`)
        self._prior_mode: np.ndarray | None = None  # the flow's image of its base centre (`pull_into_prior`)

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
        stamps = self._inference("decoder", latents, batch_size)
        return self.normalization.denormalize(from_network_layout(stamps))

    def log_prior(self, latents: np.ndarray) -> np.ndarray:
        """Flow log-density ``(n,)`` of ``(n, L)`` latents."""
        latents = np.asarray(latents, dtype=np.float32).reshape(-1, self.latent_dim)
        return np.asarray(keras.ops.convert_to_numpy(self.flow.log_prob(latents)), dtype=np.float64)

    def initial_latents(self, cutouts: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """VAE-deblender latents ``(n, L)`` of ``(n, bands, S, S)`` peak-centred cutouts (network units)."""
        stamps = np.ascontiguousarray(to_network_layout(np.asarray(cutouts, dtype=np.float32)))
        params = self._inference("encoder", stamps, batch_size)
        return np.ascontiguousarray(latent_mean(params, self.latent_dim), dtype=np.float32)

    def _start_latents(self, cutouts: np.ndarray, settings: MapSettings) -> np.ndarray:
        """The MAP's starting latents of ``cutouts``: the VAE-deblender's, each pulled into the
        prior's support (`pull_into_prior`) when its log-prior is below
        ``settings.init_log_prior_floor``."""
        latents = self.initial_latents(cutouts)
        if settings.init_log_prior_floor is None or not len(latents):
            return latents
        return self.pull_into_prior(latents, settings.init_log_prior_floor)

    def pull_into_prior(self, latents: np.ndarray, floor: float, steps: int = 40) -> np.ndarray:
        """Move each latent vector whose flow log-density is below ``floor`` towards the flow's
        mode until it is not.

        The VAE-deblender's encoder can put a contaminated cutout's latents where the flow gives
        them almost no density (log-density -1e4 to -1.3e8 for 2.5% of the validation sources,
        where the flow's own samples stay above -55 in 99.99%); there the prior term dominates the
        blend's objective by orders of magnitude, the first MAP steps only chase it, and the
        stopping rule, which compares late falls with the first, ends the blend early
        (``doc/error-budget.md``, "Starts outside the prior").

        Parameters
        ----------
        latents : `numpy.ndarray`
            ``(n, L)`` latents.
        floor : `float`
            Lowest flow log-density kept.
        steps : `int`
            Points tried on the segment from a vector to the mode (evenly spaced).

        Returns
        -------
        pulled : `numpy.ndarray`
            ``(n, L)`` float32: each vector below ``floor`` replaced by the point of the segment
            ``mode + t (z - mode)`` with the largest ``t`` on the grid whose log-density is at
            least ``floor`` (the mode, ``t = 0``, if none); the others unchanged. The mode is
            the flow's image of its base distribution's centre.
        """
        latents = np.asarray(latents, np.float32).reshape(-1, self.latent_dim)
        low = np.flatnonzero(self.log_prior(latents) < floor)
        if not len(low):
            return latents
        if self._prior_mode is None:
            self._prior_mode = np.asarray(keras.ops.convert_to_numpy(
                self.flow.forward(np.zeros((1, self.latent_dim), np.float32))), np.float32)[0]
        t = np.linspace(1.0, 0.0, steps + 1, dtype=np.float32)
        segment = self._prior_mode + t[None, :, None] * (latents[low][:, None, :] - self._prior_mode)
        density = self.log_prior(segment.reshape(-1, self.latent_dim)).reshape(len(low), len(t))
        ok = density >= floor
        first = np.where(ok.any(axis=1), np.argmax(ok, axis=1), len(t) - 1)
        pulled = latents.copy()
        pulled[low] = segment[np.arange(len(low)), first]
        return pulled

    def _inference(self, which: str, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        """The decoder's or the VAE-deblender encoder's outputs for ``inputs``, in chunks of
        ``batch_size`` through one compiled call per network.

        Not ``keras.Model.predict``: each of its calls builds a data pipeline, an iterator and
        callbacks, ~0.1 s on two cores whatever the batch, and the engine decodes and encodes a
        few times per blend (zoom choice, results). Where every shape compiles (JAX) a chunk is
        padded to a power of two, so a handful of shapes serve every call.
        """
        if batch_size < 1:
            raise MadnessValueError(f"batch_size must be >= 1, not {batch_size}.")
        n = len(inputs)
        model = self.decoder if which == "decoder" else self.deblender_encoder
        if which not in self._inference_calls:
            self._inference_calls[which] = compile_function(
                lambda x, calls: calls[0](x), [model])
        call = self._inference_calls[which]
        bucket = compiles_per_shape()
        parts = []
        for start in range(0, max(n, 1), batch_size):
            chunk = inputs[start:start + batch_size]
            m = len(chunk)
            if m == 0:  # no input: one zero row, for the output's shape
                chunk = np.zeros((1, *inputs.shape[1:]), np.float32)
            elif bucket:
                size = min(batch_size, _next_power_of_two(m))
                if size > m:
                    chunk = np.concatenate([chunk, np.zeros((size - m, *chunk.shape[1:]), chunk.dtype)])
            parts.append(np.asarray(keras.ops.convert_to_numpy(call(chunk)), dtype=np.float32)[:m])
        return np.concatenate(parts)

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
        zoom=None,
        psf: np.ndarray | None = None,
        init: np.ndarray | None = None,
        fit_offsets: np.ndarray | None = None,
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
        zoom : `int` or array-like, optional
            ``(n,)`` or one integer zoom factor in [1, 4] per source: the source's model is the
            decoder's stamp drawn with ``zoom``-times larger pixels, for galaxies bigger than the
            stamp (``doc/large-galaxies.md``). `None` (default): all 1, or chosen per source
            when ``settings.max_zoom > 1`` without ``settings.fit_offsets``. A zoomed source
            holds its position when offsets are fitted.
        psf : `numpy.ndarray`, optional
            ``(bands, h, w)`` PSF image of each band, odd sides, centred, its sum the whole PSF
            (normalised here). With ``settings.psf_wings`` each source without an envelope gets
            its light beyond its footprint from it (`DeblendResult.wing_fluxes`,
            `lsst.meas.madness.engine.wings`): give it as large as that light should reach (up
            to twice the image's side).
        init : `numpy.ndarray`, optional
            ``(n, L)`` latents, or ``(n, L + bands)`` latents and log flux factors, to start
            the fit from instead of the VAE-deblender's guess: a warm start from an earlier
            fit (`DeblendResult.latents` and ``log(amplitudes)``). A row of NaN keeps that
            source's guess. A row is a start at the zoom the source is fitted with: give
            ``zoom`` with it when ``settings.max_zoom > 1`` (a source the fit moves to another
            zoom, ``zoom_choice="fit"``, starts there from the guess).
        fit_offsets : array-like of `bool`, optional
            ``(n,)``: the sources whose positions move with ``settings.fit_offsets`` (default:
            every zoom-1 source), e.g. only sources added to an earlier fit; the others stay on
            their peaks. Marking a zoomed source raises.

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
            [dict(image=image, peaks_xy=peaks_xy, variance=variance, mask=mask, zoom=zoom, psf=psf, init=init,
                  fit_offsets=fit_offsets)],
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
            Each with keys ``image``, ``peaks_xy``, ``variance`` and optionally ``mask``,
            ``zoom``, ``psf``, ``init`` and ``fit_offsets``, as in `deblend`. Blends may have different image sizes and numbers of peaks.
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
        prepare = functools.partial(prepare_blend, num_bands=len(self.bands), stamp_size=self.stamp_size,
                                    normalization=self.normalization, max_sources=settings.max_sources)
        prepared = [
            prepare(b["image"], b["peaks_xy"], b.get("variance"), b.get("mask"), zoom=b.get("zoom"),
                    fit_offsets=b.get("fit_offsets"))
            for b in blends
        ]
        if not prepared:
            return []
        psfs = [None if b.get("psf") is None else check_psf(b["psf"], len(self.bands)) for b in blends]
        t0 = time.perf_counter()
        init = self._start_latents(np.concatenate([p.cutouts for p in prepared]), settings)
        splits = np.cumsum([p.n_sources for p in prepared])[:-1]
        init_per_blend = np.split(init, splits)
        auto = []
        if settings.max_zoom > 1 and not settings.fit_offsets:
            auto = [i for i, b in enumerate(blends) if b.get("zoom") is None]
            if auto and settings.zoom_choice == "guess":
                for i in auto:
                    zoomed = self._choose_zoom(self._preparer(prepare, blends[i]), init_per_blend[i],
                                               settings)
                    if zoomed is not None:
                        prepared[i], init_per_blend[i] = zoomed
        for i, b in enumerate(blends):
            if b.get("init") is not None:
                init_per_blend[i] = self._given_start(b["init"], init_per_blend[i], settings)

        results: list[DeblendResult | None] = [None] * len(prepared)
        self._fit_all(prepared, init_per_blend, range(len(prepared)), results, settings, progress)
        if settings.second_start_rate is not None and not settings.fit_envelopes:
            self._second_start(prepared, init_per_blend, range(len(prepared)), results, settings, progress)
        if auto and settings.zoom_choice == "fit":
            # Sources whose fitted model runs into its stamp edge move up one zoom at a time and
            # their blends are fitted again, from the VAE-deblender's guesses at the new zooms
            # (the result is that of `deblend` with those zooms given).
            zoom = {i: np.ones(prepared[i].n_sources, np.int64) for i in auto}
            for z in range(1, settings.max_zoom):
                redo = []
                for i in auto:
                    grow = self._zoom_candidates(results[i], zoom[i], z, settings)
                    if grow.any():
                        zoom[i][grow] = z + 1
                        prepared[i] = self._preparer(prepare, blends[i])(zoom[i])
                        init_per_blend[i] = self._start_latents(prepared[i].cutouts, settings)
                        redo.append(i)
                if not redo:
                    break
                _log.debug("Zoom %d: refitting %d blends", z + 1, len(redo))
                self._fit_all(prepared, init_per_blend, redo, results, settings, progress)
        envelopes: dict[int, EnvelopeBasis] = {}
        if settings.fit_envelopes:
            # Blends with a source whose model runs into its stamp edge are fitted again with an
            # envelope for it (its light beyond the stamp), from their fitted latents.
            # An envelope may reach every pixel the caller gave, not only the stamps' bounding
            # box the first fit used (a bright galaxy alone in its cut-out has no pixel beyond its
            # stamp there): the test and the refit use the whole image.
            for i, (blend, result) in enumerate(zip(prepared, results)):
                whole = blend.region == (0, 0, *blend.image_shape)
                wide = blend if whole else self._preparer(prepare, blends[i])(blend.zoom, whole_image=True)
                basis = self._envelopes(wide, result, settings)
                if basis is not None:
                    envelopes[i] = basis
                    prepared[i] = wide
            if settings.second_start_rate is not None:
                # Blends that get envelopes keep their first fit: the envelope refit from a second
                # start's state lost in the faint bands (doc/training.md).
                plain = [i for i in range(len(prepared)) if i not in envelopes]
                self._second_start(prepared, init_per_blend, plain, results, settings, progress)
            if envelopes:
                _log.debug("Envelopes: refitting %d blends", len(envelopes))
                warm = [np.concatenate([results[i].latents, np.log(results[i].amplitudes)], axis=1)
                        if i in envelopes else None for i in range(len(prepared))]
                # Adam continues at the rate the first fits had decayed to: restarted at the full
                # rate it would knock converged latents about, galaxies the envelope never reaches
                # included.
                done = int(np.median([results[i].n_iter for i in envelopes]))
                decayed = settings.lr_decay ** (done // settings.lr_decay_steps)
                refit = settings.replace(learning_rate=settings.learning_rate * decayed)
                self._fit_all(prepared, warm, sorted(envelopes), results, refit, progress, envelopes)
        if settings.refit_beside_brighter is not None:
            self._refit_beside_brighter(blends, prepared, results, psfs, envelopes, settings, progress)
        if settings.psf_wings:
            for result, psf in zip(results, psfs):
                if psf is not None:
                    self._add_wings(result, psf, outskirts=settings.outskirts)
        _log.debug(
            "Deblended %d blends (%d sources) in %.2f s",
            len(prepared),
            int(sum(p.n_sources for p in prepared)),
            time.perf_counter() - t0,
        )
        return results  # type: ignore[return-value]

    def choose_zoom(
        self,
        blends: Sequence[Mapping],
        *,
        bands: Sequence[str] | None = None,
        settings: MapSettings | None = None,
    ) -> list[np.ndarray]:
        """The zoom `deblend_batch` would choose for each source, without fitting.

        The choice of ``settings.zoom_choice="guess"`` (`MapSettings`): a source moves to zoom
        ``z + 1`` when the VAE-deblender's guess drawn at ``z + 1`` puts more than
        ``settings.zoom_outside_threshold`` of its flux outside a zoom-``z`` stamp. A caller that
        cuts the image around a blend (the tasks) can choose on a region wide enough for the
        largest zoom, then fit on the windows of the zooms chosen (``zoom=`` in `deblend_batch`),
        which for most blends are the stamps themselves.

        Parameters
        ----------
        blends : sequence of mapping
            As in `deblend_batch` (a ``zoom`` key is ignored).
        bands : sequence of `str`, optional
            Band names of the planes, checked against the model's.
        settings : `MapSettings`, optional
            Overrides the deblender's settings for this call.

        Returns
        -------
        zoom : `list` [`numpy.ndarray`]
            ``(n,)`` int64 zoom of each source per blend; all 1 when ``settings.max_zoom`` is 1.

        Raises
        ------
        MadnessValueError
            ``settings.zoom_choice`` is ``"fit"`` (that choice needs the fit), or bad input as in
            `deblend_batch`.
        """
        settings = settings or self.settings
        self._check_bands(bands)
        if settings.max_zoom > 1 and settings.zoom_choice != "guess":
            raise MadnessValueError(f"choose_zoom makes the 'guess' choice; zoom_choice="
                                    f"{settings.zoom_choice!r} chooses from the fit (deblend_batch).")
        prepare = functools.partial(prepare_blend, num_bands=len(self.bands), stamp_size=self.stamp_size,
                                    normalization=self.normalization, max_sources=settings.max_sources)
        prepared = [prepare(b["image"], b["peaks_xy"], b.get("variance"), b.get("mask")) for b in blends]
        zooms = [np.ones(p.n_sources, np.int64) for p in prepared]
        if not prepared or settings.max_zoom == 1 or settings.fit_offsets:
            return zooms
        init = self._start_latents(np.concatenate([p.cutouts for p in prepared]), settings)
        init_per_blend = np.split(init, np.cumsum([p.n_sources for p in prepared])[:-1])
        for i, b in enumerate(blends):
            zoomed = self._choose_zoom(self._preparer(prepare, b), init_per_blend[i], settings)
            if zoomed is not None:
                zooms[i] = np.asarray(zoomed[0].zoom, np.int64)
        return zooms

    # --- internals ------------------------------------------------------------------------------

    @staticmethod
    def _preparer(prepare, blend: Mapping):
        """``(zoom, whole_image=False) -> PreparedBlend`` of one blend's arrays."""
        def prepared(zoom, whole_image=False):
            free = blend.get("fit_offsets")
            if free is not None:  # a source the zoom choice moved up holds its position
                free = np.asarray(free, bool) & (np.broadcast_to(np.asarray(zoom), np.shape(free)) == 1)
            return prepare(blend["image"], blend["peaks_xy"], blend.get("variance"), blend.get("mask"),
                           zoom=zoom, fit_offsets=free, whole_image=whole_image)

        return prepared

    def _fit_all(self, prepared, init_per_blend, indices, results, settings, progress,
                 envelopes=None) -> None:
        """Fit the blends ``indices`` of ``prepared`` in batches, into ``results``; with
        ``envelopes`` (blend index -> `EnvelopeBasis`) each with its envelopes."""
        batches = self._plan_batches([prepared[i] for i in indices], settings.batch_sources)
        batches = [[list(indices)[j] for j in batch] for batch in batches]
        iterator = batches
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(batches, desc="MADNESS deblend", unit="batch")
        for batch in iterator:
            fitted = self._fit_batch([prepared[i] for i in batch], [init_per_blend[i] for i in batch],
                                     settings, None if envelopes is None else [envelopes[i] for i in batch])
            for i, res in zip(batch, fitted):
                results[i] = res

    def _given_start(self, given, guess: np.ndarray, settings: MapSettings) -> np.ndarray:
        """The start of one blend's fit: the rows of ``given`` (``deblend(..., init=)``), the
        VAE-deblender's ``guess`` where a row is NaN."""
        given = np.asarray(given, np.float64)
        n, latent = guess.shape
        n_amp = len(self.bands) if settings.fit_amplitudes else 0
        if given.ndim != 2 or given.shape[0] != n or given.shape[1] not in (latent, latent + len(self.bands)):
            raise MadnessValueError(
                f"init must be ({n}, {latent}) latents or ({n}, {latent + len(self.bands)}) latents and log "
                f"flux factors, one row per peak; got shape {given.shape}.")
        guessed = np.isnan(given).all(axis=1)
        if not np.isfinite(given[~guessed]).all():
            raise MadnessValueError("init holds a row with both finite and non-finite values; a source "
                                    "that should start from the VAE-deblender's guess takes a row of NaN.")
        # Log flux factors the fit does not have (fit_amplitudes False) are dropped; a guessed
        # source's factors start at zero, as without ``init``.
        width = latent + min(n_amp, given.shape[1] - latent)
        start = np.zeros((n, width), np.float32)
        start[:, :latent] = guess
        start[~guessed] = given[~guessed, :width]
        return start

    def _dominated(self, flux: np.ndarray, apart: np.ndarray, zoom: np.ndarray, z: int) -> np.ndarray:
        """``(n,)`` sources whose zoom-``z + 1`` window would overlap the window of a brighter
        source (``flux``) at that source's present ``zoom`` (its stamp at zoom 1): two square
        windows overlap when the Chebyshev distance of their peaks (``apart``, ``(n, n)``) is
        at most the sum of their half-sides.

        The binned cutout of a source in a brighter galaxy's light holds that light, which its
        guess (or its fitted model's edge) takes for its own. Validation field 6 of seed 101
        (``doc/large-galaxies.md``): an r = 23.5 galaxy 58 px (Chebyshev) from an r = 16.7 disc
        at zoom 1, beyond the 46-px half-side of its own zoom-2 window but within reach of the
        disc's stamp, was zoomed on the disc's light and its window took the light of four faint
        neighbours.
        """
        half = np.asarray(zoom_footprint_size(self.stamp_size, zoom)) // 2
        reach = int(zoom_footprint_size(self.stamp_size, z + 1)) // 2 + half[None, :]
        return ((apart <= reach) & (flux[None, :] > flux[:, None])).any(axis=1)

    def _clear_of_brighter(self, zoom: np.ndarray, flux: np.ndarray, apart: np.ndarray) -> np.ndarray:
        """``(n,)`` zoomed sources whose window overlaps the window of a brighter source, visited
        from the brightest so that a source sent back to zoom 1 is seen at its stamp by the
        fainter ones: the rule of `_dominated` once the sources raised together have their new
        zooms (a faint galaxy and the bright disc whose light it took can both be raised in one
        step)."""
        zoom = np.array(zoom, np.int64, copy=True)
        half = np.asarray(zoom_footprint_size(self.stamp_size, zoom)) // 2
        reset = np.zeros(len(zoom), bool)
        for i in np.argsort(-flux, kind="stable"):
            if zoom[i] > 1 and ((flux > flux[i]) & (apart[i] <= half[i] + half)).any():
                zoom[i], reset[i] = 1, True
                half[i] = self.stamp_size // 2
        return reset

    def _zoom_candidates(self, result: DeblendResult, zoom: np.ndarray, z: int,
                         settings: MapSettings) -> np.ndarray:
        """``(n,)`` the sources of a fitted blend at zoom ``z`` whose model runs into its stamp
        edge (`edge_flux_fraction` above ``settings.zoom_edge_threshold``) and whose
        zoom-``z + 1`` window would overlap no brighter source's window (fitted model, all
        bands; `_dominated`, `_clear_of_brighter`): a faint neighbour's model may take a bright
        galaxy's wing at its edge, which a zoom would only make worse."""
        flux = np.clip(result.models, 0.0, None).sum(axis=(1, 2, 3))
        peaks = np.asarray(result.peaks_xy, np.float64)
        apart = np.abs(peaks[:, None, :] - peaks[None, :, :]).max(axis=-1)  # Chebyshev distance
        grow = (zoom == z) & (result.edge_flux_fraction > settings.zoom_edge_threshold)
        grow &= ~self._dominated(flux, apart, zoom, z)
        return grow & ~self._clear_of_brighter(np.where(grow, z + 1, zoom), flux, apart)

    def _choose_zoom(self, prepare, init: np.ndarray,
                     settings: MapSettings) -> tuple[PreparedBlend, np.ndarray] | None:
        """The blend prepared at each source's zoom and its initial latents, or `None` if all stay 1.

        Each source at zoom ``z < max_zoom`` is also guessed at ``z + 1``: the VAE-deblender on
        its cutout binned by ``z + 1``, decoded and placed on the image grid. When that model
        has more than ``settings.zoom_outside_threshold`` of its flux outside the ``z * S``
        pixels the zoom-``z`` stamp covers (`outside_window_fraction`), the light its stamp
        cannot hold is judged real and the source moves to ``z + 1``, with that guess as its
        initial latents. Only a source whose zoomed window would overlap the window of no
        brighter source (zoom-1 guess, all bands; the brighter source's stamp, or its window if
        zoomed) is tried (`_dominated`), and a source raised with a brighter one whose new
        window it then overlaps goes back to zoom 1 (`_clear_of_brighter`): a faint neighbour's
        binned cutout holds the bright galaxy's light, which its guess would take for its own.
        ``prepare(zoom)`` prepares the blend at the given per-source zoom.
        """
        n = len(init)
        zoom = np.ones(n, np.int64)
        latents = np.array(init, copy=True)
        candidates = np.ones(n, bool)
        flux = np.clip(self.decode(latents), 0.0, None).sum(axis=(1, 2, 3))
        peaks = prepare(zoom).peaks_xy
        apart = np.abs(peaks[:, None, :] - peaks[None, :, :]).max(axis=-1)  # (n, n) Chebyshev distance
        for z in range(1, settings.max_zoom):
            candidates &= ~self._dominated(flux, apart, zoom, z)
            idx = np.flatnonzero(candidates & (zoom == z))
            if not len(idx):
                break
            trial = zoom.copy()
            trial[idx] = z + 1
            trial_blend = prepare(trial)
            guess = self._start_latents(trial_blend.cutouts[idx], settings)
            placed = zoom_place_stamps(self.decode(guess), trial_blend.peaks_xy[idx, ::-1], z + 1)
            outside = outside_window_fraction(placed, z * self.stamp_size)
            grow = outside > settings.zoom_outside_threshold
            candidates[idx[~grow]] = False
            if grow.any():
                zoom[idx[grow]] = z + 1
                latents[idx[grow]] = guess[grow]
                reset = self._clear_of_brighter(zoom, flux, apart)
                zoom[reset], latents[reset] = 1, init[reset]
                candidates[reset] = False
        if (zoom == 1).all():
            return None
        _log.debug("Zoom raised for %d of %d sources (largest %d)", int((zoom > 1).sum()), n, int(zoom.max()))
        return prepare(zoom), latents

    @staticmethod
    def _plan_batches(prepared: Sequence[PreparedBlend], batch_sources: int) -> list[list[int]]:
        """Group blends, largest first, so that each batch holds at most ``batch_sources`` sources
        (a larger blend alone). Sources are not padded to the largest blend (`_pack`), so blends of
        any sizes share a batch."""
        order = sorted(range(len(prepared)), key=lambda i: -prepared[i].n_sources)
        batches: list[list[int]] = []
        total = 0
        for i in order:
            n = prepared[i].n_sources
            if batches and total + n <= batch_sources:
                batches[-1].append(i)
                total += n
                continue
            batches.append([i])
            total = n
        return batches

    def _step_fn(self, settings: MapSettings, envelopes: bool = False):
        amplitude_sigma = float(settings.amplitude_sigma) if settings.fit_amplitudes else None
        if settings.fit_offsets:
            key = (float(settings.prior_weight), float(settings.offset_sigma))
            loss = functools.partial(blend_objective_with_offsets, prior_weight=key[0], offset_sigma=key[1],
                                     amplitude_sigma=amplitude_sigma, symmetry_weight=settings.symmetry_weight)
        else:
            key = (float(settings.prior_weight),)
            loss = functools.partial(blend_objective, prior_weight=key[0], amplitude_sigma=amplitude_sigma,
                                     symmetry_weight=settings.symmetry_weight)
        key += (settings.precision, amplitude_sigma, envelopes, float(settings.symmetry_weight))
        if envelopes:
            loss = functools.partial(_with_envelopes, objective=loss)
        if key not in self._steps:
            if settings.precision not in self._step_decoders:
                self._step_decoders[settings.precision] = with_precision(self.decoder, settings.precision)
            self._steps[key] = compile_value_and_grad(
                loss, [self._step_decoders[settings.precision], self.flow]  # the flow's call is its log_prob
            )
        return self._steps[key]

    def _pack(self, blends: Sequence[PreparedBlend], offset_max: float | None = None) -> tuple[np.ndarray, ...]:
        """The batch's arrays as `blend_objective` wants them, and where each blend's sources are.

        Regions are padded to the largest (``(B, h, C, w)`` data and weights); sources come flat,
        every blend's one after another (``(M, ...)``, no padding): their row placement windows
        (`placement_windows`: ``(M, Lw, S)``), their column placements over the padded width
        (`placement_matrices`: ``(M, w, S)``) and the ``(M, 2)`` region pixel where each row
        window starts (`blend_models`). With an ``offset_max`` (offsets fitted) the zoom-1
        placements are integer (one-hot) and the sub-pixel shifts come as an extra ``(M, 2)``
        array (zero for a zoomed source, whose window already sits on its float peak), then the
        ``(M,)`` offset bounds: ``offset_max`` where `PreparedBlend.offset_free`, else zero, as
        `blend_objective_with_offsets` wants. The source mask and blend index are `_select`'s.
        The last item is the ``(B + 1,)`` source bounds.
        """
        s = self.stamp_size
        h_max = max(b.data.shape[1] for b in blends)
        w_max = max(b.data.shape[2] for b in blends)
        nb, c = len(blends), len(self.bands)
        bounds = np.cumsum([0] + [b.n_sources for b in blends])
        data = np.zeros((nb, h_max, c, w_max), np.float32)
        weights = np.zeros((nb, h_max, c, w_max), np.float32)
        placements = []
        for k, b in enumerate(blends):
            _, h, w = b.data.shape
            data[k, :h, :, :w] = np.transpose(b.data, (1, 0, 2))
            weights[k, :h, :, :w] = np.transpose(b.weights, (1, 0, 2))
            # Stamp origin in the region plus the sub-pixel shift: the placement also shifts.
            offsets = b.origins - np.array(b.region[:2]) + (0.0 if offset_max is not None else b.shifts)
            rows = placement_matrices(offsets[:, 0], h, s)
            cols = placement_matrices(offsets[:, 1], w, s)
            zoomed = np.flatnonzero(b.zoom > 1)
            if len(zoomed):
                # Each stamp pixel spread over zoom x zoom region pixels around the float peak.
                centers = b.peaks_xy[zoomed, ::-1] - np.array(b.region[:2])
                rows[zoomed] = zoom_placement_matrices(centers[:, 0], h, s, b.zoom[zoomed])
                cols[zoomed] = zoom_placement_matrices(centers[:, 1], w, s, b.zoom[zoomed])
            placements.append((placement_windows(rows), cols))
        window = max(ry.shape[1] for (ry, _), _ in placements)
        m_total = int(bounds[-1])
        rows_w = np.zeros((m_total, window, s), np.float32)
        cols_full = np.zeros((m_total, w_max, s), np.float32)
        starts = np.zeros((m_total, 2), np.int32)
        for k, ((ry, sy), rx) in enumerate(placements):
            sl = slice(bounds[k], bounds[k + 1])
            rows_w[sl, : ry.shape[1]] = ry
            cols_full[sl, : rx.shape[1]] = rx
            starts[sl, 0] = sy
        packed = (data, weights, rows_w, cols_full, starts)
        if offset_max is not None:
            shifts = np.concatenate([np.where((b.zoom == 1)[:, None], b.shifts, 0.0) for b in blends])
            free = np.concatenate([b.offset_free for b in blends])
            packed += (shifts.astype(np.float32), np.where(free, offset_max, 0.0).astype(np.float32))
        return packed + (bounds,)

    @staticmethod
    def _select(packed: tuple[np.ndarray, ...], bounds: np.ndarray, blend_ids: np.ndarray, bucket: bool,
                per_blend: Sequence[np.ndarray] = (), present: np.ndarray | None = None,
                moving: np.ndarray | None = None):
        """The compiled step's arguments for the blends ``blend_ids``, and which sources they hold.

        With ``bucket`` (backends that compile per shape) the blend count is padded to a power of
        two (repeating the first blend, whose sources are not repeated: a padded slot's loss is
        ignored) and the sources to a multiple of 8 (masked copies of the first source), so a
        fit meets few shapes.

        ``per_blend`` arrays (one row per blend: the envelopes', `_pack_envelopes`) are
        selected like the data and come last. ``present`` (``(M,)`` bool over the flat sources)
        leaves out the sources it does not mark; ``moving`` masks (zero) those that no longer
        move (frozen: their models are in the data), so a frozen source may stay in the step,
        masked, until leaving it is worth a new shape. Every selected blend must keep at least
        one present source.

        Returns
        -------
        args : `list` [tensor]
            ``source_mask, blend_of, data, weights, rows, cols, starts[, shifts, offset_bounds]
            [, *per_blend]``
            selected.
        take : `numpy.ndarray`
            The batch's flat sources fed to the step, in order: the selected blends' sources,
            then any padding.
        n_real : `int`
            How many of ``take`` are real (the rest is padding, whose gradient is ignored).
        """
        data, weights, rows, cols, starts, *rest = packed
        sources = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in blend_ids])
        counts = np.diff(bounds)[blend_ids]
        if present is not None:
            kept = present[sources]
            counts = np.add.reduceat(kept.astype(np.int64), np.cumsum(counts) - counts)
            sources = sources[kept]
        mask = np.ones(len(sources), np.float32) if moving is None else moving[sources].astype(np.float32)
        slots = np.repeat(np.arange(len(blend_ids), dtype=np.int32), counts)
        blends = np.asarray(blend_ids)
        take = sources
        if bucket:
            blends = np.concatenate([blends, np.full(_next_power_of_two(len(blends)) - len(blends), blends[0])])
            pad = -len(sources) % 8
            take = np.concatenate([sources, np.full(pad, sources[0])])
            slots = np.concatenate([slots, np.zeros(pad, np.int32)])
            mask = np.concatenate([mask, np.zeros(pad, np.float32)])
        per_source = [a[take] for a in (rows, cols, starts, *rest)]
        args = [mask, slots, data[blends], weights[blends], *per_source, *(a[blends] for a in per_blend)]
        return [keras.ops.convert_to_tensor(a) for a in args], take, len(sources)

    def _envelopes(self, blend: PreparedBlend, result: DeblendResult,
                   settings: MapSettings) -> EnvelopeBasis | None:
        """The envelopes of a fitted blend's extended sources, or `None` if it has none.

        A source is extended when the light goes on beyond its stamp: the mean residual (image
        minus every model) over the `ENVELOPE_RING`-pixel ring just outside its footprint, on the
        pixels of that ring no other footprint covers (at least `ENVELOPE_MIN_PIXELS`), is above
        ``settings.envelope_edge_sigma`` times the pixel noise in some band (the decoder draws a
        bright de Vaucouleurs galaxy falling to zero at its stamp edge, 25 sigma below the truth
        there); and no source `ENVELOPE_DOMINANCE` times brighter
        lies within `ENVELOPE_REACH` stamp sides (Chebyshev): a faint galaxy in a bright one's
        light has that light at its edge, not its own. Sources are taken brightest first; one
        whose footprint overlaps an enveloped source's gets none (beyond both their envelopes
        would be nearly the same profile, free to cancel in huge values), and each other one is
        tested again on the residual less the envelopes already taken (their best values on it):
        a fainter galaxy whose ring holds a bright one's light beyond its stamp does not get
        that light. Its envelope is centred on its peak, in the ellipse of its fitted model,
        zero inside its footprint.
        """
        y0, x0, y1, x1 = blend.region
        flux = np.clip(result.models, 0.0, None).sum(axis=(1, 2, 3))
        peaks = np.asarray(result.peaks_xy, np.float64)
        apart = np.abs(peaks[:, None, :] - peaks[None, :, :]).max(axis=-1)
        near = apart <= ENVELOPE_REACH * self.stamp_size
        dominated = (near & (flux[None, :] > ENVELOPE_DOMINANCE * flux[:, None])).any(axis=1)
        noise = pixel_noise(blend.weights)
        residual = blend.data - self.normalization.normalize(result.model_image()[:, y0:y1, x0:x1])
        origins = np.asarray(blend.footprint_origins) - np.array([y0, x0])
        sides = np.asarray(blend.footprint_sizes, np.int64)
        covered = np.zeros((len(flux),) + residual.shape[1:], bool)  # each source's footprint
        for i, ((fy, fx), side) in enumerate(zip(origins, sides)):
            covered[i, max(fy, 0) : max(fy + side, 0), max(fx, 0) : max(fx + side, 0)] = True
        uncovered = ~covered.any(axis=0)
        lo, hi = origins, origins + sides[:, None]
        overlapping = ((lo[:, None, :] < hi[None, :, :]) & (lo[None, :, :] < hi[:, None, :])).all(axis=-1)

        def light_beyond(i, residual):
            """The mean residual of source ``i``'s ring is above the threshold in some band."""
            (fy, fx), side = origins[i], sides[i]
            ring = np.zeros(residual.shape[1:], bool)
            ring[max(fy - ENVELOPE_RING, 0) : max(fy + side + ENVELOPE_RING, 0),
                 max(fx - ENVELOPE_RING, 0) : max(fx + side + ENVELOPE_RING, 0)] = True
            # Only pixels no model covers: a neighbour's misfit is not this source's light.
            usable = (ring & uncovered)[None] & (blend.weights > 0)
            count = usable.sum(axis=(1, 2))
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = (residual * usable).sum(axis=(1, 2)) / count
            mean = np.where(count >= ENVELOPE_MIN_PIXELS, mean, 0.0)
            return bool((mean > settings.envelope_edge_sigma * noise).any())

        candidates = [i for i in range(len(flux)) if not dominated[i] and light_beyond(i, residual)]
        # Brightest first: a fainter galaxy's ring may hold a brighter one's light; it is tested
        # again on the residual without that light (its envelope's best values on the residual).
        candidates.sort(key=lambda i: -flux[i])
        residual = residual.astype(np.float64)
        profiles, owner = [], []
        taken = np.zeros(len(flux), bool)
        for i in candidates:
            # A source whose footprint overlaps an enveloped one's: beyond both, their envelopes
            # would be nearly the same profile, free to cancel each other in huge values; that
            # light is the brighter one's.
            if overlapping[i, taken].any():
                continue
            if taken.any() and not light_beyond(i, residual):
                continue
            taken[i] = True
            q, angle = model_ellipse(result.models[i])
            fy, fx = origins[i]
            side = int(sides[i])
            center = peaks[i, ::-1] - np.array([y0, x0])
            p = envelope_profiles((y1 - y0, x1 - x0), center, (fy, fx, fy + side, fx + side), q, angle,
                                  inner=side / 2, harmonics=settings.envelope_harmonics)
            one = EnvelopeBasis.build(blend.weights, p, [i] * len(p))
            residual = residual - one.images(one.values(residual, blend.weights))[0][0]
            profiles.append(p)
            owner.extend([i] * len(p))
        if not profiles:
            return None
        return EnvelopeBasis.build(blend.weights, np.concatenate(profiles), owner)

    @staticmethod
    def _pack_envelopes(bases: Sequence[EnvelopeBasis]) -> tuple[np.ndarray, ...]:
        """The envelopes' ``(B, K, h, w)``, ``(B, C, K, K)`` and ``(B, C, K)`` arrays
        (`lsst.meas.madness.engine.objective.subtract_envelopes`), padded to the batch's largest
        region and profile count; empty without envelopes."""
        if not bases:
            return ()
        k = max(len(b.profiles) for b in bases)
        h = max(b.profiles.shape[1] for b in bases)
        w = max(b.profiles.shape[2] for b in bases)
        padded = [b.padded(k, (h, w)) for b in bases]
        return (np.stack([b.profiles for b in padded]).astype(np.float32),
                np.stack([b.solve for b in padded]).astype(np.float32),
                np.stack([b.prior_precision for b in padded]).astype(np.float32))

    def _fit_batch(
        self, blends: Sequence[PreparedBlend], init: Sequence[np.ndarray], settings: MapSettings,
        envelopes: Sequence[EnvelopeBasis] | None = None,
    ) -> list[DeblendResult]:
        nb = len(blends)
        # The optimised variables, one row per source (all blends' sources one after another):
        # its latents, then (fit_amplitudes) one log flux factor per band, then (fit_offsets)
        # two offset parameters; the extras start at zero.
        n_amp = len(self.bands) if settings.fit_amplitudes else 0
        n_extra = n_amp + (2 if settings.fit_offsets else 0)
        *packed, bounds = self._pack(blends, settings.offset_max if settings.fit_offsets else None)
        bases = list(envelopes) if envelopes is not None else []
        per_blend = self._pack_envelopes(bases)
        x = np.zeros((int(bounds[-1]), self.latent_dim + n_extra), np.float32)
        # ``init`` holds per blend latents, or latents and log flux factors (a warm start).
        for k, start in enumerate(init):
            start = np.asarray(start)[:, : self.latent_dim + n_amp]
            x[bounds[k] : bounds[k + 1], : start.shape[1]] = start
        initial = x.copy()
        # Adam's step per variable: the flux factors move at their own rate (MapSettings).
        step_scale = np.ones(x.shape[-1], np.float32)
        step_scale[self.latent_dim : self.latent_dim + n_amp] = settings.amplitude_step_scale
        step = self._step_fn(settings, envelopes=bool(bases))
        bucket = compiles_per_shape()

        # Adam's moments in float64: a float32 square of a gradient above ~1e19 (a bright source
        # far from its optimum) overflows to inf, and inf / inf would make the latents NaN.
        m = np.zeros(x.shape, np.float64)
        v = np.zeros(x.shape, np.float64)
        b1, b2, eps = settings.adam_beta1, settings.adam_beta2, settings.adam_epsilon
        active = np.ones(nb, bool)
        n_iter = np.zeros(nb, int)
        converged = np.zeros(nb, bool)
        history = np.full((settings.max_iter, nb), np.nan)
        atol = None if settings.stop_atol is None else settings.stop_atol * np.diff(bounds)
        floor = None if settings.stop_floor is None else settings.stop_floor * np.diff(bounds)
        stopping = EwmaStopping(nb, settings.ewma_window, settings.rtol, settings.min_iter, atol, floor)
        selection = np.arange(nb)
        args, take, n_real = self._select(packed, bounds, selection, bucket, per_blend)
        present = None  # the flat sources in the compiled step (None: all of the selected blends')
        source_blend = np.repeat(np.arange(nb), np.diff(bounds))
        freezer = None
        if settings.freeze_drift is not None:
            freezer = _Freezer(self, packed, source_blend, step_scale, n_amp, settings)
        lbfgs = None

        decoded = 0  # source-steps the compiled step decoded (padding included)
        for t in range(1, settings.max_iter + 1):
            loss, grad = step(keras.ops.convert_to_tensor(x[take]), *args)
            decoded += len(take)
            loss = np.asarray(keras.ops.convert_to_numpy(loss), np.float64)[: len(selection)]
            if freezer is not None:  # the frozen sources' prior terms: the objective stays the whole blend's
                loss = loss + freezer.constant[selection]
            grad = np.asarray(keras.ops.convert_to_numpy(grad), np.float32)[:n_real]
            sources = take[:n_real]
            live = active[selection]
            step_losses = np.full(nb, np.nan)
            step_losses[selection[live]] = loss[live]
            history[t - 1, selection[live]] = loss[live]
            lr = settings.learning_rate * settings.lr_decay ** ((t - 1) // settings.lr_decay_steps)
            if lbfgs is None and settings.optimizer == "lbfgs" and t > settings.lbfgs_after:
                # Each blend's optimiser starts where the Adam steps left it (at once by default), in
                # units of each variable's step scale, as Adam moves them.
                lbfgs = [BlendLbfgs(x[bounds[k] : bounds[k + 1]] / step_scale, memory=settings.lbfgs_memory,
                                    first_step=lr, max_step=settings.lbfgs_max_step,
                                    diagonal=settings.lbfgs_diagonal)
                         for k in range(nb)]
            if lbfgs is not None:
                # Each blend's optimiser is told its objective and gradient at the point it asked
                # for and names the next; its objective is that of its last accepted point.
                full = np.zeros(x.shape, np.float64)
                full[sources] = grad
                for k, f in zip(selection[live], loss[live]):
                    rows = slice(bounds[k], bounds[k + 1])
                    x[rows] = (lbfgs[k].tell(f, full[rows] * step_scale) * step_scale).astype(np.float32)
                    step_losses[k] = history[t - 1, k] = lbfgs[k].f
            else:
                live_sources = active[source_blend[sources]]
                if freezer is not None:
                    live_sources &= ~freezer.frozen[sources]
                ids, g = sources[live_sources], grad[live_sources].astype(np.float64)
                # A non-finite gradient component moves nothing this step (its moments keep their
                # past); a blend that still diverges is caught after the loop.
                g[~np.isfinite(g)] = 0.0
                m[ids] = b1 * m[ids] + (1 - b1) * g
                v[ids] = b2 * v[ids] + (1 - b2) * g * g
                m_hat = m[ids] / (1 - b1**t)
                v_hat = v[ids] / (1 - b2**t)
                x[ids] -= (lr * step_scale * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)
            n_iter[selection[live]] = t

            stop = stopping.update(step_losses) & active
            froze = False
            if freezer is not None:
                froze = freezer.update(x, t, lr, active)
                stop |= freezer.all_frozen(nb) & active
            converged |= stop & (t < settings.max_iter)
            active &= ~stop
            if not active.any():
                break
            n_active = int(active.sum())
            # Finished blends leave the compiled batch: at once where new shapes are free, once
            # half have finished where each shape compiles (MapSettings.compact). Frozen sources
            # leave it the same way (their models are then part of the data).
            shrink = n_active < len(selection) if not bucket else (n_active * 2 <= len(selection) and len(selection) > 1)
            if freezer is not None and froze:
                n_moving = int((~freezer.frozen & active[source_blend]).sum())
                shrink = shrink or (n_moving < n_real if not bucket else n_moving * 2 <= n_real)
            moving = None if freezer is None else ~freezer.frozen
            if settings.compact and (stop.any() or froze) and shrink:
                selection, present = np.flatnonzero(active), moving
                args, take, n_real = self._select(packed, bounds, selection, bucket, per_blend, present, moving)
            elif froze:  # the same shapes, the frozen sources masked (their models are in the data now)
                args, take, n_real = self._select(packed, bounds, selection, bucket, per_blend, present, moving)

        if lbfgs is not None:  # every blend ends at its last accepted point, not at a trial
            for k in range(nb):
                x[bounds[k] : bounds[k + 1]] = (lbfgs[k].best * step_scale).astype(np.float32)
        _log.debug("MAP batch of %d blends, %d sources: %d steps, %d source-steps decoded%s", nb, len(x),
                   int(n_iter.max(initial=0)), decoded,
                   "" if freezer is None else f", {int(freezer.frozen.sum())} sources frozen")
        diverged = ~np.isfinite(x).all(axis=1)
        if diverged.any():
            blends_out = np.unique(source_blend[diverged]).tolist()
            raise MadnessFitError(
                f"The MAP fit of blend(s) {blends_out} of this batch diverged (non-finite latents); "
                "fit them alone to find the one that fails."
            )
        ld = self.latent_dim
        offsets = None
        if settings.fit_offsets:  # (dy, dx), each source within its bound (the last packed array)
            offsets = packed[-1][:, None].astype(np.float64) * np.tanh(x[:, ld + n_amp :].astype(np.float64))
        return self._results(
            blends, bounds, x[:, :ld], initial[:, :ld], x[:, ld : ld + n_amp].astype(np.float64),
            offsets, n_iter, converged,
            [history[: n_iter[k], k] for k in range(nb)], settings, bases)

    def _results(self, blends, bounds, final, start, log_amplitudes, offsets, n_iter, converged, histories,
                 settings, bases, envelope_values=None) -> list[DeblendResult]:
        """`DeblendResult` of each blend from its sources' variables: rows of all blends' sources
        one after another (``bounds`` the blends' first rows), ``log_amplitudes`` with no
        column when the flux factors are not fitted, ``offsets`` ``(dy, dx)`` or None;
        ``envelope_values`` per blend (or None) to hold its envelopes' values fixed."""
        # Decode and evaluate the prior for the whole batch at once (one network call each).
        n_amp = log_amplitudes.shape[1]
        models = self.decode(np.concatenate([final, start]))
        if n_amp:
            models[: len(final)] *= np.exp(log_amplitudes)[:, :, None, None].astype(models.dtype)
        priors = self.log_prior(np.concatenate([final, start]))
        n_total = len(final)
        results = []
        for k, b in enumerate(blends):
            sl = slice(bounds[k], bounds[k + 1])
            results.append(self._finish(
                b,
                final[sl],
                start[sl],
                models=models[sl],
                initial_models=models[n_total + bounds[k] : n_total + bounds[k + 1]],
                log_prior=priors[sl],
                initial_log_prior=priors[n_total + bounds[k] : n_total + bounds[k + 1]],
                n_iter=int(n_iter[k]),
                converged=bool(converged[k]),
                history=histories[k],
                settings=settings,
                offsets=None if offsets is None else offsets[sl],
                log_amplitudes=log_amplitudes[sl] if n_amp else None,
                envelopes=bases[k] if bases else None,
                envelope_values=envelope_values[k] if envelope_values else None,
            ))
        return results

    def _rebuild(self, blends, latents, initial, amplitudes, offsets_xy, n_iter, converged, histories, settings,
                 bases, envelope_values=None) -> list[DeblendResult]:
        """`_results` from variables as `DeblendResult` holds them (rows of all blends' sources one
        after another: latents, flux factors, offsets ``(dx, dy)``), for blends rebuilt from
        finished fits (a second start's choice, refits beside brighter sources)."""
        n_amp = len(self.bands) if settings.fit_amplitudes else 0
        return self._results(
            blends, np.concatenate([[0], np.cumsum([p.n_sources for p in blends])]), latents, initial,
            np.log(amplitudes)[:, :n_amp], offsets_xy[:, ::-1] if settings.fit_offsets else None,
            n_iter, converged, histories, settings, bases, envelope_values)

    def _second_start(self, prepared, init_per_blend, indices, results, settings, progress) -> None:
        """Fit every blend again at ``settings.second_start_rate``; each group of sources whose
        footprints overlap (connected) takes the fit with the lower objective summed over its
        members' footprints. Groups share no pixel, so the chosen models stay one consistent
        blend model, and a blend whose groups chose differently is rebuilt from the choice."""
        other: list[DeblendResult | None] = [None] * len(prepared)
        indices = list(indices)
        if not indices:
            return
        self._fit_all(prepared, init_per_blend, indices, other,
                      settings.replace(learning_rate=settings.second_start_rate), progress)
        mixed = []
        for k in indices:
            blend, a, b = prepared[k], results[k], other[k]
            group = _overlap_groups(blend.footprint_origins, blend.footprint_sizes)
            la = np.bincount(group, self._local_objective(blend, a, settings))
            lb = np.bincount(group, self._local_objective(blend, b, settings))
            pick = (lb < la)[group]
            if not pick.any() or pick.all():  # one fit whole: it counts both fits' steps
                chosen = b if pick.all() else a
                chosen.n_iter = a.n_iter + b.n_iter
                chosen.converged = a.converged and b.converged
                chosen.loss_history = np.concatenate([a.loss_history, b.loss_history])
                results[k] = chosen
                continue
            mixed.append((k, pick, a, b))
        if not mixed:
            return
        # Blends whose groups chose differently: their models rebuilt from the choice, in one batch.
        def choose(get):
            return np.concatenate([np.where(pick[:, None], get(b), get(a)) for _, pick, a, b in mixed])

        rebuilt = self._rebuild(
            [prepared[k] for k, *_ in mixed],
            choose(lambda r: r.latents), np.concatenate([a.initial_latents for _, _, a, _ in mixed]),
            choose(lambda r: r.amplitudes), choose(lambda r: r.offsets_xy),
            [a.n_iter + b.n_iter for _, _, a, b in mixed], [a.converged and b.converged for _, _, a, b in mixed],
            [np.concatenate([a.loss_history, b.loss_history]) for _, _, a, b in mixed], settings, [])
        for (k, *_), result in zip(mixed, rebuilt):
            results[k] = result

    def _refit_beside_brighter(self, blends, prepared, results, psfs, envelopes, settings, progress) -> None:
        """``MapSettings.refit_beside_brighter``: each source beside a brighter one (`beside_brighter`)
        fitted again alone on its blend's image minus the other sources' models, all blends'
        refits in one `deblend_batch` call; each blend with a refit is rebuilt from its sources'
        variables (the refits' in place of theirs), its envelopes as the blend's fit left them
        (the refits were fitted with them fixed; profiled again on the new residual, they would
        take light the refits gave back)."""
        jobs, alone = [], []
        for i, (blend, result) in enumerate(zip(blends, results)):
            chosen = beside_brighter(result, settings.refit_beside_brighter)
            if not len(chosen):
                continue
            light = result
            if settings.psf_wings and psfs[i] is not None:
                # The neighbours' outskirts and wings (drawn on every result below) are their
                # light: the refit must not see them as its own.
                light = dataclasses.replace(result)
                self._add_wings(light, psfs[i], outskirts=settings.outskirts)
            whole = light.model_image()
            free = blend.get("fit_offsets")
            for k in chosen:
                alone.append(dict(
                    image=cleaned_image(blend["image"], light, int(k), whole), peaks_xy=result.peaks_xy[k : k + 1],
                    variance=blend.get("variance"), mask=blend.get("mask"), zoom=result.zoom[k : k + 1],
                    fit_offsets=None if free is None else np.asarray(free, bool).reshape(-1)[k : k + 1],
                    init=None if settings.refit_start == "guess" else
                    np.concatenate([result.latents[k], np.log(result.amplitudes[k])])[None]))
                jobs.append((i, int(k)))
        if not alone:
            return
        _log.debug("Refitting %d sources beside brighter ones, alone", len(alone))
        # No envelope of its own: in a bright galaxy's light it would take what that galaxy's
        # envelope left. No wings: the rebuilt blends get them with everyone else's. A stop
        # floor: a faint galaxy alone starts near its optimum, and the relative stopping rule
        # would keep it wandering in its noise to the step cap (steps median 151 -> 72 and 17 ->
        # 1 of 44 at the cap on 10 validation fields; MapSettings.stop_floor).
        steps = {} if settings.refit_max_iter is None else dict(
            max_iter=settings.refit_max_iter, min_iter=min(settings.min_iter, settings.refit_max_iter // 2))
        if settings.refit_learning_rate is not None:
            steps["learning_rate"] = settings.refit_learning_rate
        fits = self.deblend_batch(
            alone, settings=settings.replace(refit_beside_brighter=None, fit_envelopes=False, psf_wings=False,
                                             stop_floor=REFIT_STOP_FLOOR if settings.stop_floor is None
                                             else settings.stop_floor, **steps),
            progress=progress)
        _log.debug("Refits alone: steps median %d, max %d, %d at the cap", np.median([f.n_iter for f in fits]),
                   max(f.n_iter for f in fits), sum(not f.converged for f in fits))
        refits: dict[int, list] = {}
        for (i, k), fit in zip(jobs, fits):
            refits.setdefault(i, []).append((k, fit))
        order = sorted(refits)
        variables = []
        for i in order:
            first = results[i]
            latents, amplitudes, offsets = first.latents.copy(), first.amplitudes.copy(), first.offsets_xy.copy()
            for k, fit in refits[i]:
                latents[k], amplitudes[k], offsets[k] = fit.latents[0], fit.amplitudes[0], fit.offsets_xy[0]
            variables.append((latents, amplitudes, offsets))
        rebuilt = self._rebuild(
            [prepared[i] for i in order],
            np.concatenate([v[0] for v in variables]), np.concatenate([results[i].initial_latents for i in order]),
            np.concatenate([v[1] for v in variables]), np.concatenate([v[2] for v in variables]),
            [results[i].n_iter + max(fit.n_iter for _, fit in refits[i]) for i in order],
            [results[i].converged and all(fit.converged for _, fit in refits[i]) for i in order],
            [results[i].loss_history for i in order], settings, [envelopes.get(i) for i in order],
            [None if i not in envelopes else self._envelope_values(prepared[i], results[i], envelopes[i])
             for i in order])
        for i, result in zip(order, rebuilt):
            result.refit_alone[[k for k, _ in refits[i]]] = True
            results[i] = result

    def _envelope_values(self, blend: PreparedBlend, result: DeblendResult, basis: EnvelopeBasis) -> np.ndarray:
        """The values of ``basis`` that `_finish` profiled for ``result`` (its placed stamps'
        residual on ``blend``'s region)."""
        y0, x0, _, _ = blend.region
        data = self.normalization.denormalize(blend.data)
        model = paste_stamps(result.models, np.asarray(result.stamp_yx0) - np.array([y0, x0]), data.shape[1:],
                             dtype=data.dtype)
        return basis.values(self.normalization.normalize(data - model), blend.weights)

    def _local_objective(self, blend: PreparedBlend, result: DeblendResult, settings: MapSettings) -> np.ndarray:
        """``(n_sources,)`` half the chi^2 of the whole model on each source's footprint, minus
        ``prior_weight`` times its log-prior, plus its flux-factor and offset penalties."""
        y0, x0, y1, x1 = blend.region
        footprints = blend.footprint_origins - np.array([y0, x0])
        n_valid = np.zeros((blend.n_sources, len(self.bands)))
        for i, (origin, side) in enumerate(zip(footprints, blend.footprint_sizes)):
            _, (ry, rx) = stamp_overlap(origin, (side, side), (0, 0, y1 - y0, x1 - x0))
            n_valid[i] = (blend.weights[:, ry, rx] > 0).sum(axis=(1, 2))
        value = 0.5 * np.nansum(result.chi2 * n_valid, axis=1) - settings.prior_weight * result.log_prior
        value += 0.5 * (np.log(result.amplitudes) ** 2).sum(axis=1) / settings.amplitude_sigma**2
        if settings.fit_offsets:
            value += 0.5 * (result.offsets_xy**2).sum(axis=1) / settings.offset_sigma**2
        if settings.symmetry_weight:
            value += settings.symmetry_weight * result.asymmetry
        return value

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
        log_amplitudes: np.ndarray | None = None,
        envelopes: EnvelopeBasis | None = None,
        envelope_values: np.ndarray | None = None,
    ) -> DeblendResult:
        """Diagnostics of one fitted blend; ``models`` in flux units, centred (as decoded, with
        the fitted flux factors applied); ``envelope_values`` the envelopes' values if they are
        not to be profiled on the final residual."""
        norm = self.normalization
        s = self.stamp_size
        # The models as the fit placed them: each moved by its peak's sub-pixel shift (plus the
        # fitted offset, which starts at zero: the initial models are at the peaks).
        fitted = np.zeros_like(blend.shifts) if offsets is None else np.asarray(offsets, np.float64)
        edge_fraction = edge_flux_fraction(models)
        # Each decoded model against its own rotation (MapSettings.symmetry_weight), its bands
        # weighted as the fit weighs them: by the sky's inverse variance, the region's largest weight.
        sky = blend.weights.max(axis=(1, 2)).astype(np.float64) / float(norm.scale) ** 2

        def asymmetry_of(stamps):
            stamps = np.transpose(stamps, (0, 2, 3, 1)).astype(np.float64)
            weights = np.broadcast_to(sky, (len(stamps), len(sky)))
            return np.asarray(keras.ops.convert_to_numpy(stamp_asymmetry(stamps, weights)), np.float64)

        asymmetry = asymmetry_of(models)
        initial_asymmetry = asymmetry_of(initial_models) if settings.symmetry_weight else 0.0
        models = self._place(blend, models, blend.shifts + fitted)
        initial_models = self._place(blend, initial_models, blend.shifts)

        y0, x0, y1, x1 = blend.region
        data = norm.denormalize(blend.data)
        weights = blend.weights.astype(np.float64) / float(norm.scale) ** 2  # flux units
        size = models.shape[-1]
        stamp_yx0 = blend.origins + s // 2 - size // 2
        stamp_offsets = stamp_yx0 - np.array([y0, x0])
        footprints = blend.footprint_origins - np.array([y0, x0])

        def region_model(stamps):
            return paste_stamps(stamps, stamp_offsets, data.shape[1:], dtype=data.dtype)

        residual = data - region_model(models)
        resid_init = weights * (data - region_model(initial_models)) ** 2
        envelope_images = envelope_sources = None
        if envelopes is not None:
            # The values that best fit the final models' residual (network units, in which the
            # solve was built), as the fit profiled them at every step; or those given.
            values = (envelopes.values(norm.normalize(residual), blend.weights) if envelope_values is None
                      else envelope_values)
            images, envelope_sources = envelopes.images(values)
            images = norm.denormalize(images)
            residual = residual - images.sum(axis=0)
            envelope_images = np.zeros((len(images), len(self.bands)) + tuple(blend.image_shape), np.float32)
            envelope_images[:, :, y0:y1, x0:x1] = images
        resid_sq = weights * residual**2
        w = settings.prior_weight
        objective_final = 0.5 * resid_sq.sum() - w * log_prior.sum()
        if offsets is not None:
            objective_final += 0.5 * float((fitted**2).sum()) / settings.offset_sigma**2
        if log_amplitudes is not None:
            objective_final += 0.5 * float((log_amplitudes**2).sum()) / settings.amplitude_sigma**2
        if envelopes is not None:
            objective_final += envelopes.prior_penalty(values)
        objective_final += settings.symmetry_weight * float(asymmetry.sum())
        objective_initial = 0.5 * resid_init.sum() - w * initial_log_prior.sum()
        objective_initial += settings.symmetry_weight * float(np.sum(initial_asymmetry))

        chi2 = np.full((len(latents), len(self.bands)), np.nan)
        for i, (origin, side) in enumerate(zip(footprints, blend.footprint_sizes)):
            _, (ry, rx) = stamp_overlap(origin, (side, side), (0, 0, y1 - y0, x1 - x0))
            n_valid = (weights[:, ry, rx] > 0).sum(axis=(1, 2))
            total = resid_sq[:, ry, rx].sum(axis=(1, 2))
            with np.errstate(invalid="ignore", divide="ignore"):
                chi2[i] = np.where(n_valid > 0, total / n_valid, np.nan)

        return DeblendResult(
            bands=self.bands,
            image_shape=blend.image_shape,
            peaks_xy=blend.peaks_xy,
            stamp_yx0=stamp_yx0,
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
            zoom=blend.zoom.copy(),
            edge_flux_fraction=edge_fraction,
            amplitudes=None if log_amplitudes is None else np.exp(log_amplitudes),
            envelopes=envelope_images,
            envelope_sources=envelope_sources,
            footprint_sizes=np.asarray(blend.footprint_sizes, np.int64).copy(),
            asymmetry=asymmetry,
        )

    @staticmethod
    def _add_wings(result: DeblendResult, psf: np.ndarray, *, outskirts: bool) -> None:
        """Give ``result``'s sources without an envelope their outer profiles (`engine.wings`):
        the outskirts inside their footprints (with ``outskirts``) and their wings, in place."""
        # An envelope is its source's fitted light beyond the stamp.
        wings = wing_profiles(result.models, result.footprint_sizes, result.zoom, psf, outskirts=outskirts,
                              winged=~result.enveloped)
        if outskirts:
            result.models = complete_outskirts(result.models, wings, psf).astype(np.float32)
        result.psf = psf.astype(np.float32)
        result.wings = wings
        result.wing_fluxes = wings.fluxes(psf)

    def _place(self, blend: PreparedBlend, stamps: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """Decoded ``(n, bands, S, S)`` stamps on the image grid, as the fit placed them.

        Zoom 1: the stamp moved by its ``(dy, dx)`` shift in its ``S x S`` window. Any zoom > 1:
        every model in the window of the largest zoom (`zoom_footprint_size`), centred on its
        peak's pixel; zoom-1 models padded with zeros around their stamp.
        """
        s = self.stamp_size
        zoom = blend.zoom
        shifted = shift_stamps(stamps, shifts).astype(np.float32)
        if (zoom == 1).all():
            return shifted
        size = int(zoom_footprint_size(s, int(zoom.max())))
        out = np.zeros((len(stamps), stamps.shape[1], size, size), np.float32)
        pad = (size - s) // 2
        plain = np.flatnonzero(zoom == 1)
        out[plain, :, pad : pad + s, pad : pad + s] = shifted[plain]
        zoomed = np.flatnonzero(zoom > 1)
        centers_yx = blend.peaks_xy[zoomed, ::-1]
        out[zoomed] = zoom_place_stamps(stamps[zoomed], centers_yx, zoom[zoomed], size=size)
        return out

