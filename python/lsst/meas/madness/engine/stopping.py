"""The stopping rules of the MAP optimisation: per blend (paper section 3.5) and per source."""

from __future__ import annotations

__all__ = ["DriftFreezing", "EwmaStopping"]

import collections

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

    With ``atol`` a blend also needs its last decrease at most ``atol`` (objective units:
    chi^2 / 2, so a decrease of a few is what a fit that wanders within its noise makes): a
    blend whose first steps fell by orders of magnitude more than any later fit (a start far
    from the optimum) is not stopped while it still falls by thousands.

    With ``floor`` a blend whose EWMA fell over the last ``window`` steps by at most ``floor``
    stops whatever its first fall was: a small blend that starts near its optimum (a faint
    isolated galaxy, whose first steps fall by a few units) otherwise goes on to the step cap
    while Adam wanders within the noise, falling by less than one unit of chi^2 per window.

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
    atol : `float` or `numpy.ndarray`, optional
        Largest last decrease of a blend that stops, or one per blend (`None`: no such bound).
    floor : `float` or `numpy.ndarray`, optional
        Last decrease at or below which a blend stops whatever ``rtol`` says (after ``min_iter``
        steps; with ``atol`` both bounds apply), or one per blend (`None`: none).

    Examples
    --------
    >>> rule = EwmaStopping(2, window=3, rtol=0.1, min_iter=0)
    >>> for t in range(12):
    ...     stop = rule.update(np.array([100.0 / (t + 1), 100.0 - t]))
    >>> stop.tolist()  # the first blend has flattened out; the second still decreases linearly
    [True, False]
    """

    def __init__(self, n_blends: int, window: int = 15, rtol: float = 0.05, min_iter: int = 40,
                 atol=None, floor=None):
        self.atol = None if atol is None else np.broadcast_to(np.asarray(atol, np.float64), (int(n_blends),))
        self.floor = None if floor is None else np.broadcast_to(np.asarray(floor, np.float64), (int(n_blends),))
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
            stop = last <= self.rtol * np.maximum(first, 0.0)
            if self.floor is not None:
                stop |= last <= self.floor
            if self.atol is not None:
                stop &= last <= self.atol
        return stop


class DriftFreezing:
    """Freeze each source once its variables have stopped moving.

    Adam moves a variable by at most about its learning rate per step (times the variable's
    step scale), whatever the gradient's size, so the rule is scale-free like `EwmaStopping`:
    after ``min_iter`` steps a source freezes when the net move of each of its variables in the
    last ``window`` steps is below ``tol`` times the learning rate summed over those steps. A
    source near its optimum oscillates about it (its net moves are small); one still on its
    way keeps moving in one direction (a drift near 1). The largest variable decides, not an
    average: a source whose shape still changes along one latent direction is not done.

    Parameters
    ----------
    n_sources : `int`
        Number of sources followed (rows of the variables).
    window : `int`
        Steps over which the move is measured.
    tol : `float`
        Drift below which a source freezes.
    min_iter : `int`
        Steps before any source may freeze.
    step_scale : `numpy.ndarray`, optional
        ``(D,)`` each variable's Adam step relative to the learning rate (ones by default).

    Examples
    --------
    >>> rule = DriftFreezing(2, window=4, tol=0.1, min_iter=0)
    >>> for t in range(1, 9):  # source 0 oscillates in place, source 1 walks at full pace
    ...     x = np.array([[0.01 * (-1) ** t], [0.01 * t]])
    ...     newly = rule.update(x, t, 0.01, np.array([True, True]))
    >>> rule.frozen.tolist()
    [True, False]
    """

    def __init__(self, n_sources: int, window: int, tol: float, min_iter: int,
                 step_scale: np.ndarray | None = None):
        self.window = int(window)
        self.tol = float(tol)
        self.min_iter = int(min_iter)
        self.step_scale = None if step_scale is None else np.asarray(step_scale, np.float64)
        self.frozen = np.zeros(int(n_sources), bool)
        self._past: collections.deque = collections.deque(maxlen=self.window + 1)
        self._rates: collections.deque = collections.deque(maxlen=self.window)

    def drift(self) -> np.ndarray | None:
        """``(n_sources,)`` net move over the last ``window`` steps in units of the distance Adam
        could cover in them; `None` before ``window`` steps were seen."""
        if len(self._past) <= self.window:
            return None
        move = self._past[-1] - self._past[0]
        if self.step_scale is not None:
            move = move / self.step_scale
        return np.max(np.abs(move), axis=1) / sum(self._rates)

    def window_mean(self) -> np.ndarray:
        """``(n_sources, D)`` mean of the variables over the last ``window`` steps: where a frozen
        source is put, the centre of its oscillation rather than wherever the last step left it."""
        return np.mean(list(self._past)[1:], axis=0)

    def update(self, x: np.ndarray, t: int, learning_rate: float, live: np.ndarray) -> np.ndarray:
        """Record the variables ``(n_sources, D)`` after step ``t`` (taken at ``learning_rate``)
        and return which of the ``live`` sources froze now; `frozen` holds all so far."""
        self._past.append(np.array(x, np.float64))
        self._rates.append(float(learning_rate))
        drift = self.drift()
        newly = np.zeros(len(self.frozen), bool)
        if drift is None or t < self.min_iter:
            return newly
        newly = np.asarray(live, bool) & ~self.frozen & (drift < self.tol)
        self.frozen |= newly
        return newly
