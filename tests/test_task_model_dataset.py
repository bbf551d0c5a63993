"""The MADNESS model as a butler dataset: storage class, formatter, put_model, and the deblender's
``model`` prerequisite input (``modelSource='butler'``), in process and through ``pipetask run``."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile
from pathlib import Path
from unittest import mock

import lsst.utils.tests
import numpy as np
from lsst.meas.madness import MadnessDeblender, ModelBundle
from lsst.meas.madness.errors import MadnessBundleError
from lsst.meas.madness.tasks import (
    MODEL_STORAGE_CLASS,
    MadnessDeblendConfig,
    MadnessDeblendConnections,
    MadnessDeblendTask,
    model_butler_config,
    put_model,
    read_bundle_zip,
)
from lsst.meas.madness.tasks import deblend as deblend_module
from lsst.pipe.base.testUtils import lintConnections, makeQuantum, runTestQuantum
from task_utils import (
    BANDS,
    DATA_ID,
    SCENE_PEAKS,
    add_patch_records,
    masked_images,
    register_connections,
    scene,
    truth_detections,
)
from utils import MadnessTestCase, quick_bundle_path
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "madness.yaml"
INPUT = "sim/in"
MODELS = "models/quick"
SHORT_MAP = {"maxIter": 30, "minIter": 10}


def _butler_config(**overrides):
    config = MadnessDeblendConfig()
    config.modelSource = "butler"
    for key, value in {**SHORT_MAP, **overrides}.items():
        setattr(config, key, value)
    return config


def _weights(bundle):
    return {name: [np.asarray(w) for w in net.get_weights()] for name, net in bundle.networks.items()}


def _put_inputs(butler):
    """Coadds and truth detections of the test patch into the butler's run; returns the parent count."""
    image, var, truth = scene()
    for band, coadd in masked_images(image, var).items():
        butler.put(coadd, "deepCoadd_calexp", DATA_ID, band=band)
    det, spans = truth_detections(truth)
    butler.put(det, "deepCoadd_madnessDet", DATA_ID)
    butler.put(spans, "deepCoadd_madnessDet_spans", DATA_ID)
    return int((det["parent"] == 0).sum())


