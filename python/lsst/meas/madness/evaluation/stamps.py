"""Moving per-galaxy images between stamps and the field grid, for the metrics.

Thin field-grid forms of `lsst.meas.madness.engine.geometry`, which owns the rule: a stamp of
side ``S`` around a position ``(x, y)`` is centred on the pixel ``(floor(y + 0.5),
floor(x + 0.5))`` and starts ``S // 2`` pixels before it, so cutouts made here around the true
centres lie on the same grid as `DeblendResult.models` made around the same peaks.
"""

from __future__ import annotations

__all__ = ["cutout_stamps", "paint_stamps", "stamp_origins_xy"]

import numpy as np

from ..engine.geometry import crop_stamps, paste_stamps, stamp_overlap
from ..engine.geometry import stamp_origins_xy as _stamp_origins_xy
from ..errors import MadnessValueError


def as_band_images(image) -> tuple[np.ndarray, bool]:
    """``(bands, H, W)`` view of a ``(H, W)`` or ``(bands, H, W)`` image, and whether it was 2-d."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image[None], True
    if image.ndim != 3:
        raise MadnessValueError(f"image must be (H, W) or (bands, H, W); got shape {image.shape}.")
    return image, False


def stamp_origins_xy(centers_xy, size: int) -> np.ndarray:
    """``(n, 2)`` ``(y0, x0)`` first pixel of the ``size`` stamp around each ``(x, y)`` centre."""
    return _stamp_origins_xy(centers_xy, size)


def paint_stamps(models, yx0, shape, *, total: bool = False) -> np.ndarray:
    """Paint ``(n, bands, h, w)`` stamps onto a ``shape = (H, W)`` grid, cropping at its edges.

    Parameters
    ----------
    models : `numpy.ndarray`
        ``(n, bands, h, w)`` stamps.
    yx0 : `numpy.ndarray`
        ``(n, 2)`` grid pixel ``(y0, x0)`` of each stamp's first pixel.
    shape : `tuple` [`int`, `int`]
        ``(H, W)`` of the grid.
    total : `bool`
        Return only the sum over stamps, ``(bands, H, W)``.

    Returns
    -------
    images : `numpy.ndarray`
        ``(n, bands, H, W)`` float64, or ``(bands, H, W)`` if ``total``.
    """
    models = np.asarray(models)
    n = len(models)
    yx0 = np.asarray(yx0, np.int64).reshape(n, 2)
    if total and models.shape[-2:] == tuple(shape) and not yx0.any():
        return models.sum(axis=0, dtype=np.float64)
    return paste_stamps(models, yx0, shape, total=total, dtype=np.float64)


def cutout_stamps(images, centers_xy, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``size x size`` cutouts around each centre, zero where they leave the image.

    Parameters
    ----------
    images : `numpy.ndarray`
        ``(n, bands, H, W)`` one image per centre (e.g. BTK's isolated galaxies or a
        deblender's full-field models), or ``(bands, H, W)`` one image shared by all centres.
    centers_xy : `numpy.ndarray`
        ``(n, 2)`` ``(x, y)`` pixel centres.
    size : `int`
        Side of the cutouts, pixels.

    Returns
    -------
    cutouts : `numpy.ndarray`
        ``(n, bands, size, size)`` float64.
    yx0 : `numpy.ndarray`
        ``(n, 2)`` image pixel of each cutout's first pixel.
    """
    images = np.asarray(images)
    yx0 = stamp_origins_xy(centers_xy, size)
    n = len(yx0)
    if images.ndim not in (3, 4) or (images.ndim == 4 and len(images) != n):
        raise MadnessValueError(
            f"images must be (bands, H, W) or (n, bands, H, W) with n={n}; got shape {images.shape}."
        )
    return crop_stamps(images, yx0, size).astype(np.float64), yx0


def stamp_aperture_sums(models, yx0, shape, x, y, a, b, theta, *, subpix: int = 0) -> np.ndarray:
    """``(n, bands)`` aperture sum of each stamp alone, counting only its pixels on the grid.

    ``a, b, theta`` are ``(n, bands)`` arrays already in sep's form (``a >= b``,
    ``theta`` in [-pi/2, pi/2]); ``x, y`` are grid coordinates.
    """
    import sep

    models = np.asarray(models)
    n, nb, h, w = models.shape
    height, width = shape
    out = np.zeros((n, nb))
    for i, (oy, ox) in enumerate(np.asarray(yx0, np.int64).reshape(n, 2)):
        sl = stamp_overlap((oy, ox), (h, w), (0, 0, height, width))
        if sl is None:
            continue
        src, _ = sl
        stamp = np.zeros((nb, h, w))
        stamp[(slice(None), *src)] = models[i][(slice(None), *src)]
        for k in range(nb):
            s, _, _ = sep.sum_ellipse(np.ascontiguousarray(stamp[k]), np.array([x[i] - ox]),
                                      np.array([y[i] - oy]), np.array([a[i, k]]), np.array([b[i, k]]),
                                      np.array([theta[i, k]]), r=1.0, subpix=subpix)
            out[i, k] = s[0]
    return out
