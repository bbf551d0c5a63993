"""``MadnessDeblendTask``: the MADNESS deblender as a Rubin PipelineTask (pip-only I/O path).

Inputs are lsst.images coadds (one per band) and the detection table + span table written by
`MadnessDetectionTask` (see `lsst.meas.madness.tasks.footprints` for the formats). Outputs are a
deblended catalog (parents and children, afw/scarlet column conventions plus MADNESS's latents,
log-prior, chi^2, iterations) and, per band, a heavy-footprint table.

The task loops; the algorithm lives in `lsst.meas.madness.tasks.blends` (fit region, neighbours,
children) and in the engine (`MadnessDeblender.deblend_batch`, many parents per call). Its
connections and config are in `lsst.meas.madness.tasks.deblend_config`.

How a patch is deblended (`MadnessDeblendTask.deblendParents`):

1. each parent gets its catalog row; parents that cannot be deblended (empty footprint, too many
   peaks, too large, no usable peak) are skipped with a ``deblend_skipped_*``-style flag, and the
   others are planned (fit region, neighbours);
2. the planned parents are fitted ``batchSize`` at a time. In each batch, a parent whose input the
   engine rejects fails on its own; the others are fitted in one engine call, and if that call
   raises they are refitted one by one, so that a failing parent never takes its batch down. Each
   failure sets ``deblend_failed`` and ``deblend_error`` on its own parent (``catchFailures``);
3. optionally, sources the first fit lacked are added where the objective pays for them: peaks of
   the residual (``doResidualPeaks``) and single sources that hold an unresolved pair
   (``doPairSplits``); both stages live in `lsst.meas.madness.tasks.refits` and refit through
   step 2's batches;
4. the children of each fitted parent are cut to it (`lsst.meas.madness.tasks.blends.split_blend`).

Steps 2-4 run ``parentChunkSize`` parents at a time, so that only one chunk's fits are held in
memory however large the patch.

With ``maxZoom > 1`` the engine may draw a galaxy bigger than the stamp with larger pixels
(doc/large-galaxies.md): the fit regions are grown for it in step 1, the models come back in the
larger window and are cut the same way in step 4, and each child reports its zoom
(``deblend_zoom``, ``deblend_extended``, ``deblend_truncated``). With ``fitEnvelopes`` each fit
region also holds its parent's footprint, the engine fits the light of bright galaxies beyond
their stamps there (envelopes), and a child's footprint and pixels take its envelope
(``deblend_enveloped``).
"""

from __future__ import annotations

__all__ = [
    "MadnessDeblendConnections",
    "MadnessDeblendConfig",
    "MadnessDeblendTask",
    "load_deblender",
    "parents_from_tables",
]

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping

import numpy as np
from astropy.table import Table

import lsst.pipe.base as pipeBase
from lsst.utils.logging import PeriodicLogger
from lsst.utils.timer import timeMethod

from ..engine import DeblendResult, MadnessDeblender, MapSettings, prepare_blend
from ..engine.geometry import peaks_to_pixels
from ..engine.observation import bad_pixels
from ..errors import MadnessValueError
from ..psf import model_psf_images
from ..units import ModelUnits, resolve_unit
from .blends import BlendPlan, ParentFootprint, plan_blend, split_blend, with_zoom
from .catalogs import deblend_columns, make_table
from .coadds import MultibandCoadd
from .deblend_config import MadnessDeblendConfig, MadnessDeblendConnections
from .footprints import Footprint, footprints_from_table, heavy_footprints_to_table
from .refits import RefitContext, add_residual_peaks, split_pairs

# Errors that must stop the patch even with catchFailures (meas_base's FATAL_EXCEPTIONS idea).
_FATAL = (MemoryError, KeyboardInterrupt)


