"""Evaluation of deblenders with the metrics of the MADNESS paper (section 4, appendices A, C-E).

numpy in, numpy out; sep for the aperture photometry, GalSim HSM for the shapes. No Keras,
BTK or matplotlib is imported here: the BTK plugin is `lsst.meas.madness.evaluation.btk_plugin`
and the figures `lsst.meas.madness.evaluation.figures`, imported on demand; the deblenders'
own libraries are imported by their adapters (`methods`) in their worker processes only.

The side-by-side run (``madness evaluate``): `fields` (TestFields in), `methods` (one adapter
per deblender), `runner` (every method on the same fields, per-galaxy metrics, time and
memory via `resources`), `report` (measurements.json, summary.json, report.md).
"""

from .blending import *
from .fields import *
from .methods import *
from .metrics import *
from .morphology import *
from .photometry import *
from .report import *
from .resources import *
from .runner import *
from .stamps import *
from .reach import *
