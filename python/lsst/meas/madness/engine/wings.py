"""The light of each source beyond its decoded outskirts: the PSF's far profile and the galaxy's own.

A decoder stamp holds a galaxy's light inside its 45x45 footprint and nothing beyond. The
PSF's wings go on: the LSST Kolmogorov + Airy PSF of the simulations puts 0.6% of a point
source's light outside a 45-px box in every band (0.35% outside 65 px; the Airy part falls as
``r^-3``). Summed over a field the neighbours' wings are a few electrons per pixel in each
galaxy's aperture, which a model confined to its stamp leaves there: on the 20 validation
fields they are a third of MADNESS's median r flux error (``doc/engine.md``, "PSF wings").

Far from a galaxy its light is its flux times the PSF (the galaxy is small against the
distance), so each source's *wing* is the given PSF image centred on the source's pixel, zero
inside its footprint, scaled by the model's flux over the fraction ``f_in`` of the PSF inside
the footprint: ``F = F_model / f_in``. It has no free parameter, so unlike an envelope
(`lsst.meas.madness.engine.envelope`, the fitted light of bright galaxies beyond the PSF's) it
cannot take the noise or a neighbour's light.

*Outskirts.* The decoder does not reach its footprint's edge either: its output (a ReLU) is
exactly zero where the light is far below the sky noise (its training chi^2 weighs that light at
almost nothing), from about 14 px of the centre for a typical galaxy, while the truth there still holds about 2% of the flux beyond 12 px (measured
on the validation fields, ``doc/engine.md``, "Outskirts"). Between 11 px and the PSF's far field
the light is the galaxy's own profile convolved with the PSF: on those fields its excess over
``F psf`` falls as ``r^-7`` of the elliptical radius, for faint and bright galaxies alike. So
with outskirts the profile beyond ``OUTSKIRTS_START`` px of the source's pixel is

    ``F psf(x) + E (r_ell(x) / OUTSKIRTS_RING)^-OUTSKIRTS_INDEX``

per band, with ``E`` the decoded model's mean excess over ``F psf`` on the elliptical ring at
``OUTSKIRTS_RING`` px (where the decoder still draws the light), summed over the bands and
shared among them in proportion to the model's flux in each (the decoder cuts its faint bands
nearer the centre), and the ellipse the model's second moments. Inside the footprint it only lifts pixels the decoder drew fainter
(`complete_outskirts`); beyond it, it is the wing. The radii are in decoder pixels: a zoomed
source's are ``zoom`` times longer on the image.

Conventions as in `lsst.meas.madness.engine.geometry`: the PSF image has odd sides and its
centre is the central pixel; a footprint is the ``side x side`` square centred on the source's
pixel. The profile is placed at that pixel (the sub-pixel remainder is left out: beyond 12 px
from its centre it moves the profile by well under its own uncertainty).
"""

from __future__ import annotations

__all__ = [
    "OUTSKIRTS_INDEX",
    "OUTSKIRTS_RING",
    "OUTSKIRTS_START",
    "WingProfiles",
    "check_psf",
    "complete_outskirts",
    "paint_wings",
    "wing_profiles",
    "wing_templates",
]

import dataclasses

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
    >>> round(float(inside[0]), 6), round(float(template.sum()), 6), float(template[0, 2, 2])
    (0.36, 1.0, 0.0)
    """
    nb, h, w = psf.shape
    template = np.array(psf, dtype=np.float64, copy=True)
    template[(slice(None), *_footprint((h, w), side))] = 0.0
    outside = template.sum(axis=(1, 2))
    inside = 1.0 - outside
    with np.errstate(invalid="ignore", divide="ignore"):
        template = np.where(outside[:, None, None] > 0, template / outside[:, None, None], 0.0)
    return template, inside


OUTSKIRTS_RING = 11.0
"""Radius (decoder pixels) of the elliptical ring where the decoded model's excess over the
PSF's far field is measured: the decoder still draws the light there (within 1-3% of the
truth on the validation fields' bright galaxies)."""

OUTSKIRTS_START = 12.0
"""Radius (decoder pixels) from which the outer profile completes the decoded model."""

OUTSKIRTS_INDEX = 7.0
"""Power of the elliptical radius at which a galaxy's excess over ``F psf`` falls beyond
`OUTSKIRTS_RING` (measured on the validation fields: 6-7; 7 took the r mean and median
abs(dF/F) down together, ``doc/engine.md``, "Outskirts")."""

