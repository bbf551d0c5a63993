"""The coadd chain of LSSTCam DRP with MADNESS in it, on the real Rubin tasks (needs the stack).

What DRP runs around the deblender, called as DRP's quanta call it (`run`), on one simulated
patch of a real skymap: pipe_tasks' ``DetectCoaddSourcesTask`` in every band (detectCoaddPeaks),
``MergeDetectionsTask`` (mergeObjectDetection), `MadnessDeblendAfwTask` (deblendCoaddFootprints),
`MadnessMeasureMergedCoaddSourcesTask` in every band (measureObjectUnforced: pipe_tasks'
``MeasureMergedCoaddSourcesTask`` reading our per-band catalogs), ``MergeMeasurementsTask``
(mergeObjectMeasurement) and drp_tasks' ``ForcedPhotCoaddTask`` (measureObjectForced). The
answers come from outside our code: the simulation's truth catalog (which galaxies exist and
where), and each child's deblended pixels summed in an aperture (what afw measurement must
measure on a HeavyFootprint with the noise replacer).

Skipped unless pipe_tasks, drp_tasks, afw and meas_base import (the Rubin stack of
``scripts/build-rubin-stack.sh``; doc/rubin-stack.md). This repository's CI has no stack.
"""

import importlib.util
import unittest

import numpy as np
from task_utils import aperture_oracle, deblender
from utils import BANDS, MadnessTestCase, quick_bundle_path

import lsst.utils.tests
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend


def _importable(*modules):
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except ModuleNotFoundError:  # a parent package is missing
        return False


HAVE_CHAIN = _importable("lsst.afw", "lsst.meas.base", "lsst.skymap", "lsst.pipe.tasks", "lsst.drp.tasks")
NO_CHAIN = "needs lsst.afw, lsst.meas.base, lsst.skymap, lsst.pipe.tasks and lsst.drp.tasks (the Rubin stack)"

# Per-band flux scale of every source (u faint, as galaxies are).
BAND_SCALE = dict(zip(BANDS, [0.3, 0.6, 1.0, 1.2, 1.3, 1.2]))
# (x, y) offsets from the patch's inner-box origin, r-band counts, and a quadrupole (ixx, iyy, ixy).
SOURCES = [
    ((60.0, 60.0), 4e4, None),  # a star, isolated
    ((150.0, 70.0), 6e4, (8, 5, 1)),  # isolated galaxy
    ((80.0, 170.0), 6e4, (6, 4, 1)),  # a pair 10 px apart
    ((88.0, 176.0), 4e4, (5, 5, 0)),
    ((200.0, 200.0), 5e4, (7, 5, -1)),  # a triple
    ((209.0, 204.0), 3e4, (4, 4, 0)),
    ((195.0, 209.0), 3e4, (4, 4, 1)),
]
PRIORITY = ["i", "r", "z", "y", "g", "u"]


def _skyInfo():
    """A one-tract DiscreteSkyMap (0.2"/px) and the Struct DRP's quanta build for one patch."""
    import lsst.pipe.base as pipeBase
    from lsst.skymap import DiscreteSkyMap

    config = DiscreteSkyMap.ConfigClass()
    config.raList = [45.0]
    config.decList = [45.0]
    config.radiusList = [0.02]
    config.pixelScale = 0.2
    config.patchInnerDimensions = [260, 260]
    config.patchBorder = 20
    config.tractOverlap = 0.0
    config.projection = "TAN"
    skyMap = DiscreteSkyMap(config)
    tractInfo = skyMap[0]
    # The patch holding the tract's centre.
    patchInfo = tractInfo.findPatch(tractInfo.getCtrCoord())
    return pipeBase.Struct(
        skyMap=skyMap,
        tractInfo=tractInfo,
        patchInfo=patchInfo,
        wcs=tractInfo.getWcs(),
        bbox=patchInfo.getOuterBBox(),
    )


