"""``madness simulate``: a tiny run of every dataset kind through the command line.

Checks shapes, the SNR cut, disjoint splits, the TestFields centre rules, determinism for a
seed, and resuming after the process is killed mid-run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import lsst.utils.tests
import numpy as np
from astropy.table import Table

from lsst.meas.madness.cli import main
from lsst.meas.madness.simulation import SimulatedDataset
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

AREA = "0.004"
ARGS = ["--area", AREA, "--seed", "11", "--n-train", "40", "--n-validation", "16", "--n-test-fields", "3",
        "--shard-size", "10", "--fields-per-shard", "1", "--no-progress"]


def _shas(directory: Path) -> dict[str, list[str]]:
    out = {}
    for manifest in sorted(directory.glob("*/manifest.json")):
        data = json.loads(manifest.read_text())
        out[manifest.parent.name] = [s["sha256"] for s in data["shards"]]
    return out


class SimulateCliTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="madness-simulate-"))
        cls.suite = cls.tmp / "suite"
        assert main(["simulate", "datasets", "--output", str(cls.suite), *ARGS]) == 0

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_layout_and_shapes(self):
        for name in ("isolated-train", "isolated-validation", "blended-train", "blended-validation",
                     "testfields-test"):
            self.assertTrue((self.suite / name / "manifest.json").exists(), name)
        self.assertTrue((self.suite / "examples.png").stat().st_size > 10_000)
        iso = SimulatedDataset(self.suite / "isolated-train", verify=True)
        images, truth = iso.load("images", "truth")
        self.assertEqual(images.shape, (40, 6, 45, 45))
        self.assertEqual(truth.shape, (40, 6, 45, 45))
        self.assertEqual(len(iso.manifest.shards), 4)
        self.assertEqual(SimulatedDataset(self.suite / "blended-validation").load("images").shape, (16, 6, 45, 45))
        fields = SimulatedDataset(self.suite / "testfields-test").load("fields")
        self.assertEqual(fields.shape, (3, 6, 205, 205))
        summary = json.loads((self.suite / "suite.json").read_text())
        self.assertEqual(summary["datasets"]["isolated-train"]["items"], 40)
        self.assertGreater(summary["datasets"]["isolated-train"]["last_run"]["items_per_second"], 0)

    def test_snr_cut_and_disjoint_splits(self):
        catalog = Table.read(self.suite / "catalog.fits")
        self.assertTrue(np.all(catalog["snr_r"] >= 10.0))
        summary = json.loads((self.suite / "suite.json").read_text())
        self.assertLess(summary["catalog"]["n_after_snr_cut"], summary["catalog"]["n_input"])
        rows = {}
        for name in ("isolated-train", "isolated-validation", "blended-train", "blended-validation",
                     "testfields-test"):
            table = SimulatedDataset(self.suite / name).catalog()
            self.assertTrue(np.all(table["snr_r"] >= 10.0), name)
            split = name.split("-")[1]
            self.assertTrue(np.all(table["split"] == split), name)
            # the dataset's rows are those galaxies of catalog.fits
            np.testing.assert_allclose(table["r_ab"], catalog["r_ab"][table["catalog_row"]])
            rows.setdefault(split, set()).update(int(r) for r in table["catalog_row"])
        self.assertFalse(rows["train"] & rows["validation"])
        self.assertFalse(rows["train"] & rows["test"])
        self.assertFalse(rows["validation"] & rows["test"])

    def test_testfield_centre_rules(self):
        table = SimulatedDataset(self.suite / "testfields-test").catalog()
        for field in np.unique(table["field_id"]):
            sel = table[table["field_id"] == field]
            self.assertTrue(12 <= len(sel) <= 20)
            self.assertTrue(np.all((sel["x_peak"] >= 27) & (sel["x_peak"] < 177)))
            self.assertTrue(np.all((sel["y_peak"] >= 27) & (sel["y_peak"] < 177)))
            pixels = {(int(x), int(y)) for x, y in zip(sel["x_peak"], sel["y_peak"])}
            self.assertEqual(len(pixels), len(sel))

    def test_deterministic_and_resumes_after_kill(self):
        reference = _shas(self.suite)
        # Same seed, new directory: identical shards. Kill it once the first shards are written.
        target = self.tmp / "killed"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "lsst.meas.madness.cli", "simulate", "datasets", "--output", str(target),
               *ARGS]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        manifest = target / "isolated-train" / "manifest.json"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if manifest.exists() and json.loads(manifest.read_text())["shards"]:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = _shas(target)
        done = sum(len(v) for v in partial.values())
        self.assertGreater(done, 0)
        self.assertLess(done, sum(len(v) for v in reference.values()))
        self.assertEqual(main(["simulate", "datasets", "--output", str(target), *ARGS]), 0)
        self.assertEqual(_shas(target), reference)
        # another seed gives other data
        other = self.tmp / "other-seed"
        args = list(ARGS)
        args[args.index("--seed") + 1] = "12"
        main(["simulate", "datasets", "--output", str(other), "--kinds", "isolated", *args])
        self.assertNotEqual(_shas(other)["isolated-train"], reference["isolated-train"])

    def test_catalog_command(self):
        out = self.tmp / "cat.fits"
        self.assertEqual(main(["simulate", "catalog", "--area", "0.001", "--seed", "3", "--min-snr", "10",
                               "--output", str(out)]), 0)
        table = Table.read(out)
        self.assertGreater(len(table), 10)
        self.assertTrue(np.all(table["snr_r"] >= 10))
        # the saved catalogue drives `simulate datasets --catalog` too
        suite = self.tmp / "from-file"
        self.assertEqual(main(["simulate", "datasets", "--output", str(suite), "--catalog", str(out),
                               "--kinds", "isolated", "--n-train", "5", "--n-validation", "3",
                               "--no-progress"]), 0)
        self.assertEqual(len(SimulatedDataset(suite / "isolated-train")), 5)

    def test_catalog_population_parameters(self):
        # Another population from the same seed: doubling size_scale (0.9 -> 1.8) doubles every
        # component's axes and leaves the rest of the galaxy alone.
        base, big = self.tmp / "base.fits", self.tmp / "big.fits"
        common = ["simulate", "catalog", "--area", "0.0005", "--seed", "5"]
        self.assertEqual(main([*common, "--output", str(base)]), 0)
        self.assertEqual(main([*common, "--output", str(big), "--param", "size_scale=1.8",
                               "--param", "blue_ellipticity=(0.3, 3.5)"]), 0)
        a, b = Table.read(base), Table.read(big)
        self.assertEqual(len(a), len(b))
        np.testing.assert_array_equal(a["r_ab"], b["r_ab"])
        large = a["a_d"] > 0.05
        self.assertGreater(large.sum(), 10)
        np.testing.assert_allclose(b["a_d"][large] / a["a_d"][large], 2.0, rtol=1e-5)
        for bad in (["--param", "size_scale"], ["--param", "no_such_field=1"], ["--param", "size_scale=-1"]):
            with self.assertRaises(SystemExit):
                main([*common, "--output", str(self.tmp / "bad.fits"), *bad])


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    # SkyPy's kcorrect templates are read once and kept open by the catalogue generator's cache.
    ignore_regexps = [r"skypy/data/kcorrect/"]


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
