"""One parent footprint -> one engine blend -> children footprints and pixel values. No butler here.

Fit region and neighbours
-------------------------
A blend is fitted on every pixel of its peaks' ``S x S`` stamps (clipped to the coadd), not only
on its footprint's pixels: cutting the fit to the footprint truncates the models and leaves the
flux of neighbours in other footprints unmodelled (DESIGN.md measured scarlet_lite at 0.090 mean
|dF/F| that way against 0.027 for whole-field scarlet). Peaks of *other* parents that fall in
those stamps are added to the same MAP fit as neighbours; their models take their share of the
pixels and are then dropped (each neighbour gets its own fit in its own parent's blend).

With a largest zoom ``max_zoom > 1`` (galaxies bigger than the stamp, doc/large-galaxies.md) the
engine may draw any source in a window of ``zoom_footprint_size(S, max_zoom)`` pixels (139 for
``S = 45`` and zoom 3), so the stamps above are those windows: the fit region and the search
for neighbours grow to them. At ``max_zoom == 1`` the window is the stamp itself. Once the zoom of
each source is chosen (`MadnessDeblender.choose_zoom` on that wide region), `with_zoom` shrinks
the region to each source's own window, which for a blend without a large galaxy is the union of
its stamps again.

Children
--------
After the fit, each child is cut to its parent: its footprint is the parent's pixels where its
band-summed model exceeds ``threshold`` times the band-summed noise (plus its peak pixel, so
every child footprint holds exactly its own peak and lies inside its parent). Its pixel values
are either its model (``conserve_flux=False``) or, as scarlet does, the observed flux of each
pixel shared among the children whose footprints hold the pixel (and the neighbours) in
proportion to their models (``conserve_flux=True``); bad pixels take the model value. Flux cut
by either step is reported: per child the fraction of its model outside its footprint, per
parent the fraction of its observed flux given to no child. A child with an envelope (its light
beyond its stamp, ``MapSettings.fit_envelopes``; `plan_blend` with ``cover_parent`` gives the fit
region its parent's pixels) has its stamp plus its envelope as its model, over the whole region.
"""

from __future__ import annotations

__all__ = ["ParentFootprint", "BlendPlan", "plan_blend", "with_zoom", "ChildSplit", "split_blend"]

import dataclasses

import numpy as np

from ..engine import DeblendResult
from ..engine.geometry import (
    paste_stamps,
    peaks_to_pixels,
    stamp_origins_xy,
    stamp_overlap,
    zoom_footprint_size,
)
from ..engine.wings import paint_wings
from .coadds import MultibandCoadd
from .footprints import Footprint


@dataclasses.dataclass
class ParentFootprint:
    """A parent footprint of the detection table with its peaks.

    Attributes
    ----------
    id : `int`
        Parent id.
    footprint : `Footprint`
        Parent footprint, tract frame.
    peak_ids : `numpy.ndarray`
        ``(n,)`` int64 peak ids, in table order (brightest first from `MadnessDetectionTask`).
    peaks_xy : `numpy.ndarray`
        ``(n, 2)`` ``(x, y)`` peak positions, tract frame: integer pixels, or float positions
        (sub-pixel peaks are kept through the fit).
    pseudo : `bool`
        A pseudo source (a DRP sky object: ``merge_peak_sky`` / ``sky_source``), which is not
        deblended (``deblend_skipped_isPseudo``), as scarlet skips it.
    """

    id: int
    footprint: Footprint
    peak_ids: np.ndarray
    peaks_xy: np.ndarray
    pseudo: bool = False

    @property
    def n_peaks(self) -> int:
        return len(self.peak_ids)


