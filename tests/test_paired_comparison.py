"""scripts/paired_comparison.py: two MAP runs compared galaxy by galaxy (known answers)."""

import importlib.util
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

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paired_comparison.py"
BANDS = ["g", "r"]


def _load():
    spec = importlib.util.spec_from_file_location("paired_comparison", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path, errors, kappa, fields, cosine=None, e1=None, colour=None):
    """A per-galaxy file as scripts/map_ablations.py writes it (ablation "default")."""
    n = len(errors)
    extra = {} if colour is None else {"default/colour_residual_gr": colour}
    np.savez(path, bands=np.array(BANDS), kappa=kappa, field_of_galaxy=fields,
             **{"default/abs_flux_residual": errors,
                "default/cosine": np.full((n, 2), 0.99) if cosine is None else cosine,
                "default/e1_residual": np.zeros(n) if e1 is None else e1}, **extra)


class PairedComparisonTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="madness-paired-"))
        rng = np.random.default_rng(3)
        self.n = 60
        self.fields = np.repeat(np.arange(12), 5)
        self.kappa = np.ones((self.n, 2))
        self.kappa[:4, 1] = 9.0  # four galaxies cut in r (kappa > 5), kept in g
        self.a = np.abs(rng.normal(0.05, 0.02, (self.n, 2)))

    def test_a_catastrophe_shared_by_both_runs_cancels(self):
        """B is 0.01 better on every galaxy; both runs share one catastrophic galaxy that moves
        both means by 0.3 / n but not the paired difference, which is exactly -0.01, as is its
        interval, and B is better on every galaxy."""
        compare = _load().compare
        a = self.a.copy()
        a[10] = 20.0
        b = a - 0.01
        _write(self.tmp / "a.npz", a, self.kappa, self.fields)
        _write(self.tmp / "b.npz", b, self.kappa, self.fields)
        out = compare(self.tmp / "a.npz", self.tmp / "b.npz", n_boot=300)
        self.assertEqual(out["bands"]["r"]["n"], self.n - 4)
        self.assertEqual(out["bands"]["g"]["n"], self.n)
        for band in BANDS:
            v = out["bands"][band]
            self.assertAlmostEqual(v["mean_diff"], -0.01, places=9)
            np.testing.assert_allclose(v["ci95"], [-0.01, -0.01], atol=1e-9)
            self.assertEqual(v["b_better"], 1.0)
            self.assertGreater(v["mean_a"], 0.3)

    def test_interval_resamples_fields(self):
        """Half the fields better by 0.02, half worse by 0.02: the mean difference is 0 and the
        95% interval over fields straddles it; resampling galaxies instead would not be asked."""
        compare = _load().compare
        shift = np.where(self.fields % 2 == 0, -0.02, 0.02)[:, None]
        _write(self.tmp / "a.npz", self.a, self.kappa, self.fields)
        _write(self.tmp / "b.npz", self.a + shift, self.kappa, self.fields)
        v = compare(self.tmp / "a.npz", self.tmp / "b.npz", n_boot=500)["bands"]["g"]
        self.assertAlmostEqual(v["mean_diff"], 0.0, places=9)
        self.assertLess(v["ci95"][0], 0.0)
        self.assertGreater(v["ci95"][1], 0.0)
        self.assertAlmostEqual(v["b_better"], 0.5)

    def test_colour_scatter_of_one_outlier(self):
        """B's g-r colours equal A's except one galaxy 2 mag off: the paired abs(dC) moves by
        2 / n, the std by the known amount, and the interval over fields holds that difference
        and zero (the resamples without the outlier's field); galaxies cut in r are left out."""
        compare = _load().compare
        rng = np.random.default_rng(5)
        colour = rng.normal(0.0, 0.1, self.n)
        outlier = colour.copy()
        outlier[30] += 2.0
        _write(self.tmp / "a.npz", self.a, self.kappa, self.fields, colour=colour)
        _write(self.tmp / "b.npz", self.a, self.kappa, self.fields, colour=outlier)
        out = compare(self.tmp / "a.npz", self.tmp / "b.npz", n_boot=400)
        keep = self.kappa[:, 1] <= 5
        v = out["abs_colour_residual_gr"]
        self.assertEqual(v["n"], int(keep.sum()))
        self.assertAlmostEqual(v["mean_diff"], (abs(outlier[30]) - abs(colour[30])) / keep.sum(), places=9)
        s = out["std_colour_residual_gr"]
        self.assertAlmostEqual(s["diff"], outlier[keep].std() - colour[keep].std(), places=9)
        self.assertGreater(s["diff"], 0.1)
        self.assertLessEqual(s["ci95"][0], 1e-12)
        self.assertGreater(s["ci95"][1], 0.1)
        self.assertIn("std dC (g-r)", _load().markdown(out))

    def test_refuses_other_galaxies_and_runs_as_a_script(self):
        compare = _load().compare
        _write(self.tmp / "a.npz", self.a, self.kappa, self.fields)
        other = self.kappa.copy()
        other[20, 0] = 2.0
        _write(self.tmp / "c.npz", self.a, other, self.fields)
        with self.assertRaisesRegex(ValueError, "not the same galaxies"):
            compare(self.tmp / "a.npz", self.tmp / "c.npz")
        proc = subprocess.run([sys.executable, str(SCRIPT), str(self.tmp / "a.npz"), str(self.tmp / "a.npz"),
                               "--bootstrap", "50", "--output", str(self.tmp / "out.json")],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("abs(dF/F) r", proc.stdout)
        self.assertTrue((self.tmp / "out.json").exists())


def _write_evaluation(directory, signed_errors, kappa, fields, methods=("madness",)):
    """A ``madness evaluate`` output directory: partial/run.json and one npz per field, signed
    flux residuals as the evaluation stores them."""
    partial = Path(directory) / "partial"
    partial.mkdir(parents=True)
    (partial / "run.json").write_text('{"bands": ["g", "r"]}')
    for field in np.unique(fields):
        rows = fields == field
        arrays = {"g/kappa": kappa[rows], "g/field_id": fields[rows]}
        for method in methods:
            arrays[f"m/{method}/flux_residual"] = signed_errors[rows]
            arrays[f"m/{method}/cosine"] = np.full((rows.sum(), 2), 0.99)
            arrays[f"m/{method}/e1_residual"] = np.zeros((rows.sum(), 2))
            arrays[f"m/{method}/colour_residual_true"] = signed_errors[rows, 0]
        np.savez(partial / f"field-{int(field):06d}.npz", **arrays)


class EvaluationDirectoryTestCase(lsst.utils.tests.TestCase):
    setUp = PairedComparisonTestCase.setUp

    def test_evaluation_directories(self):
        """Two ``madness evaluate`` runs of one method: the same answer as from the per-galaxy
        files, with signed residuals made absolute (B's errors are half of A's, of either sign)."""
        module = _load()
        sign = np.where(np.arange(self.n) % 3 == 0, -1.0, 1.0)[:, None]
        _write_evaluation(self.tmp / "eval-a", sign * self.a, self.kappa, self.fields)
        _write_evaluation(self.tmp / "eval-b", -sign * self.a / 2, self.kappa, self.fields)
        out = module.compare(self.tmp / "eval-a", self.tmp / "eval-b", "madness", n_boot=200)
        keep = self.kappa[:, 1] <= 5
        v = out["bands"]["r"]
        self.assertEqual(v["n"], int(keep.sum()))
        self.assertAlmostEqual(v["mean_diff"], -self.a[keep, 1].mean() / 2, places=9)
        self.assertEqual(v["b_better"], 1.0)
        loaded = module.load_evaluation(self.tmp / "eval-a")
        np.testing.assert_array_equal(loaded["field_of_galaxy"], self.fields)
        np.testing.assert_allclose(loaded["madness/abs_flux_residual"], self.a)
        np.testing.assert_allclose(loaded["madness/colour_residual_gr"], sign[:, 0] * self.a[:, 0])
        self.assertAlmostEqual(out["std_colour_residual_gr"]["diff"],
                               -(sign[keep, 0] * self.a[keep, 0]).std() / 2, places=9)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
