"""The light of a bright galaxy beyond its stamp: a smooth radial envelope fitted with the sources.

A bright galaxy's light reaches far beyond its 45-px stamp: on validation field 6 of seed 101 an
r = 16.7 galaxy still has 1,000 e-/px (three times the pixel noise) 60 px from its centre and 85
e-/px at 130 px, falling roughly as ``r^-3``. No stamp holds that light and no zoom draws it right
(``doc/large-galaxies.md``), so the faint galaxies it falls on take it as their own. The envelope
of such a galaxy is its light outside its stamp, drawn as a radial profile in elliptical
radius (the ellipse of its fitted model): values at radii spaced by a constant factor, linearly
interpolated in log radius between them, zero inside the stamp, free per band. It is linear in
those values, so at any source models their best values are one linear solve with a matrix that
depends only on the weights (`EnvelopeBasis.solve`, inverted once per blend): the MAP fits the
sources with the envelopes at their optimum for them (profiled), with no extra variables or
learning rate. Thousands of pixels decide each value, so the envelope takes the galaxy's light
and not the noise; it is part of its galaxy (`DeblendResult.envelopes`).
"""

from __future__ import annotations

__all__ = ["EnvelopeBasis", "envelope_profiles", "model_ellipse", "pixel_noise"]

import dataclasses
import math

import numpy as np

RADIUS_RATIO = 1.4
"""Ratio of consecutive radii of an envelope's profile (eight values from 22 to 230 px)."""


def pixel_noise(weights: np.ndarray) -> np.ndarray:
    """``(C,)`` median pixel noise ``1 / sqrt(w)`` of each band's usable pixels of ``(C, h, w)``
    inverse variance ``weights`` (`numpy.inf` for a band without any)."""
    weights = np.asarray(weights, np.float64)
    return np.array([np.median(1.0 / np.sqrt(w[w > 0])) if (w > 0).any() else np.inf for w in weights])


def model_ellipse(stamp: np.ndarray) -> tuple[float, float]:
    """Axis ratio ``q`` (<= 1) and position angle (radians from +x, towards +y) of a model stamp.

    From the second moments of its band sum (negative pixels clipped) about its centroid.

    Examples
    --------
    >>> y, x = np.mgrid[-10:11, -10:11]
    >>> q, angle = model_ellipse(np.exp(-(x**2 / 16 + y**2 / 4))[None])
    >>> round(q, 2), round(angle, 2)
    (0.5, 0.0)
    """
    image = np.clip(np.asarray(stamp, np.float64), 0.0, None).sum(axis=0)
    total = image.sum()
    if not total > 0:
        return 1.0, 0.0
    y, x = np.mgrid[: image.shape[0], : image.shape[1]]
    cy, cx = (image * y).sum() / total, (image * x).sum() / total
    dy, dx = y - cy, x - cx
    ixx = (image * dx * dx).sum() / total
    iyy = (image * dy * dy).sum() / total
    ixy = (image * dx * dy).sum() / total
    root = math.sqrt(max((ixx - iyy) ** 2 / 4 + ixy**2, 0.0))
    major = (ixx + iyy) / 2 + root
    minor = max((ixx + iyy) / 2 - root, 1e-12)
    return float(math.sqrt(minor / major)), float(0.5 * math.atan2(2 * ixy, ixx - iyy))


