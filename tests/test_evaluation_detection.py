"""lsst.meas.madness.evaluation.detection: matching, unrecognised blends and pairs on hand-made cases."""

import unittest

import lsst.utils.tests
import numpy as np
from lsst.meas.madness.errors import MadnessValueError
from lsst.meas.madness.evaluation.detection import match_one_to_one, score_detections, summarise_detections
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend


class DetectionScoreTestCase(lsst.utils.tests.TestCase):
    def test_match_is_one_to_one(self):
        truth = np.array([[10.0, 10.0], [12.0, 10.0]])
        det = np.array([[11.0, 10.0]])  # within 2.5 px of both: only one match
        ti, dj = match_one_to_one(truth, det, 2.5)
        self.assertEqual(len(ti), 1)
        ti, dj = match_one_to_one(truth, np.array([[20.0, 10.0]]), 2.5)
        self.assertEqual(len(ti), 0)

    def test_match_equals_dense_assignment(self):
        """Solved group by group, the match has as many pairs and the same total separation as
        scipy's Hungarian assignment on the whole dense matrix (pairs beyond the radius
        forbidden); non-finite positions match nothing."""
        from scipy.optimize import linear_sum_assignment

        rng = np.random.default_rng(11)
        for trial in range(100):
            n, m = rng.integers(0, 30, size=2)
            truth = rng.uniform(0, 25, (n, 2))
            det = np.vstack([truth[: min(n, m)] + rng.normal(0, 1.5, (min(n, m), 2)),
                             rng.uniform(0, 25, (m - min(n, m), 2))])
            if n and trial % 5 == 0:
                truth[0] = np.nan
            ti, dj = match_one_to_one(truth, det, 3.0)
            self.assertEqual(len(set(ti.tolist())), len(ti))
            self.assertEqual(len(set(dj.tolist())), len(dj))
            dist = np.hypot(truth[:, None, 0] - det[None, :, 0], truth[:, None, 1] - det[None, :, 1])
            dist = np.where(np.isfinite(dist), dist, 1e9)
            r, c = linear_sum_assignment(np.where(dist <= 3.0, dist, 1e6))
            keep = dist[r, c] <= 3.0
            self.assertEqual(len(ti), int(keep.sum()), trial)
            self.assertAlmostEqual(dist[ti, dj].sum() if len(ti) else 0.0, dist[r[keep], c[keep]].sum(), places=9)

    def test_match_prefers_the_brighter_truth(self):
        # An unresolved pair 3.6 px apart and one detection 1.1 px from the faint member, 2.5 px
        # from the bright one: by distance it is the faint one's; by brightness the bright one's.
        truth = np.array([[10.0, 10.0], [13.6, 10.0]])
        det = np.array([[12.5, 10.0]])
        ti, dj = match_one_to_one(truth, det, 3.0)
        np.testing.assert_array_equal(ti, [1])
        ti, dj = match_one_to_one(truth, det, 3.0, truth_brightness=np.array([10.0, 1.0]))
        np.testing.assert_array_equal(ti, [0])
        np.testing.assert_array_equal(dj, [0])
        # Two detections, one on each member: both matched, each to its own, whatever the fluxes.
        det = np.array([[10.2, 10.0], [13.4, 10.0]])
        for brightness in ([10.0, 1.0], [1.0, 10.0]):
            ti, dj = match_one_to_one(truth, det, 3.0, truth_brightness=np.array(brightness))
            np.testing.assert_array_equal(ti, [0, 1])
            np.testing.assert_array_equal(dj, [0, 1])
        with self.assertRaises(MadnessValueError):
            match_one_to_one(truth, det, 3.0, truth_brightness=np.ones(3))

    def test_brightness_match_keeps_the_count(self):
        """Oracles: when every truth is within the radius of every detection, the k brightest
        truths are the matched ones (k = the fewer of truths and detections); in general the
        number of matches is the dense Hungarian assignment's (pairs beyond the radius forbidden),
        brightness or not."""
        from scipy.optimize import linear_sum_assignment

        rng = np.random.default_rng(5)
        for trial in range(60):
            n, m = rng.integers(1, 7, size=2)
            truth = rng.uniform(0, 1.0, (n, 2))
            det = rng.uniform(0, 1.0, (m, 2))
            flux = rng.permutation(n) + 1.0
            ti, dj = match_one_to_one(truth, det, 3.0, truth_brightness=flux)
            k = min(n, m)
            self.assertEqual(sorted(ti.tolist()), sorted(np.argsort(-flux)[:k].tolist()), trial)
            self.assertEqual(len(set(dj.tolist())), k)
        for trial in range(100):
            n, m = rng.integers(0, 30, size=2)
            truth = rng.uniform(0, 25, (n, 2))
            det = np.vstack([truth[: min(n, m)] + rng.normal(0, 1.5, (min(n, m), 2)),
                             rng.uniform(0, 25, (m - min(n, m), 2))])
            ti, dj = match_one_to_one(truth, det, 3.0, truth_brightness=rng.uniform(0, 1, n))
            self.assertTrue(np.all(np.hypot(*(truth[ti] - det[dj]).T) <= 3.0))
            dist = np.hypot(truth[:, None, 0] - det[None, :, 0], truth[:, None, 1] - det[None, :, 1])
            r, c = linear_sum_assignment(np.where(dist <= 3.0, dist, 1e6))
            self.assertEqual(len(ti), int((dist[r, c] <= 3.0).sum()), trial)
            self.assertEqual(len(set(ti.tolist())), len(ti))
            self.assertEqual(len(set(dj.tolist())), len(dj))

    def test_unrecognised_blend_and_pairs(self):
        # Galaxies A, B 0.6" apart (3 px), one detection on A; C isolated and detected; D far from
        # everything and missed; E 0.4" from C but 3 mag fainter (not a blend of similar galaxies).
        truth = np.array([[50.0, 50.0], [53.0, 50.0], [100.0, 100.0], [200.0, 200.0], [102.0, 100.0]])
        mag = np.array([24.0, 24.3, 22.0, 25.0, 25.1])
        det = np.array([[50.0, 50.0], [100.0, 100.0], [150.0, 20.0]])  # the last one is spurious
        score = score_detections(truth, mag, np.full(5, 30.0), det, np.array([0.0, 0.0, 26.0]))
        np.testing.assert_array_equal(score["truth"]["matched"], [True, False, True, False, False])
        np.testing.assert_array_equal(score["truth"]["unrecognised"], [False, True, False, False, False])
        np.testing.assert_array_equal(score["detections"]["matched"], [True, True, False])
        np.testing.assert_allclose(score["detections"]["mag"], [24.0, 22.0, 26.0])
        pairs = score["pairs"]
        order = np.argsort(pairs["separation_arcsec"])
        np.testing.assert_allclose(pairs["separation_arcsec"][order][:2], [0.4, 0.6])
        np.testing.assert_array_equal(pairs["resolved"][order][:2], [False, False])
        summary = summarise_detections([score])
        self.assertEqual(summary["completeness"]["snr>10"]["k"], 2)
        self.assertEqual(summary["purity"]["all"]["k"], 2)
        self.assertEqual(summary["purity"]["i<25"], {"n": 2, "k": 2, "fraction": 1.0})
        self.assertEqual(summary["unrecognised_blends"]["23<i<24.5"]["k"], 1)
        self.assertEqual(summary["pairs_goal"]["dm<1, 0.6-0.8arcsec"], {"n": 1, "k": 0, "fraction": 0.0})


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
