"""MADNESS galaxy deblender (Biswas et al.) for the LSST Science Pipelines.

Typical use::

    from lsst.meas.madness import MadnessDeblender
    deblender = MadnessDeblender.from_bundle(path)
    result = deblender.deblend(image, peaks_xy, variance=variance)
"""

import importlib

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


def __getattr__(name):
    if name in _LAZY:
        from . import backend  # noqa: F401  (quiets TensorFlow before anything imports it)

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))

try:
    from .version import __version__
except ImportError:  # not installed: running from a source tree
    __version__ = "0.0.0+unknown"
