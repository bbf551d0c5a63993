"""Stand-ins for the DRP tasks around the coadd deblender, for pipeline-building tests only.

drp_pipe, pipe_tasks and drp_tasks are not installable from PyPI, so a DRP pipeline cannot be
built here. These classes declare the connections (attribute names, default dataset names,
storage classes, dimensions, ``multiple``) and the config fields that the LSSTCam DRP pipeline
and ``pipelines/DRP-madness.yaml`` touch, with the same config-dependent connection removals, as
read from lsst/pipe_tasks 5b638a4 (multiBand.py, deblendCoaddSourcesPipeline.py, mergeDetections.py,
mergeMeasurements.py, postprocess.py) and lsst/drp_tasks dc28b94 (forcedPhotCoadd.py). They have
no algorithm: ``run`` is not defined. ``tests/data/drp_mimic/pipelines/LSSTCam/DRP.yaml`` wires
them with the labels and dataset names of drp_pipe's LSSTCam DRP (base-v2.yaml).
"""

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

_T = {"inputCoaddName": "deep", "outputCoaddName": "deep"}
_PATCH = ("tract", "patch", "skymap")
_BAND = ("tract", "patch", "band", "skymap")


class IdGeneratorStandIn(pexConfig.Config):
    release_id = pexConfig.Field[int](default=0, doc="Data release id.")
    n_releases = pexConfig.Field[int](default=1, doc="Number of releases.")


def _task(name, connections, **fields):
    """Config and task classes for a connections class; ``fields`` are extra config fields."""
    namespace = {"idGenerator": pexConfig.ConfigField(dtype=IdGeneratorStandIn, doc="Ids.")}
    namespace.update(fields)
    config = type(f"{name}Config", (pipeBase.PipelineTaskConfig,), namespace, pipelineConnections=connections)
    task = type(f"{name}Task", (pipeBase.PipelineTask,), {"ConfigClass": config, "_DefaultName": name})
    return config, task


def _cells_field():
    return pexConfig.Field[bool](default=False, doc="Use cell-based coadds.")


