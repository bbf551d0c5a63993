"""The MADNESS deblender engine: numpy in, per-source models and diagnostics out.

The geometry (`lsst.meas.madness.engine.geometry`), the result, the settings and the stopping
rule are numpy only and imported at once; the deblender, the objective and the observation
need Keras and are imported on first use, so the tasks and the evaluation can use the one
geometry module without loading a Keras backend.
"""

from .._lazy import lazy_exports
from .geometry import *
from .geometry import __all__ as _geometry_all
from .result import *
from .result import __all__ as _result_all
from .settings import *
from .settings import __all__ as _settings_all
from .stopping import *
from .stopping import __all__ as _stopping_all

_LAZY = {
    "MadnessDeblender": ".deblender",
    "blend_models": ".objective",
    "blend_objective": ".objective",
    "PreparedBlend": ".observation",
    "prepare_blend": ".observation",
}

__all__ = [*_geometry_all, *_result_all, *_settings_all, *_stopping_all, *_LAZY]

__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
