"""Pair splits (MadnessDeblendTask.doPairSplits): one detected peak on an unresolved pair.

The oracle is GalSim: two exponential galaxies 1" apart (0.7 PSF FWHM beyond the PSF's own width,
one maximum in the smoothed image) drawn with the LSST PSF and sky noise, given to the task as one
peak at their light centroid; and, in the same patch, one bright elongated galaxy alone, which must
stay one source. The packaged model deblends (the quick test bundle draws only small synthetic
galaxies).
"""

import unittest

import galsim
import keras
import lsst.pex.config as pexConfig
import lsst.utils.tests
import numpy as np
import pytest
from lsst.meas.madness import MadnessDeblender
from lsst.meas.madness.simulation import LsstConditions
from lsst.meas.madness.tasks import MadnessDeblendConfig, MadnessDeblendTask
from lsst.meas.madness.tasks.pair_split import (
    chi2_excess,
    light_moments,
    member_overlap,
    model_error_objective,
    neighbour_light_ratio,
    pair_positions,
)
from task_utils import masked_images, truth_detections

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

SCALE = 0.2
SHAPE = (81, 161)
YX0 = (500, 700)
ANGLE = np.deg2rad(30.0)


def _pair_light(separation, angle, shape=(61, 61), sigma=1.5):
    """Two equal round Gaussians ``separation`` px apart along ``angle`` about the image centre."""
    image = np.zeros(shape)
    centre = np.array([(shape[1] - 1) / 2, (shape[0] - 1) / 2])
    step = 0.5 * separation * np.array([np.cos(angle), np.sin(angle)])
    for xy in (centre - step, centre + step):
        offset = (xy[0] - centre[0], xy[1] - centre[1])
        image += galsim.Gaussian(sigma=sigma, flux=1e4).drawImage(
            nx=shape[1], ny=shape[0], scale=1.0, offset=offset, method="no_pixel").array
    return image, centre, step


class PairGeometryTestCase(lsst.utils.tests.TestCase):
    """light_moments / pair_positions against GalSim-drawn pairs of known geometry."""

    def test_pair_of_gaussians(self):
        for separation in (3.0, 5.0, 8.0):
            for angle in (0.0, ANGLE, -1.2):
                image, centre, step = _pair_light(separation, angle)
                moments = light_moments(image, tuple(centre))
                # Equal Gaussians: the inversion of HSM's self-consistent moments is exact, up to
                # pixelisation and HSM's convergence.
                self.assertAlmostEqual(moments.pair_separation, separation, delta=0.03 * separation)
                positions = pair_positions(moments)
                truth = np.stack([centre - step, centre + step])
                if np.hypot(*(positions[0] - truth[0])) > np.hypot(*(positions[0] - truth[1])):
                    truth = truth[::-1]
                np.testing.assert_allclose(positions, truth, atol=0.03 * separation + 0.02)

    def test_round_source_has_no_pair(self):
        image = galsim.Exponential(half_light_radius=2.0, flux=1e4).drawImage(nx=41, ny=41, scale=1.0).array
        self.assertLess(light_moments(image, (20.0, 20.0)).pair_separation, 0.5)

    def test_no_light(self):
        self.assertIsNone(light_moments(np.zeros((21, 21)), (10.0, 10.0)))
        with self.assertRaises(ValueError):
            light_moments(np.zeros((2, 21, 21)), (10.0, 10.0))


    def test_kurtosis(self):
        # A Gaussian under its own adaptive Gaussian weight is a Gaussian: no excess kurtosis.
        gaussian = galsim.Gaussian(sigma=2.5, flux=1e4).shear(e1=0.3, e2=0.1).drawImage(
            nx=61, ny=61, scale=1.0, method="no_pixel").array
        self.assertAlmostEqual(light_moments(gaussian, (30.0, 30.0)).kurtosis, 0.0, delta=0.01)
        # An exponential is peakier than a Gaussian, however flat; two members apart flatter.
        disc = galsim.Exponential(half_light_radius=3.0, flux=1e4).shear(e=0.5, beta=0.3 * galsim.radians)
        disc_image = disc.drawImage(nx=61, ny=61, scale=1.0).array
        self.assertGreater(light_moments(disc_image, (30.0, 30.0)).kurtosis, 0.2)
        pair, centre, _ = _pair_light(6.0, ANGLE)
        self.assertLess(light_moments(pair, tuple(centre)).kurtosis, -0.2)


