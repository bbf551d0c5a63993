"""L-BFGS as the MAP optimiser (``MapSettings.optimizer="lbfgs"``).

Oracles: the known minima of an ill-conditioned quadratic (``numpy.linalg.solve``) and of the
Rosenbrock function (1, 1); and, in the engine, GalSim: a blend of three exponential galaxies
whose fitted fluxes must match their noiseless GalSim images as well as Adam's do, at an objective
no higher than Adam's.
"""

import unittest

import galsim
import lsst.utils.tests
import numpy as np
from lsst.meas.madness import MadnessDeblender
from lsst.meas.madness.engine.lbfgs import BlendLbfgs
from lsst.meas.madness.engine.settings import MapSettings
from lsst.meas.madness.errors import MadnessRangeError, MadnessValueError
from utils import draw_galsim_scene


def _run(opt, fun, n):
    """Feed ``opt`` ``n`` evaluations of ``fun`` (returning f, g); the accepted objectives."""
    x, accepted = opt.trial, []
    for _ in range(n):
        x = opt.tell(*fun(x))
        accepted.append(opt.f)
    return np.array(accepted)


class BlendLbfgsTestCase(lsst.utils.tests.TestCase):
    def test_quadratic(self):
        rng = np.random.default_rng(3)
        q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
        a = q @ np.diag(np.logspace(0, 3, 20)) @ q.T  # condition number 1e3
        b = rng.normal(size=20)
        solution = np.linalg.solve(a, b)

        def fun(x):
            return 0.5 * x @ a @ x - b @ x, a @ x - b

        opt = BlendLbfgs(np.zeros(20), memory=8, first_step=0.05)
        accepted = _run(opt, fun, 150)
        self.assertTrue(np.all(np.diff(accepted) <= 0))  # only accepted points count
        np.testing.assert_allclose(opt.best, solution, rtol=0, atol=1e-4 * np.abs(solution).max())
        self.assertGreater(opt.n_accepted, 20)

    def test_rosenbrock(self):
        def fun(x):
            f = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
            g = np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])
            return f, g

        opt = BlendLbfgs(np.array([-1.2, 1.0]), first_step=0.05)
        _run(opt, fun, 200)
        np.testing.assert_allclose(opt.best, [1.0, 1.0], atol=1e-4)

    def test_non_finite_trials_are_rejected(self):
        # A wall: the objective is infinite beyond x = 0.5, its minimum (at 0.4) just inside.
        def fun(x):
            if x[0] > 0.5:
                return np.inf, np.full(1, np.nan)
            return (x[0] - 0.4) ** 2, 2 * (x[0] - 0.4)

        opt = BlendLbfgs(np.array([-3.0]), first_step=5.0, max_step=10.0)  # first trial at 2.0
        _run(opt, fun, 60)
        self.assertGreater(opt.n_rejected, 0)
        self.assertAlmostEqual(float(opt.best[0]), 0.4, places=5)
        self.assertTrue(np.isfinite(opt.f))

    def test_reset_repeats_the_step_from_the_same_point(self):
        # Two accepted points with different gradients and no curvature pair (s . y < 0), then
        # non-finite trials until the memory is reset: nothing new was accepted, so the step after
        # the reset is the steepest-descent step already taken from that point, each variable
        # scaled by the RMS of its gradient over the two accepted points (Adam's scaling).
        opt = BlendLbfgs(np.zeros(2), first_step=0.05, max_backtracks=3)
        g0, g1 = np.array([1.0, 1.0]), np.array([1.0, 4.0])
        opt.tell(10.0, g0)
        first = opt.tell(9.0, g1).copy()
        self.assertEqual(opt.n_accepted, 1)
        d = -g1 / np.sqrt((g0**2 + g1**2) / 2)
        np.testing.assert_allclose(first, opt.best + 0.05 * d / np.abs(d).max(), rtol=1e-12)
        for _ in range(4):  # max_backtracks + 1 rejections
            trial = opt.tell(np.inf, np.full(2, np.nan))
        self.assertEqual(opt.n_rejected, 4)
        np.testing.assert_allclose(trial, first, rtol=1e-12)

    def test_non_finite_start_raises(self):
        opt = BlendLbfgs(np.zeros(3))
        with self.assertRaises(FloatingPointError):
            opt.tell(np.nan, np.zeros(3))

    def test_settings(self):
        self.assertEqual(MapSettings().optimizer, "adam")
        self.assertEqual(MapSettings(optimizer="lbfgs").optimizer, "lbfgs")
        with self.assertRaises(MadnessValueError):
            MapSettings(optimizer="sgd")
        with self.assertRaises(MadnessValueError):
            MapSettings(optimizer="lbfgs", freeze_drift=0.1)
        with self.assertRaises(MadnessRangeError):
            MapSettings(lbfgs_memory=0)
        with self.assertRaises(MadnessRangeError):
            MapSettings(lbfgs_max_step=0.0)
        self.assertEqual(MapSettings.parse_overrides(["optimizer=lbfgs"]), {"optimizer": "lbfgs"})


class EngineLbfgsTestCase(lsst.utils.tests.TestCase):
    """Three GalSim galaxies 7-9 px apart fitted as one blend by Adam and by L-BFGS."""

    @classmethod
    def setUpClass(cls):
        cls.deblender = MadnessDeblender.from_bundle(None)
        galaxies = [
            (galsim.Exponential(half_light_radius=0.6).shear(e1=0.2, e2=-0.1), 21.0),
            (galsim.Exponential(half_light_radius=0.4).shear(e1=-0.1, e2=0.25), 22.0),
            (galsim.Sersic(n=2.5, half_light_radius=0.5).shear(e1=0.05, e2=0.15), 22.5),
        ]
        cls.peaks = np.array([[40.2, 40.7], [47.6, 43.1], [38.9, 48.3]])
        cls.image, cls.variance, cls.truth = draw_galsim_scene(galaxies, cls.peaks, (81, 81), seed=11)
        base = cls.deblender.settings.replace(max_zoom=1, fit_envelopes=False, refit_beside_brighter=None)
        cls.results = {
            name: cls.deblender.deblend(cls.image, cls.peaks, variance=cls.variance,
                                        settings=base.replace(optimizer=name))
            for name in ("adam", "lbfgs")
        }

    def _flux_errors(self, result):
        model = result.models.sum(axis=(2, 3))  # (n, bands): each model's whole flux
        truth = self.truth.sum(axis=(2, 3))
        return np.abs(model / truth - 1)

    def test_objective_no_higher_than_adam(self):
        adam, lbfgs = self.results["adam"], self.results["lbfgs"]
        self.assertTrue(np.isfinite(lbfgs.objective_final))
        self.assertLess(lbfgs.objective_final, lbfgs.objective_initial)
        self.assertLessEqual(lbfgs.objective_final, adam.objective_final + 1e-4 * abs(adam.objective_final))
        history = np.asarray(lbfgs.loss_history)
        self.assertTrue(np.all(np.diff(history) <= 0))  # the accepted objective never rises

    def test_fluxes_against_galsim(self):
        adam = self._flux_errors(self.results["adam"])
        lbfgs = self._flux_errors(self.results["lbfgs"])
        r = self.deblender.bands.index("r")
        self.assertLess(float(np.max(lbfgs[:, r])), 0.15)
        self.assertLess(float(np.mean(lbfgs[:, 1:5])), float(np.mean(adam[:, 1:5])) + 0.01)


class MemoryTestCase(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
