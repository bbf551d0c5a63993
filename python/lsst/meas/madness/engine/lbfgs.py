"""Limited-memory BFGS for one blend's variables, driven one objective evaluation at a time.

The MAP loop of `lsst.meas.madness.engine.deblender` evaluates the objective and its gradient of
every blend of a batch in one compiled step. Adam takes one step per evaluation whatever the
landscape; L-BFGS builds a curvature model of each blend from its past gradients and, where the
objective is smooth (the chi^2 of a decoder's output is), reaches the same objective in fewer
evaluations. Each blend has its own `BlendLbfgs`: it is told the objective and gradient at the
point it asked for and answers with the next point, so that a step of the batch is still one
compiled call (a trial a line search rejects costs an evaluation like any other step).
"""

from __future__ import annotations

__all__ = ["BlendLbfgs"]

import collections

import numpy as np


class BlendLbfgs:
    """L-BFGS with a backtracking Armijo line search on one flat vector of variables.

    Parameters
    ----------
    x0 : `numpy.ndarray`
        Starting point (any shape; flattened).
    memory : `int`
        Curvature pairs kept (the two-loop recursion's history).
    first_step : `float`
        Largest move of any variable in a steepest-descent step (the first step and after a
        reset), in the variables' units: there is no curvature yet to scale the gradient by.
    max_step : `float`
        Largest move of any variable in one step: a quasi-Newton step far outside the region
        its curvature pairs came from is cut back to it.
    c1 : `float`
        Armijo constant of the sufficient decrease.
    max_backtracks : `int`
        Rejected trials in a row after which the memory is dropped and the search restarts from
        steepest descent.
    diagonal : `bool`
        Scale the initial inverse Hessian per variable by the root mean square of its past
        gradients (as Adam scales its steps), instead of one scalar: the variables of a blend
        differ in curvature by orders of magnitude (a bright source's flux factors against a
        faint source's latents), and with one scalar the well-curved ones take all the progress.

    Notes
    -----
    A rejected trial is shrunk by a quadratic interpolation of the objective along the search
    direction, kept within [0.1, 0.5] of the rejected step; a non-finite objective or gradient
    counts as a rejection (a quarter of the step). A curvature pair with ``s . y`` not positive
    (a non-convex stretch) is not stored, so the inverse-Hessian model stays positive definite
    and every direction is a descent direction.

    Examples
    --------
    >>> a = np.array([1.0, 100.0])
    >>> opt = BlendLbfgs(np.array([1.0, 1.0]))
    >>> x = opt.trial
    >>> for _ in range(30):
    ...     x = opt.tell(0.5 * np.sum(a * x**2), a * x)
    >>> bool(opt.f < 1e-10)
    True
    """

    def __init__(self, x0: np.ndarray, memory: int = 8, first_step: float = 0.05, max_step: float = 1.0,
                 c1: float = 1e-4, max_backtracks: int = 8, diagonal: bool = True):
        self.shape = np.shape(x0)
        self.x = np.asarray(x0, np.float64).ravel().copy()
        self.memory = int(memory)
        self.first_step = float(first_step)
        self.max_step = float(max_step)
        self.c1 = float(c1)
        self.max_backtracks = int(max_backtracks)
        self.diagonal = bool(diagonal)
        self._g2 = np.zeros_like(self.x)  # running mean of the squared gradients at accepted points
        self._n_g2 = 0
        self.f: float | None = None
        self.g: np.ndarray | None = None
        self.d = np.zeros_like(self.x)
        self.alpha = 0.0
        self._pairs: collections.deque = collections.deque(maxlen=self.memory)
        self._backtracks = 0
        self.n_accepted = 0
        self.n_rejected = 0
        self._trial = self.x.copy()

    @property
    def trial(self) -> np.ndarray:
        """The point whose objective and gradient `tell` expects next (shape of ``x0``)."""
        return self._trial.reshape(self.shape)

    @property
    def best(self) -> np.ndarray:
        """The last accepted point (shape of ``x0``): the lowest objective seen."""
        return self.x.reshape(self.shape)

    def tell(self, f: float, g: np.ndarray) -> np.ndarray:
        """Give the objective ``f`` and gradient ``g`` at `trial`; return the next trial point."""
        f = float(f)
        g = np.asarray(g, np.float64).ravel()
        finite = np.isfinite(f) and bool(np.isfinite(g).all())
        if self.f is None:
            if not finite:
                raise FloatingPointError("BlendLbfgs: the objective or its gradient is not finite at the start.")
            self.f, self.g = f, g
            self._observe_gradient()
            self._direction()
        elif finite and f <= self.f + self.c1 * self.alpha * float(self.g @ self.d):
            s = self._trial - self.x
            y = g - self.g
            sy = float(s @ y)
            if sy > 1e-12 * float(y @ y):
                self._pairs.append((s, y, 1.0 / sy))
            self.x, self.f, self.g = self._trial, f, g
            self.n_accepted += 1
            self._backtracks = 0
            self._observe_gradient()
            self._direction()
        else:
            self.n_rejected += 1
            self._backtracks += 1
            if self._backtracks > self.max_backtracks:
                self._pairs.clear()
                self._backtracks = 0
                self._direction()
            elif finite:
                slope = float(self.g @ self.d) * self.alpha
                curvature = f - self.f - slope
                shrink = -slope / (2.0 * curvature) if curvature > 0 else 0.5
                self.alpha *= float(np.clip(shrink, 0.1, 0.5))
            else:
                self.alpha *= 0.25
        self._trial = self.x + self.alpha * self.d
        return self.trial

    def _observe_gradient(self) -> None:
        """Add the gradient at a newly accepted point to the per-variable scale's running mean.

        Only here: a reset or a rejected trial leaves the point (and its gradient) unchanged, and
        counting it again would weight that point above the others.
        """
        g = self.g
        self._n_g2 += 1
        self._g2 += (g * g - self._g2) / min(self._n_g2, 20)  # a mean, then an average over ~20 points

    def _direction(self) -> None:
        """The next search direction from the current gradient, and its first step length."""
        g = self.g
        scale = 1.0 / (np.sqrt(self._g2) + 1e-12 * np.sqrt(self._g2.max(initial=0.0)) + 1e-30) \
            if self.diagonal else np.ones_like(g)
        if not self._pairs:
            self.d = -scale * g
            peak = float(np.max(np.abs(self.d))) if g.size else 0.0
            self.alpha = self.first_step / peak if peak > 0 else 0.0
            return
        # Two-loop recursion (Nocedal & Wright, algorithm 7.4).
        q = g.copy()
        coeffs = []
        for s, y, rho in reversed(self._pairs):
            a = rho * float(s @ q)
            q -= a * y
            coeffs.append(a)
        s, y, _ = self._pairs[-1]
        q *= scale * (float(s @ y) / float(y @ (scale * y)))
        for (s, y, rho), a in zip(self._pairs, reversed(coeffs)):
            b = rho * float(y @ q)
            q += (a - b) * s
        d = -q
        if float(g @ d) >= 0.0:  # not a descent direction (rounding): start again from the gradient
            self._pairs.clear()
            self._direction()
            return
        self.d = d
        peak = float(np.max(np.abs(d)))
        self.alpha = min(1.0, self.max_step / peak) if peak > 0 else 0.0
