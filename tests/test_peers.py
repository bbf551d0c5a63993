"""The peer deblenders of ``madness evaluate`` (scarlet_lite, classic scarlet, scarlet2).

The peers are built from their public sources by ``scripts/build-peers.sh``, which CI cannot
do (it downloads nothing): each test that runs a peer skips, saying why, when it is absent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import lsst.utils.tests
import numpy as np

from lsst.meas.madness.evaluation import methods
from lsst.meas.madness.evaluation.fields import iter_test_fields, simulate_test_fields
from lsst.meas.madness.errors import MadnessValueError
from lsst.meas.madness.evaluation.methods import (LEGACY_PSF_SIZE, PSF_SIZE, FieldInput, detection_footprints,
                                                  get_method, method_availability)
from lsst.meas.madness.evaluation.metrics import model_metrics, reference_metrics
from lsst.meas.madness.simulation import LsstConditions, TestFieldsConfig
from test_evaluate import bright_catalog
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

PEERS = ("scarlet_lite", "scarlet", "scarlet2")
# One small field of 4-5 bright galaxies with centres in a 36x36 px box (moderately blended).
SMALL_FIELD = TestFieldsConfig(field_size=95, inner=36, min_galaxies=4, max_galaxies=5, shard_size=1)


def _absent(name: str) -> str | None:
    return method_availability([name])[name]


class PeerAvailabilityTestCase(lsst.utils.tests.TestCase):
    def test_scarlet_absent_with_reason(self):
        """A scarlet interpreter that does not exist makes the method absent, saying why."""
        methods._probe_scarlet_python.cache_clear()
        try:
            with mock.patch.dict(os.environ, {"MADNESS_SCARLET_PYTHON": "/nonexistent/bin/python"}):
                reason = _absent("scarlet")
            self.assertIsNotNone(reason)
            self.assertIn("MADNESS_SCARLET_PYTHON", reason)
            self.assertIn("/nonexistent/bin/python", reason)
            self.assertIn("build-peers.sh", reason)
        finally:
            methods._probe_scarlet_python.cache_clear()

    def test_scarlet_python_without_scarlet(self):
        """An interpreter that runs but has no scarlet is not taken either."""
        methods._probe_scarlet_python.cache_clear()
        try:
            with mock.patch.dict(os.environ, {"MADNESS_SCARLET_PYTHON": shutil.which("true") or "/bin/true"}):
                # `true` exits 0 without printing versions: it must not count as scarlet's python
                python, why = methods.find_scarlet_python()
            self.assertIsNone(python)
            self.assertIn("did not report scarlet's version", why)
        finally:
            methods._probe_scarlet_python.cache_clear()

    def test_detection_footprints(self):
        """Rubin-style detection: a bright source is detected (and grown), pure noise is not."""
        rng = np.random.default_rng(1)
        shape = (2, 64, 64)
        variance = np.full(shape, 100.0)
        image = rng.normal(0, 10.0, shape)
        yy, xx = np.mgrid[:64, :64]
        image += 2000 * np.exp(-0.5 * ((yy - 32) ** 2 + (xx - 32) ** 2) / 2.0**2)
        mask = detection_footprints(image, variance, [1.5, 1.5])
        self.assertTrue(mask[32, 32])
        self.assertFalse(mask[2, 2])
        self.assertLess(mask.mean(), 0.2)
        self.assertFalse(detection_footprints(rng.normal(0, 10.0, shape), variance, [1.5, 1.5]).any())


class PeersBeatNoDeblendingTestCase(lsst.utils.tests.TestCase):
    """Each available peer on one small simulated field: less flux error than no deblending."""

    @classmethod
    def setUpClass(cls):
        cls.available = {name: _absent(name) for name in PEERS}
        if all(cls.available.values()):
            raise unittest.SkipTest("no peer deblender is installed here: "
                                    + "; ".join(f"{n}: {r}" for n, r in cls.available.items()))
        cls.tmp = Path(tempfile.mkdtemp(prefix="madness-peers-"))
        directory = simulate_test_fields(cls.tmp / "fields", 1, seed=5, config=SMALL_FIELD,
                                         catalog=bright_catalog(40, seed=5), progress=False).directory
        cls.field = next(iter(iter_test_fields(directory)))
        cls.bands = tuple(cls.field.bands)
        cls.conditions = LsstConditions.from_surveycodex(bands=cls.bands)
        cls.r = cls.bands.index("r")
        f = cls.field
        cls.ref = reference_metrics(f.image[[cls.r]], f.isolated[:, [cls.r]], f.catalog,
                                    variance=f.variance[[cls.r]], conditions=cls.conditions, bands=("r",),
                                    centers_xy=f.centers_xy)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(getattr(cls, "tmp", ""), ignore_errors=True)

    def _check(self, name: str):
        if self.available[name] is not None:
            self.skipTest(f"{name} is absent: {self.available[name]}")
        f = self.field
        # 41-px PSF images: the default (201 px) is wider than this 95-px field, which scarlet2
        # refuses (test_scarlet2_psf_wider_than_field) and madness evaluate cuts to the field.
        method = get_method(name)(self.bands, self.conditions, psf_size=LEGACY_PSF_SIZE)
        method.setup()
        try:
            variance = np.broadcast_to(np.asarray(f.variance, np.float32)[:, None, None], f.image.shape).copy()
            out = method.deblend(FieldInput(f.field_id, f.image, variance, f.centers_xy, self.bands))
        finally:
            method.close()
        self.assertEqual(out.models.shape[:2], (f.n_galaxies, len(self.bands)))
        self.assertTrue(np.all(np.isfinite(out.models)))
        self.assertGreater(out.seconds, 0)
        metrics = model_metrics(self.ref, out.models[:, [self.r]], models_yx0=out.models_yx0,
                                conditions=self.conditions)
        blended = np.nanmean(np.abs(self.ref.metrics["flux_residual_blended"][:, 0]))
        deblended = np.nanmean(np.abs(metrics["flux_residual"][:, 0]))
        self.assertLess(deblended, blended, f"{name}: mean abs(dF/F) {deblended:.3f} vs blended {blended:.3f}")
        return out

    def test_scarlet_lite(self):
        out = self._check("scarlet_lite")
        self.assertEqual(len(out.info["deconvolve_iter"]), len(self.bands))

    def test_scarlet(self):
        out = self._check("scarlet")
        self.assertIsNotNone(out.extra_peak_rss)
        self.assertGreaterEqual(out.info["n_iter"], 1)

    def test_scarlet2(self):
        self._check("scarlet2")

    def test_scarlet2_psf_wider_than_field(self):
        """A PSF image wider than the field: a clear error, not JAX's."""
        if self.available["scarlet2"] is not None:
            self.skipTest(f"scarlet2 is absent: {self.available['scarlet2']}")
        f = self.field
        self.assertGreater(PSF_SIZE, min(f.image.shape[1:]))
        method = get_method("scarlet2")(self.bands, self.conditions)
        method.setup()
        try:
            variance = np.broadcast_to(np.asarray(f.variance, np.float32)[:, None, None], f.image.shape).copy()
            with self.assertRaisesRegex(MadnessValueError, "psf_size no larger than the field"):
                method.deblend(FieldInput(f.field_id, f.image, variance, f.centers_xy, self.bands))
        finally:
            method.close()


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
