"""Photometric units: the flux unit a model was trained in, and conversions into it and back.

A MADNESS model is trained on images in **electrons** accumulated over the survey's full
(10-year) exposure time in each band, as SurveyCodex and BTK draw them. A bundle records those
conditions in ``metadata.conditions`` (written by
`lsst.meas.madness.simulation.LsstConditions.as_dict`): per band ``zeropoint_mag`` (the AB
magnitude that gives 1 electron per second) and ``exposure_time_s``, and a ``gain`` (electrons
per count). This module turns them into one number per band, the model's flux unit, and converts
images between that unit and an astropy unit:

* a spectral flux density (``nJy``, Rubin's coadd unit; ``Jy``, ``erg / (s cm2 Hz)``...): a
  source of flux ``f`` nJy has AB magnitude ``31.4 - 2.5 log10(f)`` (1 nJy is AB 31.4, the
  reference flux of afw's ``PhotoCalib``), hence ``T 10**(-0.4 (31.4 - 2.5 log10 f - zp))``
  electrons, i.e.::

      electrons per nJy = T * 10**(0.4 * (zp - 31.4))

  (``T`` the exposure time in s, ``zp`` the zero point; the same formula as
  ``surveycodex.utilities.mag2counts``, which BTK uses to draw galaxies);
* ``electron``: the model's own unit (factor 1);
* ``ct`` (count) or ``adu``: counts with the model's calibration, ``gain`` electrons each.

Anything else (a rate such as ``electron / s``, a magnitude, a dimensionless image, no unit at
all) raises `MadnessUnitError`, as does a bundle without these conditions or a band they do not
cover: converting silently would feed a model pixels on another flux scale.

The engine never imports this module: it works in model units. The tasks convert at their edge
(`lsst.meas.madness.tasks.MadnessDeblendTask`).
"""

from __future__ import annotations

__all__ = [
    "AB_NANOJANSKY_MAG",
    "ModelUnits",
    "electrons_per_nanojansky",
    "parse_unit",
    "resolve_unit",
]

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import astropy.units as u
import numpy as np

from .errors import MadnessUnitError

#: AB magnitude of a 1 nJy source: -2.5 log10(1e-9 Jy / 3631 Jy) = 31.4 (afw ``PhotoCalib`` uses
#: the reference flux 1e23 * 10**(-48.6 / 2.5) Jy, which gives exactly 31.4 too).
AB_NANOJANSKY_MAG = 31.4

_ACCEPTED = "a spectral flux density (e.g. nJy), electron, or ct/adu (counts with the model's gain)"


def electrons_per_nanojansky(zeropoint, exposure_time) -> np.ndarray:
    """Electrons collected from a 1 nJy source.

    Parameters
    ----------
    zeropoint : `float` or array-like
        AB magnitude giving 1 electron per second (SurveyCodex's ``Filter.zeropoint``).
    exposure_time : `float` or array-like
        Exposure time, seconds.

    Returns
    -------
    factor : `numpy.ndarray`
        ``exposure_time * 10**(0.4 * (zeropoint - 31.4))``, float64, broadcast shape.
    """
    zp = np.asarray(zeropoint, dtype=np.float64)
    t = np.asarray(exposure_time, dtype=np.float64)
    return t * 10.0 ** (0.4 * (zp - AB_NANOJANSKY_MAG))


def parse_unit(unit: Any) -> u.UnitBase:
    """An astropy unit from a unit or its string; a clear error for anything unparseable.

    Parameters
    ----------
    unit : `astropy.units.UnitBase` or `str`
        E.g. ``astropy.units.nJy`` or ``"nJy"``.

    Raises
    ------
    MadnessUnitError
        ``unit`` is `None`, empty, or not an astropy unit.
    """
    if unit is None or (isinstance(unit, str) and not unit.strip()):
        raise MadnessUnitError(f"No image unit given; expected {_ACCEPTED}.")
    if isinstance(unit, u.UnitBase):
        return unit
    try:
        return u.Unit(str(unit))
    except (ValueError, TypeError) as exc:
        raise MadnessUnitError(
            f"Image unit {unit!r} is not an astropy unit ({exc}); expected {_ACCEPTED}."
        ) from None


def resolve_unit(image_unit: Any, fallback: Any = None, *, what: str = "The coadds") -> u.UnitBase:
    """The unit to convert from: the image's own, else ``fallback`` (a task's ``inputUnit``).

    Parameters
    ----------
    image_unit : `astropy.units.UnitBase`, `str` or `None`
        Unit the images carry, `None` when they carry none.
    fallback : `astropy.units.UnitBase`, `str` or `None`
        Unit to assume for images without one; `None` requires the images to carry one.
    what : `str`
        What the images are, for the error messages.

    Raises
    ------
    MadnessUnitError
        Neither is set, either does not parse, or both are set and differ.
    """
    if image_unit is None:
        if fallback is None:
            raise MadnessUnitError(
                f"{what} carry no unit and no input unit is configured: refusing to guess the flux "
                f"scale. Set inputUnit (e.g. 'nJy', or 'electron' for images in the model's own "
                f"electrons) or write the coadds with a unit."
            )
        return parse_unit(fallback)
    unit = parse_unit(image_unit)
    if fallback is not None and parse_unit(fallback) != unit:
        raise MadnessUnitError(
            f"{what} are in {unit} but inputUnit is {parse_unit(fallback)}: these are inconsistent. "
            "Unset inputUnit (it only applies to coadds without a unit) or fix the coadds."
        )
    return unit


