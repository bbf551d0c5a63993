"""MADNESS as a BTK deblender: BTK draws LSST blends, the plugin deblends them in one engine
call, BTK's matcher and metrics score the result, and the section-4 metrics run on it."""

import copy
import unittest

import lsst.utils.tests
import numpy as np

# BTK is a pinned dependency (requirements/btk.txt): a failed import must fail the suite.
import btk
from lsst.meas.madness.evaluation.btk_plugin import MadnessBtkDeblender

from lsst.meas.madness.errors import MadnessValueError
from utils import quick_bundle_path
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

BANDS = "ugrizy"
BATCH = 4


def catsim_table(n: int, seed: int):
    """A CatSim-format catalogue with the columns `btk.catalog.CatsimCatalog` and BTK's
    `CatsimGenerator` read: ``ra, dec``, ``<band>_ab``, ``fluxnorm_{disk,bulge,agn}``,
    ``a_d, b_d, a_b, b_b`` (arcsec) and ``pa_disk, pa_bulge`` (degrees)."""
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    i_ab = rng.uniform(20.0, 22.5, n)
    colour = rng.normal(0, 0.2, n)
    table = Table()
    table["ra"] = np.zeros(n)
    table["dec"] = np.zeros(n)
    for k, band in enumerate(BANDS):
        table[f"{band}_ab"] = i_ab + (3 - k) * 0.25 * (1 + colour)
    disk = rng.uniform(0.5, 1.0, n)
    table["fluxnorm_disk"] = disk
    table["fluxnorm_bulge"] = np.where(rng.random(n) < 0.5, 0.0, 1.0 - disk)
    table["fluxnorm_agn"] = np.zeros(n)
    a_d = rng.uniform(0.4, 0.9, n)
    q = rng.uniform(0.4, 0.9, n)
    table["a_d"], table["b_d"] = a_d, a_d * q
    table["a_b"], table["b_b"] = 0.4 * a_d, 0.4 * a_d * q
    table["pa_disk"] = rng.uniform(0.0, 180.0, n)
    table["pa_bulge"] = table["pa_disk"]
    return table


