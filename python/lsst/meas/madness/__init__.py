"""MADNESS galaxy deblender (Biswas et al.) for the LSST Science Pipelines.

Typical use::

    from lsst.meas.madness import MadnessDeblender
    deblender = MadnessDeblender.from_bundle(path)
    result = deblender.deblend(image, peaks_xy, variance=variance)
"""

from . import backend  # noqa: F401  (quiets TensorFlow before anything imports it)
from .engine import DeblendResult, MadnessDeblender, MapSettings
from .errors import *
from .io import BundleMetadata, ModelBundle

try:
    from .version import __version__
except ImportError:  # not installed: running from a source tree
    __version__ = "0.0.0+unknown"
