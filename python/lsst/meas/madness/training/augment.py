"""Fresh noise and the symmetries of the square for every training batch.

The IsolatedSims store each galaxy's noiseless image (``truth``) beside one noisy draw. Drawing
with GalSim costs ~20 ms per six-band stamp; adding noise costs microseconds. So instead of
showing the network the same noisy stamp every epoch, each batch gets

- one of the 8 symmetries of the square (4 rotations by 90 degrees, each with or without a
  transpose) of the noiseless galaxy: the LSST PSFs of the simulations are round and the stamp
  centre is a pixel centre, so a transformed galaxy is as valid a galaxy as the original;
- a new realisation of the sky-subtracted sky + Poisson noise of `LsstConditions` (Gaussian,
  variance ``sky + truth`` in electrons, gain 1, as BTK draws it at these depths).

Every draw comes from ``SeedSequence([seed, stage, epoch, batch])``, so an epoch is the same
whatever happened before it (a resumed run sees the batches an uninterrupted run sees).
"""

from __future__ import annotations

__all__ = ["FreshNoise", "square_symmetry"]

import numpy as np

N_SYMMETRIES = 8


def square_symmetry(images: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Apply symmetry ``which[i]`` (0-7) of the square to ``images[i]``.

    Parameters
    ----------
    images : `numpy.ndarray` ``(n, H, W, bands)``
        Square stamps in network layout.
    which : `numpy.ndarray` ``(n,)`` of `int`
        ``which & 3`` quarter turns, after a transpose when ``which & 4``; 0 is the identity.

    Returns
    -------
    out : `numpy.ndarray`
        The transformed stamps (a new array).
    """
    images = np.asarray(images)
    which = np.asarray(which)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"square_symmetry needs (n, S, S, bands) stamps, not {images.shape}.")
    if which.shape != images.shape[:1]:
        raise ValueError(f"square_symmetry needs one symmetry per stamp: {which.shape} for {images.shape[0]}.")
    out = np.empty_like(images)
    for k in np.unique(which):
        sel = which == k
        x = images[sel]
        if k & 4:
            x = x.transpose(0, 2, 1, 3)
        out[sel] = np.rot90(x, int(k) & 3, axes=(1, 2))
    return out


class FreshNoise:
    """Make ``(noisy input, noiseless target)`` from noiseless stamps, new at every call.

    Parameters
    ----------
    sky_variance : array-like ``(bands,)``
        Sky variance per pixel in network units (`LinearNormalization.normalize_variance`).
    scale : `float`
        Flux units per network unit: the Poisson variance of a pixel in network units is
        ``truth / scale``.
    symmetries : `bool`
        Also apply a random symmetry of the square to each stamp.
    """

    def __init__(self, sky_variance, scale: float, *, symmetries: bool = True):
        self.sky_variance = np.asarray(sky_variance, np.float32).reshape(1, 1, 1, -1)
        self.scale = float(scale)
        self.symmetries = bool(symmetries)

    def __call__(self, truth: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(noisy, target)`` for a batch of noiseless stamps ``(n, H, W, bands)``."""
        truth = np.asarray(truth, np.float32)
        if self.symmetries:
            truth = square_symmetry(truth, rng.integers(0, N_SYMMETRIES, len(truth)))
        sigma = np.sqrt(self.sky_variance + np.maximum(truth, 0.0) / self.scale)
        noisy = truth + rng.standard_normal(truth.shape, dtype=np.float32) * sigma
        return noisy.astype(np.float32), truth

    def describe(self) -> dict:
        return {"fresh_noise": True, "symmetries": N_SYMMETRIES if self.symmetries else 1}
