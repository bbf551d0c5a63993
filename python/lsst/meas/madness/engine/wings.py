"""The light of each source beyond its footprint, drawn from the PSF's far profile.

A decoder stamp holds a galaxy's light inside its 45x45 footprint and nothing beyond. The
PSF's wings go on: the LSST Kolmogorov + Airy PSF of the simulations puts 0.6% of a point
source's light outside a 45-px box in every band (0.35% outside 65 px; the Airy part falls as
``r^-3``). Summed over a field the neighbours' wings are a few electrons per pixel in each
galaxy's aperture, which a model confined to its stamp leaves there: on the 20 validation
fields they are a third of MADNESS's median r flux error (``doc/engine.md``, "PSF wings").

Far from a galaxy its light is its flux times the PSF (the galaxy is small against the
distance), so each source's *wing* is the given PSF image centred on the source's pixel, zero
inside its footprint, scaled so that the footprint holds the model's flux: ``F_model * psf /
f_in`` outside, with ``f_in`` the fraction of the PSF's sum inside the footprint. It has no
free parameter, so unlike an envelope (`lsst.meas.madness.engine.envelope`, the fitted light of
bright galaxies beyond the PSF's) it cannot take the noise or a neighbour's light.

Conventions as in `lsst.meas.madness.engine.geometry`: the PSF image has odd sides and its
centre is the central pixel; a footprint is the ``side x side`` square centred on the source's
pixel. The wing is placed at that pixel (the sub-pixel remainder is left out: beyond 22 px
from its centre it moves the profile by well under its own uncertainty).
"""

from __future__ import annotations

__all__ = ["check_psf", "wing_templates", "wing_fluxes", "paint_wings"]

import numpy as np

from ..errors import MadnessValueError
from .geometry import paste_stamps


def check_psf(psf, num_bands: int) -> np.ndarray:
    """``psf`` as a ``(bands, h, w)`` float64 array with unit sum per band, or a clear error.

    Parameters
    ----------
    psf : array-like
        ``(bands, h, w)`` PSF image of each band, odd sides, centred on the central pixel. Its
        sum is taken as the whole PSF: give it as large as the light to be modelled reaches.
    num_bands : `int`
        Bands of the image it goes with.

    Raises
    ------
    MadnessValueError
        Wrong shape, an even side, a non-finite pixel, or a band whose sum is not positive.
    """
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim != 3 or psf.shape[0] != num_bands:
        raise MadnessValueError(f"psf must be (bands={num_bands}, h, w); got shape {psf.shape}.")
    if psf.shape[1] % 2 == 0 or psf.shape[2] % 2 == 0:
        raise MadnessValueError(f"psf images must have odd sides (centred on the central pixel); got {psf.shape[1:]}.")
    if not np.isfinite(psf).all():
        raise MadnessValueError("psf has non-finite pixels.")
    total = psf.sum(axis=(1, 2))
    if not (total > 0).all():
        raise MadnessValueError(f"every band of psf must have a positive sum; got {total.tolist()}.")
    return psf / total[:, None, None]


def wing_templates(psf: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The PSF outside a centred ``side x side`` footprint, with unit sum, and the fraction inside.

    Parameters
    ----------
    psf : `numpy.ndarray`
        ``(bands, h, w)`` unit-sum PSF (`check_psf`).
    side : `int`
        Odd footprint side, pixels.

    Returns
    -------
    template : `numpy.ndarray`
        ``(bands, h, w)``: zero inside the footprint, unit sum outside; all zero in a band whose
        image is no larger than the footprint.
    inside : `numpy.ndarray`
        ``(bands,)`` fraction of each band's PSF inside the footprint.

    Examples
    --------
    >>> psf = np.full((1, 5, 5), 1 / 25)
    >>> template, inside = wing_templates(psf, 3)
    >>> float(inside[0]), float(template.sum()), float(template[0, 2, 2])
    (0.36, 1.0, 0.0)
    """
    nb, h, w = psf.shape
    half = int(side) // 2
    template = np.array(psf, dtype=np.float64, copy=True)
    cy, cx = h // 2, w // 2
    template[:, max(cy - half, 0):cy + half + 1, max(cx - half, 0):cx + half + 1] = 0.0
    outside = template.sum(axis=(1, 2))
    inside = 1.0 - outside
    with np.errstate(invalid="ignore", divide="ignore"):
        template = np.where(outside[:, None, None] > 0, template / outside[:, None, None], 0.0)
    return template, inside


def wing_fluxes(model_fluxes: np.ndarray, sides: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """``(n, bands)`` flux of each source beyond its footprint: ``F_model (1 - f_in) / f_in``.

    Parameters
    ----------
    model_fluxes : `numpy.ndarray`
        ``(n, bands)`` flux of each source's model inside its footprint.
    sides : `numpy.ndarray`
        ``(n,)`` odd footprint side of each source, pixels.
    psf : `numpy.ndarray`
        ``(bands, h, w)`` unit-sum PSF (`check_psf`).

    Examples
    --------
    >>> psf = np.full((1, 5, 5), 1 / 25)
    >>> wing_fluxes(np.array([[36.0]]), np.array([3]), psf).round(6).tolist()
    [[64.0]]
    """
    model_fluxes = np.asarray(model_fluxes, dtype=np.float64)
    out = np.zeros_like(model_fluxes)
    for side in np.unique(sides):
        rows = np.asarray(sides) == side
        _, inside = wing_templates(psf, int(side))
        out[rows] = model_fluxes[rows] * (1.0 - inside) / inside
    return out


def paint_wings(fluxes: np.ndarray, pixels_yx: np.ndarray, sides: np.ndarray, psf: np.ndarray, shape,
                *, total: bool = True, dtype=np.float32) -> np.ndarray:
    """Wings of sources on an image grid.

    Parameters
    ----------
    fluxes : `numpy.ndarray`
        ``(n, bands)`` flux of each wing (`wing_fluxes`); a zero row paints nothing.
    pixels_yx : `numpy.ndarray`
        ``(n, 2)`` integer ``(y, x)`` pixel each footprint is centred on.
    sides : `numpy.ndarray`
        ``(n,)`` footprint sides.
    psf : `numpy.ndarray`
        ``(bands, h, w)`` unit-sum PSF (`check_psf`).
    shape : pair of `int`
        ``(H, W)`` of the grid; what falls off it is dropped.
    total : `bool`
        The sum ``(bands, H, W)`` (default) or each wing ``(n, bands, H, W)``.
    """
    fluxes = np.asarray(fluxes, dtype=np.float64)
    pixels_yx = np.asarray(pixels_yx, dtype=np.int64).reshape(-1, 2)
    sides = np.asarray(sides, dtype=np.int64).reshape(-1)
    nb, h, w = psf.shape
    height, width = int(shape[0]), int(shape[1])
    image = np.zeros((nb, height, width) if total else (len(fluxes), nb, height, width), dtype=dtype)
    for side in np.unique(sides):
        template, _ = wing_templates(psf, int(side))
        for i in np.flatnonzero((sides == side) & np.any(fluxes != 0, axis=1)):
            stamp = (fluxes[i][:, None, None] * template)[None]
            yx0 = pixels_yx[i:i + 1] - np.array([h // 2, w // 2])
            if total:
                paste_stamps(stamp, yx0, (height, width), out=image)
            else:
                paste_stamps(stamp, yx0, (height, width), out=image[i])
    return image