class MemberTestCase(lsst.utils.tests.TestCase):
    """member_overlap and neighbour_light_ratio against GalSim-drawn Gaussians of known geometry."""

    @staticmethod
    def _gaussian(xy, sigma=2.0, flux=1e4, shape=(61, 81)):
        offset = (xy[0] - (shape[1] - 1) / 2, xy[1] - (shape[0] - 1) / 2)
        return galsim.Gaussian(sigma=sigma, flux=flux).drawImage(
            nx=shape[1], ny=shape[0], scale=1.0, offset=offset, method="no_pixel").array

    def test_overlap_of_gaussians(self):
        # Two round Gaussians of width s, d apart: cosine exp(-d^2 / 4 s^2).
        for separation, sigma in ((3.0, 1.5), (4.5, 2.0), (8.0, 3.0)):
            first = self._gaussian((40.0, 30.0), sigma)
            second = self._gaussian((40.0 + separation * 0.6, 30.0 + separation * 0.8), sigma, flux=3e3)
            self.assertAlmostEqual(member_overlap(first, second), np.exp(-(separation**2) / (4 * sigma**2)),
                                   delta=2e-3)
        first = self._gaussian((40.0, 30.0))
        self.assertAlmostEqual(member_overlap(first, 5 * first), 1.0, places=6)
        self.assertEqual(member_overlap(first, np.zeros_like(first)), 0.0)
        # Over the stacked bands: the same light in other bands does not overlap.
        zero = np.zeros_like(first)
        self.assertEqual(member_overlap(np.stack([first, zero]), np.stack([zero, first])), 0.0)
        self.assertAlmostEqual(member_overlap(np.stack([first, first]), np.stack([first, 2 * first])),
                               3 / np.sqrt(10), places=6)

    def test_neighbour_light_ratio(self):
        own = self._gaussian((30.0, 30.0), flux=1e3)
        others = self._gaussian((45.0, 30.0), sigma=4.0, flux=2e4)
        positions = np.array([[30.0, 30.0], [45.0, 30.0], [30.4, 29.6], [-3.0, 30.0], [30.0, 70.0]])
        ratio = neighbour_light_ratio(own, others, positions)
        # At the nearest pixel: both Gaussians evaluated by hand (no_pixel drawing samples them there).
        def gauss(dx, dy, sigma, flux):
            return flux / (2 * np.pi * sigma**2) * np.exp(-(dx**2 + dy**2) / (2 * sigma**2))
        expect = [gauss(15, 0, 4.0, 2e4) / gauss(0, 0, 2.0, 1e3),
                  gauss(0, 0, 4.0, 2e4) / gauss(15, 0, 2.0, 1e3)]
        np.testing.assert_allclose(ratio[:3], [expect[0], expect[1], expect[0]], rtol=1e-4)
        np.testing.assert_array_equal(ratio[3:], [np.inf, np.inf])
        # It rises monotonically from the source towards the neighbour.
        xs = np.arange(30, 46)
        along = neighbour_light_ratio(own, others, np.stack([xs, np.full_like(xs, 30)], axis=1))
        self.assertTrue((np.diff(along) > 0).all())
        self.assertEqual(float(neighbour_light_ratio(np.zeros((3, 3)), np.zeros((3, 3)), [[1, 1]])[0]), 0.0)


class Chi2TestCase(lsst.utils.tests.TestCase):
    """chi2_excess and model_error_objective against numbers computed by hand."""

    def test_known_answers(self):
        residual = np.zeros((2, 9, 9))
        residual[:, 4, 4] = 3.0  # 3 sigma in each band at the centre, noise variance 1
        variance = np.ones_like(residual)
        bad = np.zeros(residual.shape, bool)
        bad[1, 4, 5] = True
        model = np.zeros_like(residual)
        # Circle of radius 1: 5 pixels per band, one bad: 9 usable; chi^2 = 2 * 9.
        self.assertAlmostEqual(chi2_excess(residual, variance, bad, model, 0.0, (4, 4), 1.0), 18.0 - 9.0)
        # A model of 40 with a 5% error doubles the noise variance: (0.05 * 40)^2 = 4, + 1 = 5.
        model[:, 4, 4] = 40.0
        excess = chi2_excess(residual, variance, bad, model, 0.05, (4, 4), 1.0)
        self.assertAlmostEqual(excess, 2 * 9.0 / 5 - 9.0)
        image = residual + model
        half_chi2 = model_error_objective(image, variance, bad, model, model, 0.05)
        self.assertAlmostEqual(half_chi2, 0.5 * 2 * 9.0 / 5)
        self.assertAlmostEqual(model_error_objective(image, variance, bad, model, model, 0.0), 0.5 * 2 * 9.0)
        with self.assertRaises(ValueError):
            model_error_objective(image, variance, bad, model, model, -0.1)

    def test_noise_has_no_excess(self):
        rng = np.random.default_rng(3)
        variance = np.full((6, 45, 45), 4.0)
        residual = rng.normal(size=variance.shape) * 2.0
        excess = chi2_excess(residual, variance, np.zeros(variance.shape, bool), np.zeros_like(residual), 0.05,
                             (22, 22), 10.0)
        # ~1900 usable pixels: the excess is within a few sqrt(2 n) of zero.
        self.assertLess(abs(excess), 4 * np.sqrt(2 * 6 * 317))


