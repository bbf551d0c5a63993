"""The MADNESS deblender engine: numpy in, per-source models and diagnostics out."""

from .deblender import *
from .geometry import *
from .objective import *
from .observation import *
from .result import *
from .settings import *
from .stopping import *