@dataclasses.dataclass
class BlendPlan:
    """What to give the engine for one parent, and how to read its result back.

    Attributes
    ----------
    parent : `ParentFootprint`
        The parent.
    peak_ids : `numpy.ndarray`
        ``(n,)`` ids of the peaks deblended (valid peaks of the parent).
    peaks_xy : `numpy.ndarray`
        ``(n, 2)`` their ``(x, y)`` positions, tract frame (float; the engine shifts each model
        by the position's offset from its pixel centre).
    neighbours_xy : `numpy.ndarray`
        ``(m, 2)`` peaks of other parents fitted with them, tract frame.
    dropped : `int`
        Peaks of the parent not deblended: off the coadd, outside the footprint, or in the pixel
        of another peak.
    region : `tuple` [`int`, `int`, `int`, `int`]
        ``(y0, x0, y1, x1)`` tract-frame cut given to the engine (union of all stamps, or of
        the windows of the largest zoom, or of each source's window at its zoom, clipped to
        the coadd).
    zoom : `numpy.ndarray` or `None`
        ``(n_sources,)`` zoom of each source (peaks, then neighbours) given to the engine, or
        `None` to let the engine choose (`MapSettings.max_zoom`).
    covers_parent : `bool`
        ``region`` also holds the parent's footprint: the pixels beyond every stamp where the
        envelope of a bright galaxy (its light beyond its stamp, ``MapSettings.fit_envelopes``)
        is fitted.
    fit_offsets : `numpy.ndarray` or `None`
        ``(n_sources,)`` bool: the sources whose positions the engine fits when its settings fit
        offsets (``MapSettings.fit_offsets``; e.g. only the sources a refit adds), or `None` for
        every zoom-1 source.
    """

    parent: ParentFootprint
    peak_ids: np.ndarray
    peaks_xy: np.ndarray
    neighbours_xy: np.ndarray
    dropped: int
    region: tuple[int, int, int, int]
    zoom: np.ndarray | None = None
    covers_parent: bool = False
    fit_offsets: np.ndarray | None = None

    @property
    def n_sources(self) -> int:
        return len(self.peak_ids) + len(self.neighbours_xy)

    def engine_input(self, coadd: MultibandCoadd) -> dict:
        """Keyword dict for `MadnessDeblender.deblend_batch`: the region's arrays, local peaks."""
        y0, x0, y1, x1 = self.region
        cy0, cx0 = coadd.yx0
        sl = (slice(None), slice(y0 - cy0, y1 - cy0), slice(x0 - cx0, x1 - cx0))
        peaks = np.concatenate([self.peaks_xy, self.neighbours_xy]).astype(np.float64)
        blend = dict(
            image=coadd.image[sl],
            variance=coadd.variance[sl],
            mask=coadd.bad[sl],
            peaks_xy=peaks - np.array([x0, y0], dtype=np.float64),
        )
        if self.zoom is not None:
            blend["zoom"] = np.asarray(self.zoom, np.int64)
        if self.fit_offsets is not None:
            blend["fit_offsets"] = np.asarray(self.fit_offsets, bool)
        return blend

    @property
    def sources_xy(self) -> np.ndarray:
        """``(n_sources, 2)`` (x, y) of the peaks, then the neighbours, tract frame."""
        return np.concatenate([self.peaks_xy, self.neighbours_xy]).astype(np.float64)


def _stamp_union(
    peaks_xy: np.ndarray, stamp_size, bbox: tuple[int, int, int, int], also=None
) -> tuple[int, int, int, int]:
    """Union of the windows around ``peaks_xy`` (one side, or ``(n,)`` sides) and of the box
    ``also`` (``(y0, x0, y1, x1)``, optional), clipped to ``bbox``."""
    sizes = np.broadcast_to(np.asarray(stamp_size, np.int64), (len(peaks_xy),))
    origins = np.concatenate(
        [stamp_origins_xy(peaks_xy[i : i + 1], int(sizes[i])) for i in range(len(peaks_xy))]
    )
    ends = origins + sizes[:, None]
    if also is not None:
        origins = np.concatenate([origins, [also[:2]]])
        ends = np.concatenate([ends, [also[2:]]])
    y0 = max(int(origins[:, 0].min()), bbox[0])
    x0 = max(int(origins[:, 1].min()), bbox[1])
    y1 = min(int(ends[:, 0].max()), bbox[2])
    x1 = min(int(ends[:, 1].max()), bbox[3])
    return y0, x0, y1, x1


def with_zoom(plan: BlendPlan, zoom, coadd_bbox: tuple[int, int, int, int], *, stamp_size: int) -> BlendPlan:
    """The plan with each source's zoom fixed and its region cut to the sources' own windows.

    Parameters
    ----------
    plan : `BlendPlan`
        A plan made for the largest zoom (`plan_blend` with ``max_zoom``), on whose region the
        zooms were chosen.
    zoom : array-like
        ``(n_sources,)`` zoom per source, peaks then neighbours.
    coadd_bbox : `tuple`
        ``(y0, x0, y1, x1)`` tract-frame box of the coadd.
    stamp_size : `int`
        Model stamp side (pixels).

    Returns
    -------
    plan : `BlendPlan`
        Same sources; ``zoom`` set (the engine does not choose again) and ``region`` the union
        of ``zoom_footprint_size(stamp_size, zoom_i)`` windows, which holds every source's model.
    """
    zoom = np.asarray(zoom, np.int64).reshape(-1)
    if len(zoom) != plan.n_sources:
        raise ValueError(f"with_zoom: {len(zoom)} zooms for {plan.n_sources} sources.")
    sides = np.array([int(zoom_footprint_size(stamp_size, int(z))) for z in zoom], np.int64)
    also = plan.parent.footprint.bbox if plan.covers_parent else None
    return dataclasses.replace(plan, zoom=zoom, region=_stamp_union(plan.sources_xy, sides, coadd_bbox, also))