class BtkPluginTestCase(lsst.utils.tests.TestCase):
    @classmethod
    def setUpClass(cls):
        from lsst.meas.madness import MadnessDeblender, MapSettings

        catalog = btk.catalog.CatsimCatalog(catsim_table(40, seed=0))
        sampling = btk.sampling_functions.DefaultSampling(
            stamp_size=24.0, max_number=3, min_number=2, max_shift=2.5, seed=1, max_mag=23.0
        )
        cls.survey = btk.survey.get_surveys("LSST")
        generator = btk.draw_blends.CatsimGenerator(catalog, sampling, cls.survey, batch_size=BATCH,
                                                    add_noise="all", seed=2)
        cls.blend_batch = next(generator)
        cls.settings = MapSettings(max_iter=40)
        cls.engine = MadnessDeblender.from_bundle(quick_bundle_path())
        cls.plugin = MadnessBtkDeblender(cls.engine, settings=cls.settings)
        cls.deblend_batch = cls.plugin(cls.blend_batch)

    def test_shapes_and_catalogs(self):
        """Models on BTK's stamp grid, one per true galaxy, catalogs with the peaks."""
        bb, db = self.blend_batch, self.deblend_batch
        size = bb.image_size
        self.assertEqual(size, 120)
        self.assertEqual(db.deblended_images.shape, (BATCH, bb.max_n_sources, 6, size, size))
        self.assertEqual((db.n_bands, db.image_size, db.batch_size), (6, size, BATCH))
        self.assertTrue(np.isfinite(db.deblended_images).all())
        self.assertGreaterEqual(db.deblended_images.min(), 0.0)
        for ii in range(BATCH):
            truth, cat = bb.catalog_list[ii], db.catalog_list[ii]
            n = len(truth)
            self.assertEqual(len(cat), n)
            for name in ("ra", "dec", "x_peak", "y_peak"):
                np.testing.assert_allclose(cat[name], truth[name])
            self.assertEqual(cat["true_index"].tolist(), list(range(n)))
            self.assertTrue(np.isfinite(cat["log_prior"]).all())
            models = db.deblended_images[ii]
            self.assertTrue((models[:n].sum(axis=(1, 2, 3)) > 0).all())
            self.assertTrue((models[n:] == 0).all())
            # Each model is centred near its peak, in the survey's band order (r is bright).
            for j in range(n):
                r = models[j, 2]
                yy, xx = np.mgrid[:size, :size]
                self.assertLess(abs((r * xx).sum() / r.sum() - truth["x_peak"][j]), 3.0)
                self.assertLess(abs((r * yy).sum() / r.sum() - truth["y_peak"][j]), 3.0)
            extra = db.extra_data[ii]
            self.assertIsNone(extra["error"])
            self.assertEqual(extra["dropped"], [])
            self.assertEqual(extra["result"].n_sources, n)
            # The batch's PSF went with the blend: every source has its PSF wing (engine.wings).
            self.assertTrue(extra["result"].winged.all())

    def test_btk_matcher_and_metrics(self):
        """BTK's own matcher finds every true galaxy; BTK's metrics are finite."""
        from btk.metrics.detection import F1, Precision, Recall
        from btk.metrics.reconstruction import MSE, PSNR, StructSim

        bb, db = self.blend_batch, self.deblend_batch
        matching = btk.match.PixelHungarianMatcher(pixel_max_sep=1.0)(bb.catalog_list, db.catalog_list)
        n_true = np.array([len(c) for c in bb.catalog_list])
        np.testing.assert_array_equal(matching.tp, n_true)
        np.testing.assert_array_equal(matching.n_pred, n_true)
        for metric in (Precision, Recall, F1):
            self.assertEqual(metric(BATCH)(matching.tp, matching.n_true, matching.n_pred), 1.0)
        true_iso = matching.match_true_arrays(bb.isolated_images)
        pred_iso = matching.match_pred_arrays(db.deblended_images)
        for band in range(6):
            # BTK's SSIM/PSNR assert non-negative images; GalSim's drawing can leave -1e-12.
            truth = np.clip(true_iso[:, :, band], 0, None)
            values = [metric(BATCH)(truth, pred_iso[:, :, band]) for metric in (MSE, PSNR, StructSim)]
            self.assertTrue(np.isfinite(values).all(), (band, values))
        self.assertGreater(StructSim(BATCH)(np.clip(true_iso[:, :, 2], 0, None), pred_iso[:, :, 2]), 0.5)
        # btk.measure's functions run on the models too.
        blendedness = btk.measure.get_blendedness(db.deblended_images[:, :, 2])
        self.assertTrue(np.isfinite(blendedness).all())

    def test_detected_peaks_scored_by_btk(self):
        """Peaks from our detection, not the truth: BTK's matcher and detection metrics score what
        the plugin was given, and agree with our own one-to-one matcher, counted independently.
        One blend loses its brightest peak and gains a spurious one in an empty corner, so
        precision and recall below 1 are known exactly."""
        from astropy.table import Table
        from btk.metrics.detection import Precision, Recall

        from lsst.meas.madness.evaluation.detection import match_one_to_one
        from lsst.meas.madness.simulation import LsstConditions
        from lsst.meas.madness.tasks.detection_methods import detect_prominence

        bb = self.blend_batch
        conditions = LsstConditions.from_surveycodex()
        sky = np.array([conditions.sky_level(b) for b in BANDS])
        psf_sigma = conditions.psf_fwhm[BANDS.index("r")] / 2.355 / 0.2
        catalogs = []
        for ii in range(BATCH):
            weights = 1.0 / sky
            mean = np.tensordot(weights, bb.blend_images[ii], axes=1) / weights.sum()
            found = detect_prominence(mean, np.full(mean.shape, 1.0 / weights.sum()), np.zeros(mean.shape, bool),
                                      psf_sigma)
            xy = np.asarray(found.peaks_xy, float)
            if ii == 0:
                xy = np.delete(xy, np.argmax(found.peak_value), axis=0)
                xy = np.vstack([xy, [2.0, 2.0]])
            catalogs.append(Table({"x_peak": xy[:, 0], "y_peak": xy[:, 1]}))
        self.assertGreater(sum(len(c) for c in catalogs), 0)
        db = MadnessBtkDeblender(self.engine, max_n_sources=8, settings=self.settings)(bb, reference_catalogs=catalogs)
        for ii in range(BATCH):  # the plugin deblended the given peaks, not the truth
            self.assertEqual(len(db.catalog_list[ii]), len(catalogs[ii]))
            np.testing.assert_allclose(db.catalog_list[ii]["x_peak"], catalogs[ii]["x_peak"], atol=1e-6)
        radius = 2.0
        matching = btk.match.PixelHungarianMatcher(pixel_max_sep=radius)(bb.catalog_list, db.catalog_list)
        ours = []
        for ii in range(BATCH):
            truth_xy = np.stack([bb.catalog_list[ii]["x_peak"], bb.catalog_list[ii]["y_peak"]], 1)
            det_xy = np.stack([catalogs[ii]["x_peak"], catalogs[ii]["y_peak"]], 1)
            ti, dj = match_one_to_one(truth_xy, det_xy, radius)
            ours.append(len(ti))
            # Detections carry pixels only: the plugin's world coordinates (arcsec, BTK's frame)
            # put each matched peak within the match radius of its galaxy's catalogue position.
            sep = np.hypot(db.catalog_list[ii]["ra"][dj] - bb.catalog_list[ii]["ra"][ti],
                           db.catalog_list[ii]["dec"][dj] - bb.catalog_list[ii]["dec"][ti])
            self.assertTrue((sep <= radius * 0.2 + 1e-6).all(), sep)
        np.testing.assert_array_equal(matching.tp, ours)
        n_true = sum(len(c) for c in bb.catalog_list)
        n_pred = sum(len(c) for c in catalogs)
        self.assertAlmostEqual(Precision(BATCH)(matching.tp, matching.n_true, matching.n_pred), sum(ours) / n_pred)
        self.assertAlmostEqual(Recall(BATCH)(matching.tp, matching.n_true, matching.n_pred), sum(ours) / n_true)
        # The spurious corner peak matches nothing and the removed bright one is missed.
        self.assertLess(sum(ours), n_true)
        self.assertLess(sum(ours), n_pred)

    def test_section4_metrics_on_btk(self):
        """The paper's metrics on BTK blends: finite, and the apertures follow BTK's orientation."""
        from lsst.meas.madness.evaluation import adaptive_moments, model_metrics, reference_metrics
        from lsst.meas.madness.simulation import LsstConditions

        conditions = LsstConditions.from_surveycodex()
        bb, db = self.blend_batch, self.deblend_batch
        for ii in range(BATCH):
            cat = bb.catalog_list[ii]
            n = len(cat)
            ref = reference_metrics(bb.blend_images[ii], bb.isolated_images[ii, :n], cat,
                                    variance=conditions.sky_levels, conditions=conditions)
            for key in ("flux_isolated", "flux_blended", "kappa", "beta", "snr_blend"):
                self.assertTrue(np.isfinite(ref.metrics[key]).all(), key)
            self.assertTrue((ref.metrics["snr_blend"][:, 2] > 20).all())
            m = model_metrics(ref, db.deblended_images[ii, :n], conditions=conditions)
            for key in ("flux_residual", "ssim", "cosine", "colour_residual_blend"):
                self.assertTrue(np.isfinite(m[key]).all(), key)
            self.assertTrue((m["cosine"][:, 2] > 0.5).all())
            # CatSim's position angle (plus btk_rotation) is the major-axis angle HSM measures.
            shapes = adaptive_moments(ref.truth_stamps[:, 2])
            beta = 0.5 * np.arctan2(shapes.e2, shapes.e1)
            diff = (beta - ref.theta + np.pi / 2) % np.pi - np.pi / 2
            self.assertTrue((np.abs(diff) < 0.05).all(), diff)

    def test_variance_is_the_sky(self):
        """BTK's noise is sky-dominated with the LsstConditions sky level per band."""
        from surveycodex.utilities import mean_sky_level

        bb = self.blend_batch
        image = bb.blend_images[0].astype(np.float32)
        variance = self.plugin._variance(bb, image)
        sky = variance[:, 0, 0]
        btk_sky = [mean_sky_level(self.survey, self.survey.get_filter(b)).to_value("electron") for b in BANDS]
        # BTK's value passes through SurveyCodex's rounding of the counts: equal to 1e-5.
        np.testing.assert_allclose(sky, btk_sky, rtol=1e-4)
        noise = bb.blend_images - bb.isolated_images.sum(axis=1)
        np.testing.assert_allclose(noise.var(axis=(0, 2, 3)), sky, rtol=0.05)
        # Sky subtracted: the noise averages to zero (0.05 sigma is ~12 standard errors here).
        self.assertTrue((np.abs(noise.mean(axis=(0, 2, 3))) < 0.05 * np.sqrt(sky)).all())
        with_source = MadnessBtkDeblender(self.engine, source_variance=True)._variance(bb, image)
        np.testing.assert_allclose(with_source, variance + np.clip(image, 0, None), rtol=1e-6)

    def test_single_blend_matches_batch(self):
        """`deblend(ii, batch)` returns one blend's DeblendExample, the same models as the batch."""
        example = self.plugin.deblend(1, self.blend_batch)
        self.assertEqual(example.deblended_images.shape, self.deblend_batch.deblended_images.shape[1:])
        self.assertEqual(len(example.catalog), len(self.blend_batch.catalog_list[1]))
        np.testing.assert_allclose(example.deblended_images, self.deblend_batch.deblended_images[1],
                                   rtol=1e-4, atol=1e-4 * self.deblend_batch.deblended_images[1].max())

    def test_band_order(self):
        """A survey listing the model's bands in another order gets models in its own order;
        a survey with other bands is a clear error."""
        bb = self.blend_batch
        perm = [5, 3, 1, 0, 2, 4]
        survey = copy.copy(bb.survey)
        survey.available_filters = [BANDS[k] for k in perm]
        shuffled = btk.blend_batch.BlendBatch(bb.batch_size, bb.max_n_sources, bb.stamp_size, survey,
                                              bb.blend_images[:, perm], bb.isolated_images[:, :, perm],
                                              bb.catalog_list, [bb.psf[k] for k in perm])
        db = self.plugin(shuffled)
        np.testing.assert_allclose(db.deblended_images, self.deblend_batch.deblended_images[:, :, perm],
                                   rtol=1e-6, atol=1e-6 * self.deblend_batch.deblended_images.max())
        five = copy.copy(bb.survey)
        five.available_filters = list("ugriz")
        wrong = btk.blend_batch.BlendBatch(bb.batch_size, bb.max_n_sources, bb.stamp_size, five,
                                           bb.blend_images[:, :5], bb.isolated_images[:, :, :5],
                                           bb.catalog_list, bb.psf[:5])
        with self.assertRaisesRegex(MadnessValueError, "bands"):
            self.plugin(wrong)

    def test_reference_catalogs_and_bad_peaks(self):
        """Peaks from other catalogues; peaks sharing a pixel or off the image get no model."""
        bb = self.blend_batch
        cats = [c.copy() for c in bb.catalog_list]
        cats[0].add_row(cats[0][0])  # a duplicate of the first peak
        cats[0]["x_peak"][-1] += 0.2
        cats[1]["x_peak"][0] = -3.0  # off the image
        cats[2] = cats[2][:0]  # nothing to deblend
        plugin = MadnessBtkDeblender(self.engine, max_n_sources=4, settings=self.settings)
        db = plugin(bb, reference_catalogs=cats)
        self.assertEqual(db.extra_data[0]["dropped"], [len(cats[0]) - 1])
        self.assertEqual(len(db.catalog_list[0]), len(cats[0]) - 1)
        self.assertEqual(db.extra_data[1]["dropped"], [0])
        self.assertEqual(db.catalog_list[1]["true_index"].tolist(), list(range(1, len(cats[1]))))
        self.assertEqual(len(db.catalog_list[2]), 0)
        self.assertTrue((db.deblended_images[2] == 0).all())
        self.assertEqual(db.deblended_images.shape[1], 4)
        with self.assertRaisesRegex(MadnessValueError, "max_n_sources"):
            MadnessBtkDeblender(self.engine, max_n_sources=1, settings=self.settings)(bb)

    def test_failed_blend_is_flagged(self):
        """A blend the engine rejects (no usable pixel) comes back empty with its error; the
        other blends of the batch are deblended."""
        bb = self.blend_batch
        images = bb.blend_images[:2].copy()
        images[1] = np.nan
        batch = btk.blend_batch.BlendBatch(2, bb.max_n_sources, bb.stamp_size, bb.survey, images,
                                           bb.isolated_images[:2], bb.catalog_list[:2], bb.psf)
        db = self.plugin(batch)
        self.assertIsNone(db.extra_data[0]["error"])
        self.assertIn("MadnessNoDataError", db.extra_data[1]["error"])
        self.assertEqual(db.extra_data[1]["dropped"], list(range(len(bb.catalog_list[1]))))
        self.assertEqual(len(db.catalog_list[1]), 0)
        self.assertTrue((db.deblended_images[1] == 0).all())
        np.testing.assert_allclose(db.deblended_images[0], self.deblend_batch.deblended_images[0],
                                   rtol=1e-4, atol=1e-4 * self.deblend_batch.deblended_images[0].max())

    def test_from_bundle_path(self):
        plugin = MadnessBtkDeblender(quick_bundle_path(), settings=self.settings)
        self.assertEqual(plugin.deblender.bands, tuple(BANDS))
        self.assertEqual(repr(plugin), "MadnessBtkDeblender")
        with self.assertRaises(TypeError):
            plugin.batch_call(self.blend_batch, unknown=1)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
