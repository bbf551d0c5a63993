"""The light of bright galaxies beyond their stamps (`lsst.meas.madness.engine.envelope`).

The geometry is checked against answers known analytically (moments of a Gaussian, an elliptical
power-law halo), the compiled objective's profiled envelopes against the numpy solve, and the
deblender against GalSim: faint galaxies 50-80 px from an r ~ 17 de Vaucouleurs galaxy, whose
light there is 0.5-3 times the pixel noise, are measured far better once the bright galaxy's
envelope is fitted.
"""

import math
import unittest

import galsim
import keras
import lsst.utils.tests
import numpy as np
from lsst.meas.madness import MadnessDeblender
from lsst.meas.madness.engine.envelope import EnvelopeBasis, envelope_profiles, model_ellipse
from lsst.meas.madness.engine.objective import subtract_envelopes
from lsst.meas.madness.engine.settings import MapSettings
from lsst.meas.madness.errors import MadnessRangeError
from utils import draw_galsim_scene


def _halo(shape, center, q, angle, amplitude, power=3.0, core=22.0):
    """An elliptical power law ``amplitude * (r / core)^-power`` in geometric-mean radius."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    dy, dx = y - center[0], x - center[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    r = np.sqrt(u * u * q + v * v / q)
    return amplitude * (np.maximum(r, 1.0) / core) ** -power


class GeometryTestCase(lsst.utils.tests.TestCase):
    def test_model_ellipse_of_a_rotated_gaussian(self):
        y, x = np.mgrid[-30:31, -30:31].astype(float)
        angle = math.radians(30.0)
        u = x * math.cos(angle) + y * math.sin(angle)
        v = -x * math.sin(angle) + y * math.cos(angle)
        stamp = np.exp(-0.5 * (u**2 / 6.0**2 + v**2 / 3.0**2))[None].repeat(2, axis=0)
        q, found = model_ellipse(stamp)
        self.assertAlmostEqual(q, 0.5, places=3)
        self.assertAlmostEqual(found, angle, places=3)

    def test_profiles_partition_and_box(self):
        shape, center, box = (150, 170), (40.0, 60.0), (18, 38, 63, 83)
        profiles = envelope_profiles(shape, center, box, 0.6, 0.4, inner=22.5)
        total = profiles.sum(axis=0)
        np.testing.assert_array_equal(total[18:63, 38:83], 0.0)
        outside = np.ones(shape, bool)
        outside[18:63, 38:83] = False
        np.testing.assert_allclose(total[outside], 1.0, atol=1e-12)


class EnvelopeBasisTestCase(lsst.utils.tests.TestCase):
    def test_halo_recovered_from_noise(self):
        """An r^-3 halo of 5 pixel sigma at the stamp edge is recovered outside the box to a few
        per cent of its value where it is above the noise, from a noisy image."""
        shape, center, box = (160, 180), (40.0, 50.0), (18, 28, 63, 73)
        q, angle = 0.7, 0.3
        halo = _halo(shape, center, q, angle, amplitude=5.0)
        halo[18:63, 28:73] = 0.0
        rng = np.random.default_rng(7)
        weights = np.ones((1, *shape))
        image = (halo + rng.normal(size=shape))[None]
        profiles = envelope_profiles(shape, center, box, q, angle, inner=22.5)
        basis = EnvelopeBasis.build(weights, profiles, np.zeros(len(profiles)))
        images, owners = basis.images(basis.values(image, weights))
        self.assertEqual(owners.tolist(), [0])
        fitted = images[0, 0]
        bright = halo > 1.0
        self.assertLess(np.median(np.abs(fitted[bright] / halo[bright] - 1)), 0.05)
        # The envelope holds the halo's flux, not the noise's: within 2% over the region.
        self.assertAlmostEqual(fitted.sum() / halo.sum(), 1.0, delta=0.02)

    def test_harmonics_follow_a_flatter_halo(self):
        """A bulge-dominated model's moments are rounder than its disc's outskirts: an r^-3 halo of
        axis ratio 0.35 fitted with profiles in a q = 0.7 ellipse. The radial profile alone misses
        the halo along its major axis by half; with cos/sin 2 phi and 4 phi hats (five values per
        radius) the envelope follows it to a few per cent."""
        shape, center, box = (160, 180), (70.0, 80.0), (48, 58, 93, 103)
        halo = _halo(shape, center, 0.35, 0.5, amplitude=8.0)
        halo[48:93, 58:103] = 0.0
        rng = np.random.default_rng(11)
        weights = np.ones((1, *shape))
        image = (halo + rng.normal(size=shape))[None]
        bright = halo > 1.0
        errors, counts = {}, {}
        for harmonics in (0, 2, 4):
            profiles = envelope_profiles(shape, center, box, 0.7, 0.5, inner=22.5, harmonics=harmonics)
            counts[harmonics] = len(profiles)
            basis = EnvelopeBasis.build(weights, profiles, np.zeros(len(profiles)))
            fitted = basis.images(basis.values(image, weights))[0][0, 0]
            np.testing.assert_array_equal(fitted[48:93, 58:103], 0.0)
            errors[harmonics] = float(np.median(np.abs(fitted[bright] / halo[bright] - 1)))
        self.assertEqual((counts[2], counts[4]), (3 * counts[0], 5 * counts[0]))
        self.assertGreater(errors[0], 0.4)
        self.assertLess(errors[2], errors[0] / 2)
        self.assertLess(errors[4], 0.1)
        with self.assertRaises(ValueError):
            envelope_profiles(shape, center, box, 0.7, 0.5, inner=22.5, harmonics=3)
        with self.assertRaises(MadnessRangeError):
            MapSettings(envelope_harmonics=1)

    def test_compiled_profile_matches_numpy(self):
        """`subtract_envelopes` (keras ops, the MAP step's layout) gives the numpy solve's residual
        and prior term, for two blends of different sizes and profile counts padded to one layout."""
        rng = np.random.default_rng(5)
        c = 2
        blends = []
        for shape, center in [((70, 90), (20.0, 30.0)), ((80, 60), (50.0, 20.0))]:
            profiles = envelope_profiles(shape, center, (int(center[0]) - 10, int(center[1]) - 10,
                                                         int(center[0]) + 11, int(center[1]) + 11),
                                         0.8, 0.1, inner=10.5)
            weights = rng.uniform(1.0, 4.0, size=(c, *shape))
            residual = rng.normal(size=(c, *shape)) + _halo(shape, center, 0.8, 0.1, 3.0, core=10.0)
            basis = EnvelopeBasis.build(weights, profiles, np.zeros(len(profiles)))
            blends.append((basis, weights, residual))
        k = max(len(b.profiles) for b, _, _ in blends)
        h, w = 80, 90
        padded = [b.padded(k, (h, w)) for b, _, _ in blends]
        data = np.zeros((2, h, c, w), np.float32)
        wts = np.zeros((2, h, c, w), np.float32)
        for n, (_, weights, residual) in enumerate(blends):
            hh, ww = residual.shape[1:]
            data[n, :hh, :, :ww] = residual.transpose(1, 0, 2)
            wts[n, :hh, :, :ww] = weights.transpose(1, 0, 2)
        arrays = [np.stack([getattr(p, name) for p in padded]).astype(np.float32)
                  for name in ("profiles", "solve", "prior_precision")]
        out, penalty = subtract_envelopes(keras.ops.convert_to_tensor(data), keras.ops.convert_to_tensor(wts),
                                          tuple(keras.ops.convert_to_tensor(a) for a in arrays))
        out, penalty = keras.ops.convert_to_numpy(out), keras.ops.convert_to_numpy(penalty)
        for n, (basis, weights, residual) in enumerate(blends):
            hh, ww = residual.shape[1:]
            values = basis.values(residual, weights)
            expected = residual - basis.images(values)[0].sum(axis=0)
            np.testing.assert_allclose(out[n, :hh, :, :ww].transpose(1, 0, 2), expected, atol=2e-3)
            self.assertAlmostEqual(float(penalty[n]) / basis.prior_penalty(values), 1.0, places=3)

    def test_settings(self):
        self.assertTrue(MapSettings().fit_envelopes)  # the engine's default since 2026-12-03
        with self.assertRaises(MadnessRangeError):
            MapSettings(envelope_edge_sigma=0.0)


SCALE = 0.2
SHAPE = (181, 181)
# (x, y): an r = 17 de Vaucouleurs galaxy near a corner, and faint galaxies 50-80 px from it.
PEAKS = np.array([[35.2, 40.7], [95.0, 62.0], [70.0, 110.0], [118.0, 100.0]])
MAGS = [17.0, 24.5, 24.0, 24.8]


def _scene(seed=11):
    galaxies = [galsim.DeVaucouleurs(half_light_radius=2.0).shear(e1=0.15, e2=0.05),
                galsim.Exponential(half_light_radius=0.4).shear(e1=0.1, e2=-0.2),
                galsim.Exponential(half_light_radius=0.5).shear(e1=-0.2, e2=0.1),
                galsim.Exponential(half_light_radius=0.3)]
    return draw_galsim_scene(list(zip(galaxies, MAGS)), PEAKS, SHAPE, seed, scale=SCALE)


def _aperture_errors(image, result, truth, band, radius=5.0):
    """Relative flux error of each faint galaxy in a circular aperture on the image minus the
    other sources' images (their envelopes included), against its true flux there."""
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]]
    errors = []
    for k in range(1, len(PEAKS)):
        others = sum(result.source_image(j)[band] for j in range(len(PEAKS)) if j != k)
        aperture = (x - PEAKS[k, 0]) ** 2 + (y - PEAKS[k, 1]) ** 2 <= radius**2
        errors.append(float((image[band] - others)[aperture].sum() / truth[k, band][aperture].sum() - 1))
    return np.array(errors)


