"""Networks: paper sizes, shapes, config and saving round trips, layout and normalisation."""

import json
import os
import tempfile
import unittest

import keras
import lsst.utils.tests
import numpy as np
from lsst.meas.madness.errors import MadnessRangeError
from lsst.meas.madness.networks import (
    MADE,
    Decoder,
    Encoder,
    LinearNormalization,
    MaskedAutoregressiveFlow,
    from_network_layout,
    gaussian_params_size,
    latent_mean,
    latent_scale_tril,
    to_network_layout,
)


class PaperSizeTestCase(lsst.utils.tests.TestCase):
    """The architectures reproduce the paper's parameter counts exactly."""

    def test_encoder(self):
        enc = Encoder()
        self.assertEqual(enc.count_params(), 6_691_608)  # "around 6.7M"
        self.assertEqual(enc.output_shape, (None, 152))
        self.assertEqual(gaussian_params_size(16), 152)

    def test_decoder(self):
        dec = Decoder()
        self.assertEqual(dec.count_params(), 3_473_062)  # "3.5M"
        self.assertEqual(dec.output_shape, (None, 45, 45, 6))

    def test_flow(self):
        flow = MaskedAutoregressiveFlow()
        flow.build()
        self.assertEqual(flow.count_params(), 15_936)  # paper section 3.3

    def test_decoder_output_non_negative(self):
        dec = Decoder(filters=(8, 8, 8), dense_units=16)
        out = keras.ops.convert_to_numpy(dec(np.random.default_rng(0).normal(size=(4, 16)).astype("f4")))
        self.assertEqual(out.shape, (4, 45, 45, 6))
        self.assertGreaterEqual(out.min(), 0.0)


class BandScaledOutputTestCase(lsst.utils.tests.TestCase):
    """The per-band scaled ReLU output (``Decoder(output_scale=...)``)."""

    scale = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)

    def test_scaled_relu_is_scale_times_relu_of_linear(self):
        # Oracle: the linear decoder with the same weights; its output through numpy's
        # max(., 0) times the scale is what the scaled decoder must draw, band by band.
        linear = Decoder(filters=(8, 8, 8), dense_units=16, output_activation="linear")
        scaled = Decoder(filters=(8, 8, 8), dense_units=16, output_activation="relu", output_scale=self.scale)
        self.assertEqual(scaled.count_params(), linear.count_params())  # the scale is not trained
        scaled.set_weights(linear.get_weights())
        z = np.random.default_rng(3).normal(size=(4, 16)).astype("f4")
        pre = keras.ops.convert_to_numpy(linear(z))
        out = keras.ops.convert_to_numpy(scaled(z))
        self.assertGreater((pre < 0).mean(), 0.1)
        np.testing.assert_allclose(out, np.maximum(pre, 0) * np.array(self.scale, "f4"), rtol=1e-6, atol=0)
        self.assertEqual(Decoder.from_config(scaled.get_config()).output_scale, self.scale)

    def test_refused(self):
        with self.assertRaisesRegex(ValueError, "applies to a 'relu'"):
            Decoder(filters=(8, 8, 8), dense_units=16, output_activation="linear", output_scale=self.scale)
        with self.assertRaisesRegex(ValueError, "6 bands"):
            Decoder(filters=(8, 8, 8), dense_units=16, output_scale=self.scale[:5])
        with self.assertRaisesRegex(ValueError, "positive"):
            Decoder(filters=(8, 8, 8), dense_units=16, output_scale=(0.0,) + self.scale[1:])
        with self.assertRaisesRegex(ValueError, "output_activation"):
            Decoder(output_activation="softplus")


class RoundTripTestCase(lsst.utils.tests.TestCase):
    """get_config -> from_config gives the same config; saving keeps outputs."""

    def _models(self):
        flow = MaskedAutoregressiveFlow(latent_dim=4, num_layers=3, hidden_units=(8, 8))
        flow.build()
        return [
            (Encoder(filters=(4, 4, 4, 4), dense_units=8), np.ones((2, 45, 45, 6), "f4")),
            (Decoder(filters=(8, 4, 4), dense_units=8), np.ones((2, 16), "f4")),
            (Decoder(filters=(8, 4, 4), dense_units=8, output_scale=(0.5, 1, 2, 3, 4, 5)), np.ones((2, 16), "f4")),
            (flow, np.linspace(-1, 1, 8, dtype="f4").reshape(2, 4)),
        ]

    def test_config_round_trip(self):
        for model, _ in self._models():
            config = model.get_config()
            clone = type(model).from_config(config)
            self.assertEqual(json.dumps(clone.get_config(), sort_keys=True), json.dumps(config, sort_keys=True))
        made = MADE(5, hidden_units=(7,), activation="relu")
        self.assertEqual(MADE.from_config(made.get_config()).get_config(), made.get_config())

    def test_keras_saving(self):
        with tempfile.TemporaryDirectory() as tmp:
            for k, (model, x) in enumerate(self._models()):
                expected = keras.ops.convert_to_numpy(model(x))
                path = os.path.join(tmp, f"m{k}.keras")
                model.save(path)
                loaded = keras.saving.load_model(path)
                np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, rtol=1e-6)


class HelpersTestCase(lsst.utils.tests.TestCase):
    def test_layout_round_trip(self):
        a = np.arange(2 * 6 * 3 * 4).reshape(2, 6, 3, 4)
        self.assertEqual(to_network_layout(a).shape, (2, 3, 4, 6))
        np.testing.assert_array_equal(from_network_layout(to_network_layout(a)), a)
        np.testing.assert_array_equal(to_network_layout(a)[1, 2, 3], a[1, :, 2, 3])

    def test_normalization(self):
        norm = LinearNormalization()
        self.assertEqual(norm.scale, 1e4)
        np.testing.assert_allclose(norm.denormalize(norm.normalize(np.array([123.0, 4e5]))), [123.0, 4e5])
        with self.assertRaises(ValueError):
            LinearNormalization(0.0)
        with self.assertRaises(MadnessRangeError):
            LinearNormalization(-1.0)

    def test_gaussian_head(self):
        params = np.random.default_rng(1).normal(size=(3, gaussian_params_size(4))).astype("f4")
        mean = keras.ops.convert_to_numpy(latent_mean(params, 4))
        np.testing.assert_array_equal(mean, params[:, :4])
        tril = keras.ops.convert_to_numpy(latent_scale_tril(params, 4))
        self.assertTrue(np.allclose(np.triu(tril, 1), 0))
        self.assertTrue((np.diagonal(tril, axis1=1, axis2=2) > 0).all())
        # Entry (1, 0) is the second stored value (row-major lower triangle: (0,0), (1,0), (1,1), ...).
        np.testing.assert_allclose(tril[:, 1, 0], params[:, 5])


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
