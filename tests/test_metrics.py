"""Section-4 metrics against cases with known answers: photometry, colours, SSIM, cosine,
HSM ellipticities, blendedness and contamination, and the per-field evaluation."""

import doctest
import unittest

import lsst.utils.tests
import numpy as np
from lsst.meas.madness.engine.geometry import stamp_origins_xy
from lsst.meas.madness.errors import MadnessValueError
from lsst.meas.madness.evaluation import (
    adaptive_moments,
    aperture_axes,
    aperture_photometry,
    blendedness,
    catalog_apertures,
    catalog_colour,
    colour,
    colour_residual,
    contamination,
    cosine_similarity,
    cutout_stamps,
    ellipticity_residual,
    field_photometry,
    flux_outside_stamp,
    model_metrics,
    near_large_galaxy,
    paint_stamps,
    reference_metrics,
    relative_flux_residual,
    snr_blend,
    ssim,
)
from lsst.meas.madness.simulation import LsstConditions
from utils import SKY_VARIANCE, synthetic_galaxies
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

SHAPE = (80, 90)


def gaussian(shape, x0, y0, qxx, qyy, qxy=0.0, flux=1.0):
    """Elliptical Gaussian with covariance [[qxx, qxy], [qxy, qyy]] (x along columns), unit-sum
    in the continuum, sampled at pixel centres."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    dx, dy = xx - x0, yy - y0
    det = qxx * qyy - qxy**2
    r2 = (qyy * dx**2 - 2 * qxy * dx * dy + qxx * dy**2) / det
    return flux * np.exp(-0.5 * r2) / (2 * np.pi * np.sqrt(det))


def rotated_gaussian(shape, x0, y0, sig_major, sig_minor, theta, flux=1.0):
    c, s = np.cos(theta), np.sin(theta)
    qxx = sig_major**2 * c**2 + sig_minor**2 * s**2
    qyy = sig_major**2 * s**2 + sig_minor**2 * c**2
    qxy = (sig_major**2 - sig_minor**2) * c * s
    return gaussian(shape, x0, y0, qxx, qyy, qxy, flux)


class ApertureTestCase(lsst.utils.tests.TestCase):
    def test_aperture_axes(self):
        """Eq. 18: a = sqrt((2 a_hlr)^2 + d^2) per band."""
        a, b = aperture_axes([3.0, 1.0], [2.0, 0.5], [4.0, 0.0])
        np.testing.assert_allclose(a, [[52.0**0.5, 6.0], [20.0**0.5, 2.0]])
        np.testing.assert_allclose(b, [[32.0**0.5, 4.0], [17.0**0.5, 1.0]])

    def test_uniform_image_area_and_error(self):
        """A flat image gives the ellipse's area exactly; the error is sqrt(variance x area)."""
        image = np.ones((2, *SHAPE)) * np.array([1.0, 3.0])[:, None, None]
        a, b, theta = np.array([7.3, 5.0]), np.array([4.1, 5.0]), np.array([0.4, 2.0])
        flux, err, flag = aperture_photometry(image, [40.2, 20.0], [39.7, 30.5], a, b, theta,
                                              variance=np.array([2.0, 5.0]))
        area = np.pi * a * b
        np.testing.assert_allclose(flux, area[:, None] * [1.0, 3.0], rtol=1e-10)
        np.testing.assert_allclose(err, np.sqrt(area[:, None] * [2.0, 5.0]), rtol=1e-10)
        np.testing.assert_array_equal(flag, 0)
        # A full variance plane gives the same errors; an aperture off the edge is flagged.
        var = np.broadcast_to(np.array([2.0, 5.0])[:, None, None], image.shape)
        _, err2, _ = aperture_photometry(image, [40.2, 20.0], [39.7, 30.5], a, b, theta, variance=var)
        np.testing.assert_allclose(err2, err, rtol=1e-10)
        _, _, flag = aperture_photometry(image, [2.0], [2.0], [6.0], [6.0], [0.0])
        self.assertTrue((flag & 0x10).all())
        # 2-d images give (n,) arrays.
        flux1, _, _ = aperture_photometry(image[0], [40.2], [39.7], [7.3], [4.1], [0.4])
        self.assertEqual(flux1.shape, (1,))
        self.assertAlmostEqual(flux1[0], area[0], places=8)

    def test_gaussian_enclosed_flux(self):
        """An elliptical Gaussian in an aligned aperture of k sigma encloses F (1 - exp(-k^2/2)).

        Sampled at pixel centres with exact pixel/ellipse overlaps, the aperture sum falls short
        of the continuous integral by ~0.17/sigma_minor^2 at k = 1 (partial boundary pixels):
        0.3% for sigma = 8 x 4 pixels.
        """
        theta = 0.6
        flux_total = 5e4
        shape = (121, 121)
        image = rotated_gaussian(shape, 60.3, 59.6, 8.0, 4.0, theta, flux_total)[None]
        for k, tol in ((1.0, 4e-3), (2.0, 1.5e-3), (3.0, 3e-4)):
            flux, _, _ = aperture_photometry(image, [60.3], [59.6], [8.0 * k], [4.0 * k], [theta])
            expected = flux_total * (1 - np.exp(-k**2 / 2))
            self.assertAlmostEqual(flux[0, 0] / expected, 1.0, delta=tol, msg=f"k={k}")
        # The orientation matters: the same aperture turned by 90 degrees misses flux.
        turned, _, _ = aperture_photometry(image, [60.3], [59.6], [16.0], [8.0], [theta + np.pi / 2])
        self.assertLess(turned[0, 0], 0.8 * flux_total * (1 - np.exp(-2)))
        # b > a is the same ellipse as (b, a) turned by 90 degrees; any angle wraps.
        swapped, _, _ = aperture_photometry(image, [60.3], [59.6], [8.0], [16.0], [theta - np.pi / 2])
        wrapped, _, _ = aperture_photometry(image, [60.3], [59.6], [16.0], [8.0], [theta + 3 * np.pi])
        full, _, _ = aperture_photometry(image, [60.3], [59.6], [16.0], [8.0], [theta])
        np.testing.assert_allclose(swapped, full, rtol=1e-12)
        np.testing.assert_allclose(wrapped, full, rtol=1e-12)

    def test_scaled_copy(self):
        """A model that is s times the truth has dF/F = s - 1 exactly (photometry is linear)."""
        gal = synthetic_galaxies(3, seed=4)
        x = y = np.full(3, 22.0)
        a, b, theta = np.full(3, 8.0), np.full(3, 5.0), np.array([0.1, 1.0, -0.7])
        f_true, _, _ = aperture_photometry(gal[0], x[:1], y[:1], a[:1], b[:1], theta[:1])
        for scale in (0.5, 1.0, 1.37):
            f, _, _ = aperture_photometry(scale * gal[0], x[:1], y[:1], a[:1], b[:1], theta[:1])
            np.testing.assert_allclose(relative_flux_residual(f, f_true), scale - 1.0, atol=1e-12)
        self.assertTrue(np.isnan(relative_flux_residual([1.0], [0.0])).all())

    def test_catalog_apertures(self):
        """CatSim rows: the larger component's axes in pixels, eq. 18 per band, PA + rotation."""
        conditions = LsstConditions.from_surveycodex()
        catalog = {
            "a_d": np.array([1.0, 0.4, 0.6]), "b_d": np.array([0.5, 0.3, 0.3]),
            "a_b": np.array([0.2, 0.8, 5.0]), "b_b": np.array([0.1, 0.6, 4.0]),
            "fluxnorm_disk": np.array([1.0, 0.5, 1.0]), "fluxnorm_bulge": np.array([1.0, 0.5, 0.0]),
            "pa_disk": np.array([30.0, 100.0, 0.0]), "pa_bulge": np.array([30.0, 100.0, 0.0]),
            "btk_rotation": np.array([0.0, 10.0, 0.0]),
        }
        a, b, theta = catalog_apertures(catalog, conditions, ("r", "u"))
        scale = conditions.pixel_scale
        d = np.array([conditions.psf_fwhm[2], conditions.psf_fwhm[0]]) / scale
        # Row 0: disk; row 1: the bulge is larger; row 2: the bulge has no flux, so the disk.
        a_hlr = np.array([1.0, 0.8, 0.6]) / scale
        b_hlr = np.array([0.5, 0.6, 0.3]) / scale
        np.testing.assert_allclose(a, np.sqrt((2 * a_hlr[:, None]) ** 2 + d**2))
        np.testing.assert_allclose(b, np.sqrt((2 * b_hlr[:, None]) ** 2 + d**2))
        np.testing.assert_allclose(theta, np.deg2rad([30.0, 110.0, 0.0]))
        with self.assertRaises(ValueError):
            catalog_apertures({"a_d": [1.0]}, conditions)

    def test_bad_input(self):
        with self.assertRaises(MadnessValueError):
            aperture_photometry(np.ones((2, 2, 10, 10)), [1.0], [1.0], [1.0], [1.0], [0.0])
        with self.assertRaises(ValueError):
            aperture_photometry(np.ones((10, 10)), [1.0, 2.0], [1.0], [1.0], [1.0], [0.0])
        with self.assertRaises(ValueError):
            aperture_photometry(np.ones((10, 10)), [1.0], [1.0], [-1.0], [1.0], [0.0])
        with self.assertRaises(ValueError):
            aperture_photometry(np.ones((10, 10)), [1.0], [1.0], [1.0], [1.0], [0.0], variance=np.ones(3))


