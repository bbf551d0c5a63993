"""MadnessDetectionTask: footprints and peaks on synthetic multiband patches (no model needed).

The scenes with known answers: the task test patch (three groups and two single galaxies), a
close pair of equal galaxies 1.2" apart, a faint companion on a bright galaxy's wing (0.33% of
its flux, 2" away), a companion that is only a shoulder of its neighbour's profile (the band-pass
peaks), pure noise, and two bands that see different galaxies (Rubin's merge rules).
"""

import unittest

import lsst.pex.config
import lsst.utils.tests
import numpy as np
from lsst.meas.madness.tasks import (
    MadnessDetectionConfig,
    MadnessDetectionTask,
    MultibandCoadd,
    footprints_from_table,
    source_id_prefix,
)
from lsst.meas.madness.tasks.detection import find_detections
from lsst.meas.madness.tasks.detection_methods import band_pass_significance, detect_rubin_like
from lsst.pipe.base.testUtils import assertValidOutput
from task_utils import (
    BANDS,
    NAN_HOLE,
    PATCH_SHAPE,
    PATCH_YX0,
    SCENE_GROUPS,
    SCENE_PEAKS,
    SKY_VARIANCE,
    masked_images,
)
from utils import MadnessTestCase, synthetic_galaxies
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend


def _patch(seed=6):
    """Synthetic galaxies (45x45 stamps) at the scene's peaks, with noise and a NaN hole."""
    rng = np.random.default_rng(seed)
    stamps = 3.0 * synthetic_galaxies(len(SCENE_PEAKS), seed=seed)
    image = np.zeros((6, PATCH_SHAPE[0] + 44, PATCH_SHAPE[1] + 44), np.float32)
    for (x, y), stamp in zip(SCENE_PEAKS.astype(int), stamps):
        image[:, y : y + 45, x : x + 45] += stamp  # padded frame: stamp centre at (x+22, y+22)
    image = image[:, 22:-22, 22:-22]
    var = np.broadcast_to(SKY_VARIANCE[:, None, None], image.shape).astype(np.float32)
    image = image + rng.normal(size=image.shape).astype(np.float32) * np.sqrt(var)
    image[:, NAN_HOLE[0], NAN_HOLE[1]] = np.nan
    return image, var


class DetectionTestCase(MadnessTestCase):
    @classmethod
    def setUpClass(cls):
        cls.image, cls.variance = _patch()
        cls.coadds = masked_images(cls.image, cls.variance)
        cls.task = MadnessDetectionTask(config=MadnessDetectionConfig())
        cls.result = cls.task.run(coadds=cls.coadds, idPrefix=source_id_prefix(2, 7))
        cls.det = cls.result.detections
        cls.footprints = footprints_from_table(cls.result.detectionSpans)

    def test_detection_image(self):
        coadd = MultibandCoadd.from_masked_images(self.coadds, bands=BANDS)
        image, variance, bad = coadd.detection_image()
        w = 1.0 / self.variance
        expected = (w * np.nan_to_num(self.image)).sum(0) / w.sum(0)
        good = ~bad
        self.assertTrue(bad[NAN_HOLE].all())
        self.assertImagesClose(image[good], expected[good], rtol=1e-4, atol=1e-3)
        self.assertImagesClose(variance[good], (1.0 / w.sum(0))[good], rtol=1e-5)

    def test_one_parent_per_group_with_all_its_peaks(self):
        parents = self.det[self.det["parent"] == 0]
        self.assertEqual(len(parents), len(SCENE_GROUPS))
        self.assertEqual(len(set(self.det["id"])), len(self.det))
        self.assertTrue((self.det["id"] > source_id_prefix(2, 7)).all())
        self.assertEqual(set(self.footprints), set(parents["id"]))
        for members in SCENE_GROUPS:
            xy = SCENE_PEAKS[members].astype(int) + np.array([PATCH_YX0[1], PATCH_YX0[0]])
            fp_ids = {pid for pid, fp in self.footprints.items() if fp.contains(xy[:, 1], xy[:, 0]).all()}
            self.assertEqual(len(fp_ids), 1, members)
            (pid,) = fp_ids
            peaks = self.det[self.det["parent"] == pid]
            self.assertEqual(len(peaks), len(members), members)
            self.assertEqual(parents[parents["id"] == pid]["n_peaks"][0], len(members))
            # Each true centre has a detected peak within 2 pixels.
            d = np.hypot(peaks["peak_x"][:, None] - xy[None, :, 0], peaks["peak_y"][:, None] - xy[None, :, 1])
            self.assertTrue((d.min(axis=0) <= 2).all(), d)
            self.assertTrue(self.footprints[pid].contains(peaks["peak_y"], peaks["peak_x"]).all())
            self.assertTrue((peaks["peak_significance"] > 3).all())

    def test_footprints_do_not_overlap(self):
        seen = set()
        for fp in self.footprints.values():
            pixels = set(zip(*map(np.ndarray.tolist, fp.pixels())))
            self.assertFalse(pixels & seen)
            seen |= pixels

    def test_all_bad_image(self):
        image = np.full_like(self.image, np.nan)
        result = MadnessDetectionTask(config=MadnessDetectionConfig()).run(
            coadds=masked_images(image, self.variance)
        )
        self.assertEqual(len(result.detections), 0)
        self.assertEqual(len(result.detectionSpans), 0)

    def test_valid_output(self):
        assertValidOutput(self.task, self.result)
        self.assertEqual(self.task.metadata["n_parents"], len(SCENE_GROUPS))