class ModelDatasetTestCase(MadnessTestCase):
    @classmethod
    def setUpClass(cls):
        from lsst.daf.butler import Butler

        cls.bundle_path = quick_bundle_path()
        cls.tmp = tempfile.TemporaryDirectory()
        cls.root = os.path.join(cls.tmp.name, "repo")
        Butler.makeRepo(cls.root)  # a plain repository: no MADNESS config in it
        with Butler.from_config(cls.root, writeable=True, run=INPUT) as butler:
            add_patch_records(butler)
            register_connections(butler, _butler_config())
            cls.n_parents = _put_inputs(butler)
            cls.model_ref = put_model(butler, cls.bundle_path, MODELS)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def _butler(self, **kwargs):
        from lsst.daf.butler import Butler

        return Butler.from_config(self.root, **kwargs)

    # --- storage ---------------------------------------------------------------------------

    def test_round_trip(self):
        """put_model + get: the same bundle, the stored zip holds the bundle's files byte for byte."""
        with self._butler(collections=[MODELS]) as butler:
            self.assertEqual(butler.get_dataset_type("madnessModel").storageClass_name, MODEL_STORAGE_CLASS)
            got = butler.get("madnessModel")
            uri = butler.getURI("madnessModel")
        self.assertIsInstance(got, ModelBundle)
        expected = ModelBundle.load(self.bundle_path)
        self.assertEqual(got.metadata, expected.metadata)
        for name, arrays in _weights(expected).items():
            for a, b in zip(arrays, _weights(got)[name], strict=True):
                np.testing.assert_array_equal(a, b)
        self.assertEqual(uri.getExtension(), ".zip")
        recorded = json.loads((self.bundle_path / "bundle.json").read_text())["files"]
        with zipfile.ZipFile(uri.ospath) as archive:
            self.assertEqual(set(archive.namelist()), {"bundle.json", *recorded})
            for name, info in recorded.items():
                self.assertEqual(hashlib.sha256(archive.read(name)).hexdigest(), info["sha256"])

    def test_damaged_file_refused(self):
        """A weight file changed inside the stored zip (same size, valid zip) fails its sha256 check."""
        with self._butler(collections=[MODELS]) as butler:
            stored = Path(butler.getURI("madnessModel").ospath)
        with tempfile.TemporaryDirectory() as tmp:
            bad = Path(tmp) / "bad.zip"
            with zipfile.ZipFile(stored) as src, zipfile.ZipFile(bad, "w") as dst:
                for info in src.infolist():
                    data = bytearray(src.read(info))
                    if info.filename.endswith(".npz"):
                        data[-200] ^= 0xFF
                    dst.writestr(info, bytes(data))
            with self.assertRaisesRegex(MadnessBundleError, "sha256"):
                read_bundle_zip(bad)
            not_zip = Path(tmp) / "not.zip"
            not_zip.write_text("not a zip")
            with self.assertRaisesRegex(MadnessBundleError, "not a readable"):
                read_bundle_zip(not_zip)
            # The same through the butler, on a copy of the repository.
            copy = Path(tmp) / "repo"
            shutil.copytree(self.root, copy)
            from lsst.daf.butler import Butler

            with Butler.from_config(str(copy), collections=[MODELS]) as butler:
                shutil.copyfile(bad, butler.getURI("madnessModel").ospath)
                with self.assertRaises(Exception) as cm:
                    butler.get("madnessModel")
            chain, error = [], cm.exception
            while error is not None:
                chain.append(error)
                error = error.__cause__ or error.__context__
            self.assertTrue(any(isinstance(e, MadnessBundleError) for e in chain), chain)

    def test_repo_config_put(self):
        """With the packaged config in the repository, plain butler.put/get work, and put_model
        takes an in-memory bundle."""
        from lsst.daf.butler import Butler, DatasetType

        bundle = ModelBundle.load(self.bundle_path)
        with tempfile.TemporaryDirectory() as tmp:
            Butler.makeRepo(tmp, config=model_butler_config())
            with Butler.from_config(tmp, writeable=True, run="models/put") as butler:
                butler.registry.registerDatasetType(
                    DatasetType("otherModel", (), MODEL_STORAGE_CLASS, universe=butler.dimensions)
                )
                ref = butler.put(bundle, "otherModel")
                self.assertEqual(butler.get(ref).metadata, bundle.metadata)
                ref2 = put_model(butler, bundle, "models/ingested", name="otherModel")
                self.assertEqual(butler.get(ref2).metadata, bundle.metadata)

    # --- task ------------------------------------------------------------------------------

    def test_connections(self):
        for source in ("package", "path", "butler"):
            config = MadnessDeblendConfig()
            config.modelSource = source
            if source == "path":
                config.bundlePath = str(self.bundle_path)
            config.validate()
            lintConnections(MadnessDeblendConnections)
            connections = MadnessDeblendConnections(config=config)
            self.assertEqual("model" in connections.prerequisiteInputs, source == "butler")
        connections = MadnessDeblendConnections(config=_butler_config())
        self.assertEqual(connections.model.name, "madnessModel")
        self.assertEqual(connections.model.storageClass, MODEL_STORAGE_CLASS)
        self.assertEqual(tuple(connections.model.dimensions), ())
        config = _butler_config()
        config.connections.modelName = "madnessModel_v2"
        self.assertEqual(MadnessDeblendConnections(config=config).model.name, "madnessModel_v2")
        config = MadnessDeblendConfig()
        config.modelSource = "path"
        with self.assertRaises(Exception):
            config.validate()

    def test_run_quantum(self):
        """runQuantum reads the model from the butler, deblends with it, and builds it once."""
        from lsst.daf.butler import Butler

        deblend_module._DEBLENDERS.clear()
        config = _butler_config()
        task = MadnessDeblendTask(config=config)
        # makeQuantum takes every input from the butler's run: a run with inputs and model of its own.
        with Butler.from_config(self.root, writeable=True, run="test/quantum") as butler:
            _put_inputs(butler)
            model_ref = put_model(butler, self.bundle_path, "test/quantum")
            per_band = [dict(DATA_ID, band=b) for b in BANDS]
            quantum = makeQuantum(
                task,
                butler,
                DATA_ID,
                {
                    "coadds": per_band,
                    "detections": DATA_ID,
                    "detectionSpans": DATA_ID,
                    "model": {},
                    "deblendedCatalog": DATA_ID,
                    "deblendedFlux": per_band,
                },
            )
            build = mock.patch.object(
                MadnessDeblender, "from_model_bundle", wraps=MadnessDeblender.from_model_bundle
            )
            with build as built:
                runTestQuantum(task, butler, quantum, mockRun=False)
                catalog = butler.get("deepCoadd_madnessDeblendedCatalog", DATA_ID)
                # The same task (a quantum per patch) and a new one in this process reuse the deblender.
                self.assertEqual(quantum.inputs["madnessModel"][0].id, model_ref.id)
                handle = butler.getDeferred(model_ref)
                first = task._butlerDeblender(handle)
                self.assertIs(MadnessDeblendTask(config=config)._butlerDeblender(handle), first)
                self.assertEqual(built.call_count, 1)
        self.assertEqual(int((catalog["parent"] == 0).sum()), self.n_parents)
        self.assertEqual(int((catalog["parent"] != 0).sum()), len(SCENE_PEAKS))
        self.assertFalse(catalog["deblend_failed"].any())
        self.assertEqual(first.bands, BANDS)
        # Bands checked against the butler's model as against a path's.
        other = _butler_config(bands=list(reversed(BANDS)))
        with self._butler() as butler, self.assertRaisesRegex(Exception, "differ from the bundle"):
            MadnessDeblendTask(config=other)._butlerDeblender(butler.getDeferred(self.model_ref))
        # run() without a deblender has no model to load in butler mode.
        with self.assertRaisesRegex(Exception, "modelSource='butler'"):
            MadnessDeblendTask(config=config)._loadDeblender()

    def test_pipetask(self):
        """``pipetask run -c deblend:modelSource=butler`` with the model collection as an input."""
        output = "madness/butlerModel"
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
            f"{INPUT},{MODELS}",
            "-o",
            output,
            "-p",
            f"{PIPELINE}#madnessDeblendOnly",
            "-c",
            "deblend:modelSource=butler",
            "--register-dataset-types",
        ]
        for key, value in SHORT_MAP.items():
            command += ["-c", f"deblend:{key}={value}"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        with self._butler(collections=[output]) as butler:
            catalog = butler.get("deepCoadd_madnessDeblendedCatalog", DATA_ID)
        self.assertEqual(int((catalog["parent"] == 0).sum()), self.n_parents)
        self.assertEqual(int((catalog["parent"] != 0).sum()), len(SCENE_PEAKS))
        self.assertFalse(catalog["deblend_failed"].any())


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