class _DeblenderCache:
    """The deblenders this process has built, by model, least recently used dropped first.

    Quanta run by one process (a task instance may be made per quantum) share a model's
    deblender: its networks and its compiled MAP steps are built once.

    Parameters
    ----------
    maxSize : `int`
        Most deblenders held at once.
    """

    def __init__(self, maxSize: int = 2):
        self.maxSize = maxSize
        self._deblenders: OrderedDict[Hashable, MadnessDeblender] = OrderedDict()

    def get(self, key: Hashable, load: Callable[[], MadnessDeblender]) -> MadnessDeblender:
        """The deblender of ``key``, built by ``load()`` the first time.

        Parameters
        ----------
        key : hashable
            Names the model: ``("path", bundlePath)`` or ``("butler", dataset id)``.
        load : callable
            Builds the deblender when it is not held.

        Returns
        -------
        deblender : `MadnessDeblender`
            The held (or newly built) deblender.
        """
        if key in self._deblenders:
            self._deblenders.move_to_end(key)
            return self._deblenders[key]
        deblender = load()
        self._deblenders[key] = deblender
        while len(self._deblenders) > self.maxSize:
            self._deblenders.popitem(last=False)
        return deblender

    def clear(self) -> None:
        """Drop every held deblender."""
        self._deblenders.clear()


# The one model cache of the deblend tasks (pip-only and afw), for every model source.
_DEBLENDERS = _DeblenderCache(maxSize=2)


def load_deblender(path: str | None) -> MadnessDeblender:
    """The deblender of a bundle directory, built once per process.

    Parameters
    ----------
    path : `str` or `None`
        Bundle directory; `None` for the packaged default LSST bundle.

    Returns
    -------
    deblender : `MadnessDeblender`
        The process's deblender of that bundle (shared; do not change its settings).
    """
    return _DEBLENDERS.get(("path", path), lambda: MadnessDeblender.from_bundle(path))