def _gaussians(shape, sources, seed, sky_variance=SKY_VARIANCE, band_weights=None):
    """``(6, H, W)`` image and variance of round Gaussians ``(x, y, flux per band, sigma_px)`` + noise.

    ``band_weights`` (``(n, 6)``) scales each source's flux per band (default: flat, all bands).
    """
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros((6, *shape))
    for k, (x, y, flux, sigma) in enumerate(sources):
        profile = flux * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma**2) / (2 * np.pi * sigma**2)
        weights = np.ones(6) if band_weights is None else np.asarray(band_weights[k], float)
        image += weights[:, None, None] * profile[None]
    var = np.broadcast_to(np.asarray(sky_variance, float)[:, None, None], image.shape).astype(np.float32)
    rng = np.random.default_rng(seed)
    image = image + rng.normal(size=image.shape) * np.sqrt(var)
    return image.astype(np.float32), var


def _peaks(image, var, **fields):
    config = MadnessDetectionConfig()
    for name, value in fields.items():
        target = config
        *parents, leaf = name.split("__")
        for p in parents:
            target = getattr(target, p)
        setattr(target, leaf, value)
    coadd = MultibandCoadd.from_masked_images(masked_images(image, var, yx0=(0, 0)), bands=BANDS)
    return find_detections(coadd, config)


class HardScenesTestCase(MadnessTestCase):
    """Close pairs and faint companions: what the default method must find, and the old one missed."""

    def assertPeakNear(self, found, xy, tol=1.5, msg=None):
        d = np.hypot(found.peaks_xy[:, 0] - xy[0], found.peaks_xy[:, 1] - xy[1])
        self.assertTrue(len(d) and d.min() <= tol, msg or f"no peak within {tol} px of {xy}: {found.peaks_xy}")

    def test_default_method_is_prominence(self):
        self.assertEqual(MadnessDetectionConfig().method, "prominence")

    def test_close_pair_resolved(self):
        # Two equal compact galaxies 6 px = 1.2" = 1.5 PSF FWHM apart, SNR ~ 100 each: both found
        # in every realisation; a noise peak on the wings is allowed once in five (measured: 1 in
        # 20 realisations has one).
        n_peaks = []
        for seed in range(5):
            image, var = _gaussians((61, 71), [(32, 30, 2e4, 2.0), (38, 30, 2e4, 2.0)], seed)
            found = _peaks(image, var)
            self.assertEqual(found.n_parents, 1)
            self.assertPeakNear(found, (32, 30))
            self.assertPeakNear(found, (38, 30))
            n_peaks.append(len(found.peaks_xy))
        self.assertLessEqual(sum(n_peaks), 2 * 5 + 1, n_peaks)

    def test_faint_companion_on_bright_wing(self):
        # 0.33% of the bright galaxy's flux, 13 px (2.6") from it, inside its footprint.
        # Found in every realisation; noise peaks on the wings: 2 in 20 realisations measured
        # (both in seed 0), at most 3 allowed.
        sources = [(40, 40, 3e5, 2.5), (53, 40, 1e3, 1.8)]
        n_peaks = []
        for seed in range(20):
            image, var = _gaussians((81, 101), sources, seed)
            found = _peaks(image, var)
            self.assertEqual(found.n_parents, 1, "the companion lies in the bright galaxy's footprint")
            n_peaks.append(len(found.peaks_xy))
            self.assertPeakNear(found, (40, 40))
            self.assertPeakNear(found, (53, 40))
            # The scene is hard: sep's flux-fraction contrast (the method before issue 14) drops it.
            old = _peaks(image, var, method="sep")
            d = np.hypot(old.peaks_xy[:, 0] - 53, old.peaks_xy[:, 1] - 40)
            self.assertGreater(d.min(), 1.5, old.peaks_xy)
        self.assertLessEqual(sum(n_peaks), 2 * 20 + 3, n_peaks)

    def test_bright_galaxy_is_not_shredded(self):
        # A bright smooth galaxy gives one peak: a noise maximum on its wings with a 2.5 sigma
        # prominence is rare (1 in 20 realisations measured), so at most one in ten.
        extra = []
        for seed in range(10):
            image, var = _gaussians((81, 81), [(40, 40, 1e6, 4.0)], seed)
            found = _peaks(image, var)
            self.assertPeakNear(found, (40, 40))
            extra.append(len(found.peaks_xy) - 1)
        self.assertLessEqual(sum(extra), 1, extra)

    def test_pure_noise_has_no_detection(self):
        image, var = _gaussians((200, 200), [], seed=3)
        self.assertEqual(_peaks(image, var).n_parents, 0)

    def test_lower_prominence_finds_more_noise_peaks(self):
        # The prominence cut is what rejects noise maxima on a faint galaxy's plateau.
        image, var = _gaussians((81, 81), [(40, 40, 3e4, 6.0)], seed=4)
        strict = _peaks(image, var)
        loose = _peaks(image, var, prominence__prominence=0.2, prominence__peakSmoothing=0.0)
        self.assertEqual(len(strict.peaks_xy), 1)
        self.assertGreater(len(loose.peaks_xy), 1)

    def test_old_method_still_available(self):
        image, var = _gaussians((61, 71), [(20, 30, 2e4, 2.0), (50, 30, 2e4, 2.0)], seed=5)
        old = _peaks(image, var, method="sep")
        self.assertEqual(old.n_parents, 2)
        self.assertEqual(len(old.peaks_xy), 2)


