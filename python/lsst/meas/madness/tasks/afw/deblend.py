"""``MadnessDeblendAfwTask``: the MADNESS deblender on the full Rubin stack (afw I/O).

Inputs and outputs follow ``lsst.pipe.tasks.deblendCoaddSourcesPipeline.DeblendCoaddSourcesMultiTask``
(label ``deblendCoaddFootprints`` in LSSTCam DRP): the merged detections (afw ``SourceCatalog``
with Footprints and peaks) and one ``ExposureF`` coadd per band (or cell coadds and their
backgrounds, ``useCellCoadds``). The deblending itself is the pip-only task's
(`MadnessDeblendTask.deblendParents`); only the conversions differ.

Outputs, and why three
----------------------
``{outputCoaddName}Coadd_deblendedCatalog`` (tract, patch): parents (the merged detections, with
their Footprints) followed by their children, each child's Footprint being its pixels with
exactly one peak, inside its parent's. It holds no pixel values, as scarlet's catalog.

``object_parent_patch`` (tract, patch): the parents alone, as scarlet (v30) writes them for
``consolidateParentTable`` and analysis_tools' parent metrics (scarlet's ``deblendedCatalog``
holds no deblended parent; ours keeps them, the v29 / meas_deblender layout that
``SetPrimaryFlagsTask``'s meas_deblender branch reads).

``{outputCoaddName}Coadd_deblendedFlux`` (tract, patch, band; ``multiple``): the same records,
in each band, with every child's Footprint replaced by a ``HeavyFootprintF`` of that band. This
is the per-band deblender output afw measurement reads (meas_deblender's format;
``ForcedPhotCoaddTask``'s ``footprintDatasetName="DeblendedFlux"``). Scarlet instead stores its
models (``LsstScarletModelData``) and lets ``MeasureMergedCoaddSourcesTask`` rebuild the heavy
footprints per band (``doAddFootprints``); MADNESS has no scarlet models, so it writes the heavy
footprints, and `MadnessMeasureMergedCoaddSourcesTask` reads the per-band catalog instead of the
band-less one. The init-output ``{outputCoaddName}Coadd_deblendedFlux_schema`` is the name
``MeasureMergedCoaddSourcesTask`` reads its ``inputSchema`` from.

afw is imported when the task is constructed, so the module (and its connections and config)
imports on the pip-only stack too: pipelines using it can be built and their contracts checked
there.
"""

from __future__ import annotations

__all__ = ["MadnessDeblendAfwConnections", "MadnessDeblendAfwConfig", "MadnessDeblendAfwTask"]

from collections.abc import Mapping

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.utils.timer import timeMethod

from ...engine import MadnessDeblender
from ...engine.geometry import round_half_up
from ..deblend import MadnessDeblendConfig, MadnessDeblendTask
from ...units import ModelUnits
from .conventions import AFW_SKIPPED_COLUMNS, afw_fields, photocalib_scales

_TEMPLATES = {"inputCoaddName": "deep", "outputCoaddName": "deep"}

try:  # The full stack's id generator; a placeholder with its settable fields elsewhere.
    from lsst.meas.base import SkyMapIdGeneratorConfig

    _ID_GENERATOR_FIELD = SkyMapIdGeneratorConfig.make_field()
except ImportError:

    class _IdGeneratorPlaceholder(pexConfig.Config):
        """Stand-in for ``lsst.meas.base.SkyMapIdGeneratorConfig`` where meas_base is absent.

        It has the fields DRP pipelines set, so that pipelines validate; running the task needs
        the real one.
        """

        release_id = pexConfig.Field[int](default=0, doc="Data release identifier (meas_base).")
        n_releases = pexConfig.Field[int](default=1, doc="Number of data releases (meas_base).")

    _ID_GENERATOR_FIELD = pexConfig.ConfigField(
        dtype=_IdGeneratorPlaceholder, doc="Source id generator (lsst.meas.base.SkyMapIdGeneratorConfig)."
    )


