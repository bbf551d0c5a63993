"""Both Keras backends give the same numbers on the same weights and inputs."""

import json
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


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
