"""pipelines/madness.yaml end to end on a tiny patch in a temporary SQLite repository.

Run once in process (SimplePipelineExecutor, the pipetask Python API) and once more with the
``pipetask run`` command into the same output collection; outputs are read back and checked.
"""

import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import lsst.utils.tests
import numpy as np
from lsst.meas.madness.tasks import footprints_from_table, heavy_footprints_from_table
from task_utils import (
    BANDS,
    DATA_ID,
    PATCH_YX0,
    SCENE_PEAKS,
    SKYMAP,
    SKY_VARIANCE,
    add_patch_records,
    masked_images,
    scene,
)
from utils import MadnessTestCase, quick_bundle_path
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "madness.yaml"
INPUT = "sim/coadds"
OUTPUT = "madness/out"
OVERRIDES = {"maxIter": "60", "minIter": "20"}
PER_PATCH = (
    "deepCoadd_madnessDet",
    "deepCoadd_madnessDet_spans",
    "deepCoadd_madnessDeblendedCatalog",
    "deepCoadd_madnessObj",
)
PER_BAND = ("deepCoadd_madnessDeblendedFlux",)


class PipelineTestCase(MadnessTestCase):
    @classmethod
    def setUpClass(cls):
        from lsst.daf.butler import Butler, DatasetType
        from lsst.pipe.base import Pipeline
        from lsst.pipe.base.simple_pipeline_executor import SimplePipelineExecutor

        cls.tmp = tempfile.TemporaryDirectory()
        cls.root = os.path.join(cls.tmp.name, "repo")
        Butler.makeRepo(cls.root)  # SQLite registry, file datastore
        with Butler.from_config(cls.root, writeable=True, run=INPUT) as butler:
            add_patch_records(butler)
            butler.registry.registerDatasetType(
                DatasetType(
                    "deepCoadd_calexp",
                    ("tract", "patch", "band", "skymap"),
                    "MaskedImageV2",
                    universe=butler.dimensions,
                )
            )
            cls.image, cls.variance, cls.truth = scene()
            for band, coadd in masked_images(cls.image, cls.variance).items():
                butler.put(coadd, "deepCoadd_calexp", DATA_ID, band=band)

        pipeline = Pipeline.fromFile(str(PIPELINE))
        pipeline.addConfigOverride("deblend", "bundlePath", str(quick_bundle_path()))
        # One patch and no skymap dataset in this repository: every leaf is primary.
        pipeline.addConfigOverride("measure", "useSkyMap", False)
        for key, value in OVERRIDES.items():
            pipeline.addConfigOverride("deblend", key, int(value))
        butler = SimplePipelineExecutor.prep_butler(cls.root, inputs=[INPUT], output=OUTPUT)
        executor = SimplePipelineExecutor.from_pipeline(
            pipeline, butler=butler, where=f"skymap = '{SKYMAP}' AND tract = 0 AND patch = 0"
        )
        cls.quanta = executor.run(register_dataset_types=True)
        butler.close()
        cls.butler = Butler.from_config(cls.root, collections=[OUTPUT])

    @classmethod
    def tearDownClass(cls):
        cls.butler.close()
        cls.tmp.cleanup()

    def _get(self, name, **kwargs):
        return self.butler.get(name, DATA_ID, **kwargs)

    def test_outputs(self):
        self.assertEqual(len(self.quanta), 3)
        det = self._get("deepCoadd_madnessDet")
        catalog = self._get("deepCoadd_madnessDeblendedCatalog")
        objects = self._get("deepCoadd_madnessObj")
        parents = catalog[catalog["parent"] == 0]
        children = catalog[catalog["parent"] != 0]
        # sep finds the five groups of the scene, all peaks of a blend in one parent.
        self.assertEqual(len(parents), int((det["parent"] == 0).sum()))
        self.assertGreaterEqual(len(parents), 5)
        self.assertGreaterEqual(len(children), len(SCENE_PEAKS) - 1)
        self.assertFalse(parents["deblend_failed"].any())
        for parent in parents:
            self.assertEqual(int((children["parent"] == parent["id"]).sum()), parent["deblend_nChild"])
            self.assertEqual(
                parent["deblend_nChild"], parent["deblend_nPeaks"] - parent["deblend_droppedPeaks"]
            )
        self.assertTrue((parents["deblend_nChild"] >= 2).any())
        # Children's flux matches their parent's where no pixel is masked, up to the noise in the
        # parent's pixels that no child's footprint reaches (sep footprints are grown by 2 pixels).
        heavy_r = heavy_footprints_from_table(self._get("deepCoadd_madnessDeblendedFlux", band="r"))
        for parent in parents:
            kids = children[children["parent"] == parent["id"]]
            if len(kids) and not (kids["deblend_maskedFraction"] > 0).any():
                covered = set()
                for kid in kids["id"]:
                    covered |= set(zip(*map(np.ndarray.tolist, heavy_r[kid][0].pixels())))
                uncovered = heavy_r[parent["id"]][0].area - len(covered)
                noise = np.sqrt(SKY_VARIANCE[2] * uncovered)
                self.assertLess(abs(kids["deblend_flux_r"].sum() - parent["deblend_flux_r"]), 5 * noise + 1.0)
                self.assertLess(abs(parent["deblend_unassignedFluxFraction"]), 0.01)
        # The edge source is found and flagged.
        x_edge = PATCH_YX0[1] + SCENE_PEAKS[6, 0]
        edge = children[np.abs(children["deblend_peak_center_x"] - x_edge) <= 2]
        self.assertEqual(len(edge), 1)
        self.assertTrue(edge["deblend_edge"][0])
        # One object row per catalog row; aperture flux of the isolated galaxy near the truth.
        self.assertEqual(objects["id"].tolist(), catalog["id"].tolist())
        x_c, y_c = PATCH_YX0[1] + SCENE_PEAKS[5, 0], PATCH_YX0[0] + SCENE_PEAKS[5, 1]
        iso = objects[(objects["parent"] != 0) & (np.hypot(objects["x"] - x_c, objects["y"] - y_c) < 1.5)]
        self.assertEqual(len(iso), 1)
        np.testing.assert_allclose(iso["r_apFlux"][0], self.truth[5, 2].sum(), rtol=0.1)
        self.assertFalse(iso["r_hsm_flag"][0])
        # Heavy footprints: one per catalog row in every band; spans of the parents.
        for band in BANDS:
            heavy = heavy_footprints_from_table(self._get("deepCoadd_madnessDeblendedFlux", band=band))
            self.assertEqual(set(heavy), set(catalog["id"]))
        spans = footprints_from_table(self._get("deepCoadd_madnessDet_spans"))
        self.assertEqual(set(spans), set(parents["id"]))

    def test_rerun_same_collection(self):
        """``pipetask run`` into the same output collection: a new run, nothing lost or duplicated."""
        from lsst.daf.butler import Butler

        first = self._get("deepCoadd_madnessDeblendedCatalog")
        command = [
            sys.executable,
            "-c",
            "import sys; from lsst.ctrl.mpexec.cli.pipetask import main; sys.exit(main())",
            "--log-level",
            "WARNING",
            "run",
            "-b",
            self.root,
            "-i",
            INPUT,
            "-o",
            OUTPUT,
            "-p",
            str(PIPELINE),
            "-c",
            f"deblend:bundlePath={quick_bundle_path()}",
            "-c",
            "measure:useSkyMap=False",
        ]
        for key, value in OVERRIDES.items():
            command += ["-c", f"deblend:{key}={value}"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        with Butler.from_config(self.root, collections=[OUTPUT]) as butler:
            runs = [c for c in butler.collections.get_info(OUTPUT).children if c != INPUT]
            self.assertEqual(len(runs), 2)
            for name in PER_PATCH + PER_BAND:
                expected = len(BANDS) if name in PER_BAND else 1
                latest = butler.query_datasets(name, collections=OUTPUT, find_first=True)
                everything = butler.query_datasets(name, collections=OUTPUT, find_first=False)
                self.assertEqual(len(latest), expected, name)
                self.assertEqual(len(everything), 2 * expected, name)
                self.assertEqual({ref.run for ref in latest}, {runs[0]})
            second = butler.get("deepCoadd_madnessDeblendedCatalog", DATA_ID)
        self.assertEqual(second["id"].tolist(), first["id"].tolist())
        np.testing.assert_allclose(second["deblend_flux_r"], first["deblend_flux_r"], rtol=1e-3)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
