"""The decoder's reach: a galaxy the decoder drew itself is in reach; a sharp square is not."""

from __future__ import annotations

import dataclasses
import unittest

import keras
import lsst.utils.tests
import numpy as np
from astropy.table import Table

from lsst.meas.madness import MadnessDeblender
from lsst.meas.madness.evaluation.fields import TestField
from lsst.meas.madness.evaluation.reach import decoder_reach, stamp_reach

SKY = np.array([60.0, 110.0, 280.0, 400.0, 550.0, 600.0])  # electrons^2 per pixel, LSST-like


def _field(galaxies: np.ndarray, centres_xy: np.ndarray, size: int = 121) -> TestField:
    """A TestField whose galaxies are the given 45x45 stamps pasted at integer centres."""
    n = len(galaxies)
    isolated = np.zeros((n, 6, size, size), np.float32)
    for k, (x, y) in enumerate(centres_xy.astype(int)):
        isolated[k, :, y - 22:y + 23, x - 22:x + 23] = galaxies[k]
    catalog = Table({"x_peak": centres_xy[:, 0].astype(float), "y_peak": centres_xy[:, 1].astype(float)})
    return TestField(0, isolated.sum(axis=0), SKY.copy(), isolated, catalog, tuple("ugrizy"))


class ReachTestCase(lsst.utils.tests.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.deblender = MadnessDeblender.from_bundle()

    def test_own_drawings_are_in_reach_and_a_square_is_not(self):
        # Galaxies the decoder drew from latents its own prior finds typical (the brightest 3 of
        # 32 flow samples): the known answer is "drawable exactly", so their reach must be close
        # to perfect. (Fixed N(0, 0.7) latents are not typical for every model: a model whose
        # latents spread further puts some of them where the prior holds MAP back.)
        z = np.asarray(keras.ops.convert_to_numpy(self.deblender.flow.sample(32, seed=3)), np.float32)
        drawn = self.deblender.decode(z)
        drawn = drawn[np.argsort(-drawn[:, 2].sum(axis=(1, 2)))[:3]]
        self.assertTrue(np.all(drawn[:, 2].sum(axis=(1, 2)) > 1e4))  # bright: r flux > 1e4 e-
        square = np.zeros((1, 6, 45, 45), np.float32)
        square[:, :, 17:28, 17:28] = 5e4 / 121  # a flat 11x11 square: no galaxy looks like this
        centres = np.array([[30, 30], [90, 30], [30, 90], [90, 90]])
        result = decoder_reach(self.deblender, [_field(np.concatenate([drawn, square]), centres)])
        self.assertEqual(len(result.cosine), 4)
        r = result.bands.index("r")
        self.assertTrue(np.all(result.cosine[:3, r] > 0.99), result.cosine[:, r])
        self.assertTrue(np.all(result.flux_error[:3, r] < 0.03), result.flux_error[:, r])
        # the square is drawn much worse than any of the decoder's own galaxies
        self.assertLess(result.cosine[3, r], result.cosine[:3, r].min() - 0.02)
        # its shapes too: HSM's e1 of the fitted model is the truth's
        self.assertTrue(np.all(np.abs(result.e1_residual[:3, r]) < 0.02), result.e1_residual[:, r])
        np.testing.assert_array_equal(result.sources, [[0, 0], [0, 1], [0, 2], [0, 3]])
        summary = result.summary()
        self.assertEqual(summary["n_galaxies"], 4)
        self.assertIn("flux_error_median_r", summary)
        self.assertAlmostEqual(summary["e1_residual_std_r"], float(np.std(result.e1_residual[:, r])))

    def test_noisy_fits_take_the_fields_noise(self):
        """``noisy=True`` fits each galaxy on its stamp plus the field's noise (the field minus
        the galaxies): on a noiseless field it is the noiseless fit exactly; with sky noise the
        bright galaxies the decoder drew itself are still fitted to a few per cent, by other
        models than the noiseless fit's."""
        z = np.asarray(keras.ops.convert_to_numpy(self.deblender.flow.sample(32, seed=3)), np.float32)
        drawn = self.deblender.decode(z)
        drawn = drawn[np.argsort(-drawn[:, 2].sum(axis=(1, 2)))[:3]]
        centres = np.array([[30, 30], [90, 30], [30, 90]])
        field = _field(drawn, centres)
        quiet = decoder_reach(self.deblender, [field], steps=60)
        same = decoder_reach(self.deblender, [field], steps=60, noisy=True)
        np.testing.assert_array_equal(same.cosine, quiet.cosine)
        np.testing.assert_array_equal(same.e1_residual, quiet.e1_residual)
        rng = np.random.default_rng(11)
        noise = rng.normal(size=field.image.shape).astype(np.float32) * np.sqrt(SKY)[:, None, None]
        field = dataclasses.replace(field, image=field.image + noise)
        noisy = decoder_reach(self.deblender, [field], steps=None, noisy=True)
        r = noisy.bands.index("r")
        self.assertTrue(np.all(noisy.flux_error[:, r] < 0.05), noisy.flux_error[:, r])
        self.assertTrue(np.all(noisy.cosine[:, r] > 0.98), noisy.cosine[:, r])
        self.assertTrue(np.all(noisy.cosine[:, r] != decoder_reach(self.deblender, [field], steps=None).cosine[:, r]))
        self.assertTrue(np.all(noisy.n_iter < 200))  # the engine's stopping rule, not forced steps

    def test_stamp_reach_matches_the_field_path(self):
        """Centred stamps (a training dataset's truth) give what the same galaxies give in a field."""
        z = np.asarray(keras.ops.convert_to_numpy(self.deblender.flow.sample(8, seed=5)), np.float32)
        drawn = self.deblender.decode(z)
        drawn = drawn[np.argsort(-drawn[:, 2].sum(axis=(1, 2)))[:2]]
        square = np.zeros((1, 6, 45, 45), np.float32)
        square[:, :, 17:28, 17:28] = 5e4 / 121
        stamps = np.concatenate([drawn, square])
        by_field = decoder_reach(self.deblender, [_field(stamps, np.array([[30, 30], [90, 30], [30, 90]]))])
        by_stamp = stamp_reach(self.deblender, stamps, SKY)
        r = by_stamp.bands.index("r")
        np.testing.assert_allclose(by_stamp.cosine, by_field.cosine, atol=2e-3)
        np.testing.assert_allclose(by_stamp.flux_error[:, r], by_field.flux_error[:, r], atol=5e-3)
        self.assertLess(by_stamp.cosine[2, r], by_stamp.cosine[:2, r].min() - 0.02)  # the square
        with self.assertRaisesRegex(ValueError, "Stamps must be"):
            stamp_reach(self.deblender, stamps[:, :5], SKY)
        with self.assertRaisesRegex(ValueError, "variance"):
            stamp_reach(self.deblender, stamps, SKY[:3])

    def test_reach_draws_on_the_stamp_without_zoom(self):
        """A galaxy whose light fills its stamp makes the engine's default (zoom up to 3) draw it
        on a 3x larger footprint; the reach compares models with stamps of the model's size, so it
        fits at zoom 1 (a zoomed model beside an unzoomed one used to crash the stacking)."""
        yy, xx = np.mgrid[:45, :45] - 22
        gauss = np.exp(-(xx**2 + yy**2) / (2 * 12.0**2))
        broad = (gauss / gauss.sum())[None] * np.array([2e4, 5e4, 1e5, 1.2e5, 1.2e5, 1e5])[:, None, None]
        broad = broad[None].astype(np.float32)
        variance = np.broadcast_to(SKY[:, None, None], broad.shape[1:]).astype(np.float32)
        zoomed = self.deblender.deblend_batch(
            [dict(image=broad[0], peaks_xy=np.array([[22.0, 22.0]]), variance=variance)],
            settings=self.deblender.settings.replace(max_iter=2, min_iter=2),
        )[0]
        self.assertGreater(int(zoomed.zoom[0]), 1)  # the premise: the default would zoom it
        z = np.asarray(keras.ops.convert_to_numpy(self.deblender.flow.sample(4, seed=7)), np.float32)
        compact = self.deblender.decode(z)[:1]
        result = stamp_reach(self.deblender, np.concatenate([compact, broad]), SKY, steps=5)
        self.assertEqual(result.cosine.shape, (2, 6))
        self.assertTrue(np.isfinite(result.cosine).all())

    def test_galaxy_larger_than_the_stamp_is_skipped(self):
        big = np.zeros((1, 6, 45, 45), np.float32)
        big[:] = 10.0  # flat to the edge of the stamp ...
        field = _field(big, np.array([[60, 60]]))
        field.isolated[0, :, 10:110, 10:110] = 10.0  # ... and far beyond it
        with self.assertRaisesRegex(ValueError, "No galaxy"):
            decoder_reach(self.deblender, [field])


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
