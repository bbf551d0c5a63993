"""IsolatedSims, BlendedSims and TestFields: layout rules, images, shards, determinism, resume."""

from __future__ import annotations

import json
import shutil
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import lsst.utils.tests
import numpy as np
from astropy.table import Table

from lsst.meas.madness.errors import MadnessValueError
from lsst.meas.madness.simulation import datasets as datasets_module
from lsst.meas.madness.simulation.btk_draw import BlendPlan, _ScalarSeed, draw_planned_blends, stamp_arcsec
from lsst.meas.madness.simulation.conditions import LsstConditions
from lsst.meas.madness.simulation.datasets import (
    BlendedSimsConfig,
    IsolatedSimsConfig,
    TestFieldsConfig,
    simulate_dataset,
)
from lsst.meas.madness.simulation.plans import plan_blended, plan_isolated, plan_test_fields
from lsst.meas.madness.simulation.shards import SimulatedDataset
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

BANDS = "ugrizy"


def catsim_table(n: int, seed: int = 0) -> Table:
    """A small CatSim-format catalogue of bright bulge+disk galaxies (r 20-24)."""
    rng = np.random.default_rng(seed)
    r = rng.uniform(20.0, 24.0, n)
    t = Table()
    t["galtileid"] = np.arange(n, dtype=np.int64) + 1000
    t["ra"] = np.zeros(n)
    t["dec"] = np.zeros(n)
    t["redshift"] = rng.uniform(0.1, 2.0, n)
    for b, colour in zip(BANDS, [0.9, 0.4, 0.0, -0.2, -0.3, -0.35]):
        t[f"{b}_ab"] = r + colour + rng.normal(0, 0.05, n)
    bulge = rng.uniform(0.0, 0.5, n)
    t["fluxnorm_bulge"] = bulge
    t["fluxnorm_disk"] = 1.0 - bulge
    t["fluxnorm_agn"] = np.zeros(n)
    a = rng.uniform(0.3, 1.0, n)
    q = rng.uniform(0.4, 1.0, n)
    t["a_d"], t["b_d"] = a, a * q
    t["a_b"], t["b_b"] = 0.5 * a, 0.5 * a * q
    pa = rng.uniform(0.0, 180.0, n)
    t["pa_disk"], t["pa_bulge"] = pa, pa
    return t


class PlanTestCase(unittest.TestCase):
    def test_isolated_plans_are_centred(self):
        plans = plan_isolated(np.arange(5))
        self.assertEqual([int(p.rows[0]) for p in plans], list(range(5)))
        for p in plans:
            self.assertEqual((p.dx[0], p.dy[0]), (0.0, 0.0))

    def test_blended_plans_box_counts_and_distinct_pixels(self):
        rng = np.random.default_rng(1)
        plans = plan_blended(np.arange(300), rng)
        self.assertEqual(sum(len(p) for p in plans), 300)
        counts = np.array([len(p) for p in plans[:-1]])
        self.assertTrue(set(np.unique(counts)) <= {1, 2, 3})
        self.assertEqual(set(np.unique(counts)), {1, 2, 3})
        for p in plans:
            self.assertTrue(np.all((p.dx >= -10) & (p.dx <= 9) & (p.dy >= -10) & (p.dy <= 9)))
            self.assertEqual(len({(x, y) for x, y in zip(p.dx, p.dy)}), len(p))

    def test_test_field_rules(self):
        rng = np.random.default_rng(2)
        plans = plan_test_fields(np.arange(2000), 60, rng)
        rows = np.concatenate([p.rows for p in plans])
        self.assertEqual(len(rows), len(np.unique(rows)))  # each galaxy used once
        for p in plans:
            self.assertTrue(12 <= len(p) <= 20)
            # centres in the inner 150x150 pixels of the field, one galaxy per pixel
            self.assertTrue(np.all((p.dx >= -75) & (p.dx < 75) & (p.dy >= -75) & (p.dy < 75)))
            self.assertEqual(len({(x, y) for x, y in zip(p.dx, p.dy)}), len(p))
        self.assertEqual({len(p) for p in plans}, set(range(12, 21)))

    def test_subpixel_offsets_stay_in_their_pixel(self):
        plans = plan_test_fields(np.arange(500), 10, np.random.default_rng(3), subpixel=True)
        for p in plans:
            pix = {(int(np.round(x)), int(np.round(y))) for x, y in zip(p.dx, p.dy)}
            self.assertEqual(len(pix), len(p))
            self.assertTrue(np.any(p.dx != np.round(p.dx)))

    def test_too_few_galaxies(self):
        with self.assertRaisesRegex(MadnessValueError, "test split"):
            plan_test_fields(np.arange(30), 5, np.random.default_rng(0))
        with self.assertRaises(MadnessValueError):
            plan_blended(np.arange(10), np.random.default_rng(0), min_galaxies=3, max_galaxies=2)


