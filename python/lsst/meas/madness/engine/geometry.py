"""Where each source's stamp lies, and the one implementation of moving stamps to and from images.

Every module that rounds a peak to a pixel, cuts a stamp out of an image, pastes a stamp into
one, or shifts a stamp by a fraction of a pixel calls this module (the engine, the tasks, the
evaluation, the demo and the tests alike), so there is a single rule for all of them.

Conventions
-----------
* Arrays are row-major ``(y, x)``; pixel ``(iy, ix)`` covers ``[iy - 0.5, iy + 0.5)``, so a peak
  at ``x = 3.4`` lies in column 3 and one at ``x = 3.5`` in column 4 (round half up,
  `round_half_up`). Peaks enter as ``(x, y)`` (afw and BTK order) and are swapped to
  ``(y, x)`` once, in `peaks_to_pixels` / `subpixel_shifts`.
* A stamp of odd side ``S`` is centred on its peak's pixel: its origin ``yx0`` is
  ``pixel - S // 2`` (`stamp_origins`). The remainder ``peak - pixel``, in ``[-0.5, 0.5)``, is
  the source's sub-pixel *shift*.
* A model stamp drawn centred (the decoder's output) is moved to its sub-pixel position by a
  separable shift, ``K(dy) @ stamp @ K(dx)^T`` per band (`shift_matrices`, `shift_stamps`);
  inside the compiled MAP step the same ``K`` is folded into the placement matrices
  (`placement_matrices`), so the shift costs nothing there. A zero shift is the identity
  exactly. The shifted stamp keeps its ``S x S`` window, the same in the fit and in the
  returned models.

Why a Fourier shift, written as a matrix
----------------------------------------
Measured with ``scripts/subpixel_shift_accuracy.py`` (GalSim 2.8.5, 0.2"/px, 45x45 stamps; an
Exponential of half-light radius 0.5" and 0.2" and a Sersic n=4 of 0.8", sheared, each
convolved with a Moffat (beta 3.5) or a Kolmogorov PSF of FWHM 0.7"; each drawn centred, shifted
by 8 random ``(dx, dy)`` in [-0.5, 0.5)^2 and compared with GalSim drawing it at that offset):

=====================  =========  ==============  ===========  ============  ========
shift                  max dF/F   median resid.   max resid.   max peak err  max |de|
=====================  =========  ==============  ===========  ============  ========
none (rounded pixel)   6.9e-05    1.2e-01         2.5e-01      2.3e-01       (n/a)
Lanczos-3 (6 taps)     7.1e-04    4.4e-03         5.9e-03      5.8e-03       3.5e-03
Fourier                6.9e-05    1.2e-05         1.1e-03      6.6e-04       3.0e-08
=====================  =========  ==============  ===========  ============  ========

(residual: ``||shifted - GalSim|| / ||GalSim||``; peak error over the peak; ``de``: HSM
ellipticity). The Fourier shift is exact for these well-sampled profiles (its residual is the
Sersic cusp's aliasing), Lanczos-3 smooths them (0.4% residual, 3.5e-3 in ellipticity). As a
separable linear map of a stamp axis both are a dense ``S x S`` matrix, so either folds into
the placement matmul at the same cost. In MAP fits (``--map``) the Fourier shift makes the fit
equivariant: a GalSim galaxy off the grid, fitted at its float peak, reaches the chi2 and flux of
the same galaxy on the grid to 5 digits, where Lanczos-3 moves its flux by 1%. We take the
Fourier shift (``SHIFT_KERNEL``). Its price (``--decoded``): decoder output is not band-limited,
so a shifted decoded stamp rings below zero (median: most negative pixel 1.8% of the peak, 0.75%
of the flux in negative pixels; Lanczos-3: 0.5% and 0.1%); consumers that need non-negative
models clip them. What a shift moves past a stamp edge re-enters at the opposite edge (flux is
kept). Details and the test oracle: ``doc/engine.md``, "Geometry and sub-pixel positions".
"""

from __future__ import annotations

__all__ = [
    "SHIFT_KERNEL",
    "LANCZOS_ORDER",
    "round_half_up",
    "peaks_to_pixels",
    "subpixel_shifts",
    "stamp_origins",
    "stamp_origins_xy",
    "fit_region",
    "stamp_overlap",
    "crop_stamps",
    "paste_stamps",
    "lanczos_kernel",
    "shift_matrices",
    "shift_stamps",
    "placement_matrices",
    "placement_windows",
    "ZOOM_KERNEL",
    "ZOOM_UNITS",
    "MAX_ZOOM",
    "zoom_footprint_size",
    "zoom_placement_matrices",
    "zoom_place_stamps",
    "zoom_bin_stamps",
]

