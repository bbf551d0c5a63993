"""All section-4 metrics of one field at once, for every method on the same footing.

`reference_metrics` measures what does not depend on the deblender (the isolated galaxies in
the field's noise, blendedness, contamination, SNR_blend, the truth's shapes, and the
no-deblending baseline); `model_metrics` scores one method's per-galaxy models against it.
A side-by-side evaluation calls the first once per field and the second once per method.

Every array is ``(n,)`` per galaxy or ``(n, bands)`` per galaxy and band, in catalogue order.
"""

from __future__ import annotations

__all__ = ["MORPHOLOGY_STAMP", "FieldReference", "model_metrics", "reference_metrics"]

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..engine.geometry import subpixel_shifts
from ..errors import MadnessValueError
from .blending import blendedness, contamination
from .morphology import adaptive_moments, cosine_similarity, ellipticity_residual, ssim
from .photometry import (
    catalog_apertures,
    catalog_colour,
    colour,
    colour_residual,
    field_photometry,
    relative_flux_residual,
    snr_blend,
)
from .stamps import cutout_stamps, paint_stamps

MORPHOLOGY_STAMP = 45
"""Side (pixels) of the cutouts, centred on the true centre, on which SSIM, the cosine and
HSM compare a model with the truth: the MADNESS stamp (paper section 3), for every method."""


@dataclasses.dataclass(frozen=True)
class FieldReference:
    """Method-independent inputs and truths of one field (see `reference_metrics`).

    Attributes
    ----------
    field : `numpy.ndarray`
        ``(bands, H, W)`` noisy field.
    variance : `numpy.ndarray` or `float`
        Its per-pixel variance, as given.
    bands : `tuple` [`str`]
        Band of each plane.
    x, y : `numpy.ndarray`
        ``(n,)`` true centres, pixels.
    a, b : `numpy.ndarray`
        ``(n, bands)`` aperture semi-axes (eq. 18), pixels.
    theta : `numpy.ndarray`
        ``(n,)`` aperture angle, radians.
    truth_stamps : `numpy.ndarray`
        ``(n, bands, S, S)`` noiseless isolated galaxies cut around the true centres.
    metrics : `dict` [`str`, `numpy.ndarray`]
        The reference metrics (keys listed in `reference_metrics`).
    """

    field: np.ndarray
    variance: object
    bands: tuple[str, ...]
    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    truth_stamps: np.ndarray
    metrics: dict


def _colours(flux: np.ndarray, bands: Sequence[str], conditions, colour_bands) -> np.ndarray:
    if not all(b in bands for b in colour_bands):
        return np.full(len(flux), np.nan)
    i, j = (list(bands).index(b) for b in colour_bands)
    return colour(flux[:, i], flux[:, j], conditions, colour_bands)


