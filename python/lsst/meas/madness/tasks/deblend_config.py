"""Connections and config of `MadnessDeblendTask` (`lsst.meas.madness.tasks.deblend`).

Kept apart from the task so that each file reads in one sitting; import both from
`lsst.meas.madness.tasks`.
"""

from __future__ import annotations

__all__ = ["MadnessDeblendConnections", "MadnessDeblendConfig"]

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from ..engine import MapSettings
from ..errors import MadnessValueError
from ..units import parse_unit
from .coadds import DEFAULT_BAD_MASK_PLANES
from .model_dataset import MODEL_DATASET_TYPE, MODEL_STORAGE_CLASS

_TEMPLATES = {"inputCoaddName": "deep", "outputCoaddName": "deep", "modelName": MODEL_DATASET_TYPE}


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


MAP_SETTINGS_FIELDS = {
    "learning_rate": "learningRate",
    "lr_decay": "learningRateDecay",
    "lr_decay_steps": "learningRateDecaySteps",
    "max_iter": "maxIter",
    "min_iter": "minIter",
    "ewma_window": "ewmaWindow",
    "rtol": "relativeError",
    "stop_floor": "stopFloor",
    "freeze_drift": "freezeDrift",
    "prior_weight": "priorWeight",
    "symmetry_weight": "symmetryWeight",
    "init_log_prior_floor": "initLogPriorFloor",
    "batch_sources": "batchSources",
    "fit_offsets": "fitPositionOffsets",
    "fit_amplitudes": "fitAmplitudes",
    "amplitude_sigma": "amplitudeSigma",
    "offset_max": "maxPositionOffset",
    "offset_sigma": "positionOffsetSigma",
    "precision": "precision",
    "max_zoom": "maxZoom",
    "zoom_outside_threshold": "zoomOutsideThreshold",
    "zoom_choice": "zoomChoice",
    "zoom_edge_threshold": "zoomEdgeThreshold",
    "fit_envelopes": "fitEnvelopes",
    "envelope_edge_sigma": "envelopeEdgeSigma",
    "envelope_harmonics": "envelopeHarmonics",
    "refit_beside_brighter": "refitBesideBrighter",
    "refit_start": "refitStart",
    "refit_max_iter": "refitMaxIter",
    "refit_learning_rate": "refitLearningRate",
    "psf_wings": "psfWings",
    "outskirts": "outskirts",
}
"""`MapSettings` field -> the config field that sets it, one to one (``max_sources`` is derived
from ``maxNumberOfPeaks`` and the neighbours). `MadnessDeblendConfig.validate` checks these
fields by building the settings, so that the engine's ranges are the only ones."""


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
        doc="Skip parents with more peaks than this (flag deblend_skipped_tooManyPeaks) (<= 0: unlimited). "
        "All peaks of a parent are fitted jointly, so memory and time grow with it.",
    )
    maxFootprintArea = pexConfig.Field[int](
        default=250_000,
        doc="Skip parents whose footprint covers more pixels than this (flag deblend_skipped_parentTooBig) "
        "(<= 0: unlimited); large footprints are usually artefacts or bright-star halos.",
    )
    maskLimits = pexConfig.DictField(
        keytype=str,
        itemtype=float,
        default={},
        doc="Mask plane -> largest fraction of a parent footprint's pixels that may have that plane "
        "set in any band; a parent above a limit is not deblended (flag deblend_skipped_masked). A "
        "limit of 0 allows no such pixel. meas_extensions_scarlet's option of the same name; empty "
        "(off) by default, as there. Masked pixels of a deblended parent get zero weight (badMask).",
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
        "leaves them undeblended with deblend_skipped_isolatedParent.",
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
    # Residual peaks (issue 14, section 1; lsst.meas.madness.tasks.residual_peaks)
    doResidualPeaks = pexConfig.Field[bool](
        default=True,
        doc="After the first fit, look for sources the detection missed in each parent's residual "
        "(band-summed, PSF-filtered, in noise units), refit the parent with them and keep them when "
        "the MAP objective falls by more than residualPeakPenalty per added source (children flagged "
        "deblend_residualPeak). Raises completeness at SNR > 10 by ~4 points on simulated patches for "
        "~1.3x the deblend time (doc/detection.md); off by default in the afw task, where an added child gets a new peak in its parent's footprint.",
    )
    residualPeakThreshold = pexConfig.Field[float](
        default=5.0, doc="Least significance of a residual peak (noise units of the filtered residual)."
    )
    residualPeakSmoothing = pexConfig.Field[float](
        default=1.7,
        doc="Gaussian sigma of the residual's matched filter, pixels (> 0); 1.7 px is the PSF sigma of a "
        "0.8 arcsec FWHM at LSST's 0.2 arcsec pixels.",
    )
    residualPeakMinSeparation = pexConfig.Field[float](
        default=3.0, doc="Least distance of a residual peak to any other peak of the fit, pixels."
    )
    residualPeakModelError = pexConfig.Field[float](
        default=0.05,
        doc="Fractional error of the fitted models, added in quadrature to the residual's noise (its "
        "PSF-filtered model times this): a bright galaxy the decoder draws imperfectly then leaves no "
        "significant residual peak, a companion on a faint wing still does. 0: noise only (doc/detection.md "
        "measures 0, 0.05 and 0.1).",
    )
    residualPeakSymmetry = pexConfig.Field[float](
        default=0.8,
        doc="Drop a residual bump whose mirror image through a fitted centre (within that source's window "
        "side) is at least this fraction as significant: a galaxy drawn imperfectly leaves a residual "
        "symmetric about its centre, a missed galaxy a bump on one side "
        "(lsst.meas.madness.tasks.residual_peaks.mirrored_significance). 0 keeps every bump. On two tuning "
        "patches the real finds' mirrors were at most 0.71 as significant, a spurious split's 1.39 "
        "(doc/detection.md).",
    )
    residualPeakRing = pexConfig.Field[float](
        default=3.0,
        optional=True,
        doc="Drop a residual bump where the median significance (noise units) on the ring through it around a "
        "fitted centre (within that source's window side) is at least this: that source's light at that radius "
        "is not held by its model all around it (a bright galaxy's decoded profile cut inside its stamp, "
        "brighter where the cut is nearer its centre), where a missed galaxy is a bump on an arc "
        "(lsst.meas.madness.tasks.residual_peaks.ring_significance), and at least residualPeakRingFraction of the "
        "bump's significance. None keeps every bump. On the tuning patches "
        "(seeds 1000-1005) the real finds' ring medians were at most 2.2, the spurious bumps of a bright galaxy "
        "drawn without outskirts (tests/test_task_wings.py) 6-13 (doc/detection.md).",
    )
    residualPeakRingFraction = pexConfig.Field[float](
        default=0.1,
        doc="With residualPeakRing: a bump is dropped only where the ring's median is also at least this "
        "fraction of the bump's own significance, in [0, 1). A very bright galaxy the detection missed beside a "
        "fitted centre lights the ring through it with its own light (ring medians 11-19 for the 2,000-3,000 "
        "sigma finds of tests/test_task_deblend.py, 0.5% of them); the spurious ring bumps' medians were "
        "0.2-0.8 of theirs.",
        check=lambda value: 0 <= value < 1,
    )
    residualPeakMaxModelContrast = pexConfig.Field[float](
        default=None,
        optional=True,
        doc="Take no residual peak where the first fit's models, band-summed and filtered as the "
        "significance is, are more than this many times the residual "
        "(lsst.meas.madness.tasks.residual_peaks.model_contrast): a bump that faint beside the models may "
        "be their error (a model a pixel off, or too narrow). None (default) takes any. Opt-in: 1.6 raised "
        "purity for i < 25 on the report patches from 95.2% to 98.0%, but of the 18 unmatched children it "
        "removed on the tuning and pair patches 9 were real galaxies found 2.6-3.6 px off-centre, and it "
        "lost 8 of 48 real finds (faint galaxies whose neighbour's first model took their light; flux "
        "errors 1-2% higher, make demo loses 2 of 40 galaxies; doc/detection.md, \"Stop 71\").",
        check=lambda v: v is None or v > 0,
    )
    residualPeakSkipLarge = pexConfig.Field[bool](
        default=True,
        doc="Take no residual peak in the light of a source drawn at deblend_zoom > 1 (within half its "
        "zoomed window), cut by its stamp (deblend_truncated; from half its window's side to its side) or "
        "given an envelope (deblend_enveloped; within its window's side): there the residual is the big "
        "galaxy's own light the model cannot hold, not a missed galaxy. Parents so limited are flagged "
        "deblend_residualPeaksLimited.",
    )
    residualPeakMaxOffset = pexConfig.Field[float](
        default=3.0,
        doc="Bound on each component of a position offset fitted for each added source in the refit "
        "(and, with residualPeakMoveNeighbours, for the parent's source nearest it), pixels, in [0, 3]; the "
        "other sources hold their positions. A residual peak is where a missed galaxy's light shows beside "
        "its neighbours' models, often on the galaxy's far side. The penalty then counts two more parameters "
        "per moved source. 0: the peaks are the centres (the default until stop 72; alone, without the "
        "neighbour moving, faint added sources slid onto bright neighbours, doc/detection.md, \"Stop 69\").",
    )
    residualPeakMoveNeighbours = pexConfig.Field[bool](
        default=True,
        doc="With residualPeakMaxOffset > 0, also fit the position of the parent's source nearest each added "
        "one (same bound and prior): the first model of that source took the near side of the missed "
        "galaxy, and moving it gives that light back while the added source moves onto the galaxy's centre. "
        "On the 16 tuning and 8 pair patches (stop 72, against stop 70's defaults): 3 + 8 more galaxies "
        "found, 18 fewer unmatched children, r mean abs(dF/F) of the galaxies found either way 0.186 -> "
        "0.171 and 0.360 -> 0.325 (doc/detection.md, \"Stop 72\").",
    )
    residualPeakOffsetSigma = pexConfig.Field[float](
        default=1.5,
        doc="Width of the Gaussian prior on those offsets, pixels (> 0): a residual peak locates its galaxy to "
        "about a PSF sigma (3 px measured the same on the tuning patches).",
    )
    maxResidualPeaks = pexConfig.Field[int](
        default=2, doc="Most residual peaks tried per parent (all in one refit); 0 tries none."
    )
    residualPeakPenalty = pexConfig.Field[float](
        default=None,
        optional=True,
        doc="Objective decrease (chi^2 / 2 minus log-prior) each added source must bring; None for "
        "residualPeakPenaltyFactor times the BIC's latent_dim / 2 * ln(usable pixels x bands of the fit region).",
    )
    residualPeakPenaltyFactor = pexConfig.Field[float](
        default=0.5,
        doc="Multiplies the BIC's penalty of an added residual-peak source (residualPeakPenalty None). The BIC "
        "counts every latent as a free parameter; a faint source's latents are held by the prior, so the "
        "BIC rejects real galaxies of SNR ~10-13 (doc/detection.md).",
        check=lambda v: v > 0,
    )
    # Pair splits (issue 14, section 1; lsst.meas.madness.tasks.pair_split)
    doPairSplits = pexConfig.Field[bool](
        default=True,
        doc="After the first fit (and the residual peaks), try a source whose light is elongated and "
        "leaves an excess of chi^2 as two sources on its major axis (an unresolved pair), refit the "
        "parent and keep the pair when the objective, with pairSplitModelError in the noise, falls by "
        "more than the penalty of the added parameters and the members pass pairSplitMaxOverlap and "
        "pairSplitMaxNeighbourLight (children flagged deblend_pairSplit). Parents with a source drawn at "
        "deblend_zoom > 1 are not tried. On 16 simulated tuning patches it finds 6 more of 640 galaxies "
        "(SNR > 20: 94.0% -> 95.6%) for 1 more unmatched child and lowers the r flux error of the galaxies "
        "found either way, for ~1.2x the deblend time (doc/detection.md, \"Stop 70\"). In the afw task a "
        "new member gets a new peak record.",
    )
    pairSplitMinSeparation = pexConfig.Field[float](
        default=3.0,
        doc="Least pair separation 2 sqrt(a^2 - b^2) of a source's light, pixels, for it to be tried, and "
        "least distance of the two fitted members for the pair to be kept (0.6 arcsec at 0.2 arcsec pixels).",
    )
    pairSplitMaxSeparation = pexConfig.Field[float](
        default=6.0,
        doc="Most pair separation of a source's light, pixels (pairs wider than this make two peaks). "
        "Wider candidates on the tuning patches were single galaxies whose split member wandered onto "
        "unmodelled light (6 since stop 69; 12 before).",
    )
    pairSplitModelError = pexConfig.Field[float](
        default=0.1,
        doc="Fractional model error added in quadrature to the pixel noise when the fits with and without "
        "the split are compared (and in the chi^2 excess that chooses what to try), so that a single "
        "galaxy the decoder draws imperfectly is not cut in two. 0.05 finds more pairs in patches of close "
        "pairs but cuts some bright elongated galaxies; on ordinary patches 0.1 found as many for less time "
        "and fewer spurious children (doc/detection.md).",
    )
    pairSplitTryExcess = pexConfig.Field[float](
        default=0.5,
        doc="A source is tried as a pair only when the chi^2 excess of the residual about its light's centre "
        "(with pairSplitModelError in the noise) is more than this many times the penalty of the added "
        "source's latents. 2 (before stop 69) assumed half the excess bounds a split's gain; the tuning "
        "patches' splits gained 0.9-1.8x their excess, and most missed pair members had 0.3-1x.",
        check=lambda v: v >= 0,
    )
    pairSplitMaxOverlap = pexConfig.Field[float](
        default=0.75,
        doc="Keep a split only when its members' models overlap at most this much (cosine of the two "
        "models, lsst.meas.madness.tasks.pair_split.member_overlap), in (0, 1]; 1 keeps any. Two "
        "galaxies that can be told apart overlap little; a flat galaxy cut in two makes two wide "
        "halves that overlap more. The kept splits of the tuning and pair patches overlapped 0.16-0.69; "
        "a bright exponential disc (hlr 1\", tests/test_refit.py) cut in two, 0.78 (doc/detection.md).",
        check=lambda v: 0 < v <= 1,
    )
    pairSplitMaxNeighbourLight = pexConfig.Field[float](
        default=3.0,
        optional=True,
        doc="Keep a split only when, at both fitted members, the first fit's models of the other sources "
        "together are at most this many times the split source's own model "
        "(lsst.meas.madness.tasks.pair_split.neighbour_light_ratio): a member on a much brighter "
        "neighbour's light takes the light the neighbour's model did not hold. None keeps any. On the "
        "tuning and pair patches the kept splits that found a galaxy had 0-2.2 but one (11.7), the ones "
        "that made an unmatched child up to 49; a companion split onto its bright disc's light, 3.8 "
        "(doc/detection.md).",
        check=lambda v: v is None or v > 0,
    )
    maxPairSplits = pexConfig.Field[int](
        default=2,
        doc="Most sources of a parent tried as pairs, each in its own refit (largest chi^2 excess first); "
        "at most one split is kept per parent.",
    )
    pairSplitFitOffsets = pexConfig.Field[bool](
        default=True,
        doc="Fit a position offset per source (bounded by pairSplitMaxOffset) in the refits with a split: "
        "the two positions are placed symmetrically about the light's centroid, which an unequal pair "
        "is not. The penalty then counts two more parameters per source.",
    )
    pairSplitMaxOffset = pexConfig.Field[float](
        default=2.0,
        doc="Bound on each fitted offset component in a split's refit, and width of their Gaussian prior, "
        "pixels (0-3].",
    )
    pairSplitPenalty = pexConfig.Field[float](
        default=None,
        optional=True,
        doc="Objective decrease a split must bring; None for the BIC's k / 2 * ln(usable pixels x bands) "
        "with k the added source's latents plus the fitted offsets.",
    )
    # MAP settings (lsst.meas.madness.MapSettings; paper section 3.5)
    maxIter = pexConfig.Field[int](default=200, doc="Most MAP steps per blend.")
    minIter = pexConfig.Field[int](default=40, doc="Steps before the stopping rule may stop a blend.")
    relativeError = pexConfig.Field[float](
        default=MapSettings.rtol,
        doc="Stop when the objective's EWMA fell over the last ewmaWindow steps by less than this "
        "fraction of its fall over the first ewmaWindow steps (MapSettings.rtol: 0.01; the paper's "
        "0.05 stops before faint galaxies' shapes converge, doc/engine.md).",
    )
    ewmaWindow = pexConfig.Field[int](default=15, doc="Window (steps) of the objective's moving average.")
    stopFloor = pexConfig.Field[float](
        default=1.0,
        optional=True,
        doc="Also stop a blend whose objective's EWMA fell over the last ewmaWindow steps by at most this "
        "times its number of sources (chi^2 / 2 units), whatever its first fall (MapSettings.stop_floor, "
        "None in the engine): a parent of one faint galaxy starts near its optimum and the relative rule "
        "alone keeps it to maxIter. On a 1001 x 1001 patch 1 cut the deblend's time to 0.84x and the "
        "blends at maxIter from 40 to 6 of 199, fluxes unchanged (doc/engine.md, step 5). None: the "
        "relative rule alone.",
    )
    freezeDrift = pexConfig.Field[float](
        default=MapSettings.freeze_drift,
        optional=True,
        doc="Per-source stop (MapSettings.freeze_drift): a source each of whose variables moved, net over the "
        "last ewmaWindow steps, less than this fraction of Adam's reach is frozen and no longer decoded; "
        "None: sources move until their blend stops (doc/engine.md).",
    )
    learningRate = pexConfig.Field[float](default=0.05, doc="Initial Adam step in latent units.")
    learningRateDecay = pexConfig.Field[float](
        default=0.8, doc="Factor on the learning rate every learningRateDecaySteps."
    )
    learningRateDecaySteps = pexConfig.Field[int](default=30, doc="Steps between learning-rate decays.")
    priorWeight = pexConfig.Field[float](
        default=MapSettings.prior_weight,
        doc="Weight of the flow log-prior (MapSettings.prior_weight: 0.1, chosen on validation fields with "
        "the symmetry prior, doc/engine.md; 1 is the paper's posterior).",
    )
    symmetryWeight = pexConfig.Field[float](
        default=MapSettings.symmetry_weight,
        doc="Weight of each model's asymmetry about its centre in the MAP objective "
        "(MapSettings.symmetry_weight; engine.objective.stamp_asymmetry, a number in [0, 1] that does not "
        "depend on flux, so it shapes faint models and hardly bright ones; 3000, chosen on validation "
        "fields, doc/engine.md); 0: none, the paper.",
    )
    initLogPriorFloor = pexConfig.Field[float](
        default=-10000.0,
        optional=True,
        doc="Lowest flow log-density of a MAP starting point (MapSettings.init_log_prior_floor, the engine's "
        "default): the VAE-deblender's latents of a source below it are moved towards the flow's mode until "
        "they reach it, so that an encoder guess far outside the prior does not swamp its blend's objective "
        "(doc/error-budget.md). This matters most for the residual peaks' refits: the encoder's guess for a "
        "source found in a bright galaxy's light can lie at -1e17, and without the floor such a refit never "
        "converges and its source is rejected whatever it is (doc/detection.md). None: every start as the "
        "encoder gives it (the task's default before 2026-12-05).",
    )
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
    fitAmplitudes = pexConfig.Field[bool](
        default=MapSettings.fit_amplitudes,
        doc="Fit a flux factor per source and band with its latents (MapSettings.fit_amplitudes): the "
        "decoder draws the galaxy, the factors correct its flux in each band where the decoder's reach "
        "falls short. On by default (measured in doc/engine.md); False (with priorWeight=1 and "
        "relativeError=0.05) gives the paper's MAP.",
    )
    amplitudeSigma = pexConfig.Field[float](
        default=MapSettings.amplitude_sigma,
        doc="Width of the Gaussian prior on each fitted log flux factor (> 0; MapSettings.amplitude_sigma).",
    )
    # Galaxies bigger than the stamp (issue 14, section 2; doc/large-galaxies.md)
    maxZoom = pexConfig.Field[int](
        default=1,
        doc="Largest zoom the engine may choose per source for a galaxy bigger than the model's stamp, "
        "1-4 (MapSettings.max_zoom): at zoom z a source's stamp is drawn with z-times larger pixels and "
        "covers zoom_footprint_size(S, z) pixels (93 for z=2, 139 for z=3 with 45-px stamps). With "
        "zoomChoice='guess' each source's zoom is chosen on a region of maxZoom windows before the fit "
        "(MadnessDeblender.choose_zoom); a blend with nothing zoomed is then fitted exactly as with "
        "maxZoom=1, a zoomed one on its sources' own windows. With zoomChoice='fit' every blend's fit "
        "region and neighbours grow to maxZoom windows. 1 (off) is the task's default although the "
        "engine's (MapSettings.max_zoom) is 3 (doc/large-galaxies.md). Children report deblend_zoom, "
        "deblend_extended and deblend_truncated. Not combined with fitPositionOffsets.",
    )
    zoomOutsideThreshold = pexConfig.Field[float](
        default=MapSettings.zoom_outside_threshold,
        doc="With maxZoom > 1, a source goes from zoom z to z + 1 when the encoder's guess drawn at z + 1 "
        "puts more than this fraction of its flux outside what a zoom-z stamp covers, in (0, 1) "
        "(MapSettings.zoom_outside_threshold; doc/large-galaxies.md).",
    )
    zoomChoice = pexConfig.ChoiceField[str](
        default=MapSettings.zoom_choice,
        allowed={
            "guess": "from the encoder's guess at the next zoom, before the fit (zoomOutsideThreshold)",
            "fit": "fit at zoom 1 first; sources whose model runs into its stamp edge "
            "(zoomEdgeThreshold) and that dominate their zoomed window are zoomed and refitted",
        },
        doc="How maxZoom > 1 chooses each source's zoom (MapSettings.zoom_choice; doc/large-galaxies.md).",
    )
    zoomEdgeThreshold = pexConfig.Field[float](
        default=MapSettings.zoom_edge_threshold,
        doc="With maxZoom > 1 and zoomChoice='fit', a source is zoomed when more than this fraction of "
        "its fitted model's flux lies in its stamp's outer 2 pixels, in (0, 1) "
        "(MapSettings.zoom_edge_threshold).",
    )
    fitEnvelopes = pexConfig.Field[bool](
        default=MapSettings.fit_envelopes,
        doc="Fit the light of bright galaxies beyond their stamps as envelopes (MapSettings.fit_envelopes; "
        "doc/large-galaxies.md): each fit region also holds its parent's footprint, a source whose "
        "residual just outside its stamp is above envelopeEdgeSigma pixel sigma gets a radial profile "
        "there, fitted with the blend, and its child's footprint and pixels take it "
        "(deblend_enveloped).",
    )
    envelopeEdgeSigma = pexConfig.Field[float](
        default=MapSettings.envelope_edge_sigma,
        doc="With fitEnvelopes, the mean residual of the ring just outside a source's stamp, in pixel "
        "sigma, above which it gets an envelope (> 0; MapSettings.envelope_edge_sigma).",
    )
    envelopeHarmonics = pexConfig.Field[int](
        default=MapSettings.envelope_harmonics,
        doc="With fitEnvelopes, the highest even azimuthal order of an envelope's profile (0: radial in "
        "the model's ellipse; 2, 4: cos/sin m phi terms at every radius, so that the envelope may be "
        "flatter or rounder than the whole model; MapSettings.envelope_harmonics).",
    )
    refitBesideBrighter = pexConfig.Field[float](
        default=MapSettings.refit_beside_brighter,
        optional=True,
        doc="Magnitude gap above which a child is fitted again alone after its blend's fit "
        "(MapSettings.refit_beside_brighter; None: no refit): a child whose nearest peak's model is "
        "more than this many magnitudes brighter is refitted on the image minus the other models "
        "(deblend_refitAlone). Its shape then no longer bends with its bright neighbour's model "
        "(doc/engine.md, 'Refit beside a brighter neighbour'; 1, the engine's default since stop 61: "
        "on 100 test fields std e1 residual 0.082 -> 0.077, fluxes level, 1.22x the time).",
    )
    refitStart = pexConfig.ChoiceField[str](
        default=MapSettings.refit_start,
        allowed={"guess": "the VAE-deblender's guess on the image minus the other models",
                 "fit": "the child's latents and flux factors from its blend's fit"},
        doc="Where refitBesideBrighter's refits start (MapSettings.refit_start).",
    )
    refitMaxIter = pexConfig.Field[int](
        default=MapSettings.refit_max_iter,
        optional=True,
        doc="Most MAP steps of a refit beside a brighter neighbour (MapSettings.refit_max_iter; None: "
        "maxIter); its minimum is then at most half of it.",
    )
    refitLearningRate = pexConfig.Field[float](
        default=MapSettings.refit_learning_rate,
        optional=True,
        doc="Adam's initial rate of the refits beside a brighter neighbour (MapSettings.refit_learning_rate; "
        "None: learningRate). With refitStart='fit', refitMaxIter=40 and 0.01: 0.88x the time of the "
        "default on 20 validation fields, but std e1 residual 0.077 -> 0.079 on 100 test fields "
        "(doc/engine.md, 'Shorter refits from the blend's fit').",
    )
    psfWings = pexConfig.Field[bool](
        default=MapSettings.psf_wings,
        doc="Give each child without an envelope the light its PSF spreads beyond its stamp "
        "(MapSettings.psf_wings; doc/engine.md, 'PSF wings'): the stamp's model flux times (1 - f) / f, "
        "f the PSF's share inside the stamp, shaped as the PSF around the child's pixel (and, with "
        "outskirts, the galaxy's own outer profile). No refit: "
        "the wing goes into the child's model flux (deblend_wingFlux_<band>, deblend_winged) and "
        "into the templates that share the parent's pixels. The PSF is the model's own (the survey "
        "PSF its decoder was trained with, lsst.meas.madness.psf.model_psf_images), psfSize pixels "
        "wide.",
    )
    outskirts = pexConfig.Field[bool](
        default=MapSettings.outskirts,
        doc="With psfWings, complete each such child's outskirts (MapSettings.outskirts; doc/engine.md, "
        "'Outskirts'): from 12 px of its centre outwards the decoder draws nothing, and the child's "
        "light there and beyond its stamp becomes the PSF's far profile plus the galaxy's own, an "
        "elliptical r^-7 power law matched to the decoded model at 11 px. The outskirts inside the "
        "stamp join its heavy footprint, those beyond it its wing (deblend_wingFlux_<band>).",
    )
    psfSize = pexConfig.Field[int](
        default=201,
        doc="Side of the PSF image the wings are drawn from, pixels (odd, >= 3): light beyond it is "
        "not modelled (0.07% of a point source's flux outside 201 px for the LSST r-band PSF, "
        "against 0.62% outside the 45-px stamp).",
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
    parentChunkSize = pexConfig.Field[int](
        default=512,
        doc="Parents fitted, refitted (residual peaks, pair splits) and cut into children together; only "
        "one chunk's fits (models, envelopes) are held at once, so the deblend's memory stays bounded as the "
        "patch grows (~1.3 MB per fitted parent on a 4001 x 4001 patch, doc/tasks.md). The refits of a chunk "
        "are batched together.",
        check=lambda value: value >= 1,
    )
    batchSources = pexConfig.Field[int](
        default=256,
        doc="Most sources in one compiled MAP step (memory bound, ~4 MB per source for the "
        "paper-size decoder).",
    )
    precision = pexConfig.ChoiceField[str](
        default="float32",
        allowed={
            "float32": "float32 throughout (no TensorFloat-32 on GPUs with the JAX backend)",
            "mixed_bfloat16": "the decoder of the MAP steps computes in bfloat16 (float32 weights, "
            "objective and optimiser): about half the step time on CPUs with AMX-BF16, 0.6x on an "
            "H200; the same fluxes on CPU validation fields, +2% r flux error on the H200 "
            "(doc/benchmarks.md); slower where bfloat16 is emulated",
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
        bad_limits = {k: v for k, v in self.maskLimits.items() if not 0 <= v <= 1}
        if bad_limits:
            raise pexConfig.FieldValidationError(
                MadnessDeblendConfig.maskLimits,
                self,
                f"maskLimits must be fractions in [0, 1]: {bad_limits}.",
            )
        if self.inputUnit is not None:
            try:
                parse_unit(self.inputUnit)
            except MadnessValueError as exc:
                raise pexConfig.FieldValidationError(MadnessDeblendConfig.inputUnit, self, str(exc)) from None
        if (not 0 < self.pairSplitMinSeparation < self.pairSplitMaxSeparation or self.maxPairSplits < 0
                or not self.pairSplitModelError >= 0 or not 0 < self.pairSplitMaxOffset <= 3):
            raise pexConfig.FieldValidationError(
                MadnessDeblendConfig.pairSplitMinSeparation, self,
                "need 0 < pairSplitMinSeparation < pairSplitMaxSeparation, maxPairSplits >= 0, "
                "pairSplitModelError >= 0 and pairSplitMaxOffset in (0, 3].",
            )
        if (not self.residualPeakSmoothing > 0 or self.maxResidualPeaks < 0 or self.residualPeakMinSeparation < 0
                or not self.residualPeakModelError >= 0 or not self.residualPeakSymmetry >= 0
                or not 0 <= self.residualPeakMaxOffset <= 3 or not self.residualPeakOffsetSigma > 0):
            raise pexConfig.FieldValidationError(
                MadnessDeblendConfig.residualPeakSmoothing, self,
                "residualPeakSmoothing must be > 0, maxResidualPeaks, residualPeakMinSeparation, "
                "residualPeakModelError and residualPeakSymmetry >= 0, residualPeakMaxOffset in [0, 3], "
                "residualPeakOffsetSigma > 0.",
            )
        if self.maxZoom > 1 and self.fitPositionOffsets:
            # The engine places a zoomed stamp by its peak only; it has no fitted offset.
            raise pexConfig.FieldValidationError(
                MadnessDeblendConfig.maxZoom, self,
                "maxZoom > 1 is not combined with fitPositionOffsets=True; set one of them off.",
            )
        if self.modelSupportThreshold < 0:
            raise pexConfig.FieldValidationError(
                MadnessDeblendConfig.modelSupportThreshold, self, "must be >= 0."
            )
        if self.psfSize < 3 or self.psfSize % 2 == 0:
            raise pexConfig.FieldValidationError(
                MadnessDeblendConfig.psfSize, self, f"must be odd and >= 3; got {self.psfSize}."
            )
        # The engine's settings check their own ranges; a value they refuse is named by its config field.
        try:
            self.makeMapSettings()
        except MadnessValueError as exc:
            fields = [field for name, field in MAP_SETTINGS_FIELDS.items()
                      if f"MapSettings.{name} " in str(exc) or f"MapSettings.{name}." in str(exc)]
            if not fields:
                raise
            raise pexConfig.FieldValidationError(
                getattr(MadnessDeblendConfig, fields[0]), self, f"{fields[0]}: {exc}"
            ) from None

    def makeMapSettings(self) -> MapSettings:
        """Make the engine's `MapSettings` for this config.

        Returns
        -------
        settings : `lsst.meas.madness.MapSettings`
            The MAP settings of every blend; ``max_sources`` bounds a blend's peaks plus
            neighbours (``maxNumberOfPeaks`` <= 0 counts as 1000).
        """
        max_peaks = self.maxNumberOfPeaks if self.maxNumberOfPeaks > 0 else 1000
        return MapSettings(
            max_sources=max(max_peaks + (self.maxNeighbors if self.includeNeighbors else 0), 1),
            **{name: getattr(self, field) for name, field in MAP_SETTINGS_FIELDS.items()},
        )