def parents_from_tables(detections: Table, spans: Table) -> list[ParentFootprint]:
    """Parent footprints and their peaks from `MadnessDetectionTask`'s tables.

    Parameters
    ----------
    detections : `astropy.table.Table`
        Parents (``parent == 0``) and peaks (``parent`` = their parent's id), with ``peak_x`` and
        ``peak_y`` in tract pixels (`lsst.meas.madness.tasks.catalogs.DETECTION_COLUMNS`).
    spans : `astropy.table.Table`
        Span table of the parent footprints (`lsst.meas.madness.tasks.footprints`).

    Returns
    -------
    parents : `list` [`ParentFootprint`]
        One per parent row, in table order; a parent without spans gets an empty footprint.
    """
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
    usable peak, too many peaks or too large a footprint are skipped and flagged; a parent whose
    fit fails is flagged ``deblend_failed`` (``deblend_error`` names the error) and the patch
    goes on (``catchFailures``), without its batch. Each child is cut to its parent (see
    `lsst.meas.madness.tasks.blends`).
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
        deblender = deblender if deblender is not None else self._loadDeblender()
        with device_scope(config.device):
            return self._run(coadds, detections, detectionSpans, deblender)

    def _run(self, coadds, detections, detectionSpans, deblender) -> pipeBase.Struct:
        """`run` once the backend, device and deblender are settled."""
        config = self.config
        bands = deblender.bands
        coadd = MultibandCoadd.from_masked_images(
            coadds, bands=bands, bad_mask_planes=config.badMask, keep_planes=list(config.maskLimits)
        )
        extra = sorted(set(coadds) - set(bands))
        if extra:
            self.log.info("Ignoring coadds of bands %s, which the model does not use", extra)
        unit = resolve_unit(coadd.unit, config.inputUnit)
        scale = ModelUnits.from_deblender(deblender).scale(unit, bands)
        parents = parents_from_tables(detections, detectionSpans)
        result = self.deblendInModelUnits(coadd, parents, deblender, scale, unit_name=unit.to_string())
        parent_rows, child_rows = result.parentRows, result.childRows
        heavy_fp, heavy_values = result.heavyFootprints, result.heavyValues
        catalog = self._makeCatalog(parent_rows + child_rows, bands, deblender.latent_dim)
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
                for name in (f"deblend_flux_{band}", f"deblend_modelFlux_{band}", f"deblend_wingFlux_{band}"):
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
            pixels, a child's deblended ones). Counts go to ``self.metadata``, and the wall
            seconds of each step (``seconds_zoom``, ``seconds_fit``, ``seconds_residual_peaks``,
            ``seconds_pair_splits``, ``seconds_children``), so that a slow patch shows where its
            time went.
        """
        bands = deblender.bands
        absent = [plane for plane in self.config.maskLimits if plane not in coadd.planes]
        if absent:
            self.log.warning(
                "maskLimits planes %s are in no band's mask; their limits are not applied", absent
            )
        self.log.info(
            "Deblending %d parents (%d peaks) on %s coadds of %dx%d pixels",
            len(parents),
            sum(p.n_peaks for p in parents),
            "".join(bands),
            *coadd.shape[::-1],
        )
        allPeaks = np.concatenate([p.peaks_xy for p in parents]) if parents else np.zeros((0, 2), np.int64)
        owner = (
            np.concatenate([np.full(p.n_peaks, k) for k, p in enumerate(parents)])
            if parents
            else np.zeros(0, int)
        )

        # 1. A row per parent; skipped parents flagged, the others planned.
        parentRows: list[dict] = []
        childRows: list[dict] = []
        heavyFootprints: dict[int, Footprint] = {}
        heavyValues: dict[int, np.ndarray] = {}
        blends: list[tuple[int, BlendPlan]] = []
        for k, parent in enumerate(parents):
            row = self._makeParentRow(parent, coadd, bands)
            parentRows.append(row)
            heavyFootprints[parent.id] = parent.footprint
            heavyValues[parent.id] = self._observedPixels(parent, coadd)
            otherPeaks = allPeaks[owner != k] if self.config.includeNeighbors else None
            plan = self._planBlend(row, parent, coadd, otherPeaks, deblender.stamp_size)
            if plan is not None:
                blends.append((k, plan))

        settings = self.config.makeMapSettings()
        psf = self._wingPsf(deblender)
        # Wall seconds per step (metadata and the closing log line).
        seconds = dict.fromkeys(("zoom", "fit", "residual_peaks", "pair_splits", "children"), 0.0)
        tick = time.perf_counter()
        # 1b. With maxZoom > 1, each source's zoom is chosen on the wide region, and the fit
        # region shrinks to the windows of the zooms chosen (the stamps themselves, with the
        # neighbours of a zoom-1 plan, for a blend without a large galaxy).
        if self.config.maxZoom > 1 and self.config.zoomChoice == "guess" and blends:
            blends = self._chooseZooms(
                deblender, blends, parentRows, parents, coadd, allPeaks, owner, settings
            )
        seconds["zoom"] += time.perf_counter() - tick

        # Steps 2-4 run a chunk of parents at a time (`parentChunkSize`): only one chunk's fits
        # (models, envelopes) are held, so the memory of a patch's deblend stays bounded.
        # Sources the fit adds take ids after every id the patch already has.
        nextId = 1 + max(
            max((int(p.id) for p in parents), default=0),
            max((int(i) for p in parents for i in p.peak_ids), default=0),
        )
        context = None
        if self.config.doResidualPeaks or self.config.doPairSplits:
            context = RefitContext(
                deblender=deblender,
                coadd=coadd,
                settings=settings,
                parent_rows=parentRows,
                plan=lambda parent, k, maxZoom: self._plan(
                    parent, coadd, allPeaks[owner != k], deblender.stamp_size, maxZoom
                ),
                fit=lambda blends, fitSettings: self._fitBlends(deblender, blends, coadd, fitSettings, psf),
                log=self.log,
            )
        nFailed = nNotConverged = nResidual = nSplits = done = 0
        periodic = PeriodicLogger(self.log)
        chunkSize = self.config.parentChunkSize  # >= 1 (config check)
        for chunkStart in range(0, len(blends), chunkSize):
            # 2. Fit the chunk's parents in batches; each failure flagged on its own parent.
            tick = time.perf_counter()
            fitted: list[tuple[int, BlendPlan, DeblendResult]] = []
            for k, plan, outcome, runtime in self._fitBlends(
                deblender, blends[chunkStart : chunkStart + chunkSize], coadd, settings, psf
            ):
                done += 1
                row = parentRows[k]
                row["deblend_runtime"] = runtime * plan.n_sources
                if isinstance(outcome, Exception):
                    row["deblend_failed"] = True
                    row["deblend_error"] = type(outcome).__name__[:48]
                    nFailed += 1
                else:
                    fitted.append((k, plan, outcome))
                periodic.log("Deblended %d of %d blends", done, len(blends))

            # 3. Optionally, sources the detection missed, from the residuals.
            residualIds: set[int] = set()
            splitIds: set[int] = set()
            newIds: set[int] = set()
            seconds["fit"] += time.perf_counter() - tick
            if context is not None and fitted:
                tick = time.perf_counter()
                if self.config.doResidualPeaks:
                    fitted, residualIds = add_residual_peaks(self.config, context, fitted, nextId)
                    nResidual += len(residualIds)
                    newIds |= residualIds
                seconds["residual_peaks"] += time.perf_counter() - tick
                tick = time.perf_counter()
                # 3b. Optionally, single sources that hold an unresolved pair, tried as two.
                if self.config.doPairSplits:
                    fitted, splitIds, splitNew = split_pairs(
                        self.config, context, fitted, max(nextId, 1 + max(residualIds, default=0))
                    )
                    nSplits += len(splitNew)
                    newIds |= splitNew
                # The next chunk's new sources take ids after every id kept so far (a split
                # keeps its detection id, below nextId already).
                nextId = max(nextId, 1 + max(newIds, default=0))
                seconds["pair_splits"] += time.perf_counter() - tick

            # 4. Cut the children to their parent.
            tick = time.perf_counter()
            for k, plan, result in fitted:
                nNotConverged += int(not result.converged)
                start = len(childRows)
                self._addChildren(parentRows[k], plan, result, coadd, bands, childRows, heavyFootprints,
                                  heavyValues)
                for child in childRows[start:]:
                    if child["id"] in residualIds:
                        child["deblend_residualPeak"] = True
                    if child["id"] in splitIds:
                        child["deblend_pairSplit"] = True
                    if child["id"] in newIds:
                        child["deblend_peakId"] = 0
            seconds["children"] += time.perf_counter() - tick
        if self.config.doResidualPeaks:
            self.metadata["n_residual_peaks"] = nResidual
        if self.config.doPairSplits:
            self.metadata["n_pair_splits"] = nSplits

        nSkipped = sum(bool(r.get("deblend_skipped")) for r in parentRows)
        self.metadata["n_parents"] = len(parentRows)
        self.metadata["n_blends"] = len(blends)
        self.metadata["n_children"] = len(childRows)
        self.metadata["n_skipped"] = nSkipped
        self.metadata["n_failed"] = nFailed
        self.metadata["n_not_converged"] = nNotConverged
        if self.config.fitEnvelopes:
            self.metadata["n_enveloped"] = sum(bool(c.get("deblend_enveloped")) for c in childRows)
        if psf is not None:
            self.metadata["n_winged"] = sum(bool(c.get("deblend_winged")) for c in childRows)
        if self.config.refitBesideBrighter is not None:
            self.metadata["n_refit_alone"] = sum(bool(c.get("deblend_refitAlone")) for c in childRows)
            self.log.info("Refitted alone beside a brighter neighbour: %d children",
                          self.metadata["n_refit_alone"])
        for step, value in seconds.items():
            self.metadata[f"seconds_{step}"] = round(value, 3)
        self.log.info("Deblend steps (wall s): %s",
                      ", ".join(f"{step.replace('_', ' ')} {value:.1f}" for step, value in seconds.items() if value >= 0.05))
        self.log.info(
            "Deblended %d blends into %d children; %d parents skipped, %d failed, %d blends not converged",
            len(blends) - nFailed,
            len(childRows),
            nSkipped,
            nFailed,
            nNotConverged,
        )
        return pipeBase.Struct(
            parentRows=parentRows,
            childRows=childRows,
            heavyFootprints=heavyFootprints,
            heavyValues=heavyValues,
        )

    # --- model ---------------------------------------------------------------------------------

    def _loadDeblender(self) -> MadnessDeblender:
        """The deblender of ``config.bundlePath`` (modelSource 'package' or 'path')."""
        if self.config.modelSource == "butler":
            raise MadnessValueError(
                "modelSource='butler': the model comes with the quantum (runQuantum); pass deblender= "
                "to run() when calling it directly."
            )
        return self._checkBands(load_deblender(self.config.bundlePath))

    def _butlerDeblender(self, handle) -> MadnessDeblender:
        """The deblender of the model dataset behind ``handle`` (a `DeferredDatasetHandle`),
        read and built once per process (keyed by dataset id)."""

        def load() -> MadnessDeblender:
            bundle = handle.get()  # ModelBundle.load: sizes and sha256 checked
            if not bundle.metadata.trained:
                raise MadnessValueError(
                    f"The model dataset {handle.ref} holds untrained weights; refusing to use it."
                )
            self.log.info("Loaded the MADNESS model from %s", handle.ref)
            return MadnessDeblender.from_model_bundle(bundle)

        return self._checkBands(_DEBLENDERS.get(("butler", handle.ref.id), load))

    def _wingPsf(self, deblender: MadnessDeblender) -> np.ndarray | None:
        """The PSF the wings are drawn from (the model's, ``psfSize`` wide), or `None` without
        ``psfWings``."""
        if not self.config.psfWings:
            return None
        return model_psf_images(deblender.metadata, self.config.psfSize)

    def _checkBands(self, deblender: MadnessDeblender) -> MadnessDeblender:
        """Return ``deblender`` if its bands are ``config.bands``, in order; raise otherwise."""
        if tuple(self.config.bands) != deblender.bands:
            raise MadnessValueError(
                f"config.bands {list(self.config.bands)} differ from the bundle's bands "
                f"{list(deblender.bands)} (order matters); set bands to the bundle's."
            )
        return deblender

    # --- parents -------------------------------------------------------------------------------

    @staticmethod
    def _makeParentRow(parent: ParentFootprint, coadd: MultibandCoadd, bands) -> dict:
        """A parent's catalog row: footprint, first peak and observed flux on good pixels."""
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
            # Set, not left to the column's default: the afw path copies the input parents'
            # columns first (lsst.meas.base TestDataset parents carry a deblend_nChild of their own).
            deblend_nChild=0,
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

    @staticmethod
    def _observedPixels(parent: ParentFootprint, coadd: MultibandCoadd) -> np.ndarray:
        """``(bands, area)`` observed pixels of a parent's footprint (its heavy footprint)."""
        if parent.footprint.area == 0:
            return np.zeros((coadd.image.shape[0], 0))
        py0, px0, py1, px1 = parent.footprint.bbox
        cy0, cx0 = coadd.yx0
        return coadd.image[:, py0 - cy0 : py1 - cy0, px0 - cx0 : px1 - cx0][:, parent.footprint.to_mask()]

    def _planBlend(
        self,
        row: dict,
        parent: ParentFootprint,
        coadd: MultibandCoadd,
        otherPeaks: np.ndarray | None,
        stampSize: int,
    ) -> BlendPlan | None:
        """Plan a parent's fit, or flag in ``row`` why it is not fitted and return `None`.

        Parameters
        ----------
        row : `dict`
            The parent's catalog row; skip flags, dropped peaks and neighbours are written in it.
        parent : `ParentFootprint`
            The parent.
        coadd : `MultibandCoadd`
            The coadd (its bbox bounds the fit region).
        otherPeaks : `numpy.ndarray` or `None`
            ``(n, 2)`` (x, y) peaks of the other parents, candidate neighbours; `None` for none.
        stampSize : `int`
            The model's stamp side, pixels.

        Returns
        -------
        plan : `BlendPlan` or `None`
            The blend to fit; `None` for a skipped parent or a single left undeblended
            (``processSingles=False``, flag ``deblend_skipped_isolatedParent``).
        """
        config = self.config
        if parent.pseudo:
            # A sky object: a footprint on empty sky for noise statistics, nothing to model.
            self._skipParent(row, "deblend_skipped_isPseudo", "is a pseudo source (sky object)")
            return None
        if parent.footprint.area == 0:
            self._skipParent(row, "deblend_skipped_noPeaks", "has an empty footprint")
            return None
        if config.maxFootprintArea > 0 and parent.footprint.area > config.maxFootprintArea:
            self._skipParent(row, "deblend_skipped_parentTooBig", f"covers {parent.footprint.area} pixels")
            return None
        masked = self._maskedPlane(parent, coadd)
        if masked is not None:
            self._skipParent(row, "deblend_skipped_masked", masked)
            return None
        if config.maxNumberOfPeaks > 0 and parent.n_peaks > config.maxNumberOfPeaks:
            self._skipParent(row, "deblend_skipped_tooManyPeaks", f"has {parent.n_peaks} peaks")
            return None
        plan = self._plan(parent, coadd, otherPeaks, stampSize, config.maxZoom)
        row["deblend_droppedPeaks"] = plan.dropped
        if len(plan.peak_ids) == 0:
            self._skipParent(row, "deblend_skipped_noPeaks", "has no usable peak")
            return None
        if len(plan.peak_ids) == 1 and not config.processSingles:
            row["deblend_skipped_isolatedParent"] = True
            return None
        row["deblend_nNeighbors"] = len(plan.neighbours_xy)
        row["deblend_incompleteData"] = bool(self._onFootprint(parent, coadd, coadd.bad).all(axis=1).any())
        return plan

    @staticmethod
    def _onFootprint(parent: ParentFootprint, coadd: MultibandCoadd, planes: np.ndarray) -> np.ndarray:
        """``(bands, area)`` values of ``(bands, H, W)`` ``planes`` on the parent's footprint pixels
        inside the coadd."""
        y, x = parent.footprint.pixels()
        y0, x0, y1, x1 = coadd.bbox
        inside = (y >= y0) & (y < y1) & (x >= x0) & (x < x1)
        return planes[:, y[inside] - y0, x[inside] - x0]

    def _maskedPlane(self, parent: ParentFootprint, coadd: MultibandCoadd) -> str | None:
        """Why the parent breaks a ``maskLimits`` limit (`None` if it breaks none); a pixel counts
        when the plane is set in any band, as in meas_extensions_scarlet."""
        area = parent.footprint.area
        for plane, limit in self.config.maskLimits.items():
            if plane not in coadd.planes:
                continue
            fraction = float(self._onFootprint(parent, coadd, coadd.planes[plane]).any(axis=0).sum()) / area
            if fraction > limit:
                return f"has {fraction:.0%} of its pixels in {plane} (limit {limit:.0%})"
        return None

    def _chooseZooms(
        self,
        deblender: MadnessDeblender,
        blends: list[tuple[int, BlendPlan]],
        parentRows: list[dict],
        parents: list[ParentFootprint],
        coadd: MultibandCoadd,
        allPeaks: np.ndarray,
        owner: np.ndarray,
        settings: MapSettings,
    ) -> list[tuple[int, BlendPlan]]:
        """Fix each planned source's zoom (`MadnessDeblender.choose_zoom`) and cut the regions.

        A blend whose sources all stay at zoom 1 is planned again as with ``maxZoom=1`` (same
        region, same neighbours), so a patch without large galaxies is fitted as it would be
        without zoom; a blend with a zoomed source keeps its neighbours and fits on the union
        of its sources' windows (`lsst.meas.madness.tasks.blends.with_zoom`). A batch whose
        choice raises keeps its wide plans, and the engine chooses during the fit (where a bad
        parent fails on its own).
        """
        config = self.config
        out: list[tuple[int, BlendPlan]] = []
        size = max(config.batchSize, 1)
        nZoomed = 0
        for start in range(0, len(blends), size):
            batch = blends[start : start + size]
            try:
                zooms = deblender.choose_zoom(
                    [plan.engine_input(coadd) for _, plan in batch], settings=settings
                )
            except _FATAL:
                raise
            except Exception as error:
                self.log.debug(
                    "Zoom choice of a batch failed (%s: %s); the fit chooses", type(error).__name__, error
                )
                out.extend(batch)
                continue
            for (k, plan), zoom in zip(batch, zooms):
                if (zoom > 1).any():
                    nZoomed += 1
                    out.append((k, with_zoom(plan, zoom, coadd.bbox, stamp_size=deblender.stamp_size)))
                    continue
                narrow = self._plan(parents[k], coadd, allPeaks[owner != k], deblender.stamp_size, 1)
                parentRows[k]["deblend_nNeighbors"] = len(narrow.neighbours_xy)
                out.append((k, dataclasses.replace(narrow, zoom=np.ones(narrow.n_sources, np.int64))))
        self.log.info("Zoom chosen for %d blends: %d with a source drawn at zoom > 1", len(blends), nZoomed)
        self.metadata["n_zoomed_blends"] = nZoomed
        return out

    def _plan(self, parent, coadd, otherPeaks, stampSize: int, maxZoom: int) -> BlendPlan:
        """`plan_blend` with this task's neighbour settings (``otherPeaks`` ignored without
        ``includeNeighbors``)."""
        config = self.config
        return plan_blend(
            parent,
            coadd.bbox,
            stamp_size=stampSize,
            other_peaks_xy=otherPeaks if config.includeNeighbors else None,
            max_neighbours=config.maxNeighbors if config.includeNeighbors else 0,
            max_zoom=maxZoom,
            cover_parent=config.fitEnvelopes,
        )

    def _skipParent(self, row: dict, flag: str, why: str) -> None:
        """Flag a parent ``deblend_skipped`` and ``flag``."""
        row["deblend_skipped"] = True
        row[flag] = True
        self.log.debug("Skipping parent %d: it %s (%s)", row["id"], why, flag)

    # --- fitting -------------------------------------------------------------------------------

    def _fitBlends(
        self,
        deblender: MadnessDeblender,
        blends: list[tuple[int, BlendPlan]],
        coadd: MultibandCoadd,
        settings: MapSettings,
        psf: np.ndarray | None = None,
    ) -> Iterator[tuple[int, BlendPlan, DeblendResult | Exception, float]]:
        """Fit planned parents ``batchSize`` at a time; yield each parent's outcome.

        In each batch, parents whose engine input is invalid (`prepare_blend` raises: no usable
        pixel, bad peaks) fail alone. The others go to the engine in one call; if that call
        raises, they are fitted one by one, so that only the failing parent fails (refitting
        is rare, and each batch shape costs a compilation, so batches are not split further).

        Parameters
        ----------
        deblender : `MadnessDeblender`
            The loaded deblender.
        blends : `list` [`tuple` [`int`, `BlendPlan`]]
            Index of each parent in the patch and its plan, in fitting order.
        coadd : `MultibandCoadd`
            The coadd, in model units.
        settings : `MapSettings`
            MAP settings of every blend.
        psf : `numpy.ndarray`, optional
            ``(bands, h, w)`` PSF of every blend, for the wings (``settings.psf_wings``).

        Yields
        ------
        outcome : `tuple` [`int`, `BlendPlan`, `DeblendResult` or `Exception`, `float`]
            The parent's index and plan, its result or the error it failed with (already
            logged; re-raised instead when ``catchFailures`` is False), and the runtime per
            source of the engine call that fitted it, in ms (0 for a failure). In each batch,
            the parents with invalid input come first, then the others in batch order.

        Raises
        ------
        MemoryError
            Always re-raised, as any error with ``catchFailures=False``.
        """
        size = max(self.config.batchSize, 1)
        for start in range(0, len(blends), size):
            valid = []
            for k, plan in blends[start : start + size]:
                blendInput = plan.engine_input(coadd)
                if psf is not None:
                    blendInput["psf"] = psf
                try:
                    self._checkInput(deblender, blendInput, settings)
                except _FATAL:
                    raise
                except Exception as error:
                    yield k, plan, self._failed(plan, error), 0.0
                    continue
                valid.append((k, plan, blendInput))
            if not valid:
                continue
            try:
                outcomes = self._fitBatch(deblender, valid, settings)
            except _FATAL:
                raise
            except Exception as error:
                if len(valid) == 1:
                    k, plan, _ = valid[0]
                    outcomes = [(k, plan, self._failed(plan, error), 0.0)]
                else:
                    self.log.debug(
                        "A fit in a batch of %d parents failed (%s: %s); fitting them one by one",
                        len(valid),
                        type(error).__name__,
                        error,
                    )
                    outcomes = [self._fitAlone(deblender, item, settings) for item in valid]
            yield from outcomes

    @staticmethod
    def _checkInput(deblender: MadnessDeblender, blendInput: dict, settings: MapSettings) -> None:
        """Raise what `MadnessDeblender.deblend_batch` would raise on this input, without fitting."""
        prepare_blend(
            blendInput["image"],
            blendInput["peaks_xy"],
            blendInput["variance"],
            blendInput["mask"],
            num_bands=len(deblender.bands),
            stamp_size=deblender.stamp_size,
            normalization=deblender.normalization,
            max_sources=settings.max_sources,
        )

    @staticmethod
    def _fitBatch(
        deblender: MadnessDeblender, batch: list[tuple[int, BlendPlan, dict]], settings: MapSettings
    ) -> list[tuple[int, BlendPlan, DeblendResult, float]]:
        """Fit a batch of parents in one engine call; the runtime is the call's per source (ms)."""
        t0 = time.perf_counter()
        results = deblender.deblend_batch(
            [blendInput for _, _, blendInput in batch], bands=deblender.bands, settings=settings
        )
        perSource = 1e3 * (time.perf_counter() - t0) / max(sum(plan.n_sources for _, plan, _ in batch), 1)
        return [(k, plan, result, perSource) for (k, plan, _), result in zip(batch, results)]

    def _fitAlone(
        self, deblender: MadnessDeblender, item: tuple[int, BlendPlan, dict], settings: MapSettings
    ) -> tuple[int, BlendPlan, DeblendResult | Exception, float]:
        """Fit one parent; its error (logged) is its outcome."""
        k, plan, _ = item
        try:
            return self._fitBatch(deblender, [item], settings)[0]
        except _FATAL:
            raise
        except Exception as error:
            return k, plan, self._failed(plan, error), 0.0

    def _failed(self, plan: BlendPlan, error: Exception) -> Exception:
        """Log a parent's failure once and return the error; re-raise it without catchFailures.

        Must be called from the ``except`` clause that caught ``error``.
        """
        if not self.config.catchFailures:
            raise error
        self.log.warning(
            "Deblending parent %d failed: %s: %s", plan.parent.id, type(error).__name__, error
        )
        return error

    # --- children and catalog ------------------------------------------------------------------

    def _addChildren(self, row, plan, result, coadd, bands, child_rows, heavy_fp, heavy_values):
        """Cut a fitted blend's children to its parent; append their rows and heavy footprints."""
        cfg = self.config
        split = split_blend(
            plan, result, coadd, threshold=cfg.modelSupportThreshold, conserve_flux=cfg.conserveFlux
        )
        n = len(plan.peak_ids)
        row["deblend_nChild"] = n
        row["deblend_iterations"] = result.n_iter
        blendInput = plan.engine_input(coadd)
        good = ~bad_pixels(blendInput["image"], blendInput["variance"], blendInput["mask"])
        if good.any():
            residual = np.where(good, blendInput["image"] - result.model_image(), 0.0)
            chi2 = np.where(good, residual**2 / np.where(good, blendInput["variance"], 1.0), 0.0)
            row["deblend_chi2"] = float(chi2.sum() / good.sum())
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
                deblend_zoom=int(result.zoom[i]),
                deblend_extended=bool(result.extended[i]),
                deblend_truncated=bool(result.truncated[i]),
                deblend_enveloped=bool(result.enveloped[i]),
                deblend_winged=bool(result.winged[i]),
                deblend_refitAlone=bool(result.refit_alone[i]),
                deblend_iterations=result.n_iter,
                deblend_converged=result.converged,
                deblend_logPrior=float(result.log_prior[i]),
                deblend_latents=result.latents[i],
                deblend_modelFractionInFootprint=float(split.model_fraction_in_footprint[i]),
            )
            values = split.values[i]
            child["deblend_chi2"] = float(np.mean(result.chi2[i]))
            for b, band in enumerate(bands):
                child[f"deblend_chi2_{band}"] = float(result.chi2[i, b])
                child[f"deblend_fluxFactor_{band}"] = float(result.amplitudes[i, b])
                child[f"deblend_modelFlux_{band}"] = float(split.model_flux[i, b])
                child[f"deblend_wingFlux_{band}"] = float(split.wing_flux[i, b])
                child[f"deblend_flux_{band}"] = float(np.nansum(values[b]))
            child_rows.append(child)
            heavy_fp[cid] = fp
            heavy_values[cid] = values

    @staticmethod
    def _makeCatalog(rows: list[dict], bands, latent_dim: int) -> Table:
        """The catalog of ``rows``, each parent followed by its children, by id."""
        table = make_table(deblend_columns(bands, latent_dim), len(rows))
        columns = {name: table[name] for name in table.colnames}
        for i, row in enumerate(rows):
            for name, value in row.items():
                columns[name][i] = value
        if len(table):
            order = np.lexsort((table["id"], np.where(table["parent"] == 0, table["id"], table["parent"])))
            table = table[order]
        return table
