"""A quick trainer: a reduced-size MADNESS model in minutes on a CPU, for demos and tests.

It is not the paper's training. It fits encoder and decoder as an autoencoder on the mean
latents, with the paper's noise-weighted reconstruction loss (section 3.2, without the KL and
SSIM terms) and a small L2 pull of the latents towards zero so that the flow has a compact
distribution to model; then the flow on the encoder's latents by maximum likelihood
(section 3.3); the encoder itself serves as the VAE-deblender (no section 3.4 retraining).
Bundles it writes say so in their metadata (``training["preset"] == "quick"``).
"""

from __future__ import annotations

__all__ = ["QuickTrainingConfig", "train_quick_bundle"]

import dataclasses
import logging
import time
from collections.abc import Sequence

import keras
import numpy as np

from ..io.bundle import BundleMetadata, ModelBundle
from ..networks import Decoder, Encoder, LinearNormalization, MaskedAutoregressiveFlow
from ..networks.gaussian import latent_mean
from ..networks.layout import to_network_layout

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class QuickTrainingConfig:
    """Sizes and schedule of `train_quick_bundle`.

    Parameters
    ----------
    latent_dim : `int`
        Latent dimension.
    encoder_filters, decoder_filters : `tuple` [`int`, ...]
        Convolution filters (the paper: 32/128/256/512 and 128/96/64).
    dense_units : `int`
        Hidden dense units of encoder and decoder (paper: 512).
    epochs, flow_epochs : `int`
        Passes over the stamps for the autoencoder and the flow.
    batch_size : `int`
        Stamps per step.
    learning_rate, flow_learning_rate : `float`
        Adam learning rates.
    latent_l2 : `float`
        Weight of the L2 pull of the latents towards zero.
    seed : `int`
        Seed of initialisation and shuffling.
    """

    latent_dim: int = 16
    encoder_filters: tuple[int, ...] = (16, 32, 64, 64)
    decoder_filters: tuple[int, ...] = (64, 32, 16)
    dense_units: int = 128
    epochs: int = 30
    flow_epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 2e-3
    flow_learning_rate: float = 3e-3
    latent_l2: float = 1e-3
    seed: int = 0


class _FlowNLL(keras.Model):
    def __init__(self, flow: MaskedAutoregressiveFlow):
        super().__init__(name="flow_nll")
        self.flow = flow

    def call(self, z):
        return -self.flow.log_prob(z)


def train_quick_bundle(
    stamps: np.ndarray,
    sky_variance: Sequence[float],
    *,
    bands: Sequence[str],
    pixel_scale: float = 0.2,
    normalization: float = 1e4,
    conditions: dict | None = None,
    config: QuickTrainingConfig = QuickTrainingConfig(),
    description: str = "",
    verbose: int = 0,
) -> ModelBundle:
    """Train a reduced-size model on isolated, centred galaxy stamps.

    Parameters
    ----------
    stamps : `numpy.ndarray`
        ``(n, bands, S, S)`` noiseless isolated galaxies, flux units per pixel.
    sky_variance : sequence of `float`
        Per-band sky variance per pixel, flux units squared (the loss weights pixels by
        ``1 / (sky + flux)`` like the paper's code).
    bands : sequence of `str`
        Band names of the planes.
    pixel_scale : `float`
        Pixel scale in arcsec (metadata).
    normalization : `float`
        Flux units per network unit.
    conditions : `dict`, optional
        Observing conditions recorded in the metadata.
    config : `QuickTrainingConfig`
        Sizes and schedule.
    description : `str`
        Free text for the metadata.
    verbose : `int`
        Keras fit verbosity.

    Returns
    -------
    bundle : `ModelBundle`
        Trained networks with metadata (``trained=True``, ``training.preset="quick"``).
    """
    t0 = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    norm = LinearNormalization(normalization)
    stamps = np.asarray(stamps, dtype=np.float32)
    n, num_bands, size, _ = stamps.shape
    x = np.ascontiguousarray(to_network_layout(norm.normalize(stamps)))
    sky = norm.normalize_variance(np.asarray(sky_variance, np.float64)).astype(np.float32)

    encoder = Encoder(size, num_bands, config.latent_dim, config.encoder_filters, dense_units=config.dense_units)
    decoder = Decoder(size, num_bands, config.latent_dim, config.decoder_filters, dense_units=config.dense_units)
    inputs = keras.Input((size, size, num_bands))
    z = keras.layers.Lambda(lambda p: latent_mean(p, config.latent_dim), name="mean")(encoder(inputs))
    autoencoder = keras.Model(inputs, [decoder(z), z])
    scale = float(norm.scale)

    def reconstruction(y, y_hat):
        # Gaussian approximation of sky + Poisson noise, in network units.
        var = sky + keras.ops.maximum(y, 0.0) / scale
        return keras.ops.mean(keras.ops.sum(keras.ops.square(y - y_hat) / var, axis=(1, 2, 3))) / (size * size)

    def latent_penalty(_, latents):
        return config.latent_l2 * keras.ops.mean(keras.ops.sum(keras.ops.square(latents), axis=-1))

    autoencoder.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate, clipnorm=1.0),
        loss=[reconstruction, latent_penalty],
    )
    history = autoencoder.fit(
        x, [x, np.zeros((n, config.latent_dim), np.float32)],
        epochs=config.epochs, batch_size=config.batch_size, shuffle=True, verbose=verbose,
    )

    latents = np.asarray(encoder.encode_mean(x), np.float32)
    flow = MaskedAutoregressiveFlow(config.latent_dim, seed=config.seed)
    flow.build()
    nll = _FlowNLL(flow)
    nll.compile(optimizer=keras.optimizers.Adam(config.flow_learning_rate, clipnorm=1.0),
                loss=lambda _, value: keras.ops.mean(value))
    flow_history = nll.fit(
        latents, np.zeros(n, np.float32), epochs=config.flow_epochs,
        batch_size=config.batch_size, shuffle=True, verbose=verbose,
    )
    wall = time.perf_counter() - t0
    metrics = {
        "reconstruction_loss": float(history.history["loss"][-1]),
        "flow_nll": float(flow_history.history["loss"][-1]),
    }
    _log.info("Quick training of %d stamps took %.1f s: %s", n, wall, metrics)
    metadata = BundleMetadata(
        bands=tuple(bands),
        stamp_size=size,
        pixel_scale=pixel_scale,
        normalization=normalization,
        latent_dim=config.latent_dim,
        trained=True,
        conditions=conditions or {},
        description=description or "Reduced-size model from the quick trainer (demos and tests).",
        training={
            "preset": "quick",
            "config": dataclasses.asdict(config),
            "n_stamps": int(n),
            "wall_time_s": round(wall, 1),
            "backend": keras.config.backend(),
        },
        metrics=metrics,
    )
    return ModelBundle(metadata, decoder, flow, deblender_encoder=encoder, encoder=None)