def _scene():
    """A pair (r 22.5 and 23.1, 1" apart at 30 degrees) and a bright elongated galaxy (r 21.5,
    shear 0.5 along the same axis), LSST sky noise; truth ``(3, bands, H, W)``."""
    conditions = LsstConditions.from_surveycodex()
    bands = conditions.bands
    axis = np.array([np.cos(ANGLE), np.sin(ANGLE)])
    centre, separation = np.array([40.0, 40.0]), 5.0
    f1, f2 = 1.0, 10 ** (-0.4 * 0.6)
    positions = [centre - separation * f2 / (f1 + f2) * axis, centre + separation * f1 / (f1 + f2) * axis,
                 np.array([120.0, 40.0])]
    flat = galsim.Exponential(half_light_radius=0.7).shear(g1=0.5 * np.cos(2 * ANGLE), g2=0.5 * np.sin(2 * ANGLE))
    galaxies = [
        (galsim.Exponential(half_light_radius=0.35).shear(e1=0.1, e2=0.0), 22.5),
        (galsim.Exponential(half_light_radius=0.3).shear(e1=-0.05, e2=0.1), 23.1),
        (flat, 21.5),
    ]
    truth = np.zeros((3, len(bands), *SHAPE))
    for b, band in enumerate(bands):
        psf = galsim.Moffat(beta=3.5, fwhm=conditions.psf_fwhm[b])
        for k, ((gal, mag), xy) in enumerate(zip(galaxies, positions)):
            obj = galsim.Convolve(gal.withFlux(conditions.counts(mag, band)), psf)
            offset = (xy[0] - (SHAPE[1] - 1) / 2, xy[1] - (SHAPE[0] - 1) / 2)
            truth[k, b] = obj.drawImage(nx=SHAPE[1], ny=SHAPE[0], scale=SCALE, offset=offset).array
    sky = conditions.sky_levels[:, None, None]
    variance = np.broadcast_to(sky, (len(bands), *SHAPE)).astype(np.float32).copy()
    image = truth.sum(axis=0) + np.random.default_rng(3).normal(size=variance.shape) * np.sqrt(variance)
    return image.astype(np.float32), variance, truth, np.array(positions)


