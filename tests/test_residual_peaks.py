"""Residual peaks: the matched-filter significance against its closed form, and the peak finder."""

import unittest

import lsst.utils.tests
import numpy as np
from lsst.meas.madness.tasks.residual_peaks import (
    bic_penalty,
    find_residual_peaks,
    mirrored_significance,
    model_contrast,
    residual_significance,
    ring_significance,
    unmodelled_light,
)
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend


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

    def test_penalty_factor(self):
        """The task's penalty per added source: residualPeakPenaltyFactor (0.5 by default) times
        the BIC's, or residualPeakPenalty as given; a factor <= 0 is refused."""
        from lsst.meas.madness.tasks import MadnessDeblendConfig
        from lsst.meas.madness.tasks.refits import _penalty

        config = MadnessDeblendConfig()
        self.assertEqual(config.residualPeakPenaltyFactor, 0.5)
        self.assertIsNone(config.residualPeakPenalty)
        self.assertAlmostEqual(_penalty(None, 16, 10_000, config.residualPeakPenaltyFactor), 4 * np.log(10_000))
        self.assertAlmostEqual(_penalty(None, 16, 10_000), 8 * np.log(10_000))
        self.assertEqual(_penalty(40.0, 16, 10_000, 0.5), 40.0)
        with self.assertRaisesRegex(Exception, "residualPeakPenaltyFactor"):
            config.residualPeakPenaltyFactor = 0.0


class SymmetricLightTestCase(lsst.utils.tests.TestCase):
    """A bright galaxy whose model holds only its core leaves its profile around the core as
    residual: GalSim draws an elongated de Vaucouleurs galaxy, the "model" is its inner 8 px, and
    a faint round companion sits on its minor axis. Without the symmetry test the two ends of the
    residual's major axis are the strongest bumps; with it only the companion is a new peak."""

    def setUp(self):
        import galsim

        self.size, self.centre = 121, np.array([60.0, 60.0])
        image = galsim.ImageD(self.size, self.size, scale=0.2)
        galaxy = galsim.DeVaucouleurs(half_light_radius=1.5, flux=2e6).shear(e1=0.5, e2=0.0)
        galaxy.drawImage(image, offset=(0.3, -0.2))  # off the pixel grid: no exact pixel symmetry
        truth = image.array.copy()
        yy, xx = np.mgrid[: self.size, : self.size]
        core = np.hypot(xx - 60.3, yy - 59.8) < 8.0
        companion = galsim.ImageD(self.size, self.size, scale=0.2)
        galsim.Gaussian(sigma=0.35, flux=3e4).drawImage(companion, offset=(0.0, 18.0))  # 18 px up
        residual = np.where(core, 0.0, truth) + companion.array
        shape = (1, self.size, self.size)
        self.sig = residual_significance(residual[None], np.full(shape, 100.0), np.zeros(shape, bool), 1.7)
        self.companion_xy = np.array([60, 78])

    def _find(self, symmetry):
        return find_residual_peaks(self.sig, np.ones_like(self.sig, bool), self.centre[None],
                                   threshold=5.0, min_separation=3.0, max_peaks=2,
                                   centers_xy=self.centre[None], reach=np.array([45.0]), symmetry=symmetry)

    def test_symmetry(self):
        plain = self._find(0.0)
        # The strongest bumps are the residual's major-axis ends, mirror images of each other.
        self.assertEqual(len(plain), 2)
        self.assertTrue(all(abs(y - 60) <= 2 and abs(x - 60) > 8 for x, y in plain), plain)
        np.testing.assert_allclose(plain.sum(axis=0), 2 * self.centre, atol=2)
        found = self._find(0.5)
        np.testing.assert_array_equal(found, self.companion_xy[None])

    def test_mirrored_significance(self):
        """The 3x3 maximum around the mirror image; -inf off the grid or beyond the reach."""
        xy = np.array([70.0, 60.0])
        centres = np.array([self.centre, [100.0, 60.0], [5.0, 60.0]])
        got = mirrored_significance(self.sig, xy, centres, np.array([45.0, 45.0, 20.0]))
        self.assertAlmostEqual(got[0], self.sig[59:62, 49:52].max())
        self.assertEqual(got[1], -np.inf)  # its mirror image (130, 60) is off the grid
        self.assertEqual(got[2], -np.inf)  # 65 px away, beyond its 20 px reach
        with self.assertRaises(ValueError):
            find_residual_peaks(self.sig, np.ones_like(self.sig, bool), self.centre[None], threshold=5.0,
                                min_separation=3.0, max_peaks=2, symmetry=0.5)
        with self.assertRaises(ValueError):
            find_residual_peaks(self.sig, np.ones_like(self.sig, bool), self.centre[None], threshold=5.0,
                                min_separation=3.0, max_peaks=2, centers_xy=self.centre[None],
                                reach=np.array([45.0]), symmetry=-1.0)


