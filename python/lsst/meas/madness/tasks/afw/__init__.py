"""The full-Rubin-stack I/O path: afw exposures and catalogs in, afw catalogs with heavy footprints out.

* `MadnessDeblendAfwTask` (`lsst.meas.madness.tasks.afw.deblend`): drop-in for
  ``DeblendCoaddSourcesMultiTask``; afw is imported when the task is constructed, so the task,
  its connections and config import (and pipelines using them build) without afw.
* `MadnessMeasureMergedCoaddSourcesTask` (`lsst.meas.madness.tasks.afw.measurement`): the stack's
  coadd measurement reading MADNESS's per-band catalogs; needs ``lsst.pipe.tasks`` and is loaded
  on first access.
* `lsst.meas.madness.tasks.afw.convert`: the afw <-> numpy conversions (needs afw; loaded on
  first access).
* `lsst.meas.madness.tasks.afw.conventions`: the same conventions as plain data (no afw).

``import lsst.meas.madness.tasks`` does not import this package.
"""

from __future__ import annotations

import importlib

from .conventions import *
from .deblend import *

_LAZY = {
    "MadnessMeasureMergedCoaddSourcesConnections": ".measurement",
    "MadnessMeasureMergedCoaddSourcesConfig": ".measurement",
    "MadnessMeasureMergedCoaddSourcesTask": ".measurement",
    "coadd_from_exposures": ".convert",
    "footprint_from_afw": ".convert",
    "spanset_from_footprint": ".convert",
    "parents_from_catalog": ".convert",
    "child_footprint": ".convert",
    "heavy_footprint": ".convert",
}
_NEEDS = {".measurement": "lsst.pipe.tasks (the Rubin stack)", ".convert": "lsst.afw (the Rubin stack)"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module, __name__), name)
    except ImportError as error:
        raise ImportError(
            f"{__name__}.{name} needs {_NEEDS[module]}, which is not importable here ({error}). "
            "Set up the LSST Science Pipelines (EUPS) to use the afw I/O path; the pip-only path is "
            "lsst.meas.madness.tasks."
        ) from error
