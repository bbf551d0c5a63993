"""Seeded layouts of the paper's three datasets (section 2): which galaxies, where.

Every function takes the catalogue rows it may use, in the order they should be consumed, and
a `numpy.random.Generator`; it returns `BlendPlan` s. Each catalogue galaxy is used once per
dataset (as the centre of one IsolatedSims stamp, in one BlendedSims field, or in one TestFields
field), so datasets built from disjoint splits hold disjoint galaxies.

Centres sit on pixel centres by default (integer offsets): the decoder models centred galaxies
and the engine places its stamps on whole pixels, so sub-pixel offsets would add an error no
deblender here can model. ``subpixel=True`` adds uniform offsets in [-0.5, 0.5) pixel for
studies of that error.
"""

from __future__ import annotations

__all__ = ["plan_blended", "plan_isolated", "plan_test_fields"]

import numpy as np

from ..errors import MadnessValueError
from .btk_draw import BlendPlan


def plan_isolated(rows: np.ndarray) -> list[BlendPlan]:
    """IsolatedSims: one galaxy per stamp, at the stamp centre."""
    zero = np.zeros(1)
    return [BlendPlan(np.array([r]), zero, zero) for r in np.asarray(rows)]


def _subpixel(rng: np.random.Generator, n: int, subpixel: bool) -> tuple[np.ndarray, np.ndarray]:
    if not subpixel:
        return np.zeros(n), np.zeros(n)
    return rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n)


def _distinct_pixels(rng: np.random.Generator, n: int, low: int, high: int, max_tries: int = 1000
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` integer (dx, dy) in [low, high] with no two in the same pixel (rejection sampling)."""
    side = high - low + 1
    if n > side * side:
        raise MadnessValueError(f"Cannot place {n} galaxies on distinct pixels of a {side}x{side} box.")
    dx = np.empty(0, dtype=int)
    dy = np.empty(0, dtype=int)
    for _ in range(max_tries):
        need = n - len(dx)
        if need == 0:
            break
        x = rng.integers(low, high + 1, need)
        y = rng.integers(low, high + 1, need)
        cand_x = np.concatenate([dx, x])
        cand_y = np.concatenate([dy, y])
        _, first = np.unique(cand_y * side + cand_x, return_index=True)
        keep = np.sort(first)  # keep earlier draws, reject only the later duplicates
        dx, dy = cand_x[keep], cand_y[keep]
    else:  # pragma: no cover - needs an absurdly crowded box
        raise MadnessValueError(f"Rejection sampling of {n} distinct pixels did not converge.")
    return dx.astype(float), dy.astype(float)


def plan_blended(rows: np.ndarray, rng: np.random.Generator, *, min_galaxies: int = 1,
                  max_galaxies: int = 3, box: int = 20, subpixel: bool = False) -> list[BlendPlan]:
    """BlendedSims fields: 1-3 galaxies (uniform) with centres in a ``box`` x ``box`` pixel box.

    Consecutive ``rows`` fill the fields; the last field takes what is left (it may hold fewer
    than ``min_galaxies`` only if the rows run out).
    """
    if not 1 <= min_galaxies <= max_galaxies:
        raise MadnessValueError(f"Need 1 <= min_galaxies <= max_galaxies, got {min_galaxies}, {max_galaxies}.")
    rows = np.asarray(rows)
    plans = []
    start = 0
    low, high = -(box // 2), box - box // 2 - 1
    while start < len(rows):
        n = min(int(rng.integers(min_galaxies, max_galaxies + 1)), len(rows) - start)
        dx, dy = _distinct_pixels(rng, n, low, high)
        sx, sy = _subpixel(rng, n, subpixel)
        plans.append(BlendPlan(rows[start:start + n], dx + sx, dy + sy))
        start += n
    return plans


def plan_test_fields(rows: np.ndarray, n_fields: int, rng: np.random.Generator, *, min_galaxies: int = 12,
                     max_galaxies: int = 20, inner: int = 150, subpixel: bool = False) -> list[BlendPlan]:
    """TestFields: 12-20 galaxies (uniform) centred in the inner ``inner`` x ``inner`` pixels.

    No two centres share a pixel (rejection sampling, as the paper does). Raises when ``rows``
    hold too few galaxies for ``n_fields`` fields.
    """
    if not 1 <= min_galaxies <= max_galaxies:
        raise MadnessValueError(f"Need 1 <= min_galaxies <= max_galaxies, got {min_galaxies}, {max_galaxies}.")
    rows = np.asarray(rows)
    counts = rng.integers(min_galaxies, max_galaxies + 1, n_fields)
    if counts.sum() > len(rows):
        raise MadnessValueError(f"{n_fields} test fields need {int(counts.sum())} galaxies; the test split "
                                f"has {len(rows)}. Use a larger catalogue or fewer fields.")
    low, high = -(inner // 2), inner - inner // 2 - 1
    plans = []
    start = 0
    for n in counts:
        dx, dy = _distinct_pixels(rng, int(n), low, high)
        sx, sy = _subpixel(rng, int(n), subpixel)
        plans.append(BlendPlan(rows[start:start + n], dx + sx, dy + sy))
        start += n
    return plans