class DrawTestCase(unittest.TestCase):
    def test_seed_hand_off_is_a_python_int(self):
        # BTK passes generate_state(1) to GalSim, which refuses arrays with numpy >= 2.4.
        seed = _ScalarSeed(np.random.SeedSequence(5)).generate_state(1)
        self.assertIsInstance(seed, int)
        self.assertEqual(seed, int(np.random.SeedSequence(5).generate_state(1)[0]))
        self.assertEqual(_ScalarSeed(np.random.SeedSequence(5)).generate_state(3).shape, (3,))

    def test_stamp_size_rounding(self):
        # int(205 * 0.2 / 0.2) is 204 in floating point; the stamp helper must give 205.
        for n in (45, 65, 205, 301):
            self.assertEqual(int(stamp_arcsec(n, 0.2) / 0.2), n)

    def test_draw_positions_fluxes_and_noise(self):
        table = catsim_table(4, seed=4)
        plans = [BlendPlan(np.array([0, 1]), np.array([0.0, 7.0]), np.array([0.0, -5.0]))]
        blends, isolated, catalogs = draw_planned_blends(table, plans, 45, seed=3)
        self.assertEqual(blends.shape, (1, 6, 45, 45))
        self.assertEqual(isolated.shape, (1, 2, 6, 45, 45))
        self.assertAlmostEqual(float(catalogs[0]["x_peak"][1]), 22 + 7.0, places=4)
        r = 2
        y, x = np.unravel_index(np.argmax(isolated[0, 1, r]), (45, 45))
        self.assertEqual((y, x), (22 - 5, 22 + 7))
        # isolated flux ~ catalogue magnitude (a little is lost outside the stamp)
        conditions = LsstConditions.from_surveycodex()
        expected = conditions.counts(table["r_ab"][0], "r")
        self.assertGreater(isolated[0, 0, r].sum(), 0.9 * expected)
        self.assertLessEqual(isolated[0, 0, r].sum(), 1.0001 * expected)
        # noise: sky-subtracted Poisson noise with the sky level's variance
        noise = blends[0] - isolated[0].sum(axis=0)
        for b, band in enumerate(BANDS):
            sky = conditions.sky_level(band)
            corner = noise[b, :8, :8]
            self.assertLess(abs(corner.std() / np.sqrt(sky) - 1.0), 0.35)
        again = draw_planned_blends(table, plans, 45, seed=3)[0]
        np.testing.assert_array_equal(blends, again)
        other = draw_planned_blends(table, plans, 45, seed=4)[0]
        self.assertFalse(np.array_equal(blends, other))

    def test_knots(self):
        """``knots`` moves that share of each disc's flux into GalSim's random knots: the total
        flux is BTK's (its own drawing of the same galaxy is the oracle), the galaxy is no longer
        symmetric under a rotation by 180 degrees where BTK's is, every band and the isolated
        truth hold the same knots, the draw repeats, and a fraction outside [0, 1] is refused."""
        table = catsim_table(3, seed=6)
        plans = [BlendPlan(np.array([0]), np.zeros(1), np.zeros(1))]
        _, plain, _ = draw_planned_blends(table, plans, 65, seed=3, noise="none")
        _, knotty, _ = draw_planned_blends(table, plans, 65, seed=3, noise="none", knots=0.5)
        plain, knotty = plain[0, 0].astype(np.float64), knotty[0, 0].astype(np.float64)
        np.testing.assert_allclose(knotty.sum(axis=(1, 2)), plain.sum(axis=(1, 2)), rtol=0.01)

        def asymmetry(image):
            return ((image - image[::-1, ::-1]) ** 2).sum() / (2 * (image**2).sum())

        r = 2
        self.assertLess(asymmetry(plain[r]), 1e-8)
        self.assertGreater(asymmetry(knotty[r]), 1e3 * max(asymmetry(plain[r]), 1e-10))
        # The same knots in g and i: their departures from the smooth galaxy agree in shape.
        g, i = (knotty[b] - plain[b] * knotty[b].sum() / plain[b].sum() for b in (1, 3))
        self.assertGreater(np.corrcoef(g.ravel(), i.ravel())[0, 1], 0.9)
        again = draw_planned_blends(table, plans, 65, seed=3, noise="none", knots=0.5)[1][0, 0]
        np.testing.assert_array_equal(again, knotty.astype(np.float32))
        for bad in (-0.1, 1.5):
            with self.assertRaisesRegex(MadnessValueError, "fraction"):
                draw_planned_blends(table, plans, 65, seed=3, knots=bad)

    def test_plan_outside_stamp(self):
        with self.assertRaisesRegex(MadnessValueError, "outside"):
            draw_planned_blends(catsim_table(2), [BlendPlan(np.array([0]), np.array([30.0]), np.zeros(1))],
                                45, seed=0)


class DatasetTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="madness-sims-"))
        cls.table = catsim_table(160, seed=7)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_isolated(self):
        data = simulate_dataset("isolated", self.table, self.tmp / "iso", n=30, seed=1,
                                config=IsolatedSimsConfig(shard_size=12), progress=False)
        self.assertEqual(len(data.manifest.shards), 3)
        images, truth = data.load("images", "truth")
        self.assertEqual(images.shape, (30, 6, 45, 45))
        self.assertEqual(images.dtype, np.float32)
        catalog = data.catalog()
        self.assertEqual(len(np.unique(catalog["catalog_index"])), 30)
        np.testing.assert_array_equal(catalog["galtileid"], self.table["galtileid"][catalog["catalog_index"]])
        peaks = np.argmax(truth[:, 2].reshape(30, -1), axis=1)
        np.testing.assert_array_equal(peaks, np.full(30, 22 * 45 + 22))
        np.testing.assert_array_equal(catalog["x_peak"], 22.0)
        self.assertGreater(data.manifest.info["bytes_per_10k_items"], 0)

    def test_blended(self):
        data = simulate_dataset("blended", self.table, self.tmp / "bl", n=40, seed=1,
                                config=BlendedSimsConfig(shard_size=15), progress=False)
        images, truth = data.load("images", "truth")
        catalog = data.catalog()
        self.assertEqual(images.shape, (40, 6, 45, 45))
        self.assertEqual(len(np.unique(catalog["catalog_index"])), 40)
        # the truth is the central galaxy alone, at the centre
        peaks = np.argmax(truth[:, 2].reshape(40, -1), axis=1)
        np.testing.assert_array_equal(peaks, np.full(40, 22 * 45 + 22))
        # stamps of one field: as many as its galaxies; some stamps hold neighbours
        fields, counts = np.unique(catalog["field_id"], return_counts=True)
        for field, count in zip(fields, counts):
            self.assertTrue(np.all(catalog["n_in_field"][catalog["field_id"] == field] == count))
        self.assertTrue(set(counts) <= {1, 2, 3})
        noise_free_excess = (images - truth)[catalog["n_in_field"] > 1].sum()
        self.assertGreater(noise_free_excess, 0)

    def test_testfields(self):
        config = TestFieldsConfig(shard_size=2)
        data = simulate_dataset("testfields", self.table, self.tmp / "tf", n=5, seed=2, split="test",
                                config=config, progress=False)
        fields, noiseless, truth, yx0 = data.load("fields", "noiseless", "truth", "truth_yx0")
        catalog = data.catalog()
        self.assertEqual(fields.shape, (5, 6, 205, 205))
        self.assertEqual(truth.shape, (len(catalog), 6, 65, 65))
        for f in range(5):
            sel = catalog["field_id"] == f
            self.assertTrue(12 <= sel.sum() <= 20)
            x, y = catalog["x_peak"][sel], catalog["y_peak"][sel]
            self.assertTrue(np.all((x >= 27) & (x < 177) & (y >= 27) & (y < 177)))
            self.assertEqual(len({(a, b) for a, b in zip(x, y)}), sel.sum())
            # the stored windows rebuild the noiseless field where they hold all the flux
            rebuilt = np.zeros((6, 205 + 128, 205 + 128), dtype=np.float64)
            for k in np.flatnonzero(sel):
                y0, x0 = yx0[k] + 64
                rebuilt[:, y0:y0 + 65, x0:x0 + 65] += truth[k]
            rebuilt = rebuilt[:, 64:-64, 64:-64]
            scale = noiseless[f].max()
            if np.all(catalog["truth_flux_fraction_r"][sel] > 0.999):
                np.testing.assert_allclose(rebuilt, noiseless[f], atol=2e-3 * scale)
        beta = catalog["blendedness_r"]
        self.assertTrue(np.all((beta >= 0) & (beta <= 1)))
        self.assertGreater(beta.max(), 0.01)
        self.assertTrue(np.all(catalog["truth_flux_fraction_r"] > 0.5))
        # the evaluation's truth adds the light beyond the windows: the galaxies add up to the
        # noiseless field everywhere, and no galaxy loses its window's light
        from lsst.meas.madness.evaluation import iter_test_fields

        seen = 0
        for field in iter_test_fields(self.tmp / "tf"):
            seen += 1
            np.testing.assert_allclose(field.isolated.sum(axis=0), noiseless[field.field_id], rtol=1e-5,
                                       atol=1e-6 * noiseless[field.field_id].max())
            sel = np.flatnonzero(catalog["field_id"] == field.field_id)
            window = truth[sel].sum(axis=(-2, -1))
            np.testing.assert_array_less(window * (1 - 1e-5), field.isolated.sum(axis=(-2, -1)) + 1e-3)
        self.assertEqual(seen, 5)

    def test_deterministic_and_independent_of_workers(self):
        config = IsolatedSimsConfig(shard_size=5)
        a = simulate_dataset("isolated", self.table, self.tmp / "det-a", n=12, seed=3, config=config,
                             progress=False)
        b = simulate_dataset("isolated", self.table, self.tmp / "det-b", n=12, seed=3, config=config,
                             workers=2, progress=False)
        c = simulate_dataset("isolated", self.table, self.tmp / "det-c", n=12, seed=4, config=config,
                             progress=False)
        self.assertEqual([s["sha256"] for s in a.manifest.shards], [s["sha256"] for s in b.manifest.shards])
        np.testing.assert_array_equal(a.load("images"), b.load("images"))
        self.assertFalse(np.array_equal(a.load("images"), c.load("images")))
        # another split with the same seed gets other galaxies and other noise
        d = simulate_dataset("isolated", self.table, self.tmp / "det-d", n=12, seed=3, config=config,
                             split="validation", progress=False)
        self.assertFalse(np.array_equal(a.catalog()["catalog_index"], d.catalog()["catalog_index"]))

    def test_resume_after_interruption(self):
        config = BlendedSimsConfig(shard_size=6)
        reference = simulate_dataset("blended", self.table, self.tmp / "ref", n=30, seed=5, config=config,
                                     progress=False)
        real = datasets_module._make_shard
        calls = []

        def dies_on_third(*args):
            calls.append(args[1])
            if len(calls) == 3:
                raise KeyboardInterrupt("killed")
            return real(*args)

        target = self.tmp / "resumed"
        with mock.patch.object(datasets_module, "_make_shard", dies_on_third):
            with self.assertRaises(KeyboardInterrupt):
                simulate_dataset("blended", self.table, target, n=30, seed=5, config=config, progress=False)
        manifest = json.loads((target / "manifest.json").read_text())
        self.assertEqual(len(manifest["shards"]), 2)
        self.assertFalse(manifest["complete"])
        redone = []
        with mock.patch.object(datasets_module, "_make_shard", lambda *a: redone.append(a[1]) or real(*a)):
            resumed = simulate_dataset("blended", self.table, target, n=30, seed=5, config=config,
                                       progress=False)
        self.assertNotIn(0, redone)
        self.assertNotIn(1, redone)
        self.assertTrue(resumed.manifest.complete)
        self.assertEqual([s["sha256"] for s in resumed.manifest.shards],
                         [s["sha256"] for s in reference.manifest.shards])
        # a different request in the same directory is refused, not mixed in
        with self.assertRaisesRegex(MadnessValueError, "another dataset"):
            simulate_dataset("blended", self.table, target, n=30, seed=6, config=config, progress=False)
        reread = SimulatedDataset(target, verify=True)
        self.assertEqual(len(reread), 30)
        np.testing.assert_array_equal(reread.load("images"), reference.load("images"))

    def test_bad_requests(self):
        with self.assertRaisesRegex(MadnessValueError, "lacks the CatSim columns"):
            simulate_dataset("isolated", self.table[["ra", "dec"]], self.tmp / "bad", progress=False)
        with self.assertRaisesRegex(MadnessValueError, "Unknown dataset kind"):
            simulate_dataset("fields", self.table, self.tmp / "bad", progress=False)
        with self.assertRaisesRegex(MadnessValueError, "needs a"):
            simulate_dataset("isolated", self.table, self.tmp / "bad", config=TestFieldsConfig(), progress=False)
        with self.assertRaisesRegex(MadnessValueError, "galaxies"):
            simulate_dataset("isolated", self.table, self.tmp / "bad", n=10_000, progress=False)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