@dataclasses.dataclass(frozen=True)
class ModelUnits:
    """The flux unit of a model, per band: electrons over the training exposure time.

    Parameters
    ----------
    bands : `tuple` [`str`, ...]
        Bands, in the model's channel order.
    zeropoint : `tuple` [`float`, ...]
        AB magnitude giving 1 electron per second, per band.
    exposure_time : `tuple` [`float`, ...]
        Exposure time the model's images integrate, seconds, per band.
    gain : `float`
        Electrons per count (``ct``/``adu`` input).
    survey : `str`
        Survey the conditions come from (for messages).
    """

    bands: tuple[str, ...]
    zeropoint: tuple[float, ...]
    exposure_time: tuple[float, ...]
    gain: float = 1.0
    survey: str = ""

    def __post_init__(self) -> None:
        n = len(self.bands)
        if len(self.zeropoint) != n or len(self.exposure_time) != n:
            raise MadnessUnitError(
                f"ModelUnits: {len(self.zeropoint)} zero points and {len(self.exposure_time)} exposure "
                f"times for {n} bands {self.bands}."
            )
        values = np.array([*self.zeropoint, *self.exposure_time, self.gain], dtype=np.float64)
        if not np.isfinite(values).all() or min(self.exposure_time, default=1.0) <= 0 or self.gain <= 0:
            raise MadnessUnitError(
                f"ModelUnits: zero points {self.zeropoint}, exposure times {self.exposure_time} and "
                f"gain {self.gain} must be finite, the last two positive."
            )

    @classmethod
    def from_conditions(cls, conditions: Mapping[str, Any], bands: Sequence[str]) -> "ModelUnits":
        """From a bundle's ``conditions`` dict (`LsstConditions.as_dict` format).

        Parameters
        ----------
        conditions : mapping
            ``{"bands": {band: {"zeropoint_mag": ..., "exposure_time_s": ...}}, "gain": ...,
            "survey": ...}``; ``gain`` defaults to 1.
        bands : sequence of `str`
            The model's bands; each must be in ``conditions["bands"]``.

        Raises
        ------
        MadnessUnitError
            No conditions, a band missing from them, or a band without ``zeropoint_mag`` or
            ``exposure_time_s``.
        """
        bands = tuple(bands)
        per_band = (conditions or {}).get("bands") or {}
        if not per_band:
            raise MadnessUnitError(
                "The model bundle records no photometric conditions (metadata.conditions.bands with "
                "zeropoint_mag and exposure_time_s per band), so the flux unit it was trained in is "
                "unknown; re-export the bundle with its training conditions."
            )
        missing = [b for b in bands if b not in per_band]
        if missing:
            raise MadnessUnitError(
                f"The model bundle's conditions have no calibration for band(s) {missing} (they cover "
                f"{sorted(per_band)}; the model's bands are {list(bands)})."
            )
        zp, t = [], []
        for band in bands:
            entry = per_band[band]
            try:
                zp.append(float(entry["zeropoint_mag"]))
                t.append(float(entry["exposure_time_s"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise MadnessUnitError(
                    f"The model bundle's conditions for band {band!r} lack a numeric zeropoint_mag or "
                    f"exposure_time_s ({exc!r}); its flux unit is unknown."
                ) from None
        gain = conditions.get("gain", 1.0)
        return cls(bands, tuple(zp), tuple(t), gain=float(1.0 if gain is None else gain),
                   survey=str(conditions.get("survey", "")))

    @classmethod
    def from_metadata(cls, metadata: Any) -> "ModelUnits":
        """From a `lsst.meas.madness.io.BundleMetadata` (its ``conditions`` and ``bands``).

        Raises
        ------
        MadnessUnitError
            ``metadata`` is `None` or its conditions do not give the units (`from_conditions`).
        """
        if metadata is None:
            raise MadnessUnitError(
                "The deblender has no bundle metadata, so the flux unit its model was trained in is "
                "unknown; load it from a bundle (MadnessDeblender.from_bundle)."
            )
        return cls.from_conditions(metadata.conditions, metadata.bands)

    @classmethod
    def from_deblender(cls, deblender: Any) -> "ModelUnits":
        """From a `MadnessDeblender`'s bundle metadata (see `from_metadata`)."""
        return cls.from_metadata(getattr(deblender, "metadata", None))

    @property
    def electrons_per_nanojansky(self) -> np.ndarray:
        """``(bands,)`` model units (electrons) per nJy, in band order."""
        return electrons_per_nanojansky(self.zeropoint, self.exposure_time)

    def band_indices(self, bands: Sequence[str] | None) -> list[int]:
        """Channel index of each of ``bands`` (all, in order, when `None`).

        Raises
        ------
        MadnessUnitError
            A band the model's units do not cover.
        """
        if bands is None:
            return list(range(len(self.bands)))
        unknown = [b for b in bands if b not in self.bands]
        if unknown:
            raise MadnessUnitError(
                f"No model flux unit for band(s) {unknown}: the model's calibration covers "
                f"{list(self.bands)}."
            )
        return [self.bands.index(b) for b in bands]

    def scale(self, unit: Any, bands: Sequence[str] | None = None) -> np.ndarray:
        """Model units per ``unit``, per band: multiply an image in ``unit`` by it.

        Parameters
        ----------
        unit : `astropy.units.UnitBase` or `str`
            Unit of the images: a spectral flux density, ``electron``, or ``ct``/``adu``.
        bands : sequence of `str`, optional
            Bands of the images, in order; the model's by default.

        Returns
        -------
        scale : `numpy.ndarray`
            ``(len(bands),)`` float64.

        Raises
        ------
        MadnessUnitError
            An unknown unit or band.
        """
        unit = parse_unit(unit)
        idx = self.band_indices(bands)
        if unit.is_equivalent(u.nJy):
            return float(unit.to(u.nJy)) * self.electrons_per_nanojansky[idx]
        if unit.is_equivalent(u.electron):
            factor = float(unit.to(u.electron))
        elif unit.is_equivalent(u.ct):
            factor = float(unit.to(u.ct)) * self.gain
        elif unit.is_equivalent(u.adu):
            factor = float(unit.to(u.adu)) * self.gain
        else:
            raise MadnessUnitError(
                f"Cannot convert images in {unit} into the model's units (electrons over the training "
                f"exposure time): expected {_ACCEPTED}."
            )
        return np.full(len(idx), factor)

    def to_model(self, image, variance, unit: Any, bands: Sequence[str] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
        """An image and its variance in ``unit`` converted into model units.

        Parameters
        ----------
        image, variance : `numpy.ndarray`
            ``(bands, ...)`` arrays, band first, in ``unit`` and ``unit**2``.
        unit : `astropy.units.UnitBase` or `str`
            Their unit (see `scale`).
        bands : sequence of `str`, optional
            Band of each plane; the model's by default.

        Returns
        -------
        image, variance : `numpy.ndarray`
            ``image * s`` and ``variance * s**2`` (``s = scale(unit, bands)`` per band), float32.
        """
        image = np.asarray(image)
        variance = np.asarray(variance)
        s = self._broadcast(self.scale(unit, bands), image.ndim, image.shape[0])
        return (
            (image.astype(np.float64) * s).astype(np.float32),
            (variance.astype(np.float64) * s**2).astype(np.float32),
        )

    def from_model(self, values, unit: Any, bands: Sequence[str] | None = None, *,
                   variance: bool = False) -> np.ndarray:
        """Values in model units (models, fluxes) converted into ``unit``.

        Parameters
        ----------
        values : `numpy.ndarray`
            ``(bands, ...)`` array, band first, in model units (or their square with
            ``variance``).
        unit : `astropy.units.UnitBase` or `str`
            Target unit (see `scale`).
        bands : sequence of `str`, optional
            Band of each plane; the model's by default.
        variance : `bool`
            Convert a variance (divide by the squared scale).

        Returns
        -------
        values : `numpy.ndarray`
            ``values / s`` (or ``/ s**2``), in ``values``'s floating dtype (float64 for integers).
        """
        values = np.asarray(values)
        s = self._broadcast(self.scale(unit, bands), values.ndim, values.shape[0] if values.ndim else 0)
        out = values.astype(np.float64) / (s**2 if variance else s)
        return out.astype(values.dtype if np.issubdtype(values.dtype, np.floating) else np.float64)

    @staticmethod
    def _broadcast(scale: np.ndarray, ndim: int, n: int) -> np.ndarray:
        if ndim == 0 or n != len(scale):
            raise MadnessUnitError(f"Arrays must have one plane per band ({len(scale)}) first; got {n}.")
        return scale.reshape((-1,) + (1,) * (ndim - 1))

    def describe(self) -> str:
        """One line: the unit and its scale per band, for logs."""
        k = self.electrons_per_nanojansky
        per_band = ", ".join(f"{b} {v:.4g}" for b, v in zip(self.bands, k))
        return f"electrons over the {self.survey or 'training'} exposure time ({per_band} electrons per nJy)"
