"""The linear flux normalisation of the networks (paper section 3.1).

The networks see pixel values divided by a constant (1e4 in the paper) so that most pixels of
LSST 10-year stamps fall between 0 and 1. A linear scale keeps the MAP objective a plain
Gaussian likelihood in flux units: variances scale by the square of the same constant.
The constant travels with each model bundle; this module is the only place it is applied.
"""

from __future__ import annotations

__all__ = ["LinearNormalization", "PAPER_NORMALIZATION"]

import dataclasses

import numpy as np

from ..errors import MadnessRangeError

PAPER_NORMALIZATION = 1.0e4
"""Divisor used by Biswas et al. (section 3.1): flux units per network unit."""


@dataclasses.dataclass(frozen=True)
class LinearNormalization:
    """Divide fluxes by ``scale`` on the way into the networks, multiply on the way out.

    Parameters
    ----------
    scale : `float`
        Flux units (electrons per pixel for LSST simulations) per network unit; must be > 0.

    Examples
    --------
    >>> norm = LinearNormalization(1e4)
    >>> float(norm.normalize(np.array(2e4)))
    2.0
    >>> float(norm.normalize_variance(np.array(1e8)))
    1.0
    """

    scale: float = PAPER_NORMALIZATION

    def __post_init__(self) -> None:
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise MadnessRangeError("Normalisation scale must be positive and finite.", self.scale, 0, None)

    def normalize(self, flux: np.ndarray) -> np.ndarray:
        """Flux units -> network units."""
        return np.asarray(flux, dtype=np.float32) / np.float32(self.scale)

    def denormalize(self, values: np.ndarray) -> np.ndarray:
        """Network units -> flux units."""
        return np.asarray(values, dtype=np.float32) * np.float32(self.scale)

    def normalize_variance(self, variance: np.ndarray) -> np.ndarray:
        """Variance in flux units squared -> network units squared."""
        return np.asarray(variance, dtype=np.float64) / (float(self.scale) ** 2)