class RingLightTestCase(lsst.utils.tests.TestCase):
    """A bright galaxy whose model is cut inside its stamp leaves its light beyond the cut as a ring
    of residual, brightest where the cut is nearest its centre: GalSim draws a PSF-convolved
    exponential galaxy, the "model" is its light inside a circle 2 px off its centre, and a faint
    companion sits 23 px out, on the ring's faint side. The ring's brightest arc is the strongest
    bump and its mirror image is faint (the symmetry test keeps it); the ring's median drops it
    and keeps the companion."""

    def setUp(self):
        import galsim

        size = 121
        psf = galsim.Moffat(beta=3.0, fwhm=0.7)
        image = galsim.ImageD(size, size, scale=0.2)
        galaxy = galsim.Exponential(half_light_radius=0.6, flux=3e6).shear(e1=0.1, e2=0.05)
        galsim.Convolve(galaxy, psf).drawImage(image, offset=(0.3, -0.2))
        yy, xx = np.mgrid[:size, :size]
        cut = np.hypot(xx - 62.3, yy - 61.0) < 16.0
        companion = galsim.ImageD(size, size, scale=0.2)
        galsim.Convolve(galsim.Gaussian(sigma=0.2, flux=2.5e3), psf).drawImage(companion, offset=(-20.0, 12.0))
        residual = np.where(cut, 0.0, image.array) + companion.array
        shape = (1, size, size)
        self.sig = residual_significance(residual[None], np.full(shape, 100.0), np.zeros(shape, bool), 1.7)
        self.centre = np.array([[60.3, 59.8]])
        self.reach = np.array([45.0])
        self.companion_xy = np.array([40, 72])  # (60.3 - 20, 59.8 + 12), rounded

    def _find(self, ring):
        return find_residual_peaks(self.sig, np.ones_like(self.sig, bool), self.centre, threshold=5.0,
                                   min_separation=3.0, max_peaks=2, centers_xy=self.centre, reach=self.reach,
                                   symmetry=0.8, ring=ring)

    def test_ring(self):
        plain = self._find(None)
        self.assertEqual(len(plain), 2)
        arc, companion = plain
        np.testing.assert_array_equal(companion, self.companion_xy)
        # The arc is the stronger bump, on the cut's near side (2 px left of and 1.2 px below the
        # centre, the cut's radius 16 px), and its mirror image is faint.
        self.assertGreater(self.sig[arc[1], arc[0]], self.sig[companion[1], companion[0]])
        self.assertLess(np.hypot(*(arc - self.centre[0])), 17.0)
        self.assertLess(mirrored_significance(self.sig, arc, self.centre, self.reach)[0],
                        0.2 * self.sig[arc[1], arc[0]])
        # The ring through the arc is bright all around; the companion's ring is fainter.
        self.assertGreater(ring_significance(self.sig, arc, self.centre, self.reach)[0], 5.0)
        self.assertLess(ring_significance(self.sig, companion, self.centre, self.reach)[0], 3.0)
        np.testing.assert_array_equal(self._find(3.0), self.companion_xy[None])

    def test_bright_companion_near_a_centre(self):
        """A very bright companion 8 px from a well-fitted galaxy lights the ring through it with its
        own wings (median ~8 sigma, above the level) but that is a small fraction of its own
        significance (~3,000): it is kept; with no fraction asked it would be dropped."""
        import galsim

        size = self.sig.shape[0]
        psf = galsim.Moffat(beta=3.0, fwhm=0.7)
        companion = galsim.ImageD(size, size, scale=0.2)
        galsim.Convolve(galsim.Gaussian(sigma=0.3, flux=3e5), psf).drawImage(companion, offset=(-6.0, 5.0))
        shape = (1, size, size)
        sig = residual_significance(companion.array[None], np.full(shape, 100.0), np.zeros(shape, bool), 1.7)
        xy = np.array([54, 65])  # (60.3 - 6, 59.8 + 5), rounded
        ring = ring_significance(sig, xy, self.centre, self.reach)[0]
        self.assertGreater(ring, 3.0)
        self.assertLess(ring, 0.01 * sig[xy[1], xy[0]])

        def find(fraction):
            return find_residual_peaks(sig, np.ones_like(sig, bool), self.centre, threshold=5.0, min_separation=3.0,
                                       max_peaks=1, centers_xy=self.centre, reach=self.reach, symmetry=0.8,
                                       ring=3.0, ring_fraction=fraction)

        np.testing.assert_array_equal(find(0.1), xy[None])
        self.assertEqual(len(find(0.0)), 0)
        for bad in (-0.1, 1.0):
            with self.subTest(ring_fraction=bad), self.assertRaises(ValueError):
                find(bad)

    def test_ring_significance(self):
        """The median over the pixels within 1 px of the bump's distance; -inf beyond the reach, at
        the centre itself, or where fewer than 8 ring pixels are on the grid."""
        xy = np.array([70.0, 60.0])
        yy, xx = np.mgrid[: self.sig.shape[0], : self.sig.shape[1]]
        d = np.hypot(xx - 60.3, yy - 59.8)
        oracle = np.median(self.sig[np.abs(d - np.hypot(9.7, 0.2)) <= 1.0])
        got = ring_significance(self.sig, xy, np.array([self.centre[0], [60.0, 60.0]]), np.array([45.0, 5.0]))
        self.assertAlmostEqual(got[0], oracle)
        self.assertEqual(got[1], -np.inf)  # 10 px away, beyond its 5 px reach
        self.assertEqual(ring_significance(self.sig, self.centre[0], self.centre, self.reach)[0], -np.inf)
        # A bump in the grid's corner seen from far out along its diagonal: the ring only grazes the grid.
        corner = ring_significance(self.sig, np.array([0.0, 0.0]), np.array([[-100.0, -100.0]]), np.array([400.0]))
        self.assertEqual(corner[0], -np.inf)
        for bad in (np.inf, np.nan):
            with self.subTest(ring=bad), self.assertRaises(ValueError):
                self._find(bad)
        with self.assertRaises(ValueError):
            find_residual_peaks(self.sig, np.ones_like(self.sig, bool), self.centre, threshold=5.0,
                                min_separation=3.0, max_peaks=2, ring=3.0)