class FieldPhotometryTestCase(lsst.utils.tests.TestCase):
    """The field with all other predicted galaxies subtracted (section 4.2)."""

    @classmethod
    def setUpClass(cls):
        rng = np.random.default_rng(7)
        gal = synthetic_galaxies(3, seed=11)
        cls.x = np.array([30.0, 41.0, 75.0])
        cls.y = np.array([35.0, 40.0, 60.0])
        yx0 = stamp_origins_xy(np.stack([cls.x, cls.y], 1), 45)
        cls.stamps, cls.yx0 = gal, yx0
        cls.truth = paint_stamps(gal, yx0, SHAPE)
        cls.noise = rng.normal(size=(6, *SHAPE)) * np.sqrt(SKY_VARIANCE)[:, None, None]
        cls.field = cls.truth.sum(0) + cls.noise
        cls.a = np.full((3, 6), 7.0)
        cls.b = np.full((3, 6), 5.0)
        cls.theta = np.array([0.3, -1.0, 1.2])

    def test_truth_models_give_the_isolated_galaxy_in_the_same_noise(self):
        """With the true galaxies as models, each is measured on truth_i + noise: dF/F = 0."""
        flux, err, _ = field_photometry(self.field, self.x, self.y, self.a, self.b, self.theta,
                                        models=self.truth, variance=SKY_VARIANCE)
        for i in range(3):
            direct, direct_err, _ = aperture_photometry(self.truth[i] + self.noise, self.x[i:i + 1],
                                                        self.y[i:i + 1], self.a[i:i + 1], self.b[i:i + 1],
                                                        self.theta[i:i + 1], variance=SKY_VARIANCE)
            # Equal up to sep's single-precision pixel reads (sums differ in their order).
            np.testing.assert_allclose(flux[i], direct[0], rtol=1e-7)
            np.testing.assert_allclose(err[i], direct_err[0], rtol=1e-12)
        # Stamps with their origins are the same models: same fluxes.
        flux_stamps, _, _ = field_photometry(self.field, self.x, self.y, self.a, self.b, self.theta,
                                             models=self.stamps, models_yx0=self.yx0, variance=SKY_VARIANCE)
        np.testing.assert_allclose(flux_stamps, flux, rtol=1e-7)
        np.testing.assert_allclose(relative_flux_residual(flux_stamps, flux), 0.0, atol=1e-7)

    def test_no_deblending_and_known_neighbour(self):
        """Without models the flux takes the neighbour's light: kappa = neighbour's aperture flux / F."""
        x, y, a, b, th = self.x[:1], self.y[:1], self.a[:1], self.b[:1], self.theta[:1]
        isolated = self.truth[0] + self.noise
        f_iso, _, _ = aperture_photometry(isolated, x, y, a, b, th)
        # An additive neighbour that is flat (c per pixel) over the aperture adds c * pi a b.
        c = np.linspace(5.0, 30.0, 6)
        neighbour = np.zeros((1, 6, *SHAPE))
        neighbour[0, :, 20:50, 15:45] = c[:, None, None]
        field = isolated + neighbour[0]
        f_bl, _, _ = field_photometry(field, x, y, a, b, th, models=None)
        np.testing.assert_allclose(f_bl[0] - f_iso[0], c * np.pi * 7.0 * 5.0, rtol=1e-6)
        kappa = contamination(f_bl, f_iso)
        np.testing.assert_allclose(kappa[0], c * np.pi * 35.0 / f_iso[0], rtol=1e-6)
        # Subtracting the neighbour as a "predicted galaxy" restores the isolated flux.
        models = np.concatenate([self.truth[:1], neighbour])
        f_deb, _, _ = field_photometry(field, np.r_[x, 30.0], np.r_[y, 35.0], np.r_[a, a], np.r_[b, b],
                                       np.r_[th, th], models=models)
        np.testing.assert_allclose(f_deb[0], f_iso[0], rtol=1e-7)
        np.testing.assert_allclose(contamination(f_iso, f_iso), 0.0)

    def test_edge_stamps(self):
        """Stamp pixels off the field do not count, as when the model is painted on the field."""
        x, y = np.array([3.0, 86.0]), np.array([40.0, 77.0])
        yx0 = stamp_origins_xy(np.stack([x, y], 1), 45)
        stamps = synthetic_galaxies(2, seed=3)
        full = paint_stamps(stamps, yx0, SHAPE)
        a, b, th = np.full(2, 9.0), np.full(2, 6.0), np.zeros(2)
        f1, _, flag = field_photometry(self.field, x, y, a, b, th, models=stamps, models_yx0=yx0)
        f2, _, _ = field_photometry(self.field, x, y, a, b, th, models=full)
        np.testing.assert_allclose(f1, f2, rtol=1e-7)
        self.assertTrue((flag & 0x10).all())

    def test_snr_blend(self):
        """Eq. 27: flux / fluxerr, NaN without an error."""
        np.testing.assert_allclose(snr_blend([100.0, 50.0, 1.0], [10.0, 25.0, 0.0]), [10.0, 2.0, np.nan])