def envelope_profiles(shape: tuple[int, int], center_yx, box, q: float, angle: float, inner: float,
                      ratio: float = RADIUS_RATIO, harmonics: int = 0) -> np.ndarray:
    """``(k, h, w)`` basis of one galaxy's envelope over a region of ``shape``.

    Profile ``j`` is the hat in log elliptical radius centred on ``inner * ratio**j`` (the first
    one flat inwards), so a sum of them is the profile linearly interpolated in log radius; the
    radii reach the region's farthest corner. With ``harmonics`` each hat also comes multiplied
    by ``cos(m phi)`` and ``sin(m phi)`` for every even ``m`` up to it (``phi`` the azimuth in
    the ellipse's frame), so that the envelope's isophotes may be flatter, rounder or twisted
    against the ellipse of the whole model: a bulge-dominated model's moments are rounder than
    its disc's outskirts. Every profile is zero inside ``box``, the galaxy's stamp, where its
    model draws it.

    Parameters
    ----------
    shape : pair of `int`
        ``(h, w)`` of the region.
    center_yx : pair of `float`
        The galaxy's centre in region pixels.
    box : 4-tuple of `int`
        ``(y0, x0, y1, x1)`` of its stamp in region pixels (end exclusive).
    q, angle : `float`
        Axis ratio and position angle of its ellipse (`model_ellipse`).
    inner : `float`
        Radius of the first profile value, pixels (the stamp's half-side).
    ratio : `float`
        Ratio of consecutive radii.
    harmonics : `int`
        Highest azimuthal order (even, >= 0): ``k`` is the number of radii times
        ``1 + harmonics`` (the radial hats first, then each order's cosine and sine hats).
    """
    if harmonics < 0 or harmonics % 2:
        raise ValueError(f"harmonics must be even and >= 0, not {harmonics}.")
    h, w = shape
    y, x = np.mgrid[:h, :w].astype(np.float64)
    dy, dx = y - center_yx[0], x - center_yx[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    q = min(max(q, 0.2), 1.0)
    radius = np.sqrt(u * u * q + v * v / q)  # geometric-mean radius: a circle of the same area
    corners = np.array([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1]], np.float64) - np.asarray(center_yx)
    farthest = float(np.hypot(corners[:, 0], corners[:, 1]).max()) / math.sqrt(q)
    k = max(int(math.ceil(math.log(max(farthest, inner) / inner) / math.log(ratio))) + 1, 2)
    t = np.log(np.maximum(radius, 1e-9) / inner) / math.log(ratio)  # profile index, fractional
    profiles = np.clip(1.0 - np.abs(t[None] - np.arange(k)[:, None, None]), 0.0, None)
    profiles[0] = np.where(t < 0, 1.0, profiles[0])
    if harmonics:
        phi = np.arctan2(v / math.sqrt(q), u * math.sqrt(q))
        terms = [profiles]
        for m in range(2, harmonics + 1, 2):
            terms += [profiles * np.cos(m * phi)[None], profiles * np.sin(m * phi)[None]]
        profiles = np.concatenate(terms)
    y0, x0, y1, x1 = (int(v) for v in box)
    profiles[:, max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = 0.0
    return profiles


@dataclasses.dataclass
class EnvelopeBasis:
    """The envelopes of a blend's extended galaxies over its fit region, and their solve.

    Attributes
    ----------
    profiles : `numpy.ndarray`
        ``(K, h, w)`` every envelope's profiles (`envelope_profiles`), one galaxy after another.
    owner : `numpy.ndarray`
        ``(K,)`` index of the source each profile belongs to.
    solve : `numpy.ndarray`
        ``(C, K, K)`` per band, the inverse of ``P^T W P + diag(precision)`` (``P`` the
        profiles, ``W`` the inverse variance): the values minimising ``sum W (r - P a)^2 +
        sum precision a^2`` for a residual ``r`` are ``solve @ P^T W r``.
    prior_precision : `numpy.ndarray`
        ``(C, K)`` Gaussian prior precision of each value: one pixel noise of width, which
        thousands of pixels outweigh.
    """

    profiles: np.ndarray
    owner: np.ndarray
    solve: np.ndarray
    prior_precision: np.ndarray

    @classmethod
    def build(cls, weights: np.ndarray, profiles: np.ndarray, owner) -> "EnvelopeBasis":
        """The solve of ``(K, h, w)`` ``profiles`` under ``(C, h, w)`` inverse variance ``weights``."""
        weights = np.asarray(weights, np.float64)
        profiles = np.asarray(profiles, np.float64)
        c, k = len(weights), len(profiles)
        flat = profiles.reshape(k, -1)
        normal = np.einsum("kp,cp,lp->ckl", flat, weights.reshape(c, -1), flat)
        noise = pixel_noise(weights)
        precision = np.repeat(np.where(np.isfinite(noise), 1.0 / noise**2, 1.0)[:, None], k, axis=1)
        normal[:, np.arange(k), np.arange(k)] += precision
        return cls(profiles=profiles.astype(np.float32), owner=np.asarray(owner, np.int64),
                   solve=np.linalg.inv(normal), prior_precision=precision)

    def values(self, residual: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``(C, K)`` profile values that best fit the ``(C, h, w)`` ``residual``, in the units of the
        weights the basis was built with."""
        c = len(residual)
        rhs = np.einsum("kp,cp->ck", self.profiles.reshape(len(self.profiles), -1).astype(np.float64),
                        (np.asarray(weights, np.float64) * residual).reshape(c, -1))
        return np.einsum("ckl,cl->ck", self.solve, rhs)

    def images(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each owner's envelope ``(m, C, h, w)`` of ``(C, K)`` values, and the owners ``(m,)``."""
        owners = np.unique(self.owner)
        out = np.stack([np.einsum("ck,khw->chw", values[:, self.owner == o],
                                  self.profiles[self.owner == o].astype(np.float64)) for o in owners])
        return out, owners

    def prior_penalty(self, values: np.ndarray) -> float:
        """``sum precision a^2 / 2`` of ``(C, K)`` values."""
        return 0.5 * float((self.prior_precision * np.asarray(values) ** 2).sum())

    def padded(self, k: int, shape: tuple[int, int]) -> "EnvelopeBasis":
        """The same envelopes with ``k`` profiles (the extra ones zero) over a ``shape`` region
        (zero beyond the blend's own), so that blends batched together share one layout."""
        k0, h0, w0 = self.profiles.shape
        profiles = np.zeros((k, *shape), np.float32)
        profiles[:k0, :h0, :w0] = self.profiles
        c = len(self.solve)
        precision = np.ones((c, k))
        precision[:, :k0] = self.prior_precision
        solve = np.zeros((c, k, k))
        solve[:, np.arange(k), np.arange(k)] = 1.0 / precision
        solve[:, :k0, :k0] = self.solve
        owner = np.concatenate([self.owner, np.full(k - k0, -1)])
        return EnvelopeBasis(profiles=profiles, owner=owner, solve=solve, prior_precision=precision)
