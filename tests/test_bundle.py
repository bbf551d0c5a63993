"""Model bundle: round trip, float16 storage, refusal of damaged or mismatched bundles."""

import json
import shutil
import tempfile
import unittest
from pathlib import Path

import lsst.utils.tests
import numpy as np
from lsst.meas.madness import BundleMetadata, MadnessBundleError, MadnessDeblender, MadnessValueError, ModelBundle
from lsst.meas.madness.networks import Decoder, Encoder, MaskedAutoregressiveFlow
from utils import BANDS, SKY_VARIANCE, quick_bundle_path


def _small_bundle(dtype="float32", trained=False):
    flow = MaskedAutoregressiveFlow()
    flow.build()
    meta = BundleMetadata(bands=BANDS, stamp_size=45, pixel_scale=0.2, normalization=1e4, latent_dim=16,
                          trained=trained, weights_dtype=dtype)
    return ModelBundle(meta, Decoder(filters=(16, 8, 8), dense_units=32), flow,
                       Encoder(filters=(8, 8, 8, 8), dense_units=32))


class BundleTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_round_trip_float32(self):
        bundle = _small_bundle("float32")
        path = bundle.save(self.tmp / "b")
        loaded = ModelBundle.load(path)
        self.assertEqual(loaded.metadata, bundle.metadata)
        z = np.random.default_rng(0).normal(size=(3, 16)).astype("f4")
        np.testing.assert_array_equal(loaded.decoder.predict(z, verbose=0), bundle.decoder.predict(z, verbose=0))
        with self.assertRaises(MadnessBundleError):
            bundle.save(path)  # no silent overwrite
        bundle.save(path, overwrite=True)

    def test_float16_storage_below_noise(self):
        """float16 weights change decoded stamps far less than the pixel noise."""
        bundle = ModelBundle.load(quick_bundle_path())
        meta = BundleMetadata(**{**bundle.metadata.as_dict(), "weights_dtype": "float16"})
        half = ModelBundle(meta, bundle.decoder, bundle.flow, bundle.deblender_encoder)
        reloaded = ModelBundle.load(half.save(self.tmp / "half"))
        z = np.random.default_rng(1).normal(0, 0.5, size=(20, 16)).astype("f4")
        full = bundle.decoder.predict(z, verbose=0) * 1e4
        approx = reloaded.decoder.predict(z, verbose=0) * 1e4
        noise = np.sqrt(SKY_VARIANCE.min())
        self.assertLess(np.abs(full - approx).max(), 0.05 * noise)
        lp_full = bundle.flow.log_prob(z)
        lp_half = reloaded.flow.log_prob(z)
        np.testing.assert_allclose(np.asarray(lp_half), np.asarray(lp_full), atol=0.05)

    def test_paper_size_files_fit_limits(self):
        flow = MaskedAutoregressiveFlow()
        flow.build()
        meta = BundleMetadata(bands=BANDS, stamp_size=45, pixel_scale=0.2, normalization=1e4, latent_dim=16,
                              trained=False, weights_dtype="float16")
        path = ModelBundle(meta, Decoder(), flow, Encoder(), encoder=Encoder()).save(self.tmp / "paper")
        sizes = [f.stat().st_size for f in path.iterdir()]
        self.assertLess(max(sizes), 16 * 2**20)
        deblend_files = [f for f in path.iterdir() if not f.name.startswith("encoder.")]
        self.assertLess(sum(f.stat().st_size for f in deblend_files), 40 * 2**20)

    def test_refuses_damage(self):
        path = _small_bundle().save(self.tmp / "b")
        shard = path / "decoder.weights.000.npz"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
        with self.assertRaisesRegex(MadnessBundleError, "sha256"):
            ModelBundle.load(path)
        shard.write_bytes(bytes(data[:-100]))
        with self.assertRaisesRegex(MadnessBundleError, "truncated"):
            ModelBundle.load(path)
        shard.unlink()
        with self.assertRaisesRegex(MadnessBundleError, "missing"):
            ModelBundle.load(path)
        with self.assertRaisesRegex(MadnessBundleError, "not a model bundle"):
            ModelBundle.load(self.tmp)

    def test_refuses_unknown_version_and_mismatch(self):
        path = _small_bundle().save(self.tmp / "b")
        doc = json.loads((path / "bundle.json").read_text())
        doc["metadata"]["schema_version"] = "9.0.0"
        (path / "bundle.json").write_text(json.dumps(doc))
        with self.assertRaisesRegex(MadnessBundleError, "schema version"):
            ModelBundle.load(path)
        doc["metadata"]["schema_version"] = "1.0.0"
        doc["metadata"]["bands"] = ["g", "r", "i"]
        (path / "bundle.json").write_text(json.dumps(doc))
        with self.assertRaisesRegex(MadnessBundleError, "bands"):
            ModelBundle.load(path)

    def test_shared_networks_written_once_and_verified(self):
        """A decoder-only continuation refers to its parent's identical networks by sha256."""
        parent = _small_bundle("float16")
        parent_path = parent.save(self.tmp / "parent")
        student_decoder = Decoder(filters=(8, 8, 8), dense_units=32)
        z = np.random.default_rng(2).normal(size=(4, 16)).astype("f4")
        student_decoder(z)
        child = ModelBundle(parent.metadata, student_decoder, parent.flow, parent.deblender_encoder)
        # A network that differs from the parent's (another decoder) is written; the rest are not.
        child_path = child.save(self.tmp / "child", share_with="../parent")
        written = sorted(f.name for f in child_path.iterdir())
        self.assertEqual(written, ["bundle.json", "decoder.weights.000.npz"])
        loaded = ModelBundle.load(child_path)
        full = ModelBundle.load(child.save(self.tmp / "full"))
        np.testing.assert_array_equal(loaded.decoder.predict(z, verbose=0),
                                      full.decoder.predict(z, verbose=0))
        reloaded_parent = ModelBundle.load(parent_path)
        for name in ("flow", "deblender_encoder"):
            for mine, theirs in zip(loaded.networks[name].weights, reloaded_parent.networks[name].weights):
                np.testing.assert_array_equal(np.asarray(mine.value), np.asarray(theirs.value))
        # Stored in float32, the flow's arrays differ in dtype from the parent's float16: written in full.
        meta32 = BundleMetadata(**{**parent.metadata.as_dict(), "weights_dtype": "float32"})
        full32 = ModelBundle(meta32, student_decoder, parent.flow, parent.deblender_encoder).save(
            self.tmp / "child32", share_with="../parent")
        self.assertIn("flow.weights.000.npz", [f.name for f in full32.iterdir()])
        # The shared file changed (a new parent written over the old one): refused, with the reason.
        _small_bundle("float16").save(parent_path, overwrite=True)
        with self.assertRaisesRegex(MadnessBundleError, "shared with '../parent'"):
            ModelBundle.load(child_path)
        shutil.rmtree(parent_path)
        with self.assertRaisesRegex(MadnessBundleError, "missing"):
            ModelBundle.load(child_path)
        with self.assertRaisesRegex(MadnessBundleError, "absolute path"):
            child.save(self.tmp / "abs", share_with=str(self.tmp / "full"))
        with self.assertRaisesRegex(MadnessBundleError, "Cannot share"):
            child.save(self.tmp / "nothing", share_with="packaged:no-such-bundle")

    def test_untrained_refused_by_default(self):
        path = _small_bundle(trained=False).save(self.tmp / "b")
        with self.assertRaisesRegex(MadnessBundleError, "untrained"):
            MadnessDeblender.from_bundle(path)
        MadnessDeblender.from_bundle(path, allow_untrained=True)

    def test_default_bundle_absent_is_clear(self):
        from lsst.meas.madness.io.bundle import default_bundle_path

        if (default_bundle_path() / "bundle.json").exists():
            self.skipTest("a packaged default bundle exists")
        with self.assertRaisesRegex(MadnessBundleError, "No packaged default bundle"):
            MadnessDeblender.from_bundle()

    def test_band_order_checked(self):
        deblender = MadnessDeblender.from_bundle(_small_bundle().save(self.tmp / "b"), allow_untrained=True)
        image = np.zeros((6, 50, 50), "f4")
        with self.assertRaisesRegex(MadnessValueError, "order"):
            deblender.deblend(image, [[25, 25]], variance=image + 1, bands="grizyu")
        with self.assertRaisesRegex(MadnessValueError, "do not match"):
            deblender.deblend(image, [[25, 25]], variance=image + 1, bands="ugrizY")
        with self.assertRaisesRegex(MadnessValueError, "expects 6"):
            deblender.deblend(image[:5], [[25, 25]], variance=image[:5] + 1)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