class UnmodelledLightTestCase(lsst.utils.tests.TestCase):
    def test_circles(self):
        """Within the circle through the window's sides around a zoomed source; between that circle
        and one of the window's side around a truncated one; nothing around a source drawn as
        decoded. Pixel centres on the outer circles count, on a truncated source's inner one not."""
        shape, stamp = (300, 500), 45
        centers = np.array([[50.0, 50.0], [200.0, 100.0], [150.0, 150.0], [420.0, 220.0]])
        mask = unmodelled_light(shape, centers, zoom=[2, 1, 1, 3], truncated=[False, True, False, True],
                                stamp_size=stamp)
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        r = [np.hypot(xx - x, yy - y) for x, y in centers]
        expected = (
            (r[0] <= 45.0)  # zoom 2: the 90-px window's inscribed circle
            | ((r[1] > 22.5) & (r[1] <= 45.0))  # zoom 1, truncated: the ring around the 45-px stamp
            | (r[3] <= 135.0)  # zoom 3, truncated: its window's circle and the ring beyond
        )
        np.testing.assert_array_equal(mask, expected)
        self.assertTrue(mask[50, 95] and not mask[50, 96])  # x = 50 + 45 is on the zoomed circle
        self.assertFalse(mask[100, 200] or mask[100, 222])  # inside the truncated source's circle
        self.assertTrue(mask[100, 223] and mask[100, 245] and not mask[100, 246])
        self.assertTrue(mask[116, 216])  # a stamp corner (16, 16) from the centre: r 22.6
        self.assertTrue(mask[220, 420] and mask[220, 488] and not mask[60, 420])  # zoom 3, truncated
        self.assertFalse(mask[150, 150])  # the plain source's centre, outside every circle
        plain = unmodelled_light(shape, centers, zoom=[1, 1, 1, 1], truncated=[False] * 4, stamp_size=stamp)
        self.assertFalse(plain.any())
        # An enveloped source: the whole circle of its window's side, its stamp's inside included.
        enveloped = unmodelled_light(shape, centers, zoom=[1, 1, 1, 1], truncated=[False] * 4, stamp_size=stamp,
                                     enveloped=[False, False, True, False])
        np.testing.assert_array_equal(enveloped, r[2] <= 45.0)
        self.assertTrue(enveloped[150, 170] and enveloped[150, 195] and not enveloped[150, 196])
        with self.assertRaises(ValueError):
            unmodelled_light(shape, centers, zoom=[1, 1], truncated=[False] * 4, stamp_size=stamp)
        with self.assertRaises(ValueError):
            unmodelled_light(shape, centers, zoom=[1] * 4, truncated=[False] * 4, stamp_size=stamp, enveloped=[True])


