"""What the deblender returns for one blend."""

from __future__ import annotations

__all__ = ["DeblendResult"]

import dataclasses

import numpy as np

from .geometry import paste_stamps, peaks_to_pixels, subpixel_shifts
from .wings import WingProfiles, paint_wings


@dataclasses.dataclass
class DeblendResult:
    """Per-source models, latents and diagnostics of one deblended blend.

    Plain numpy arrays only, so results pickle and cross process boundaries.

    Attributes
    ----------
    bands : `tuple` [`str`, ...]
        Band of each model plane, in order.
    image_shape : `tuple` [`int`, `int`]
        ``(H, W)`` of the image that was deblended.
    peaks_xy : `numpy.ndarray`
        ``(n, 2)`` input peaks, ``(x, y)`` pixels (float: sub-pixel positions are kept).
    stamp_yx0 : `numpy.ndarray`
        ``(n, 2)`` ``(y0, x0)`` image pixel of each model stamp's first pixel: the stamp is
        centred on the peak's pixel (`lsst.meas.madness.engine.geometry`). A stamp may
        extend beyond the image (``edge``): `model_image` crops it.
    models : `numpy.ndarray`
        ``(n, bands, P, P)`` float32 model of each source, flux units per pixel, on the image's
        pixel grid: the decoded stamp moved by the peak's sub-pixel offset from its pixel
        centre (`shifts`), plus the fitted offset if any, as the fit placed it. ``P`` is the
        decoder's stamp side ``S`` when every ``zoom`` is 1; otherwise the footprint of the
        largest zoom (``zoom_footprint_size(S, zoom.max())``, e.g. 93 for zoom 2), every model
        centred in it. With ``MapSettings.outskirts`` (and a PSF) the pixels from 12 px of each
        centre that the decoder drew fainter than the source's outer profile are lifted to it
        (`lsst.meas.madness.engine.wings.complete_outskirts`).
    latents, initial_latents : `numpy.ndarray`
        ``(n, L)`` MAP latents and the VAE-deblender's initial latents.
    log_prior : `numpy.ndarray`
        ``(n,)`` flow log-density of the MAP latents.
    chi2 : `numpy.ndarray`
        ``(n, bands)`` reduced chi^2 of the blend residual over each source's stamp, per band
        (mean of ``(y - model)^2 / variance`` over usable pixels; NaN where there is none).
    n_iter : `int`
        Optimisation steps taken.
    converged : `bool`
        `True` if the stopping rule stopped the blend before ``max_iter``.
    objective_initial, objective_final : `float`
        Objective (chi^2 / 2 minus log-prior) at the initial and the final latents.
    loss_history : `numpy.ndarray`
        ``(n_iter,)`` objective before each step (with ``MapSettings.optimizer="lbfgs"``, the
        objective of the last point its line search accepted after each evaluation).
    edge, no_data : `numpy.ndarray`
        ``(n,)`` bool: stamp crosses the image edge; stamp had no usable pixel (model from
        the prior only).
    masked_fraction : `numpy.ndarray`
        ``(n,)`` fraction of in-image stamp pixels with zero weight.
    offsets_xy : `numpy.ndarray`
        ``(n, 2)`` ``(dx, dy)`` position offset fitted with the latents (``MapSettings.fit_offsets``;
        zeros otherwise), pixels: the fitted centre is ``peaks_xy + offsets_xy`` (`centers_xy`).
    zoom : `numpy.ndarray`
        ``(n,)`` int image pixels per decoder stamp pixel of each model (1: as decoded; 2 or
        more: a galaxy bigger than the stamp, drawn with larger pixels, see `extended`).
    edge_flux_fraction : `numpy.ndarray`
        ``(n,)`` fraction of each decoded MAP stamp's flux (band sum) in its outer 2 stamp
        pixels: large (more than ~0.02) where the model runs into its stamp's edge, i.e. the
        galaxy is probably cut off even at its zoom (`truncated`).
    amplitudes : `numpy.ndarray`
        ``(n, bands)`` flux factor per source and band fitted with the latents
        (``MapSettings.fit_amplitudes``; ones otherwise), already applied to `models`.
    envelopes : `numpy.ndarray` or `None`
        ``(m, bands, H, W)`` float32 light of the extended sources beyond their stamps
        (``MapSettings.fit_envelopes``), flux units, on the image grid (zero inside each one's
        stamp and outside the fit region); `None` when no source has one. Part of its source:
        `source_image` and `model_image` include it, `models` (the stamps) do not.
    envelope_sources : `numpy.ndarray` or `None`
        ``(m,)`` index of the source each envelope belongs to.
    footprint_sizes : `numpy.ndarray`
        ``(n,)`` side of each source's footprint on the image grid, pixels: the decoder's stamp
        side at zoom 1, `zoom_footprint_size` otherwise (default: ``P`` for every source).
    psf : `numpy.ndarray` or `None`
        ``(bands, h, w)`` unit-sum PSF the wings were drawn from (``deblend(..., psf=)``);
        `None` when none was given.
    wing_fluxes : `numpy.ndarray` or `None`
        ``(n, bands)`` flux of each source's light beyond its footprint drawn from its outer
        profile, the PSF's far profile and, with ``MapSettings.outskirts``, the galaxy's own
        (`lsst.meas.madness.engine.wings`; ``MapSettings.psf_wings``), zero for a source with
        an envelope; `None` without a PSF. Part of its source: `source_image`, `model_image`
        and `far_light` include it, `models` do not (they hold the outskirts the profile
        completed inside the footprint, `lsst.meas.madness.engine.wings.complete_outskirts`).
    wings : `lsst.meas.madness.engine.wings.WingProfiles` or `None`
        The outer profile of each source the wings are painted from; `None` without a PSF.
    asymmetry : `numpy.ndarray`
        ``(n,)`` asymmetry of each decoded model (flux factors applied, before its shift) under
        a rotation by 180 degrees, in [0, 1], bands weighted by the sky's inverse variance
        (`lsst.meas.madness.engine.objective.stamp_asymmetry`); ``MapSettings.symmetry_weight``
        times its sum is part of `objective_final`. Zeros when not computed.
    refit_alone : `numpy.ndarray`
        ``(n,)`` bool: the source was fitted again alone beside a brighter neighbour, on the
        image minus the other sources' models (``MapSettings.refit_beside_brighter``); its
        latents, flux factors and model are the refit's, and `n_iter` counts the refits' steps
        after the blend's (`loss_history` is the blend's fit alone).
    """

    bands: tuple[str, ...]
    image_shape: tuple[int, int]
    peaks_xy: np.ndarray
    stamp_yx0: np.ndarray
    models: np.ndarray
    latents: np.ndarray
    initial_latents: np.ndarray
    log_prior: np.ndarray
    chi2: np.ndarray
    n_iter: int
    converged: bool
    objective_initial: float
    objective_final: float
    loss_history: np.ndarray
    edge: np.ndarray
    no_data: np.ndarray
    masked_fraction: np.ndarray
    offsets_xy: np.ndarray | None = None
    zoom: np.ndarray | None = None
    edge_flux_fraction: np.ndarray | None = None
    amplitudes: np.ndarray | None = None
    envelopes: np.ndarray | None = None
    envelope_sources: np.ndarray | None = None
    footprint_sizes: np.ndarray | None = None
    psf: np.ndarray | None = None
    wing_fluxes: np.ndarray | None = None
    wings: WingProfiles | None = None
    asymmetry: np.ndarray | None = None
    refit_alone: np.ndarray | None = None

    TRUNCATED_EDGE_FRACTION = 0.02
    """`edge_flux_fraction` above which `truncated` calls a model cut off by its stamp."""

    def __post_init__(self) -> None:
        if self.offsets_xy is None:
            self.offsets_xy = np.zeros((len(self.peaks_xy), 2))
        if self.zoom is None:
            self.zoom = np.ones(len(self.peaks_xy), np.int64)
        if self.edge_flux_fraction is None:
            self.edge_flux_fraction = np.zeros(len(self.peaks_xy))
        if self.amplitudes is None:
            self.amplitudes = np.ones((len(self.peaks_xy), len(self.bands)))
        if self.asymmetry is None:
            self.asymmetry = np.zeros(len(self.peaks_xy))
        if self.refit_alone is None:
            self.refit_alone = np.zeros(len(self.peaks_xy), bool)
        if self.footprint_sizes is None:
            self.footprint_sizes = np.full(len(self.peaks_xy), self.models.shape[-1], np.int64)

    @property
    def extended(self) -> np.ndarray:
        """``(n,)`` bool: the source's model was drawn with a zoom > 1 (bigger than the stamp)."""
        return np.asarray(self.zoom) > 1

    @property
    def truncated(self) -> np.ndarray:
        """``(n,)`` bool: the model's `edge_flux_fraction` exceeds `TRUNCATED_EDGE_FRACTION`."""
        return np.asarray(self.edge_flux_fraction) > self.TRUNCATED_EDGE_FRACTION

    @property
    def n_sources(self) -> int:
        """Number of sources."""
        return len(self.peaks_xy)

    @property
    def shifts(self) -> np.ndarray:
        """``(n, 2)`` ``(dy, dx)`` by which each model was moved from its stamp's central pixel: the
        peak's sub-pixel remainder plus the fitted offset."""
        return subpixel_shifts(self.peaks_xy) + np.asarray(self.offsets_xy)[:, ::-1]

    @property
    def centers_xy(self) -> np.ndarray:
        """``(n, 2)`` ``(x, y)`` centre of each model: the peak plus the fitted offset."""
        return np.asarray(self.peaks_xy, np.float64) + np.asarray(self.offsets_xy)

    @property
    def stamp_size(self) -> int:
        """Side of the model stamps on the image grid in pixels (``P`` of `models`)."""
        return self.models.shape[-1]

    @property
    def enveloped(self) -> np.ndarray:
        """``(n,)`` bool: the source's light beyond its stamp was fitted (`envelopes`)."""
        flags = np.zeros(self.n_sources, bool)
        if self.envelope_sources is not None:
            flags[np.asarray(self.envelope_sources, np.int64)] = True
        return flags

    @property
    def winged(self) -> np.ndarray:
        """``(n,)`` bool: the source has light beyond its footprint drawn from its outer profile (`wing_fluxes`)."""
        if self.wing_fluxes is None:
            return np.zeros(self.n_sources, bool)
        return np.any(np.asarray(self.wing_fluxes) != 0, axis=1)

    def wing_images(self, indices=None, *, total: bool = False) -> np.ndarray:
        """Wings of sources ``indices`` (default: all) on the image grid: ``(m, bands, H, W)``,
        or their sum ``(bands, H, W)`` with ``total``; zeros without a PSF."""
        indices = np.arange(self.n_sources) if indices is None else np.asarray(list(indices), np.int64)
        shape = (len(self.bands), *self.image_shape)
        if self.wings is None or self.psf is None:
            return np.zeros(shape if total else (len(indices), *shape), np.float32)
        return paint_wings(self.wings, peaks_to_pixels(self.peaks_xy), self.psf, self.image_shape, indices=indices,
                           total=total)

    def far_light(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Every source's light beyond its stamp: the envelopes, then the PSF wings.

        Returns
        -------
        images : `numpy.ndarray` or `None`
            ``(m, bands, H, W)`` float32, on the image grid; `None` when there is none.
        sources : `numpy.ndarray` or `None`
            ``(m,)`` source of each image (a source appears at most once: one with an envelope
            has no wing).
        """
        images, sources = [], []
        if self.envelopes is not None:
            images.append(np.asarray(self.envelopes, np.float32))
            sources.append(np.asarray(self.envelope_sources, np.int64))
        winged = np.flatnonzero(self.winged)
        if len(winged):
            images.append(self.wing_images(winged))
            sources.append(winged)
        if not images:
            return None, None
        return np.concatenate(images), np.concatenate(sources)

    def source_image(self, index: int) -> np.ndarray:
        """Model of source ``index`` painted on the image grid, its envelope or wing included,
        ``(bands, H, W)``."""
        return self._paint([index])

    def model_image(self) -> np.ndarray:
        """Sum of all source models (envelopes and wings included) on the image grid,
        ``(bands, H, W)``, cropped at the edges."""
        return self._paint(range(self.n_sources))

    def _paint(self, indices) -> np.ndarray:
        indices = list(indices)
        image = paste_stamps(self.models[indices], self.stamp_yx0[indices], self.image_shape,
                             dtype=np.float32)
        if self.envelopes is not None:
            for envelope, source in zip(self.envelopes, self.envelope_sources):
                if int(source) in indices:
                    image += envelope
        if self.wing_fluxes is not None and self.psf is not None:
            image += self.wing_images(indices, total=True)
        return image