class BandPassPeaksTestCase(MadnessTestCase):
    """The band-pass peaks (``prominence.doBandPassPeaks``): a companion on a shoulder, and their noise."""

    def test_companion_on_a_shoulder(self):
        # A galaxy of a tenth of its neighbour's flux, 8 px (1.6") away: on the smoothed image it is
        # a shoulder of the neighbour's profile, not a maximum, so the prominent peaks never hold
        # it (0 of 10 realisations measured); the difference of Gaussians removes the wing's
        # gradient and leaves it a maximum (10 of 10). At most 2 noise peaks in the 10 (1 measured).
        sources = [(40, 40, 3e4, 2.5), (48, 40, 3e3, 1.8)]
        found_without, found_with, extra = 0, 0, 0
        for seed in range(10):
            image, var = _gaussians((81, 101), sources, seed)
            without = _peaks(image, var, prominence__doBandPassPeaks=False)
            found = _peaks(image, var)
            near = lambda f: np.hypot(f.peaks_xy[:, 0] - 48, f.peaks_xy[:, 1] - 40).min() <= 1.5
            found_without += near(without)
            found_with += near(found)
            self.assertEqual(found.n_parents, 1)
            HardScenesTestCase.assertPeakNear(self, found, (40, 40))
            extra += len(found.peaks_xy) - 2
        self.assertLessEqual(found_without, 1)
        self.assertEqual(found_with, 10)
        self.assertLessEqual(extra, 2)

    def test_significance_of_noise_is_unit(self):
        # On white noise of known, uneven variance the band-passed image over its noise is a
        # unit Gaussian (the kernel's squared sum, not its width, sets the noise).
        rng = np.random.default_rng(11)
        variance = np.where(np.arange(400)[None, :] < 200, 4.0, 25.0) * np.ones((400, 1))
        image = rng.normal(size=variance.shape) * np.sqrt(variance)
        bad = np.zeros(image.shape, bool)
        for inner, outer in [(0.87, 5.2), (1.7, 4.0)]:
            snr = band_pass_significance(image, variance, bad, inner, outer)[30:-30, 30:-30]
            self.assertLess(abs(snr.mean()), 0.05)
            for half in (snr[:, :140], snr[:, 200:]):
                self.assertAlmostEqual(float(half.std()), 1.0, delta=0.05)

    def test_band_pass_settings_checked(self):
        config = MadnessDetectionConfig()
        config.prominence.bandPassInner = 3.0
        config.prominence.bandPassOuter = 2.0
        with self.assertRaises(lsst.pex.config.FieldValidationError):
            config.validate()
        with self.assertRaises(ValueError):
            band_pass_significance(np.zeros((9, 9)), np.ones((9, 9)), np.zeros((9, 9), bool), 2.0, 1.0)


class RubinLikeMergeTestCase(MadnessTestCase):
    """Per-band detection merged with MergeDetectionsTask's rules (minNewPeak = 1")."""

    def _run(self, separation):
        # Galaxy A only in i (the first band of the merge), galaxy B only in r.
        weights = np.zeros((2, 6))
        weights[0, BANDS.index("i")] = 1.0
        weights[1, BANDS.index("r")] = 1.0
        image, var = _gaussians((61, 81), [(30, 30, 2e4, 2.0), (30 + separation, 30, 2e4, 2.0)], seed=8,
                                band_weights=weights)
        sigma = MadnessDetectionConfig().psf_sigma(BANDS)
        return detect_rubin_like(image, var, np.zeros(image.shape, bool), BANDS, sigma,
                                 min_new_peak=5.0, max_same_peak=1.5)

    def test_new_peak_beyond_one_arcsec(self):
        found = self._run(separation=8)  # 1.6": r's peak is new
        self.assertEqual(len(found.peaks_xy), 2, found.peaks_xy)
        self.assertEqual(found.n_parents, 1)

    def test_no_new_peak_within_one_arcsec(self):
        found = self._run(separation=4)  # 0.8": r's peak is dropped, whatever its significance
        self.assertEqual(len(found.peaks_xy), 1, found.peaks_xy)
        self.assertLessEqual(abs(found.peaks_xy[0, 0] - 30), 1)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
