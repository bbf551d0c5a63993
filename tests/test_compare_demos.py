"""scripts/compare_demos.py: demo runs scored on the galaxies every run matched (known answers)."""

import importlib.util
import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import lsst.utils.tests
import numpy as np
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_demos.py"


def _load():
    spec = importlib.util.spec_from_file_location("compare_demos", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _summary(fluxes: dict[int, float | None], seed: int = 0) -> dict:
    """A demo summary whose truth galaxies have true flux 100 in every band; None = missed."""
    objects = []
    for t, flux in fluxes.items():
        entry = {"truth_id": t, "matched": flux is not None}
        if flux is not None:
            entry.update(flux_true={"r": 100.0, "i": 100.0}, flux_deblended={"r": flux, "i": 100.0},
                         flux_no_deblending={"r": 2 * flux, "i": 150.0})
        objects.append(entry)
    return {"seed": seed, "bands": ["r", "i"], "objects": objects}


class CompareDemosTestCase(lsst.utils.tests.TestCase):
    def test_common_galaxies_only(self):
        compare = _load().compare
        # Galaxy 3 is matched by "a" only, with a huge error: it must not enter either mean.
        a = _summary({0: 110.0, 1: 95.0, 2: 100.0, 3: 500.0})
        b = _summary({0: 100.0, 1: 80.0, 2: 130.0, 3: None})
        result = compare({"a": a, "b": b})
        self.assertEqual(result["common"], [0, 1, 2])
        self.assertEqual(result["only"], {"a": [3], "b": []})
        r_a = result["stats"]["a"]["deblended"]["r"]
        self.assertAlmostEqual(r_a["mean"], np.mean([0.10, 0.05, 0.0]))
        self.assertAlmostEqual(r_a["median"], 0.05)
        self.assertAlmostEqual(result["stats"]["b"]["deblended"]["r"]["mean"], np.mean([0.0, 0.2, 0.3]))
        self.assertAlmostEqual(result["stats"]["b"]["no_deblending"]["r"]["median"], 1.0)  # 1.0, 0.6, 1.6
        self.assertAlmostEqual(result["stats"]["a"]["no_deblending"]["i"]["mean"], 0.5)

    def test_refuses_other_patches(self):
        compare = _load().compare
        with self.assertRaisesRegex(ValueError, "another patch"):
            compare({"a": _summary({0: 100.0}), "b": _summary({0: 100.0}, seed=1)})
        with self.assertRaisesRegex(ValueError, "No truth galaxy"):
            compare({"a": _summary({0: 100.0, 1: None}), "b": _summary({0: None, 1: 100.0})})

    def test_command_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            for label, fluxes in (("a", {0: 110.0, 1: 90.0}), ("b", {0: 100.0, 1: None})):
                (Path(tmp) / label).mkdir()
                (Path(tmp) / label / "summary.json").write_text(json.dumps(_summary(fluxes)))
            out = subprocess.run([sys.executable, str(SCRIPT), f"a={tmp}/a", f"b={tmp}/b",
                                  "--output", f"{tmp}/c.json"], capture_output=True, text=True, check=True)
            self.assertIn("1 truth galaxies matched by every run", out.stdout)
            self.assertIn("| a | 1 (0.100) |", out.stdout)
            self.assertEqual(json.loads((Path(tmp) / "c.json").read_text())["common"], [0])


class MemoryTestCase(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
