"""``madness train``: the three stages end to end on tiny data, resume, and cross-backend loading."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import keras
import lsst.utils.tests
import numpy as np
import pytest

from lsst.meas.madness import MadnessDeblender, ModelBundle
from lsst.meas.madness.cli import main
from lsst.meas.madness.errors import MadnessValueError
from lsst.meas.madness.networks import LinearNormalization
from lsst.meas.madness.networks.layout import to_network_layout
from lsst.meas.madness.simulation import IsolatedSimsConfig, SimulatedDataset, simulate_suite
from lsst.meas.madness.training import TrainingConfig, preset, train_madness
from lsst.meas.madness.training.config import StageSchedule
from lsst.meas.madness.training.losses import gaussian_kl, ssim_per_band

_DECODE = r"""
import sys
import numpy as np
from lsst.meas.madness import MadnessDeblender
d = MadnessDeblender.from_bundle(sys.argv[1])
np.save(sys.argv[3], d.decode(np.load(sys.argv[2])))
"""


def _tiny(**overrides) -> TrainingConfig:
    config = preset("tiny", max_train=48, max_validation=16)
    return TrainingConfig.from_dict({**config.as_dict(), **overrides})


def _weights(bundle: ModelBundle) -> list[np.ndarray]:
    return [np.asarray(w) for net in (bundle.decoder, bundle.flow, bundle.deblender_encoder) for w in net.get_weights()]


class LossTestCase(unittest.TestCase):
    def test_kl_of_standard_normal_is_zero(self):
        d = 4
        # mean 0, scale_tril = I: softplus(x) + 1e-5 = 1 -> x = log(e^(1-1e-5) - 1)
        diag = math.log(math.expm1(1 - 1e-5))
        tril = []
        for i in range(d):
            for j in range(i + 1):
                tril.append(diag if i == j else 0.0)
        params = np.array([[0.0] * d + tril], np.float32)
        self.assertAlmostEqual(float(keras.ops.convert_to_numpy(gaussian_kl(params, d))[0]), 0.0, places=4)
        shifted = params.copy()
        shifted[0, :d] = 1.0
        self.assertAlmostEqual(float(keras.ops.convert_to_numpy(gaussian_kl(shifted, d))[0]), d / 2, places=4)

    def test_distillation_term(self):
        """``(1 - w) chi2(truth, D) + w chi2(teacher, D)`` under the truth's variance, against numpy."""
        from lsst.meas.madness.networks import Decoder, Encoder
        from lsst.meas.madness.training.models import VaeTrainer

        rng = np.random.default_rng(3)
        size, bands, dim = 16, 2, 4
        encoder = Encoder(size, bands, dim, (4, 4, 4, 4), dense_units=8)
        decoder = Decoder(size, bands, dim, (4, 4), dense_units=8)
        teacher = Decoder(size, bands, dim, (8, 4), dense_units=8)
        sky = np.array([0.5, 2.0], np.float32)
        scale = 3.0
        y = rng.uniform(0, 5, (2, size, size, bands)).astype(np.float32)
        pred = rng.uniform(0, 5, y.shape).astype(np.float32)
        taught = rng.uniform(0, 5, y.shape).astype(np.float32)
        params = np.zeros((2, dim + dim * (dim + 1) // 2), np.float32)
        var = sky + y / scale
        data_chi2 = ((y - pred) ** 2 / var).sum(axis=(1, 2, 3))
        teach_chi2 = ((taught - pred) ** 2 / var).sum(axis=(1, 2, 3))
        for w in (0.0, 0.3, 1.0):
            trainer = VaeTrainer(encoder, decoder, sky, scale=scale, beta=0.01, teacher=teacher, distill_weight=w)
            chi2 = keras.ops.convert_to_numpy(trainer.loss_terms(y, y, params, pred, taught)[0])
            np.testing.assert_allclose(chi2, (1 - w) * data_chi2 + w * teach_chi2, rtol=1e-5)
        self.assertFalse(teacher.trainable)
        # With partner latents the teacher's term is the mean over both.
        wide = rng.uniform(0, 5, y.shape).astype(np.float32)
        wide_taught = rng.uniform(0, 5, y.shape).astype(np.float32)
        wide_chi2 = ((wide_taught - wide) ** 2 / var).sum(axis=(1, 2, 3))
        trainer = VaeTrainer(encoder, decoder, sky, scale=scale, beta=0.01, teacher=teacher, distill_weight=0.3,
                             distill_spread=0.5)
        chi2 = keras.ops.convert_to_numpy(trainer.loss_terms(y, y, params, pred, taught, wide, wide_taught)[0])
        np.testing.assert_allclose(chi2, 0.7 * data_chi2 + 0.3 * 0.5 * (teach_chi2 + wide_chi2), rtol=1e-5)
        # The partners are drawn in training only, at the given spread around the posterior sample.
        x = rng.uniform(0, 5, (64, size, size, bands)).astype(np.float32)
        self.assertEqual(len(trainer(x, training=False)), 3)
        out = trainer(x, training=True)
        self.assertEqual(len(out), 5)
        # Against the teacher at the mean latent, the partners' stamps move more than the samples'.
        mean_stamp = keras.ops.convert_to_numpy(trainer(x, training=False)[2])
        near = np.abs(keras.ops.convert_to_numpy(out[2]) - mean_stamp).mean()
        far = np.abs(keras.ops.convert_to_numpy(out[4]) - mean_stamp).mean()
        self.assertGreater(far, near)
        # Without a teacher the term is the data's chi2 whatever is passed.
        plain = VaeTrainer(encoder, decoder, sky, scale=scale, beta=0.01)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(plain.loss_terms(y, y, params, pred, taught)[0]),
                                   data_chi2, rtol=1e-5)

    def test_ssim_identity_and_scale_invariance(self):
        rng = np.random.default_rng(0)
        a = np.abs(rng.normal(size=(2, 45, 45, 6))).astype(np.float32)
        same = keras.ops.convert_to_numpy(ssim_per_band(a, a))
        np.testing.assert_allclose(same, 1.0, atol=1e-5)
        # per-band max normalisation: a scaled copy is structurally identical
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ssim_per_band(a, 7.0 * a)), 1.0, atol=1e-5)
        other = np.abs(rng.normal(size=a.shape)).astype(np.float32)
        self.assertTrue(np.all(keras.ops.convert_to_numpy(ssim_per_band(a, other)) < 0.5))

    def test_schedule(self):
        s = StageSchedule(1e-5, 0.1, 200)
        self.assertEqual(s.learning_rate_at(0), 1e-5)
        self.assertAlmostEqual(s.learning_rate_at(40), 1e-5 / 2.5)
        self.assertAlmostEqual(s.learning_rate_at(119), 1e-5 / 2.5**2)
        self.assertEqual(preset("paper").vae.learning_rate, 1e-5)
        self.assertEqual(preset("paper").flow.clip_value, 0.01)
        self.assertEqual(preset("paper").ssim_warmup_epochs, 50)
        with self.assertRaises(MadnessValueError):
            preset("huge")

    def test_cosine_schedule(self):
        s = StageSchedule(1e-3, 0.1, 11, schedule="cosine", warmup_epochs=1, min_factor=0.1)
        self.assertAlmostEqual(s.learning_rate_at(0), 0.5e-3)  # ramp
        self.assertAlmostEqual(s.learning_rate_at(1), 1e-3)  # the peak after the ramp
        self.assertAlmostEqual(s.learning_rate_at(6), 1e-3 * (0.1 + 0.9 * 0.5))  # half-way down
        self.assertAlmostEqual(s.learning_rate_at(11), 1e-4)  # the floor at max_epochs
        rates = [s.learning_rate_at(e) for e in range(1, 11)]
        self.assertTrue(all(a > b for a, b in zip(rates, rates[1:])))
        with self.assertRaises(MadnessValueError):
            StageSchedule(1e-3, 0.1, 3, schedule="exponential")


