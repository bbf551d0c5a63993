"""Both Keras backends give the same numbers on the same weights and inputs."""

import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import keras
import lsst.utils.tests
import numpy as np
import pytest
from lsst.meas.madness import MadnessDeblender, MapSettings
from utils import quick_bundle_path

_PROBE = r"""
import json, sys
import numpy as np
from lsst.meas.madness import MadnessDeblender, MapSettings
d = MadnessDeblender.from_bundle(sys.argv[1])
inp = np.load(sys.argv[2])
res = d.deblend(inp["image"], inp["peaks"], variance=inp["variance"],
                settings=MapSettings(max_iter=15, min_iter=15))
np.savez(sys.argv[3], decoded=d.decode(inp["z"]), log_prior=d.log_prior(inp["z"]),
         init=d.initial_latents(inp["cutouts"]), loss=res.loss_history, latents=res.latents)
"""


# The comparison is symmetric (this backend against the other, in a subprocess): the TensorFlow
# pass of `make test` makes it, the JAX pass would repeat it.
@pytest.mark.one_backend
class BackendAgreementTestCase(lsst.utils.tests.TestCase):
    def test_other_backend_agrees(self):
        here = keras.config.backend()
        other = {"tensorflow": "jax", "jax": "tensorflow"}.get(here)
        if other is None:
            self.skipTest(f"backend {here} not compared")
        rng = np.random.default_rng(0)
        bundle = quick_bundle_path()
        d = MadnessDeblender.from_bundle(bundle)
        inputs = dict(
            z=rng.normal(0, 0.5, (5, 16)).astype("f4"),
            cutouts=np.abs(rng.normal(0, 0.05, (3, 6, 45, 45))).astype("f4"),
            image=(rng.normal(0, 20, (6, 70, 70)) + 200 * np.exp(-((np.arange(70) - 35) ** 2) / 20.0)).astype("f4"),
            variance=np.full((6, 70, 70), 400.0, "f4"),
            peaks=np.array([[30.0, 35.0], [40.0, 36.0]]),
        )
        with tempfile.TemporaryDirectory() as tmp:
            np.savez(Path(tmp) / "in.npz", **inputs)
            env = dict(os.environ, KERAS_BACKEND=other)
            subprocess.run([sys.executable, "-c", _PROBE, str(bundle), str(Path(tmp) / "in.npz"),
                            str(Path(tmp) / "out.npz")], check=True, env=env, capture_output=True)
            theirs = dict(np.load(Path(tmp) / "out.npz"))
        res = d.deblend(inputs["image"], inputs["peaks"], variance=inputs["variance"],
                        settings=MapSettings(max_iter=15, min_iter=15))
        np.testing.assert_allclose(d.decode(inputs["z"]), theirs["decoded"], rtol=1e-3, atol=1e-2)
        np.testing.assert_allclose(d.log_prior(inputs["z"]), theirs["log_prior"], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(d.initial_latents(inputs["cutouts"]), theirs["init"], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(res.loss_history, theirs["loss"], rtol=1e-4)
        np.testing.assert_allclose(res.latents, theirs["latents"], atol=1e-3)


_JAX_PRECISION_PROBE = r"""
import jax, keras
from lsst.meas.madness.backend import compile_function, compile_value_and_grad
net = keras.Sequential([keras.layers.Conv2D(4, 3, padding="same"), keras.layers.Flatten(), keras.layers.Dense(2)])
net.build((None, 8, 8, 6))
loss = lambda x, calls: keras.ops.sum(calls[0](x) ** 2, axis=1)
x = keras.random.normal((3, 8, 8, 6), seed=0)
print(jax.make_jaxpr(compile_value_and_grad(loss, [net]))(x))
print(jax.make_jaxpr(compile_function(lambda x, calls: calls[0](x), [net]))(x))
"""


@pytest.mark.one_backend
class CompiledWeightsTestCase(lsst.utils.tests.TestCase):
    """Compiled functions read the models' weights at every call: weights assigned after the
    first call are the ones used (the variable lists are gathered once, their values each time)."""

    def test_weights_assigned_later_are_used(self):
        from lsst.meas.madness.backend import compile_function, compile_value_and_grad

        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.layers.Input((3,)), keras.layers.Dense(2)])
        x = np.arange(12, dtype="f4").reshape(4, 3) / 10

        def outputs(x, *, calls):
            return calls[0](x)

        def loss(x, *, calls):
            return keras.ops.sum(calls[0](x) ** 2, axis=-1)

        forward = compile_function(outputs, [model])
        value_and_grad = compile_value_and_grad(loss, [model])
        for scale in (1.0, -3.0):  # the second pass after new weights
            kernel, bias = model.get_weights()
            model.set_weights([kernel * scale, bias + scale])
            kernel, bias = model.get_weights()
            want = x @ kernel + bias
            np.testing.assert_allclose(keras.ops.convert_to_numpy(forward(x)), want, rtol=1e-5, atol=1e-6)
            value, grad = value_and_grad(keras.ops.convert_to_tensor(x))
            np.testing.assert_allclose(keras.ops.convert_to_numpy(value), (want**2).sum(-1), rtol=1e-5)
            np.testing.assert_allclose(keras.ops.convert_to_numpy(grad), 2 * want @ kernel.T, rtol=1e-5, atol=1e-5)


class JaxPrecisionTestCase(lsst.utils.tests.TestCase):
    def test_float32_products_are_full_precision(self):
        """JAX's compiled steps ask for full float32 convolutions and products (no TF32 on GPUs)."""
        out = subprocess.run([sys.executable, "-c", _JAX_PRECISION_PROBE], check=True, capture_output=True,
                             text=True, env=dict(os.environ, KERAS_BACKEND="jax")).stdout
        lines = out.splitlines()
        ops = []  # each op's parameter block: from "op[" to its closing "]"
        for i, line in enumerate(lines):
            if "conv_general_dilated[" in line or "dot_general[" in line:
                end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("]"))
                ops.append(" ".join(lines[i:end]))
        # forward and backward of the conv and the dense layer, and the forward-only function
        self.assertGreaterEqual(len(ops), 6)
        for op in ops:
            self.assertIn("precision=(Precision.HIGHEST, Precision.HIGHEST)", op)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
