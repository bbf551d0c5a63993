"""Training configuration: network sizes, the schedule of each stage, and named presets.

The paper's schedule (sections 3.2-3.4):

========================  =========  ==========  ===========  =============================
stage                     Adam lr    clip value  epochs       notes
========================  =========  ==========  ===========  =============================
VAE warm-up               1e-5       0.1         50           loss x (1 - alpha SSIM), alpha
                                                              1 -> 0 by 0.02 per epoch
VAE                       1e-5       0.1         <= 200       restarted; patience 20
flow                      1e-4       0.01        <= 200       patience 20
VAE-deblender             1e-5       0.1         <= 200       patience 20
========================  =========  ==========  ===========  =============================

Every stage divides its learning rate by 2.5 every 40 epochs. beta = 0.01.
"""

from __future__ import annotations

__all__ = ["PRESETS", "StageSchedule", "TrainingConfig", "preset"]

import dataclasses
import math

from ..errors import MadnessValueError
from ..networks.decoder import OUTPUT_ACTIVATIONS
from ..precision import PRECISIONS


@dataclasses.dataclass(frozen=True)
class StageSchedule:
    """Optimiser and schedule of one training stage.

    Parameters
    ----------
    learning_rate : `float`
        Initial Adam learning rate.
    clip_value : `float`
        Gradient values are clipped to +/- this (Keras ``clipvalue``).
    max_epochs : `int`
        Upper limit on epochs.
    patience : `int` or `None`
        Early stopping on the validation loss after this many epochs without improvement
        (the best weights are kept); `None` runs all ``max_epochs``.
    decay_factor : `float`
        The learning rate is divided by this ...
    decay_every : `int`
        ... every this many epochs.
    batch_size : `int`
        Samples per step.
    schedule : `str`
        ``"step"`` (the paper: divide by ``decay_factor`` every ``decay_every`` epochs) or
        ``"cosine"`` (half a cosine from ``learning_rate`` to ``min_factor * learning_rate``
        over the epochs after the warm-up, ending at ``max_epochs``).
    warmup_epochs : `int`
        Epochs of linear ramp up to ``learning_rate`` before the schedule (epoch ``e`` of the
        ramp uses ``(e + 1) / (warmup_epochs + 1)`` of it).
    min_factor : `float`
        Final fraction of ``learning_rate`` of the cosine schedule.
    ema_momentum : `float`, optional
        Keep an exponential moving average of the weights with this momentum per step
        (Polyak averaging, Keras's ``use_ema``); at the end of every epoch the weights become the
        average, so validation, checkpoints and the bundle see the averaged network. It damps
        the epoch-to-epoch noise of a converged network's steps (doc/training.md). `None`: the
        plain weights.
    """

    learning_rate: float
    clip_value: float
    max_epochs: int
    patience: int | None = 20
    decay_factor: float = 2.5
    decay_every: int = 40
    batch_size: int = 100
    schedule: str = "step"
    warmup_epochs: int = 0
    min_factor: float = 0.05
    ema_momentum: float | None = None

    def __post_init__(self):
        if self.schedule not in ("step", "cosine"):
            raise MadnessValueError(f"StageSchedule.schedule must be 'step' or 'cosine', not {self.schedule!r}.")
        if self.ema_momentum is not None and not 0.0 < self.ema_momentum < 1.0:
            raise MadnessValueError(f"StageSchedule.ema_momentum must be in (0, 1), not {self.ema_momentum!r}.")

    def learning_rate_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch``."""
        if epoch < self.warmup_epochs:
            return self.learning_rate * (epoch + 1) / (self.warmup_epochs + 1)
        if self.schedule == "cosine":
            span = max(self.max_epochs - self.warmup_epochs, 1)
            t = min((epoch - self.warmup_epochs) / span, 1.0)
            return self.learning_rate * (self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t)))
        return self.learning_rate / self.decay_factor ** (epoch // self.decay_every)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Everything `train_madness` needs besides the data.

    Parameters
    ----------
    name : `str`
        Preset name (recorded in the bundle).
    latent_dim : `int`
        Latent dimension (16).
    encoder_filters, decoder_filters : `tuple` [`int`]
        Convolution filters (paper/authors' code: 32/128/256/512 and 128/96/64).
    dense_units : `int`
        Hidden dense units of encoder and decoder (512).
    beta : `float`
        Weight of the KL term (0.01).
    ssim_warmup_epochs : `int`
        Epochs over which alpha falls from 1 to 0 by ``1 / ssim_warmup_epochs`` per epoch (50).
    vae_warmup, vae, flow, deblender : `StageSchedule`
        Schedules of the stages.
    target : `str`
        Reconstruction target of the VAE: ``"truth"`` (the noiseless galaxy BTK drew; lower
        gradient noise, same optimum in expectation) or ``"noisy"`` (the input stamp, the
        plain ELBO).
    max_train, max_validation : `int` or `None`
        Caps on the stamps used from each dataset.
    seed : `int`
        Seed of initialisation, shuffling, latent sampling and the deblender's target noise.
    decoder_output_activation : `str`
        ``"relu"`` (the paper) or ``"linear"`` (cannot die, keeps a background pedestal; see
        `Decoder`).
    decoder_output_scale_sigma : `float`, optional
        With ``"relu"``: scale each band's output by this fraction of the band's sky sigma (the
        training data's sky level), so that a pre-activation of 1 is the same fraction of a sky
        sigma in every band (`lsst.meas.madness.networks.BandScaledReLU`). `None`: the paper's
        unscaled ReLU.
    precision : `str`
        ``"float32"`` or ``"mixed_bfloat16"``: the encoder and decoder compute in bfloat16 with
        float32 weights while training (Keras mixed precision; the losses, the flow and every
        bundle stay float32). On CPUs with AMX-BF16 this about doubles training throughput
        (doc/training.md).
    fresh_noise : `bool`
        The VAE stages draw a new noise realisation and a random symmetry of the square for
        every stamp of every batch from the stored noiseless galaxies
        (`lsst.meas.madness.training.augment.FreshNoise`) instead of reusing the stored noisy
        stamp.
    freeze_encoder : `bool`
        Continue only the decoder (needs a warm start, ``init_from``): the encoder is frozen in
        the VAE stage, and the flow and the VAE-deblender are carried over from the warm-start
        bundle unchanged, because the latent space they describe (the encoder's) does not move.
        A continuation that moves the encoder moves the latent space under the flow, the
        VAE-deblender and the MAP's step sizes (``cpu5-a`` in doc/training.md).
        With a frozen encoder the decoder may have another architecture than the warm-start
        bundle's (``decoder_filters``, ``dense_units``): it then starts from scratch in the
        bundle's latent space (a narrower decoder deblends faster).
    distill_weight : `float`
        With a frozen encoder, weight ``w`` in [0, 1] of distillation in the VAE stage's chi^2:
        ``(1 - w) chi2(truth, D(z)) + w chi2(D_parent(z), D(z))`` for the same latent sample
        ``z``, both under the truth's sky + Poisson variance. The warm-start bundle's decoder is
        a noiseless, deterministic target in the same latent space, so a new (narrower) decoder
        learns from every latent what the parent draws there, not only from one noisy
        realisation of a galaxy. 0 (default): the plain VAE loss. Validation metrics always
        compare with the truth.
    distill_spread : `float`
        With distillation, also teach the new decoder at latents off the encoder's posterior:
        each training latent ``z`` gets a partner ``z + s * eps`` (``eps`` standard normal,
        ``s = distill_spread``), and the distillation term becomes the mean of
        ``chi2(D_parent(z), D(z))`` and ``chi2(D_parent(z + s eps), D(z + s eps))``. The MAP
        walks the latent space beyond the posterior samples the encoder gives; a student taught
        only there may draw light where its parent draws none (``cpu8-a`` in doc/training.md put
        19% of a galaxy's flux in its stamp's edge). 0 (default): the posterior samples only.
    """

    name: str = "paper"
    latent_dim: int = 16
    encoder_filters: tuple[int, ...] = (32, 128, 256, 512)
    decoder_filters: tuple[int, ...] = (128, 96, 64)
    dense_units: int = 512
    beta: float = 0.01
    ssim_warmup_epochs: int = 50
    vae_warmup: StageSchedule = StageSchedule(1e-5, 0.1, 50, patience=None)
    vae: StageSchedule = StageSchedule(1e-5, 0.1, 200)
    flow: StageSchedule = StageSchedule(1e-4, 0.01, 200)
    deblender: StageSchedule = StageSchedule(1e-5, 0.1, 200)
    target: str = "truth"
    max_train: int | None = None
    max_validation: int | None = None
    seed: int = 0
    decoder_output_activation: str = "relu"
    decoder_output_scale_sigma: float | None = None
    fresh_noise: bool = False
    precision: str = "float32"
    freeze_encoder: bool = False
    distill_weight: float = 0.0
    distill_spread: float = 0.0

    def __post_init__(self):
        if not self.distill_spread >= 0:
            raise MadnessValueError(f"TrainingConfig.distill_spread must be >= 0, not {self.distill_spread!r}.")
        if self.distill_spread > 0 and not self.distill_weight > 0:
            raise MadnessValueError("TrainingConfig.distill_spread widens the distillation's latents: it needs "
                                    "distill_weight > 0.")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise MadnessValueError(f"TrainingConfig.distill_weight must lie in [0, 1], not {self.distill_weight!r}.")
        if self.distill_weight > 0 and not self.freeze_encoder:
            raise MadnessValueError("TrainingConfig.distill_weight > 0 distils the warm-start bundle's decoder in its "
                                    "latent space: it needs freeze_encoder=True.")
        if self.precision not in PRECISIONS:
            raise MadnessValueError(f"TrainingConfig.precision must be 'float32' or 'mixed_bfloat16', "
                                    f"not {self.precision!r}.")
        if self.decoder_output_activation not in OUTPUT_ACTIVATIONS:
            raise MadnessValueError(f"TrainingConfig.decoder_output_activation must be one of {OUTPUT_ACTIVATIONS}, "
                                    f"not {self.decoder_output_activation!r}.")
        if self.decoder_output_scale_sigma is not None and not (
                self.decoder_output_activation == "relu" and self.decoder_output_scale_sigma > 0):
            raise MadnessValueError("TrainingConfig.decoder_output_scale_sigma must be > 0 and needs a 'relu' "
                                    f"output, not {self.decoder_output_scale_sigma!r} with "
                                    f"{self.decoder_output_activation!r}.")
        if self.target not in ("truth", "noisy"):
            raise MadnessValueError(f"TrainingConfig.target must be 'truth' or 'noisy', not {self.target!r}.")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingConfig":
        """The config of ``as_dict``; keys added since it was written take their defaults."""
        data = dict(data)
        for key in ("vae_warmup", "vae", "flow", "deblender"):
            if isinstance(data.get(key), dict):
                data[key] = StageSchedule(**data[key])
        for key in ("encoder_filters", "decoder_filters"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


# The second CPU recipe (issue 12): a linear decoder output (the ReLU u channel died in both
# runs of "cpu"), a new noise realisation and a symmetry of the square for every stamp of every
# epoch, a one-epoch ramp then half a cosine, all the training stamps given. Sized for a time
# budget (`madness train --time-budget`): the VAE runs until its share of the budget is spent.
_CPU2 = TrainingConfig(
    name="cpu2",
    decoder_output_activation="linear",
    fresh_noise=True,
    ssim_warmup_epochs=3,
    vae_warmup=StageSchedule(1e-4, 0.1, 3, patience=None, warmup_epochs=1, batch_size=64),
    vae=StageSchedule(1e-4, 0.1, 30, patience=8, schedule="cosine", warmup_epochs=1, min_factor=0.03,
                      batch_size=64),
    flow=StageSchedule(1e-3, 0.01, 120, patience=15, decay_every=40, batch_size=128),
    deblender=StageSchedule(1e-4, 0.1, 8, patience=3, schedule="cosine", min_factor=0.1, batch_size=64),
    max_validation=2000,
)


PRESETS: dict[str, TrainingConfig] = {
    # The paper's sizes and schedules: a GPU job (150k training stamps, hours per stage).
    "paper": TrainingConfig(),
    # What trains in about two hours on 2 CPU cores (doc/model-card.md has the measurement):
    # paper-size networks, the paper's schedule shape compressed, higher learning rates to make
    # up for far fewer epochs, 8k training stamps.
    "cpu": TrainingConfig(
        name="cpu",
        ssim_warmup_epochs=6,
        vae_warmup=StageSchedule(5e-5, 0.1, 6, patience=None, decay_every=40, batch_size=64),
        vae=StageSchedule(1e-4, 0.1, 16, patience=4, decay_every=8, batch_size=64),
        flow=StageSchedule(1e-3, 0.01, 120, patience=15, decay_every=40, batch_size=128),
        deblender=StageSchedule(1e-4, 0.1, 10, patience=3, decay_every=5, batch_size=64),
        max_train=8000,
        max_validation=1500,
    ),
    "cpu2": _CPU2,
    # The third CPU recipe (issue 12): "cpu2" with the paper's ReLU output back, scaled per band to
    # a tenth of the band's sky sigma so that the u channel cannot be driven dark. The linear
    # output of "cpu2" kept a background pedestal that gave the task path's children light far
    # from their galaxies (doc/training.md).
    "cpu3": dataclasses.replace(_CPU2, name="cpu3", decoder_output_activation="relu", decoder_output_scale_sigma=0.1),
    # Tiny networks and a few epochs: tests and smoke runs only, never a science model.
    "tiny": TrainingConfig(
        name="tiny",
        encoder_filters=(8, 16, 16, 32),
        decoder_filters=(32, 16, 16),
        dense_units=64,
        ssim_warmup_epochs=2,
        vae_warmup=StageSchedule(1e-3, 0.1, 2, patience=None, batch_size=32),
        vae=StageSchedule(1e-3, 0.1, 3, patience=2, batch_size=32),
        flow=StageSchedule(3e-3, 0.01, 6, patience=3, batch_size=64),
        deblender=StageSchedule(1e-3, 0.1, 2, patience=2, batch_size=32),
    ),
}


def preset(name: str, **overrides) -> TrainingConfig:
    """The named preset (``paper``, ``cpu``, ``cpu2``, ``cpu3``, ``tiny``) with ``overrides`` applied."""
    if name not in PRESETS:
        raise MadnessValueError(f"Unknown training preset {name!r}; choose one of {sorted(PRESETS)}.")
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