def _coadds(skyInfo, noise=10.0, seed=0):
    """One TestDataset exposure per band on the patch's outer box, in the tract's WCS."""
    import lsst.afw.geom
    import lsst.geom
    from lsst.meas.base.tests import TestDataset

    x0, y0 = skyInfo.patchInfo.getInnerBBox().getMin()
    exposures, truth = {}, None
    for b, band in enumerate(BANDS):
        exposure = TestDataset.makeEmptyExposure(skyInfo.bbox, wcs=skyInfo.wcs, psfSigma=2.0)
        dataset = TestDataset(skyInfo.bbox, exposure=exposure)
        for (dx, dy), flux, quad in SOURCES:
            point = lsst.geom.Point2D(x0 + dx, y0 + dy)
            shape = None if quad is None else lsst.afw.geom.Quadrupole(*quad)
            dataset.addSource(BAND_SCALE[band] * flux, point, shape)
        realized, catalog = dataset.realize(noise, TestDataset.makeMinimalSchema(), randomSeed=seed + b)
        # The mask planes an assembled coadd has, which DRP's PixelFlags configs name.
        for plane in ("CLIPPED", "SENSOR_EDGE", "INEXACT_PSF", "REJECTED"):
            realized.mask.addMaskPlane(plane)
        exposures[band] = realized
        if band == "r":
            truth = catalog
    return exposures, truth