import numpy as np

SHIFT_KERNEL = "fourier"
"""How stamps are shifted by a fraction of a pixel (`shift_matrices`): ``"fourier"`` or ``"lanczos3"``."""

LANCZOS_ORDER = 3
"""Order ``a`` of the Lanczos kernel ``sinc(x) sinc(x / a)`` (|x| < a) of ``kernel="lanczos3"``."""


# --- rounding and origins ---------------------------------------------------------------------


def round_half_up(values) -> np.ndarray:
    """Integer pixel ``floor(v + 0.5)`` of each coordinate (halves go up, unlike `round`).

    Examples
    --------
    >>> round_half_up([3.4, 3.5, -0.5, -0.6]).tolist()
    [3, 4, 0, -1]
    """
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5).astype(np.int64)


def peaks_to_pixels(peaks_xy: np.ndarray) -> np.ndarray:
    """Integer ``(n, 2)`` ``(y, x)`` pixel of each ``(x, y)`` peak (round half up).

    Examples
    --------
    >>> peaks_to_pixels(np.array([[3.4, 10.5]])).tolist()
    [[11, 3]]
    """
    peaks_xy = np.asarray(peaks_xy, dtype=np.float64).reshape(-1, 2)
    return round_half_up(peaks_xy[:, ::-1])


def subpixel_shifts(peaks_xy: np.ndarray) -> np.ndarray:
    """``(n, 2)`` ``(dy, dx)`` of each ``(x, y)`` peak from its pixel's centre, in ``[-0.5, 0.5)``.

    Examples
    --------
    >>> subpixel_shifts(np.array([[3.25, 10.5]])).tolist()
    [[-0.5, 0.25]]
    """
    peaks_yx = np.asarray(peaks_xy, dtype=np.float64).reshape(-1, 2)[:, ::-1]
    return peaks_yx - round_half_up(peaks_yx)


def stamp_origins(peaks_yx: np.ndarray, stamp_size: int) -> np.ndarray:
    """``(n, 2)`` ``(y0, x0)`` origin of the ``stamp_size`` stamp centred on each integer pixel."""
    return np.asarray(peaks_yx, dtype=np.int64).reshape(-1, 2) - stamp_size // 2


def stamp_origins_xy(centers_xy: np.ndarray, stamp_size: int) -> np.ndarray:
    """``(n, 2)`` ``(y0, x0)`` origin of the ``stamp_size`` stamp around each ``(x, y)`` position.

    Examples
    --------
    >>> stamp_origins_xy(np.array([[10.5, 3.4]]), 5).tolist()
    [[1, 9]]
    """
    return stamp_origins(peaks_to_pixels(centers_xy), stamp_size)


