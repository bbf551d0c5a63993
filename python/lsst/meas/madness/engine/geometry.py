"""Where each source's stamp lies: peak pixels, stamp origins, fit regions, placement matrices.

Conventions: arrays are row-major ``(y, x)``; pixel ``(iy, ix)`` covers ``[iy - 0.5, iy + 0.5)``
so a peak at ``x = 3.4`` lies in column 3. A stamp of odd side ``S`` is centred on its peak's
pixel: its origin ``yx0`` is ``peak - S // 2``. Peaks enter the public API as ``(x, y)``
(afw and BTK order) and are swapped to ``(y, x)`` once, in `peaks_to_pixels`.
"""

from __future__ import annotations

__all__ = ["peaks_to_pixels", "stamp_origins", "fit_region", "placement_matrices"]

import numpy as np


def peaks_to_pixels(peaks_xy: np.ndarray) -> np.ndarray:
    """Integer ``(n, 2)`` ``(y, x)`` pixel of each ``(x, y)`` peak (round half up).

    Examples
    --------
    >>> peaks_to_pixels(np.array([[3.4, 10.5]])).tolist()
    [[11, 3]]
    """
    peaks_xy = np.asarray(peaks_xy, dtype=np.float64)
    return np.floor(peaks_xy[:, ::-1] + 0.5).astype(np.int64)


def stamp_origins(peaks_yx: np.ndarray, stamp_size: int) -> np.ndarray:
    """``(n, 2)`` ``(y0, x0)`` origin of the ``stamp_size`` stamp centred on each pixel."""
    return np.asarray(peaks_yx, dtype=np.int64) - stamp_size // 2


def fit_region(origins: np.ndarray, stamp_size: int, image_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, x0, y1, x1)`` (end exclusive) of all stamps, clipped to the image.

    Pixels outside every stamp cannot be modelled, so the fit uses only this region.
    """
    y0 = max(int(origins[:, 0].min()), 0)
    x0 = max(int(origins[:, 1].min()), 0)
    y1 = min(int(origins[:, 0].max()) + stamp_size, image_shape[0])
    x1 = min(int(origins[:, 1].max()) + stamp_size, image_shape[1])
    return y0, x0, y1, x1


def placement_matrices(offsets: np.ndarray, length: int, stamp_size: int) -> np.ndarray:
    """One-hot matrices that place stamps along one axis of a region.

    ``M[i, r, s] = 1`` where region row ``r`` is stamp row ``s`` of source ``i``
    (``r = offsets[i] + s``). Rows of a stamp that fall outside the region have no 1, so
    ``M @ stamp`` crops them: sources near or across the edge need no special case. The model
    of a region is ``sum_i Mrows_i @ stamp_i @ Mcols_i^T``, two batched matmuls.

    Parameters
    ----------
    offsets : `numpy.ndarray`
        ``(n,)`` stamp origin of each source relative to the region start, may be negative.
    length : `int`
        Length of the region along this axis.
    stamp_size : `int`
        Stamp side.

    Returns
    -------
    matrices : `numpy.ndarray`
        ``(n, length, stamp_size)`` float32.

    Examples
    --------
    >>> placement_matrices(np.array([-1]), 3, 2)[0].tolist()
    [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    rows = np.arange(length)[None, :, None]
    cols = np.arange(stamp_size)[None, None, :]
    return (rows == offsets[:, None, None] + cols).astype(np.float32)
