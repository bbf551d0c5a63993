"""scripts/shape_budget.py: the statistics of each stage of the shape budget (known answers)."""

import doctest
import importlib.util
import unittest
from pathlib import Path

import lsst.utils.tests
import numpy as np
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "shape_budget.py"


def _load():
    spec = importlib.util.spec_from_file_location("shape_budget", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ShapeBudgetTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.module = _load()

    def test_doctests(self):
        self.assertEqual(doctest.testmod(self.module).failed, 0)

    def test_stage_stats(self):
        """Faint galaxies drawn round and bright ones exactly: the residual is -e1_true below SNR
        20 and zero above 50, so the slope, the bins and the robust std say so; a NaN is left out."""
        rng = np.random.default_rng(2)
        e1 = rng.uniform(-0.5, 0.5, 300)
        snr = np.repeat([10.0, 30.0, 80.0], 100)
        residual = np.where(snr < 20, -e1, 0.0)
        residual[150] = np.nan
        out = self.module.stage_stats(residual, e1, snr)
        self.assertEqual(out["n"], 299)
        self.assertAlmostEqual(out["std_by_snr"]["0-20"]["std"], float(np.std(e1[:100])))
        self.assertEqual(out["std_by_snr"]["20-50"], {"n": 99, "std": 0.0})
        self.assertEqual(out["std_by_snr"][">=50"]["std"], 0.0)
        self.assertAlmostEqual(out["slope_vs_true_e1"], -1 / 3, delta=0.05)
        self.assertEqual(out["robust_std"], 0.0)  # two thirds of the residuals are exactly zero
        table = self.module.markdown_table({"stages": {"test": out}})
        self.assertIn("| test | 299 |", table)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
