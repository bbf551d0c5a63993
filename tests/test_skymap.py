"""The simulated skymap (inner and outer patch boxes) and detect_isPrimary as Rubin sets it.

The end-to-end test simulates one scene over two overlapping 121-pixel patches, runs
``pipelines/madness.yaml`` on both with ``pipetask`` (a subprocess) and checks that every truth
galaxy that is detected primary is primary in exactly one patch, although the galaxies in the
overlap are detected in both.
"""

import os
import tempfile
import unittest

import lsst.utils.tests
import numpy as np
from astropy.table import Table
from lsst.meas.madness.errors import MadnessValueError
from lsst.meas.madness.skymap import SimSkyMap, is_patch_inner
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend


class SimSkyMapTestCase(lsst.utils.tests.TestCase):
    def test_boxes(self):
        skymap = SimSkyMap(patch_inner=101, patch_border=10)
        self.assertEqual(skymap.patch_size, 121)
        # Inner boxes tile the tract; outer boxes overlap their neighbours by twice the border.
        self.assertEqual(skymap.patch_inner_bbox(0), (0, 0, 101, 101))
        self.assertEqual(skymap.patch_inner_bbox(1), (0, 101, 101, 202))
        self.assertEqual(skymap.patch_outer_bbox(0), (-10, -10, 111, 111))
        self.assertEqual(skymap.patch_outer_bbox(1), (-10, 91, 111, 212))
        self.assertEqual(skymap.outer_bbox(2), (-10, -10, 111, 212))
        self.assertEqual(skymap.patch_yx0(1), (-10, 91))
        self.assertEqual(SimSkyMap.from_patch_size(121, patch_border=10), skymap)
        self.assertEqual(SimSkyMap.from_dict(skymap.to_dict()), skymap)
        with self.assertRaises(MadnessValueError):
            skymap.patch_inner_bbox(-1)
        with self.assertRaises(ValueError):
            SimSkyMap(patch_inner=0)

    def test_every_position_inner_in_one_patch(self):
        """Each position of the overlap is patch-inner in exactly one of the two patches."""
        skymap = SimSkyMap(patch_inner=101, patch_border=10)
        x = np.linspace(90.0, 112.0, 221)
        y = np.full_like(x, 50.0)
        inner = np.stack([is_patch_inner(x, y, skymap.patch_inner_bbox(p)) for p in (0, 1)])
        np.testing.assert_array_equal(inner.sum(axis=0), 1)
        np.testing.assert_array_equal(inner[0], x < 100.5)  # pixel 100 is patch 0's last column

    def test_centroid_flag_shrinks(self):
        box = (0, 0, 10, 10)
        self.assertEqual(is_patch_inner([0.0, 0.6], [5.0, 5.0], box, [True, True]).tolist(), [False, True])
        self.assertEqual(is_patch_inner([np.nan], [5.0], box).tolist(), [False])


class SetPrimaryFlagsTestCase(lsst.utils.tests.TestCase):
    def test_leaf_and_inner(self):
        from lsst.meas.madness.tasks import set_primary_flags

        objects = Table({
            "parent": [0, 1, 1, 0, 0],
            "deblend_nChild": [2, 0, 0, 0, 0],
            "x": [95.0, 99.0, 103.0, 50.0, np.nan],
            "y": [50.0, 50.0, 50.0, 50.0, 50.0],
            "centroid_flag": [False, False, False, False, True],
            "detect_isPrimary": np.zeros(5, bool),
            "detect_isPatchInner": np.zeros(5, bool),
            "detect_isTractInner": np.zeros(5, bool),
        })
        skymap = SimSkyMap(patch_inner=101, patch_border=10)
        set_primary_flags(objects, skymap, 0)
        self.assertEqual(objects["detect_isPatchInner"].tolist(), [True, True, False, True, False])
        self.assertEqual(objects["detect_isTractInner"].tolist(), [True, True, True, True, False])
        # The parent (not a leaf) and the child in patch 1's inner box are not primary here.
        self.assertEqual(objects["detect_isPrimary"].tolist(), [False, True, False, True, False])
        set_primary_flags(objects, skymap, 1)
        self.assertEqual(objects["detect_isPrimary"].tolist(), [False, False, True, False, False])
        set_primary_flags(objects)  # no skymap: every leaf
        self.assertEqual(objects["detect_isPrimary"].tolist(), [False, True, True, True, True])
        with self.assertRaises(ValueError):
            set_primary_flags(objects, skymap)


