"""Residual peaks: the matched-filter significance against its closed form, and the peak finder."""

import unittest

import lsst.utils.tests
import numpy as np
from lsst.meas.madness.tasks.residual_peaks import bic_penalty, find_residual_peaks, residual_significance


class ResidualSignificanceTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.bands, self.size, self.sigma = 3, 81, 1.7
        shape = (self.bands, self.size, self.size)
        self.residual = np.full(shape, 2.0)
        self.variance = np.full(shape, 50.0)
        self.model = np.full(shape, 400.0)
        self.bad = np.zeros(shape, bool)
        self.centre = self.size // 2

    def test_constant_images(self):
        """Far from the edges a constant residual's significance is B r / sqrt(B v / (4 pi s^2)):
        the Gaussian filter keeps a constant and divides white noise's variance by 4 pi s^2."""
        sig = residual_significance(self.residual, self.variance, self.bad, self.sigma)
        b = self.bands
        expected = b * 2.0 / np.sqrt(b * 50.0 / (4 * np.pi * self.sigma**2))
        self.assertAlmostEqual(sig[self.centre, self.centre], expected, places=6)

    def test_model_error(self):
        """A fractional model error f adds (f B m)^2 to the filtered noise variance, so the same
        residual on a bright model is less significant; f = 0 is the noise-only significance."""
        b, f = self.bands, 0.05
        sig = residual_significance(self.residual, self.variance, self.bad, self.sigma,
                                    model=self.model, model_error=f)
        expected = b * 2.0 / np.sqrt(b * 50.0 / (4 * np.pi * self.sigma**2) + (f * b * 400.0) ** 2)
        self.assertAlmostEqual(sig[self.centre, self.centre], expected, places=6)
        zero = residual_significance(self.residual, self.variance, self.bad, self.sigma,
                                     model=self.model, model_error=0.0)
        np.testing.assert_array_equal(
            zero, residual_significance(self.residual, self.variance, self.bad, self.sigma))
        self.assertLess(expected, zero[self.centre, self.centre] / 10)

    def test_bad_pixels_and_errors(self):
        """Bad and non-finite pixels carry no weight; invalid arguments raise."""
        residual = self.residual.copy()
        residual[0, self.centre, self.centre] = np.nan
        bad = self.bad.copy()
        bad[1] = True
        sig = residual_significance(residual, self.variance, bad, self.sigma)
        self.assertTrue(np.isfinite(sig).all())
        # Band 1 is all bad: away from the NaN pixel the significance is that of bands 0 and 2.
        expected = 2 * 2.0 / np.sqrt(2 * 50.0 / (4 * np.pi * self.sigma**2))
        self.assertAlmostEqual(sig[10 + self.centre, self.centre], expected, places=6)
        with self.assertRaises(ValueError):
            residual_significance(self.residual, self.variance, self.bad, 0.0)
        with self.assertRaises(ValueError):
            residual_significance(self.residual, self.variance, self.bad, self.sigma, model_error=0.1)
        with self.assertRaises(ValueError):
            residual_significance(self.residual, self.variance, self.bad, self.sigma,
                                  model=self.model, model_error=-1.0)


class FindResidualPeaksTestCase(lsst.utils.tests.TestCase):
    def test_threshold_separation_footprint(self):
        """Maxima above the threshold, strongest first, away from fitted peaks and each other,
        inside the footprint, at most max_peaks."""
        sig = np.zeros((40, 40))
        sig[10, 10] = 9.0  # next to a fitted peak at (11, 10): dropped
        sig[30, 30] = 7.0
        sig[30, 32] = 6.0  # 2 px from the stronger one: dropped at min_separation 3
        sig[5, 35] = 8.0  # outside the footprint
        sig[20, 5] = 4.0  # below threshold
        sig[25, 10] = 6.5
        footprint = np.ones_like(sig, bool)
        footprint[:8, 30:] = False
        found = find_residual_peaks(sig, footprint, np.array([[11.0, 10.0]]),
                                    threshold=5.0, min_separation=3.0, max_peaks=5)
        np.testing.assert_array_equal(found, [[30, 30], [10, 25]])
        one = find_residual_peaks(sig, footprint, np.array([[11.0, 10.0]]),
                                  threshold=5.0, min_separation=3.0, max_peaks=1)
        np.testing.assert_array_equal(one, [[30, 30]])

    def test_bic_penalty(self):
        self.assertAlmostEqual(bic_penalty(16, 10_000), 8 * np.log(10_000))


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
