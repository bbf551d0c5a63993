"""The flow prior's density: autoregressive masks, numerical Jacobian, and TFP as oracle."""

import unittest

import keras
import lsst.utils.tests
import numpy as np
from lsst.meas.madness.networks import MaskedAutoregressiveFlow
from lsst.meas.madness.networks.made import MADE, made_masks


def _randomized_flow(latent_dim=16, seed=0, scale=0.3):
    """A flow whose weights are all non-zero (untrained output layers would be near trivial)."""
    flow = MaskedAutoregressiveFlow(latent_dim=latent_dim, seed=seed)
    flow.build()
    rng = np.random.default_rng(seed)
    for v in flow.weights:
        v.assign(rng.normal(0, scale, v.shape).astype(v.dtype))
    return flow


class MadeTestCase(lsst.utils.tests.TestCase):
    def test_autoregressive(self):
        """Output i does not change when inputs >= i change."""
        made = MADE(6, hidden_units=(12, 12))
        made.build((None, 6))
        rng = np.random.default_rng(2)
        for v in made.weights:
            v.assign(rng.normal(size=v.shape).astype("float32"))
        x = rng.normal(size=(1, 6)).astype("float32")
        base = keras.ops.convert_to_numpy(made(x))
        for j in range(6):
            x2 = x.copy()
            x2[0, j] += 1.0
            changed = np.abs(keras.ops.convert_to_numpy(made(x2)) - base).max(axis=-1)[0] > 1e-6
            # Only outputs i > j may depend on input j.
            self.assertFalse(changed[: j + 1].any(), f"input {j} leaks into outputs {np.flatnonzero(changed)}")
            if j < 5:
                self.assertTrue(changed[j + 1 :].any())


class DensityTestCase(lsst.utils.tests.TestCase):
    def test_round_trip(self):
        flow = _randomized_flow()
        z = keras.ops.convert_to_numpy(flow.sample(5, seed=4))
        u, _ = flow.inverse(z)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(flow.forward(u)), z, atol=2e-4)

    def test_log_det_numerical_jacobian(self):
        flow = _randomized_flow(latent_dim=16, seed=1, scale=0.1)
        z0 = np.random.default_rng(3).normal(size=(16,))

        def inverse(z):
            return keras.ops.convert_to_numpy(flow.inverse(z.astype("float32"))[0]).astype(np.float64)

        _, log_det = flow.inverse(z0[None].astype("float32"))
        # Richardson-extrapolated central differences: accurate to O(eps^4) in float32 arithmetic.
        jac = np.zeros((16, 16))
        eye = np.eye(16)
        for j in range(16):
            d1 = (inverse(z0 + 1e-2 * eye[j:j + 1]) - inverse(z0 - 1e-2 * eye[j:j + 1]))[0] / 2e-2
            d2 = (inverse(z0 + 2e-2 * eye[j:j + 1]) - inverse(z0 - 2e-2 * eye[j:j + 1]))[0] / 4e-2
            jac[:, j] = (4 * d1 - d2) / 3
        # log|det|: the permutations contribute a sign of +-1, not a magnitude.
        _, numerical = np.linalg.slogdet(jac)
        self.assertAlmostEqual(float(keras.ops.convert_to_numpy(log_det)[0]), numerical, delta=2e-3)

    def test_log_prob_integrates_to_one_in_1d_slices(self):
        """A 2-d flow's density integrates to ~1 on a grid (normalisation of the base term)."""
        flow = _randomized_flow(latent_dim=2, seed=5)
        grid = np.linspace(-12, 12, 401)
        xx, yy = np.meshgrid(grid, grid)
        pts = np.stack([xx.ravel(), yy.ravel()], 1).astype("float32")
        dens = np.exp(keras.ops.convert_to_numpy(flow.log_prob(pts)))
        self.assertAlmostEqual(float(dens.sum() * (grid[1] - grid[0]) ** 2), 1.0, delta=0.02)


class TfpOracleTestCase(lsst.utils.tests.TestCase):
    """log_prob equals TFP's MaskedAutoregressiveFlow chain built with the same weights and masks."""

    def setUp(self):
        try:
            import tensorflow as tf
            import tensorflow_probability as tfp
        except ImportError as exc:  # pragma: no cover - the pinned environment has both
            self.skipTest(f"TFP not importable: {exc}")
        self.tf, self.tfp = tf, tfp

    def test_masks_match_tfp(self):
        tfb = self.tfp.bijectors
        net = tfb.AutoregressiveNetwork(params=2, hidden_units=[32, 32], event_shape=[16], activation="tanh")
        net.build((None, 16))
        for ours, theirs in zip(made_masks(16, (32, 32), 2), net._masks):
            np.testing.assert_array_equal(ours, np.asarray(theirs))

    def test_log_prob_matches_tfp(self):
        tf, tfp = self.tf, self.tfp
        tfb, tfd = tfp.bijectors, tfp.distributions
        flow = _randomized_flow(seed=7)
        bijectors = []
        for i, made in enumerate(flow.mades):
            net = tfb.AutoregressiveNetwork(params=2, hidden_units=[32, 32], event_shape=[16], activation="tanh")
            net.build((None, 16))
            # TFP applies its masks through the kernel initializer and constraint, not in the
            # forward pass, so it must be given the masked kernels.
            masks = made_masks(16, (32, 32), 2)
            weights = []
            for kernel, bias, mask in zip(made.kernels, made.biases, masks):
                weights += [keras.ops.convert_to_numpy(kernel) * mask, keras.ops.convert_to_numpy(bias)]
            net.set_weights(weights)
            bijectors.append(tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=net))
            if i < flow.num_layers - 1:
                bijectors.append(tfb.Permute(permutation=flow.permutations[i]))
        chain = tfb.Chain(list(reversed(bijectors)))
        dist = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(loc=tf.zeros(16)), chain)
        z = np.random.default_rng(8).normal(size=(64, 16)).astype("float32")
        expected = dist.log_prob(z).numpy()
        ours = keras.ops.convert_to_numpy(flow.log_prob(z))
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=2e-4)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
