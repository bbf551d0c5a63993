"""The decoder's reach: how well a model can draw a galaxy at all.

Each galaxy of a set of TestFields is fitted *alone*, on its own *noiseless* isolated image,
by the MAP engine (its VAE-deblender initialisation, then MAP with the model's prior, the sky
variance of the band as weights). No neighbour and no noise stand in the way, so what is left is
the error of the decoder's manifold: a model whose reach is a 5% flux error cannot deblend to
better than 5%. Three numbers per band, against the noiseless truth:

- ``flux_error``: ``|F_model / F_true - 1|`` in a circular aperture of ``aperture_radius``
  pixels (8 by default) at the true centre;
- ``cosine``: cosine similarity (eq. 22) of the 45x45 stamps;
- ``e1_residual``: ``e1`` of the model minus ``e1`` of the truth in that band (eq. 23, GalSim
  HSM adaptive moments of the 45x45 stamps, as the evaluation measures shapes);
- ``init_flux_error``, ``init_cosine``, ``init_e1_residual``: the same for the VAE-deblender's
  initialisation alone.

The fit runs a fixed number of MAP steps (200, the paper's maximum) instead of the engine's
stopping rule: on a noiseless galaxy the rule stops after ~45 steps, while the objective still
falls by orders of magnitude (measured with the first shipped model on galaxies it drew itself:
4-21% flux error after the rule's 45-51 steps, 0.1-1% after 200 forced steps, no better after
1000). The reach is what the decoder can draw, not where the stopping rule gives up.

Only galaxies whose stamp holds at least ``min_flux_fraction`` of their flux are used (the
decoder draws 45x45 stamps; a galaxy larger than that is another issue's problem).

``decoder_reach(..., noisy=True)`` fits each galaxy alone on its isolated image *with its field's
noise* (the field minus every galaxy's noiseless image, cut at the same place), by default with
the engine's own stopping rule: what noise and the prior leave of a galaxy before any neighbour
does (`scripts/shape_budget.py` sets the three side by side with the fits in blends).
"""

from __future__ import annotations

__all__ = ["ReachResult", "decoder_reach", "stamp_reach"]

import dataclasses
from collections.abc import Iterable

import numpy as np

from ..engine.geometry import subpixel_shifts
from .fields import TestField
from .morphology import adaptive_moments, cosine_similarity
from .photometry import aperture_photometry
from .stamps import cutout_stamps


@dataclasses.dataclass
class ReachResult:
    """Per-galaxy reach metrics, ``(n, bands)`` arrays, and their summary.

    ``sources`` is ``(n, 2)``: the field id and the galaxy's index in its field of each row
    (`decoder_reach`), or ``(-1, k)`` for the ``k``-th stamp given to `stamp_reach`. The ``e1``
    residuals are NaN where HSM failed on the model or the truth.
    """

    bands: tuple[str, ...]
    flux_error: np.ndarray
    cosine: np.ndarray
    e1_residual: np.ndarray
    init_flux_error: np.ndarray
    init_cosine: np.ndarray
    init_e1_residual: np.ndarray
    n_iter: np.ndarray
    sources: np.ndarray

    def summary(self) -> dict:
        """Median and mean of each metric per band (and the standard deviation of the ``e1``
        residuals), and the number of galaxies."""
        out: dict = {"n_galaxies": int(len(self.flux_error))}
        for name in ("flux_error", "cosine", "init_flux_error", "init_cosine"):
            values = getattr(self, name)
            for i, band in enumerate(self.bands):
                v = values[:, i][np.isfinite(values[:, i])]
                out[f"{name}_median_{band}"] = float(np.median(v)) if len(v) else None
                out[f"{name}_mean_{band}"] = float(np.mean(v)) if len(v) else None
        for name in ("e1_residual", "init_e1_residual"):
            values = getattr(self, name)
            for i, band in enumerate(self.bands):
                v = values[:, i][np.isfinite(values[:, i])]
                out[f"{name}_std_{band}"] = float(np.std(v)) if len(v) else None
        out["n_iter_median"] = float(np.median(self.n_iter)) if len(self.n_iter) else None
        return out


def decoder_reach(deblender, fields: Iterable[TestField], *, aperture_radius: float = 8.0,
                  min_flux_fraction: float = 0.95, steps: int | None = 200, settings=None,
                  noisy: bool = False) -> ReachResult:
    """Fit every galaxy of ``fields`` alone on its noiseless image; see the module docstring.

    Parameters
    ----------
    deblender : `lsst.meas.madness.MadnessDeblender`
        The model to measure.
    fields : iterable of `TestField`
        Where the galaxies come from (their ``isolated`` noiseless images and centres).
    aperture_radius : `float`
        Radius in pixels of the flux aperture.
    min_flux_fraction : `float`
        Skip a galaxy whose 45x45 stamp holds less than this fraction of its r-band flux.
    steps : `int`, optional
        MAP steps, all of them run (no stopping rule); `None`: the settings' own limits and
        stopping rule.
    settings : `lsst.meas.madness.MapSettings`, optional
        MAP settings (the deblender's by default; ``steps`` overrides their iteration limits).
    noisy : `bool`
        Fit each galaxy on its image plus its field's noise instead of the noiseless image (the
        metrics still compare with the noiseless truth).

    Returns
    -------
    result : `ReachResult`
    """
    size = deblender.stamp_size
    half = size // 2
    blends, truths, sources = [], [], []
    bands = tuple(deblender.bands)
    r = bands.index("r") if "r" in bands else 0
    for field in fields:
        if tuple(field.bands) != bands:
            raise ValueError(f"Fields have bands {field.bands}, the model {bands}.")
        centres = field.centers_xy
        stamps, _ = cutout_stamps(field.isolated, centres, size)
        if noisy:
            noise, _ = cutout_stamps(field.image - field.isolated.sum(axis=0), centres, size)
        total = field.isolated.sum(axis=(-2, -1))
        for k in range(field.n_galaxies):
            truth = stamps[k]
            if not total[k, r] > 0 or truth[r].sum() < min_flux_fraction * total[k, r]:
                continue
            # the galaxy's own position inside its stamp (sub-pixel part kept)
            peak = half + subpixel_shifts(centres[k])[:, ::-1]
            variance = np.broadcast_to(np.asarray(field.variance, np.float32)[:, None, None], truth.shape)
            image = truth + noise[k] if noisy else truth
            blends.append(dict(image=image.astype(np.float32), peaks_xy=peak, variance=variance))
            truths.append(truth)
            sources.append((int(field.field_id), k))
    if not blends:
        raise ValueError("No galaxy of these fields fits in the model's stamp.")
    return _fit_alone(deblender, blends, np.stack(truths), aperture_radius, steps, settings,
                      np.array(sources, np.int64))


