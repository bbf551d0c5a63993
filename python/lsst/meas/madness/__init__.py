"""MADNESS galaxy deblender (Biswas et al.) for the LSST Science Pipelines.

Typical use::

    from lsst.meas.madness import MadnessDeblender
    deblender = MadnessDeblender.from_bundle(path)
    result = deblender.deblend(image, peaks_xy, variance=variance)
"""

from ._lazy import lazy_exports
from .errors import *

# The engine and the bundle pull in Keras and its backend (seconds of import); simulation
# workers and the command line do not need them, so they are imported on first use.
_LAZY = {
    "DeblendResult": ".engine",
    "MadnessDeblender": ".engine",
    "MapSettings": ".engine",
    "BundleMetadata": ".io",
    "ModelBundle": ".io",
}

__getattr__, __dir__ = lazy_exports(globals(), _LAZY)

try:
    from .version import __version__
except ImportError:  # not installed: running from a source tree
    __version__ = "0.0.0+unknown"
