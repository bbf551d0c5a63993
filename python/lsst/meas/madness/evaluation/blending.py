"""How blended a galaxy is: blendedness (paper eq. 16) and contamination (eq. 17).

Both are used to bin the other metrics (paper figs. 10-12, 14) and to cut outliers (the
paper's summary numbers use ``kappa_r <= 5``).
"""

from __future__ import annotations

__all__ = ["blendedness", "contamination"]

import numpy as np

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
