"""Footprint and heavy-footprint tables: spans, masks, round trips (in memory and through a butler)."""

import tempfile
import unittest

import lsst.utils.tests
import numpy as np
from lsst.meas.madness import MadnessValueError
from lsst.meas.madness.tasks import (
    Footprint,
    detection_tables,
    footprints_from_table,
    footprints_to_table,
    heavy_footprints_from_table,
    heavy_footprints_to_table,
    source_id_prefix,
)
from utils import MadnessTestCase
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend


def _random_footprints(seed=0, n=5):
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(n):
        mask = rng.random((rng.integers(1, 12), rng.integers(1, 15))) > 0.4
        mask[0, 0] = True
        out[100 + 7 * k] = Footprint.from_mask(mask, (int(rng.integers(-50, 50)), int(rng.integers(0, 500))))
    return out


class FootprintTestCase(MadnessTestCase):
    def test_mask_round_trip(self):
        rng = np.random.default_rng(1)
        mask = rng.random((17, 23)) > 0.5
        fp = Footprint.from_mask(mask, (5, -3))
        self.assertEqual(fp.area, int(mask.sum()))
        y0, x0, y1, x1 = fp.bbox
        full = fp.to_mask((5, -3, 5 + 17, -3 + 23))
        np.testing.assert_array_equal(full, mask)
        y, x = fp.pixels()
        np.testing.assert_array_equal(np.lexsort((x, y)), np.arange(len(y)))  # span order
        self.assertTrue(fp.contains(y, x).all())
        self.assertFalse(fp.contains(np.array([y0 - 1]), np.array([x0])).any())
        self.assertEqual(Footprint.from_pixels(y, x), fp)

    def test_spans_are_maximal_runs(self):
        fp = Footprint.from_mask(np.array([[1, 1, 0, 1, 1, 1]], dtype=bool), (2, 10))
        self.assertEqual(fp.spans.tolist(), [[2, 10, 11], [2, 13, 15]])
        with self.assertRaises(ValueError):
            Footprint(np.array([[0, 5, 4]]))

    def test_span_table_round_trip(self):
        footprints = _random_footprints()
        table = footprints_to_table(footprints)
        self.assertEqual(len(table), sum(len(f.spans) for f in footprints.values()))
        self.assertEqual(table.meta["madness_format"], "spans")
        back = footprints_from_table(table[::-1])  # row order does not matter
        self.assertEqual(back, footprints)
        self.assertEqual(footprints_from_table(footprints_to_table({})), {})

    def test_heavy_table_round_trip(self):
        footprints = _random_footprints(seed=2)
        rng = np.random.default_rng(3)
        values = {i: rng.normal(size=fp.area).astype(np.float32) for i, fp in footprints.items()}
        table = heavy_footprints_to_table(footprints, values, band="r")
        self.assertEqual(len(table), sum(f.area for f in footprints.values()))
        self.assertEqual(table.meta["band"], "r")
        back = heavy_footprints_from_table(table[rng.permutation(len(table))])
        self.assertEqual(set(back), set(footprints))
        for i, (fp, v) in back.items():
            self.assertEqual(fp, footprints[i])
            np.testing.assert_array_equal(v, values[i])
        with self.assertRaises(MadnessValueError):
            heavy_footprints_to_table(footprints, {i: v[:-1] for i, v in values.items()})

    def test_format_checked(self):
        table = footprints_to_table(_random_footprints())
        with self.assertRaises(ValueError):
            heavy_footprints_from_table(table)
        table.meta["madness_format_version"] = "9.0.0"
        with self.assertRaises(ValueError):
            footprints_from_table(table)

    def test_detection_tables(self):
        fps = _random_footprints(n=3)
        parents = [
            (fp, np.array([[fp.spans[0, 1], fp.spans[0, 0]]] * k)) for k, fp in enumerate(fps.values())
        ]
        det, spans = detection_tables(parents, id_prefix=source_id_prefix(3, 4))
        self.assertEqual(len(det), 3 + 0 + 1 + 2)
        top = det[det["parent"] == 0]
        self.assertEqual(top["n_peaks"].tolist(), [0, 1, 2])
        self.assertTrue((det["id"] > source_id_prefix(3, 4)).all())
        self.assertEqual(len(set(det["id"])), len(det))
        for row in det[det["parent"] != 0]:
            self.assertIn(row["parent"], top["id"])
        self.assertEqual(set(footprints_from_table(spans)), set(top["id"]))

    def test_butler_round_trip(self):
        """Span and heavy tables survive ArrowAstropy (parquet) storage."""
        from lsst.daf.butler import Butler, DatasetType

        with tempfile.TemporaryDirectory() as root:
            Butler.makeRepo(root)
            butler = Butler.from_config(root, writeable=True, run="test")
            for name in ("spans", "heavy"):
                butler.registry.registerDatasetType(
                    DatasetType(name, (), "ArrowAstropy", universe=butler.dimensions)
                )
            footprints = _random_footprints(seed=4)
            values = {i: np.arange(fp.area, dtype=np.float32) for i, fp in footprints.items()}
            butler.put(footprints_to_table(footprints), "spans")
            butler.put(heavy_footprints_to_table(footprints, values, band="g"), "heavy")
            spans = butler.get("spans")
            heavy = butler.get("heavy")
            self.assertEqual(footprints_from_table(spans), footprints)
            self.assertIn("tract frame", spans["x0"].description)
            back = heavy_footprints_from_table(heavy)
            for i, (fp, v) in back.items():
                self.assertEqual(fp, footprints[i])
                np.testing.assert_array_equal(v, values[i])
            butler.close()


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