def plan_blend(
    parent: ParentFootprint,
    coadd_bbox: tuple[int, int, int, int],
    *,
    stamp_size: int,
    other_peaks_xy: np.ndarray | None = None,
    max_neighbours: int = 0,
    max_zoom: int = 1,
    cover_parent: bool = False,
) -> BlendPlan:
    """Choose the peaks, neighbours and fit region of one parent.

    Parameters
    ----------
    parent : `ParentFootprint`
        The parent and its peaks.
    coadd_bbox : `tuple`
        ``(y0, x0, y1, x1)`` tract-frame box of the coadd.
    stamp_size : `int`
        Model stamp side (pixels).
    other_peaks_xy : `numpy.ndarray`, optional
        ``(k, 2)`` ``(x, y)`` peaks of all other parents, tract frame.
    max_neighbours : `int`
        Most neighbours to add (nearest first); 0 for none.
    max_zoom : `int`
        Largest zoom the engine may give a source (``MapSettings.max_zoom``, 1 for none): the
        fit region is the union of ``zoom_footprint_size(stamp_size, max_zoom)`` windows around
        the peaks and neighbours, and neighbours are searched in the same windows.
    cover_parent : `bool`
        Grow the fit region to hold the parent's footprint too (`BlendPlan.covers_parent`): the
        pixels where the engine may fit envelopes (``MapSettings.fit_envelopes``).

    Returns
    -------
    plan : `BlendPlan`
        With no peak at all when none is usable (the caller skips the parent).
    """
    peaks = np.asarray(parent.peaks_xy, dtype=np.float64).reshape(-1, 2)
    pix = peaks_to_pixels(peaks)[:, ::-1]  # (x, y) pixel of each peak
    ids = np.asarray(parent.peak_ids, dtype=np.int64)
    by0, bx0, by1, bx1 = coadd_bbox
    on_image = (pix[:, 0] >= bx0) & (pix[:, 0] < bx1) & (pix[:, 1] >= by0) & (pix[:, 1] < by1)
    inside = on_image & parent.footprint.contains(pix[:, 1], pix[:, 0])
    keep = np.zeros(len(peaks), dtype=bool)
    seen = set()
    for i in np.flatnonzero(inside):
        pixel = (int(pix[i, 0]), int(pix[i, 1]))
        if pixel not in seen:
            seen.add(pixel)
            keep[i] = True
    peaks, pix, ids = peaks[keep], pix[keep], ids[keep]
    dropped = int((~keep).sum())
    empty = np.zeros((0, 2), np.float64)
    if len(peaks) == 0:
        return BlendPlan(parent, ids, peaks, empty, dropped, (0, 0, 0, 0))

    neighbours = empty
    # Side of the window any source may be drawn in: the stamp itself at max_zoom == 1.
    window = int(zoom_footprint_size(stamp_size, max_zoom))
    half = window // 2
    if other_peaks_xy is not None and len(other_peaks_xy) and max_neighbours > 0:
        others = np.asarray(other_peaks_xy, dtype=np.float64).reshape(-1, 2)
        other_pix = peaks_to_pixels(others)[:, ::-1]
        # Cheap box cut first: only peaks within half a window of the own peaks' box can qualify.
        lo, hi = pix.min(axis=0) - half, pix.max(axis=0) + half
        near = ((other_pix >= lo) & (other_pix <= hi)).all(axis=1)
        others, other_pix = others[near], other_pix[near]
        # Chebyshev distance (pixels) to the nearest own peak: inside one of its windows when <= half.
        dist = np.abs(other_pix[:, None, :] - pix[None, :, :]).max(axis=2).min(axis=1)
        on_image = ((other_pix[:, 0] >= bx0) & (other_pix[:, 0] < bx1) & (other_pix[:, 1] >= by0)
                    & (other_pix[:, 1] < by1))
        candidates = np.flatnonzero((dist <= half) & (dist > 0) & on_image)
        candidates = candidates[np.argsort(dist[candidates], kind="stable")]
        chosen = []
        for i in candidates:
            pixel = (int(other_pix[i, 0]), int(other_pix[i, 1]))
            if pixel not in seen:
                seen.add(pixel)
                chosen.append(i)
            if len(chosen) >= max_neighbours:
                break
        if chosen:
            neighbours = others[chosen]
    also = parent.footprint.bbox if cover_parent else None
    region = _stamp_union(np.concatenate([peaks, neighbours]), window, coadd_bbox, also)
    return BlendPlan(parent, ids, peaks, neighbours, dropped, region, covers_parent=cover_parent)