def reference_metrics(field, isolated, catalog, *, variance, conditions, bands=None, centers_xy=None,
                      stamp_size: int = MORPHOLOGY_STAMP, colour_bands=("g", "r")) -> FieldReference:
    """Measure the method-independent quantities of one field.

    Parameters
    ----------
    field : `numpy.ndarray`
        ``(bands, H, W)`` noisy field, electrons per pixel, sky subtracted.
    isolated : `numpy.ndarray`
        ``(n, bands, H, W)`` noiseless image of each galaxy on the field grid (BTK's
        ``isolated_images[i][:n]``). Their sum is the noiseless field, so
        ``field - sum(isolated)`` is the field's noise realisation.
    catalog : `astropy.table.Table` or mapping
        The ``n`` galaxies' CatSim rows (apertures, see `catalog_apertures`; ``g_ab``/``r_ab``
        for the true colour) and, unless ``centers_xy`` is given, ``x_peak``/``y_peak``.
    variance : float or array-like
        Per-pixel variance of ``field`` (scalar, ``(bands,)`` or ``(bands, H, W)``).
    conditions : `lsst.meas.madness.simulation.LsstConditions`
        PSF FWHM, pixel scale, zero points.
    bands : sequence of `str`, optional
        Bands of the planes; default ``conditions.bands``.
    centers_xy : `numpy.ndarray`, optional
        ``(n, 2)`` true centres, ``(x, y)`` pixels.
    stamp_size : `int`
        Side of the morphology cutouts.
    colour_bands : pair of `str`
        Bands of the colour (g-r in the paper).

    Returns
    -------
    reference : `FieldReference`
        Its ``metrics`` hold, per galaxy (and band where ``(n, bands)``):
        ``flux_isolated``, ``flux_isolated_err`` (``F``, on ``field`` minus the true neighbours:
        the isolated galaxy in the same noise field); ``flux_blended``, ``flux_blended_err``
        (``F^b``, no deblending); ``snr_blend`` (eq. 27, on the blended field);
        ``kappa`` (eq. 17); ``beta`` (eq. 16); ``flux_residual_blended`` (eq. 19 without
        deblending); ``colour_true`` (``C^T``), ``colour_isolated`` (``C^N``),
        ``colour_blended`` and its residuals ``colour_residual_true_blended`` (eq. 20) and
        ``colour_residual_blend_blended`` (eq. 21); ``e1_true``, ``e2_true``,
        ``hsm_failed_true`` (HSM on the noiseless isolated galaxies); ``aperture_flag``
        (sep flags of the isolated measurement).
    """
    field = np.asarray(field, np.float64)
    isolated = np.asarray(isolated, np.float64)
    bands = tuple(conditions.bands if bands is None else bands)
    if field.ndim != 3 or field.shape[0] != len(bands):
        raise MadnessValueError(f"field must be (bands, H, W) with {len(bands)} bands; got {field.shape}.")
    if isolated.ndim != 4 or isolated.shape[1:] != field.shape:
        raise MadnessValueError(f"isolated must be (n, {field.shape}); got {isolated.shape}.")
    n = len(isolated)
    if centers_xy is None:
        centers_xy = np.stack([np.asarray(catalog["x_peak"], np.float64),
                               np.asarray(catalog["y_peak"], np.float64)], axis=1)
    centers_xy = np.asarray(centers_xy, np.float64).reshape(-1, 2)
    if len(centers_xy) != n:
        raise MadnessValueError(f"{len(centers_xy)} centres for {n} isolated galaxies.")
    x, y = centers_xy[:, 0], centers_xy[:, 1]
    a, b, theta = catalog_apertures(catalog, conditions, bands)
    if len(a) != n:
        raise MadnessValueError(f"The catalog has {len(a)} rows for {n} isolated galaxies.")

    f_iso, e_iso, flag_iso = field_photometry(field, x, y, a, b, theta, models=isolated, variance=variance)
    f_bl, e_bl, _ = field_photometry(field, x, y, a, b, theta, models=None, variance=variance)
    truth_stamps, _ = cutout_stamps(isolated, centers_xy, stamp_size)
    centre = np.full(2, float(stamp_size // 2))
    shapes = adaptive_moments(truth_stamps, subpixel_shifts(centers_xy)[:, ::-1] + centre)
    if all(f"{c}_ab" in _colnames(catalog) for c in colour_bands):
        c_true = catalog_colour(catalog, colour_bands)
    else:
        c_true = np.full(n, np.nan)
    c_iso = _colours(f_iso, bands, conditions, colour_bands)
    c_bl = _colours(f_bl, bands, conditions, colour_bands)
    metrics = {
        "x": x,
        "y": y,
        "flux_isolated": f_iso,
        "flux_isolated_err": e_iso,
        "aperture_flag": flag_iso,
        "flux_blended": f_bl,
        "flux_blended_err": e_bl,
        "snr_blend": snr_blend(f_bl, e_bl),
        "kappa": contamination(f_bl, f_iso),
        "beta": blendedness(isolated),
        "flux_residual_blended": relative_flux_residual(f_bl, f_iso),
        "colour_true": c_true,
        "colour_isolated": c_iso,
        "colour_blended": c_bl,
        "colour_residual_true_blended": colour_residual(c_bl, c_true),
        "colour_residual_blend_blended": colour_residual(c_bl, c_iso),
        "e1_true": shapes.e1,
        "e2_true": shapes.e2,
        "hsm_failed_true": shapes.failed,
    }
    return FieldReference(field=field, variance=variance, bands=bands, x=x, y=y, a=a, b=b, theta=theta,
                          truth_stamps=truth_stamps, metrics=metrics)


def _colnames(catalog) -> tuple[str, ...]:
    names = getattr(catalog, "colnames", None)
    return tuple(names) if names is not None else tuple(catalog.keys())


def model_metrics(reference: FieldReference, models, *, models_yx0=None, conditions,
                  colour_bands=("g", "r"), envelopes=None, envelope_sources=None) -> dict[str, np.ndarray]:
    """Score one method's models of a field against its `FieldReference`.

    Parameters
    ----------
    reference : `FieldReference`
        From `reference_metrics` on the same field.
    models : `numpy.ndarray`
        ``(n, bands, h, w)`` model of each galaxy in catalogue order: full-field images
        (BTK's ``deblended_images``) or stamps with ``models_yx0`` (`DeblendResult.models`
        with ``stamp_yx0``). A galaxy a method did not model is all zeros.
    models_yx0 : `numpy.ndarray`, optional
        ``(n, 2)`` field pixel of each stamp's first pixel.
    conditions : `lsst.meas.madness.simulation.LsstConditions`
        Zero points for the colours.
    colour_bands : pair of `str`
        Bands of the colour.
    envelopes : `numpy.ndarray`, optional
        ``(m, bands, H, W)`` light of galaxies beyond their model stamps (MADNESS's
        `DeblendResult.envelopes`), part of galaxy ``envelope_sources``: a neighbour's is
        subtracted with its stamp, and it is in its own galaxy's image.
    envelope_sources : `numpy.ndarray`, optional
        ``(m,)`` catalogue index of the galaxy of each envelope.

    Returns
    -------
    metrics : `dict` [`str`, `numpy.ndarray`]
        ``flux`` and ``flux_err`` (``F^d``, on the field minus the other models);
        ``flux_residual`` (eq. 19); ``colour``, ``colour_residual_true`` (eq. 20),
        ``colour_residual_blend`` (eq. 21); ``ssim``, ``cosine`` (eq. 22) per band on the
        cutouts; ``e1``, ``e2``, ``hsm_failed``, and ``e1_residual``, ``e2_residual``
        (eq. 23 residuals, NaN where HSM failed on the model or the truth).
    """
    ref = reference.metrics
    models = np.asarray(models, np.float64)
    n = len(reference.x)
    if models.ndim != 4 or models.shape[:2] != (n, len(reference.bands)):
        raise MadnessValueError(
            f"models must be (n, bands, h, w) with n={n} and {len(reference.bands)} bands; "
            f"got {models.shape}."
        )
    field = reference.field
    if envelopes is not None and len(envelopes):
        envelopes = np.asarray(envelopes, np.float64)
        envelope_sources = np.asarray(envelope_sources, np.int64)
        if envelopes.shape[1:] != field.shape or len(envelope_sources) != len(envelopes):
            raise MadnessValueError(f"envelopes must be (m, {field.shape}) with m sources; got "
                                    f"{envelopes.shape} for {len(envelope_sources)}.")
        field = field - envelopes.sum(axis=0)
    else:
        envelopes = None
    flux, err, _ = field_photometry(field, reference.x, reference.y, reference.a, reference.b,
                                    reference.theta, models=models, models_yx0=models_yx0,
                                    variance=reference.variance)
    size = reference.truth_stamps.shape[-1]
    centers_xy = np.stack([reference.x, reference.y], axis=1)
    if models_yx0 is None:
        full = models
    else:
        full = paint_stamps(models, models_yx0, reference.field.shape[1:])
    if envelopes is not None:
        # Each envelope is its galaxy's: back in that galaxy's aperture and image.
        full = np.array(full, np.float64, copy=True)
        for envelope, source in zip(envelopes, envelope_sources):
            one = slice(source, source + 1)
            own, _, _ = field_photometry(envelope, reference.x[one], reference.y[one], reference.a[one],
                                         reference.b[one], reference.theta[one])
            flux[source] += own[0]
            full[source] += envelope
    stamps, _ = cutout_stamps(full, centers_xy, size)
    centre = np.full(2, float(size // 2))
    shapes = adaptive_moments(stamps, subpixel_shifts(centers_xy)[:, ::-1] + centre)
    c = _colours(flux, reference.bands, conditions, colour_bands)
    return {
        "flux": flux,
        "flux_err": err,
        "flux_residual": relative_flux_residual(flux, ref["flux_isolated"]),
        "colour": c,
        "colour_residual_true": colour_residual(c, ref["colour_true"]),
        "colour_residual_blend": colour_residual(c, ref["colour_isolated"]),
        "ssim": ssim(stamps, reference.truth_stamps),
        "cosine": cosine_similarity(stamps, reference.truth_stamps),
        "e1": shapes.e1,
        "e2": shapes.e2,
        "hsm_failed": shapes.failed,
        "e1_residual": ellipticity_residual(shapes.e1, ref["e1_true"]),
        "e2_residual": ellipticity_residual(shapes.e2, ref["e2_true"]),
    }