@unittest.skipUnless(HAVE_CHAIN, NO_CHAIN)
class DrpChainTestCase(MadnessTestCase):
    """detect -> merge -> MADNESS -> measure -> merge measurements -> forced, on the real tasks."""

    @classmethod
    def setUpClass(cls):
        import lsst.afw.table as afwTable
        from lsst.drp.tasks.forcedPhotCoadd import ForcedPhotCoaddConfig, ForcedPhotCoaddTask
        from lsst.pipe.tasks.mergeDetections import MergeDetectionsConfig, MergeDetectionsTask
        from lsst.pipe.tasks.mergeMeasurements import MergeMeasurementsConfig, MergeMeasurementsTask
        from lsst.pipe.tasks.multiBand import DetectCoaddSourcesConfig, DetectCoaddSourcesTask

        from lsst.meas.madness.tasks.afw import MadnessDeblendAfwConfig, MadnessDeblendAfwTask
        from lsst.meas.madness.tasks.afw.measurement import (
            MadnessMeasureMergedCoaddSourcesConfig,
            MadnessMeasureMergedCoaddSourcesTask,
        )

        cls.skyInfo = _skyInfo()
        cls.exposures, cls.truth = _coadds(cls.skyInfo)

        # detectCoaddPeaks: DetectCoaddSourcesTask with its defaults (dynamic detection, sky
        # objects), per band, on a copy (it rescales the variance and subtracts a background).
        detectConfig = DetectCoaddSourcesConfig()
        detect = DetectCoaddSourcesTask(config=detectConfig)
        cls.detections = {}
        for band in BANDS:
            exposure = cls.exposures[band].clone()
            result = detect.run(exposure, afwTable.IdFactory.makeSimple(), expId=1)
            cls.detections[band] = result.outputSources

        # mergeObjectDetection.
        mergeConfig = MergeDetectionsConfig()
        mergeConfig.priorityList = PRIORITY
        merge = MergeDetectionsTask(schema=detect.schema, config=mergeConfig)
        cls.merged = merge.run(
            cls.detections, cls.skyInfo, afwTable.IdFactory.makeSimple(), skySeed=0
        ).outputCatalog

        # deblendCoaddFootprints: MADNESS (the test model; the chain, not the model, is tested).
        deblendConfig = MadnessDeblendAfwConfig()
        deblendConfig.bundlePath = str(quick_bundle_path())
        deblendConfig.maxIter = 60
        deblendConfig.minIter = 20
        cls.deblend = MadnessDeblendAfwTask(
            schema=merge.schema, peakSchema=merge.merged.getPeakSchema(), config=deblendConfig,
            deblender=deblender(),
        )
        cls.deblended = cls.deblend.run(coadds=cls.exposures, mergedDetections=cls.merged)

        # measureObjectUnforced, as its runQuantum does: the per-band catalog mapped into the
        # task's schema, then run(). TestDataset coadds carry no coadd inputs, visit catalogs or
        # aperture corrections, so the steps that read them are off.
        measureConfig = MadnessMeasureMergedCoaddSourcesConfig()
        measureConfig.doPropagateFlags = False
        measureConfig.doApCorr = False
        measureConfig.measurement.plugins.names.discard("base_InputCount")
        measureConfig.measurement.plugins.names |= ["base_CircularApertureFlux"]
        measureConfig.measurement.plugins["base_CircularApertureFlux"].radii = [12.0]
        cls.measure = MadnessMeasureMergedCoaddSourcesTask(
            schema=cls.deblend.schema, peakSchema=merge.merged.getPeakSchema(), config=measureConfig
        )
        cls.measured = {}
        for band in BANDS:
            sources = afwTable.SourceCatalog(cls.measure.schema)
            sources.extend(cls.deblended.deblendedFlux[band], cls.measure.schemaMapper)
            cls.measured[band] = cls.measure.run(
                exposure=cls.exposures[band].clone(), sources=sources, skyInfo=cls.skyInfo, exposureId=1
            ).outputSources

        # mergeObjectMeasurement.
        mergeMeasConfig = MergeMeasurementsConfig()
        mergeMeasConfig.priorityList = PRIORITY
        mergeMeas = MergeMeasurementsTask(schema=cls.measure.schema, config=mergeMeasConfig)
        cls.reference = mergeMeas.run(cls.measured).mergedCatalog

        # measureObjectForced in r: the reference catalog, footprints from the unforced
        # measurement (our config/measureObjectForced.py: footprintDatasetName = None).
        forcedConfig = ForcedPhotCoaddConfig()
        forcedConfig.footprintDatasetName = None
        forcedConfig.doApCorr = False
        forcedConfig.measurement.plugins.names.discard("base_InputCount")
        forcedConfig.measurement.plugins.names |= ["base_CircularApertureFlux"]
        forcedConfig.measurement.plugins["base_CircularApertureFlux"].radii = [12.0]
        cls.forcedTask = ForcedPhotCoaddTask(refSchema=mergeMeas.schema, config=forcedConfig)
        exposure = cls.exposures["r"].clone()
        # ForcedPhotCoaddTask.generateMeasCat, without the butler data id its id generator needs.
        measCat = cls.forcedTask.measurement.generateMeasCat(exposure, cls.reference, exposure.getWcs())
        for record in measCat:
            record.setFootprint(cls.measured["r"].find(record.getId()).getFootprint())
        cls.forcedTask.run(measCat, exposure, cls.reference, exposure.getWcs(), exposureId=1)
        cls.forced = measCat

    def _children(self, catalog):
        return catalog[(catalog["parent"] != 0)]

    def test_every_galaxy_is_one_primary_child(self):
        """Each simulated source matches exactly one primary record within 2 px; parents and sky
        objects are never primary (SetPrimaryFlagsTask on our blend tree)."""
        catalog = self.measured["r"]
        primary = catalog[catalog["detect_isPrimary"]]
        self.assertFalse(any(r.getParent() == 0 and r.get("deblend_nChild") > 0 for r in primary))
        self.assertGreater(int(catalog["merge_footprint_sky"].sum()), 10)  # MergeDetectionsTask's sky objects
        self.assertFalse(primary["merge_footprint_sky"].any())
        xy = np.array([[r.getX(), r.getY()] for r in primary])
        for source in self.truth:
            d = np.hypot(*(xy - [source.get("truth_x"), source.get("truth_y")]).T)
            self.assertEqual(int((d < 2.0).sum()), 1, msg=f"truth source {source.getId()}")

    def test_blends_are_deblended(self):
        """The pair and the triple are parents with 2 and 3 children; sky objects are skipped."""
        catalog = self.deblended.deblendedCatalog
        parents = catalog[catalog["parent"] == 0]
        sky = parents["merge_footprint_sky"]
        self.assertGreater(int(sky.sum()), 10)
        nChild = sorted(int(r.get("deblend_nChild")) for r in parents[~sky])
        self.assertIn(2, nChild)
        self.assertIn(3, nChild)
        for record in parents[sky]:
            self.assertEqual(record.get("deblend_nChild"), 0)

    def test_unforced_measurement_measures_our_heavy_footprints(self):
        """MeasureMergedCoaddSourcesTask's aperture flux of every child (r) is the sum of its own
        deblended pixels in that aperture, within 5 sigma of the noise of the other pixels."""
        field = "base_CircularApertureFlux_12_0_instFlux"
        heavy = self.deblended.deblendedFlux["r"]
        n = 0
        for measured, child in zip(self.measured["r"], heavy):
            self.assertEqual(measured.getId(), child.getId())
            if child.getParent() == 0:
                continue
            expected, noise = aperture_oracle(self.exposures["r"], child, 12.0)
            self.assertAlmostEqual(measured.get(field), expected, delta=noise, msg=child.getId())
            n += 1
        self.assertGreaterEqual(n, len(SOURCES))

    def test_reference_catalog_and_forced_photometry(self):
        """MergeMeasurementsTask picks a reference band for every record; forced photometry in r
        on the unforced footprints gives every child's unforced aperture flux back."""
        field = "base_CircularApertureFlux_12_0_instFlux"
        self.assertEqual(len(self.reference), len(self.measured["r"]))
        flags = np.array([[r.get(f"merge_measurement_{b}") for b in BANDS] for r in self.reference])
        self.assertTrue(flags.any(axis=1).all())
        for forced, unforced in zip(self.forced, self.measured["r"]):
            if unforced.getParent() == 0:
                continue
            self.assertAlmostEqual(forced.get(field), unforced.get(field), delta=1e-3 * abs(unforced.get(field)) + 1)


