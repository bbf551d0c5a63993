"""The demo (``madness demo``): a simulated patch through pipelines/madness.yaml in a local butler.

The end-to-end test runs the real demo (BTK simulation, SQLite butler, ``pipetask run`` in a
subprocess, scoring, figure) on a tiny patch; ``bps/madness-parsl.yaml`` is checked with
``bps prepare`` (a submit dry run) when ctrl_bps and its Parsl plugin are installed.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import unittest
import unittest.mock
from pathlib import Path

import lsst.utils.tests
import numpy as np
from lsst.meas.madness.localrepo import (
    COADD_DATASET,
    SKYMAP,
    TRUTH_DATASET,
    create_local_repo,
    ingest_patch,
    simulate_patch,
)
from lsst.meas.madness.errors import MadnessValueError
from lsst.meas.madness.skymap import SimSkyMap
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

ROOT = Path(__file__).resolve().parent.parent
BPS_YAML = ROOT / "bps" / "madness-parsl.yaml"


def _bundle():
    """The packaged default bundle (what the demo uses) when it is installed, else the test model."""
    from lsst.meas.madness.io.bundle import METADATA_FILE, default_bundle_path

    if (default_bundle_path() / METADATA_FILE).is_file():
        return None
    from utils import quick_bundle_path

    return quick_bundle_path()


def _bps_missing() -> str | None:
    import importlib.util

    for module in ("lsst.ctrl.bps", "lsst.ctrl.bps.parsl", "parsl"):
        if importlib.util.find_spec(module) is None:
            return (f"{module} is not installed: bps scale-out is optional (pip install "
                    "lsst-ctrl-bps lsst-ctrl-bps-parsl parsl to test it)")
    return None


class SimulatePatchTestCase(lsst.utils.tests.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.patch = simulate_patch(5, size=71, n_galaxies=5, yx0=(100, 300))

    def test_deterministic_and_consistent(self):
        patch = self.patch
        again = simulate_patch(5, size=71, n_galaxies=5, yx0=(100, 300))
        np.testing.assert_array_equal(patch.image, again.image)
        self.assertEqual(patch.bands, ("u", "g", "r", "i", "z", "y"))
        self.assertEqual(patch.image.shape, (6, 71, 71))
        self.assertEqual(patch.isolated.shape, (5, 6, 71, 71))
        truth = patch.truth
        self.assertEqual(len(truth), 5)
        self.assertTrue((truth["snr_r"] >= 10).all())
        # Centres in the tract frame, inside the margin, on the galaxies' brightest pixels (roughly).
        x, y = np.asarray(truth["x"]) - 300, np.asarray(truth["y"]) - 100
        self.assertTrue(((x >= 8) & (x <= 62) & (y >= 8) & (y <= 62)).all())
        np.testing.assert_allclose(truth["flux_r"], patch.isolated[:, 2].sum(axis=(1, 2)), rtol=1e-5)
        # The noise is what the variance plane says.
        chi = (patch.image - patch.isolated.sum(0)) / np.sqrt(patch.variance)
        self.assertAlmostEqual(float(chi.std()), 1.0, delta=0.05)
        self.assertTrue(((truth["blendedness_r"] >= 0) & (truth["blendedness_r"] <= 1)).all())

    def test_score_without_true_flux(self):
        """A matched galaxy with no true flux in a band is left out of that band's dF/F means.

        Before, its relative error was infinite and so was the band's mean (the u band of the
        4001 x 4001 benchmark).
        """
        from astropy.table import Table
        from lsst.meas.madness.demo import score_patch
        from lsst.meas.madness.tasks.measurement import MadnessMeasurementConfig

        stamps = list(self.patch.stamps)
        stamps[0] = stamps[0].copy()
        stamps[0][0] = 0.0  # galaxy 0 is dark in u
        patch = dataclasses.replace(self.patch, stamps=tuple(stamps))
        n = len(patch.truth)
        objects = Table({"id": np.arange(1, n + 1), "x": np.asarray(patch.truth["x"], float),
                         "y": np.asarray(patch.truth["y"], float), "detect_isPrimary": np.ones(n, bool),
                         "ap_radius_flag": np.ones(n, bool), "shape_a": np.ones(n), "shape_b": np.ones(n),
                         "shape_theta": np.zeros(n), "kron_radius": np.ones(n)})
        for b in patch.bands:
            objects[f"{b}_apFlux"] = np.zeros(n)
        catalog = Table({"id": objects["id"], "parent": np.zeros(n, int), "deblend_nChild": np.zeros(n, int),
                         "deblend_skipped": np.zeros(n, bool), "deblend_failed": np.zeros(n, bool)})
        config = MadnessMeasurementConfig()
        first = score_patch(patch, catalog, objects, config)
        # Every measured flux 10% above its truth: abs(dF/F) = 0.1 wherever a true flux exists.
        for b in patch.bands:
            objects[f"{b}_apFlux"] = [1.1 * o["flux_true"][b] for o in first["objects"]]
        score = score_patch(patch, catalog, objects, config)
        self.assertEqual(score["detection"]["n_matched"], n)
        self.assertEqual(score["n_without_true_flux"]["u"], 1)
        self.assertEqual(score["n_without_true_flux"]["r"], 0)
        for b in patch.bands:
            self.assertAlmostEqual(score["mean_abs_dF_over_F"]["all_matched"]["deblended"][b], 0.1, places=5)
            self.assertAlmostEqual(score["mean_abs_dF_over_F"]["all_truth"]["deblended"][b], 0.1, places=5)

    def test_subpixel_positions(self):
        """``subpixel=True`` moves the same galaxies off their pixel centres; BTK draws them there."""
        from lsst.meas.madness.engine.geometry import round_half_up

        sub = simulate_patch(5, size=71, n_galaxies=5, yx0=(100, 300), subpixel=True)
        x_true, y_true = np.asarray(sub.truth["x_true"]), np.asarray(sub.truth["y_true"])
        offsets = np.concatenate([x_true - sub.truth["x"], y_true - sub.truth["y"]])
        self.assertTrue(((offsets >= -0.5) & (offsets < 0.5)).all())
        self.assertGreater(np.abs(offsets).min(), 0.0)
        # Same galaxies on the same pixels as the default patch, which stays on pixel centres.
        np.testing.assert_array_equal(round_half_up(x_true), self.patch.truth["x"])
        np.testing.assert_array_equal(round_half_up(y_true), self.patch.truth["y"])
        np.testing.assert_allclose(self.patch.truth["x_true"], self.patch.truth["x"], atol=1e-6)
        # The drawn galaxies sit at the float centres: each isolated image's centroid moved by the
        # offset from the on-pixel drawing of the same galaxy.
        yy, xx = np.mgrid[:71, :71]

        def centroids(patch):
            img = patch.isolated[:, 2]
            total = img.sum(axis=(1, 2))
            return (img * xx).sum(axis=(1, 2)) / total, (img * yy).sum(axis=(1, 2)) / total

        (cx0, cy0), (cx1, cy1) = centroids(self.patch), centroids(sub)
        np.testing.assert_allclose(cx1 - cx0, x_true - self.patch.truth["x"], atol=0.02)
        np.testing.assert_allclose(cy1 - cy0, y_true - self.patch.truth["y"], atol=0.02)

    def test_knotty_discs(self):
        """``knots`` moves part of each disc's light into GalSim's random knots, keeping its flux."""
        from lsst.meas.madness.errors import MadnessValueError

        knotty = simulate_patch(5, size=71, n_galaxies=5, yx0=(100, 300), knots=0.3)
        np.testing.assert_array_equal(knotty.truth["x"], self.patch.truth["x"])
        for k in range(5):
            smooth, knotted = self.patch.isolated_image(k), knotty.isolated_image(k)
            # GalSim's random knots follow the disc's profile: the same flux in the patch (within
            # what either drawing folds past its stamp) ...
            np.testing.assert_allclose(knotted.sum(axis=(1, 2)), smooth.sum(axis=(1, 2)), rtol=5e-3)
            # ... but not the same light: a tenth of the r band's peak moves into the knots.
            r = knotted[2] - smooth[2]
            self.assertGreater(np.abs(r).max(), 0.01 * smooth[2].max())  # 3-11% measured
        with self.assertRaises(MadnessValueError):
            simulate_patch(5, size=71, n_galaxies=5, knots=1.5)

    def test_stamps_match_btk_full_size(self):
        """Stamps pasted into the patch equal BTK drawing every galaxy at full patch size (the oracle)."""
        from lsst.meas.madness.demo import _aperture_fluxes_per_truth
        from lsst.meas.madness.localrepo import plan_patch
        from lsst.meas.madness.simulation.btk_draw import BlendPlan, add_btk_noise, draw_planned_blends
        from lsst.meas.madness.tasks import MadnessMeasurementConfig

        patch = self.patch
        catalog, rows, centers = plan_patch(5, size=71, n_galaxies=5)
        plan = BlendPlan(rows, centers[:, 0] - 35, centers[:, 1] - 35)
        blends, isolated, _ = draw_planned_blends(catalog, [plan], 71, seed=5)
        oracle = isolated[0, :5]
        for k in range(5):
            # Past a stamp GalSim folds < 1e-4 of the peak; the stamps here cover the patch.
            np.testing.assert_allclose(patch.isolated_image(k), oracle[k], rtol=0, atol=1e-4 * oracle[k].max())
        self.assertLess(max(s.shape[-1] for s in patch.stamps), 72)
        # The total flux lacks what lies past each stamp (GalSim's folding threshold, < 0.5%): 0.11% here.
        np.testing.assert_allclose(patch.truth["flux_r"], oracle[:, 2].sum(axis=(1, 2)), rtol=2e-3)
        # The noise is BTK's: the same seeds on the same noiseless image give BTK's noisy image.
        np.testing.assert_allclose(add_btk_noise(oracle.astype(np.float64).sum(axis=0), 5), blends[0],
                                   rtol=0, atol=1e-3)
        # The demo's truth fluxes (the galaxy's own image in an object's aperture) are the same.
        objects = {"x": np.asarray(patch.truth["x"], float) + 0.3, "y": np.asarray(patch.truth["y"], float),
                   "shape_a": np.full(5, 3.0), "shape_b": np.full(5, 2.0), "shape_theta": np.full(5, 0.4),
                   "kron_radius": np.full(5, 2.5), "ap_radius_flag": np.array([0, 0, 1, 0, 0], bool)}
        config = MadnessMeasurementConfig()
        new = _aperture_fluxes_per_truth(patch, objects, np.arange(5), np.arange(5), config)
        old_patch = dataclasses.replace(patch, stamps=tuple(oracle), stamp_yx0=np.tile(patch.yx0, (5, 1)))
        old = _aperture_fluxes_per_truth(old_patch, objects, np.arange(5), np.arange(5), config)
        np.testing.assert_allclose(new, old, rtol=1e-5)

    def test_cutout(self):
        """A cut-out keeps the pixels, and the galaxies centred in it with their stamps clipped."""
        box = (110, 320, 150, 360)
        cut = self.patch.cutout(box)
        np.testing.assert_array_equal(cut.image, self.patch.image[:, 10:50, 20:60])
        inside = [(320 <= x < 360) and (110 <= y < 150) for x, y in zip(self.patch.truth["x"], self.patch.truth["y"])]
        self.assertEqual(cut.truth["truth_id"].tolist(), np.flatnonzero(inside).tolist())
        for k, t in enumerate(cut.truth["truth_id"]):
            np.testing.assert_array_equal(cut.isolated_image(k), self.patch.isolated_image(t)[:, 10:50, 20:60])
        with self.assertRaises(MadnessValueError):
            self.patch.cutout((90, 300, 150, 360))

    def test_repo_round_trip(self):
        from lsst.daf.butler import Butler

        with tempfile.TemporaryDirectory() as tmp:
            root = os.path.join(tmp, "repo")
            skymap = SimSkyMap.from_patch_size(71)
            create_local_repo(root, skymap, n_patches=2)
            create_local_repo(root, skymap, n_patches=3)  # idempotent, adds a patch
            with self.assertRaises(MadnessValueError):  # one geometry per skymap name
                create_local_repo(root, SimSkyMap.from_patch_size(71, patch_border=5))
            ingest_patch(root, self.patch, 2, "sim")
            with Butler.from_config(root, collections=["sim"]) as butler:
                self.assertEqual(len(butler.query_datasets(COADD_DATASET)), 6)
                coadd = butler.get(COADD_DATASET, skymap=SKYMAP, tract=0, patch=2, band="i")
                np.testing.assert_array_equal(coadd.image.array, self.patch.image[3])
                self.assertEqual((coadd.bbox.y.start, coadd.bbox.x.start), (100, 300))
                truth = butler.get(TRUTH_DATASET, skymap=SKYMAP, tract=0, patch=2)
                self.assertEqual(truth["truth_id"].tolist(), list(range(5)))


class DemoTestCase(lsst.utils.tests.TestCase):
    """``run_demo`` end to end on a tiny patch (the packaged model, fewer MAP steps)."""

    def test_demo_end_to_end(self):
        from lsst.meas.madness.demo import run_demo

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "demo"
            lines = []
            # min_snr=20: this tiny patch's galaxies as before the demo's default became the paper's
            # 10, a scene with a blend the detection splits.
            summary = run_demo(out, seed=1, size=101, n_galaxies=6, min_snr=20.0, bundle=_bundle(),
                               config=["deblend:maxIter=40", "deblend:minIter=10"], echo=lines.append)
            for name in ("demo.png", "summary.json", "summary.md", "pipetask.log", "repo/butler.yaml"):
                self.assertTrue((out / name).is_file(), name)
            self.assertEqual(json.loads((out / "summary.json").read_text())["seed"], 1)
            self.assertTrue(any(line.startswith("[demo] running: pipetask") for line in lines))
            self.assertTrue(any("[pipetask]" in line for line in lines))
            det = summary["detection"]
            self.assertEqual(det["n_truth"], 6)
            self.assertGreaterEqual(det["n_parents"], 1)
            self.assertGreaterEqual(det["n_matched"], 1)
            self.assertEqual(det["n_matched"] + det["n_missed"], 6)
            self.assertEqual(det["n_failed_parents"], 0)
            self.assertEqual(len(summary["objects"]), 6)
            # Every truth galaxy is scored: completeness and purity, and a missed galaxy counts as 1.
            self.assertAlmostEqual(det["completeness"], det["n_matched"] / 6)
            self.assertAlmostEqual(det["purity"], det["n_matched"] / det["n_primary_objects"])
            self.assertEqual(summary["patch"]["min_snr_r"], 20.0)
            import inspect

            self.assertEqual(inspect.signature(run_demo).parameters["min_snr"].default, 10.0)  # the paper's cut
            every = summary["mean_abs_dF_over_F"]["all_truth"]["deblended"]["r"]
            matched_rel = [abs(o["flux_deblended"]["r"] / o["flux_true"]["r"] - 1) for o in summary["objects"]
                           if o["matched"]]
            self.assertAlmostEqual(every, (sum(matched_rel) + det["n_missed"]) / 6, places=6)
            self.assertIn("Completeness", (out / "summary.md").read_text())
            self.assertTrue(any("completeness" in line and "purity" in line for line in lines))
            matched = [o for o in summary["objects"] if o["matched"]]
            for o in matched:
                self.assertLessEqual(o["separation_px"], 3.0)
                self.assertTrue(np.isfinite(o["flux_true"]["r"]) and o["flux_true"]["r"] > 0)
                self.assertTrue(np.isfinite(o["flux_deblended"]["r"]))
            # Without deblending an aperture holds its galaxy's flux plus neighbours' and noise.
            m = summary["mean_abs_dF_over_F"]["all_matched"]
            self.assertTrue(np.isfinite(m["deblended"]["r"]) and np.isfinite(m["no_deblending"]["r"]))
            # On the galaxies that share a parent, MADNESS beats no deblending in flux error.
            self.assertGreaterEqual(det["n_matched_in_blends"], 2)
            blends = summary["mean_abs_dF_over_F"]["in_blends"]
            self.assertLess(blends["deblended"]["r"], blends["no_deblending"]["r"])
            self.assertEqual(summary["deblend_counts"]["n_failed"], 0)
            for key in ("simulate", "butler_setup_ingest", "pipetask_run", "task_deblend", "deblend_fit", "total"):
                self.assertIn(key, summary["timings_s"])
            # The deblend's steps happen inside its quantum.
            steps = sum(v for k, v in summary["timings_s"].items() if k.startswith("deblend_"))
            self.assertLessEqual(steps, summary["timings_s"]["task_deblend"] + 0.1)
            self.assertIn("## Detections vs truth", (out / "summary.md").read_text())


@unittest.skipIf(_bps_missing() is not None, _bps_missing() or "")
class BpsTestCase(lsst.utils.tests.TestCase):
    """bps/madness-parsl.yaml parses, and ``bps prepare`` (submit without running) succeeds."""

    def setUp(self):
        self.env = dict(os.environ)
        self.env["MEAS_MADNESS_DIR"] = str(ROOT)
        self.env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + self.env.get("PATH", "")

    def test_config_parses(self):
        from lsst.ctrl.bps import BpsConfig
        from lsst.utils import doImport

        with unittest.mock.patch.dict(os.environ, {"MEAS_MADNESS_DIR": str(ROOT)}):
            config = BpsConfig(str(BPS_YAML))
            pipeline = Path(os.path.expandvars(config["pipelineYaml"]))
        self.assertEqual(config["wmsServiceClass"], "lsst.ctrl.bps.parsl.ParslService")
        site = config[f".site.{config['computeSite']}"]
        self.assertIsNotNone(doImport(site["class"]))
        self.assertIsNotNone(doImport(config["clusterAlgorithm"]))
        self.assertEqual(pipeline, ROOT / "pipelines" / "madness.yaml")
        self.assertEqual([t.strip() for t in config[".cluster.patch.pipetasks"].split(",")],
                         ["detect", "deblend", "measure"])

    def test_prepare_dry_run(self):
        with tempfile.TemporaryDirectory() as tmp:
            repo = os.path.join(tmp, "repo")
            create_local_repo(repo, SimSkyMap.from_patch_size(71), n_patches=2)
            patch = simulate_patch(5, size=71, n_galaxies=3)
            ingest_patch(repo, patch, 0, "sim/coadds")
            ingest_patch(repo, patch, 1, "sim/coadds")
            self.env["PWD"] = tmp
            proc = subprocess.run(
                [str(Path(sys.executable).parent / "bps"), "prepare", str(BPS_YAML), "-b", repo,
                 "-i", "sim/coadds,skymaps", "-o", "madness/bps-test"],
                capture_output=True, text=True, cwd=tmp, env=self.env, timeout=300,
            )
            self.assertEqual(proc.returncode, 0, proc.stdout[-2000:] + proc.stderr[-3000:])
            submit = Path(tmp) / "submit" / "madness" / "bps-test"
            self.assertTrue(submit.is_dir(), proc.stderr[-2000:])
            self.assertEqual(len(list(submit.rglob("*.qg"))), 1)
            log = proc.stdout + proc.stderr
            # One job per patch (its three quanta in one process), the init job and the final job.
            self.assertIn("ClusteredQuantumGraph contains 2 cluster(s)", log)
            self.assertIn("GenericWorkflow contains 4 job(s) (including final)", log)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    # SkyPy's kcorrect templates (the patch's catalogue) stay open for the life of the process.
    ignore_regexps = [r"skypy/data/kcorrect/"]


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
