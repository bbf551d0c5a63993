"""The simulated skymap: where each patch of the local repositories lies, and its inner region.

A pip-only stand-in for the part of ``lsst.skymap`` the pipeline needs (``lsst.skymap`` needs
afw). `SimSkyMap` lays patches ``0, 1, ...`` side by side along x in one tract, the way
``lsst.skymap``'s cell-based tract builder (LSST's ``lsst_cells_v1`` skymaps) lays them:

* the *inner* boxes of the patches tile the tract exactly: patch ``p`` has tract-frame columns
  ``[p * inner, (p + 1) * inner)`` and rows ``[0, inner)``;
* each patch's *outer* box (its coadd) is its inner box grown by ``border`` pixels on every
  side and not clipped to the tract (the cell-based builder does not clip), so neighbouring
  patches overlap by ``2 * border`` columns and every coadd is a square of
  ``inner + 2 * border`` pixels, starting at ``(-border, p * inner - border)``.

A source is *patch-inner* when its centroid lies in the inner box of the patch it was measured
in (`is_patch_inner`, as ``lsst.meas.algorithms.setPrimaryFlags.getPatchInner``), and
*tract-inner* when the skymap's ``findTract`` returns this tract for it; with one tract that
is every source (`SimSkyMap.is_tract_inner`). A leaf of the blend tree that is both is
``detect_isPrimary``, so a galaxy in the overlap of two patches is primary in exactly one.

Boxes are ``(y0, x0, y1, x1)`` tuples, end exclusive, in the tract frame, as the tasks'
coadd boxes are (`lsst.meas.madness.tasks.coadds.MultibandCoadd.bbox`).
"""

from __future__ import annotations

__all__ = ["SKYMAP_DATASET", "SKYMAP_RUN", "MAX_PATCHES", "SimSkyMap", "is_patch_inner"]

import dataclasses

import numpy as np

from .errors import MadnessValueError

SKYMAP_DATASET = "madnessSkyMap"
"""Dataset type of the skymap geometry in a local repository: dimensions ``(skymap,)``, storage
class ``StructuredDataDict`` (`SimSkyMap.to_dict`); the pip-only counterpart of Rubin's
``skyMap``."""

SKYMAP_RUN = "skymaps"
"""RUN collection of the skymap dataset (Rubin's ``BaseSkyMap.SKYMAP_RUN_COLLECTION_NAME``)."""

MAX_PATCHES = 1000
"""Patches a tract can hold (the ``skymap`` dimension record's ``patch_nx_max``)."""


