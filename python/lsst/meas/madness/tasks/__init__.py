"""Rubin PipelineTasks around the MADNESS engine: detection, deblending, measurement.

This package is the pip-only I/O path: lsst.images coadds in, ``ArrowAstropy`` tables out
(formats in `lsst.meas.madness.tasks.footprints` and `lsst.meas.madness.tasks.catalogs`).
It imports lsst.pipe.base, so ``import lsst.meas.madness`` does not import it; use
``from lsst.meas.madness.tasks import MadnessDeblendTask``.
"""

from .blends import *
from .catalogs import *
from .coadds import *
from .deblend import *
from .detection import *
from .footprints import *
from .measurement import *
from .model_dataset import *