def stamp_reach(deblender, stamps: np.ndarray, variance, *, aperture_radius: float = 8.0, steps: int = 200,
                settings=None) -> ReachResult:
    """The reach on noiseless stamps centred on their galaxies (e.g. a training dataset's ``truth``).

    The same fit and metrics as `decoder_reach`, for galaxies that already sit at the centre
    pixel of ``S x S`` stamps, such as the noiseless IsolatedSims the model was trained on:
    comparing its reach on training and on validation stamps tells whether the decoder
    underfits or does not generalise.

    Parameters
    ----------
    deblender : `lsst.meas.madness.MadnessDeblender`
        The model to measure.
    stamps : `numpy.ndarray`
        ``(n, bands, S, S)`` noiseless galaxies, centred on pixel ``(S // 2, S // 2)``, the
        model's bands and stamp size.
    variance : array-like
        ``(bands,)`` per-pixel variance of each band used as the fit's weights (the sky's, or a
        fraction of it to ask what the decoder draws at a higher signal-to-noise).
    aperture_radius, steps, settings
        As in `decoder_reach`.

    Returns
    -------
    result : `ReachResult`
    """
    stamps = np.asarray(stamps, np.float32)
    size = deblender.stamp_size
    if stamps.ndim != 4 or stamps.shape[1:] != (len(deblender.bands), size, size):
        raise ValueError(f"Stamps must be (n, {len(deblender.bands)}, {size}, {size}), not {stamps.shape}.")
    variance = np.asarray(variance, np.float32)
    if variance.shape != (stamps.shape[1],) or not np.all(variance > 0):
        raise ValueError(f"variance must be ({stamps.shape[1]},) positive values, not {variance}.")
    weights = np.broadcast_to(variance[:, None, None], stamps.shape[1:])
    centre = np.array([[size // 2, size // 2]], np.float64)
    blends = [dict(image=stamp, peaks_xy=centre, variance=weights) for stamp in stamps]
    sources = np.stack([np.full(len(stamps), -1), np.arange(len(stamps))], axis=1)
    return _fit_alone(deblender, blends, stamps, aperture_radius, steps, settings, sources)


def _fit_alone(deblender, blends, truths, aperture_radius, steps, settings, sources) -> ReachResult:
    """Fit each one-galaxy blend (``steps`` MAP steps, or the settings' own stopping rule when
    `None`); measure it and its start against ``truths``."""
    # The reach is what the decoder draws on its own stamp (the truths are stamps of the model's
    # size), so no source is zoomed: with the engine's default max_zoom a large galaxy's model
    # would be drawn on a bigger footprint than its truth.
    settings = (settings or deblender.settings).replace(max_zoom=1)
    init_settings = settings.replace(max_iter=0, min_iter=0)
    if steps is not None:
        settings = settings.replace(max_iter=steps, min_iter=steps)
    fitted = deblender.deblend_batch(blends, settings=settings)
    initial = deblender.deblend_batch(blends, settings=init_settings)
    models = np.stack([f.models[0] for f in fitted])
    starts = np.stack([f.models[0] for f in initial])
    n_iter = np.array([int(f.n_iter) for f in fitted])
    truth_e1 = _e1(truths)
    fit, start = (_flux_error_and_cosine(m, truths, aperture_radius) for m in (models, starts))
    return ReachResult(tuple(deblender.bands), flux_error=fit[0], cosine=fit[1], e1_residual=_e1(models) - truth_e1,
                       init_flux_error=start[0], init_cosine=start[1], init_e1_residual=_e1(starts) - truth_e1,
                       n_iter=n_iter, sources=np.asarray(sources, np.int64).reshape(-1, 2))


def _e1(stamps: np.ndarray) -> np.ndarray:
    """``(n, bands)`` HSM ``e1`` of each stamp, the first guess its centre pixel (NaN on failure)."""
    n, _, size, _ = stamps.shape
    return adaptive_moments(stamps, np.full((n, 2), (size - 1) / 2.0)).e1


def _flux_error_and_cosine(models: np.ndarray, truths: np.ndarray, radius: float):
    n, nb, size, _ = truths.shape
    c = [(size - 1) / 2.0]
    flux_err = np.empty((n, nb))
    for k in range(n):  # one aperture per stamp: sep measures one image at a time
        model_flux, _, _ = aperture_photometry(models[k], c, c, [radius], [radius], [0.0])
        true_flux, _, _ = aperture_photometry(truths[k], c, c, [radius], [radius], [0.0])
        with np.errstate(divide="ignore", invalid="ignore"):
            flux_err[k] = np.where(true_flux[0] > 0, np.abs(model_flux[0] / true_flux[0] - 1.0), np.nan)
    return flux_err, cosine_similarity(models, truths)