def is_patch_inner(x, y, inner_bbox, centroid_flag=None) -> np.ndarray:
    """Whether each centroid lies in a patch's inner box (Rubin's ``getPatchInner``).

    Pixel ``i`` covers ``[i - 0.5, i + 0.5)``, so the inner box ``(y0, x0, y1, x1)`` covers
    ``[x0 - 0.5, x1 - 0.5) x [y0 - 0.5, y1 - 0.5)`` (afw's ``Box2D(Box2I)``). A source whose
    centroid failed (``centroid_flag``; its position is a peak's) must lie one pixel further in,
    as ``SetPrimaryFlagsTask`` asks. NaN positions are never inner.

    Parameters
    ----------
    x, y : array-like of `float`
        ``(n,)`` tract-frame centroid, pixels.
    inner_bbox : 4-tuple of `int`
        ``(y0, x0, y1, x1)`` of the inner box, end exclusive.
    centroid_flag : array-like of `bool`, optional
        ``(n,)`` whether the centroid failed; none did when `None`.

    Returns
    -------
    inner : `numpy.ndarray`
        ``(n,)`` bool.

    Examples
    --------
    >>> is_patch_inner([-0.5, 9.49, 9.5, 5.0], [0, 0, 0, 0.4], (0, 0, 10, 10),
    ...                [False, False, False, True]).tolist()
    [True, True, False, False]
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    y0, x0, y1, x1 = (float(v) - 0.5 for v in inner_bbox)
    flag = np.zeros(x.shape, bool) if centroid_flag is None else np.asarray(centroid_flag, dtype=bool)
    with np.errstate(invalid="ignore"):
        inner = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
        shrunk = (x >= x0 + 1) & (x < x1 - 1) & (y >= y0 + 1) & (y < y1 - 1)
    return np.where(flag, shrunk, inner)


@dataclasses.dataclass(frozen=True)
class SimSkyMap:
    """One tract of overlapping square patches in a row (see the module docstring).

    Parameters
    ----------
    patch_inner : `int`
        Side of each patch's inner box, pixels (> 0).
    patch_border : `int`
        Pixels by which each patch's outer box (its coadd) extends past its inner box on every
        side (>= 0); neighbouring patches overlap by twice this. Rubin's LSST skymaps use 200
        pixels (one 150-pixel cell plus a 50-pixel cell border) on 3400-pixel inner boxes.
    name : `str`
        Name of the ``skymap`` dimension record.
    tract : `int`
        Id of the tract.

    Examples
    --------
    >>> skymap = SimSkyMap(patch_inner=101, patch_border=10)
    >>> skymap.patch_size, skymap.patch_outer_bbox(1), skymap.patch_inner_bbox(1)
    (121, (-10, 91, 111, 212), (0, 101, 101, 202))
    >>> skymap.outer_bbox(2)
    (-10, -10, 111, 212)
    """

    patch_inner: int
    patch_border: int = 0
    name: str = "madness_sim"
    tract: int = 0

    def __post_init__(self):
        if self.patch_inner < 1 or self.patch_border < 0:
            raise MadnessValueError(
                f"SimSkyMap needs patch_inner >= 1 and patch_border >= 0 "
                f"(patch_inner={self.patch_inner}, patch_border={self.patch_border})."
            )

    @classmethod
    def from_patch_size(cls, patch_size: int, patch_border: int = 0, **kwargs) -> SimSkyMap:
        """The skymap whose patches (outer boxes) are ``patch_size`` pixels square."""
        return cls(patch_inner=int(patch_size) - 2 * int(patch_border), patch_border=int(patch_border),
                   **kwargs)

    @property
    def patch_size(self) -> int:
        """Side of each patch's outer box (its coadd), pixels."""
        return self.patch_inner + 2 * self.patch_border

    def tract_bbox(self, n_patches: int) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` of a tract of patches ``0 .. n_patches - 1``: their inner boxes' union."""
        return (0, 0, self.patch_inner, self._check(n_patches - 1) * self.patch_inner + self.patch_inner)

    def outer_bbox(self, n_patches: int) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` of the union of the outer boxes of patches ``0 .. n_patches - 1``."""
        b = self.patch_border
        y0, x0, y1, x1 = self.tract_bbox(n_patches)
        return (y0 - b, x0 - b, y1 + b, x1 + b)

    def _check(self, patch: int) -> int:
        if not 0 <= int(patch) < MAX_PATCHES:
            raise MadnessValueError(f"Patch {patch} is not in skymap {self.name!r} "
                                    f"(patches 0..{MAX_PATCHES - 1}).")
        return int(patch)

    def patch_inner_bbox(self, patch: int) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` of patch ``patch``'s inner box, tract frame."""
        p = self._check(patch)
        return (0, p * self.patch_inner, self.patch_inner, (p + 1) * self.patch_inner)

    def patch_outer_bbox(self, patch: int) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` of patch ``patch``'s outer box (its coadd), tract frame."""
        y0, x0, y1, x1 = self.patch_inner_bbox(patch)
        b = self.patch_border
        return (y0 - b, x0 - b, y1 + b, x1 + b)

    def patch_yx0(self, patch: int) -> tuple[int, int]:
        """Tract-frame ``(y, x)`` of the first pixel of patch ``patch``'s coadd."""
        y0, x0, _, _ = self.patch_outer_bbox(patch)
        return (y0, x0)

    def is_tract_inner(self, x, y) -> np.ndarray:
        """Whether ``findTract`` gives this tract for each position: always, with one tract.

        NaN positions are not inner (they have no tract).
        """
        x = np.asarray(x, dtype=np.float64)
        return np.isfinite(x) & np.isfinite(np.asarray(y, dtype=np.float64))

    def to_dict(self) -> dict:
        """The skymap as plain values (what the ``StructuredDataDict`` dataset holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SimSkyMap:
        """Inverse of `to_dict`."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