def fit_region(origins: np.ndarray, stamp_size,
               image_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, x0, y1, x1)`` (end exclusive) of all stamps, clipped to the image.

    Pixels outside every stamp cannot be modelled, so the fit uses only this region.
    ``stamp_size`` is one side for all stamps or ``(n,)`` sides (zoomed footprints,
    `zoom_footprint_size`).
    """
    origins = np.asarray(origins, dtype=np.int64).reshape(-1, 2)
    ends = origins + np.asarray(stamp_size, dtype=np.int64).reshape(-1, 1)
    y0 = max(int(origins[:, 0].min()), 0)
    x0 = max(int(origins[:, 1].min()), 0)
    y1 = min(int(ends[:, 0].max()), image_shape[0])
    x1 = min(int(ends[:, 1].max()), image_shape[1])
    return y0, x0, y1, x1


# --- crop and paste ---------------------------------------------------------------------------


def stamp_overlap(yx0, stamp_shape, bbox) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Overlap of one stamp with a box: ``(stamp slices, box slices)``, or `None` if they miss.

    Parameters
    ----------
    yx0 : pair of `int`
        ``(y0, x0)`` of the stamp's first pixel, in the frame of ``bbox``.
    stamp_shape : pair of `int`
        ``(h, w)`` of the stamp.
    bbox : 4-tuple of `int`
        ``(y0, x0, y1, x1)`` of the box (end exclusive); the box slices are relative to its
        first pixel.

    Examples
    --------
    >>> stamp_overlap((-1, 2), (3, 3), (0, 0, 4, 4))
    ((slice(1, 3, None), slice(0, 2, None)), (slice(0, 2, None), slice(2, 4, None)))
    """
    oy, ox = int(yx0[0]), int(yx0[1])
    h, w = int(stamp_shape[0]), int(stamp_shape[1])
    by0, bx0, by1, bx1 = (int(v) for v in bbox)
    y0, x0, y1, x1 = max(oy, by0), max(ox, bx0), min(oy + h, by1), min(ox + w, bx1)
    if y1 <= y0 or x1 <= x0:
        return None
    stamp_slices = (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
    return stamp_slices, (slice(y0 - by0, y1 - by0), slice(x0 - bx0, x1 - bx0))


def _stamp_indices(yx0: np.ndarray, size_yx: tuple[int, int], shape: tuple[int, int]):
    """Image rows ``(n, h)`` and columns ``(n, w)`` of each stamp pixel, and whether each is on the image."""
    yy = yx0[:, 0, None] + np.arange(size_yx[0])[None, :]
    xx = yx0[:, 1, None] + np.arange(size_yx[1])[None, :]
    in_y = (yy >= 0) & (yy < shape[0])
    in_x = (xx >= 0) & (xx < shape[1])
    return yy, xx, in_y, in_x


def crop_stamps(image: np.ndarray, yx0: np.ndarray, size, *, image_yx0=(0, 0)) -> np.ndarray:
    """Cut stamps out of an image; pixels of a stamp that fall off the image are zero.

    Parameters
    ----------
    image : `numpy.ndarray`
        ``(bands, H, W)`` image shared by all stamps, or ``(n, bands, H, W)`` one image per
        stamp (e.g. each galaxy's isolated image).
    yx0 : `numpy.ndarray`
        ``(n, 2)`` integer ``(y0, x0)`` of each stamp's first pixel.
    size : `int` or pair of `int`
        Stamp side, or ``(h, w)``.
    image_yx0 : pair of `int`
        ``(y0, x0)`` of the image's first pixel in the frame of ``yx0`` (e.g. a tract frame).

    Returns
    -------
    stamps : `numpy.ndarray`
        ``(n, bands, h, w)``, the image's dtype.

    Examples
    --------
    >>> image = np.arange(9.0).reshape(1, 3, 3)
    >>> crop_stamps(image, np.array([[-1, 1]]), 2)[0, 0].tolist()
    [[0.0, 0.0], [1.0, 2.0]]
    """
    image = np.asarray(image)
    yx0 = np.asarray(yx0, dtype=np.int64).reshape(-1, 2) - np.asarray(image_yx0, dtype=np.int64)
    h, w = (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
    n = len(yx0)
    shared = image.ndim == 3
    if not shared and (image.ndim != 4 or len(image) != n):
        raise ValueError(f"image must be (bands, H, W) or (n, bands, H, W) with n={n}; "
                         f"got shape {image.shape}.")
    yy, xx, in_y, in_x = _stamp_indices(yx0, (h, w), image.shape[-2:])
    yc = np.clip(yy, 0, image.shape[-2] - 1)
    xc = np.clip(xx, 0, image.shape[-1] - 1)
    if shared:
        out = image[:, yc[:, :, None], xc[:, None, :]]  # (bands, n, h, w)
        out = np.moveaxis(out, 0, 1)
    else:
        out = image[np.arange(n)[:, None, None, None], np.arange(image.shape[1])[None, :, None, None],
                    yc[:, None, :, None], xc[:, None, None, :]]
    valid = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    return np.where(valid, out, np.zeros((), out.dtype))


def paste_stamps(stamps: np.ndarray, yx0: np.ndarray, shape, *, total: bool = True, image_yx0=(0, 0),
                 dtype=None, out: np.ndarray | None = None) -> np.ndarray:
    """Add stamps into an image grid, dropping the pixels that fall off it.

    Parameters
    ----------
    stamps : `numpy.ndarray`
        ``(n, bands, h, w)`` stamps.
    yx0 : `numpy.ndarray`
        ``(n, 2)`` integer ``(y0, x0)`` of each stamp's first pixel.
    shape : pair of `int`
        ``(H, W)`` of the grid.
    total : `bool`
        Return the sum of the stamps ``(bands, H, W)`` (default), or each stamp on its own grid
        ``(n, bands, H, W)``.
    image_yx0 : pair of `int`
        ``(y0, x0)`` of the grid's first pixel in the frame of ``yx0``.
    dtype : numpy dtype, optional
        Of the result; the stamps' by default.
    out : `numpy.ndarray`, optional
        Grid to add into (in place) instead of a new zero one; ``total`` only.

    Returns
    -------
    image : `numpy.ndarray`
        ``(bands, H, W)`` if ``total`` else ``(n, bands, H, W)``.

    Examples
    --------
    >>> paste_stamps(np.ones((2, 1, 2, 2)), np.array([[-1, -1], [0, 0]]), (2, 2))[0].tolist()
    [[2.0, 1.0], [1.0, 1.0]]
    """
    stamps = np.asarray(stamps)
    n, nb, h, w = stamps.shape
    height, width = int(shape[0]), int(shape[1])
    yx0 = np.asarray(yx0, dtype=np.int64).reshape(n, 2) - np.asarray(image_yx0, dtype=np.int64)
    if dtype is None:
        dtype = out.dtype if out is not None else stamps.dtype
    yy, xx, in_y, in_x = _stamp_indices(yx0, (h, w), (height, width))
    valid = in_y[:, :, None] & in_x[:, None, :]  # (n, h, w)
    if not total:
        if out is not None:
            raise ValueError("out is only for total=True.")
        image = np.zeros((n, nb, height, width), dtype=dtype)
        i, r, c = np.nonzero(valid)
        image[i, :, yy[i, r], xx[i, c]] = stamps[i, :, r, c]
        return image
    image = np.zeros((nb, height, width), dtype=dtype) if out is None else out
    i, r, c = np.nonzero(valid)
    if not len(i):
        return image
    # Sum on the bounding box of the pasted pixels only: a few stamps added into a large grid
    # (a 4000x4000 patch drawn galaxy by galaxy) cost their own pixels, not the grid's.
    rows, cols = yy[i, r], xx[i, c]
    y_lo, x_lo = int(rows.min()), int(cols.min())
    box_h, box_w = int(rows.max()) - y_lo + 1, int(cols.max()) - x_lo + 1
    flat = (rows - y_lo) * box_w + (cols - x_lo)
    values = stamps[i, :, r, c]  # (k, bands)
    for b in range(nb):
        summed = np.bincount(flat, weights=values[:, b], minlength=box_h * box_w)
        image[b, y_lo : y_lo + box_h, x_lo : x_lo + box_w] += summed.reshape(box_h, box_w).astype(dtype, copy=False)
    return image


# --- sub-pixel shifts ------------------------------------------------------------------------


def lanczos_kernel(x, order: int = LANCZOS_ORDER) -> np.ndarray:
    """Lanczos kernel ``sinc(x) sinc(x / order)`` for ``|x| < order``, zero beyond; exactly 1 at 0
    and 0 at the other integers."""
    x = np.asarray(x, dtype=np.float64)
    value = np.where(np.abs(x) < order, np.sinc(x) * np.sinc(x / order), 0.0)
    return np.where(x == np.round(x), (x == 0).astype(np.float64), value)


def _fourier_shift_matrices(shifts: np.ndarray, size: int) -> np.ndarray:
    """``K[i] v = ifft(fft(v) exp(-2 pi i k d_i / size))``, real (the Nyquist term of an even
    ``size`` gets ``cos(pi d)``): the periodic-sinc (Dirichlet) interpolation as a matrix."""
    k = np.fft.fftfreq(size)
    phase = np.exp(-2j * np.pi * k[None, :] * shifts[:, None])  # (n, size)
    if size % 2 == 0:
        phase[:, size // 2] = np.cos(np.pi * shifts)
    basis = np.fft.fft(np.eye(size), axis=0)  # column s: fft of the unit vector e_s
    return np.fft.ifft(phase[:, :, None] * basis[None], axis=1).real


def _lanczos_shift_matrices(shifts: np.ndarray, size: int, order: int = LANCZOS_ORDER) -> np.ndarray:
    t = np.arange(size)[:, None]
    s = np.arange(size)[None, :]
    weights = lanczos_kernel((t - s)[None] - shifts[:, None, None], order)
    taps = np.arange(-order, order + 1)
    norm = lanczos_kernel(taps[None, :] - shifts[:, None], order).sum(axis=1)
    return weights / norm[:, None, None]


def shift_matrices(shifts, size: int, kernel: str = SHIFT_KERNEL) -> np.ndarray:
    """Matrices that shift a stamp axis by a fraction of a pixel.

    ``K[i] @ v`` is ``v`` (length ``size``) moved by ``shifts[i]`` pixels towards higher index.
    ``kernel="fourier"`` (the default, see the module docstring for why) multiplies the
    discrete Fourier transform by the shift's phase: exact for a band-limited signal, flux
    kept exactly, what leaves one edge re-enters at the other. ``kernel="lanczos3"`` is the
    normalised 6-tap ``(K v)[t] = sum_s v[s] L(t - s - d) / sum_k L(k - d)``: local, what
    leaves the edge is lost. A zero shift gives the identity exactly with either.

    Parameters
    ----------
    shifts : `numpy.ndarray`
        ``(n,)`` shifts in pixels, meant for ``[-0.5, 0.5)``.
    size : `int`
        Length of the axis.
    kernel : `str`
        ``"fourier"`` or ``"lanczos3"``.

    Returns
    -------
    matrices : `numpy.ndarray`
        ``(n, size, size)`` float64.

    Examples
    --------
    >>> k = shift_matrices(np.array([0.0, 0.5]), 9)
    >>> bool((k[0] == np.eye(9)).all()), round(float(k[1].sum(axis=0)[4]), 12)
    (True, 1.0)
    """
    shifts = np.asarray(shifts, dtype=np.float64).reshape(-1)
    if kernel == "fourier":
        out = _fourier_shift_matrices(shifts, size)
    elif kernel == "lanczos3":
        out = _lanczos_shift_matrices(shifts, size)
    else:
        raise ValueError(f"Unknown shift kernel {kernel!r}; use 'fourier' or 'lanczos3'.")
    out[shifts == 0] = np.eye(size)
    return out


def shift_stamps(stamps: np.ndarray, shifts_yx: np.ndarray, kernel: str = SHIFT_KERNEL) -> np.ndarray:
    """Move each stamp by its ``(dy, dx)`` sub-pixel shift, keeping its ``S x S`` window.

    The numpy twin of what `placement_matrices` does inside the fit:
    ``K(dy) @ stamp @ K(dx)^T`` per band.

    Parameters
    ----------
    stamps : `numpy.ndarray`
        ``(n, bands, h, w)`` stamps, centred on their pixel.
    shifts_yx : `numpy.ndarray`
        ``(n, 2)`` ``(dy, dx)`` in pixels (`subpixel_shifts`).

    Returns
    -------
    shifted : `numpy.ndarray`
        ``(n, bands, h, w)``, the stamps' floating dtype; stamps with zero shift are returned
        unchanged (bit for bit).
    """
    stamps = np.asarray(stamps)
    n, _, h, w = stamps.shape
    shifts_yx = np.asarray(shifts_yx, dtype=np.float64).reshape(n, 2)
    out = np.array(stamps, dtype=np.result_type(stamps.dtype, np.float32), copy=True)
    moved = np.flatnonzero((shifts_yx != 0).any(axis=1))
    if len(moved):
        ky = shift_matrices(shifts_yx[moved, 0], h, kernel)
        kx = shift_matrices(shifts_yx[moved, 1], w, kernel)
        moved_stamps = stamps[moved].astype(np.float64)
        out[moved] = np.einsum("nrs,ncsq,nuq->ncru", ky, moved_stamps, kx).astype(out.dtype)
    return out


def placement_matrices(offsets: np.ndarray, length: int, stamp_size: int,
                       kernel: str = SHIFT_KERNEL) -> np.ndarray:
    """Matrices that place (and shift) stamps along one axis of a region.

    ``offsets[i]`` is where stamp pixel 0 of source ``i`` lands, relative to the region start:
    the integer stamp origin plus the source's sub-pixel shift. With ``o = round_half_up(offset)``
    and ``d = offset - o``, ``M[i, r, s] = K(d)[r - o, s]`` (`shift_matrices`) for
    ``0 <= r - o < stamp_size`` and 0 elsewhere: for an integer offset this is the one-hot
    ``M[i, r, s] = 1 where r = o + s``. Rows of a stamp that fall outside the region have no
    weight, so ``M @ stamp`` crops them: sources near or across the edge need no special case.
    The model of a region is ``sum_i Mrows_i @ stamp_i @ Mcols_i^T``, two batched matmuls whose
    cost does not depend on the shift.

    Parameters
    ----------
    offsets : `numpy.ndarray`
        ``(n,)`` stamp origin (+ sub-pixel shift) of each source relative to the region start,
        may be negative.
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
    offsets = np.asarray(offsets, dtype=np.float64).reshape(-1)
    origin = round_half_up(offsets)
    kernels = shift_matrices(offsets - origin, stamp_size, kernel)  # (n, S, S)
    t = np.arange(length)[None, :] - origin[:, None]  # stamp row of each region row
    inside = (t >= 0) & (t < stamp_size)
    rows = kernels[np.arange(len(offsets))[:, None], np.clip(t, 0, stamp_size - 1)]  # (n, length, S)
    return np.where(inside[:, :, None], rows, 0.0).astype(np.float32)



def placement_windows(matrices: np.ndarray, window: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Placement matrices cut to the region rows each source touches, and where those rows start.

    A placement matrix (`placement_matrices`, `zoom_placement_matrices`) is zero outside the
    ``S`` (or, zoomed, about ``zoom * S``) region rows its stamp covers. The MAP step places each
    source's stamp into the ``window`` region rows it touches with these ``(window, S)``
    matrices (and a placement over the region's full width for the columns) and adds those rows
    into the region at ``start`` (a scatter of rows; `lsst.meas.madness.engine.objective`). Row
    ``start[i] + l`` of the region is row ``l`` of window ``i``; rows past the region's end are
    zero.

    Parameters
    ----------
    matrices : `numpy.ndarray`
        ``(n, length, S)`` placement matrices along one axis of a region.
    window : `int`, optional
        Rows per window; at least the largest span of non-zero rows (the default).

    Returns
    -------
    windows : `numpy.ndarray`
        ``(n, window, S)`` float32.
    start : `numpy.ndarray`
        ``(n,)`` int64 first region row of each window (0 for a source that touches none).

    Examples
    --------
    >>> m = placement_matrices(np.array([1.0, -1.0]), 5, 2)
    >>> w, start = placement_windows(m)
    >>> start.tolist(), w.shape
    ([1, 0], (2, 2, 2))
    >>> w[1].tolist()  # the stamp's first row fell before the region: cropped
    [[0.0, 1.0], [0.0, 0.0]]
    """
    matrices = np.asarray(matrices)
    n, length = matrices.shape[:2]
    touched = np.any(matrices != 0, axis=2)  # (n, length)
    some = touched.any(axis=1)
    start = np.where(some, touched.argmax(axis=1), 0)
    last = np.where(some, length - 1 - touched[:, ::-1].argmax(axis=1), 0)
    span = int((last - start + 1)[some].max()) if some.any() else 1
    window = span if window is None else int(window)
    if window < span:
        raise ValueError(f"A window of {window} rows cannot hold a placement spanning {span}.")
    rows = start[:, None] + np.arange(window)[None, :]  # (n, window) region row of each window row
    inside = rows < length
    out = matrices[np.arange(n)[:, None], np.minimum(rows, length - 1)]
    return np.where(inside[:, :, None], out, 0.0).astype(np.float32), start.astype(np.int64)

# --- zoomed stamps: one decoder stamp spread over z x z image pixels ------------------------------
#
# A galaxy larger than the decoder's stamp is drawn as if the pixels were ``zoom`` times larger:
# the decoder's S x S stamp then holds a galaxy ``zoom`` times bigger, each stamp pixel holding
# the flux of a ``zoom x zoom`` patch of image pixels. Placing it spreads every stamp pixel's
# flux over the image pixels under it with a kernel of unit integral, written, like the
# sub-pixel shift, as one matrix per axis, so the fit's placement stays two batched matmuls.

ZOOM_KERNEL = "linear"
"""How a zoomed stamp pixel's flux is spread over image pixels (`zoom_placement_matrices`):
``"linear"`` (the stamp's surface brightness interpolated linearly between stamp pixel centres)
or ``"box"`` (each stamp pixel a flat ``zoom x zoom`` square). Both keep the flux exactly; see
``doc/large-galaxies.md`` for the measured comparison against GalSim."""

ZOOM_UNITS = "flux"
"""What a zoomed stamp pixel holds: ``"flux"`` (the flux of its ``zoom x zoom`` image pixels, so
a zoomed galaxy keeps its total flux and looks ``zoom**2`` times brighter per pixel) or
``"surface"`` (their mean, so it keeps its surface brightness and its stamp holds
``zoom**-2`` of its flux)."""

MAX_ZOOM = 4
"""Largest zoom accepted: a 45-px stamp then covers 181 image pixels (36" at 0.2"/px)."""


def _check_zoom(zoom) -> np.ndarray:
    zoom = np.asarray(zoom)
    if zoom.dtype.kind not in "iu" and not np.all(zoom == np.round(zoom)):
        raise ValueError(f"zoom must be integers; got {zoom!r}.")
    zoom = zoom.astype(np.int64)
    if (zoom < 1).any() or (zoom > MAX_ZOOM).any():
        raise ValueError(f"zoom must be in [1, {MAX_ZOOM}]; got {zoom.tolist()}.")
    return zoom


def zoom_footprint_size(stamp_size: int, zoom):
    """Side (odd, pixels) of the image window a zoomed stamp is placed in, centred on its peak's pixel.

    ``stamp_size`` for ``zoom == 1`` (the decoder's stamp, as placed without zoom); otherwise
    ``zoom * (stamp_size + 1) + 1``: the stamp's ``zoom * stamp_size`` pixels, plus the reach of
    the ``"linear"`` kernel (``zoom`` on each side) and the sub-pixel remainder of the centre.

    Examples
    --------
    >>> zoom_footprint_size(45, [1, 2, 3]).tolist()
    [45, 93, 139]
    """
    zoom = _check_zoom(zoom)
    size = np.where(zoom == 1, int(stamp_size), zoom * (int(stamp_size) + 1) + 1)
    return int(size) if size.ndim == 0 else size


def _kernel_cdf(u: np.ndarray, kernel: str) -> np.ndarray:
    """Integral from -inf to ``u`` of the unit-integral kernel in stamp-pixel units."""
    if kernel == "box":  # flat on [-1/2, 1/2]
        return np.clip(u + 0.5, 0.0, 1.0)
    if kernel == "linear":  # triangle on [-1, 1]
        u = np.clip(u, -1.0, 1.0)
        return np.where(u < 0, 0.5 * (1 + u) ** 2, 1.0 - 0.5 * (1 - u) ** 2)
    raise ValueError(f"Unknown zoom kernel {kernel!r}; use 'linear' or 'box'.")


def zoom_placement_matrices(centers, length: int, stamp_size: int, zoom,
                            kernel: str = ZOOM_KERNEL) -> np.ndarray:
    """Matrices that place stamps drawn with ``zoom``-times larger pixels along one axis of a region.

    Stamp pixel ``s`` of source ``i`` is centred at ``x_s = centers[i] + zoom[i] * (s - S // 2)``
    region pixels, and its flux is spread with a kernel of unit integral and width ``zoom``:
    ``M[i, r, s] = C((r + 1/2 - x_s) / zoom) - C((r - 1/2 - x_s) / zoom)`` with ``C`` the
    kernel's cumulative integral, the exact integral over region pixel ``r``
    (``[r - 1/2, r + 1/2)``). Each column sums to one where the stamp lies inside the region,
    so the flux is kept; the sub-pixel part of the centre is part of the integral, so no
    separate shift is needed. ``kernel="box"`` spreads each stamp pixel evenly over its
    ``zoom``-pixel interval (piecewise-constant upsampling; the transpose times ``zoom`` bins
    an image into stamp pixels, `zoom_bin_stamps`); ``"linear"`` interpolates the surface
    brightness linearly between stamp pixel centres. The model of a region is
    ``sum_i Mrows_i @ stamp_i @ Mcols_i^T``, as with `placement_matrices`.

    Parameters
    ----------
    centers : `numpy.ndarray`
        ``(n,)`` position of each stamp's central pixel ``S // 2`` in region pixels (the peak
        relative to the region start, float).
    length : `int`
        Length of the region along this axis.
    stamp_size : `int`
        Stamp side ``S`` (odd).
    zoom : `int` or `numpy.ndarray`
        ``(n,)`` or one zoom factor in ``[1, MAX_ZOOM]``: image pixels per stamp pixel.
    kernel : `str`
        ``"linear"`` or ``"box"``.

    Returns
    -------
    matrices : `numpy.ndarray`
        ``(n, length, stamp_size)`` float32.

    Examples
    --------
    >>> m = zoom_placement_matrices(np.array([4.0]), 9, 3, 2, kernel="box")[0]
    >>> m[:, 1].tolist()  # the central stamp pixel covers [3, 5): half of pixels 3 and 5, all of 4
    [0.0, 0.0, 0.0, 0.25, 0.5, 0.25, 0.0, 0.0, 0.0]
    >>> m.sum(axis=0).tolist()
    [1.0, 1.0, 1.0]
    """
    centers = np.asarray(centers, dtype=np.float64).reshape(-1)
    zoom = np.broadcast_to(_check_zoom(zoom), centers.shape).astype(np.float64)
    s = np.arange(stamp_size) - stamp_size // 2
    xs = centers[:, None] + zoom[:, None] * s[None, :]  # (n, S) stamp pixel centres
    r = np.arange(length, dtype=np.float64)[None, :, None]
    z = zoom[:, None, None]
    upper = _kernel_cdf((r + 0.5 - xs[:, None, :]) / z, kernel)
    lower = _kernel_cdf((r - 0.5 - xs[:, None, :]) / z, kernel)
    scale = z if ZOOM_UNITS == "surface" else 1.0
    return ((upper - lower) * scale).astype(np.float32)


def zoom_place_stamps(stamps: np.ndarray, centers_yx: np.ndarray, zoom, size: int | None = None,
                      kernel: str = ZOOM_KERNEL) -> np.ndarray:
    """Place zoomed stamps on image windows centred on their peaks' pixels (numpy twin of the fit).

    Parameters
    ----------
    stamps : `numpy.ndarray`
        ``(n, bands, S, S)`` decoder stamps, flux per stamp pixel.
    centers_yx : `numpy.ndarray`
        ``(n, 2)`` ``(y, x)`` peak of each source in image pixels; the window of source ``i`` is
        centred on ``round_half_up(centers_yx[i])``.
    zoom : `int` or `numpy.ndarray`
        ``(n,)`` or one zoom factor.
    size : `int`, optional
        Window side (odd); default ``zoom_footprint_size(S, max(zoom))``.
    kernel : `str`
        As in `zoom_placement_matrices`.

    Returns
    -------
    placed : `numpy.ndarray`
        ``(n, bands, size, size)`` float32, flux per image pixel; the window's first pixel is
        ``round_half_up(centers_yx) - size // 2``.
    """
    stamps = np.asarray(stamps)
    n, _, s, _ = stamps.shape
    centers_yx = np.asarray(centers_yx, dtype=np.float64).reshape(n, 2)
    zoom = np.broadcast_to(_check_zoom(zoom), (n,))
    if size is None:
        size = int(zoom_footprint_size(s, int(zoom.max())))
    local = centers_yx - round_half_up(centers_yx) + size // 2  # peak in window pixels
    my = zoom_placement_matrices(local[:, 0], size, s, zoom, kernel).astype(np.float64)
    mx = zoom_placement_matrices(local[:, 1], size, s, zoom, kernel).astype(np.float64)
    # Two batched matmuls (a three-operand einsum would loop over all five indices at once).
    placed = my[:, None] @ stamps.astype(np.float64) @ np.swapaxes(mx, 1, 2)[:, None]
    return placed.astype(np.float32)


def zoom_bin_stamps(image: np.ndarray, centers_yx: np.ndarray, zoom, stamp_size: int) -> np.ndarray:
    """Cut ``S x S`` stamps of ``zoom``-times larger pixels, centred on float peaks, out of an image.

    Stamp pixel ``s`` holds the image flux over ``[x_s - zoom / 2, x_s + zoom / 2)`` per axis
    (``x_s`` as in `zoom_placement_matrices`), partial image pixels counted by their overlap:
    the transpose of the ``"box"`` placement times ``zoom``. With ``zoom = 1`` this is a linear
    sub-pixel interpolation of the plain cutout. Pixels off the image count as zero.

    Parameters
    ----------
    image : `numpy.ndarray`
        ``(bands, H, W)`` image, flux per pixel.
    centers_yx : `numpy.ndarray`
        ``(n, 2)`` ``(y, x)`` peaks, image pixels.
    zoom : `int` or `numpy.ndarray`
        ``(n,)`` or one zoom factor.
    stamp_size : `int`
        Stamp side ``S`` (odd).

    Returns
    -------
    stamps : `numpy.ndarray`
        ``(n, bands, S, S)`` float32, flux per stamp pixel (the binned image keeps its total).
    """
    centers_yx = np.asarray(centers_yx, dtype=np.float64).reshape(-1, 2)
    n = len(centers_yx)
    zoom = np.broadcast_to(_check_zoom(zoom), (n,))
    out = np.zeros((n, image.shape[0], stamp_size, stamp_size), np.float32)
    for z in np.unique(zoom):
        idx = np.flatnonzero(zoom == z)
        size = int(zoom_footprint_size(stamp_size, int(max(z, 2))))  # room for any sub-pixel centre
        pixels = round_half_up(centers_yx[idx])
        crops = crop_stamps(image, pixels - size // 2, size).astype(np.float64)
        local = centers_yx[idx] - pixels + size // 2
        # The box placement's transpose, normalised to sum (flux per stamp pixel) or average
        # (surface brightness) the image pixels under each stamp pixel.
        norm = 1.0 / z if ZOOM_UNITS == "surface" else z
        by = zoom_placement_matrices(local[:, 0], size, stamp_size, z, "box").astype(np.float64) * norm
        bx = zoom_placement_matrices(local[:, 1], size, stamp_size, z, "box").astype(np.float64) * norm
        out[idx] = (np.swapaxes(by, 1, 2)[:, None] @ crops @ bx[:, None]).astype(np.float32)
    return out
