"""The packaged default LSST model: it loads with no path and deblends better than no deblending."""

from __future__ import annotations

import unittest
from pathlib import Path

import lsst.utils.tests
import numpy as np

from lsst.meas.madness import MadnessDeblender, ModelBundle
from lsst.meas.madness.io.bundle import default_bundle_path


def _blend_on_grid(seed: int):
    """Three moderately blended CatSim-like galaxies drawn by BTK in a 71x71 stamp."""
    from lsst.meas.madness.simulation.btk_draw import BlendPlan, draw_planned_blends
    from lsst.meas.madness.simulation.catalog import apply_snr_cut
    from lsst.meas.madness.simulation.skypy_catalog import generate_catsim_catalog

    catalog = apply_snr_cut(generate_catsim_catalog(0.002, seed), 10.0)
    # bright-ish, ordinary sizes: the test is about deblending, not about the faint end
    r = np.asarray(catalog["r_ab"])
    size = np.sqrt(np.asarray(catalog["a_d"]) * np.asarray(catalog["b_d"]))
    pick = np.flatnonzero((r > 21.0) & (r < 24.0) & (size < 1.2))[:3]
    plan = BlendPlan(pick, np.array([-4.0, 5.0, 1.0]), np.array([0.0, 3.0, -6.0]))
    blends, isolated, _ = draw_planned_blends(catalog, [plan], 71, seed=seed)
    return catalog[pick], blends[0], isolated[0, :3], plan


class DefaultBundleTestCase(unittest.TestCase):
    def test_packaged_bundle_loads(self):
        bundle = ModelBundle.load()  # no path: the packaged default
        meta = bundle.metadata
        self.assertTrue(meta.trained)
        self.assertEqual(meta.bands, ("u", "g", "r", "i", "z", "y"))
        self.assertEqual(meta.stamp_size, 45)
        self.assertIn(meta.training["preset"], ("cpu", "cpu2", "cpu3", "paper"))
        # cpu9-a (stop 54): the decoder of 96, 64, 32 channels distilled from cpu6-a's.
        self.assertEqual(bundle.decoder.count_params(), 2_347_142)
        self.assertEqual(bundle.flow.count_params(), 15_936)
        total = sum(p.stat().st_size for p in default_bundle_path().iterdir())
        self.assertLess(total, 40e6)
        self.assertTrue(all(p.stat().st_size < 16e6 for p in default_bundle_path().iterdir()))

    def test_previous_model_loads(self):
        """cpu6-a, packaged before cpu9-a, is kept as a checkpoint of its paper-size decoder alone;
        its encoder, flow and VAE-deblender are the packaged bundle's own files."""
        checkpoint = Path(__file__).resolve().parents[1] / "checkpoints" / "cpu6-a"
        previous, packaged = ModelBundle.load(checkpoint), ModelBundle.load()
        self.assertEqual(previous.decoder.count_params(), 3_473_062)
        self.assertEqual(sorted(p.name for p in checkpoint.iterdir()), ["bundle.json", "decoder.weights.000.npz"])
        self.assertEqual(previous.metadata.training["preset"], "cpu3")
        for name in ("encoder", "flow", "deblender_encoder"):
            for a, b in zip(getattr(previous, name).get_weights(), getattr(packaged, name).get_weights()):
                np.testing.assert_array_equal(a, b, err_msg=name)
        self.assertFalse(all(
            a.shape == b.shape and np.array_equal(a, b)
            for a, b in zip(previous.decoder.get_weights(), packaged.decoder.get_weights())
        ))

    def test_faster_candidate_loads(self):
        """cpu10-a (stop 67), the decoder of 96, 32, 24 channels at 0.81x cpu9-a's time, is kept as
        a checkpoint of its decoder alone for whoever prefers its speed (doc/training.md): it
        loads with the packaged encoder, flow and VAE-deblender and draws a galaxy in all six
        bands from a latent."""
        checkpoint = Path(__file__).resolve().parents[1] / "checkpoints" / "cpu10-a"
        candidate, packaged = ModelBundle.load(checkpoint), ModelBundle.load()
        self.assertEqual(candidate.decoder.count_params(), 2_201_006)
        self.assertEqual(sorted(p.name for p in checkpoint.iterdir()), ["bundle.json", "decoder.weights.000.npz"])
        # The finished run, not one of its epoch snapshots.
        self.assertIsNone(candidate.metadata.training.get("snapshot"))
        self.assertEqual(candidate.metadata.training["stages"]["vae"]["epochs_run"], 10)
        for name in ("encoder", "flow", "deblender_encoder"):
            for a, b in zip(getattr(candidate, name).get_weights(), getattr(packaged, name).get_weights()):
                np.testing.assert_array_equal(a, b, err_msg=name)
        stamp = np.asarray(candidate.decoder(np.zeros((1, 16), np.float32)))
        self.assertEqual(stamp.shape, (1, 45, 45, 6))
        self.assertTrue(np.all(np.isfinite(stamp)))
        self.assertTrue(np.all(stamp.reshape(-1, 6).sum(axis=0) > 0))

    def test_deblends_better_than_no_deblending(self):
        from lsst.meas.madness.evaluation import catalog_apertures, field_photometry
        from lsst.meas.madness.simulation import LsstConditions

        conditions = LsstConditions.from_surveycodex()
        catalog, blend, isolated, plan = _blend_on_grid(seed=21)
        centre = 35.0
        x, y = centre + plan.dx, centre + plan.dy
        variance = np.broadcast_to(conditions.sky_levels[:, None, None], blend.shape).astype(np.float32)
        deblender = MadnessDeblender.from_bundle()
        result = deblender.deblend(blend, np.stack([x, y], axis=1), variance=variance)
        a, b, theta = catalog_apertures(catalog, conditions)
        r = 2
        # the isolated galaxy in the same noise field: the field minus its true neighbours
        isolated_flux = field_photometry(blend, x, y, a, b, theta, models=isolated, variance=variance)[0][:, r]
        blended_flux = field_photometry(blend, x, y, a, b, theta, variance=variance)[0][:, r]
        madness_flux = field_photometry(blend, x, y, a, b, theta, models=result.models,
                                        models_yx0=result.stamp_yx0, variance=variance)[0][:, r]
        err_blended = np.mean(np.abs(blended_flux / isolated_flux - 1))
        err_madness = np.mean(np.abs(madness_flux / isolated_flux - 1))
        self.assertLess(err_madness, err_blended)
        self.assertLess(err_madness, 0.5 * err_blended)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    ignore_regexps = [r"skypy/data/kcorrect/"]


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
