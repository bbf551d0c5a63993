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

from ..errors import MadnessValueError


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
    """

    learning_rate: float
    clip_value: float
    max_epochs: int
    patience: int | None = 20
    decay_factor: float = 2.5
    decay_every: int = 40
    batch_size: int = 100

    def learning_rate_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch``."""
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

    def __post_init__(self):
        if self.target not in ("truth", "noisy"):
            raise MadnessValueError(f"TrainingConfig.target must be 'truth' or 'noisy', not {self.target!r}.")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingConfig":
        data = dict(data)
        for key in ("vae_warmup", "vae", "flow", "deblender"):
            if isinstance(data.get(key), dict):
                data[key] = StageSchedule(**data[key])
        for key in ("encoder_filters", "decoder_filters"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


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
    """The named preset (``paper``, ``cpu``, ``tiny``) with ``overrides`` applied."""
    if name not in PRESETS:
        raise MadnessValueError(f"Unknown training preset {name!r}; choose one of {sorted(PRESETS)}.")
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