@dataclasses.dataclass
class ChildSplit:
    """Children of one deblended parent, cut to the parent.

    Attributes
    ----------
    footprints : `list` [`Footprint`]
        Footprint of each child (tract frame), in `BlendPlan.peak_ids` order.
    values : `list` [`numpy.ndarray`]
        ``(bands, area)`` float32 heavy-footprint values of each child, span order.
    model_flux : `numpy.ndarray`
        ``(n, bands)`` sum of each child's model over the coadd (stamp, and envelope), plus its
        whole wing.
    wing_flux : `numpy.ndarray`
        ``(n, bands)`` flux of each child's wing (`DeblendResult.wing_fluxes`; 0 without).
    model_fraction_in_footprint : `numpy.ndarray`
        ``(n,)`` band-summed fraction of each child's model inside its footprint.
    unassigned_fraction : `float`
        Fraction of the parent's observed flux (good pixels, all bands) given to no child.
    """

    footprints: list[Footprint]
    values: list[np.ndarray]
    model_flux: np.ndarray
    model_fraction_in_footprint: np.ndarray
    unassigned_fraction: float
    wing_flux: np.ndarray


def _window(origin_yx, shape, bbox):
    """Overlap of a ``shape`` box at ``origin_yx`` with ``bbox``: (bbox slices, box slices) or None."""
    overlap = stamp_overlap(origin_yx, shape, bbox)
    return None if overlap is None else overlap[::-1]