class Regression(keras.Model):
    """One dense layer fitted by mean squared error: the smallest trainer `run_stage` accepts."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1)

    def call(self, x, training=False):
        return self.dense(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return keras.ops.mean(keras.ops.square(y_pred - y))


class MonitorTestCase(unittest.TestCase):
    """`run_stage(monitor=...)` keeps the epoch with the lowest monitored number, and a run resumed
    under another monitor re-scores its kept and last weights."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="madness-monitor-"))
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(64, 3)).astype(np.float32)
        self.y = (self.x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _run(self, trainer, epochs, monitor, metrics):
        from lsst.meas.madness.training.loop import run_stage

        schedule = StageSchedule(0.05, 1.0, epochs, patience=5, batch_size=16)
        keras.utils.set_random_seed(1)
        return run_stage("toy", trainer, schedule, self.x, self.y, self.x, self.y, directory=self.tmp, seed=1,
                         extra_metrics=metrics, progress=False, monitor=monitor)

    def test_larger_budget_continues_a_stage_stopped_for_time(self):
        """A stage stopped by its time budget is finished for the same budget, and continues to its
        last epoch when resumed with a larger one (or none)."""
        from lsst.meas.madness.training.loop import run_stage

        schedule = StageSchedule(0.05, 1.0, 3, patience=5, batch_size=16)

        def run(budget):
            keras.utils.set_random_seed(1)
            return run_stage("toy", Regression(), schedule, self.x, self.y, self.x, self.y, directory=self.tmp,
                             seed=1, progress=False, time_budget_s=budget)

        first = run(1e-6)
        self.assertEqual((first.epochs_run, first.stopped_for_time), (1, True))
        again = run(1e-6)
        self.assertEqual((again.epochs_run, again.stopped_for_time), (1, True))
        more = run(None)
        self.assertEqual((more.epochs_run, more.stopped_for_time), (3, False))
        self.assertEqual([row["epoch"] for row in more.history], [0, 1, 2])
        self.assertLess(more.history[-1]["val_loss"], first.history[-1]["val_loss"])

    def test_monitor_picks_the_kept_epoch(self):
        trainer, snapshots = Regression(), []
        scores = [3.0, 1.0, 2.0]  # the monitored number of epochs 0, 1, 2: epoch 1 is kept

        def metrics():
            snapshots.append([w.copy() for w in trainer.get_weights()])
            return {"score": scores[len(snapshots) - 1]}

        result = self._run(trainer, 3, "score", metrics)
        self.assertEqual((result.monitor, result.best_epoch, result.best_val_loss), ("score", 1, 1.0))
        # The validation loss falls every epoch here, so it alone would have kept epoch 2.
        losses = [row["val_loss"] for row in result.history]
        self.assertEqual(int(np.argmin(losses)), 2)
        for kept, epoch1 in zip(trainer.get_weights(), snapshots[1]):
            np.testing.assert_array_equal(kept, epoch1)
        with self.assertRaisesRegex(KeyError, "nothing"):
            self._run(Regression(), 4, "nothing", lambda: {"score": 0.0})

    def test_resume_under_another_monitor_rescores(self):
        for keep in (0, 1):
            with self.subTest(keep=keep):
                shutil.rmtree(self.tmp, ignore_errors=True)
                trainer, snapshots = Regression(), []

                def first():
                    snapshots.append([w.copy() for w in trainer.get_weights()])
                    return {"a": [1.0, 2.0][len(snapshots) - 1]}  # "a" keeps epoch 0

                self._run(trainer, 2, "a", first)

                resumed = Regression()

                def second():
                    # "b" is 0 on the weights of epoch `keep`, 1 elsewhere.
                    same = all(np.array_equal(w, s) for w, s in zip(resumed.get_weights(), snapshots[keep]))
                    return {"b": 0.0 if same else 1.0}

                result = self._run(resumed, 2, "b", second)
                self.assertEqual((result.monitor, result.best_epoch, result.best_val_loss), ("b", keep, 0.0))
                for w, s in zip(resumed.get_weights(), snapshots[keep]):
                    np.testing.assert_array_equal(w, s)


class Denoiser(Regression):
    """A dense layer fitted to map noisy 3-vectors back to their clean values."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)


class DataWorkersTestCase(unittest.TestCase):
    """Batches made by several threads are the batches one thread makes, in the same order."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="madness-workers-"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_workers_change_nothing_but_speed(self):
        from lsst.meas.madness.backend import has_accelerator
        from lsst.meas.madness.training.loop import default_data_workers, run_stage

        if keras.config.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        clean = np.random.default_rng(0).normal(size=(96, 3)).astype(np.float32)

        def augment(y, rng):  # fresh noise per batch, seeded by the batch's index (as FreshNoise)
            return (y + rng.normal(0, 0.3, y.shape)).astype(np.float32), y

        schedule = StageSchedule(0.05, 1.0, 2, patience=None, batch_size=8)  # 12 batches per epoch

        def train(workers):
            keras.utils.set_random_seed(1)
            trainer = Denoiser()
            result = run_stage("toy", trainer, schedule, clean, clean, clean[:16], clean[:16],
                               directory=self.tmp / str(workers), seed=1, progress=False, augment=augment,
                               data_workers=workers)
            return result, trainer.get_weights()

        one, weights_one = train(1)
        four, weights_four = train(4)
        self.assertEqual([r["loss"] for r in one.history], [r["loss"] for r in four.history])
        for a, b in zip(weights_one, weights_four):
            np.testing.assert_array_equal(a, b)
        # and the noise did reach the step: another seed of the batch order trains another network
        keras.utils.set_random_seed(1)
        other = run_stage("toy", Denoiser(), schedule, clean, clean, clean[:16], clean[:16],
                          directory=self.tmp / "other", seed=2, progress=False, augment=augment)
        self.assertNotEqual(other.history[-1]["loss"], one.history[-1]["loss"])
        with self.assertRaisesRegex(ValueError, "at least 1"):
            run_stage("toy", Denoiser(), schedule, clean, clean, clean, clean, directory=self.tmp / "zero",
                      seed=1, progress=False, data_workers=0)
        self.assertEqual(default_data_workers(), 1 if not has_accelerator() else min(8, os.cpu_count() or 1))


class TrainingTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="madness-train-"))
        cls.data = cls.tmp / "data"
        # Shards of 20 stamps, so that loading the training set crosses shard boundaries.
        simulate_suite(cls.data, area_deg2=0.004, seed=5, kinds=("isolated", "blended"), n_train=48,
                       n_validation=16, configs={"isolated": IsolatedSimsConfig(shard_size=20)},
                       progress=False)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # The CLI's argument handling and run layout do not depend on the backend; the training
    # steps it calls are tested on every backend by the tests below.
    @pytest.mark.one_backend
    def test_cli_end_to_end(self):
        out = self.tmp / "cli-run"
        self.assertEqual(main(["train", "--data", str(self.data), "--output", str(out), "--preset", "tiny",
                               "--max-train", "48", "--max-validation", "16", "--no-progress",
                               "--batch-size", "12", "--data-workers", "2"]), 0)
        recorded = json.loads((out / "config.json").read_text())
        self.assertEqual((recorded["vae_warmup"]["batch_size"], recorded["vae"]["batch_size"]), (12, 12))
        self.assertNotEqual(recorded["flow"]["batch_size"], 12)  # the VAE stages' batch only
        for bad in (["--batch-size", "0"], ["--data-workers", "0"]):
            with self.assertRaisesRegex(MadnessValueError, "must be"):
                main(["train", "--data", str(self.data), "--output", str(self.tmp / "cli-bad"), "--preset", "tiny",
                      "--no-progress", *bad])
        bundle = ModelBundle.load(out / "bundle")
        meta = bundle.metadata
        self.assertTrue(meta.trained)
        self.assertEqual(meta.training["preset"], "tiny")
        self.assertEqual(meta.bands, ("u", "g", "r", "i", "z", "y"))
        self.assertEqual(meta.training["n_train"]["isolated"], 48)
        self.assertEqual(set(meta.training["stages"]), {"vae_warmup", "vae", "flow", "deblender"})
        for key, value in meta.metrics.items():
            self.assertTrue(np.isfinite(value), key)
        # per-epoch logs of every stage, with the warm-up's alpha falling to 0
        with open(out / "logs" / "vae_warmup.csv") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual([float(r["alpha"]) for r in rows], [1.0, 0.5])
        self.assertIn("val_chi2_per_pixel", rows[0])
        for stage in ("vae", "flow", "deblender"):
            self.assertTrue((out / "logs" / f"{stage}.csv").exists())
        self.assertTrue(any((out / "logs" / "tensorboard").rglob("events.out.tfevents*"))
                        or keras.config.backend() != "tensorflow")
        for name in ("learning_curves", "latents_vs_flow", "flow_samples", "deblender_predictions"):
            self.assertGreater((out / "figures" / f"{name}.png").stat().st_size, 5000, name)
        summary = json.loads((out / "summary.json").read_text())
        self.assertGreater(summary["wall_time_s"], 0)
        # the bundle deblends
        deblender = MadnessDeblender.from_bundle(out / "bundle")
        z = np.zeros((2, 16), np.float32)
        self.assertEqual(deblender.decode(z).shape, (2, 6, 45, 45))

        # weights trained here load and decode the same on the other backend
        other = {"tensorflow": "jax", "jax": "tensorflow"}[keras.config.backend()]
        latents = np.random.default_rng(1).normal(0, 0.5, (3, 16)).astype(np.float32)
        np.save(self.tmp / "z.npy", latents)
        env = dict(os.environ, KERAS_BACKEND=other)
        subprocess.run([sys.executable, "-c", _DECODE, str(out / "bundle"), str(self.tmp / "z.npy"),
                        str(self.tmp / "decoded.npy")], check=True, env=env, capture_output=True)
        np.testing.assert_allclose(np.load(self.tmp / "decoded.npy"), deblender.decode(latents),
                                   rtol=1e-3, atol=1e-2)
        # a different configuration in the same run directory is refused
        with self.assertRaisesRegex(MadnessValueError, "another configuration"):
            train_madness(self.data, out, _tiny(seed=99), progress=False, figures=False)

    def test_resume_matches_uninterrupted(self):
        if keras.config.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        # fresh noise: each batch's noise comes from its own seed, so a resumed epoch sees the
        # batches the uninterrupted one saw
        config = _tiny(seed=3, fresh_noise=True)
        reference = train_madness(self.data, self.tmp / "full", config, progress=False, figures=False)

        real_fit = keras.Model.fit
        calls = []

        def dies(self_, *args, **kwargs):
            calls.append(1)
            if len(calls) == 4:  # warm-up has 2 epochs: die in the 2nd epoch of the VAE stage
                raise KeyboardInterrupt("killed")
            return real_fit(self_, *args, **kwargs)

        target = self.tmp / "resumed"
        with mock.patch.object(keras.Model, "fit", dies):
            with self.assertRaises(KeyboardInterrupt):
                train_madness(self.data, target, config, progress=False, figures=False)
        state = json.loads((target / "checkpoints" / "vae" / "state.json").read_text())
        self.assertEqual(state["epoch"], 1)
        self.assertFalse((target / "checkpoints" / "flow").exists())
        resumed = train_madness(self.data, target, config, progress=False, figures=False)
        for a, b in zip(_weights(reference), _weights(resumed)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        self.assertEqual(reference.metadata.metrics, resumed.metadata.metrics)

    def test_warm_start_fresh_noise_and_time_budget(self):
        parent_dir = self.tmp / "parent"
        parent = train_madness(self.data, parent_dir, _tiny(seed=4), progress=False, figures=False)
        # A linear-output decoder with fresh noise, continued from the ReLU parent, on a budget so
        # short that every stage stops after its first epoch.
        config = _tiny(seed=4, decoder_output_activation="linear", fresh_noise=True,
                       vae={**_tiny().vae.__dict__, "max_epochs": 4, "patience": None})
        child = train_madness(self.data, self.tmp / "child", config, progress=False, figures=False,
                              init_from=parent_dir / "bundle", time_budget_s=1e-3)
        training = child.metadata.training
        self.assertNotIn("vae_warmup", training["stages"])  # a warm start skips the SSIM warm-up
        for stage in ("vae", "flow", "deblender"):
            self.assertEqual(training["stages"][stage]["epochs_run"], 1, stage)
            self.assertTrue(training["stages"][stage]["stopped_for_time"], stage)
        self.assertEqual(training["augmentation"], {"fresh_noise": True, "symmetries": 8})
        self.assertEqual(len(training["lineage"]), 1)
        self.assertEqual(training["lineage"][0]["preset"], "tiny")
        self.assertAlmostEqual(training["total_wall_time_s"],
                               training["wall_time_s"] + parent.metadata.training["wall_time_s"], places=0)
        self.assertEqual(training["total_sample_passes"],
                         training["sample_passes"] + training["lineage"][0]["sample_passes"])
        self.assertEqual(child.decoder.output_activation, "linear")
        # The warm start copies the parent's networks: a linear decoder given the ReLU parent's
        # weights draws the same stamps wherever the parent's are positive.
        from lsst.meas.madness.networks import Decoder, Encoder, MaskedAutoregressiveFlow
        from lsst.meas.madness.training.train import _warm_start

        tiny = _tiny()
        decoder = Decoder(45, 6, 16, tiny.decoder_filters, dense_units=tiny.dense_units, output_activation="linear")
        encoder = Encoder(45, 6, 16, tiny.encoder_filters, dense_units=tiny.dense_units)
        encoder.build((None, 45, 45, 6))
        flow = MaskedAutoregressiveFlow(16, seed=1)  # the parent's is seed 4: another layer order
        flow.build()
        with self.assertRaisesRegex(MadnessValueError, "other permutations"):
            _warm_start(parent, encoder, decoder, flow, parent.metadata.bands, 45)
        flow = MaskedAutoregressiveFlow.from_config(parent.flow.get_config())
        flow.build()
        _warm_start(parent, encoder, decoder, flow, parent.metadata.bands, 45)
        z = np.random.default_rng(2).normal(size=(4, 16)).astype(np.float32)
        ours, theirs = np.asarray(decoder(z)), np.asarray(parent.decoder(z))
        self.assertGreater((theirs > 0).mean(), 0.05)
        np.testing.assert_allclose(ours[theirs > 0], theirs[theirs > 0], rtol=1e-5, atol=1e-7)
        for a, b in zip(encoder.get_weights(), parent.encoder.get_weights()):
            np.testing.assert_array_equal(a, b)
        # A bundle of another architecture is refused.
        with self.assertRaisesRegex(MadnessValueError, "Cannot warm-start"):
            train_madness(self.data, self.tmp / "other", _tiny(dense_units=32), progress=False, figures=False,
                          init_from=parent)

    def test_freeze_encoder_continues_only_the_decoder(self):
        parent_dir = self.tmp / "frozen-parent"
        train_madness(self.data, parent_dir, _tiny(seed=7), progress=False, figures=False)
        parent = ModelBundle.load(parent_dir / "bundle")  # as stored (float16), which the child starts from
        with self.assertRaisesRegex(MadnessValueError, "give init_from"):
            train_madness(self.data, self.tmp / "no-parent", _tiny(seed=7, freeze_encoder=True), progress=False,
                          figures=False)
        # Another seed than the parent's (its batches, noise and symmetries differ); the flow must
        # still be the parent's density, not the parent's weights in this seed's layer order.
        config = _tiny(seed=8, freeze_encoder=True, fresh_noise=True,
                       vae={**_tiny().vae.__dict__, "max_epochs": 3, "patience": None, "learning_rate": 3e-3})
        child = train_madness(self.data, self.tmp / "frozen", config, progress=False, figures=False,
                              init_from=parent_dir / "bundle")
        # The latent space's owners are the parent's, bit for bit; the decoder moved and its
        # validation chi^2 fell.
        for mine, theirs in ((child.encoder, parent.encoder), (child.flow, parent.flow),
                             (child.deblender_encoder, parent.deblender_encoder)):
            for a, b in zip(mine.get_weights(), theirs.get_weights()):
                np.testing.assert_array_equal(a, b)
        z = np.random.default_rng(3).normal(size=(32, 16)).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(child.flow.log_prob(z)), np.asarray(parent.flow.log_prob(z)))
        moved = [not np.array_equal(a, b) for a, b in zip(child.decoder.get_weights(), parent.decoder.get_weights())]
        self.assertTrue(all(moved))
        stages = child.metadata.training["stages"]
        self.assertEqual(sorted(stages), ["vae"])
        self.assertEqual(child.metadata.training["n_train"]["blended"], 0)
        key = "vae_val_chi2_per_pixel"
        self.assertLess(child.metadata.metrics[key], parent.metadata.metrics[key])

    def test_snapshot_continues_the_schedule(self):
        """A run stopped by its budget leaves a snapshot of its last epoch; a new run started from
        it with ``continue_schedule`` takes up the VAE schedule at the next epoch (the learning
        rate of the uninterrupted run), and the totals count both runs' epochs."""
        parent_dir = self.tmp / "snap-parent"
        train_madness(self.data, parent_dir, _tiny(seed=9), progress=False, figures=False)
        parent = ModelBundle.load(parent_dir / "bundle")
        vae = dict(_tiny().as_dict()["vae"], max_epochs=4, patience=None, schedule="cosine", warmup_epochs=1)
        config = _tiny(seed=9, freeze_encoder=True, vae=vae)
        first = train_madness(self.data, self.tmp / "snap-a", config, progress=False, figures=False,
                              init_from=parent_dir / "bundle", time_budget_s=1e-6)  # one epoch, then the budget
        self.assertEqual(first.metadata.training["stages"]["vae"]["epochs_run"], 1)
        snapshot = ModelBundle.load(self.tmp / "snap-a" / "snapshot")
        self.assertEqual(snapshot.metadata.training["snapshot"]["epoch"], 0)
        # The snapshot holds the epoch's networks (the bundle's) and, the encoder
        # being frozen, the parent's VAE-deblender: it deblends.
        stored = ModelBundle.load(self.tmp / "snap-a" / "bundle")  # both as stored
        for a, b in zip(snapshot.decoder.get_weights(), stored.decoder.get_weights()):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(snapshot.deblender_encoder.get_weights(), parent.deblender_encoder.get_weights()):
            np.testing.assert_array_equal(a, b)

        out = self.tmp / "snap-b"
        train_madness(self.data, out, config, progress=False, figures=False, init_from=self.tmp / "snap-a" / "snapshot",
                      continue_schedule=True)
        with open(out / "logs" / "vae.csv") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual([int(r["epoch"]) for r in rows], [1, 2, 3])
        rates = [config.vae.learning_rate_at(e) for e in (1, 2, 3)]
        self.assertGreater(rates[0], rates[-1])  # the cosine's second half: a restart would begin at the ramp
        np.testing.assert_allclose([float(r["learning_rate"]) for r in rows], rates, rtol=1e-6)
        second = ModelBundle.load(out / "bundle")
        record = second.metadata.training
        self.assertEqual(record["stages"]["vae"]["epochs_run"], 4)
        self.assertEqual(record["sample_passes"], 3 * 48)
        self.assertEqual(record["lineage"][-1]["sample_passes"], 48)
        # A finished stage, or another schedule, cannot be continued.
        with self.assertRaisesRegex(MadnessValueError, "finished"):
            train_madness(self.data, self.tmp / "snap-c", config, progress=False, figures=False,
                          init_from=out / "bundle", continue_schedule=True)
        with self.assertRaisesRegex(MadnessValueError, "VAE schedule"):
            train_madness(self.data, self.tmp / "snap-d", _tiny(seed=9, freeze_encoder=True), progress=False,
                          figures=False, init_from=self.tmp / "snap-a" / "snapshot", continue_schedule=True)
        with self.assertRaisesRegex(MadnessValueError, "give init_from"):
            train_madness(self.data, self.tmp / "snap-e", _tiny(seed=9), progress=False, figures=False,
                          continue_schedule=True)
        # The command line passes the flag (the tiny preset's own schedule is not the snapshot's).
        with self.assertRaisesRegex(MadnessValueError, "VAE schedule"):
            main(["train", "--data", str(self.data), "--output", str(self.tmp / "snap-f"), "--preset", "tiny",
                  "--max-train", "48", "--max-validation", "16", "--seed", "9", "--no-progress", "--no-figures",
                  "--init-from", str(self.tmp / "snap-a" / "snapshot"), "--freeze-encoder", "--continue-schedule"])

    def test_distilled_narrower_decoder(self):
        """A narrower decoder in a trained bundle's latent space, taught by its decoder: the latent
        space's owners are the parent's bit for bit, the new decoder has the new width and a
        lower validation chi^2 than where it started, and the bundle deblends."""
        parent_dir = self.tmp / "teacher"
        train_madness(self.data, parent_dir, _tiny(seed=8), progress=False, figures=False)
        parent = ModelBundle.load(parent_dir / "bundle")
        narrow = (16, 8, 8)
        self.assertNotEqual(tuple(parent.decoder.filters), narrow)
        with self.assertRaisesRegex(MadnessValueError, "Cannot warm-start"):  # a new width needs a frozen encoder
            train_madness(self.data, self.tmp / "narrow-unfrozen", _tiny(seed=8, decoder_filters=narrow),
                          progress=False, figures=False, init_from=parent)
        with self.assertRaisesRegex(MadnessValueError, "freeze_encoder"):
            _tiny(distill_weight=0.5)
        out = self.tmp / "narrow"
        self.assertEqual(main(["train", "--data", str(self.data), "--output", str(out), "--preset", "tiny",
                               "--max-train", "48", "--max-validation", "16", "--seed", "8", "--no-progress",
                               "--no-figures", "--init-from", str(parent_dir / "bundle"), "--freeze-encoder",
                               "--decoder-filters", "16,8,8", "--distill", "0.5", "--distill-spread", "0.5",
                               "--vae-epochs", "4"]), 0)
        self.assertEqual(json.loads((out / "config.json").read_text())["distill_weight"], 0.5)
        self.assertEqual(json.loads((out / "config.json").read_text())["distill_spread"], 0.5)
        with self.assertRaisesRegex(MadnessValueError, "distill_weight > 0"):
            _tiny(distill_spread=0.5)
        child = ModelBundle.load(out / "bundle")
        self.assertEqual(tuple(child.decoder.filters), narrow)
        for mine, theirs in ((child.encoder, parent.encoder), (child.flow, parent.flow),
                             (child.deblender_encoder, parent.deblender_encoder)):
            for a, b in zip(mine.get_weights(), theirs.get_weights()):
                np.testing.assert_array_equal(a, b)
        with open(out / "logs" / "vae.csv") as f:
            history = [float(row["val_chi2_per_pixel"]) for row in csv.DictReader(f)]
        self.assertGreaterEqual(len(history), 2)  # the tiny preset's patience may end it early
        self.assertLess(min(history[1:]), history[0])
        deblender = MadnessDeblender.from_bundle(out / "bundle")
        image = np.zeros((6, 45, 45), np.float32)
        result = deblender.deblend(image + 1.0, np.array([[22.0, 22.0]]), variance=np.ones_like(image),
                                   settings=deblender.settings.replace(max_iter=5, min_iter=5))
        self.assertTrue(np.isfinite(result.models).all())
        # The student continued from its own bundle, taught again by its parent (same latent space).
        vae = dict(_tiny().as_dict()["vae"], max_epochs=1)
        again = train_madness(self.data, self.tmp / "narrow-again",
                              _tiny(seed=8, decoder_filters=narrow, freeze_encoder=True, distill_weight=0.5, vae=vae),
                              progress=False, figures=False, init_from=out / "bundle", teacher_from=parent_dir / "bundle")
        self.assertEqual(again.metadata.training["teacher"], "bundle")
        # A teacher from another latent space is refused.
        stranger = ModelBundle.load(parent_dir / "bundle")
        stranger.encoder.set_weights([w + 0.1 for w in stranger.encoder.get_weights()])
        with self.assertRaisesRegex(MadnessValueError, "encoder differs"):
            train_madness(self.data, self.tmp / "narrow-stranger",
                          _tiny(seed=8, decoder_filters=narrow, freeze_encoder=True, distill_weight=0.5, vae=vae),
                          progress=False, figures=False, init_from=out / "bundle", teacher_from=stranger)

    def test_weight_average(self):
        """With ``ema_momentum`` every epoch ends on the average of the weights over its steps: a
        momentum near 1 keeps the decoder of the first step (Keras starts the average there: one
        Adam step, at most the learning rate, from the start), where the plain run's six steps
        move it further."""
        parent_dir = self.tmp / "ema-parent"
        train_madness(self.data, parent_dir, _tiny(seed=9), progress=False, figures=False)
        parent = ModelBundle.load(parent_dir / "bundle")
        runs = {}
        for name, ema in (("plain", None), ("ema", 0.999999)):
            config = _tiny(seed=9, freeze_encoder=True, vae={**_tiny().vae.__dict__, "max_epochs": 1, "patience": None,
                                                             "learning_rate": 3e-3, "batch_size": 8,
                                                             "ema_momentum": ema})
            runs[name] = train_madness(self.data, self.tmp / name, config, progress=False, figures=False,
                                       init_from=parent_dir / "bundle")
        start = parent.decoder.get_weights()
        plain = max(np.abs(a - b).max() for a, b in zip(runs["plain"].decoder.get_weights(), start))
        averaged = max(np.abs(a - b).max() for a, b in zip(runs["ema"].decoder.get_weights(), start))
        self.assertGreater(plain, 2 * 3e-3)
        self.assertLess(averaged, 1.05 * 3e-3)  # one step, and the float16 storage of the bundles
        with self.assertRaisesRegex(MadnessValueError, "ema_momentum"):
            StageSchedule(1e-3, 0.1, 2, ema_momentum=1.0)

    def test_warm_start_into_scaled_relu(self):
        """A linear parent's output layer, rescaled into a per-band scaled ReLU, draws relu(parent)."""
        from lsst.meas.madness.networks import Decoder
        from lsst.meas.madness.training.train import _match_output_scale, _output_scale

        tiny = _tiny()
        parent = Decoder(45, 6, 16, tiny.decoder_filters, dense_units=tiny.dense_units, output_activation="linear")
        sky = np.array([1e-5, 1e-4, 1e-3, 2e-3, 3e-3, 4e-3], np.float32)  # network units
        config = _tiny(decoder_output_scale_sigma=0.1)
        scale = _output_scale(config, sky)
        np.testing.assert_allclose(scale, 0.1 * np.sqrt(sky), rtol=1e-6)
        child = Decoder(45, 6, 16, tiny.decoder_filters, dense_units=tiny.dense_units, output_scale=scale)
        child.set_weights(parent.get_weights())
        _match_output_scale(parent, child)
        z = np.random.default_rng(5).normal(size=(4, 16)).astype(np.float32)
        theirs, ours = np.asarray(parent(z)), np.asarray(child(z))
        self.assertGreater((theirs < 0).mean(), 0.1)
        np.testing.assert_allclose(ours, np.maximum(theirs, 0), rtol=1e-4, atol=1e-7)
        self.assertIsNone(_output_scale(_tiny(), sky))
        with self.assertRaisesRegex(MadnessValueError, "needs a 'relu'"):
            _tiny(decoder_output_activation="linear", decoder_output_scale_sigma=0.1)

    def test_loss_falls_with_fresh_noise(self):
        config = _tiny(seed=6, fresh_noise=True, decoder_output_activation="linear",
                       vae={**_tiny().vae.__dict__, "max_epochs": 8, "patience": None, "batch_size": 8, "learning_rate": 3e-3,
                            "schedule": "cosine"})
        out = self.tmp / "falls"
        train_madness(self.data, out, config, progress=False, figures=False)
        with open(out / "logs" / "vae.csv") as f:
            rows = list(csv.DictReader(f))
        loss = [float(r["loss"]) for r in rows]
        chi2 = [float(r["val_chi2_per_pixel"]) for r in rows]
        # 48 steps on new noise each time: the training loss and the validation chi^2 of the
        # decoded galaxies fall. An epoch's loss is mostly its few brightest galaxies' under that
        # epoch's noise and symmetries, so one late epoch can spike (epoch 6 here, op by op and
        # compiled alike on JAX): the median of the last three epochs is compared.
        self.assertLess(np.median(loss[-3:]), 0.7 * np.mean(loss[:2]), loss)
        self.assertLess(chi2[-1], chi2[0], chi2)

    @unittest.skipIf(keras.config.backend() != "tensorflow",
                     "bfloat16 through JAX's CPU convolutions: this test took 10 min there (2026-11-30), 2 on TF")
    def test_mixed_bfloat16(self):
        """bfloat16 compute trains (the loss falls) and leaves float32 networks and policy behind."""
        config = _tiny(seed=6, fresh_noise=True, decoder_output_activation="linear", precision="mixed_bfloat16",
                       vae={**_tiny().vae.__dict__, "max_epochs": 8, "patience": None, "batch_size": 8,
                            "learning_rate": 3e-3, "schedule": "cosine"})
        out = self.tmp / "bf16"
        bundle = train_madness(self.data, out, config, progress=False, figures=False)
        self.assertEqual(keras.config.dtype_policy().name, "float32")
        for net in (bundle.decoder, bundle.encoder, bundle.deblender_encoder, bundle.flow):
            self.assertEqual(net.dtype_policy.name, "float32", net.name)
        with open(out / "logs" / "vae.csv") as f:
            rows = list(csv.DictReader(f))
        loss = [float(r["loss"]) for r in rows]
        chi2 = [float(r["val_chi2_per_pixel"]) for r in rows]
        # Same schedule as test_loss_falls_with_fresh_noise; bfloat16's rounding makes the 48 steps
        # noisier, so the bar is lower than there, and it depends on the CPU's bfloat16 kernels:
        # the last two epochs' mean loss was below 0.9x the first two's on an Intel Xeon with AMX
        # and 0.93x on an AMD EPYC with AVX512-BF16 only (2026-12-01), falling every epoch on both.
        self.assertLess(np.mean(loss[-2:]), 0.96 * np.mean(loss[:2]), loss)
        self.assertLess(loss[-1], loss[len(loss) // 2], loss)
        self.assertLess(chi2[-1], chi2[0], chi2)
        for key, value in bundle.metadata.metrics.items():
            self.assertTrue(np.isfinite(value), key)
        self.assertEqual(bundle.metadata.training["config"]["precision"], "mixed_bfloat16")
        # A run directory written before `precision` existed still resumes (the field defaults).
        old = json.loads((out / "config.json").read_text())
        plain = dict(config.as_dict(), precision="float32")
        plain_dir = self.tmp / "bf16-old"
        shutil.copytree(out, plain_dir)
        old.pop("precision")
        (plain_dir / "config.json").write_text(json.dumps(old))
        train_madness(self.data, plain_dir, TrainingConfig.from_dict(plain), progress=False, figures=False)
        with self.assertRaisesRegex(MadnessValueError, "precision"):
            _tiny(precision="float16")

    def test_shard_by_shard_load(self):
        """The preallocated, shard-by-shard loader gives what concatenating every shard gives."""
        from lsst.meas.madness.training.train import _load

        norm = LinearNormalization()
        directory = self.data / "isolated-train"
        data = SimulatedDataset(directory)
        self.assertGreater(len(data.manifest.shards), 2)
        images, truth = data.load("images", "truth")
        for limit in (None, 20, 33):
            x, y, _ = _load(directory, limit, norm)
            n = len(images) if limit is None else limit
            self.assertEqual(x.shape, (n, 45, 45, 6))
            self.assertTrue(x.flags.c_contiguous and y.flags.c_contiguous)
            np.testing.assert_array_equal(x, to_network_layout(images[:n] / np.float32(norm.scale)))
            np.testing.assert_array_equal(y, to_network_layout(truth[:n] / np.float32(norm.scale)))
        (only, _) = _load(directory, 25, norm, names=("truth",))
        np.testing.assert_array_equal(only, to_network_layout(truth[:25] / np.float32(norm.scale)))

    def test_flow_latents_from_fresh_noise(self):
        """With fresh noise the flow's latents come from seeded noisy draws of the truth."""
        from lsst.meas.madness.networks import Encoder
        from lsst.meas.madness.training.augment import FreshNoise
        from lsst.meas.madness.training.train import _encode_fresh

        norm = LinearNormalization()
        data = SimulatedDataset(self.data / "isolated-train")
        images, truth = (to_network_layout(a / np.float32(norm.scale)) for a in data.load("images", "truth"))
        sky = norm.normalize_variance(np.array([data.manifest.info["sky_level"][b] for b in data.bands]))
        encoder = Encoder(45, 6, 4, [4, 4, 4, 4], dense_units=8)
        augment = FreshNoise(sky, norm.scale)
        z = _encode_fresh(encoder, truth, augment, seed=3, chunk=16)
        self.assertEqual(z.shape, (len(truth), 4))
        np.testing.assert_array_equal(z, _encode_fresh(encoder, truth, augment, seed=3, chunk=16))
        self.assertFalse(np.array_equal(z, _encode_fresh(encoder, truth, augment, seed=4, chunk=16)))
        # The draws are noise of the stored images' kind: the latents of the stored noisy images
        # differ from them by as much as two of our draws differ from each other.
        stored = np.asarray(encoder.encode_mean(images))
        other = _encode_fresh(encoder, truth, augment, seed=4, chunk=16)
        ratio = np.abs(stored - z).mean() / np.abs(other - z).mean()
        self.assertLess(abs(ratio - 1.0), 0.3)

    def test_suite_in_two_calls(self):
        """Isolated galaxies first, fewer blends later: one suite, one record."""
        suite = self.tmp / "two-calls"
        simulate_suite(suite, area_deg2=0.004, seed=5, kinds=("isolated",), n_train=12, n_validation=4,
                       progress=False)
        simulate_suite(suite, area_deg2=0.004, seed=5, kinds=("blended",), n_train=12, n_train_blended=6,
                       n_validation=4, progress=False)
        self.assertEqual(len(SimulatedDataset(suite / "isolated-train")), 12)
        self.assertEqual(len(SimulatedDataset(suite / "blended-train")), 6)
        self.assertEqual(len(SimulatedDataset(suite / "blended-validation")), 4)
        record = json.loads((suite / "suite.json").read_text())
        self.assertEqual(sorted(record["datasets"]), ["blended-train", "blended-validation",
                                                      "isolated-train", "isolated-validation"])
        self.assertEqual(record["earlier_requests"][0]["kinds"], ["isolated"])

    def test_missing_datasets(self):
        with self.assertRaisesRegex(MadnessValueError, "lacks the datasets"):
            train_madness(self.tmp / "nowhere", self.tmp / "x", _tiny(), progress=False)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    ignore_regexps = [r"skypy/data/kcorrect/", r"tfevents"]


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
