"""Exceptions raised by meas_madness.

Which exception to raise when
-----------------------------
=============================  =====================================================================
``MadnessValueError``          An argument has the wrong shape, type, band order or content (NaN peaks,
                               no peaks, peaks off the image, duplicate peaks). Also a ``ValueError``.
``MadnessRangeError``          A number is outside its valid range (too many peaks, a negative
                               learning rate). Carries ``value``, ``min`` and ``max``.
``MadnessUnitError``           Photometric units cannot be reconciled: an image unit that is unknown, missing
                               or differs between bands, a bundle that does not record the units it was
                               trained in, a band it has no calibration for. Also a ``ValueError``.
``MadnessBundleError``         A model bundle cannot be used: missing, truncated or tampered files,
                               unknown schema version, metadata that does not match the data.
``MadnessNoDataError``         A blend has no pixel with positive finite weight: nothing to fit.
``MadnessFitError``            A blend's MAP fit diverged: its latents or models are not finite. Nothing
                               non-finite is returned; the tasks flag the parent ``deblend_failed``.
``MadnessBlendError``          Raised per blend by callers that loop over many (the tasks): carries the
                               parent id and the catalog flag to set. ``catchFailures`` catches it.
``RuntimeError``               Do not raise it directly; use ``MadnessError`` or a subclass.
=============================  =====================================================================

Every exception here pickles (``__reduce__``), so errors cross process boundaries intact
(``pipetask run -j``, ctrl_bps workers).
"""

from __future__ import annotations

__all__ = [
    "MadnessError",
    "MadnessValueError",
    "MadnessRangeError",
    "MadnessUnitError",
    "MadnessBundleError",
    "MadnessNoDataError",
    "MadnessFitError",
    "MadnessBlendError",
]

from typing import Any


class MadnessError(RuntimeError):
    """Base class of all meas_madness errors."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, self.args)


class MadnessValueError(MadnessError, ValueError):
    """An argument has an invalid value, shape or content."""


class MadnessRangeError(MadnessValueError):
    """A number lies outside its valid range.

    Parameters
    ----------
    message : `str`
        What was out of range and why the range exists.
    value : `float`
        The offending value.
    min, max : `float` or `None`
        The valid range (inclusive); `None` for an open end.
    """

    def __init__(self, message: str, value: Any, min: Any = None, max: Any = None):
        self.message = message
        self.value = value
        self.min = min
        self.max = max
        super().__init__(f"{message} Value {value!r} not in [{min}, {max}].")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message, self.value, self.min, self.max))


class MadnessUnitError(MadnessValueError):
    """Image units are unknown, missing or inconsistent, or a model's own units are not recorded.

    Never a silent pass-through: pixels in the wrong unit would be fitted by a model trained on
    another flux scale (see `lsst.meas.madness.units`).
    """


class MadnessBundleError(MadnessError, OSError):
    """A model bundle is missing, damaged, of an unknown version, or does not match the data."""


class MadnessNoDataError(MadnessValueError):
    """A blend has no usable pixel (all masked, non-finite or with non-positive variance)."""


class MadnessFitError(MadnessError):
    """A blend's MAP fit diverged (non-finite latents, flux factors, offsets or models)."""


class MadnessBlendError(MadnessError):
    """Deblending one blend failed; the caller flags it and goes on.

    Parameters
    ----------
    message : `str`
        What went wrong.
    parent_id : `int`
        Id of the parent record (blend) that failed.
    flag : `str`
        Name of the catalog flag the caller sets, e.g. ``"deblend_failed"``.
    """

    def __init__(self, message: str, parent_id: int, flag: str = "deblend_failed"):
        self.message = message
        self.parent_id = parent_id
        self.flag = flag
        super().__init__(f"{message} (parent {parent_id}, flag {flag})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message, self.parent_id, self.flag))
