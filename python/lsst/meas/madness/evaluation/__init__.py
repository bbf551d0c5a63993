"""Evaluation of deblenders with the metrics of the MADNESS paper (section 4, appendices A, C-E).

numpy in, numpy out; sep for the aperture photometry, GalSim HSM for the shapes. No Keras,
BTK or matplotlib is imported here: the BTK plugin is `lsst.meas.madness.evaluation.btk_plugin`,
imported on demand.
"""

from .blending import *
from .metrics import *
from .morphology import *
from .photometry import *
from .stamps import *
