"""How blended a galaxy is: blendedness (paper eq. 16) and contamination (eq. 17); and how much
of a galaxy a model stamp cannot hold (`flux_outside_stamp`, `near_large_galaxy`).

Blendedness and contamination are used to bin the other metrics (paper figs. 10-12, 14) and to
cut outliers (the paper's summary numbers use ``kappa_r <= 5``). The stamp measures split a
field's galaxies by whether a galaxy bigger than the model stamp is among them (issue 14,
section 2), the error the decoder cannot remove by training alone.
"""

from __future__ import annotations

__all__ = ["blendedness", "contamination", "flux_outside_stamp", "near_large_galaxy"]

import numpy as np

from ..engine.geometry import crop_stamps, stamp_origins_xy
from ..errors import MadnessValueError


def blendedness(isolated, blend=None) -> np.ndarray:
    """Blendedness ``beta_n = 1 - (S_n . S_n) / (S^b_n . S_n)`` per galaxy and band, paper eq. 16.

    ``S_n`` is the noiseless image of the galaxy and ``S^b_n`` the noiseless blended field (all
    galaxies), as in the paper's appendix C and Bosch et al. (2017): 0 for an isolated galaxy,
    tending to 1 as neighbours dominate its pixels.

    Parameters
    ----------
    isolated : `numpy.ndarray`
        ``(n, bands, H, W)`` (or ``(n, H, W)``) noiseless image of each galaxy of the field on
        the field grid, electrons per pixel.
    blend : `numpy.ndarray`, optional
        ``(bands, H, W)`` noiseless blended field; default the sum of ``isolated`` (which is
        what it is when ``isolated`` holds every galaxy of the field).

    Returns
    -------
    beta : `numpy.ndarray`
        ``(n, bands)`` (or ``(n,)``) float64; NaN where the galaxy has no flux in the band.

    Examples
    --------
    >>> s = np.zeros((2, 1, 5, 5)); s[0, 0, 2, 2] = 1.0; s[1, 0, 2, 2] = 3.0
    >>> blendedness(s)[:, 0].tolist()
    [0.75, 0.25]
    """
    isolated = np.asarray(isolated, np.float64)
    if isolated.ndim not in (3, 4):
        raise MadnessValueError(f"isolated must be (n, bands, H, W) or (n, H, W); got {isolated.shape}.")
    blend = isolated.sum(axis=0) if blend is None else np.asarray(blend, np.float64)
    if blend.shape != isolated.shape[1:]:
        raise MadnessValueError(f"blend shape {blend.shape} differs from one galaxy's {isolated.shape[1:]}.")
    num = np.einsum("n...ij,n...ij->n...", isolated, isolated)
    den = np.einsum("...ij,n...ij->n...", blend, isolated)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, 1.0 - num / den, np.nan)


def contamination(flux_blended, flux_isolated) -> np.ndarray:
    """Contamination ``kappa_n = F^b_n / F_n - 1``, paper eq. 17.

    ``F^b`` is the aperture flux measured on the blended field without deblending, ``F`` that
    of the isolated galaxy in the same noise field (both from `field_photometry`). 0 for an
    isolated galaxy, growing with the neighbours' flux inside the aperture.

    Returns
    -------
    kappa : `numpy.ndarray`
        Float64, NaN where ``F`` is 0.

    Examples
    --------
    >>> contamination([150.0, 100.0], [100.0, 100.0]).tolist()
    [0.5, 0.0]
    """
    fb = np.asarray(flux_blended, np.float64)
    f = np.asarray(flux_isolated, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f != 0, fb / f - 1.0, np.nan)


def flux_outside_stamp(isolated, centers_xy, stamp_size: int) -> np.ndarray:
    """Fraction of each galaxy's noiseless flux that falls outside its model stamp.

    The stamp is the ``stamp_size`` square the engine places around the galaxy's centre
    (`lsst.meas.madness.engine.geometry.stamp_origins_xy`), so this is the share of the galaxy
    a model of that size cannot draw at all, whatever the decoder.

    Parameters
    ----------
    isolated : `numpy.ndarray`
        ``(n, bands, H, W)`` (or ``(n, H, W)``) noiseless image of each galaxy on the field grid.
    centers_xy : `numpy.ndarray`
        ``(n, 2)`` ``(x, y)`` centre of each galaxy, pixels.
    stamp_size : `int`
        Side of the model stamp (45 for the LSST bundles).

    Returns
    -------
    fraction : `numpy.ndarray`
        ``(n, bands)`` (or ``(n,)``) float64 in [0, 1] (light beyond the field's edge is not
        counted: the field is all there is of it); NaN where a galaxy has no flux in the band.

    Examples
    --------
    >>> s = np.zeros((1, 1, 9, 9)); s[0, 0, 4, 4] = 3.0; s[0, 0, 0, 0] = 1.0
    >>> flux_outside_stamp(s, np.array([[4.0, 4.0]]), 5).tolist()
    [[0.25]]
    """
    isolated = np.asarray(isolated, np.float64)
    if isolated.ndim not in (3, 4):
        raise MadnessValueError(f"isolated must be (n, bands, H, W) or (n, H, W); got {isolated.shape}.")
    single_band = isolated.ndim == 3
    if single_band:
        isolated = isolated[:, None]
    centers_xy = np.asarray(centers_xy, np.float64).reshape(-1, 2)
    if len(centers_xy) != len(isolated):
        raise MadnessValueError(f"{len(centers_xy)} centres for {len(isolated)} galaxies.")
    # crop_stamps takes one image per stamp when given (n, bands, H, W).
    inner = crop_stamps(isolated, stamp_origins_xy(centers_xy, stamp_size), stamp_size).sum(axis=(-2, -1))
    total = isolated.sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(total > 0, np.clip(1.0 - inner / total, 0.0, 1.0), np.nan)
    return fraction[:, 0] if single_band else fraction


def near_large_galaxy(centers_xy, outside, *, radius: float, threshold: float = 0.05) -> np.ndarray:
    """Which galaxies of a field have a galaxy bigger than the model stamp within ``radius``.

    Parameters
    ----------
    centers_xy : `numpy.ndarray`
        ``(n, 2)`` ``(x, y)`` centres, pixels.
    outside : `numpy.ndarray`
        ``(n,)`` fraction of each galaxy's flux outside its stamp in one band
        (`flux_outside_stamp`).
    radius : `float`
        Distance in pixels (a galaxy counts as near itself).
    threshold : `float`
        A galaxy is "large" when more than this fraction of its flux is outside its stamp.

    Returns
    -------
    near : `numpy.ndarray`
        ``(n,)`` bool.

    Examples
    --------
    >>> xy = np.array([[0.0, 0.0], [30.0, 0.0], [200.0, 0.0]])
    >>> near_large_galaxy(xy, np.array([0.2, 0.0, 0.0]), radius=50.0).tolist()
    [True, True, False]
    """
    centers_xy = np.asarray(centers_xy, np.float64).reshape(-1, 2)
    large = np.nan_to_num(np.asarray(outside, np.float64), nan=0.0) > threshold
    if not large.any():
        return np.zeros(len(centers_xy), bool)
    d = np.hypot(*(centers_xy[:, None, :] - centers_xy[None, large, :]).transpose(2, 0, 1))
    return (d <= radius).any(axis=1)
