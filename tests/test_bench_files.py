"""Files that carry a benchmark to another machine: benchmarks/bench_deblend.py's blends and fits."""

import importlib.util
import tempfile
import types
import unittest
from pathlib import Path

import lsst.utils.tests
import numpy as np
import pytest

# File handling above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

ROOT = Path(__file__).resolve().parents[1]


def _load(relative, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BenchFilesTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="madness-bench-files-"))
        self.bench = _load("benchmarks/bench_deblend.py", "bench_deblend")
        rng = np.random.default_rng(5)
        image = rng.normal(0, 20, (6, 40, 50)).astype(np.float32)
        sky = np.array([400.0, 300.0, 500.0, 600.0, 700.0, 800.0], np.float32)
        self.blends = [
            # The engine's usual input: a sky variance per band, broadcast over the field.
            dict(image=image, peaks_xy=np.array([[10.25, 12.5], [30.0, 20.75]]),
                 variance=np.broadcast_to(sky[:, None, None], image.shape)),
            # A variance plane that varies over the field must come back pixel for pixel.
            dict(image=image[:, :30, :30] * 2, peaks_xy=np.array([[5.0, 7.0]]),
                 variance=rng.uniform(300, 500, (6, 30, 30)).astype(np.float32)),
        ]

    def test_blends_round_trip(self):
        path = self.tmp / "blends.npz"
        self.bench.save_blends(path, self.blends)
        back = self.bench.load_blends(path)
        self.assertEqual(len(back), 2)
        for want, got in zip(self.blends, back):
            np.testing.assert_array_equal(got["image"], want["image"])
            np.testing.assert_array_equal(got["peaks_xy"], want["peaks_xy"])
            self.assertEqual(got["variance"].shape, want["image"].shape)
            np.testing.assert_array_equal(got["variance"], want["variance"])
        with np.load(path) as data:
            # The constant plane is stored as one value per band, the varying one in full.
            self.assertEqual(data["0/variance"].shape, (6,))
            self.assertEqual(data["1/variance"].shape, (6, 30, 30))
        self.assertEqual(sorted(p.name for p in self.tmp.iterdir()), ["blends.npz"])  # no temporary left

    def test_results_hold_what_the_scoring_reads(self):
        rng = np.random.default_rng(6)
        plain = types.SimpleNamespace(models=rng.normal(size=(2, 6, 45, 45)), stamp_yx0=np.array([[1, 2], [3, 4]]),
                                      n_iter=57, envelopes=None, envelope_sources=None)
        enveloped = types.SimpleNamespace(models=rng.normal(size=(1, 6, 45, 45)), stamp_yx0=np.array([[0, 0]]),
                                          n_iter=200, envelopes=rng.normal(size=(1, 6, 90, 90)),
                                          envelope_sources=np.array([0]))
        path = self.tmp / "fits.npz"
        self.bench.save_results(path, [plain, enveloped])
        with np.load(path) as data:
            self.assertEqual(int(data["n_blends"]), 2)
            np.testing.assert_allclose(data["0/models"], plain.models.astype(np.float32))
            np.testing.assert_array_equal(data["0/stamp_yx0"], plain.stamp_yx0)
            self.assertEqual(int(data["1/n_iter"]), 200)
            self.assertNotIn("0/envelopes", data)
            np.testing.assert_allclose(data["1/envelopes"], enveloped.envelopes.astype(np.float32))
            np.testing.assert_array_equal(data["1/envelope_sources"], [0])

    def test_score_results_arguments_are_checked(self):
        ablations = _load("scripts/map_ablations.py", "map_ablations")
        common = ["--fields", str(self.tmp), "--output", str(self.tmp / "out.json")]
        with self.assertRaises(SystemExit):  # NAME=FILE, not a bare path
            ablations.main(common + ["--score-results", str(self.tmp / "fits.npz")])
        with self.assertRaises(SystemExit):  # nothing to run and nothing to score
            ablations.main(common + ["--ablations"])


class ShapeDiagnosticsTestCase(lsst.utils.tests.TestCase):
    """`scripts/map_ablations.py`'s ``alonestart``, ``neighbours-fixed`` and ``polish`` on a blend drawn by the
    test model's decoder, whose every galaxy is known."""

    def test_alone_start_neighbours_fixed_and_polish(self):
        from lsst.meas.madness import MadnessDeblender
        from utils import make_blend, quick_bundle_path, synthetic_galaxies

        ablations = _load("scripts/map_ablations.py", "map_ablations")
        deblender = MadnessDeblender.from_bundle(quick_bundle_path())
        latents = deblender.initial_latents(deblender.normalization.normalize(synthetic_galaxies(3, seed=99)))
        peaks = np.array([[30.0, 30.0], [38.0, 33.0], [27.0, 41.0]])
        image, var, truth = make_blend(deblender, latents, peaks, (70, 70), seed=5)
        settings = deblender.settings.replace(fit_envelopes=False, max_zoom=1)
        field = types.SimpleNamespace(image=image, isolated=truth, centers_xy=peaks)
        init, zoom = ablations._alone_start(deblender, field, image, var, settings, None)
        self.assertEqual(init.shape, (3, deblender.latent_dim + 6))
        np.testing.assert_array_equal(zoom, [1, 1, 1])
        # Each galaxy alone (its truth plus the blend's noise) gives a start that decodes to it.
        start = deblender.deblend(image, peaks, variance=var, init=init,
                                  settings=settings.replace(max_iter=0, min_iter=0))
        flux = np.stack([start.source_image(k) for k in range(3)]).sum(axis=(2, 3))
        np.testing.assert_allclose(flux[:, 1:5], truth.sum(axis=(2, 3))[:, 1:5], rtol=0.1)
        # Neighbours held at their fits: one model per galaxy, on its own stamp, near its truth.
        refits = ablations._neighbours_fixed(deblender, image, peaks, var, settings, None)
        self.assertEqual(refits.models.shape, (3, 6, 45, 45))
        joint = deblender.deblend(image, peaks, variance=var, settings=settings)
        np.testing.assert_array_equal(refits.stamp_yx0, joint.stamp_yx0)
        self.assertTrue((refits.n_iter > int(np.max(joint.n_iter))).all())
        self.assertEqual(refits.far_light(), (None, None))  # no PSF given: no wings
        from lsst.meas.madness.engine.geometry import paste_stamps

        painted = paste_stamps(refits.models, refits.stamp_yx0, (70, 70), total=False, dtype=np.float32)
        np.testing.assert_allclose(painted.sum(axis=(2, 3))[:, 1:5], truth.sum(axis=(2, 3))[:, 1:5], rtol=0.1)
        # ``polish``: the joint fit again from those refits, the lower of the two objectives kept.
        polished = ablations._polish(deblender, image, peaks, var, settings, None)
        self.assertLessEqual(polished.objective_final, joint.objective_final)
        self.assertEqual(polished.models.shape, joint.models.shape)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
