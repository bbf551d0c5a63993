"""Coadd measurement of MADNESS children: ``MeasureMergedCoaddSourcesTask`` on per-band heavy footprints.

The stack's ``lsst.pipe.tasks.multiBand.MeasureMergedCoaddSourcesTask`` runs per band. It reads
a band-less deblended catalog (connection ``scarletCatalog``) and, with ``doAddFootprints``,
rebuilds each child's ``HeavyFootprint`` in the quantum's band from scarlet's model data. MADNESS
writes the heavy footprints itself, one catalog per band (``{outputCoaddName}Coadd_deblendedFlux``,
see `lsst.meas.madness.tasks.afw.deblend`). A connection's dimensions cannot be changed by
configuration, so this subclass redeclares ``scarletCatalog`` (the name the parent's
``runQuantum`` reads) as that per-band catalog, and turns ``doAddFootprints`` off (no scarlet
models). Everything else, measurement plugins included, is the parent's; ``NoiseReplacer``
finds a heavy footprint on every child, inside its parent's footprint, as it needs.

``doStripFootprints`` defaults to False here: the forced photometry of DRP
(``ForcedPhotCoaddTask``) then takes the children's heavy footprints from this task's output
(``footprintDatasetName = None``; see ``config/measureObjectForced.py``).

Needs ``lsst.pipe.tasks`` (the full stack).
"""

from __future__ import annotations

__all__ = [
    "MadnessMeasureMergedCoaddSourcesConnections",
    "MadnessMeasureMergedCoaddSourcesConfig",
    "MadnessMeasureMergedCoaddSourcesTask",
]

import lsst.pex.config as pexConfig
import lsst.pipe.base.connectionTypes as cT
from lsst.pipe.tasks.multiBand import (
    MeasureMergedCoaddSourcesConfig,
    MeasureMergedCoaddSourcesConnections,
    MeasureMergedCoaddSourcesTask,
)


class MadnessMeasureMergedCoaddSourcesConnections(MeasureMergedCoaddSourcesConnections):
    scarletCatalog = cT.Input(
        doc="MADNESS deblended catalog of the quantum's band: children carry HeavyFootprintFs "
        "(MadnessDeblendAfwTask's deblendedFlux). Named scarletCatalog because the parent task's "
        "runQuantum reads that connection.",
        name="{inputCoaddName}Coadd_deblendedFlux",
        storageClass="SourceCatalog",
        dimensions=("tract", "patch", "band", "skymap"),
    )


class MadnessMeasureMergedCoaddSourcesConfig(
    MeasureMergedCoaddSourcesConfig, pipelineConnections=MadnessMeasureMergedCoaddSourcesConnections
):
    """`MeasureMergedCoaddSourcesConfig` for MADNESS's per-band deblended catalogs."""

    def setDefaults(self):
        super().setDefaults()
        # The heavy footprints are in the input catalog; there are no scarlet models to read.
        self.doAddFootprints = False
        # Keep the children's heavy footprints for forced photometry (footprintDatasetName=None).
        self.doStripFootprints = False

    def validate(self):
        super().validate()
        if self.doAddFootprints:
            raise pexConfig.FieldValidationError(
                MeasureMergedCoaddSourcesConfig.doAddFootprints,
                self,
                "MADNESS catalogs carry their heavy footprints; doAddFootprints (scarlet models) must be False.",
            )


class MadnessMeasureMergedCoaddSourcesTask(MeasureMergedCoaddSourcesTask):
    """``MeasureMergedCoaddSourcesTask`` reading MADNESS's per-band deblended catalogs.

    ``_DefaultName`` is the parent's, so instrument config overrides for coadd measurement
    (``measureCoaddSources.py`` in an obs package) still apply.
    """

    ConfigClass = MadnessMeasureMergedCoaddSourcesConfig
