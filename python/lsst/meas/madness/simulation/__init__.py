"""Simulation of LSST galaxies and blends for training and evaluation (paper section 2).

* `conditions` — LSST 10-year conditions (SurveyCodex) and the appendix-A SNR;
* `catalog` — the CatSim catalogue format: reading, validation, SNR cut, splits;
* `skypy_catalog` — a calibrated CatSim-format catalogue generator built on SkyPy;
* `datasets`, `shards`, `suite` — IsolatedSims, BlendedSims and TestFields drawn with BTK,
  written in resumable HDF5 shards.
"""

from .conditions import *  # noqa: F401,F403
from .datasets import (  # noqa: F401
    DATASET_KINDS,
    BlendedSimsConfig,
    IsolatedSimsConfig,
    TestFieldsConfig,
    simulate_dataset,
)
from .shards import DatasetManifest, SimulatedDataset  # noqa: F401
from .suite import simulate_suite  # noqa: F401
