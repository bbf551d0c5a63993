"""Conversion between engine arrays ``(..., bands, H, W)`` and network tensors ``(..., H, W, bands)``.

The engine, the tasks and users hold images band-first, as scarlet_lite and afw do; the
convolutional networks take channels last. These two functions are the only place the axes
are swapped.
"""

from __future__ import annotations

__all__ = ["to_network_layout", "from_network_layout"]

import numpy as np


def to_network_layout(images: np.ndarray) -> np.ndarray:
    """Move the band axis last.

    Parameters
    ----------
    images : `numpy.ndarray`
        ``(..., bands, H, W)`` array.

    Returns
    -------
    tensors : `numpy.ndarray`
        ``(..., H, W, bands)`` view of the same data.

    Examples
    --------
    >>> to_network_layout(np.zeros((2, 6, 45, 45))).shape
    (2, 45, 45, 6)
    """
    return np.moveaxis(np.asarray(images), -3, -1)


def from_network_layout(tensors: np.ndarray) -> np.ndarray:
    """Move the band axis from last to third-from-last.

    Parameters
    ----------
    tensors : `numpy.ndarray`
        ``(..., H, W, bands)`` array.

    Returns
    -------
    images : `numpy.ndarray`
        ``(..., bands, H, W)`` view of the same data.

    Examples
    --------
    >>> from_network_layout(np.zeros((2, 45, 45, 6))).shape
    (2, 6, 45, 45)
    """
    return np.moveaxis(np.asarray(tensors), -1, -3)