class OverlappingPatchesTestCase(lsst.utils.tests.TestCase):
    """Two overlapping patches through pipelines/madness.yaml: each galaxy primary once."""

    def test_each_galaxy_primary_once(self):
        from lsst.daf.butler import Butler
        from lsst.meas.madness.localrepo import (
            create_local_repo,
            ingest_patch,
            pipetask_command,
            primary_counts,
            run_logged,
            simulate_tract,
        )
        from lsst.meas.madness.skymap import SKYMAP_RUN
        from test_demo import _bundle

        skymap = SimSkyMap(patch_inner=101, patch_border=10)
        scene = simulate_tract(4, skymap, 2, n_galaxies=14, min_snr=20.0, group_shift=15)
        x = np.asarray(scene.truth["x"])
        in_overlap = (x >= 91) & (x < 111)
        self.assertGreaterEqual(int(in_overlap.sum()), 2, "the test needs galaxies in the overlap")
        with tempfile.TemporaryDirectory() as tmp:
            repo = os.path.join(tmp, "repo")
            create_local_repo(repo, skymap, n_patches=2)
            patches = [scene.cutout(skymap.patch_outer_bbox(p)) for p in (0, 1)]
            for p, patch in enumerate(patches):
                self.assertEqual(patch.yx0, skymap.patch_yx0(p))
                ingest_patch(repo, patch, p, "sim/coadds")
            # The overlap holds the same pixels in both patches.
            np.testing.assert_array_equal(patches[0].image[:, :, 101:], patches[1].image[:, :, :20])
            bundle = _bundle()
            config = ["deblend:maxIter=40", "deblend:minIter=10"]
            config += [f"deblend:bundlePath={bundle}"] if bundle is not None else []
            command = pipetask_command(repo, f"sim/coadds,{SKYMAP_RUN}", "madness/out", config=config,
                                       where=f"skymap = '{skymap.name}' AND tract = 0 AND patch IN (0, 1)")
            run_logged(command, os.path.join(tmp, "pipetask.log"), echo=None)
            with Butler.from_config(repo, collections=["madness/out"]) as butler:
                tables = [butler.get("deepCoadd_madnessObj", skymap=skymap.name, tract=0, patch=p)
                          for p in (0, 1)]
        for p, objects in enumerate(tables):
            self.assertIn("detect_isPatchInner", objects.colnames)
            self.assertTrue(np.asarray(objects["detect_isTractInner"])[np.isfinite(objects["x"])].all())
            primary = np.asarray(objects["detect_isPrimary"], bool)
            inner = is_patch_inner(objects["x"], objects["y"], skymap.patch_inner_bbox(p), objects["centroid_flag"])
            np.testing.assert_array_equal(primary & ~inner, False)
        counts = primary_counts(scene.truth, tables)
        overlap_detected = in_overlap & (counts["detected"] == 2)
        self.assertGreaterEqual(int(overlap_detected.sum()), 1, "no galaxy of the overlap detected in both")
        # Every galaxy detected is primary in exactly one patch, those of the overlap included.
        detected = counts["detected"] > 0
        np.testing.assert_array_equal(counts["primary"][detected], 1)
        np.testing.assert_array_equal(counts["primary"][~detected], 0)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    # SkyPy's kcorrect templates (the scene's catalogue) stay open for the life of the process.
    ignore_regexps = [r"skypy/data/kcorrect/"]


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
