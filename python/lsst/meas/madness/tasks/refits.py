"""Second fits of a deblended patch: sources the first fit lacked, kept only where they pay.

Two optional stages of `MadnessDeblendTask` change the set of sources of a fitted parent, refit
it, and keep the refit only when the MAP objective falls by more than a penalty for the added
parameters (`lsst.meas.madness.tasks.residual_peaks.bic_penalty` unless the config sets one):

- `add_residual_peaks` (``doResidualPeaks``): peaks of the first fit's residual become new
  sources (`lsst.meas.madness.tasks.residual_peaks`);
- `split_pairs` (``doPairSplits``): one source whose light looks like an unresolved pair is
  tried as two (`lsst.meas.madness.tasks.pair_split`).

A refit keeps the first fit's region, so that both objectives are sums over the same pixels, and
goes through the task's batch fitter (`RefitContext.fit`), so that a refit that fails loses only
itself: its parent keeps its first fit.
"""

from __future__ import annotations

__all__ = ["Fitted", "RefitContext", "add_residual_peaks", "split_pairs"]

import dataclasses
import logging
from collections.abc import Callable, Iterator

import numpy as np

from ..engine import DeblendResult, MadnessDeblender, MapSettings
from ..engine.geometry import stamp_overlap
from ..engine.observation import bad_pixels
from .blends import BlendPlan, ParentFootprint
from .coadds import MultibandCoadd
from .pair_split import (
    chi2_excess, light_moments, member_overlap, model_error_objective, neighbour_light_ratio, pair_positions,
)
from .residual_peaks import (
    bic_penalty, find_residual_peaks, model_contrast, residual_significance, unmodelled_light,
)

Fitted = tuple[int, BlendPlan, DeblendResult]
"""A fitted parent: its index in the patch, its plan and its result."""


@dataclasses.dataclass(frozen=True)
class RefitContext:
    """What a refit stage needs of the task and of the patch.

    Attributes
    ----------
    deblender : `MadnessDeblender`
        The loaded deblender.
    coadd : `MultibandCoadd`
        The coadd, in model units.
    settings : `MapSettings`
        MAP settings of the first fits.
    parent_rows : `list` [`dict`]
        The catalog row of each parent of the patch; the stages update their counts and
        ``deblend_runtime`` in place.
    plan : callable
        ``plan(parent, k, max_zoom) -> BlendPlan``: the task's plan of ``parent`` (a parent of
        index ``k`` with a changed set of peaks), with the peaks of the patch's other parents as
        neighbours.
    fit : callable
        ``fit(blends, settings)``: the task's batch fitter (`MadnessDeblendTask._fitBlends`),
        yielding ``(key, plan, DeblendResult or Exception, runtime per source in ms)`` for each
        ``(key, plan)`` of ``blends``.
    log : `logging.Logger`
        The task's logger.
    """

    deblender: MadnessDeblender
    coadd: MultibandCoadd
    settings: MapSettings
    parent_rows: list[dict]
    plan: Callable[[ParentFootprint, int, int], BlendPlan]
    fit: Callable[
        [list[tuple[int, BlendPlan]], MapSettings],
        Iterator[tuple[int, BlendPlan, DeblendResult | Exception, float]],
    ]
    log: logging.Logger

    def usable(self, plan: BlendPlan) -> np.ndarray:
        """``(bands, h, w)`` True where a pixel of ``plan``'s region enters the fit."""
        blend = plan.engine_input(self.coadd)
        return ~bad_pixels(blend["image"], blend["variance"], blend["mask"])


def _added_sources(new_plan: BlendPlan, ids: np.ndarray) -> np.ndarray:
    """``(n_sources,)`` bool: ``new_plan``'s sources whose peak ids are among ``ids`` (never a
    neighbour, nor a source drawn at zoom > 1); ``new_plan`` has its zooms."""
    added = np.concatenate([np.isin(new_plan.peak_ids, ids), np.zeros(len(new_plan.neighbours_xy), bool)])
    return added & (np.asarray(new_plan.zoom) == 1)