_MIN_AXIS_RATIO = 0.2


@dataclasses.dataclass(frozen=True)
class WingProfiles:
    """The outer profile of each source: ``F psf + E (r_ell / (zoom OUTSKIRTS_RING))^-OUTSKIRTS_INDEX``.

    Attributes
    ----------
    psf_fluxes : `numpy.ndarray`
        ``(n, bands)`` ``F``: the flux the PSF's far profile is scaled to (the model's flux over
        the PSF's fraction inside the footprint); zero for a source without a wing.
    excess : `numpy.ndarray`
        ``(n, bands)`` ``E``: the galaxy's own light over ``F psf`` at `OUTSKIRTS_RING`, flux per
        pixel, in the colour of the model's flux (zero without outskirts).
    ellipses : `numpy.ndarray`
        ``(n, 2)`` axis ratio ``q`` (>= 0.2) and position angle (radians, from the x axis
        towards y) of the model's second moments, which define ``r_ell = sqrt(q x'^2 + y'^2 / q)``.
    sides : `numpy.ndarray`
        ``(n,)`` odd footprint side of each source on the image grid, pixels.
    zooms : `numpy.ndarray`
        ``(n,)`` image pixels per decoder pixel.
    """

    psf_fluxes: np.ndarray
    excess: np.ndarray
    ellipses: np.ndarray
    sides: np.ndarray
    zooms: np.ndarray

    @property
    def n_sources(self) -> int:
        return len(self.sides)

    def profile(self, index: int, psf: np.ndarray) -> np.ndarray:
        """``(bands, h, w)`` whole outer profile of source ``index`` on the PSF's grid (centred on
        its central pixel), the footprint included."""
        out = self.psf_fluxes[index][:, None, None] * psf
        if np.any(self.excess[index] > 0):
            out = out + self.excess[index][:, None, None] * self._excess_shape(index, psf.shape[1:])[None]
        return out

    def stamps(self, psf: np.ndarray, indices=None) -> np.ndarray:
        """``(m, bands, h, w)`` wings of sources ``indices`` (default: all): each profile on the
        PSF's grid, zero inside the footprint."""
        indices = np.arange(self.n_sources) if indices is None else np.asarray(list(indices), np.int64)
        h, w = psf.shape[1:]
        out = np.zeros((len(indices), psf.shape[0], h, w))
        for k, i in enumerate(indices):
            out[k] = self.profile(int(i), psf)
            out[(k, slice(None), *_footprint((h, w), self.sides[i]))] = 0.0
        return out

    def fluxes(self, psf: np.ndarray) -> np.ndarray:
        """``(n, bands)`` flux of each source's wing: its profile summed outside its footprint
        over the PSF's grid."""
        out = np.zeros_like(self.psf_fluxes, dtype=np.float64)
        h, w = psf.shape[1:]
        for side in np.unique(self.sides):
            _, inside = wing_templates(psf, int(side))
            rows = self.sides == side
            out[rows] = self.psf_fluxes[rows] * (1.0 - inside)
        for i in np.flatnonzero(np.any(self.excess > 0, axis=1)):
            shape = self._excess_shape(int(i), (h, w))
            shape[_footprint((h, w), self.sides[i])] = 0.0
            out[i] += self.excess[i] * shape.sum()
        return out

    def _excess_shape(self, index: int, shape) -> np.ndarray:
        """``(h, w)`` ``(r_ell / (zoom OUTSKIRTS_RING))^-OUTSKIRTS_INDEX`` on a grid centred on its
        central pixel, 1 within the ring's radius (where it is never used unclipped)."""
        h, w = shape
        y, x = np.mgrid[-(h // 2):h // 2 + 1, -(w // 2):w // 2 + 1]
        ring = OUTSKIRTS_RING * float(self.zooms[index])
        r = _elliptical_radius(y, x, self.ellipses[index])
        return (np.maximum(r, ring) / ring) ** -OUTSKIRTS_INDEX


def _footprint(shape, side) -> tuple[slice, slice]:
    """Slices of the ``side x side`` box centred on the central pixel of an ``(h, w)`` grid (cut
    at its edges)."""
    h, w = shape
    half = int(side) // 2
    return slice(max(h // 2 - half, 0), h // 2 + half + 1), slice(max(w // 2 - half, 0), w // 2 + half + 1)


def _elliptical_radius(y: np.ndarray, x: np.ndarray, ellipse) -> np.ndarray:
    q, theta = float(ellipse[0]), float(ellipse[1])
    c, s = np.cos(theta), np.sin(theta)
    major = c * x + s * y
    minor = -s * x + c * y
    return np.sqrt(q * major**2 + minor**2 / q)


def _ellipse(image: np.ndarray) -> tuple[float, float]:
    """Axis ratio (clipped to >= 0.2) and angle of the unweighted second moments of ``(h, w)``
    about its central pixel; a round (1, 0) for an image without positive light."""
    image = np.clip(image, 0.0, None)
    total = image.sum()
    if not total > 0:
        return 1.0, 0.0
    h, w = image.shape
    y, x = np.mgrid[-(h // 2):h // 2 + 1, -(w // 2):w // 2 + 1]
    mxx, myy, mxy = ((image * x * x).sum() / total, (image * y * y).sum() / total,
                     (image * x * y).sum() / total)
    spread = np.sqrt(0.25 * (mxx - myy) ** 2 + mxy**2)
    major, minor = 0.5 * (mxx + myy) + spread, 0.5 * (mxx + myy) - spread
    q = np.sqrt(max(minor, 0.0) / major) if major > 0 else 1.0
    return max(float(q), _MIN_AXIS_RATIO), float(0.5 * np.arctan2(2 * mxy, mxx - myy))


def _centre_crop(array: np.ndarray, side: int) -> np.ndarray:
    """The central ``side x side`` of ``(..., h, w)``, zero-padded where it is smaller."""
    h, w = array.shape[-2:]
    out = np.zeros((*array.shape[:-2], side, side), dtype=array.dtype)
    half = side // 2
    ys, xs = max(h // 2 - half, 0), max(w // 2 - half, 0)
    ye, xe = min(h // 2 + half + 1, h), min(w // 2 + half + 1, w)
    oy, ox = half - (h // 2 - ys), half - (w // 2 - xs)
    out[..., oy:oy + ye - ys, ox:ox + xe - xs] = array[..., ys:ye, xs:xe]
    return out


def wing_profiles(models: np.ndarray, sides, zooms, psf: np.ndarray, *, outskirts: bool = True,
                  winged=None) -> WingProfiles:
    """The outer profile of each source, from its model inside its footprint.

    Parameters
    ----------
    models : `numpy.ndarray`
        ``(n, bands, P, P)`` models, each centred on its source's pixel (`DeblendResult.models`).
    sides : array-like
        ``(n,)`` odd footprint side of each source (``<= P``).
    zooms : array-like
        ``(n,)`` image pixels per decoder pixel of each source.
    psf : `numpy.ndarray`
        ``(bands, h, w)`` unit-sum PSF (`check_psf`).
    outskirts : `bool`
        Measure each galaxy's excess over the PSF (module docstring); `False`: the PSF's far
        profile alone (``E = 0``).
    winged : array-like of `bool`, optional
        ``(n,)`` sources that get a wing (default: all); the others get zeros.

    Examples
    --------
    A point source's profile is its PSF scaled to its flux, with no excess:

    >>> psf = check_psf(np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1])[None], 1)
    >>> model = np.zeros((1, 1, 3, 3)); model[0, 0] = 100 * psf[0, 1:4, 1:4]
    >>> p = wing_profiles(model, [3], [1], psf)
    >>> round(float(p.psf_fluxes[0, 0]), 6), float(p.excess[0, 0])
    (100.0, 0.0)
    """
    models = np.asarray(models, dtype=np.float64)
    n, nb, size = models.shape[0], models.shape[1], models.shape[-1]
    sides = np.asarray(sides, dtype=np.int64).reshape(n)
    zooms = np.asarray(zooms, dtype=np.int64).reshape(n)
    winged = np.ones(n, bool) if winged is None else np.asarray(winged, bool).reshape(n)
    fluxes = np.zeros((n, nb))
    excess = np.zeros((n, nb))
    ellipses = np.tile([1.0, 0.0], (n, 1))
    psf_stamp = _centre_crop(psf, size)
    y, x = np.mgrid[-(size // 2):size // 2 + 1, -(size // 2):size // 2 + 1]
    for side in np.unique(sides):
        _, inside = wing_templates(psf, int(side))
        rows = np.flatnonzero((sides == side) & winged)
        footprint = _centre_crop(models[rows], int(side))
        held = footprint.sum(axis=(2, 3))  # each model's flux inside its footprint, per band
        fluxes[rows] = held / inside
        if not outskirts:
            continue
        for k, i in enumerate(rows):
            ellipses[i] = _ellipse(footprint[k].sum(axis=0))
            r = _elliptical_radius(y, x, ellipses[i]) / zooms[i]
            ring = (r >= OUTSKIRTS_RING - 1) & (r < OUTSKIRTS_RING + 1) & (np.abs(y) <= side // 2) \
                & (np.abs(x) <= side // 2)
            if not ring.any():
                continue
            # One excess shared by the bands in the model's colour: the decoder cuts its faint bands
            # (u first) nearer the centre than the bright ones, so a band's own ring says less
            # than the sum over bands (doc/engine.md, "Outskirts").
            total = float((models[i][:, ring].mean(axis=1) - fluxes[i] * psf_stamp[:, ring].mean(axis=1)).sum())
            colour = np.clip(held[k], 0.0, None)
            if total > 0 and colour.sum() > 0:
                excess[i] = total * colour / colour.sum()
    return WingProfiles(psf_fluxes=fluxes, excess=excess, ellipses=ellipses, sides=sides, zooms=zooms)


def complete_outskirts(models: np.ndarray, wings: WingProfiles, psf: np.ndarray) -> np.ndarray:
    """``models`` lifted to each source's outer profile where the decoder drew them fainter.

    Within its footprint, from `OUTSKIRTS_START` (elliptical and circular radius, times the
    zoom) outwards, each pixel of a source with a profile becomes the larger of its model and
    its profile; nothing else changes.

    Parameters
    ----------
    models : `numpy.ndarray`
        ``(n, bands, P, P)`` models centred on their sources' pixels.
    wings : `WingProfiles`
        Their profiles (`wing_profiles`).
    psf : `numpy.ndarray`
        ``(bands, h, w)`` unit-sum PSF.

    Returns
    -------
    models : `numpy.ndarray`
        A new array, same shape and dtype.
    """
    out = np.array(models, copy=True)
    size = out.shape[-1]
    y, x = np.mgrid[-(size // 2):size // 2 + 1, -(size // 2):size // 2 + 1]
    for i in np.flatnonzero(np.any(wings.psf_fluxes > 0, axis=1) | np.any(wings.excess > 0, axis=1)):
        start = OUTSKIRTS_START * float(wings.zooms[i])
        half = int(wings.sides[i]) // 2
        region = ((_elliptical_radius(y, x, wings.ellipses[i]) >= start) & (np.hypot(y, x) >= start)
                  & (np.abs(y) <= half) & (np.abs(x) <= half))
        profile = _centre_crop(wings.profile(int(i), psf), size)
        out[i][:, region] = np.maximum(out[i][:, region], profile[:, region])
    return out


def paint_wings(wings: WingProfiles, pixels_yx: np.ndarray, psf: np.ndarray, shape, *, indices=None,
                total: bool = True, dtype=np.float32) -> np.ndarray:
    """Wings of sources on an image grid.

    Parameters
    ----------
    wings : `WingProfiles`
        The sources' profiles (`wing_profiles`); a source with a zero ``F`` and ``E`` paints
        nothing.
    pixels_yx : `numpy.ndarray`
        ``(n, 2)`` integer ``(y, x)`` pixel each footprint is centred on, every source of
        ``wings``.
    psf : `numpy.ndarray`
        ``(bands, h, w)`` unit-sum PSF (`check_psf`).
    shape : pair of `int`
        ``(H, W)`` of the grid; what falls off it is dropped.
    indices : array-like of `int`, optional
        The sources to paint (default: all).
    total : `bool`
        The sum ``(bands, H, W)`` (default) or each wing ``(m, bands, H, W)``.
    """
    indices = np.arange(wings.n_sources) if indices is None else np.asarray(list(indices), np.int64)
    pixels_yx = np.asarray(pixels_yx, dtype=np.int64).reshape(-1, 2)
    nb, h, w = psf.shape
    height, width = int(shape[0]), int(shape[1])
    image = np.zeros((nb, height, width) if total else (len(indices), nb, height, width), dtype=dtype)
    live = np.any(wings.psf_fluxes != 0, axis=1) | np.any(wings.excess != 0, axis=1)
    for k, i in enumerate(indices):
        if not live[i]:
            continue
        stamp = wings.stamps(psf, [i])
        yx0 = pixels_yx[i:i + 1] - np.array([h // 2, w // 2])
        paste_stamps(stamp, yx0, (height, width), out=image if total else image[k])
    return image
