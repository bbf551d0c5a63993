"""Training augmentation: the symmetries of the square against GalSim, and fresh noise statistics."""

from __future__ import annotations

import unittest

import galsim
import lsst.utils.tests
import numpy as np

from lsst.meas.madness.training.augment import FreshNoise, square_symmetry


def _draw(g1: float, g2: float, x0: float = 0.0, y0: float = 0.0) -> np.ndarray:
    """An elliptical, off-centre Sersic galaxy drawn by GalSim on a 45x45 stamp, ``(45, 45)``."""
    gal = galsim.Sersic(n=1.5, half_light_radius=0.6).shear(g1=g1, g2=g2).shift(x0, y0)
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    return galsim.Convolve(gal, psf).drawImage(nx=45, ny=45, scale=0.2).array


class SquareSymmetryTestCase(lsst.utils.tests.TestCase):
    """Each symmetry equals GalSim drawing the correspondingly transformed galaxy."""

    def test_against_galsim(self):
        g1, g2, dx, dy = 0.3, 0.15, 0.4, -0.6  # arcsec; an asymmetric placement catches axis mix-ups
        image = _draw(g1, g2, dx, dy)
        # numpy arrays are (y, x). A quarter turn (np.rot90, counter-clockwise in array display
        # with y down) maps (x, y) -> (y, -x); the transpose swaps x and y. Shears follow:
        # a quarter turn negates g1 and g2, a transpose (reflection about x = y) negates g1 only.
        expected = {
            0: _draw(g1, g2, dx, dy),
            1: _draw(-g1, -g2, dy, -dx),
            2: _draw(g1, g2, -dx, -dy),
            3: _draw(-g1, -g2, -dy, dx),
            4: _draw(-g1, g2, dy, dx),
        }
        stack = np.repeat(image[:, :, None], 2, axis=2)  # (45, 45, 2): two identical bands
        for which, oracle in expected.items():
            out = square_symmetry(stack[None], np.array([which]))[0]
            for band in range(2):
                np.testing.assert_allclose(out[..., band], oracle, atol=1e-6 * image.max(),
                                           err_msg=f"symmetry {which}")
        # all 8 are distinct for an asymmetric galaxy, and each preserves the flux
        outs = square_symmetry(np.repeat(stack[None], 8, axis=0), np.arange(8))
        for i in range(8):
            self.assertAlmostEqual(outs[i].sum(), stack.sum(), places=3)
            for j in range(i):
                self.assertGreater(np.abs(outs[i] - outs[j]).max(), 1e-3 * image.max())

    def test_bad_shapes(self):
        with self.assertRaises(ValueError):
            square_symmetry(np.zeros((2, 45, 44, 6)), np.zeros(2, int))
        with self.assertRaises(ValueError):
            square_symmetry(np.zeros((2, 45, 45, 6)), np.zeros(3, int))


class FreshNoiseTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.scale = 1e4
        self.sky = np.array([20.0, 300.0], np.float32) / self.scale**2  # network units
        truth = np.zeros((400, 45, 45, 2), np.float32)
        truth[:, 10:20, 10:20, :] = 5000.0 / self.scale  # a bright square: Poisson-dominated
        self.truth = truth

    def test_variance_is_sky_plus_poisson(self):
        noise = FreshNoise(self.sky, self.scale, symmetries=False)
        noisy, target = noise(self.truth, np.random.default_rng(0))
        np.testing.assert_array_equal(target, self.truth)
        resid = (noisy - self.truth) * self.scale  # electrons
        faint = resid[:, 30:, 30:, :].reshape(-1, 2)
        bright = resid[:, 10:20, 10:20, :].reshape(-1, 2)
        # sky only: variance 20 and 300 e-^2; bright: sky + 5000
        np.testing.assert_allclose(faint.var(axis=0), [20.0, 300.0], rtol=0.02)
        np.testing.assert_allclose(bright.var(axis=0), [5020.0, 5300.0], rtol=0.02)
        np.testing.assert_allclose(faint.mean(axis=0), 0.0, atol=0.05 * np.sqrt(300))

    def test_fresh_each_call_and_seeded(self):
        noise = FreshNoise(self.sky, self.scale)
        a, ta = noise(self.truth[:8], np.random.default_rng(1))
        b, tb = noise(self.truth[:8], np.random.default_rng(1))
        c, _ = noise(self.truth[:8], np.random.default_rng(2))
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ta, tb)
        self.assertGreater(np.abs(a - c).max(), 0)
        # targets are symmetries of the inputs' noiseless galaxies: the flux is kept
        np.testing.assert_allclose(ta.sum(axis=(1, 2, 3)), self.truth[:8].sum(axis=(1, 2, 3)), rtol=1e-6)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
