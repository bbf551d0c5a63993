"""``MadnessDeblendTask``: the MADNESS deblender as a Rubin PipelineTask (pip-only I/O path).

Inputs are lsst.images coadds (one per band) and the detection table + span table written by
`MadnessDetectionTask` (see `lsst.meas.madness.tasks.footprints` for the formats). Outputs are a
deblended catalog (parents and children, afw/scarlet column conventions plus MADNESS's latents,
log-prior, chi^2, iterations) and, per band, a heavy-footprint table.

The task loops; the algorithm lives in `lsst.meas.madness.tasks.blends` (fit region, neighbours,
children) and in the engine (`MadnessDeblender.deblend_batch`, many parents per call).
"""

from __future__ import annotations

__all__ = ["MadnessDeblendConnections", "MadnessDeblendConfig", "MadnessDeblendTask", "load_deblender"]

import functools
import time
from collections.abc import Mapping

import numpy as np
from astropy.table import Table

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.utils.logging import PeriodicLogger
from lsst.utils.timer import timeMethod

from ..engine import MadnessDeblender, MapSettings, prepare_blend
from ..engine.geometry import peaks_to_pixels
from ..errors import MadnessValueError
from ..units import ModelUnits, parse_unit, resolve_unit
from .blends import BlendPlan, ParentFootprint, plan_blend, split_blend
from .catalogs import deblend_columns, make_table
from .coadds import DEFAULT_BAD_MASK_PLANES, MultibandCoadd
from .footprints import Footprint, footprints_from_table, heavy_footprints_to_table
from .model_dataset import MODEL_DATASET_TYPE, MODEL_STORAGE_CLASS

_TEMPLATES = {"inputCoaddName": "deep", "outputCoaddName": "deep", "modelName": MODEL_DATASET_TYPE}
# Errors that must stop the patch even with catchFailures (meas_base's FATAL_EXCEPTIONS idea).
_FATAL = (MemoryError, KeyboardInterrupt)


@functools.lru_cache(maxsize=2)
def load_deblender(path: str | None) -> MadnessDeblender:
    """The deblender of a bundle, loaded once per process (`None`: the packaged default bundle)."""
    return MadnessDeblender.from_bundle(path)


# Deblenders built from butler model datasets, by dataset id: quanta of one process share them,
# as they share `load_deblender`'s (a task instance may be made per quantum).
_BUTLER_DEBLENDERS: dict = {}


