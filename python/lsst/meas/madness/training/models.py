"""Keras models that carry each stage's loss, so ``fit`` does the backend-specific work.

Each trainer overrides ``compute_loss``; Keras's own TensorFlow and JAX trainers then compute
gradients and apply the optimiser, so this package has no backend-specific training code.
"""

from __future__ import annotations

__all__ = ["DeblenderTrainer", "FlowTrainer", "VaeTrainer"]

import keras
import numpy as np

from ..networks import Decoder, Encoder, MaskedAutoregressiveFlow
from ..networks.gaussian import latent_mean
from .losses import gaussian_kl, latent_l2, reconstruction_chi2, sample_latents, ssim_per_band


class VaeTrainer(keras.Model):
    """beta-VAE with the paper's warm-up loss (eq. 4).

    ``x`` is the noisy stamp, ``y`` the noiseless galaxy (both network layout and units). The
    loss per stamp is ``chi2 (1 - alpha SSIM) + beta KL`` where chi2 compares the decoded sample
    with the target (``y`` when ``target == "truth"``, else ``x``) under sky + Poisson variance,
    SSIM is the mean over bands of the decoded stamp against ``y``, and ``alpha`` is a
    non-trainable weight set per epoch (0 outside the warm-up).

    With a ``teacher`` decoder (distillation, ``distill_weight`` w > 0) the chi2 is
    ``(1 - w) chi2(target, D(z)) + w chi2(teacher(z), D(z))`` for the same latent sample ``z``,
    and the model's output carries the teacher's stamp as a third element. With
    ``distill_spread`` s > 0, in training, a partner latent ``z + s eps`` is decoded by both
    (fourth and fifth elements) and the teacher's term is the mean over the two latents.
    """

    def __init__(self, encoder: Encoder, decoder: Decoder, sky_variance, *, scale: float, beta: float,
                 target: str = "truth", seed: int = 0, teacher: Decoder | None = None,
                 distill_weight: float = 0.0, distill_spread: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        if teacher is not None:
            teacher.trainable = False
        self.teacher = teacher
        self.distill_weight = float(distill_weight) if teacher is not None else 0.0
        self.distill_spread = float(distill_spread) if self.distill_weight > 0 else 0.0
        self.latent_dim = encoder.latent_dim
        self.sky_variance = np.asarray(sky_variance, np.float32)
        self.scale = float(scale)
        self.beta = float(beta)
        self.target = target
        self.sampler = keras.random.SeedGenerator(seed)
        self.alpha = self.add_weight(shape=(), initializer="zeros", trainable=False, name="ssim_alpha")

    def call(self, x, training=False):
        params = self.encoder(x, training=training)
        z = sample_latents(params, self.latent_dim, self.sampler) if training else latent_mean(params, self.latent_dim)
        if self.teacher is None:
            return params, self.decoder(z, training=training)
        taught = keras.ops.stop_gradient(self.teacher(z, training=False))
        if not (training and self.distill_spread > 0):
            return params, self.decoder(z, training=training), taught
        wide = z + self.distill_spread * keras.random.normal(keras.ops.shape(z), seed=self.sampler, dtype=z.dtype)
        wide_taught = keras.ops.stop_gradient(self.teacher(wide, training=False))
        return params, self.decoder(z, training=training), taught, self.decoder(wide, training=training), wide_taught

    def loss_terms(self, x, y, params, prediction, taught=None, wide=None, wide_taught=None):
        """Per-stamp chi2, KL and SSIM; ``taught`` (the teacher's stamps) adds the distillation term,
        ``wide`` and ``wide_taught`` (both decoders at the partner latents) its second half."""
        # Under a mixed-precision policy the networks compute in bfloat16/float16; the chi^2 of
        # a bright galaxy (~1e5) and the KL's log-determinant need float32.
        params = keras.ops.cast(params, "float32")
        prediction = keras.ops.cast(prediction, "float32")
        target = y if self.target == "truth" else x
        chi2 = reconstruction_chi2(target, prediction, y, self.sky_variance, self.scale)
        if taught is not None and self.distill_weight > 0:
            taught = keras.ops.cast(taught, "float32")
            distilled = reconstruction_chi2(taught, prediction, y, self.sky_variance, self.scale)
            if wide is not None and wide_taught is not None:
                # Under the truth's variance too: the partner is a nearby galaxy, not a new one.
                wide_chi2 = reconstruction_chi2(keras.ops.cast(wide_taught, "float32"),
                                                keras.ops.cast(wide, "float32"), y, self.sky_variance, self.scale)
                distilled = 0.5 * (distilled + wide_chi2)
            chi2 = (1.0 - self.distill_weight) * chi2 + self.distill_weight * distilled
        kl = gaussian_kl(params, self.latent_dim)
        ssim = keras.ops.mean(ssim_per_band(y, prediction), axis=-1)
        return chi2, kl, ssim

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        params, prediction, *taught = y_pred
        chi2, kl, ssim = self.loss_terms(x, y, params, prediction, *taught)
        alpha = keras.ops.convert_to_tensor(self.alpha)
        return keras.ops.mean(chi2 * (1.0 - alpha * ssim) + self.beta * kl)


class FlowTrainer(keras.Model):
    """Maximum likelihood of the flow on latent vectors (eq. 7): loss = mean(-log p(z))."""

    def __init__(self, flow: MaskedAutoregressiveFlow, **kwargs):
        super().__init__(**kwargs)
        self.flow = flow

    def call(self, z, training=False):
        return -self.flow.log_prob(z)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return keras.ops.mean(y_pred)


class DeblenderTrainer(keras.Model):
    """VAE-deblender (section 3.4): ``x`` blended stamps, ``y`` the frozen encoder's latents of
    the isolated central galaxy; loss = mean squared Euclidean distance of the predicted mean."""

    def __init__(self, encoder: Encoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.latent_dim = encoder.latent_dim

    def call(self, x, training=False):
        return latent_mean(self.encoder(x, training=training), self.latent_dim)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return keras.ops.mean(latent_l2(keras.ops.cast(y_pred, "float32"), y))
