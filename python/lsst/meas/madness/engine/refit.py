"""Which sources of a fitted blend are fitted again alone, and on what image.

In a joint fit a faint galaxy's model and its bright neighbour's move together: the bright
model's light under the faint galaxy trades against the faint model's, and the faint galaxy's
shape bends with it. Fitted again alone on the image minus its neighbours' models, held fixed,
it cannot (``doc/error-budget.md``, "Which part of the bright neighbour").
`MadnessDeblender.deblend_batch` calls these with ``MapSettings.refit_beside_brighter``.
"""

from __future__ import annotations

__all__ = ["beside_brighter", "cleaned_image"]

import numpy as np

from .result import DeblendResult


def beside_brighter(result: DeblendResult, dmag: float) -> np.ndarray:
    """Sources whose nearest source is more than ``dmag`` magnitudes brighter.

    Parameters
    ----------
    result : `DeblendResult`
        A fitted blend.
    dmag : `float`
        Magnitude gap (band sum of the stamp models, non-negative pixels) above which a source
        counts as beside a brighter one.

    Returns
    -------
    indices : `numpy.ndarray`
        ``(m,)`` int64 indices of those sources, ascending. A source with an envelope is never
        one (its light beyond the stamp is fitted with the blend; alone without it, it would
        lose it), nor a source alone in its blend. "Nearest" is by peak distance, whatever the
        neighbour's size: a bright galaxy two stamps away that is still the nearest counts.
    """
    n = result.n_sources
    if n < 2:
        return np.zeros(0, np.int64)
    flux = np.clip(np.asarray(result.models, np.float64), 0.0, None).sum(axis=(1, 2, 3))
    peaks = np.asarray(result.peaks_xy, np.float64)
    distance = np.hypot(*(peaks[:, None, :] - peaks[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    nearest = np.argmin(distance, axis=1)
    brighter = flux[nearest] > 10.0 ** (0.4 * dmag) * np.maximum(flux, 1e-30)
    return np.flatnonzero(brighter & ~result.enveloped).astype(np.int64)


def cleaned_image(image: np.ndarray, result: DeblendResult, index: int,
                  whole: np.ndarray | None = None) -> np.ndarray:
    """``image`` minus every source's model of ``result`` but source ``index``'s.

    Parameters
    ----------
    image : `numpy.ndarray`
        ``(bands, H, W)`` the image ``result`` was fitted on.
    result : `DeblendResult`
        Its fit; the models as they stand (with their envelopes, outskirts and wings if they
        have them: a neighbour's light beyond its stamp is removed too).
    index : `int`
        The source to keep.
    whole : `numpy.ndarray`, optional
        ``result.model_image()``, when the caller cleans several sources of one blend.

    Returns
    -------
    cleaned : `numpy.ndarray`
        ``(bands, H, W)`` float (NaN where ``image`` is NaN).
    """
    whole = result.model_image() if whole is None else whole
    return np.asarray(image) - (whole - result.source_image(index))