# Fields meas_extensions_scarlet's ScarletDeblendTask (b538e17, w.2026.12) adds that MADNESS does not
# write: scarlet's own model diagnostics (components, its flux and overlaps, edge pixels,
# spectrum initialisation, blend convergence) and deblend_childFailed, which flags a parent whose
# scarlet sub-blend failed: MADNESS fits a parent as one blend, so its failure is deblend_failed.
SCARLET_ONLY_FIELDS = {
    "deblend_blendedness", "deblend_edgePixels", "deblend_fluxOverlap", "deblend_fluxOverlapFraction",
    "deblend_maxOverlap", "deblend_nComponents", "deblend_scarletFlux",
    "deblend_blendConvergenceFailedFlag", "deblend_childFailed", "deblend_spectrumInitFlag",
}


@unittest.skipUnless(HAVE_CHAIN and _importable("lsst.meas.extensions.scarlet"), NO_CHAIN + " and meas_extensions_scarlet")
class ScarletSchemaTestCase(MadnessTestCase):
    def test_schema_against_scarlet(self):
        """Built on the same merged-detection schema, our catalog has every field scarlet's task
        adds except the documented scarlet-only ones (a field added on either side shows here)."""
        import lsst.afw.table as afwTable
        from lsst.meas.extensions.scarlet.scarletDeblendTask import ScarletDeblendTask
        from lsst.pipe.tasks.mergeDetections import MergeDetectionsConfig, MergeDetectionsTask
        from lsst.pipe.tasks.multiBand import DetectCoaddSourcesTask

        from lsst.meas.madness.tasks.afw import MadnessDeblendAfwConfig, MadnessDeblendAfwTask

        mergeConfig = MergeDetectionsConfig()
        mergeConfig.priorityList = PRIORITY
        merge = MergeDetectionsTask(schema=DetectCoaddSourcesTask().schema, config=mergeConfig)
        peakSchema = merge.merged.getPeakSchema()
        scarlet = ScarletDeblendTask(schema=afwTable.Schema(merge.schema), peakSchema=peakSchema)
        theirs = set(scarlet.parentSchemaMapper.getOutputSchema().getNames()) | set(scarlet.objectSchema.getNames())
        config = MadnessDeblendAfwConfig()
        config.bundlePath = str(quick_bundle_path())
        ours = set(MadnessDeblendAfwTask(schema=merge.schema, peakSchema=peakSchema, config=config).schema.getNames())
        self.assertEqual(theirs - ours, SCARLET_ONLY_FIELDS)
        for name in ("parent", "deblend_nChild", "deblend_nPeaks", "deblend_parentNPeaks", "deblend_peakId",
                     "deblend_peak_center_x", "deblend_skipped", "deblend_failed", "deblend_skipped_isolatedParent",
                     "deblend_skipped_tooManyPeaks", "deblend_skipped_parentTooBig", "deblend_skipped_masked",
                     "deblend_incompleteData"):
            self.assertIn(name, theirs & ours)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