class MadnessDeblendConnections(
    pipeBase.PipelineTaskConnections,
    dimensions=("tract", "patch", "skymap"),
    defaultTemplates=_TEMPLATES,
):
    coadds = cT.Input(
        doc="Per-band coadds (lsst.images MaskedImage or CellCoadd) to deblend.",
        name="{inputCoaddName}Coadd_calexp",
        storageClass="MaskedImageV2",
        dimensions=("tract", "patch", "band", "skymap"),
        multiple=True,
    )
    detections = cT.Input(
        doc="Parent footprints and their peaks (MadnessDetectionTask).",
        name="{inputCoaddName}Coadd_madnessDet",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
    )
    detectionSpans = cT.Input(
        doc="Spans of the parent footprints.",
        name="{inputCoaddName}Coadd_madnessDet_spans",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
    )
    deblendedCatalog = cT.Output(
        doc="Parents and deblended children with deblend flags, MADNESS latents and diagnostics.",
        name="{outputCoaddName}Coadd_madnessDeblendedCatalog",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
    )
    deblendedFlux = cT.Output(
        doc="Heavy footprints of parents (observed pixels) and children, one table per band.",
        name="{outputCoaddName}Coadd_madnessDeblendedFlux",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "band", "skymap"),
        multiple=True,
    )
    model = cT.PrerequisiteInput(
        doc="MADNESS model bundle stored in the butler (modelSource='butler'; ingest one with "
        "lsst.meas.madness.tasks.put_model).",
        name="{modelName}",
        storageClass=MODEL_STORAGE_CLASS,
        dimensions=(),
        deferLoad=True,
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if getattr(config, "modelSource", "package") != "butler":
            del self.model


class MadnessDeblendConfig(pipeBase.PipelineTaskConfig, pipelineConnections=MadnessDeblendConnections):
    """Configuration of `MadnessDeblendTask`."""

    # Model
    bundlePath = pexConfig.Field[str](
        default=None,
        optional=True,
        doc="Directory of the MADNESS model bundle; None for the packaged default LSST bundle. "
        "Ignored when modelSource is 'butler'.",
    )
    modelSource = pexConfig.ChoiceField[str](
        default="package",
        allowed={
            "package": "bundlePath if set, else the packaged default LSST bundle",
            "path": "the bundle directory bundlePath (required)",
            "butler": "the prerequisite input dataset 'model' (connections.modelName, default "
            "madnessModel; dimensions ()), loaded once per process",
        },
        doc="Where the model comes from.",
    )
    bands = pexConfig.ListField[str](
        default=["u", "g", "r", "i", "z", "y"],
        doc="Bands of the model's channels, in the model's order; checked against the bundle. "
        "A coadd of each is required (a missing band is an error); other bands are ignored.",
    )
    # Size restrictions
    maxNumberOfPeaks = pexConfig.Field[int](
        default=50,
        doc="Skip parents with more peaks than this (flag deblend_tooManyPeaks) (<= 0: unlimited). "
        "All peaks of a parent are fitted jointly, so memory and time grow with it.",
    )
    maxFootprintArea = pexConfig.Field[int](
        default=250_000,
        doc="Skip parents whose footprint covers more pixels than this (flag deblend_parentTooBig) "
        "(<= 0: unlimited); large footprints are usually artefacts or bright-star halos.",
    )
    # Failure modes
    catchFailures = pexConfig.Field[bool](
        default=True,
        doc="Catch an error of one blend, flag its parent deblend_failed (deblend_error names the "
        "error) and go on; False re-raises (debugging).",
    )
    processSingles = pexConfig.Field[bool](
        default=True,
        doc="Deblend parents with a single peak too (one child with latents and a model); False "
        "leaves them undeblended with deblend_isolatedParent.",
    )
    inputUnit = pexConfig.Field[str](
        default=None,
        optional=True,
        doc="Unit of coadds that carry none (an astropy unit string: 'nJy', 'electron' for the "
        "model's own electrons, 'ct'/'adu' for counts with the model's gain). None requires the "
        "coadds to carry a unit (lsst.images unit; afw PhotoCalib), and a coadd without one is an "
        "error. A coadd's own unit always wins; one that differs from inputUnit is an error. Image "
        "and variance are converted into the model's units (electrons over the training exposure "
        "time, from the bundle's conditions) before the fit, and models, footprint values and "
        "fluxes back into the coadd's units.",
    )
    badMask = pexConfig.ListField[str](
        default=list(DEFAULT_BAD_MASK_PLANES),
        doc="Mask planes whose pixels get zero weight; names a coadd lacks are skipped. Non-finite "
        "pixels and variance <= 0 always get zero weight.",
    )
    # Neighbours
    includeNeighbors = pexConfig.Field[bool](
        default=True,
        doc="Fit peaks of other parents that fall in a blend's stamps together with it (their models "
        "are dropped), so that their flux is not given to this blend's children.",
    )
    maxNeighbors = pexConfig.Field[int](default=20, doc="Most neighbours added to one blend, nearest first.")
    # Children
    modelSupportThreshold = pexConfig.Field[float](
        default=0.05,
        doc="A child's footprint is the parent's pixels where its band-summed model exceeds this "
        "many times the band-summed pixel noise (>= 0), plus its peak pixel.",
    )
    conserveFlux = pexConfig.Field[bool](
        default=True,
        doc="Children's pixel values: the observed flux shared in proportion to the models, as scarlet "
        "does (True), or the models themselves (False).",
    )
    # MAP settings (lsst.meas.madness.MapSettings; paper section 3.5)
    maxIter = pexConfig.Field[int](default=200, doc="Most MAP steps per blend.")
    minIter = pexConfig.Field[int](default=40, doc="Steps before the stopping rule may stop a blend.")
    relativeError = pexConfig.Field[float](
        default=0.05,
        doc="Stop when the objective's EWMA fell over the last ewmaWindow steps by less than this "
        "fraction of its fall over the first ewmaWindow steps.",
    )
    ewmaWindow = pexConfig.Field[int](default=15, doc="Window (steps) of the objective's moving average.")
    learningRate = pexConfig.Field[float](default=0.05, doc="Initial Adam step in latent units.")
    learningRateDecay = pexConfig.Field[float](
        default=0.8, doc="Factor on the learning rate every learningRateDecaySteps."
    )
    learningRateDecaySteps = pexConfig.Field[int](default=30, doc="Steps between learning-rate decays.")
    priorWeight = pexConfig.Field[float](default=1.0, doc="Weight of the flow log-prior (1: the posterior).")
    fitPositionOffsets = pexConfig.Field[bool](
        default=False,
        doc="Fit a position offset per source with its latents, for peaks that are not the galaxies' "
        "centres; the fitted centre is the catalog's deblend_center_x/y. Off by default: measured with "
        "the packaged model on off-grid TestFields it did not improve on the peaks (doc/engine.md).",
    )
    maxPositionOffset = pexConfig.Field[float](
        default=1.0, doc="Bound on each fitted offset component (pixels, > 0 and <= 3)."
    )
    positionOffsetSigma = pexConfig.Field[float](
        default=0.5, doc="Width of the Gaussian prior on the fitted offsets (pixels, > 0)."
    )
    # Where it computes
    kerasBackend = pexConfig.ChoiceField[str](
        default=None,
        optional=True,
        allowed={"tensorflow": "TensorFlow", "jax": "JAX"},
        doc="Keras backend the task must run on; None accepts the process's. Keras fixes its backend "
        "at import from KERAS_BACKEND, so this checks it (clear error) rather than switching it.",
    )
    device = pexConfig.Field[str](
        default=None,
        optional=True,
        doc="Device for the networks: 'cpu', 'gpu' or 'gpu:N'; None lets the backend choose.",
    )
    # Batching
    batchSize = pexConfig.Field[int](
        default=64, doc="Parents per deblend_batch call (bounds the memory of results held at once)."
    )
    batchSources = pexConfig.Field[int](
        default=256,
        doc="Most padded sources in one compiled MAP step (memory bound, ~4 MB per source for the "
        "paper-size decoder).",
    )
    precision = pexConfig.ChoiceField[str](
        default="float32",
        allowed={
            "float32": "float32 throughout",
            "mixed_bfloat16": "the decoder of the MAP steps computes in bfloat16 (float32 weights, "
            "objective and optimiser): about half the step time on CPUs with AMX-BF16 and on GPUs, "
            "the same fluxes on validation fields (doc/benchmarks.md); slower where bfloat16 is "
            "emulated",
        },
        doc="Compute precision of the MAP steps (MapSettings.precision).",
    )

    def validate(self):
        super().validate()
        if len(set(self.bands)) != len(self.bands) or not self.bands:
            raise pexConfig.FieldValidationError(
                MadnessDeblendConfig.bands, self, "bands must be unique and non-empty."
            )
        if self.modelSource == "path" and not self.bundlePath:
            raise pexConfig.FieldValidationError(
                MadnessDeblendConfig.modelSource, self, "modelSource='path' needs bundlePath."
            )
        if self.inputUnit is not None:
            try:
                parse_unit(self.inputUnit)
            except MadnessValueError as exc:
                raise pexConfig.FieldValidationError(MadnessDeblendConfig.inputUnit, self, str(exc)) from None
        if not 0 < self.maxPositionOffset <= 3 or not self.positionOffsetSigma > 0:
            raise pexConfig.FieldValidationError(
                MadnessDeblendConfig.maxPositionOffset, self,
                "maxPositionOffset must be in (0, 3] and positionOffsetSigma > 0 (pixels).",
            )
        if self.modelSupportThreshold < 0:
            raise pexConfig.FieldValidationError(
                MadnessDeblendConfig.modelSupportThreshold, self, "must be >= 0."
            )

    def map_settings(self) -> MapSettings:
        """The engine's `MapSettings` for this config."""
        max_peaks = self.maxNumberOfPeaks if self.maxNumberOfPeaks > 0 else 1000
        return MapSettings(
            learning_rate=self.learningRate,
            lr_decay=self.learningRateDecay,
            lr_decay_steps=self.learningRateDecaySteps,
            max_iter=self.maxIter,
            min_iter=self.minIter,
            ewma_window=self.ewmaWindow,
            rtol=self.relativeError,
            prior_weight=self.priorWeight,
            max_sources=max(max_peaks + (self.maxNeighbors if self.includeNeighbors else 0), 1),
            batch_sources=self.batchSources,
            fit_offsets=self.fitPositionOffsets,
            offset_max=self.maxPositionOffset,
            offset_sigma=self.positionOffsetSigma,
            precision=self.precision,
        )


def _parents_from_tables(detections: Table, spans: Table) -> list[ParentFootprint]:
    footprints = footprints_from_table(spans)
    ids = np.asarray(detections["id"], dtype=np.int64)
    parent_col = np.asarray(detections["parent"], dtype=np.int64)
    px = np.asarray(detections["peak_x"], dtype=np.int64)
    py = np.asarray(detections["peak_y"], dtype=np.int64)
    peak_rows = np.flatnonzero(parent_col != 0)
    by_parent: dict[int, list[int]] = {}
    for r in peak_rows:
        by_parent.setdefault(int(parent_col[r]), []).append(r)
    parents = []
    for r in np.flatnonzero(parent_col == 0):
        pid = int(ids[r])
        rows = by_parent.get(pid, [])
        fp = footprints.get(pid, Footprint(np.zeros((0, 3), np.int64)))
        parents.append(
            ParentFootprint(
                pid,
                fp,
                ids[rows],
                np.stack([px[rows], py[rows]], axis=1) if rows else np.zeros((0, 2), np.int64),
            )
        )
    return parents


class MadnessDeblendTask(pipeBase.PipelineTask):
    """Deblend every parent footprint of a patch with MADNESS.

    All peaks of a parent are fitted jointly (with neighbouring peaks of other parents that fall
    in their stamps), many parents per `MadnessDeblender.deblend_batch` call. Parents with no
    usable peak, too many peaks or too large a footprint are skipped and flagged; a blend that
    fails is flagged ``deblend_failed`` and the patch goes on (``catchFailures``). Each child is
    cut to its parent (see `lsst.meas.madness.tasks.blends`).
    """

    ConfigClass = MadnessDeblendConfig
    _DefaultName = "madnessDeblend"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        deblender = None
        if self.config.modelSource == "butler":
            deblender = self._butlerDeblender(butlerQC.get(inputRefs.model))
        bands = [ref.dataId["band"] for ref in inputRefs.coadds]
        coadds = dict(zip(bands, butlerQC.get(inputRefs.coadds)))
        detections = butlerQC.get(inputRefs.detections)
        spans = butlerQC.get(inputRefs.detectionSpans)
        outputs = self.run(coadds=coadds, detections=detections, detectionSpans=spans, deblender=deblender)
        butlerQC.put(outputs.deblendedCatalog, outputRefs.deblendedCatalog)
        flux = dict(zip(outputs.bands, outputs.deblendedFlux))
        for ref in outputRefs.deblendedFlux:
            if (band := ref.dataId["band"]) in flux:
                butlerQC.put(flux[band], ref)

    def _butlerDeblender(self, handle) -> MadnessDeblender:
        """The deblender of the model dataset behind ``handle`` (a `DeferredDatasetHandle`),
        read and built once per task instance and per process (keyed by dataset id)."""
        key = handle.ref.id
        cached = getattr(self, "_modelCache", None)
        if cached is None or cached[0] != key:
            deblender = _BUTLER_DEBLENDERS.get(key)
            if deblender is None:
                bundle = handle.get()  # ModelBundle.load: sizes and sha256 checked
                if not bundle.metadata.trained:
                    raise MadnessValueError(
                        f"The model dataset {handle.ref} holds untrained weights; refusing to use it."
                    )
                deblender = MadnessDeblender.from_model_bundle(bundle)
                while len(_BUTLER_DEBLENDERS) >= 2:
                    _BUTLER_DEBLENDERS.pop(next(iter(_BUTLER_DEBLENDERS)))
                _BUTLER_DEBLENDERS[key] = deblender
                self.log.info("Loaded the MADNESS model from %s", handle.ref)
            self._modelCache = (key, deblender)
        return self._checkBands(self._modelCache[1])

    def _deblender(self) -> MadnessDeblender:
        if self.config.modelSource == "butler":
            raise MadnessValueError(
                "modelSource='butler': the model comes with the quantum (runQuantum); pass deblender= "
                "to run() when calling it directly."
            )
        return self._checkBands(load_deblender(self.config.bundlePath))

    def _checkBands(self, deblender: MadnessDeblender) -> MadnessDeblender:
        if tuple(self.config.bands) != deblender.bands:
            raise MadnessValueError(
                f"config.bands {list(self.config.bands)} differ from the bundle's bands "
                f"{list(deblender.bands)} (order matters); set bands to the bundle's."
            )
        return deblender

    @timeMethod
    def run(
        self,
        coadds: Mapping[str, object],
        detections: Table,
        detectionSpans: Table,
        deblender: MadnessDeblender | None = None,
    ) -> pipeBase.Struct:
        """Deblend all parents of a patch.

        Parameters
        ----------
        coadds : mapping [`str`, `lsst.images.MaskedImage`]
            Coadd of each band; every band of ``config.bands`` must be present.
        detections : `astropy.table.Table`
            Parents and peaks (`lsst.meas.madness.tasks.catalogs.DETECTION_COLUMNS`).
        detectionSpans : `astropy.table.Table`
            Span table of the parent footprints.
        deblender : `MadnessDeblender`, optional
            Use this deblender instead of loading ``config.bundlePath``.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``deblendedCatalog`` (`astropy.table.Table`), ``deblendedFlux`` (`list` of
            `astropy.table.Table`, one heavy-footprint table per band) and ``bands`` (`list` of
            `str`, the band of each table: the model's).

        Raises
        ------
        MadnessMissingBandError
            A band of ``config.bands`` has no coadd.
        MadnessValueError
            ``config.bands`` differ from the bundle's.
        MadnessUnitError
            The coadds carry no unit and ``config.inputUnit`` is None, their unit is unknown or
            differs from ``config.inputUnit`` or between bands, or the bundle does not record
            the units it was trained in (see `lsst.meas.madness.units`).
        """
        from ..backend import device_scope, require_backend

        config = self.config
        require_backend(config.kerasBackend)
        deblender = deblender if deblender is not None else self._deblender()
        with device_scope(config.device):
            return self._run(coadds, detections, detectionSpans, deblender)

    def _run(self, coadds, detections, detectionSpans, deblender) -> pipeBase.Struct:
        config = self.config
        bands = deblender.bands
        coadd = MultibandCoadd.from_masked_images(coadds, bands=bands, bad_mask_planes=config.badMask)
        extra = sorted(set(coadds) - set(bands))
        if extra:
            self.log.info("Ignoring coadds of bands %s, which the model does not use", extra)
        unit = resolve_unit(coadd.unit, config.inputUnit)
        scale = ModelUnits.from_deblender(deblender).scale(unit, bands)
        parents = _parents_from_tables(detections, detectionSpans)
        result = self.deblendInModelUnits(coadd, parents, deblender, scale, unit_name=unit.to_string())
        parent_rows, child_rows = result.parentRows, result.childRows
        heavy_fp, heavy_values = result.heavyFootprints, result.heavyValues
        catalog = self._make_catalog(parent_rows + child_rows, bands, deblender.latent_dim)
        catalog.meta["bands"] = list(bands)
        catalog.meta["conserveFlux"] = bool(config.conserveFlux)
        catalog.meta["unit"] = unit.to_string()
        for band in bands:
            catalog[f"deblend_flux_{band}"].unit = unit
            catalog[f"deblend_modelFlux_{band}"].unit = unit
        flux_tables = []
        for b, band in enumerate(bands):
            table = heavy_footprints_to_table(heavy_fp, {i: v[b] for i, v in heavy_values.items()}, band=band)
            table["flux"].unit = unit
            flux_tables.append(table)
        return pipeBase.Struct(deblendedCatalog=catalog, deblendedFlux=flux_tables, bands=list(bands))

    def deblendInModelUnits(
        self,
        coadd: MultibandCoadd,
        parents: list[ParentFootprint],
        deblender: MadnessDeblender,
        scale: np.ndarray,
        unit_name: str | None = None,
    ) -> pipeBase.Struct:
        """`deblendParents` on the coadd converted into model units, outputs converted back.

        Parameters
        ----------
        coadd : `MultibandCoadd`
            Stacked coadd planes in the deblender's band order, in the coadd's units.
        parents : `list` [`ParentFootprint`]
            Parent footprints and peaks (see `deblendParents`).
        deblender : `MadnessDeblender`
            The loaded deblender.
        scale : `numpy.ndarray`
            ``(bands,)`` model units per coadd unit
            (`lsst.meas.madness.units.ModelUnits.scale`).
        unit_name : `str`, optional
            The coadd's unit, for the log.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            As `deblendParents`, with the heavy-footprint values and the ``deblend_flux_<band>``
            and ``deblend_modelFlux_<band>`` columns of the rows in the coadd's units. All
            decisions (fit, model support, flux sharing) are taken in model units, so a coadd in
            nJy and the same coadd in electrons give the same children.
        """
        scale = np.asarray(scale, dtype=np.float64)
        if scale.shape != (len(deblender.bands),) or not (np.isfinite(scale).all() and (scale > 0).all()):
            raise MadnessValueError(f"Unit scale {scale} must be finite and positive, one per band.")
        self.log.info(
            "Coadds in %s; model units per coadd unit: %s",
            unit_name or coadd.unit,
            ", ".join(f"{b} {s:.6g}" for b, s in zip(deblender.bands, scale)),
        )
        result = self.deblendParents(coadd.scaled(scale), parents, deblender)
        inverse = 1.0 / scale
        for row in (*result.parentRows, *result.childRows):
            for b, band in enumerate(deblender.bands):
                for name in (f"deblend_flux_{band}", f"deblend_modelFlux_{band}"):
                    if name in row:
                        row[name] = float(row[name] * inverse[b])
        for key, values in result.heavyValues.items():
            values = np.asarray(values)
            result.heavyValues[key] = (values.astype(np.float64) * inverse[:, None]).astype(values.dtype)
        return result

    def deblendParents(
        self, coadd: MultibandCoadd, parents: list[ParentFootprint], deblender: MadnessDeblender
    ) -> pipeBase.Struct:
        """Deblend parents on a stacked coadd: the I/O-free core shared by both I/O paths.

        Parameters
        ----------
        coadd : `MultibandCoadd`
            Stacked coadd planes in the deblender's band order.
        parents : `list` [`ParentFootprint`]
            Parent footprints and peaks, tract frame. Peak ids must be unique in the patch:
            a child takes its peak's id.
        deblender : `MadnessDeblender`
            The loaded deblender.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``parentRows`` and ``childRows`` (`list` of `dict`, one per source, keyed by the
            columns of `lsst.meas.madness.tasks.catalogs.deblend_columns`; the children of a
            parent follow in peak order), ``heavyFootprints`` (`dict` id -> `Footprint`) and
            ``heavyValues`` (`dict` id -> ``(bands, area)`` pixel values: a parent's observed
            pixels, a child's deblended ones). Counts go to ``self.metadata``.
        """
        config = self.config
        bands = deblender.bands
        settings = config.map_settings()
        stamp = deblender.stamp_size
        self.log.info(
            "Deblending %d parents (%d peaks) on %s coadds of %dx%d pixels",
            len(parents),
            sum(p.n_peaks for p in parents),
            "".join(bands),
            *coadd.shape[::-1],
        )

        all_peaks = np.concatenate([p.peaks_xy for p in parents]) if parents else np.zeros((0, 2), np.int64)
        owner = (
            np.concatenate([np.full(p.n_peaks, k) for k, p in enumerate(parents)])
            if parents
            else np.zeros(0, int)
        )

        parent_rows: list[dict] = []
        child_rows: list[dict] = []
        heavy_fp: dict[int, Footprint] = {}
        heavy_values: dict[int, np.ndarray] = {}
        to_fit: list[tuple[int, BlendPlan]] = []

        for k, parent in enumerate(parents):
            row = self._parent_row(parent, coadd, bands)
            parent_rows.append(row)
            mask = parent.footprint.to_mask()
            py0, px0, py1, px1 = parent.footprint.bbox
            cy0, cx0 = coadd.yx0
            obs = (
                coadd.image[:, py0 - cy0 : py1 - cy0, px0 - cx0 : px1 - cx0][:, mask]
                if parent.footprint.area
                else np.zeros((len(bands), 0))
            )
            heavy_fp[parent.id] = parent.footprint
            heavy_values[parent.id] = obs
            if parent.footprint.area == 0:
                self._skip(row, "deblend_noPeaks", "has an empty footprint")
                continue
            if config.maxFootprintArea > 0 and parent.footprint.area > config.maxFootprintArea:
                self._skip(row, "deblend_parentTooBig", f"covers {parent.footprint.area} pixels")
                continue
            if config.maxNumberOfPeaks > 0 and parent.n_peaks > config.maxNumberOfPeaks:
                self._skip(row, "deblend_tooManyPeaks", f"has {parent.n_peaks} peaks")
                continue
            others = all_peaks[owner != k] if config.includeNeighbors else None
            plan = plan_blend(
                parent,
                coadd.bbox,
                stamp_size=stamp,
                other_peaks_xy=others,
                max_neighbours=config.maxNeighbors if config.includeNeighbors else 0,
            )
            row["deblend_droppedPeaks"] = plan.dropped
            if len(plan.peak_ids) == 0:
                self._skip(row, "deblend_noPeaks", "has no usable peak")
                continue
            if len(plan.peak_ids) == 1 and not config.processSingles:
                row["deblend_isolatedParent"] = True
                continue
            row["deblend_nNeighbors"] = len(plan.neighbours_xy)
            to_fit.append((k, plan))

        n_failed = 0
        n_not_converged = 0
        periodic = PeriodicLogger(self.log)
        done = 0
        for start in range(0, len(to_fit), max(config.batchSize, 1)):
            chunk = to_fit[start : start + max(config.batchSize, 1)]
            for (k, plan), outcome, runtime in self._fit_chunk(deblender, chunk, coadd, settings):
                row = parent_rows[k]
                row["deblend_runtime"] = runtime * plan.n_sources
                if isinstance(outcome, BaseException):
                    row["deblend_failed"] = True
                    row["deblend_error"] = type(outcome).__name__[:48]
                    n_failed += 1
                    continue
                n_not_converged += int(not outcome.converged)
                self._add_children(row, plan, outcome, coadd, bands, child_rows, heavy_fp, heavy_values)
            done += len(chunk)
            periodic.log("Deblended %d of %d blends", done, len(to_fit))

        n_skipped = sum(bool(r.get("deblend_skipped")) for r in parent_rows)
        self.metadata["n_parents"] = len(parent_rows)
        self.metadata["n_blends"] = len(to_fit)
        self.metadata["n_children"] = len(child_rows)
        self.metadata["n_skipped"] = n_skipped
        self.metadata["n_failed"] = n_failed
        self.metadata["n_not_converged"] = n_not_converged
        self.log.info(
            "Deblended %d blends into %d children; %d parents skipped, %d failed, %d blends not converged",
            len(to_fit) - n_failed,
            len(child_rows),
            n_skipped,
            n_failed,
            n_not_converged,
        )
        return pipeBase.Struct(
            parentRows=parent_rows, childRows=child_rows, heavyFootprints=heavy_fp, heavyValues=heavy_values
        )

    # --- helpers ---------------------------------------------------------------------------

    def _skip(self, row: dict, flag: str, why: str) -> None:
        row["deblend_skipped"] = True
        row[flag] = True
        self.log.debug("Skipping parent %d: it %s (%s)", row["id"], why, flag)

    @staticmethod
    def _parent_row(parent: ParentFootprint, coadd: MultibandCoadd, bands) -> dict:
        y0, x0, y1, x1 = parent.footprint.bbox
        row = dict(
            id=parent.id,
            parent=0,
            footprint_area=parent.footprint.area,
            bbox_x0=x0,
            bbox_y0=y0,
            bbox_width=x1 - x0,
            bbox_height=y1 - y0,
            deblend_nPeaks=parent.n_peaks,
        )
        if parent.n_peaks:
            py, px = peaks_to_pixels(parent.peaks_xy[0])[0]
            row["deblend_peak_center_x"], row["deblend_peak_center_y"] = int(px), int(py)
        if parent.footprint.area:
            cy0, cx0 = coadd.yx0
            sl = (slice(None), slice(y0 - cy0, y1 - cy0), slice(x0 - cx0, x1 - cx0))
            good = ~coadd.bad[sl] & parent.footprint.to_mask()
            flux = np.where(good, coadd.image[sl], 0.0).sum(axis=(1, 2))
            for b, band in enumerate(bands):
                row[f"deblend_flux_{band}"] = float(flux[b])
        return row

    def _fit_chunk(self, deblender, chunk, coadd, settings):
        """Yield ``((k, plan), result or exception, runtime per source in ms)`` for each blend.

        The chunk goes to the engine in one call. If that raises, the blends whose input the
        engine rejects (`prepare_blend`, no fitting) fail alone and the others go back as one
        batch; if every input is valid (the fit itself raised), each blend is retried alone. A
        bad blend thus fails only itself, without splitting the batch (each batch shape costs a
        compilation).
        """
        inputs = [plan.engine_input(coadd) for _, plan in chunk]
        t0 = time.perf_counter()
        try:
            results = deblender.deblend_batch(inputs, bands=deblender.bands, settings=settings)
        except _FATAL:
            raise
        except Exception as error:
            if len(chunk) == 1:
                if not self.config.catchFailures:
                    raise
                self.log.warning(
                    "Deblending parent %d failed: %s: %s", chunk[0][1].parent.id, type(error).__name__, error
                )
                yield chunk[0], error, 0.0
                return
            valid = []
            for item, blend in zip(chunk, inputs):
                try:
                    prepare_blend(
                        blend["image"],
                        blend["peaks_xy"],
                        blend["variance"],
                        blend["mask"],
                        num_bands=len(deblender.bands),
                        stamp_size=deblender.stamp_size,
                        normalization=deblender.normalization,
                        max_sources=settings.max_sources,
                    )
                    valid.append(item)
                except _FATAL:
                    raise
                except Exception:
                    yield from self._fit_chunk(deblender, [item], coadd, settings)
            if len(valid) == len(chunk):
                self.log.debug("A blend of a batch of %d failed (%s); retrying one by one", len(chunk), error)
                for item in chunk:
                    yield from self._fit_chunk(deblender, [item], coadd, settings)
            elif valid:
                yield from self._fit_chunk(deblender, valid, coadd, settings)
            return
        per_source = 1e3 * (time.perf_counter() - t0) / max(sum(p.n_sources for _, p in chunk), 1)
        for item, result in zip(chunk, results):
            yield item, result, per_source

    def _add_children(self, row, plan, result, coadd, bands, child_rows, heavy_fp, heavy_values):
        cfg = self.config
        split = split_blend(
            plan, result, coadd, threshold=cfg.modelSupportThreshold, conserve_flux=cfg.conserveFlux
        )
        n = len(plan.peak_ids)
        row["deblend_nChild"] = n
        row["deblend_iterations"] = result.n_iter
        row["deblend_converged"] = result.converged
        row["deblend_unassignedFluxFraction"] = split.unassigned_fraction
        for i in range(n):
            fp = split.footprints[i]
            cid = int(plan.peak_ids[i])
            y0, x0, y1, x1 = fp.bbox
            child = dict(
                id=cid,
                parent=plan.parent.id,
                deblend_peakId=cid,
                deblend_peak_center_x=int(peaks_to_pixels(plan.peaks_xy[i])[0, 1]),
                deblend_peak_center_y=int(peaks_to_pixels(plan.peaks_xy[i])[0, 0]),
                deblend_center_x=float(plan.peaks_xy[i, 0] + result.offsets_xy[i, 0]),
                deblend_center_y=float(plan.peaks_xy[i, 1] + result.offsets_xy[i, 1]),
                footprint_area=fp.area,
                bbox_x0=x0,
                bbox_y0=y0,
                bbox_width=x1 - x0,
                bbox_height=y1 - y0,
                deblend_nPeaks=1,
                deblend_edge=bool(result.edge[i]),
                deblend_noData=bool(result.no_data[i]),
                deblend_maskedFraction=float(result.masked_fraction[i]),
                deblend_iterations=result.n_iter,
                deblend_converged=result.converged,
                deblend_logPrior=float(result.log_prior[i]),
                deblend_latents=result.latents[i],
                deblend_modelFractionInFootprint=float(split.model_fraction_in_footprint[i]),
            )
            values = split.values[i]
            for b, band in enumerate(bands):
                child[f"deblend_chi2_{band}"] = float(result.chi2[i, b])
                child[f"deblend_modelFlux_{band}"] = float(split.model_flux[i, b])
                child[f"deblend_flux_{band}"] = float(np.nansum(values[b]))
            child_rows.append(child)
            heavy_fp[cid] = fp
            heavy_values[cid] = values

    @staticmethod
    def _make_catalog(rows: list[dict], bands, latent_dim: int) -> Table:
        table = make_table(deblend_columns(bands, latent_dim), len(rows))
        columns = {name: table[name] for name in table.colnames}
        for i, row in enumerate(rows):
            for name, value in row.items():
                columns[name][i] = value
        if len(table):
            order = np.lexsort((table["id"], np.where(table["parent"] == 0, table["id"], table["parent"])))
            table = table[order]
        return table
