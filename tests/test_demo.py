"""The demo's LSST galaxy drawing (the full demo runs with `make demo`)."""

import unittest

import lsst.utils.tests
import numpy as np
from lsst.meas.madness.demo import LsstConditions, draw_galaxies


class DemoDrawingTestCase(lsst.utils.tests.TestCase):
    def test_conditions_match_paper_table(self):
        cond = LsstConditions.from_surveycodex()
        self.assertEqual(cond.bands, ("u", "g", "r", "i", "z", "y"))
        self.assertAlmostEqual(cond.pixel_scale, 0.2)
        self.assertAlmostEqual(cond.psf_fwhm[cond.bands.index("r")], 0.81)  # paper table 1

    def test_draw_deterministic_and_calibrated(self):
        cond = LsstConditions.from_surveycodex()
        a, truth = draw_galaxies(3, seed=4, conditions=cond)
        b, _ = draw_galaxies(3, seed=4, conditions=cond)
        np.testing.assert_array_equal(a, b)
        self.assertEqual(a.shape, (3, 6, 45, 45))
        r = cond.bands.index("r")
        expected = cond.mag24_counts[r] * 10 ** (-0.4 * (truth["mag_r"] - 24.0))
        # Large galaxies lose a little flux outside the 9" stamp.
        np.testing.assert_allclose(a[:, r].sum(axis=(1, 2)), expected, rtol=0.1)
        self.assertTrue((a[:, r].sum(axis=(1, 2)) <= expected * 1.001).all())


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