class MadnessDeblendAfwConnections(
    pipeBase.PipelineTaskConnections,
    dimensions=("tract", "patch", "skymap"),
    defaultTemplates=_TEMPLATES,
):
    inputSchema = cT.InitInput(
        doc="Schema of the merged detection catalog.",
        name="{inputCoaddName}Coadd_mergeDet_schema",
        storageClass="SourceCatalog",
    )
    peakSchema = cT.InitInput(
        doc="Schema of the footprint peak catalogs.",
        name="{inputCoaddName}Coadd_peak_schema",
        storageClass="PeakCatalog",
    )
    mergedDetections = cT.Input(
        doc="Detection catalog merged across bands: parent Footprints with their peaks.",
        name="{inputCoaddName}Coadd_mergeDet",
        storageClass="SourceCatalog",
        dimensions=("tract", "patch", "skymap"),
    )
    coadds = cT.Input(
        doc="Per-band coadds to deblend.",
        name="{inputCoaddName}Coadd_calexp",
        storageClass="ExposureF",
        multiple=True,
        dimensions=("tract", "patch", "band", "skymap"),
    )
    coadds_cell = cT.Input(
        doc="Per-band cell-based coadds to deblend (useCellCoadds).",
        name="{inputCoaddName}CoaddCell",
        storageClass="MultipleCellCoadd",
        multiple=True,
        dimensions=("tract", "patch", "band", "skymap"),
    )
    backgrounds = cT.Input(
        doc="Backgrounds subtracted from the cell-based coadds (useCellCoadds).",
        name="{inputCoaddName}Coadd_calexp_background",
        storageClass="Background",
        multiple=True,
        dimensions=("tract", "patch", "band", "skymap"),
    )
    outputSchema = cT.InitOutput(
        doc="Schema of the deblended catalogs (read by MeasureMergedCoaddSourcesTask as inputSchema).",
        name="{outputCoaddName}Coadd_deblendedFlux_schema",
        storageClass="SourceCatalog",
    )
    deblendedCatalog = cT.Output(
        doc="Parents and MADNESS children with Footprints (no pixel values), flags and diagnostics.",
        name="{outputCoaddName}Coadd_deblendedCatalog",
        storageClass="SourceCatalog",
        dimensions=("tract", "patch", "skymap"),
    )
    deblendedFlux = cT.Output(
        doc="The deblended catalog in each band, every child carrying a HeavyFootprintF of that band.",
        name="{outputCoaddName}Coadd_deblendedFlux",
        storageClass="SourceCatalog",
        dimensions=("tract", "patch", "band", "skymap"),
        multiple=True,
    )

    objectParents = cT.Output(
        doc="The parents alone (the merged detections with their deblend columns and Footprints), the "
        "catalog scarlet writes as object_parent_patch for consolidateParentTable and the parent metrics.",
        name="object_parent_patch",
        storageClass="SourceCatalog",
        dimensions=("tract", "patch", "skymap"),
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config is not None:
            if config.useCellCoadds:
                del self.coadds
            else:
                del self.coadds_cell
                del self.backgrounds


class MadnessDeblendAfwConfig(MadnessDeblendConfig, pipelineConnections=MadnessDeblendAfwConnections):
    """Configuration of `MadnessDeblendAfwTask`: `MadnessDeblendConfig` plus the afw inputs."""

    useCellCoadds = pexConfig.Field[bool](
        default=False,
        doc="Deblend cell-based coadds (stitched, background subtracted) instead of ExposureF coadds, "
        "as DeblendCoaddSourcesMultiTask does.",
    )
    idGenerator = _ID_GENERATOR_FIELD

    def setDefaults(self):
        super().setDefaults()
        # Off by default on this path, whatever the pip task's default: as a drop-in for
        # deblendCoaddFootprints, the children are the merged detections' peaks unless asked
        # otherwise. On, a source the fit adds gets a new peak in its parent's footprint
        # (MadnessDeblendAfwTask._addedPeak).
        self.doResidualPeaks = False
        self.doPairSplits = False


class MadnessDeblendAfwTask(MadnessDeblendTask):
    """Deblend the merged detections of a patch with MADNESS; afw catalogs and heavy footprints out.

    Parameters
    ----------
    schema : `lsst.afw.table.Schema`, optional
        Schema of the merged detections (``initInputs["inputSchema"]`` overrides it).
    peakSchema : `lsst.afw.table.Schema`, optional
        Schema of their peaks (``initInputs["peakSchema"]`` overrides it).
    initInputs : `dict`, optional
        Init-inputs of a pipeline run.
    deblender : `MadnessDeblender`, optional
        Use this deblender rather than loading ``config.bundlePath``.
    **kwargs
        Passed to `lsst.pipe.base.PipelineTask`.
    """

    ConfigClass = MadnessDeblendAfwConfig
    _DefaultName = "madnessDeblendAfw"

    def __init__(self, schema=None, peakSchema=None, initInputs=None, deblender=None, **kwargs):
        super().__init__(initInputs=initInputs, **kwargs)
        import lsst.afw.detection as afwDet
        import lsst.afw.table as afwTable

        if initInputs is not None:
            schema = initInputs["inputSchema"].schema
            peakSchema = initInputs["peakSchema"].schema
        if schema is None:
            raise ValueError("The merged detections' schema is required (schema or initInputs).")
        self._madness = self._checkBands(deblender if deblender is not None else self._loadDeblender())
        self.schemaMapper = afwTable.SchemaMapper(schema)
        self.schemaMapper.addMinimalSchema(schema)
        self.schema = self.schemaMapper.getOutputSchema()

        # Non-minimal peak fields (merge_peak_<band>...) become source fields, filled from each
        # child's peak and from a parent's first peak, as scarlet does.
        minimalPeakSchema = afwDet.PeakTable.makeMinimalSchema()
        self.peakSchema = peakSchema if peakSchema is not None else minimalPeakSchema
        self.peakSchemaMapper = afwTable.SchemaMapper(self.peakSchema, self.schema)
        for item in self.peakSchema:
            if item.key not in minimalPeakSchema and item.field.getName() not in self.schema.getNames():
                self.peakSchemaMapper.addMapping(item.key, item.field)
                self.schema.addField(item.field)

        self.fieldKeys = {
            f.name: f.add_to(self.schema) for f in afw_fields(self._madness.bands, self._madness.latent_dim)
        }
        self.fieldTypes = {f.name: f.type for f in afw_fields(self._madness.bands, self._madness.latent_dim)}
        self.outputSchema = afwTable.SourceCatalog(self.schema)

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        inputs = butlerQC.get(inputRefs)
        mergedDetections = inputs.pop("mergedDetections")
        if self.config.useCellCoadds:
            refs = inputRefs.coadds_cell
            exposures = [mcc.stitch().asExposure() for mcc in inputs.pop("coadds_cell")]
            for exposure, background in zip(exposures, inputs.pop("backgrounds")):
                exposure.image -= background.getImage()
        else:
            refs = inputRefs.coadds
            exposures = inputs.pop("coadds")
        assert not inputs, "runQuantum got extra inputs"
        coadds = {ref.dataId["band"]: exposure for ref, exposure in zip(refs, exposures)}
        idFactory = self.config.idGenerator.apply(butlerQC.quantum.dataId).make_table_id_factory()
        outputs = self.run(coadds=coadds, mergedDetections=mergedDetections, idFactory=idFactory)
        butlerQC.put(outputs.deblendedCatalog, outputRefs.deblendedCatalog)
        butlerQC.put(outputs.objectParents, outputRefs.objectParents)
        for ref in outputRefs.deblendedFlux:
            if (band := ref.dataId["band"]) in outputs.deblendedFlux:
                butlerQC.put(outputs.deblendedFlux[band], ref)

    @timeMethod
    def run(
        self,
        coadds: Mapping[str, object],
        mergedDetections,
        idFactory=None,
        deblender: MadnessDeblender | None = None,
    ) -> pipeBase.Struct:
        """Deblend all parents of a patch.

        Parameters
        ----------
        coadds : mapping [`str`, `lsst.afw.image.ExposureF`]
            Coadd of each band; every band of the model must be present, others are ignored.
        mergedDetections : `lsst.afw.table.SourceCatalog`
            Parent Footprints with their peaks (``inputSchema``).
        idFactory : `lsst.afw.table.IdFactory`, optional
            Source ids of the children; a simple one (after the largest parent id) by default.
        deblender : `MadnessDeblender`, optional
            Use this deblender instead of the task's.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``deblendedCatalog`` (`lsst.afw.table.SourceCatalog`, parents then children, sorted
            by parent), ``deblendedFlux`` (`dict` band -> `lsst.afw.table.SourceCatalog`, the
            same records with each child's ``HeavyFootprintF`` in that band) and
            ``objectParents`` (`lsst.afw.table.SourceCatalog`, a deep copy of the parents).

        Raises
        ------
        MadnessMissingBandError
            A band of the model has no coadd.
        MadnessValueError
            ``config.bands`` differ from the bundle's.
        MadnessUnitError
            A coadd without ``PhotoCalib`` while ``config.inputUnit`` is None, a spatially varying
            ``PhotoCalib``, or a bundle that does not record its units
            (`lsst.meas.madness.tasks.afw.conventions.photocalib_scales`).
        """
        from .convert import coadd_from_exposures, parents_from_catalog

        deblender = self._checkBands(deblender if deblender is not None else self._madness)
        bands = deblender.bands
        coadd = coadd_from_exposures(
            coadds, bands, self.config.badMask, keep_planes=list(self.config.maskLimits)
        )
        extra = sorted(set(coadds) - set(bands))
        if extra:
            self.log.info("Ignoring coadds of bands %s, which the model does not use", extra)
        # Pixels -> nJy through each band's PhotoCalib -> the model's electrons; back after the fit.
        scale = photocalib_scales(
            {band: coadds[band].getPhotoCalib() for band in bands},
            bands,
            ModelUnits.from_deblender(deblender),
            self.config.inputUnit,
        )
        sources = self._makeSourceCatalog(mergedDetections, idFactory)
        parents, peaks = parents_from_catalog(sources)
        result = self.deblendInModelUnits(coadd, parents, deblender, scale, unit_name="PhotoCalib units")
        children = self._fillCatalog(sources, result, peaks, bands)
        fluxCatalogs = {
            band: self._bandCatalog(sources, children, result, b, coadds[band])
            for b, band in enumerate(bands)
        }
        objectParents = type(sources)(sources.table.clone())
        objectParents.extend([r for r in sources if r.getParent() == 0], deep=True)
        return pipeBase.Struct(deblendedCatalog=sources, deblendedFlux=fluxCatalogs, objectParents=objectParents)

    # --- helpers ---------------------------------------------------------------------------

    def _makeSourceCatalog(self, mergedDetections, idFactory):
        """Parents: the merged detections mapped to the output schema, ids kept."""
        import lsst.afw.table as afwTable

        if idFactory is None:
            idFactory = afwTable.IdFactory.makeSimple()
        if len(mergedDetections):
            # Ids of the merged detections may have gaps; children's ids start after the largest.
            idFactory.notify(int(np.max(mergedDetections["id"])))
        table = afwTable.SourceTable.make(self.schema, idFactory)
        sources = afwTable.SourceCatalog(table)
        sources.extend(mergedDetections, self.schemaMapper)
        return sources

    def _set(self, record, name: str, value) -> None:
        kind = self.fieldTypes[name]
        if kind in ("I", "L"):
            value = int(value)
        elif kind in ("F", "D"):
            value = float(value)
        elif kind == "Flag":
            value = bool(value)
        elif kind == "ArrayF":
            value = np.asarray(value, dtype=np.float32)
        else:
            value = str(value)
        record.set(self.fieldKeys[name], value)

    def _fillCatalog(self, sources, result, peaks, bands) -> dict[int, tuple[object, int]]:
        """Write the parents' columns and append the children; return key -> (child record, index)."""
        from .convert import child_footprint

        rowById = {row["id"]: row for row in result.parentRows}
        parentById = {int(r.getId()): r for r in sources if r.getParent() == 0}
        for record in list(sources):
            fp = record.getFootprint()
            if fp is not None and len(fp.getPeaks()):
                record.assign(fp.getPeaks()[0], self.peakSchemaMapper)
            row = rowById.get(int(record.getId()))
            if row is None:
                continue
            for name, value in row.items():
                if name not in AFW_SKIPPED_COLUMNS and name != "deblend_peakId" and name in self.fieldKeys:
                    self._set(record, name, value)

        children = {}
        # SourceCatalog.getChildren needs the catalog sorted by parent: parents (0) come first,
        # children follow grouped by increasing parent id.
        order = sorted(range(len(result.childRows)), key=lambda i: result.childRows[i]["parent"])
        for i in order:
            row = result.childRows[i]
            key = int(row["id"])
            if key in peaks:
                parentRecord, peak = peaks[key]
            else:  # a source the fit added (residual peak, second member of a split pair)
                parentRecord = parentById[int(row["parent"])]
                peak = self._addedPeak(parentRecord, row, result.heavyFootprints[key], result.heavyValues[key])
            parentRow = rowById[int(parentRecord.getId())]
            child = sources.addNew()
            child.assign(peak, self.peakSchemaMapper)
            child.setParent(parentRecord.getId())
            child.setFootprint(child_footprint(result.heavyFootprints[key], peak, self.peakSchema))
            for name, value in row.items():
                if name in AFW_SKIPPED_COLUMNS or name not in self.fieldKeys:
                    continue
                self._set(child, name, int(peak.getId()) if name == "deblend_peakId" else value)
            self._set(child, "deblend_parentNPeaks", parentRow.get("deblend_nPeaks", 0))
            self._set(child, "deblend_parentNChild", parentRow.get("deblend_nChild", 0))
            self._set(child, "deblend_blendId", parentRecord.getId())
            self._set(child, "deblend_blendNChild", parentRow.get("deblend_nChild", 0))
            children[key] = child
        return children

    def _addedPeak(self, parentRecord, row, footprint, values):
        """A new peak in ``parentRecord``'s footprint for a source the fit added.

        Detection gave such a source no peak, but a child's afw footprint holds exactly one, and
        its parent's footprint holds its children's peaks (``deblend_peakId`` points into it). The
        peak sits at the centre the child's model is drawn at (``deblend_center_x/y``), its id
        follows the footprint's largest, and its value is the child's band-summed model there
        (0 if that pixel is outside the child's footprint). The parent keeps the detection's
        ``deblend_nPeaks``; the child's ``deblend_residualPeak`` / ``deblend_pairSplit`` say why it
        was added.
        """
        import lsst.afw.detection as afwDet

        # A new footprint for the parent: the output records share the input's footprints, and
        # the merged detections handed to run() must not change.
        old = parentRecord.getFootprint()
        fp = afwDet.Footprint(old.getSpans(), old.getPeaks().getSchema())
        peaks = fp.getPeaks()
        for p in old.getPeaks():
            peaks.addNew().assign(p)
        parentRecord.setFootprint(fp)
        fx, fy = float(row["deblend_center_x"]), float(row["deblend_center_y"])
        ix, iy = (int(v) for v in round_half_up(np.array([fx, fy])))
        at = _pixel_index(footprint, iy, ix)
        newId = 1 + max((int(p.getId()) for p in peaks), default=0)
        peak = peaks.addNew()
        peak.setId(newId)
        peak.setFx(fx)
        peak.setFy(fy)
        peak.setIx(ix)
        peak.setIy(iy)
        peak.setPeakValue(float(np.sum(values[:, at])) if at is not None else 0.0)
        return peak

    def _bandCatalog(self, sources, children, result, b: int, exposure):
        """A deep copy of the catalog whose children carry their ``HeavyFootprintF`` in band ``b``."""
        from .convert import footprint_data_coverage, heavy_footprint

        out = sources.copy(deep=True)
        # A deep copy keeps the record order; find records by position, not by (sorted) id.
        index = {int(r.getId()): i for i, r in enumerate(sources)}
        for key, child in children.items():
            record = out[index[int(child.getId())]]
            footprint, values = result.heavyFootprints[key], result.heavyValues[key][b]
            record.setFootprint(heavy_footprint(child.getFootprint(), footprint, values, exposure))
            self._set(record, "deblend_zeroFlux", not np.any(values != 0))
            peak = child.getFootprint().getPeaks()[0]
            at = _pixel_index(footprint, peak.getIy(), peak.getIx())
            self._set(record, "deblend_peak_instFlux", values[at] if at is not None else np.nan)
        for record in out:
            footprint = record.getFootprint()
            if footprint is not None:
                self._set(record, "deblend_dataCoverage", footprint_data_coverage(footprint, exposure))
        return out


def _pixel_index(footprint, y: int, x: int) -> int | None:
    """Index of pixel ``(y, x)`` in ``footprint.pixels()`` order (that of its values), or `None`."""
    ys, xs = footprint.pixels()
    at = np.flatnonzero((ys == y) & (xs == x))
    return int(at[0]) if len(at) else None