class ColourTestCase(lsst.utils.tests.TestCase):
    def test_colour_from_catalogue_fluxes(self):
        """Fluxes converted from catalogue magnitudes give back the catalogue colour (dC^T = 0)."""
        conditions = LsstConditions.from_surveycodex()
        catalog = {"g_ab": np.array([23.1, 25.0]), "r_ab": np.array([22.4, 25.3])}
        fg = conditions.counts(catalog["g_ab"], "g")
        fr = conditions.counts(catalog["r_ab"], "r")
        c_true = catalog_colour(catalog)
        np.testing.assert_allclose(c_true, [0.7, -0.3])
        c = colour(fg, fr, conditions)
        np.testing.assert_allclose(colour_residual(c, c_true), 0.0, atol=1e-12)
        # 10% more g flux makes the galaxy bluer by 2.5 log10(1.1); the same scale in both bands
        # leaves the colour unchanged (dC^B = 0 against the unscaled measurement).
        np.testing.assert_allclose(colour(1.1 * fg, fr, conditions) - c, -2.5 * np.log10(1.1))
        np.testing.assert_allclose(colour_residual(colour(3 * fg, 3 * fr, conditions), c), 0.0, atol=1e-12)
        self.assertTrue(np.isnan(colour([-1.0], [1.0], conditions)).all())


