"""MadnessDetectionTask: sep footprints and peaks on a synthetic multiband patch (no model needed)."""

import unittest

import lsst.utils.tests
import numpy as np
from lsst.meas.madness.tasks import (
    MadnessDetectionConfig,
    MadnessDetectionTask,
    MultibandCoadd,
    footprints_from_table,
    source_id_prefix,
)
from lsst.pipe.base.testUtils import assertValidOutput
from task_utils import (
    BANDS,
    NAN_HOLE,
    PATCH_SHAPE,
    PATCH_YX0,
    SCENE_GROUPS,
    SCENE_PEAKS,
    SKY_VARIANCE,
    masked_images,
)
from utils import MadnessTestCase, synthetic_galaxies


def _patch(seed=6):
    """Synthetic galaxies (45x45 stamps) at the scene's peaks, with noise and a NaN hole."""
    rng = np.random.default_rng(seed)
    stamps = 3.0 * synthetic_galaxies(len(SCENE_PEAKS), seed=seed)
    image = np.zeros((6, PATCH_SHAPE[0] + 44, PATCH_SHAPE[1] + 44), np.float32)
    for (x, y), stamp in zip(SCENE_PEAKS.astype(int), stamps):
        image[:, y : y + 45, x : x + 45] += stamp  # padded frame: stamp centre at (x+22, y+22)
    image = image[:, 22:-22, 22:-22]
    var = np.broadcast_to(SKY_VARIANCE[:, None, None], image.shape).astype(np.float32)
    image = image + rng.normal(size=image.shape).astype(np.float32) * np.sqrt(var)
    image[:, NAN_HOLE[0], NAN_HOLE[1]] = np.nan
    return image, var


class DetectionTestCase(MadnessTestCase):
    @classmethod
    def setUpClass(cls):
        cls.image, cls.variance = _patch()
        cls.coadds = masked_images(cls.image, cls.variance)
        cls.task = MadnessDetectionTask(config=MadnessDetectionConfig())
        cls.result = cls.task.run(coadds=cls.coadds, idPrefix=source_id_prefix(2, 7))
        cls.det = cls.result.detections
        cls.footprints = footprints_from_table(cls.result.detectionSpans)

    def test_detection_image(self):
        coadd = MultibandCoadd.from_masked_images(self.coadds, bands=BANDS)
        image, variance, bad = coadd.detection_image()
        w = 1.0 / self.variance
        expected = (w * np.nan_to_num(self.image)).sum(0) / w.sum(0)
        good = ~bad
        self.assertTrue(bad[NAN_HOLE].all())
        self.assertImagesClose(image[good], expected[good], rtol=1e-4, atol=1e-3)
        self.assertImagesClose(variance[good], (1.0 / w.sum(0))[good], rtol=1e-5)

    def test_one_parent_per_group_with_all_its_peaks(self):
        parents = self.det[self.det["parent"] == 0]
        self.assertEqual(len(parents), len(SCENE_GROUPS))
        self.assertEqual(len(set(self.det["id"])), len(self.det))
        self.assertTrue((self.det["id"] > source_id_prefix(2, 7)).all())
        self.assertEqual(set(self.footprints), set(parents["id"]))
        for members in SCENE_GROUPS:
            xy = SCENE_PEAKS[members].astype(int) + np.array([PATCH_YX0[1], PATCH_YX0[0]])
            fp_ids = {pid for pid, fp in self.footprints.items() if fp.contains(xy[:, 1], xy[:, 0]).all()}
            self.assertEqual(len(fp_ids), 1, members)
            (pid,) = fp_ids
            peaks = self.det[self.det["parent"] == pid]
            self.assertEqual(len(peaks), len(members), members)
            self.assertEqual(parents[parents["id"] == pid]["n_peaks"][0], len(members))
            # Each true centre has a detected peak within 2 pixels.
            d = np.hypot(peaks["peak_x"][:, None] - xy[None, :, 0], peaks["peak_y"][:, None] - xy[None, :, 1])
            self.assertTrue((d.min(axis=0) <= 2).all(), d)
            self.assertTrue(self.footprints[pid].contains(peaks["peak_y"], peaks["peak_x"]).all())
            self.assertTrue((peaks["peak_significance"] > 3).all())

    def test_footprints_do_not_overlap(self):
        seen = set()
        for fp in self.footprints.values():
            pixels = set(zip(*map(np.ndarray.tolist, fp.pixels())))
            self.assertFalse(pixels & seen)
            seen |= pixels

    def test_all_bad_image(self):
        image = np.full_like(self.image, np.nan)
        result = MadnessDetectionTask(config=MadnessDetectionConfig()).run(
            coadds=masked_images(image, self.variance)
        )
        self.assertEqual(len(result.detections), 0)
        self.assertEqual(len(result.detectionSpans), 0)

    def test_valid_output(self):
        assertValidOutput(self.task, self.result)
        self.assertEqual(self.task.metadata["n_parents"], len(SCENE_GROUPS))


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
