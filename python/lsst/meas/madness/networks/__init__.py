"""Keras 3 networks of MADNESS: encoder, decoder, MADE/MAF flow prior, layout and normalisation.

Everything here uses only ``keras.ops`` and ``keras.random``, so it runs on the TensorFlow and
the JAX backends alike.
"""

from .decoder import *
from .encoder import *
from .flow import *
from .gaussian import *
from .layout import *
from .made import *
from .normalization import *
