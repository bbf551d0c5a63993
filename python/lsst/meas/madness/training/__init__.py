"""Training of MADNESS networks.

* `train_madness` -- the paper's three stages (SSIM warm-up beta-VAE, flow prior,
  VAE-deblender) from ``madness simulate datasets`` output to a model bundle, resumable, on the
  TensorFlow or the JAX Keras backend; presets in `PRESETS` (``paper``, ``cpu``, ``tiny``).
* `train_quick_bundle` -- a reduced-size autoencoder + flow in seconds for demos and test
  fixtures (not the paper's training).
"""

from .config import PRESETS, StageSchedule, TrainingConfig, preset  # noqa: F401
from .quick import *  # noqa: F401,F403
from .train import train_madness  # noqa: F401
