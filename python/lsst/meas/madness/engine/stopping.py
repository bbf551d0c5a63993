"""The per-blend stopping rule of the MAP optimisation (paper section 3.5)."""

from __future__ import annotations

__all__ = ["EwmaStopping"]

import numpy as np


class EwmaStopping:
    """Stop each blend when its smoothed objective has stopped decreasing.

    The objective of every blend is smoothed by an exponentially weighted moving average
    (``alpha = 2 / (window + 1)``). After ``max(min_iter, 2 * window)`` steps, blend ``b`` stops
    when its EWMA decreased over the last ``window`` steps by less than ``rtol`` times its
    decrease over the first ``window`` steps -- the paper's "decrease in the EWMA of the final 15
    steps drops below a factor of 0.05 of that of the initial 15 steps". The rule is
    scale-free, so it behaves the same for faint and bright blends. A blend whose objective did
    not decrease at first stops as soon as it no longer decreases.

    Parameters
    ----------
    n_blends : `int`
        Number of blends followed.
    window : `int`
        EWMA window in steps.
    rtol : `float`
        Relative decrease below which a blend stops.
    min_iter : `int`
        Steps before any blend may stop.

    Examples
    --------
    >>> rule = EwmaStopping(2, window=3, rtol=0.1, min_iter=0)
    >>> for t in range(12):
    ...     stop = rule.update(np.array([100.0 / (t + 1), 100.0 - t]))
    >>> stop.tolist()  # the first blend has flattened out; the second still decreases linearly
    [True, False]
    """

    def __init__(self, n_blends: int, window: int = 15, rtol: float = 0.05, min_iter: int = 40):
        self.window = int(window)
        self.rtol = float(rtol)
        self.min_iter = int(min_iter)
        self.alpha = 2.0 / (self.window + 1.0)
        self._ewma: list[np.ndarray] = []
        self._n = int(n_blends)

    @property
    def n_steps(self) -> int:
        """Number of updates so far."""
        return len(self._ewma)

    def update(self, losses: np.ndarray) -> np.ndarray:
        """Record one step's objective ``(n_blends,)`` and return which blends may stop.

        Blends that already stopped may be passed any value (NaN included); the caller
        decides what to do with them.
        """
        losses = np.asarray(losses, dtype=np.float64)
        if not self._ewma:
            ewma = losses.copy()
        else:
            prev = self._ewma[-1]
            ewma = np.where(np.isfinite(prev), self.alpha * losses + (1.0 - self.alpha) * prev, losses)
        self._ewma.append(ewma)
        t = len(self._ewma)
        if t < max(self.min_iter, 2 * self.window + 1):
            return np.zeros(self._n, dtype=bool)
        first = self._ewma[0] - self._ewma[self.window]
        last = self._ewma[t - 1 - self.window] - self._ewma[t - 1]
        with np.errstate(invalid="ignore"):
            return last <= self.rtol * np.maximum(first, 0.0)