def _nearest_own(new_plan: BlendPlan, added: np.ndarray) -> np.ndarray:
    """``(n_sources,)`` bool: for each ``added`` source, the parent's own source (not added, not a
    neighbour of another parent, at zoom 1) nearest it, if any."""
    xy = new_plan.sources_xy
    own = np.concatenate([np.ones(len(new_plan.peak_ids), bool), np.zeros(len(new_plan.neighbours_xy), bool)])
    own &= ~added & (np.asarray(new_plan.zoom) == 1)
    nearest = np.zeros(len(xy), bool)
    if own.any():
        for a in np.flatnonzero(added):
            d = np.where(own, np.hypot(*(xy - xy[a]).T), np.inf)
            nearest[int(np.argmin(d))] = True
    return nearest


def _onto_others(centers_xy: np.ndarray, moved: np.ndarray, min_separation: float) -> np.ndarray:
    """``(n,)`` bool: the ``moved`` sources whose centre is nearer than ``min_separation`` to
    another source's."""
    centers_xy = np.asarray(centers_xy, np.float64)
    d = np.hypot(*(centers_xy[:, None, :] - centers_xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    return moved & (d.min(axis=1, initial=np.inf) < min_separation)


def _residual_plan(config, context: RefitContext, k: int, plan: BlendPlan, result: DeblendResult,
                   ids: np.ndarray, peaks_xy: np.ndarray) -> BlendPlan | None:
    """The refit's plan of parent ``k`` (first fit ``plan``, ``result``) with the residual peaks
    ``ids`` at ``peaks_xy`` (tract frame) added, or `None` if planning dropped one of them."""
    parent = plan.parent
    augmented = ParentFootprint(
        parent.id,
        parent.footprint,
        np.concatenate([np.asarray(parent.peak_ids, np.int64), ids]),
        np.concatenate([fitted_peaks(plan, result), peaks_xy]),
    )
    # A first fit whose zooms were chosen all 1 was planned as with maxZoom=1: so is its refit.
    zoomed = plan.zoom is None or bool((plan.zoom > 1).any())
    new_plan = context.plan(augmented, k, config.maxZoom if zoomed else 1)
    if not np.isin(ids, new_plan.peak_ids).all():
        return None
    # The refit keeps the first fit's region and neighbours (`_refit_plan`); a new source's stamp
    # is cropped to the region (its child may be flagged edge). Only the added sources may move, and
    # with residualPeakMoveNeighbours the parent's source nearest each.
    new_plan = _refit_plan(plan, new_plan)
    new_plan = dataclasses.replace(new_plan, zoom=_carried_zoom(plan, result, new_plan))
    moved = _added_sources(new_plan, ids)
    if config.residualPeakMoveNeighbours and config.residualPeakMaxOffset > 0:
        moved |= _nearest_own(new_plan, moved)
    return dataclasses.replace(new_plan, fit_offsets=moved)


def fitted_peaks(plan: BlendPlan, result: DeblendResult) -> np.ndarray:
    """``(n_peaks, 2)`` tract-frame (x, y) of ``plan.parent``'s peaks where ``result`` put them.

    A fit with position offsets (a residual-peak refit with ``residualPeakMaxOffset``, a pair
    split) moved its sources; a refit that starts from the parent's detected peaks would undo
    that, and its objective would not compare with the fit's.
    Peaks the plan dropped keep their detected position.
    """
    parent = plan.parent
    peaks_xy = np.array(parent.peaks_xy, np.float64).reshape(-1, 2)
    offsets = np.asarray(result.offsets_xy, np.float64)[: len(plan.peak_ids)]
    at = {int(i): j for j, i in enumerate(np.asarray(parent.peak_ids, np.int64))}
    for source, peak_id in enumerate(np.asarray(plan.peak_ids, np.int64)):
        peaks_xy[at[int(peak_id)]] = plan.peaks_xy[source] + offsets[source]
    return peaks_xy


def _carried_zoom(plan: BlendPlan, result: DeblendResult, new_plan: BlendPlan) -> np.ndarray:
    """Zooms of ``new_plan``'s sources: a source of ``plan`` keeps the zoom its first fit
    ``result`` drew it at (given, or chosen by the engine), a new one gets 1."""
    old = {tuple(xy): int(z) for xy, z in zip(plan.sources_xy.tolist(), np.asarray(result.zoom).reshape(-1))}
    return np.array([old.get(tuple(xy), 1) for xy in new_plan.sources_xy.tolist()], np.int64)


def _refit_plan(plan: BlendPlan, new_plan: BlendPlan) -> BlendPlan:
    """``new_plan`` (the parent with added peaks) on ``plan``'s fit region and neighbours.

    The objectives of the first fit and the refit compare only over the same pixels and the same
    other sources: the refit keeps the first fit's region and its neighbours. A neighbour that
    planning picked near an added peak could also lie outside that region, which the engine
    rejects (the refit, and with it the added peak, was lost).
    """
    return dataclasses.replace(new_plan, neighbours_xy=np.asarray(plan.neighbours_xy), region=plan.region)


def _penalty(configured: float | None, n_parameters: int, n_data: int, factor: float = 1.0) -> float:
    """The configured penalty per added source, or ``factor`` times the BIC's for ``n_parameters``."""
    return float(configured) if configured is not None else factor * bic_penalty(n_parameters, n_data)


# --- residual peaks --------------------------------------------------------------------------------


def residual_peaks(
    config, plan: BlendPlan, result: DeblendResult, coadd: MultibandCoadd, stamp_size: int
) -> tuple[np.ndarray, bool, np.ndarray, np.ndarray]:
    """Peaks of a fitted parent's residual, inside its footprint.

    Parameters
    ----------
    config : `MadnessDeblendConfig`
        The ``residualPeak*`` and ``maxResidualPeaks`` fields.
    plan : `BlendPlan`
        The parent's plan.
    result : `DeblendResult`
        Its first fit.
    coadd : `MultibandCoadd`
        The coadd, model units.
    stamp_size : `int`
        The deblender's stamp size.

    Returns
    -------
    peaks_xy : `numpy.ndarray`
        ``(k, 2)`` (x, y) tract-frame peaks.
    limited : `bool`
        Part of the footprint was left out as the light of a zoomed or truncated model.
    peak_significance : `numpy.ndarray`
        ``(k,)`` the filtered residual's significance at each peak.
    peak_contrast : `numpy.ndarray`
        ``(k,)`` the filtered models over the filtered residual at each peak (`model_contrast`),
        NaN unless ``residualPeakMaxModelContrast`` is set.
    """
    if config.maxResidualPeaks <= 0:
        return np.zeros((0, 2), np.int64), False, np.zeros(0), np.zeros(0)
    y0, x0, y1, x1 = plan.region
    blend = plan.engine_input(coadd)
    model = result.model_image()
    significance = residual_significance(
        blend["image"] - model,
        blend["variance"],
        blend["mask"],
        config.residualPeakSmoothing,
        model=model,
        model_error=config.residualPeakModelError,
    )
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inside = plan.parent.footprint.contains(yy.ravel(), xx.ravel()).reshape(yy.shape)
    limited = False
    if config.residualPeakSkipLarge:
        # A bump in the wings of a galaxy the stamp cannot hold is that galaxy, not a new one.
        large = unmodelled_light(inside.shape, result.centers_xy, result.zoom, result.truncated, stamp_size,
                                 enveloped=result.enveloped)
        limited = bool((inside & large).any())
        inside &= ~large
    # The contrast costs two more filters per parent: only where the opt-in bound needs it.
    contrast = np.full(inside.shape, np.nan)
    if config.residualPeakMaxModelContrast is not None:
        contrast = model_contrast(blend["image"] - model, model, blend["mask"], config.residualPeakSmoothing)
        inside &= contrast <= config.residualPeakMaxModelContrast
    local = find_residual_peaks(
        significance,
        inside,
        blend["peaks_xy"],
        threshold=config.residualPeakThreshold,
        min_separation=config.residualPeakMinSeparation,
        max_peaks=config.maxResidualPeaks,
        centers_xy=result.centers_xy,
        reach=stamp_size * np.asarray(result.zoom).reshape(-1),
        symmetry=config.residualPeakSymmetry,
        ring=config.residualPeakRing,
        ring_fraction=config.residualPeakRingFraction,
    )
    return (local + np.array([x0, y0], np.int64), limited, significance[local[:, 1], local[:, 0]],
            contrast[local[:, 1], local[:, 0]])


def add_residual_peaks(
    config, context: RefitContext, fitted: list[Fitted], first_id: int
) -> tuple[list[Fitted], set[int]]:
    """Refit parents with the peaks of their residual; keep the refits that pay their penalty.

    With ``residualPeakMaxOffset`` (3 px by default) the added sources' positions are fitted and,
    with ``residualPeakMoveNeighbours``, that of the parent's source nearest each (the others
    held); an added source whose fitted centre ends nearer another source than
    ``residualPeakMinSeparation`` is dropped and its parent refitted with the rest, if any.

    Parameters
    ----------
    config : `MadnessDeblendConfig`
        The task's config (``residualPeak*``, ``maxResidualPeaks``, ``maxZoom``).
    context : `RefitContext`
        The patch and the task's planner and fitter. Each parent's row gets
        ``deblend_residualPeaksLimited``, ``deblend_nResidualPeaks``,
        ``deblend_nResidualPeaksRejected`` and, for a kept refit, ``deblend_nNeighbors``;
        its ``deblend_runtime`` grows by the refit's.
    fitted : `list` [`Fitted`]
        The fitted parents.
    first_id : `int`
        Id of the first new source; ids after it follow (unique in the patch).

    Returns
    -------
    fitted : `list` [`Fitted`]
        As given, with the plan and result of each kept refit in place of the first fit.
    residual_ids : `set` [`int`]
        Ids of the kept residual peaks' sources.
    """
    rows = context.parent_rows
    stamp_size = context.deblender.stamp_size
    settings, extra = context.settings, 0
    if config.residualPeakMaxOffset > 0:
        # Only the added sources move (`_added_sources`); their offsets are two more parameters each.
        settings = dataclasses.replace(
            settings, fit_offsets=True, offset_max=config.residualPeakMaxOffset,
            offset_sigma=config.residualPeakOffsetSigma,
        )
        extra = 2
    candidates: list[tuple[int, BlendPlan]] = []
    added: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # fitted index -> ids, tract-frame peaks
    next_id = first_id
    for index, (k, plan, result) in enumerate(fitted):
        peaks_xy, limited, significance, contrast = residual_peaks(
            config, plan, result, context.coadd, stamp_size
        )
        rows[k]["deblend_residualPeaksLimited"] = limited
        if not len(peaks_xy):
            continue
        context.log.debug("Parent %d: residual peaks at %s, significance %s, model contrast %s",
                          plan.parent.id, peaks_xy.tolist(), np.round(significance, 1).tolist(),
                          np.round(contrast, 2).tolist())
        ids = np.arange(next_id, next_id + len(peaks_xy), dtype=np.int64)
        next_id += len(peaks_xy)
        rows[k]["deblend_nResidualPeaksRejected"] = len(ids)
        new_plan = _residual_plan(config, context, k, plan, result, ids, peaks_xy)
        if new_plan is not None:
            added[index] = (ids, peaks_xy)
            candidates.append((index, new_plan))

    residual_ids: set[int] = set()
    fitted = list(fitted)
    n_refitted = len(candidates)
    # Each round drops the added sources that ended on another source and refits the rest.
    for _ in range(max(config.maxResidualPeaks, 1)):
        retry: list[tuple[int, BlendPlan]] = []
        for index, new_plan, outcome, runtime in context.fit(candidates, settings):
            k, plan, result = fitted[index]
            row = rows[k]
            row["deblend_runtime"] += runtime * new_plan.n_sources
            if isinstance(outcome, Exception):
                continue
            ids, peaks_xy = added[index]
            # An added source whose fitted centre came nearer another source than a residual
            # peak may be to a peak took a piece of that source's light, not a galaxy of its own.
            onto = _onto_others(outcome.centers_xy, _added_sources(new_plan, ids),
                                config.residualPeakMinSeparation)
            if onto.any():
                kept = ~np.isin(ids, new_plan.peak_ids[onto[: len(new_plan.peak_ids)]])
                context.log.debug("Parent %d: %d residual peaks ended on another source",
                                  plan.parent.id, int((~kept).sum()))
                if kept.any():
                    again = _residual_plan(config, context, k, plan, result, ids[kept], peaks_xy[kept])
                    if again is not None:
                        added[index] = (ids[kept], peaks_xy[kept])
                        retry.append((index, again))
                continue
            n_added = new_plan.n_sources - plan.n_sources
            n_usable = int(context.usable(plan).sum())
            penalty = _penalty(
                config.residualPeakPenalty, context.deblender.latent_dim + extra, n_usable,
                config.residualPeakPenaltyFactor,
            )
            required = n_added * penalty
            n_moved = int(np.count_nonzero(new_plan.fit_offsets)) - n_added if extra else 0
            if n_moved > 0 and config.residualPeakPenalty is None:
                # The first fit's sources that moved: their offsets are parameters too.
                required += _penalty(None, 2 * n_moved, n_usable, config.residualPeakPenaltyFactor)
            gain = float(result.objective_final - outcome.objective_final)
            context.log.debug(
                "Parent %d: %d residual peaks lower the objective by %.1f (penalty %.1f per source, %.1f "
                "in all)", plan.parent.id, len(ids), gain, penalty, required,
            )
            if gain > required:
                fitted[index] = (k, new_plan, outcome)
                residual_ids.update(int(i) for i in ids)
                row["deblend_nResidualPeaks"] = len(ids)
                row["deblend_nResidualPeaksRejected"] -= len(ids)
                row["deblend_nNeighbors"] = len(new_plan.neighbours_xy)
        if not retry:
            break
        candidates = retry
    context.log.info(
        "Residual peaks: %d parents refitted, %d new sources kept", n_refitted, len(residual_ids)
    )
    return fitted, residual_ids


# --- pair splits -----------------------------------------------------------------------------------


def pair_candidates(
    config, plan: BlendPlan, result: DeblendResult, context: RefitContext
) -> tuple[list[tuple[int, np.ndarray]], int]:
    """A fitted parent's sources worth trying as pairs, largest chi^2 excess first.

    Parameters
    ----------
    config : `MadnessDeblendConfig`
        The ``pairSplit*``, ``maxPairSplits`` and ``residualPeakSmoothing`` fields.
    plan : `BlendPlan`
        The parent's plan.
    result : `DeblendResult`
        Its first fit.
    context : `RefitContext`
        The patch.

    Returns
    -------
    candidates : `list` [`tuple` [`int`, `numpy.ndarray`]]
        ``(source index, (2, 2) tract-frame (x, y) of the pair)`` for at most ``maxPairSplits``
        of the parent's own sources.
    n_usable : `int`
        Usable pixels x bands of the fit region (the BIC's data points).
    """
    y0, x0, _, _ = plan.region
    blend = plan.engine_input(context.coadd)
    image, variance, bad = blend["image"], blend["variance"], blend["mask"]
    usable = ~bad_pixels(image, variance, bad)
    n_usable = int(usable.sum())
    if config.maxPairSplits <= 0:
        return [], n_usable
    # What a split must pay at least: the added source's latents (the offsets come on top).
    penalty = _penalty(config.pairSplitPenalty, result.latents.shape[-1], n_usable)
    model = result.model_image()
    residual = image - model
    size = result.stamp_size
    scored = []
    for source in range(len(plan.peak_ids)):
        if result.truncated[source]:
            continue  # its residual is its own wings (see residual_peaks.unmodelled_light)
        # The source's light: what the other models leave of the data, band-summed, in its stamp.
        overlap = stamp_overlap(result.stamp_yx0[source], (size, size), (0, 0, *image.shape[1:]))
        if overlap is None:
            continue
        (ty, tx), (ry, rx) = overlap
        light = np.where(
            usable[:, ry, rx], residual[:, ry, rx] + result.models[source][:, ty, tx], 0.0
        ).sum(axis=0)
        cx, cy = result.centers_xy[source]
        moments = light_moments(light, (cx - rx.start, cy - ry.start))
        if moments is None:
            continue
        separation = moments.pair_separation
        if not config.pairSplitMinSeparation <= separation <= config.pairSplitMaxSeparation:
            continue
        centre = (moments.x + rx.start, moments.y + ry.start)
        if np.hypot(centre[0] - cx, centre[1] - cy) > separation:
            continue  # the light's centroid is not this source's
        excess = chi2_excess(
            residual, variance, bad, model, config.pairSplitModelError, centre,
            0.5 * separation + 2.0 * config.residualPeakSmoothing,
        )
        context.log.debug(
            "Parent %d, source %d at (%.1f, %.1f): light %.1f px as a pair, kurtosis %+.2f, chi^2 excess "
            "%.1f (penalty %.1f)", plan.parent.id, plan.peak_ids[source], cx + x0, cy + y0, separation,
            moments.kurtosis, excess, penalty,
        )
        # The excess about the light's centre is what a split can win back there; the refit's gain
        # (the neighbours refitted too) was 0.9-1.8x it on the tuning patches, so the gate is loose.
        if excess <= config.pairSplitTryExcess * penalty:
            continue
        pair = pair_positions(moments) + np.array([x0 + rx.start, y0 + ry.start], np.float64)
        scored.append((excess, source, pair))
    scored.sort(key=lambda item: -item[0])
    return [(source, pair) for _, source, pair in scored[: config.maxPairSplits]], n_usable


def split_gain(
    model_error: float, plan: BlendPlan, result: DeblendResult, outcome: DeblendResult, coadd: MultibandCoadd
) -> float:
    """Fall of the MAP objective from ``result`` to ``outcome`` with a model error in the noise.

    Each objective's prior terms (its objective less its own chi^2 / 2) are kept; its chi^2 is
    recomputed with ``model_error`` times the first fit's model added to the noise of both fits,
    so that a single galaxy the decoder draws imperfectly is not cut in two.
    """
    blend = plan.engine_input(coadd)
    args = (blend["image"], blend["variance"], blend["mask"])
    first, second = result.model_image(), outcome.model_image()

    def robust(fit: DeblendResult, model: np.ndarray) -> float:
        priors = fit.objective_final - model_error_objective(*args, model, model, 0.0)
        return priors + model_error_objective(*args, model, first, model_error)

    return float(robust(result, first) - robust(outcome, second))


def split_pairs(
    config, context: RefitContext, fitted: list[Fitted], first_id: int
) -> tuple[list[Fitted], set[int], set[int]]:
    """Refit parents with one source split into a pair; keep the best split that pays its penalty
    and whose members pass ``pairSplitMinSeparation``, ``pairSplitMaxOverlap`` and
    ``pairSplitMaxNeighbourLight``.

    Parameters
    ----------
    config : `MadnessDeblendConfig`
        The task's config (``pairSplit*``, ``maxPairSplits``).
    context : `RefitContext`
        The patch and the task's planner and fitter. Each parent's row gets
        ``deblend_nPairSplits``, ``deblend_nPairSplitsRejected`` and, for a kept split,
        ``deblend_nNeighbors``; its ``deblend_runtime`` grows by the refits'.
    fitted : `list` [`Fitted`]
        The fitted parents.
    first_id : `int`
        Id of the first new source; ids after it follow (unique in the patch).

    Returns
    -------
    fitted : `list` [`Fitted`]
        As given, with the plan and result of each kept split in place of the first fit.
    split_ids : `set` [`int`]
        Ids of both members of each kept pair.
    new_ids : `set` [`int`]
        Ids of the kept pairs' second members (sources the detection did not give), one per
        kept split.
    """
    rows = context.parent_rows
    split_settings = context.settings
    if config.pairSplitFitOffsets:
        # A weak prior on the offsets (as wide as their bound): the members are placed
        # symmetrically about the light's centroid, and an unequal pair's are not.
        split_settings = dataclasses.replace(
            split_settings, fit_offsets=True, offset_max=config.pairSplitMaxOffset,
            offset_sigma=config.pairSplitMaxOffset,
        )
    tries: list[tuple[int, BlendPlan]] = []
    tried: list[tuple[int, np.ndarray, float]] = []  # fitted index, (old id, new id), penalty
    next_id = first_id
    for index, (k, plan, result) in enumerate(fitted):
        if (np.asarray(result.zoom) > 1).any():
            continue  # a split's refit draws every source at zoom 1: not comparable
        found, n_usable = pair_candidates(config, plan, result, context)
        parent = plan.parent
        peak_ids = np.asarray(parent.peak_ids, np.int64)
        peaks_xy = fitted_peaks(plan, result)
        for source, pair_xy in found:
            old_id = int(plan.peak_ids[source])
            at = int(np.flatnonzero(peak_ids == old_id)[0])
            # The member nearer the old peak keeps its id.
            near = int(np.argmin(np.hypot(*(pair_xy - peaks_xy[at]).T)))
            new_xy = peaks_xy.copy()
            new_xy[at] = pair_xy[near]
            augmented = ParentFootprint(
                parent.id,
                parent.footprint,
                np.append(peak_ids, next_id),
                np.concatenate([new_xy, pair_xy[1 - near][None]]),
            )
            new_plan = context.plan(augmented, k, 1)
            if next_id not in new_plan.peak_ids or old_id not in new_plan.peak_ids:
                next_id += 1
                continue
            # The refit keeps the first fit's region and neighbours (`_refit_plan`), and every
            # source stays at zoom 1 as in the first fit.
            new_plan = _refit_plan(plan, new_plan)
            new_plan = dataclasses.replace(new_plan, zoom=np.ones(new_plan.n_sources, np.int64))
            # The BIC counts the added source's latents and, when fitted, every source's offsets.
            extra = context.deblender.latent_dim + (
                2 * new_plan.n_sources if config.pairSplitFitOffsets else 0
            )
            penalty = _penalty(config.pairSplitPenalty, extra, n_usable)
            tried.append((index, np.array([old_id, next_id]), penalty))
            tries.append((len(tried) - 1, new_plan))
            rows[k]["deblend_nPairSplitsRejected"] = rows[k].get("deblend_nPairSplitsRejected", 0) + 1
            next_id += 1

    fitted = list(fitted)
    best: dict[int, tuple[float, BlendPlan, DeblendResult, np.ndarray]] = {}
    for t, new_plan, outcome, runtime in context.fit(tries, split_settings):
        index, ids, penalty = tried[t]
        k, plan, result = fitted[index]
        rows[k]["deblend_runtime"] += runtime * new_plan.n_sources
        if isinstance(outcome, Exception):
            continue
        gain = split_gain(config.pairSplitModelError, plan, result, outcome, context.coadd)
        # The fitted members must stay apart: two halves of one profile drawn closer than the
        # PSF are the decoder's extra freedom, not a pair.
        members = [int(np.flatnonzero(new_plan.peak_ids == i)[0]) for i in ids]
        apart = float(np.hypot(*np.diff(outcome.centers_xy[members], axis=0)[0]))
        overlap = member_overlap(*(outcome.source_image(i) for i in members))
        # The neighbours' light at each member over the split source's own (first fit's models).
        source = int(np.flatnonzero(plan.peak_ids == ids[0])[0])
        own = result.source_image(source).sum(axis=0)
        others = result.model_image().sum(axis=0) - own
        neighbours = neighbour_light_ratio(own, others, outcome.centers_xy[members])
        context.log.debug(
            "Parent %d: splitting source %d lowers the objective by %.1f (penalty %.1f), members "
            "%.1f px apart; log-prior %.1f -> %.1f; overlap %.3f, neighbours' light %s", plan.parent.id,
            ids[0], gain, penalty, apart, float(np.sum(result.log_prior)), float(np.sum(outcome.log_prior)),
            overlap, np.round(neighbours, 2).tolist(),
        )
        if apart < config.pairSplitMinSeparation or overlap > config.pairSplitMaxOverlap:
            continue
        bound = config.pairSplitMaxNeighbourLight
        if bound is not None and neighbours.max() > bound:
            continue
        if gain > penalty and gain - penalty > best.get(index, (0.0,))[0]:
            best[index] = (gain - penalty, new_plan, outcome, ids)
    split_ids: set[int] = set()
    new_ids: set[int] = set()
    for index, (_, new_plan, outcome, ids) in best.items():
        k = fitted[index][0]
        fitted[index] = (k, new_plan, outcome)
        split_ids.update(int(i) for i in ids)
        new_ids.add(int(ids[1]))
        row = rows[k]
        row["deblend_nPairSplits"] = 1
        row["deblend_nPairSplitsRejected"] = row.get("deblend_nPairSplitsRejected", 1) - 1
        row["deblend_nNeighbors"] = len(new_plan.neighbours_xy)
    context.log.info("Pair splits: %d sources tried, %d split", len(tries), len(best))
    return fitted, split_ids, new_ids