class ModelContrastTestCase(lsst.utils.tests.TestCase):
    """The filtered model over the filtered residual, against the closed form for Gaussians: a
    Gaussian of flux F and sigma s filtered by a unit Gaussian of sigma f is a Gaussian of flux F
    and variance s^2 + f^2."""

    def setUp(self):
        import galsim

        self.size, self.sigma = 81, 1.7
        self.centre = self.size // 2

        def gaussian(flux, sigma, dx=0.0, dy=0.0):
            # Sampled at the pixel centres (no pixel convolution), as the closed form is.
            return galsim.Gaussian(flux=flux, sigma=sigma).shift(dx, dy).drawImage(
                nx=self.size, ny=self.size, scale=1.0, method="no_pixel").array.astype(np.float64)

        self.gaussian = gaussian

    def filtered(self, flux, s, r2):
        v = s**2 + self.sigma**2
        return flux / (2 * np.pi * v) * np.exp(-r2 / (2 * v))

    def test_closed_form(self):
        """A companion 6 px from a bright model's centre, split over two bands: at the companion the
        contrast is the ratio of the two filtered Gaussians, whatever the bands."""
        model = self.gaussian(5000.0, 3.0)
        residual = self.gaussian(300.0, 1.5, dx=6.0)
        bands = np.stack([0.4 * model, 0.6 * model]), np.stack([0.7 * residual, 0.3 * residual])
        contrast = model_contrast(bands[1], bands[0], np.zeros((2, self.size, self.size), bool), self.sigma)
        expected = self.filtered(5000.0, 3.0, 36.0) / self.filtered(300.0, 1.5, 0.0)
        self.assertFloatsAlmostEqual(contrast[self.centre, self.centre + 6], expected, rtol=2e-3)
        # Beside the model's centre the same companion is faint against it.
        self.assertGreater(contrast[self.centre, self.centre + 2], 5 * expected)

    def test_dipole(self):
        """A model drawn a pixel off its galaxy leaves a dipole whose positive lobe is faint against
        the model (contrast > 2), where a companion of a tenth of its flux 8 px out is bright (< 1)."""
        galaxy = self.gaussian(5000.0, 2.5, dx=1.0) + self.gaussian(500.0, 1.5, dx=-8.0)
        model = self.gaussian(5000.0, 2.5)
        residual = galaxy - model
        bad = np.zeros((1, self.size, self.size), bool)
        contrast = model_contrast(residual[None], model[None], bad, self.sigma)
        row = residual[self.centre]
        lobe = self.centre + 2 + int(np.argmax(row[self.centre + 2:self.centre + 6]))
        self.assertGreater(contrast[self.centre, lobe], 2.0)
        self.assertLess(contrast[self.centre, self.centre - 8], 1.0)
        # Where the residual is negative (the dipole's other lobe) nothing is taken.
        self.assertEqual(contrast[self.centre, self.centre - 2], np.inf)

    def test_bad_pixels_and_errors(self):
        """Bad and non-finite pixels carry no weight; a sigma <= 0 raises."""
        model = self.gaussian(5000.0, 3.0)[None].repeat(2, axis=0)
        residual = self.gaussian(300.0, 1.5, dx=6.0)[None].repeat(2, axis=0)
        bad = np.zeros(model.shape, bool)
        bad[1] = True
        poisoned = residual.copy()
        poisoned[1] = np.nan
        np.testing.assert_allclose(model_contrast(poisoned, model, bad, self.sigma),
                                   model_contrast(residual[:1], model[:1], bad[:1], self.sigma))
        with self.assertRaises(ValueError):
            model_contrast(residual, model, bad, 0.0)