class MorphologyTestCase(lsst.utils.tests.TestCase):
    @classmethod
    def setUpClass(cls):
        # Seed 22: galaxies large enough for HSM in every band (some synthetic galaxies of
        # 1.5-pixel half-light radius collapse HSM's moment matrix: "Object is too small").
        cls.gal = synthetic_galaxies(4, seed=22).astype(np.float64)

    def test_ssim_self_scaled_shifted(self):
        g = self.gal
        np.testing.assert_allclose(ssim(g, g), 1.0, atol=1e-12)
        # Each image is normalised by its maximum: a scaled copy is structurally identical.
        np.testing.assert_allclose(ssim(2.5 * g, g), 1.0, atol=1e-12)
        s1 = ssim(np.roll(g, 1, axis=-1), g)
        s3 = ssim(np.roll(g, 3, axis=-1), g)
        self.assertEqual(s1.shape, (4, 6))
        self.assertTrue((s1 < 1).all() and (s3 < s1).all())
        self.assertTrue(np.isnan(ssim(g[0, 0], np.zeros_like(g[0, 0]))))
        self.assertEqual(float(ssim(np.zeros_like(g[0, 0]), g[0, 0])), 0.0)
        with self.assertRaises(ValueError):
            ssim(np.ones((9, 9)), np.ones((9, 9)))

    def test_ssim_matches_scikit_image(self):
        """Same number as skimage's SSIM with the authors' settings, on normalised images."""
        from skimage.metrics import structural_similarity  # pinned with BTK
        rng = np.random.default_rng(3)
        pred = self.gal * rng.uniform(0.8, 1.2, self.gal.shape) + rng.normal(0, 5, self.gal.shape)
        ours = ssim(pred, self.gal)
        for i in range(4):
            for k in (0, 2, 5):
                p, t = pred[i, k], self.gal[i, k]
                ref = structural_similarity(p / p.max(), t / t.max(), data_range=1.0, gaussian_weights=True,
                                            use_sample_covariance=False)
                self.assertAlmostEqual(ours[i, k], ref, places=10)

    def test_cosine(self):
        """Eq. 22: 1 for the galaxy and any scaled copy; exp(-d^2 / 4 sigma^2) for a shifted Gaussian."""
        g = self.gal
        np.testing.assert_allclose(cosine_similarity(g, g), 1.0, atol=1e-12)
        np.testing.assert_allclose(cosine_similarity(0.3 * g, g), 1.0, atol=1e-12)
        sigma = 3.0
        for d in (1.0, 2.5, 4.0):
            a = gaussian((61, 61), 30.0, 30.0, sigma**2, sigma**2)
            b = gaussian((61, 61), 30.0 + d, 30.0, sigma**2, sigma**2)
            self.assertAlmostEqual(float(cosine_similarity(b, a)), np.exp(-(d**2) / (4 * sigma**2)), places=8)
        apart = np.zeros((2, 20, 20))
        apart[0, 2, 2] = apart[1, 15, 15] = 1.0
        self.assertEqual(float(cosine_similarity(apart[0], apart[1])), 0.0)
        self.assertTrue(np.isnan(cosine_similarity(apart[0], np.zeros((20, 20)))))
        self.assertEqual(float(cosine_similarity(np.zeros((20, 20)), apart[0])), 0.0)

    def test_hsm_analytic_ellipse(self):
        """Adaptive moments of an elliptical Gaussian give eq. 23's distortion of its covariance."""
        for qxx, qyy, qxy in [(9.0, 4.0, 0.0), (5.0, 5.0, 2.0), (4.0, 8.0, -1.5), (6.0, 6.0, 0.0)]:
            img = gaussian((61, 61), 30.2, 29.6, qxx, qyy, qxy, 1e4)
            m = adaptive_moments(img)
            self.assertFalse(m.failed)
            self.assertAlmostEqual(float(m.e1), (qxx - qyy) / (qxx + qyy), delta=1e-5)
            self.assertAlmostEqual(float(m.e2), 2 * qxy / (qxx + qyy), delta=1e-5)
            self.assertAlmostEqual(float(m.sigma), (qxx * qyy - qxy**2) ** 0.25, delta=1e-4)
            self.assertAlmostEqual(float(m.x), 30.2, delta=1e-4)
            self.assertAlmostEqual(float(m.y), 29.6, delta=1e-4)

    def test_hsm_galsim_shear_convention(self):
        """GalSim's shear(e1=, e2=) profile is measured back as (e1, e2): distortion, not g."""
        import galsim

        for e1, e2 in [(0.3, -0.2), (-0.5, 0.1)]:
            prof = galsim.Gaussian(sigma=3.0).shear(e1=e1, e2=e2)
            img = prof.drawImage(nx=63, ny=63, scale=1.0, method="no_pixel").array
            m = adaptive_moments(img[None], np.array([[31.0, 31.0]]))
            np.testing.assert_allclose([m.e1[0], m.e2[0]], [e1, e2], atol=1e-5)

    def test_ellipticity_residuals(self):
        """Residual 0 against itself, a scaled copy and a shifted copy; failures are NaN + flag."""
        g = self.gal
        truth = adaptive_moments(g)
        self.assertEqual(truth.e1.shape, (4, 6))
        self.assertFalse(truth.failed.any())
        for model in (g, 4.0 * g):
            m = adaptive_moments(model)
            np.testing.assert_allclose(ellipticity_residual(m.e1, truth.e1), 0.0, atol=1e-6)
            np.testing.assert_allclose(ellipticity_residual(m.e2, truth.e2), 0.0, atol=1e-6)
        shifted = np.roll(g, (2, -1), axis=(-2, -1))
        m = adaptive_moments(shifted, np.array([21.0, 24.0]))
        np.testing.assert_allclose(m.e1, truth.e1, atol=1e-6)
        np.testing.assert_allclose(m.x - truth.x, -1.0, atol=1e-5)
        bad = adaptive_moments(np.stack([np.zeros((45, 45)), g[0, 2], np.full((45, 45), np.nan)]))
        self.assertEqual(bad.failed.tolist(), [True, False, True])
        self.assertTrue(np.isnan(bad.e1[[0, 2]]).all() and np.isnan(bad.e2[[0, 2]]).all())
        self.assertTrue(np.isnan(ellipticity_residual(bad.e1[0], truth.e1[0, 0])))


