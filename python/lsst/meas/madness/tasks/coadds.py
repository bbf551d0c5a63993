"""Per-band lsst.images coadds -> the numpy arrays the engine and sep need, at one edge.

This is the only module of the pip-only path that reads lsst.images objects; the (y, x) order
of lsst.images boxes is kept (``yx0``), and peaks in the tract frame are shifted into array
indices here.
"""

from __future__ import annotations

__all__ = ["MadnessMissingBandError", "MultibandCoadd", "DEFAULT_BAD_MASK_PLANES"]

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lsst.pipe.base import RepeatableQuantumError

from ..errors import MadnessUnitError, MadnessValueError

# Legacy (afw) and lsst.images names of the planes whose pixels get zero weight.
DEFAULT_BAD_MASK_PLANES = ("BAD", "CR", "COSMIC_RAY", "NO_DATA", "SAT", "SATURATED", "SUSPECT")


class MadnessMissingBandError(MadnessValueError, RepeatableQuantumError):
    """A band the model needs has no coadd in the quantum (not retried by the executor)."""


@dataclasses.dataclass
class MultibandCoadd:
    """Stacked per-band planes of one patch.

    Attributes
    ----------
    bands : `tuple` [`str`, ...]
        Band of each plane, in order.
    image : `numpy.ndarray`
        ``(bands, H, W)`` float32 image, image units per pixel.
    variance : `numpy.ndarray`
        ``(bands, H, W)`` float32 variance, image units squared.
    bad : `numpy.ndarray`
        ``(bands, H, W)`` bool: masked by a bad plane, non-finite, or variance <= 0.
    yx0 : `tuple` [`int`, `int`]
        Tract-frame ``(y, x)`` of array index ``[0, 0]`` (the coadd box's start).
    unit : `str` or `None`
        Image unit of the coadds (e.g. ``"nJy"``), if they have one; ``"model"`` after
        `scaled` (the model's electrons, `lsst.meas.madness.units`).
    planes : `dict` [`str`, `numpy.ndarray`]
        ``(bands, H, W)`` bool of the named mask planes kept for per-plane limits (the task's
        ``maskLimits``); a plane that no band's mask has is absent.
    """

    bands: tuple[str, ...]
    image: np.ndarray
    variance: np.ndarray
    bad: np.ndarray
    yx0: tuple[int, int]
    unit: str | None = None
    planes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.image.shape[1:]

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` tract-frame box, ends exclusive."""
        return (self.yx0[0], self.yx0[1], self.yx0[0] + self.shape[0], self.yx0[1] + self.shape[1])

    @classmethod
    def from_masked_images(
        cls,
        coadds: Mapping[str, Any],
        bands: Sequence[str] | None = None,
        bad_mask_planes: Sequence[str] = DEFAULT_BAD_MASK_PLANES,
        keep_planes: Sequence[str] = (),
    ) -> MultibandCoadd:
        """Stack lsst.images ``MaskedImage`` coadds (a ``CellCoadd`` is one too).

        Parameters
        ----------
        coadds : mapping [`str`, `lsst.images.MaskedImage`]
            Coadd of each band.
        bands : sequence of `str`, optional
            Bands to stack, in this order; all of ``coadds`` (sorted by name) by default.
            Bands of ``coadds`` not listed are ignored.
        bad_mask_planes : sequence of `str`
            Mask planes whose pixels are bad; names a coadd's mask lacks are ignored.
        keep_planes : sequence of `str`
            Mask planes to keep as `planes` (a band whose mask lacks one has it all False).

        Raises
        ------
        MadnessMissingBandError
            A band of ``bands`` has no coadd.
        MadnessValueError
            The coadds' boxes differ.
        MadnessUnitError
            The coadds' units differ (some with a unit, some without, or two units).
        """
        bands = tuple(sorted(coadds)) if bands is None else tuple(bands)
        missing = [b for b in bands if b not in coadds]
        if missing:
            raise MadnessMissingBandError(
                f"No coadd for band(s) {missing}: the model needs {list(bands)} and the quantum has "
                f"{sorted(coadds)}. Make coadds of every band, or use a model trained on these bands."
            )
        if not bands:
            raise MadnessValueError("No band to stack.")
        first = coadds[bands[0]]
        box = first.bbox
        images, variances, bads = [], [], []
        kept: dict[str, list[np.ndarray]] = {plane: [] for plane in keep_planes}
        for band in bands:
            coadd = coadds[band]
            if coadd.bbox != box:
                raise MadnessValueError(f"Coadd boxes differ: {bands[0]} has {box}, {band} has {coadd.bbox}.")
            image = np.asarray(coadd.image.array, dtype=np.float32)
            variance = np.asarray(coadd.variance.array, dtype=np.float32)
            bad = ~np.isfinite(image) | ~np.isfinite(variance) | ~(variance > 0)
            names = coadd.mask.schema.names
            for plane in bad_mask_planes:
                if plane in names:
                    bad |= coadd.mask.get(plane)
            for plane in kept:
                kept[plane].append(
                    np.asarray(coadd.mask.get(plane), bool) if plane in names else np.zeros(image.shape, bool)
                )
            images.append(image)
            variances.append(variance)
            bads.append(bad)
        units = {band: None if coadds[band].unit is None else str(coadds[band].unit) for band in bands}
        if len(set(units.values())) > 1:
            raise MadnessUnitError(
                f"Coadd units differ between bands: {units}. All bands of a patch must be in one unit."
            )
        unit = None if first.unit is None else first.unit.to_string()
        return cls(
            bands=bands,
            image=np.stack(images),
            variance=np.stack(variances),
            bad=np.stack(bads),
            yx0=(int(box.y.start), int(box.x.start)),
            unit=unit,
            planes={
                plane: np.stack(arrays)
                for plane, arrays in kept.items()
                if any(plane in coadds[b].mask.schema.names for b in bands)
            },
        )

    def scaled(self, scale: np.ndarray, unit: str = "model") -> MultibandCoadd:
        """A copy with each band's image times ``scale[b]`` and variance times ``scale[b]**2``.

        Parameters
        ----------
        scale : `numpy.ndarray`
            ``(bands,)`` factors (e.g. `lsst.meas.madness.units.ModelUnits.scale`).
        unit : `str`
            Unit of the result.
        """
        s = np.asarray(scale, dtype=np.float64).reshape(-1, 1, 1)
        if s.shape[0] != len(self.bands):
            raise MadnessValueError(f"{s.shape[0]} scale factors for {len(self.bands)} bands.")
        return dataclasses.replace(
            self,
            image=(self.image.astype(np.float64) * s).astype(np.float32),
            variance=(self.variance.astype(np.float64) * s**2).astype(np.float32),
            unit=unit,
        )

    def detection_image(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inverse-variance weighted mean of the bands, per pixel.

        Returns
        -------
        image, variance : `numpy.ndarray`
            ``(H, W)`` float32: ``sum(I_b / V_b) / sum(1 / V_b)`` over the good bands of each
            pixel, and its variance ``1 / sum(1 / V_b)``; 0 and inf where no band is good.
        bad : `numpy.ndarray`
            ``(H, W)`` bool: no good band.
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            weights = np.where(self.bad, 0.0, 1.0 / self.variance)
            total = weights.sum(axis=0)
            image = np.where(
                total > 0, (weights * np.where(self.bad, 0.0, self.image)).sum(axis=0) / total, 0.0
            )
            variance = np.where(total > 0, 1.0 / total, np.inf)
        return image.astype(np.float32), variance.astype(np.float32), ~(total > 0)