class FittedPeaksTestCase(lsst.utils.tests.TestCase):
    def test_offsets_carried(self):
        """A refit starts each of the parent's peaks where the fit put it: its planned position plus
        its fitted offset (a pair split's members); a peak the plan dropped stays where it was."""
        from types import SimpleNamespace

        from lsst.meas.madness.tasks.blends import BlendPlan, ParentFootprint
        from lsst.meas.madness.tasks.refits import fitted_peaks

        parent = ParentFootprint(3, None, np.array([5, 7, 9]),
                                 np.array([[10.0, 20.0], [30.0, 40.0], [50.5, 60.25]]))
        # The plan deblends peaks 9 and 5, in that order, beside one neighbour; peak 7 was dropped.
        plan = BlendPlan(parent, np.array([9, 5]), np.array([[50.5, 60.25], [10.0, 20.0]]),
                         np.array([[80.0, 80.0]]), 1, (0, 0, 100, 100))
        result = SimpleNamespace(offsets_xy=np.array([[0.5, -1.25], [-2.0, 0.75], [1.0, 1.0]]))
        np.testing.assert_allclose(fitted_peaks(plan, result), [[8.0, 20.75], [30.0, 40.0], [51.0, 59.0]])
        # A fit without offsets gives the parent's peaks back.
        still = SimpleNamespace(offsets_xy=np.zeros((3, 2)))
        np.testing.assert_array_equal(fitted_peaks(plan, still), parent.peaks_xy)


class NearestOwnTestCase(lsst.utils.tests.TestCase):
    def test_nearest(self):
        """For each added source, the parent's own zoom-1 source nearest it (never another added
        source, another parent's peak or a zoomed source), by hand."""
        from lsst.meas.madness.tasks.blends import BlendPlan, ParentFootprint
        from lsst.meas.madness.tasks.refits import _nearest_own

        peaks = np.array([[10.0, 10.0], [20.0, 10.0], [40.0, 10.0], [13.0, 11.0], [31.0, 10.0]])
        parent = ParentFootprint(1, None, np.arange(5), peaks)
        # Sources 3 and 4 were added; a neighbour of another parent sits at (12, 10), next to 3.
        plan = BlendPlan(parent, np.arange(5), peaks, np.array([[12.0, 10.0]]), 0, (0, 0, 60, 60),
                         zoom=np.array([1, 1, 1, 1, 1, 1]))
        added = np.array([False, False, False, True, True, False])
        # 3 -> 0 (3.2 px; the neighbour at 1.4 px is not the parent's), 4 -> 2 (9 px; 1 at 11 px).
        self.assertEqual(_nearest_own(plan, added).tolist(), [True, False, True, False, False, False])
        # Drawn at zoom 2, source 2 stays where it is: 4 -> 1.
        zoomed = BlendPlan(parent, np.arange(5), peaks, np.array([[12.0, 10.0]]), 0, (0, 0, 60, 60),
                           zoom=np.array([1, 1, 2, 1, 1, 1]))
        self.assertEqual(_nearest_own(zoomed, added).tolist(), [True, True, False, False, False, False])
        self.assertFalse(_nearest_own(plan, np.zeros(6, bool)).any())


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