# --- detectCoaddPeaks (DetectCoaddSourcesTask) ---------------------------------------------------
class DetectCoaddSourcesConnections(pipeBase.PipelineTaskConnections, dimensions=_BAND, defaultTemplates=_T):
    detectionSchema = cT.InitOutput(name="{outputCoaddName}Coadd_det_schema", storageClass="SourceCatalog")
    exposure = cT.Input(name="{inputCoaddName}Coadd", storageClass="ExposureF", dimensions=_BAND)
    exposure_cells = cT.Input(
        name="{inputCoaddName}CoaddCell", storageClass="MultipleCellCoadd", dimensions=_BAND
    )
    outputBackgrounds = cT.Output(
        name="{outputCoaddName}Coadd_calexp_background", storageClass="Background", dimensions=_BAND
    )
    outputSources = cT.Output(
        name="{outputCoaddName}Coadd_det", storageClass="SourceCatalog", dimensions=_BAND
    )
    outputExposure = cT.Output(
        name="{outputCoaddName}Coadd_calexp", storageClass="ExposureF", dimensions=_BAND
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config.useCellCoadds:
            del self.exposure
        else:
            del self.exposure_cells


DetectCoaddSourcesConfig, DetectCoaddSourcesTask = _task(
    "detectCoaddSources", DetectCoaddSourcesConnections, useCellCoadds=_cells_field()
)


# --- mergeObjectDetection (MergeDetectionsTask) -------------------------------------------------
class MergeDetectionsConnections(pipeBase.PipelineTaskConnections, dimensions=_PATCH, defaultTemplates=_T):
    schema = cT.InitInput(name="{inputCoaddName}Coadd_det_schema", storageClass="SourceCatalog")
    outputSchema = cT.InitOutput(name="{outputCoaddName}Coadd_mergeDet_schema", storageClass="SourceCatalog")
    outputPeakSchema = cT.InitOutput(name="{outputCoaddName}Coadd_peak_schema", storageClass="PeakCatalog")
    catalogs = cT.Input(
        name="{inputCoaddName}Coadd_det", storageClass="SourceCatalog", dimensions=_BAND, multiple=True
    )
    outputCatalog = cT.Output(
        name="{outputCoaddName}Coadd_mergeDet", storageClass="SourceCatalog", dimensions=_PATCH
    )


MergeDetectionsConfig, MergeDetectionsTask = _task("mergeCoaddDetections", MergeDetectionsConnections)


# --- deconvolve (DeconvolveExposureTask, meas_extensions_scarlet) --------------------------------
class DeconvolveExposureConnections(pipeBase.PipelineTaskConnections, dimensions=_BAND, defaultTemplates=_T):
    coadd = cT.Input(name="{inputCoaddName}Coadd_calexp", storageClass="ExposureF", dimensions=_BAND)
    coadd_cell = cT.Input(
        name="{inputCoaddName}CoaddCell", storageClass="MultipleCellCoadd", dimensions=_BAND
    )
    background = cT.Input(
        name="{inputCoaddName}Coadd_calexp_background", storageClass="Background", dimensions=_BAND
    )
    catalog = cT.Input(name="{inputCoaddName}Coadd_mergeDet", storageClass="SourceCatalog", dimensions=_PATCH)
    deconvolved = cT.Output(
        name="deconvolved_{outputCoaddName}_coadd", storageClass="ExposureF", dimensions=_BAND
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config.useCellCoadds:
            del self.coadd
        else:
            del self.coadd_cell
            del self.background


DeconvolveExposureConfig, DeconvolveExposureTask = _task(
    "deconvolveExposure", DeconvolveExposureConnections, useCellCoadds=_cells_field()
)


# --- deblendCoaddFootprints (DeblendCoaddSourcesMultiTask + scarlet) ----------------------------
class DeblendCoaddSourcesMultiConnections(
    pipeBase.PipelineTaskConnections, dimensions=_PATCH, defaultTemplates=_T
):
    inputSchema = cT.InitInput(name="{inputCoaddName}Coadd_mergeDet_schema", storageClass="SourceCatalog")
    peakSchema = cT.InitInput(name="{inputCoaddName}Coadd_peak_schema", storageClass="PeakCatalog")
    mergedDetections = cT.Input(
        name="{inputCoaddName}Coadd_mergeDet", storageClass="SourceCatalog", dimensions=_PATCH
    )
    coadds = cT.Input(
        name="{inputCoaddName}Coadd_calexp", storageClass="ExposureF", multiple=True, dimensions=_BAND
    )
    coadds_cell = cT.Input(
        name="{inputCoaddName}CoaddCell", storageClass="MultipleCellCoadd", multiple=True, dimensions=_BAND
    )
    backgrounds = cT.Input(
        name="{inputCoaddName}Coadd_calexp_background",
        storageClass="Background",
        multiple=True,
        dimensions=_BAND,
    )
    deconvolvedCoadds = cT.Input(
        name="deconvolved_{inputCoaddName}_coadd", storageClass="ExposureF", multiple=True, dimensions=_BAND
    )
    outputSchema = cT.InitOutput(
        name="{outputCoaddName}Coadd_deblendedFlux_schema", storageClass="SourceCatalog"
    )
    deblendedCatalog = cT.Output(
        name="{outputCoaddName}Coadd_deblendedCatalog", storageClass="SourceCatalog", dimensions=_PATCH
    )
    scarletModelData = cT.Output(
        name="{outputCoaddName}Coadd_scarletModelData", storageClass="LsstScarletModelData", dimensions=_PATCH
    )
    objectParents = cT.Output(name="object_parent_patch", storageClass="SourceCatalog", dimensions=_PATCH)

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config.useCellCoadds:
            del self.coadds
        else:
            del self.coadds_cell
            del self.backgrounds


DeblendCoaddSourcesMultiConfig, DeblendCoaddSourcesMultiTask = _task(
    "deblendCoaddSourcesMulti", DeblendCoaddSourcesMultiConnections, useCellCoadds=_cells_field()
)


# --- measureObjectUnforced (MeasureMergedCoaddSourcesTask) ---------------------------------------
class MeasureMergedCoaddSourcesConnections(
    pipeBase.PipelineTaskConnections, dimensions=_BAND, defaultTemplates=_T
):
    inputSchema = cT.InitInput(
        name="{inputCoaddName}Coadd_deblendedFlux_schema", storageClass="SourceCatalog"
    )
    outputSchema = cT.InitOutput(name="{inputCoaddName}Coadd_meas_schema", storageClass="SourceCatalog")
    exposure = cT.Input(name="{inputCoaddName}Coadd_calexp", storageClass="ExposureF", dimensions=_BAND)
    exposure_cells = cT.Input(
        name="{inputCoaddName}CoaddCell", storageClass="MultipleCellCoadd", dimensions=_BAND
    )
    background = cT.Input(
        name="{inputCoaddName}Coadd_calexp_background", storageClass="Background", dimensions=_BAND
    )
    skyMap = cT.Input(name="skyMap", storageClass="SkyMap", dimensions=("skymap",))
    sourceTableHandles = cT.Input(
        name="sourceTable_visit",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit"),
        multiple=True,
        deferLoad=True,
    )
    finalizedSourceTableHandles = cT.Input(
        name="finalized_src_table",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit"),
        multiple=True,
        deferLoad=True,
    )
    finalVisitSummaryHandles = cT.Input(
        name="finalVisitSummary",
        storageClass="ExposureCatalog",
        dimensions=("instrument", "visit"),
        multiple=True,
        deferLoad=True,
    )
    scarletCatalog = cT.Input(
        name="{inputCoaddName}Coadd_deblendedCatalog", storageClass="SourceCatalog", dimensions=_PATCH
    )
    scarletModels = cT.Input(
        name="{inputCoaddName}Coadd_scarletModelData", storageClass="LsstScarletModelData", dimensions=_PATCH
    )
    outputSources = cT.Output(
        name="{outputCoaddName}Coadd_meas", storageClass="SourceCatalog", dimensions=_BAND
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if not config.doPropagateFlags:
            del self.sourceTableHandles
            del self.finalizedSourceTableHandles
            del self.finalVisitSummaryHandles
        if not config.doAddFootprints:
            del self.scarletModels
        if config.useCellCoadds:
            del self.exposure
        else:
            del self.exposure_cells
            del self.background


MeasureMergedCoaddSourcesConfig, MeasureMergedCoaddSourcesTask = _task(
    "measureCoaddSources",
    MeasureMergedCoaddSourcesConnections,
    doAddFootprints=pexConfig.Field[bool](default=True, doc="Add footprints from scarlet models."),
    doConserveFlux=pexConfig.Field[bool](default=True, doc="Redistribute the image flux."),
    doStripFootprints=pexConfig.Field[bool](default=True, doc="Strip children's footprints on output."),
    useCellCoadds=_cells_field(),
    doPropagateFlags=pexConfig.Field[bool](default=True, doc="Propagate visit flags."),
)


# --- mergeObjectMeasurement (MergeMeasurementsTask) ---------------------------------------------
class MergeMeasurementsConnections(pipeBase.PipelineTaskConnections, dimensions=_PATCH, defaultTemplates=_T):
    inputSchema = cT.InitInput(name="{inputCoaddName}Coadd_meas_schema", storageClass="SourceCatalog")
    outputSchema = cT.InitOutput(name="{outputCoaddName}Coadd_ref_schema", storageClass="SourceCatalog")
    catalogs = cT.Input(
        name="{inputCoaddName}Coadd_meas", storageClass="SourceCatalog", multiple=True, dimensions=_BAND
    )
    mergedCatalog = cT.Output(
        name="{outputCoaddName}Coadd_ref", storageClass="SourceCatalog", dimensions=_PATCH
    )


MergeMeasurementsConfig, MergeMeasurementsTask = _task("mergeCoaddMeasurements", MergeMeasurementsConnections)


# --- measureObjectForced (ForcedPhotCoaddTask, drp_tasks) ---------------------------------------
class ForcedPhotCoaddConnections(pipeBase.PipelineTaskConnections, dimensions=_BAND, defaultTemplates=_T):
    inputSchema = cT.InitInput(name="{inputCoaddName}Coadd_ref_schema", storageClass="SourceCatalog")
    outputSchema = cT.InitOutput(
        name="{outputCoaddName}Coadd_forced_src_schema", storageClass="SourceCatalog"
    )
    exposure = cT.Input(name="{inputCoaddName}Coadd_calexp", storageClass="ExposureF", dimensions=_BAND)
    exposure_cell = cT.Input(
        name="{inputCoaddName}CoaddCell", storageClass="MultipleCellCoadd", dimensions=_BAND
    )
    background = cT.Input(
        name="{inputCoaddName}Coadd_calexp_background", storageClass="Background", dimensions=_BAND
    )
    refCat = cT.Input(name="{inputCoaddName}Coadd_ref", storageClass="SourceCatalog", dimensions=_PATCH)
    refCatInBand = cT.Input(name="{inputCoaddName}Coadd_meas", storageClass="SourceCatalog", dimensions=_BAND)
    footprintCatInBand = cT.Input(
        name="{inputCoaddName}Coadd_deblendedFlux", storageClass="SourceCatalog", dimensions=_BAND
    )
    scarletModels = cT.Input(
        name="{inputCoaddName}Coadd_scarletModelData", storageClass="LsstScarletModelData", dimensions=_PATCH
    )
    measCat = cT.Output(
        name="{outputCoaddName}Coadd_forced_src", storageClass="SourceCatalog", dimensions=_BAND
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config.footprintDatasetName != "LsstScarletModelData":
            del self.scarletModels
        if config.footprintDatasetName != "DeblendedFlux":
            del self.footprintCatInBand
        if config.useCellCoadds:
            del self.exposure
        else:
            del self.exposure_cell
            del self.background


ForcedPhotCoaddConfig, ForcedPhotCoaddTask = _task(
    "forcedPhotCoadd",
    ForcedPhotCoaddConnections,
    footprintDatasetName=pexConfig.Field[str](
        default="LsstScarletModelData", optional=True, doc="Dataset of the (heavy) footprints."
    ),
    useCellCoadds=_cells_field(),
)


# --- MultiProFit (meas_extensions_multiprofit) ---------------------------------------------------
class MultiProFitCoaddPsfFitConnections(
    pipeBase.PipelineTaskConnections, dimensions=_BAND, defaultTemplates=_T
):
    cat_meas = cT.Input(name="{inputCoaddName}Coadd_meas", storageClass="SourceCatalog", dimensions=_BAND)
    coadd = cT.Input(name="{inputCoaddName}Coadd_calexp", storageClass="ExposureF", dimensions=_BAND)
    cat_output = cT.Output(
        name="{outputCoaddName}Coadd_psfs_multiprofit", storageClass="ArrowTable", dimensions=_BAND
    )


MultiProFitCoaddPsfFitConfig, MultiProFitCoaddPsfFitTask = _task(
    "multiProFitPsf", MultiProFitCoaddPsfFitConnections
)


class MultiProFitCoaddFitConnections(
    pipeBase.PipelineTaskConnections, dimensions=_PATCH, defaultTemplates=_T
):
    cat_ref = cT.Input(name="{inputCoaddName}Coadd_ref", storageClass="SourceCatalog", dimensions=_PATCH)
    cats_meas = cT.Input(
        name="{inputCoaddName}Coadd_meas", storageClass="SourceCatalog", multiple=True, dimensions=_BAND
    )
    models_scarlet = cT.Input(
        name="{inputCoaddName}Coadd_scarletModelData", storageClass="LsstScarletModelData", dimensions=_PATCH
    )
    cat_output = cT.Output(
        name="{outputCoaddName}Coadd_multiprofit", storageClass="ArrowTable", dimensions=_PATCH
    )


MultiProFitCoaddFitConfig, MultiProFitCoaddFitTask = _task("multiProFitFit", MultiProFitCoaddFitConnections)


# --- rewriteObject / standardizeObject (postprocess) ---------------------------------------------
class WriteObjectTableConnections(pipeBase.PipelineTaskConnections, dimensions=_PATCH, defaultTemplates=_T):
    inputCatalogMeas = cT.Input(
        name="{inputCoaddName}Coadd_meas", storageClass="SourceCatalog", multiple=True, dimensions=_BAND
    )
    inputCatalogForcedSrc = cT.Input(
        name="{inputCoaddName}Coadd_forced_src", storageClass="SourceCatalog", multiple=True, dimensions=_BAND
    )
    inputCatalogPsfsMultiprofit = cT.Input(
        name="{inputCoaddName}Coadd_psfs_multiprofit",
        storageClass="ArrowTable",
        multiple=True,
        dimensions=_BAND,
    )
    outputCatalog = cT.Output(name="{outputCoaddName}Coadd_obj", storageClass="DataFrame", dimensions=_PATCH)


WriteObjectTableConfig, WriteObjectTableTask = _task("writeObjectTable", WriteObjectTableConnections)


class TransformObjectCatalogConnections(
    pipeBase.PipelineTaskConnections, dimensions=_PATCH, defaultTemplates=_T
):
    inputCatalog = cT.Input(name="{inputCoaddName}Coadd_obj", storageClass="DataFrame", dimensions=_PATCH)
    inputCatalogExpMultiprofit = cT.Input(
        name="{inputCoaddName}Coadd_Exp_multiprofit", storageClass="ArrowAstropy", dimensions=_PATCH
    )
    inputCatalogSersicMultiprofit = cT.Input(
        name="{inputCoaddName}Coadd_Sersic_multiprofit", storageClass="ArrowAstropy", dimensions=_PATCH
    )
    outputCatalog = cT.Output(name="objectTable", storageClass="ArrowAstropy", dimensions=_PATCH)


TransformObjectCatalogConfig, TransformObjectCatalogTask = _task(
    "transformObjectCatalog", TransformObjectCatalogConnections
)
