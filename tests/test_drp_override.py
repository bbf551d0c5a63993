"""pipelines/DRP-madness.yaml (MADNESS in place of scarlet in LSSTCam DRP) builds and its contracts hold.

drp_pipe, pipe_tasks and drp_tasks are not installable here, so the override is built on top of
a stand-in of drp_pipe's LSSTCam DRP (tests/data/drp_mimic: the same labels, dataset names,
parameters and useCellCoadds contracts, on connection-only stand-in tasks placed on PYTHONPATH
as ``lsst.pipe.tasks.multiBand`` and ``lsst.drp.tasks.forcedPhotCoadd``). The override file and
config files are the real ones. Both checks run in subprocesses, so the stand-in packages never
enter this test process. With the real stack set up (``DRP_PIPE_DIR`` set and
``lsst.pipe.tasks`` importable), `test_real_drp_pipe` builds the override on the real DRP.
"""

import importlib.util
import json
import os
import subprocess
import sys
import unittest

import lsst.utils.tests
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIMIC = os.path.join(ROOT, "tests", "data", "drp_mimic")
OVERRIDE = os.path.join(ROOT, "pipelines", "DRP-madness.yaml")
PIPETASK = os.path.join(os.path.dirname(sys.executable), "pipetask")
HAVE_REAL_STACK = importlib.util.find_spec("lsst.pipe.tasks") is not None and "DRP_PIPE_DIR" in os.environ