class PairSplitTaskTestCase(lsst.utils.tests.TestCase):
    """The task with doPairSplits on, at the default model error (0.1) and at 0.05.

    Measured (bfloat16 steps) with the packaged cpu9-a: at 0.05 the pair lowers the objective by
    ~750 against a penalty of 94 and is split, and the elongated galaxy is not tried (its chi^2
    excess is negative); at 0.1 neither is tried: the pair's excess with 10% of the model in the
    noise (~-3) cannot pay the penalty, so the default no longer splits this pair (on patches 0.1
    still splits a few, doc/detection.md, "Stop 54"). With cpu6-a, packaged before it, the pair
    was split at both (~1300 and ~780) and the elongated galaxy cut in two at 0.05 (~450), the
    failure doc/detection.md reports.
    """

    @classmethod
    def setUpClass(cls):
        image, variance, truth, cls.positions = _scene()
        cls.truth = truth
        deblender = MadnessDeblender.from_bundle(None)
        coadds = masked_images(image, variance, bands=deblender.bands, yx0=YX0)
        sigma = float(np.sqrt(variance.sum(axis=0)).mean())
        pair = truth[0] + truth[1]
        yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
        light = pair.sum(axis=0)
        centroid = np.array([(light * xx).sum(), (light * yy).sum()]) / light.sum()
        # One parent per group, one peak each: the pair's at its light centroid.
        detections, spans = truth_detections(np.stack([pair, truth[2]]), groups=[[0], [1]],
                                             peaks=np.round(np.stack([centroid, cls.positions[2]])), yx0=YX0,
                                             threshold=sigma)
        cls.detections = detections
        precision = "mixed_bfloat16" if keras.config.backend() == "tensorflow" else "float32"
        cls.catalogs, cls.metadata = {}, {}
        # "strict": 0.05 with a gate on the chi^2 excess the pair cannot pass (its excess is ~770, the
        # added latents' penalty ~75: 20 x 75 = 1500).
        for key, error, try_excess in ((0.05, 0.05, 0.5), (0.1, 0.1, 0.5), ("strict", 0.05, 20.0)):
            config = MadnessDeblendConfig()
            config.precision = precision
            config.doPairSplits = True
            config.pairSplitModelError = error
            config.pairSplitTryExcess = try_excess
            task = MadnessDeblendTask(config=config)
            cls.catalogs[key] = task.run(coadds=coadds, detections=detections, detectionSpans=spans,
                                         deblender=deblender).deblendedCatalog
            cls.metadata[key] = task.metadata

    def _pairParent(self, catalog):
        return catalog["parent"] == self.detections["id"][0]

    def test_defaults(self):
        config = MadnessDeblendConfig()
        self.assertTrue(config.doPairSplits)
        self.assertEqual(config.pairSplitMaxOverlap, 0.75)
        self.assertEqual(config.pairSplitMaxNeighbourLight, 3.0)
        self.assertEqual(config.pairSplitModelError, 0.1)
        self.assertEqual(config.pairSplitTryExcess, 0.5)
        self.assertEqual(config.pairSplitMaxSeparation, 6.0)

    def test_pair_is_split(self):
        for error in (0.05,):
            catalog = self.catalogs[error]
            split = catalog[self._pairParent(catalog)]
            self.assertEqual(len(split), 2, error)
            self.assertTrue(split["deblend_pairSplit"].all(), error)
            # Each member within 0.5" (the detection benchmark's match radius) of its own galaxy.
            tract = self.positions[:2] + np.array([YX0[1], YX0[0]])
            xy = np.stack([split["deblend_center_x"], split["deblend_center_y"]], axis=1)
            distance = np.hypot(*(xy[:, None] - tract[None]).transpose(2, 0, 1))
            worst = min(max(distance[0, 0], distance[1, 1]), max(distance[0, 1], distance[1, 0]))
            self.assertLess(worst, 2.5, (error, distance))
            # The detected peak's id stays with one member; the other is new, with peak id 0.
            self.assertEqual(sorted(split["deblend_peakId"] == 0), [False, True], error)
            self.assertEqual(len(set(catalog["id"])), len(catalog), error)
            parent = catalog[catalog["id"] == self.detections["id"][0]]
            self.assertEqual(int(parent["deblend_nPairSplits"][0]), 1, error)
            # Together the pair's children hold the pair's flux.
            np.testing.assert_allclose(float(split["deblend_flux_r"].sum()), self.truth[:2, 2].sum(), rtol=0.1,
                                       err_msg=str(error))

    def test_excess_gate(self):
        """The chi^2 excess decides what is tried; the objective what is kept."""
        def tried(key):
            catalog = self.catalogs[key]
            parent = catalog[catalog["id"] == self.detections["id"][0]]
            return int(parent["deblend_nPairSplits"][0]) + int(parent["deblend_nPairSplitsRejected"][0])

        self.assertEqual(tried(0.05), 1)
        self.assertEqual(tried("strict"), 0)
        self.assertEqual(tried(0.1), 0)  # with 10% of the model in the noise the pair's excess is < 0

    def test_single_is_not_split(self):
        for error, catalog in self.catalogs.items():
            single = catalog[(catalog["parent"] != 0) & ~self._pairParent(catalog)]
            self.assertEqual(len(single), 1, error)
            self.assertFalse(single["deblend_pairSplit"][0], error)
        self.assertEqual(self.metadata[0.05]["n_pair_splits"], 1)
        # The larger model error hides more than the decoder's misfit: nothing is split at 0.1.
        self.assertEqual(self.metadata[0.1]["n_pair_splits"], 0)
        self.assertEqual(len(self.catalogs[0.1][self._pairParent(self.catalogs[0.1])]), 1)

    def test_config_validation(self):
        config = MadnessDeblendConfig()
        config.pairSplitMinSeparation = 12.0
        with self.assertRaises(pexConfig.FieldValidationError):
            config.validate()
        config = MadnessDeblendConfig()
        with self.assertRaises(pexConfig.FieldValidationError):  # pex_config checks on assignment
            config.pairSplitTryExcess = -1.0


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