class DeblendWithEnvelopesTestCase(lsst.utils.tests.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.deblender = MadnessDeblender.from_bundle(None)
        cls.image, cls.variance, cls.truth = _scene()
        precision = "mixed_bfloat16" if keras.config.backend() == "tensorflow" else "float32"
        cls.settings = cls.deblender.settings.replace(precision=precision, max_zoom=1, fit_envelopes=False)

    def test_fixture(self):
        """The bright galaxy's light at each faint galaxy is at least 0.4 of the pixel noise, a few
        times the faint galaxy's own surface brightness outside its core."""
        r = self.deblender.bands.index("r")
        for k in range(1, len(PEAKS)):
            x, y = PEAKS[k].round().astype(int)
            self.assertGreater(self.truth[0, r, y, x], 0.4 * math.sqrt(self.variance[r, 0, 0]))

    def test_envelope_fitted_and_neighbours_measured(self):
        r = self.deblender.bands.index("r")
        plain = self.deblender.deblend(self.image, PEAKS, variance=self.variance, settings=self.settings)
        fitted = self.deblender.deblend(self.image, PEAKS, variance=self.variance,
                                        settings=self.settings.replace(fit_envelopes=True))
        self.assertIsNone(plain.envelopes)
        self.assertEqual(fitted.enveloped.tolist(), [True, False, False, False])
        self.assertEqual(fitted.envelopes.shape, (1, len(self.deblender.bands), *SHAPE))
        self.assertTrue(np.isfinite(fitted.envelopes).all())
        before = np.abs(_aperture_errors(self.image, plain, self.truth, r))
        after = np.abs(_aperture_errors(self.image, fitted, self.truth, r))
        # Without the envelope the faint galaxies keep the bright one's light as their own.
        self.assertGreater(before.mean(), 0.3, before)
        self.assertLess(after.mean(), 0.5 * before.mean(), (before, after))
        # The bright galaxy's own flux: its stamp and envelope hold more of it than its stamp alone.
        total = self.truth[0, r].sum()
        self.assertLess(abs(fitted.source_image(0)[r].sum() / total - 1),
                        abs(plain.source_image(0)[r].sum() / total - 1))
        # source_image and model_image carry the envelope.
        painted = sum(fitted.source_image(i) for i in range(len(PEAKS)))
        np.testing.assert_allclose(fitted.model_image(), painted, atol=1e-2)


    def test_refit_keeps_envelopes(self):
        """`MapSettings.refit_beside_brighter`: the bright galaxy, enveloped, is never refitted, and
        its envelope stays as the blend's fit left it (the refits were fitted with it fixed)."""
        settings = self.settings.replace(fit_envelopes=True, refit_beside_brighter=None)
        joint = self.deblender.deblend(self.image, PEAKS, variance=self.variance, settings=settings)
        refit = self.deblender.deblend(self.image, PEAKS, variance=self.variance,
                                       settings=settings.replace(refit_beside_brighter=0.0))
        self.assertFalse(refit.refit_alone[0])
        self.assertTrue(refit.refit_alone[1:].any())
        np.testing.assert_array_equal(refit.envelope_sources, joint.envelope_sources)
        np.testing.assert_allclose(refit.envelopes, joint.envelopes, atol=1e-3)

    def test_enveloped_source_has_no_wing(self):
        """With a PSF given, the sources without an envelope get PSF wings (`engine.wings`), the
        enveloped one none: its envelope is its fitted light beyond the stamp."""
        from lsst.meas.madness.simulation import LsstConditions

        fwhm = LsstConditions.from_surveycodex(bands=self.deblender.bands).psf_fwhm
        psf = np.stack([galsim.Moffat(beta=3.5, fwhm=f).drawImage(nx=201, ny=201, scale=SCALE).array
                        for f in fwhm])
        fitted = self.deblender.deblend(self.image, PEAKS, variance=self.variance, psf=psf,
                                        settings=self.settings.replace(fit_envelopes=True))
        self.assertEqual(fitted.enveloped.tolist(), [True, False, False, False])
        self.assertEqual(fitted.winged.tolist(), [False, True, True, True])
        _, sources = fitted.far_light()
        self.assertEqual(sources.tolist(), [0, 1, 2, 3])


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