def _source_models(plan: BlendPlan, result: DeblendResult) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each source's model as ``(origin_yx, (bands, h, w))``, tract frame, clipped at zero,
    without its wing (`_with_wings` adds them).

    A source with an envelope (``result.enveloped``) is its stamp plus its envelope on the whole
    fit region; any other source is its stamp.
    """
    origins = np.asarray(result.stamp_yx0, dtype=np.int64) + np.array(plan.region[:2], dtype=np.int64)
    # The sub-pixel shift of a decoded stamp rings slightly below zero (engine.geometry); that is
    # no flux of the child, so it neither takes a share of the pixels nor counts in its flux.
    models = [(origins[i], np.clip(result.models[i].astype(np.float64), 0.0, None))
              for i in range(result.n_sources)]
    for i in np.flatnonzero(result.enveloped):
        image = result.source_image(int(i)).astype(np.float64)
        models[i] = (np.array(plan.region[:2], dtype=np.int64), np.clip(image, 0.0, None))
    return models


def _with_wings(models: list, plan: BlendPlan, result: DeblendResult) -> list[tuple[np.ndarray, np.ndarray]]:
    """``models`` (`_source_models`) where each source with a wing (``result.winged``) is its
    stamp plus its wing, on the box of the PSF around its pixel cut to the fit region."""
    models = list(models)
    winged = np.flatnonzero(result.winged)
    if len(winged):
        height, width = result.image_shape
        half = np.array(result.psf.shape[1:]) // 2
        pixels = peaks_to_pixels(result.peaks_xy)
        for i in winged:
            stamp = result.models[i : i + 1]
            stamp_yx0 = np.asarray(result.stamp_yx0[i], dtype=np.int64)
            # The box holding the stamp and the PSF around the source's pixel, on the fit region
            # (the wing beyond it falls on no pixel of the parent).
            y0, x0 = np.maximum(np.minimum(pixels[i] - half, stamp_yx0), 0)
            y1, x1 = np.minimum(np.maximum(pixels[i] + half + 1, stamp_yx0 + stamp.shape[2:]), (height, width))
            box = paint_wings(result.wings, pixels - (y0, x0), result.psf, (y1 - y0, x1 - x0), indices=[i],
                              dtype=np.float64)
            paste_stamps(np.clip(stamp.astype(np.float64), 0.0, None), stamp_yx0[None] - (y0, x0), box.shape[1:],
                         out=box)
            models[i] = (np.array(plan.region[:2], dtype=np.int64) + (y0, x0), box)
    return models


def split_blend(
    plan: BlendPlan,
    result: DeblendResult,
    coadd: MultibandCoadd,
    *,
    threshold: float,
    conserve_flux: bool,
) -> ChildSplit:
    """Cut the fitted models of a blend into child footprints and heavy-footprint values.

    Parameters
    ----------
    plan : `BlendPlan`
        The plan the engine was called with.
    result : `DeblendResult`
        The engine's result; its first ``len(plan.peak_ids)`` sources are the children, the
        rest neighbours.
    coadd : `MultibandCoadd`
        The coadd the plan's region was cut from.
    threshold : `float`
        Model-support threshold in units of the band-summed pixel noise (>= 0).
    conserve_flux : `bool`
        Share the observed flux in proportion to the models (True) or use the models (False).
    """
    n_children = len(plan.peak_ids)
    fp = plan.parent.footprint
    pb = fp.bbox
    py0, px0, py1, px1 = pb
    cy0, cx0 = coadd.yx0
    sl = (slice(None), slice(py0 - cy0, py1 - cy0), slice(px0 - cx0, px1 - cx0))
    obs = coadd.image[sl].astype(np.float64)
    bad = coadd.bad[sl]
    sigma_sum = np.sqrt(np.where(bad, 0.0, coadd.variance[sl]).sum(axis=0))
    parent_mask = fp.to_mask()
    nb = obs.shape[0]

    # The model flux of each child over the coadd (stamp, and envelope, cropped to the image),
    # before the wings join the templates; the wing counts whole.
    stamps = _source_models(plan, result)
    model_flux = np.zeros((n_children, nb))
    for i in range(n_children):
        origin, model = stamps[i]
        win = _window(origin, model.shape[1:], coadd.bbox)
        if win is not None:
            model_flux[i] = model[:, win[1][0], win[1][1]].sum(axis=(1, 2))
    wing_flux = (np.zeros((n_children, nb)) if result.wing_fluxes is None else
                 np.where(result.winged[:n_children, None], np.asarray(result.wing_fluxes)[:n_children], 0.0))
    model_flux += wing_flux

    models = _with_wings(stamps, plan, result)
    den = np.zeros_like(obs)
    count = np.zeros(parent_mask.shape, dtype=np.int32)
    windows, supports = [], []
    for i, (origin, model) in enumerate(models):
        win = _window(origin, model.shape[1:], pb)
        windows.append(win)
        if win is None:
            supports.append(None)
            continue
        (wy, wx), (sy, sx) = win
        m = model[:, sy, sx]
        if i < n_children:
            support = parent_mask[wy, wx] & (m.sum(axis=0) > threshold * sigma_sum[wy, wx])
            py, px = peaks_to_pixels(plan.peaks_xy[i])[0] - (py0, px0)
            if wy.start <= py < wy.stop and wx.start <= px < wx.stop:
                support[py - wy.start, px - wx.start] = True
            supports.append(support)
            den[:, wy, wx] += m * support
            count[wy, wx] += support
        else:
            supports.append(None)
            den[:, wy, wx] += m

    footprints, values = [], []
    fraction = np.zeros(n_children)
    assigned = 0.0
    for i in range(n_children):
        support = supports[i]
        if support is None or not support.any():
            # The peak pixel is inside the parent, so this cannot happen for a valid plan.
            footprints.append(Footprint(np.zeros((0, 3), np.int64)))
            values.append(np.zeros((nb, 0), np.float32))
            continue
        (wy, wx), (sy, sx) = windows[i]
        m = models[i][1][:, sy, sx]
        if conserve_flux:
            d = den[:, wy, wx]
            with np.errstate(divide="ignore", invalid="ignore"):
                share = np.where(d > 0, m / d, 1.0 / np.maximum(count[wy, wx], 1))
            v = np.where(bad[:, wy, wx], m, obs[:, wy, wx] * share)
        else:
            v = m
        v = v[:, support]
        footprints.append(Footprint.from_mask(support, (wy.start + py0, wx.start + px0)))
        values.append(v.astype(np.float32))
        total = model_flux[i].sum()
        fraction[i] = m[:, support].sum() / total if total > 0 else np.nan
        good = ~bad[:, wy, wx][:, support]
        assigned += float(np.where(good, v, 0.0).sum())

    observed = float(np.where(bad, 0.0, obs)[:, parent_mask].sum())
    unassigned = (observed - assigned) / observed if observed != 0 else np.nan
    return ChildSplit(footprints, values, model_flux, fraction, unassigned, wing_flux)
