"""Bad input to the engine: which raises, which is flagged (engine/observation.py table)."""

import pickle
import unittest

import lsst.utils.tests
import numpy as np
from lsst.meas.madness import (
    MadnessNoDataError,
    MadnessRangeError,
    MadnessValueError,
)
from lsst.meas.madness.engine import EwmaStopping, MapSettings, placement_matrices, prepare_blend
from lsst.meas.madness.engine.observation import bad_pixels
from lsst.meas.madness.errors import MadnessBlendError, MadnessBundleError, MadnessError
from lsst.meas.madness.networks import LinearNormalization


def _prepare(image=None, peaks=((20, 20),), variance=None, mask=None, max_sources=10):
    image = np.ones((6, 60, 70), "f4") if image is None else image
    variance = np.ones_like(image) * 100 if variance is None else variance
    return prepare_blend(image, np.asarray(peaks, float), variance, mask, num_bands=6, stamp_size=45,
                         normalization=LinearNormalization(), max_sources=max_sources)


class BadInputTestCase(lsst.utils.tests.TestCase):
    def test_raises(self):
        with self.assertRaisesRegex(MadnessValueError, "expects 6"):
            _prepare(image=np.ones((5, 60, 70), "f4"))
        with self.assertRaisesRegex(MadnessValueError, "No peaks"):
            _prepare(peaks=np.zeros((0, 2)))
        with self.assertRaisesRegex(MadnessValueError, "outside"):
            _prepare(peaks=[(20, 20), (75, 10)])
        with self.assertRaisesRegex(MadnessValueError, "same pixel"):
            _prepare(peaks=[(20, 20), (20.3, 19.8)])
        with self.assertRaisesRegex(MadnessValueError, "non-finite"):
            _prepare(peaks=[(np.nan, 3)])
        with self.assertRaises(MadnessRangeError) as cm:
            _prepare(peaks=[(i, 5) for i in range(11)])
        self.assertEqual((cm.exception.value, cm.exception.max), (11, 10))
        with self.assertRaisesRegex(MadnessValueError, "variance shape"):
            _prepare(variance=np.ones((6, 10, 10)))
        with self.assertRaisesRegex(MadnessValueError, "mask shape"):
            _prepare(mask=np.zeros((3, 3), bool))
        with self.assertRaises(MadnessNoDataError):
            _prepare(variance=np.zeros((6, 60, 70), "f4"))
        # Builtin bases let callers catch without importing our classes.
        with self.assertRaises(ValueError):
            _prepare(peaks=np.zeros((0, 2)))

    def test_bad_pixels_get_zero_weight(self):
        image = np.full((6, 60, 70), 50.0, "f4")
        variance = np.full_like(image, 100.0)
        image[0, 20, 20] = np.nan
        variance[1, 21, 21] = -1.0
        variance[2, 22, 22] = np.inf
        mask = np.zeros((60, 70), bool)
        mask[23, 23] = True
        blend = _prepare(image=image, variance=variance, mask=mask, peaks=[(20, 20)])
        y0, x0 = blend.region[:2]
        self.assertEqual(blend.weights[0, 20 - y0, 20 - x0], 0)
        self.assertEqual(blend.weights[1, 21 - y0, 21 - x0], 0)
        self.assertEqual(blend.weights[2, 22 - y0, 22 - x0], 0)
        self.assertTrue((blend.weights[:, 23 - y0, 23 - x0] == 0).all())
        self.assertTrue(np.isfinite(blend.data).all() and np.isfinite(blend.cutouts).all())
        np.testing.assert_allclose(blend.weights[3, 0, 0], 1e8 / 100.0, rtol=1e-6)  # network units
        self.assertGreater(blend.masked_fraction[0], 0)

    def test_bad_pixels_rule(self):
        """`bad_pixels`, the one rule the engine and the tasks share, against the table's cases."""
        image = np.full((2, 4, 5), 3.0)
        variance = np.ones_like(image)
        image[0, 0, 0] = np.nan
        image[1, 0, 1] = -np.inf
        variance[0, 1, 0] = 0.0
        variance[1, 1, 1] = np.nan
        variance[0, 2, 2] = np.inf
        variance[1, 2, 3] = -2.0
        expected = np.zeros(image.shape, bool)
        for b, y, x in [(0, 0, 0), (1, 0, 1), (0, 1, 0), (1, 1, 1), (0, 2, 2), (1, 2, 3)]:
            expected[b, y, x] = True
        np.testing.assert_array_equal(bad_pixels(image, variance), expected)
        np.testing.assert_array_equal(bad_pixels(image, variance, None), expected)
        mask2d = np.zeros((4, 5), np.int32)
        mask2d[3, 4] = 16  # any non-zero bit
        both = expected.copy()
        both[:, 3, 4] = True
        np.testing.assert_array_equal(bad_pixels(image, variance, mask2d), both)
        mask3d = np.zeros(image.shape, bool)
        mask3d[1, 3, 0] = True
        one = expected.copy()
        one[1, 3, 0] = True
        np.testing.assert_array_equal(bad_pixels(image, variance, mask3d), one)
        with self.assertRaisesRegex(MadnessValueError, "mask shape"):
            bad_pixels(image, variance, np.zeros((3, 3), bool))

    def test_edge_and_no_data_flags(self):
        image = np.ones((6, 60, 70), "f4")
        mask = np.zeros((60, 70), bool)
        mask[:, 45:] = True  # everything the second source's stamp sees inside the image
        blend = _prepare(image=image, mask=mask, peaks=[(22, 30), (3, 57)])
        self.assertEqual(blend.edge.tolist(), [False, True])
        blend2 = _prepare(image=image, mask=np.ones((60, 70), bool) & (np.arange(70) >= 40)[None, :],
                          peaks=[(10, 30), (65, 30)])
        self.assertEqual(blend2.no_data.tolist(), [False, True])
        # The region is clipped to the image; cutouts are zero off the image.
        self.assertEqual(blend.region, (8, 0, 60, 45))
        self.assertEqual(float(blend.cutouts[1, 0, 0, 0]), 0.0)

    def test_subpixel_peaks(self):
        """Float peaks keep their offset from the pixel centre; the encoder's cutout is re-centred."""
        yy, xx = np.mgrid[:60, :70]
        x, y = 30.4, 24.65  # pixel (25, 30), shift (dy, dx) = (-0.35, 0.4)
        blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0**2)).astype("f4")
        blend = _prepare(image=np.repeat(blob[None], 6, axis=0), peaks=[(x, y)])
        np.testing.assert_allclose(blend.shifts, [[y - 25, x - 30]], atol=1e-12)
        self.assertEqual(blend.origins.tolist(), [[25 - 22, 30 - 22]])
        cut = blend.cutouts[0, 2]
        sy, sx = np.mgrid[:45, :45]
        self.assertAlmostEqual(float((cut * sx).sum() / cut.sum()), 22.0, delta=1e-3)
        self.assertAlmostEqual(float((cut * sy).sum() / cut.sum()), 22.0, delta=1e-3)


