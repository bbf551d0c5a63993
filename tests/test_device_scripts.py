"""The scripts that carry a training run to a lent GPU machine and bring its bundle back."""

import hashlib
import json
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import lsst.utils.tests
import numpy as np
import pytest

# Shell scripts and files: nothing here runs a network, so the default Keras backend only.
pytestmark = pytest.mark.one_backend

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ROOT / "python" / "lsst" / "meas" / "madness" / "data" / "bundles" / "lsst-default"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class DeviceBundleTestCase(lsst.utils.tests.TestCase):
    """scripts/device-bundle.sh puts the packaged bundle and a returned decoder together, and
    refuses a result whose networks are not the ones the device wrote."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="madness-device-"))
        self.files = self.tmp / "files"
        self.files.mkdir()
        # What device-train.sh returns: a new decoder, the bundle's metadata, the checksums of
        # every network file of the device's bundle (the others are the packaged parent's).
        rng = np.random.default_rng(3)
        with np.load(PACKAGED / "decoder.weights.000.npz") as arrays:
            decoder = {k: v + rng.normal(0, 1e-3, v.shape).astype(v.dtype) for k, v in arrays.items()}
        np.savez(self.files / "decoder.weights.000.npz", **decoder)
        metadata = json.loads((PACKAGED / "bundle.json").read_text())
        metadata["metadata"]["description"] = "trained on a GPU"
        entry = metadata["files"]["decoder.weights.000.npz"]  # the bundle records its files' checksums
        entry["sha256"] = _sha256(self.files / "decoder.weights.000.npz")
        if "bytes" in entry:
            entry["bytes"] = (self.files / "decoder.weights.000.npz").stat().st_size
        (self.files / "bundle.json").write_text(json.dumps(metadata))
        (self.files / "config.json").write_text("{}")
        (self.files / "vae.csv").write_text("epoch,loss\n0,1.0\n")
        lines = []
        for path in sorted(PACKAGED.glob("*.npz")):
            source = self.files / path.name if path.name.startswith("decoder") else path
            lines.append(f"{_sha256(source)}  /tmp/device-train/run/bundle/{path.name}")
        (self.files / "bundle.sha256").write_text("\n".join(lines) + "\n")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _run(self, files, run):
        return subprocess.run(["bash", "scripts/device-bundle.sh", str(files), str(run)], cwd=ROOT,
                              capture_output=True, text=True)

    def test_assembles_and_checks(self):
        from lsst.meas.madness.io.bundle import ModelBundle

        run = self.tmp / "run"
        done = self._run(self.files, run)
        self.assertEqual(done.returncode, 0, done.stderr)
        bundle = ModelBundle.load(run / "bundle")
        self.assertEqual(bundle.metadata.description, "trained on a GPU")
        parent = ModelBundle.load(PACKAGED)
        for a, b in zip(bundle.encoder.get_weights(), parent.encoder.get_weights()):
            np.testing.assert_array_equal(a, b)
        changed = [not np.array_equal(a, b) for a, b in zip(bundle.decoder.get_weights(), parent.decoder.get_weights())]
        self.assertTrue(any(changed))
        self.assertTrue((run / "logs" / "vae.csv").exists())
        self.assertTrue((run / "config.json").exists())
        # a second assembly into the same run is refused rather than overwriting it
        again = self._run(self.files, run)
        self.assertNotEqual(again.returncode, 0)
        self.assertIn("exists", again.stderr)

    def test_refuses_other_networks(self):
        # a decoder file that is not the one the device trained
        np.savez(self.files / "decoder.weights.000.npz", x=np.zeros(3))
        run = self.tmp / "tampered"
        done = self._run(self.files, run)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("differs", done.stderr)
        self.assertFalse((run / "bundle").exists())
        self.assertEqual(list(self.tmp.glob("tampered.bundle.*")), [])  # no half-made bundle left

    def test_missing_files(self):
        (self.files / "bundle.sha256").unlink()
        done = self._run(self.files, self.tmp / "run")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("bundle.sha256 is missing", done.stderr)


class DeviceStackTestCase(unittest.TestCase):
    def test_missing_package_is_an_error(self):
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run(["bash", "scripts/device-stack.sh", tmp, str(Path(tmp) / "stack.tar.xz")],
                                  cwd=ROOT, capture_output=True, text=True)
            self.assertNotEqual(done.returncode, 0)
            self.assertIn("galsim is not installed", done.stderr)
            self.assertFalse((Path(tmp) / "stack.tar.xz").exists())


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