class BlendingTestCase(lsst.utils.tests.TestCase):
    def test_blendedness(self):
        """Eq. 16: 0 alone, ~0 far from neighbours, k / (1 + k) under a k-times brighter twin."""
        gal = synthetic_galaxies(2, seed=5)
        alone = paint_stamps(gal[:1], [[10, 10]], SHAPE)
        np.testing.assert_allclose(blendedness(alone), 0.0, atol=1e-12)
        apart = paint_stamps(gal, [[0, 0], [35, 45]], SHAPE)
        self.assertTrue((blendedness(apart) < 1e-3).all())
        for k in (1.0, 9.0, 99.0):
            twin = np.stack([alone[0], k * alone[0]])
            np.testing.assert_allclose(blendedness(twin)[0], k / (1 + k), rtol=1e-10)
            np.testing.assert_allclose(blendedness(twin)[1], 1 / (1 + k), rtol=1e-10)
        # An explicit blend image, and a galaxy with no flux in a band.
        blend = alone[0] * 4.0
        np.testing.assert_allclose(blendedness(alone, blend), 0.75, rtol=1e-10)
        empty = alone.copy()
        empty[0, 3] = 0.0
        self.assertTrue(np.isnan(blendedness(empty)[0, 3]))
        with self.assertRaises(ValueError):
            blendedness(alone, blend[:2])

    def test_flux_outside_stamp_matches_gaussian_integral(self):
        """A round Gaussian drawn by GalSim at a sub-pixel centre: the share of its flux outside
        the 45-px stamp around it is 1 - erf(h / (sigma sqrt 2))^2 in each axis's half-width h."""
        import galsim
        from scipy.special import erf

        size, stamp = 201, 45
        for sigma, (x, y) in ((4.0, (100.3, 99.8)), (12.0, (100.0, 100.0)), (20.0, (101.2, 98.6))):
            image = galsim.Gaussian(sigma=sigma).drawImage(
                nx=size, ny=size, scale=1.0, method="sb",
                offset=(x - (size - 1) / 2, y - (size - 1) / 2)).array.astype(np.float64)
            (y0, x0), = stamp_origins_xy(np.array([[x, y]]), stamp)
            # The box's edges relative to the centre (pixel k covers [k - 0.5, k + 0.5]).
            w = sigma * np.sqrt(2)
            fx = 0.5 * (erf((x0 + stamp - 0.5 - x) / w) - erf((x0 - 0.5 - x) / w))
            fy = 0.5 * (erf((y0 + stamp - 0.5 - y) / w) - erf((y0 - 0.5 - y) / w))
            expected = 1.0 - fx * fy
            got = flux_outside_stamp(image[None, None], np.array([[x, y]]), stamp)
            self.assertEqual(got.shape, (1, 1))
            # method="sb" samples the profile at pixel centres: a few 1e-4 from the integral.
            self.assertAlmostEqual(got[0, 0], expected, delta=2e-3 + 0.01 * expected)
        self.assertLess(flux_outside_stamp(image[None], np.array([[x, y]]), stamp)[0], 1.0)
        with self.assertRaises(ValueError):
            flux_outside_stamp(image[None, None], np.zeros((2, 2)), stamp)

    def test_near_large_galaxy(self):
        xy = np.array([[0.0, 0.0], [49.0, 0.0], [51.0, 0.0], [300.0, 0.0]])
        np.testing.assert_array_equal(near_large_galaxy(xy, [0.06, 0.0, np.nan, 0.0], radius=50.0),
                                      [True, True, False, False])
        np.testing.assert_array_equal(near_large_galaxy(xy, [0.04, 0.0, 0.0, 0.0], radius=50.0), [False] * 4)