# Run in a subprocess: build the override, describe the graph, then break each contract.
_CHECK = r"""
import json, sys
from lsst.daf.butler import DimensionUniverse
from lsst.pipe.base import Pipeline
from lsst.pipe.base.pipelineIR import ContractError

path = sys.argv[1]
graph = Pipeline.fromFile(path).to_graph()
graph.resolve(dimensions=DimensionUniverse())
out = {"tasks": {}, "datasets": {}}
for label, node in graph.tasks.items():
    out["tasks"][label] = {
        "class": node.task_class_name,
        "inputs": {k: e.parent_dataset_type_name for k, e in node.inputs.items()},
        "init_inputs": {k: e.parent_dataset_type_name for k, e in node.init.inputs.items()},
        "outputs": {k: e.parent_dataset_type_name for k, e in node.outputs.items()},
    }
for name, node in graph.dataset_types.items():
    out["datasets"][name] = {
        "dimensions": sorted(node.dimensions.names),
        "producer": graph.producer_of(name).label if graph.producer_of(name) else None,
        "consumers": sorted(t.label for t in graph.consumers_of(name)),
    }
out["subsets"] = {k: sorted(v) for k, v in graph.task_subsets.items()}
broken = {
    "unforced reads the band-less catalog": ("measureObjectUnforced", "connections.scarletCatalog", "object_deblend"),
    "unforced reads another schema": ("measureObjectUnforced", "connections.inputSchema", "object_detection_merged_schema"),
    "deblender reads unmerged detections": ("deblendCoaddFootprints", "connections.mergedDetections", "object_detection"),
    "forced wants scarlet models": ("measureObjectForced", "footprintDatasetName", "LsstScarletModelData"),
    "unforced strips footprints": ("measureObjectUnforced", "doStripFootprints", True),
    "deblender on other coadds": ("deblendCoaddFootprints", "connections.coadds_cell", "deep_coadd_cell"),
    "deblender without cells": ("deblendCoaddFootprints", "useCellCoadds", False),
}
out["broken"] = {}
for what, (label, field, value) in broken.items():
    pipeline = Pipeline.fromFile(path)
    pipeline.addConfigOverride(label, field, value)
    try:
        pipeline.to_graph()
        out["broken"][what] = "built"
    except ContractError as error:
        out["broken"][what] = "ContractError: " + str(error)
print("JSON" + json.dumps(out))
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(MIMIC, "python"), os.path.join(ROOT, "python"), env.get("PYTHONPATH", "")]
    )
    env["DRP_PIPE_DIR"] = MIMIC
    env["MEAS_MADNESS_DIR"] = ROOT
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


@unittest.skipIf(HAVE_REAL_STACK, "the real stack is set up: test_real_drp_pipe checks the real DRP")
class DrpOverrideMimicTestCase(lsst.utils.tests.TestCase):
    @classmethod
    def setUpClass(cls):
        proc = subprocess.run(
            [sys.executable, "-c", _CHECK, OVERRIDE], env=_env(), capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0:
            raise AssertionError(f"building the override failed:\n{proc.stderr[-4000:]}")
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")][-1]
        cls.info = json.loads(line[4:])

    def test_deblend_label_replaced(self):
        tasks = self.info["tasks"]
        deblend = tasks["deblendCoaddFootprints"]
        self.assertEqual(deblend["class"], "lsst.meas.madness.tasks.afw.deblend.MadnessDeblendAfwTask")
        # use_cell_coadds is true in LSSTCam DRP: cell coadds and backgrounds, as scarlet reads them.
        self.assertEqual(
            deblend["inputs"],
            {
                "mergedDetections": "object_detection_merged",
                "coadds_cell": "deep_coadd_cell_predetection",
                "backgrounds": "deep_coadd_background",
            },
        )
        self.assertEqual(
            deblend["init_inputs"],
            {"inputSchema": "object_detection_merged_schema", "peakSchema": "object_detection_peak_schema"},
        )
        self.assertEqual(
            deblend["outputs"],
            {
                "deblendedCatalog": "object_deblend",
                "deblendedFlux": "object_deblend_flux",
                "objectParents": "object_parent_patch",
            },
        )
        for label in (
            "deconvolve",
            "fitDeblendedObjectsExp",
            "fitDeblendedObjectsSersic",
            "standardizeObject",
        ):
            self.assertNotIn(label, tasks)

    def test_measurement_reads_madness_outputs(self):
        datasets = self.info["datasets"]
        flux = datasets["object_deblend_flux"]
        self.assertEqual(flux["producer"], "deblendCoaddFootprints")
        self.assertEqual(flux["consumers"], ["measureObjectUnforced"])
        self.assertEqual(flux["dimensions"], ["band", "patch", "skymap", "tract"])
        unforced = self.info["tasks"]["measureObjectUnforced"]
        self.assertEqual(
            unforced["class"],
            "lsst.meas.madness.tasks.afw.measurement.MadnessMeasureMergedCoaddSourcesTask",
        )
        self.assertEqual(unforced["init_inputs"], {"inputSchema": "object_deblend_schema"})
        self.assertNotIn("scarletModels", unforced["inputs"])
        forced = self.info["tasks"]["measureObjectForced"]
        self.assertNotIn("scarletModels", forced["inputs"])
        self.assertEqual(forced["inputs"]["refCatInBand"], "object_unforced_measurement")
        # Nothing in the pipeline needs scarlet's outputs any more.
        self.assertNotIn("object_scarlet_models", datasets)
        self.assertNotIn("deconvolved_deep_coadd", datasets)

    def test_subsets(self):
        subsets = self.info["subsets"]
        self.assertIn("deblendCoaddFootprints", subsets["madnessObject"])
        self.assertIn("deblendCoaddFootprints", subsets["step3a-coadd-tracts"])
        self.assertNotIn("deconvolve", subsets["step3a-coadd-tracts"])

    def test_contracts_fail_when_broken(self):
        for what, result in self.info["broken"].items():
            with self.subTest(what=what):
                self.assertTrue(result.startswith("ContractError"), f"{what}: {result}")

    def test_pipetask_build(self):
        proc = subprocess.run(
            [PIPETASK, "build", "-p", OVERRIDE, "--show", "pipeline-graph"],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])
        self.assertIn("object_deblend_flux", proc.stdout)
        broken = subprocess.run(
            [
                PIPETASK,
                "build",
                "-p",
                OVERRIDE,
                "-c",
                "measureObjectUnforced:connections.scarletCatalog=object_deblend",
                "--show",
                "pipeline-graph",
            ],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertNotEqual(broken.returncode, 0)
        self.assertIn("Contract(s)", broken.stderr)


@unittest.skipUnless(
    HAVE_REAL_STACK, "needs the Rubin stack with drp_pipe set up (DRP_PIPE_DIR, lsst.pipe.tasks)"
)
class DrpOverrideRealTestCase(lsst.utils.tests.TestCase):
    def test_real_drp_pipe(self):
        env = dict(os.environ)
        env.setdefault("MEAS_MADNESS_DIR", ROOT)
        proc = subprocess.run(
            [PIPETASK, "build", "-p", OVERRIDE + "#madnessObject", "--show", "pipeline-graph"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])
        self.assertIn("object_deblend_flux", proc.stdout)

    def test_real_contracts(self):
        """On the real LSSTCam DRP: our labels read what DRP writes, and every contract of the
        override fails when its connection or config is broken (as on the stand-in)."""
        env = dict(os.environ)
        env.setdefault("MEAS_MADNESS_DIR", ROOT)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        proc = subprocess.run(
            [sys.executable, "-c", _CHECK, OVERRIDE + "#madnessObject"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])
        info = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")][-1][4:])
        tasks = info["tasks"]
        self.assertEqual(
            tasks["deblendCoaddFootprints"]["class"], "lsst.meas.madness.tasks.afw.deblend.MadnessDeblendAfwTask"
        )
        self.assertEqual(tasks["measureObjectUnforced"]["inputs"]["scarletCatalog"], "object_deblend_flux")
        self.assertEqual(
            info["datasets"]["object_deblend_flux"]["producer"], "deblendCoaddFootprints"
        )
        self.assertIn("measureObjectUnforced", info["datasets"]["object_deblend_flux"]["consumers"])
        for what, result in info["broken"].items():
            with self.subTest(what=what):
                self.assertTrue(result.startswith("ContractError"), f"{what}: {result}")


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