class SmallPiecesTestCase(lsst.utils.tests.TestCase):
    def test_placement_crops(self):
        m = placement_matrices(np.array([-2, 3]), 5, 4)
        stamp = np.arange(4.0)
        np.testing.assert_array_equal(m[0] @ stamp, [2, 3, 0, 0, 0])
        np.testing.assert_array_equal(m[1] @ stamp, [0, 0, 0, 0, 1])

    def test_stopping(self):
        rule = EwmaStopping(2, window=15, rtol=0.05, min_iter=40)
        for t in range(80):
            stop = rule.update(np.array([1e4 * np.exp(-t / 3.0) + 10, 1e4 - 100 * t]))
        self.assertEqual(stop.tolist(), [True, False])
        early = EwmaStopping(1, window=15, rtol=0.05, min_iter=40)
        self.assertFalse(any(early.update(np.array([1.0]))[0] for _ in range(39)))
        # A start 1e8 above a slow descent: the relative rule stops it as soon as it may (step
        # 40) while it still falls by ~7,000 per window; with an absolute bound of 100 it goes on
        # until the window's fall, 1.42e4 exp(-t / 60), is below 100 (t = 60 ln 142 = 297).
        def path(t):
            return 1e8 * np.exp(-t) + 5e4 * np.exp(-t / 60.0)

        for atol, first_stop in ((None, 39), (100.0, 300)):
            rule = EwmaStopping(1, window=15, rtol=0.05, min_iter=40, atol=atol)
            stops = [bool(rule.update(np.array([path(t)]))[0]) for t in range(400)]
            t_stop = stops.index(True)
            self.assertAlmostEqual(t_stop, first_stop, delta=15, msg=atol)
            falls = path(t_stop - 15) - path(t_stop)
            if atol is not None:
                self.assertLessEqual(falls, 1.2 * atol)
            else:
                self.assertGreater(falls, 1000.0)

    def test_stopping_floor(self):
        # A start near the optimum (first window's fall ~4.3) followed by a slow descent of 0.45
        # per window, e.g. Adam wandering within a faint galaxy's noise: 0.45 never falls below
        # rtol x 4.3, so the relative rule alone runs to any cap; a floor of 0.5 stops it once
        # the start's exponential has died out, 5 exp(-t / 10) (e^1.5 - 1) < 0.05 at t ~ 59 on
        # the path, ~12 steps later on its EWMA (alpha = 2 / 16).
        def path(t):
            return 5.0 * np.exp(-t / 10.0) - 0.03 * t

        for floor, first_stop in ((None, None), (0.5, 71)):
            rule = EwmaStopping(1, window=15, rtol=0.05, min_iter=40, floor=floor)
            stops = [bool(rule.update(np.array([path(t)]))[0]) for t in range(400)]
            if first_stop is None:
                self.assertFalse(any(stops))
                continue
            t_stop = stops.index(True)
            self.assertAlmostEqual(t_stop, first_stop, delta=4)
            self.assertLessEqual(path(t_stop - 15) - path(t_stop), 0.5)
        # The floor does not lift atol's bound: with both, the stricter decides.
        rule = EwmaStopping(1, window=15, rtol=0.05, min_iter=40, atol=0.1, floor=0.5)
        self.assertFalse(any(rule.update(np.array([path(t)]))[0] for t in range(400)))

    def test_settings_validated(self):
        with self.assertRaises(MadnessRangeError):
            MapSettings(learning_rate=-1)
        with self.assertRaises(MadnessRangeError):
            MapSettings(lr_decay=1.5)
        self.assertEqual(MapSettings().replace(max_iter=5).max_iter, 5)

    def test_errors_pickle(self):
        for exc in [MadnessValueError("x"), MadnessRangeError("r", 3, 0, 2), MadnessBundleError("b"),
                    MadnessBlendError("m", 42, "deblend_failed")]:
            clone = pickle.loads(pickle.dumps(exc))
            self.assertIs(type(clone), type(exc))
            self.assertEqual(str(clone), str(exc))
            self.assertIsInstance(clone, MadnessError)
        self.assertEqual(pickle.loads(pickle.dumps(MadnessBlendError("m", 42))).parent_id, 42)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