class FieldMetricsTestCase(lsst.utils.tests.TestCase):
    """`reference_metrics` + `model_metrics` on a synthetic field with known truth."""

    @classmethod
    def setUpClass(cls):
        rng = np.random.default_rng(1)
        cls.conditions = LsstConditions.from_surveycodex()
        gal = synthetic_galaxies(3, seed=8).astype(np.float64) * 50
        cls.stamps = gal
        cls.xy = np.array([[30.0, 35.0], [36.4, 41.2], [60.0, 50.0]])
        cls.yx0 = stamp_origins_xy(cls.xy, 45)
        cls.truth = paint_stamps(gal, cls.yx0, SHAPE)
        sky = cls.conditions.sky_levels
        cls.field = cls.truth.sum(0) + rng.normal(size=(6, *SHAPE)) * np.sqrt(sky)[:, None, None]
        cls.catalog = {
            "x_peak": cls.xy[:, 0], "y_peak": cls.xy[:, 1],
            "a_d": np.array([0.6, 0.5, 0.7]), "b_d": np.array([0.4, 0.5, 0.3]),
            "pa_disk": np.array([10.0, 50.0, 120.0]),
            "g_ab": np.array([23.0, 24.0, 22.5]), "r_ab": np.array([22.5, 23.6, 22.4]),
        }
        cls.reference = reference_metrics(cls.field, cls.truth, cls.catalog, variance=sky,
                                          conditions=cls.conditions)

    def test_reference(self):
        ref = self.reference.metrics
        for key in ("flux_isolated", "flux_blended", "kappa", "beta", "snr_blend", "flux_residual_blended"):
            self.assertEqual(ref[key].shape, (3, 6), key)
            self.assertTrue(np.isfinite(ref[key]).all(), key)
        np.testing.assert_allclose(ref["flux_residual_blended"], ref["kappa"])
        # Galaxies 0 and 1 overlap; galaxy 2 is far from both.
        self.assertTrue((ref["beta"][:2] > 10 * ref["beta"][2]).all() and (ref["beta"][2] < 1e-3).all())
        self.assertTrue((ref["kappa"][:2] > 10 * np.abs(ref["kappa"][2])).all())
        np.testing.assert_allclose(ref["colour_true"], [0.5, 0.4, 0.1])
        self.assertFalse(ref["hsm_failed_true"].any())
        self.assertEqual(self.reference.truth_stamps.shape, (3, 6, 45, 45))

    def test_perfect_models(self):
        """The truth as models: dF/F = 0, SSIM = cosine = 1, e residuals 0, dC^B = 0."""
        for models, yx0 in ((self.truth, None), (self.stamps, self.yx0)):
            m = model_metrics(self.reference, models, models_yx0=yx0, conditions=self.conditions)
            np.testing.assert_allclose(m["flux_residual"], 0.0, atol=1e-9)
            np.testing.assert_allclose(m["ssim"], 1.0, atol=1e-9)
            np.testing.assert_allclose(m["cosine"], 1.0, atol=1e-9)
            np.testing.assert_allclose(m["e1_residual"], 0.0, atol=1e-6)
            np.testing.assert_allclose(m["e2_residual"], 0.0, atol=1e-6)
            np.testing.assert_allclose(m["colour_residual_blend"], 0.0, atol=1e-9)
            np.testing.assert_allclose(m["colour_residual_true"],
                                       self.reference.metrics["colour_isolated"] - [0.5, 0.4, 0.1])

    def test_imperfect_models(self):
        """Scaled models and a missing one: dF/F follows, the empty model scores 0 and fails HSM.

        With models s_j T_j, galaxy i is measured on its isolated image plus the neighbours'
        left-overs: dF/F_i = sum_(j != i) (1 - s_j) A_i(T_j) / F_i, with A_i the aperture sum.
        """
        scale = np.array([1.1, 0.9, 0.0])
        models = self.stamps * scale[:, None, None, None]
        m = model_metrics(self.reference, models, models_yx0=self.yx0, conditions=self.conditions)
        ref = self.reference
        for i in range(3):
            leftover = sum((1 - scale[j]) * aperture_photometry(self.truth[j], ref.x[i:i + 1], ref.y[i:i + 1],
                                                                 ref.a[i:i + 1], ref.b[i:i + 1],
                                                                 ref.theta[i:i + 1])[0][0]
                           for j in range(3) if j != i)
            np.testing.assert_allclose(m["flux_residual"][i], leftover / ref.metrics["flux_isolated"][i],
                                       rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(m["cosine"][:2], 1.0, atol=1e-9)
        np.testing.assert_array_equal(m["cosine"][2], 0.0)
        np.testing.assert_array_equal(m["ssim"][2], 0.0)
        self.assertTrue(m["hsm_failed"][2].all() and np.isnan(m["e1_residual"][2]).all())
        with self.assertRaises(ValueError):
            model_metrics(self.reference, models[:2], models_yx0=self.yx0[:2], conditions=self.conditions)

    def test_cutouts(self):
        """Cutouts around the true centres lie on the engine's stamp grid."""
        cut, yx0 = cutout_stamps(self.truth, self.xy, 45)
        np.testing.assert_array_equal(yx0, self.yx0)
        np.testing.assert_allclose(cut, self.stamps)


class DocTestCase(unittest.TestCase):
    def test_examples(self):
        """The docstring examples of the evaluation modules run."""
        from lsst.meas.madness.evaluation import blending, morphology, photometry, stamps

        for module in (blending, morphology, photometry, stamps):
            result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
            self.assertEqual(result.failed, 0, module.__name__)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
