"""The afw I/O path: conventions (run everywhere) and MadnessDeblendAfwTask on afw data (needs afw).

The afw-independent pieces (schema fields, bad pixels from an afw-style mask, stacking arrays,
footprint images, the task's connections and config, the shared deblending core fed through
them) are tested here for real. The afw tests use ``lsst.meas.base.tests.TestDataset`` and are
skipped where ``lsst.afw`` / ``lsst.meas.base`` do not import (the pip-only stack: this
repository's CI); they are written against the real afw API (afw, meas_base at the commits
doc/tasks.md names) but have not been run.
"""

import importlib.util
import unittest

import numpy as np
from task_utils import (
    NAN_HOLE,
    PATCH_YX0,
    SCENE_GROUPS,
    SCENE_PEAKS,
    aperture_oracle,
    deblender,
    masked_images,
    run_config,
    scene,
    truth_detections,
)
from utils import BANDS, MadnessTestCase, quick_bundle_path

import lsst.utils.tests
from lsst.meas.madness.errors import MadnessValueError
from lsst.meas.madness.tasks import Footprint, MadnessDeblendTask, MadnessMissingBandError, MultibandCoadd
from lsst.meas.madness.tasks.afw import (
    AFW_SKIPPED_COLUMNS,
    MadnessDeblendAfwConfig,
    MadnessDeblendAfwConnections,
    afw_fields,
    bad_pixels,
    coadd_from_arrays,
    data_coverage,
    footprint_image,
)
from lsst.meas.madness.tasks.catalogs import deblend_columns
from lsst.pipe.base.testUtils import lintConnections
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

HAVE_AFW = all(importlib.util.find_spec(m) is not None for m in ("lsst.afw", "lsst.meas.base"))
HAVE_PIPE_TASKS = importlib.util.find_spec("lsst.pipe.tasks") is not None
NO_AFW = "lsst.afw and lsst.meas.base are not importable (pip-only stack); the afw path needs the Rubin stack"

# afw-style mask bits of the test arrays.
PLANE_BITS = {"BAD": 0, "SAT": 1, "INTRP": 2, "NO_DATA": 8, "DETECTED": 5}


class ConventionsTestCase(MadnessTestCase):
    """afw-independent conventions of the afw path."""

    def test_fields_follow_catalog_columns(self):
        fields = afw_fields(BANDS, 16)
        names = [f.name for f in fields]
        expected = [c.name for c in deblend_columns(BANDS, 16) if c.name not in AFW_SKIPPED_COLUMNS]
        self.assertEqual(names[: len(expected)], expected)
        self.assertEqual(len(set(names)), len(names))
        types = {f.name: f.type for f in fields}
        # The Rubin flag and count conventions.
        for flag in ("deblend_failed", "deblend_skipped", "deblend_skipped_tooManyPeaks",
                     "deblend_skipped_parentTooBig",
                     "deblend_extended", "deblend_truncated"):
            self.assertEqual(types[flag], "Flag")
        for count in ("deblend_nChild", "deblend_nPeaks", "deblend_peak_center_x", "deblend_peak_center_y",
                      "deblend_zoom"):
            self.assertEqual(types[count], "I")
        self.assertEqual(types["deblend_peakId"], "L")
        self.assertEqual(types["deblend_logPrior"], "F")
        self.assertEqual(types["deblend_error"], "String")
        latents = next(f for f in fields if f.name == "deblend_latents")
        self.assertEqual((latents.type, latents.size), ("ArrayF", 16))
        for band in BANDS:
            self.assertEqual(types[f"deblend_chi2_{band}"], "F")
        units = {f.name: f.units for f in fields}
        self.assertEqual(units["deblend_peak_center_x"], "pixel")
        self.assertEqual(units["deblend_runtime"], "ms")
        self.assertIn("deblend_parentNPeaks", names)

    def test_bad_pixels(self):
        image = np.ones((3, 4), np.float32)
        variance = np.ones((3, 4), np.float32)
        mask = np.zeros((3, 4), np.int32)
        image[0, 0] = np.nan
        variance[0, 1] = 0.0
        variance[0, 2] = np.inf
        mask[1, 0] = 1 << PLANE_BITS["SAT"]
        mask[1, 1] = 1 << PLANE_BITS["NO_DATA"]
        mask[1, 2] = 1 << PLANE_BITS["DETECTED"]  # not a bad plane
        mask[1, 3] = 1 << PLANE_BITS["BAD"] | 1 << PLANE_BITS["DETECTED"]
        bad = bad_pixels(image, variance, mask, PLANE_BITS, ["BAD", "SAT", "NO_DATA", "SUSPECT"])
        expected = np.zeros((3, 4), bool)
        expected[0, :3] = True
        expected[1, [0, 1, 3]] = True
        np.testing.assert_array_equal(bad, expected)
        # Planes the mask lacks are ignored; no plane at all leaves only the non-finite pixels.
        non_finite = np.zeros((3, 4), bool)
        non_finite[0, :3] = True
        np.testing.assert_array_equal(bad_pixels(image, variance, mask, PLANE_BITS, []), non_finite)

    def test_coadd_from_arrays_matches_lsst_images(self):
        """afw-style arrays and lsst.images coadds give the same MultibandCoadd."""
        image, var, _ = scene()
        h, w = image.shape[1:]
        masks = np.zeros(image.shape, np.int32)
        masks[2, 10:14, 20:30] = 1 << PLANE_BITS["SAT"]
        planes = {b: (image[i], var[i], masks[i], PLANE_BITS) for i, b in enumerate(BANDS)}
        xy0 = (PATCH_YX0[1], PATCH_YX0[0])
        coadd = coadd_from_arrays(BANDS, planes, xy0, ["SAT", "NO_DATA"])
        reference = MultibandCoadd.from_masked_images(masked_images(image, var), bands=BANDS)
        self.assertEqual(coadd.yx0, PATCH_YX0)
        self.assertEqual(coadd.bbox, reference.bbox)
        np.testing.assert_array_equal(coadd.image, reference.image)
        np.testing.assert_array_equal(coadd.variance, reference.variance)
        # The NaN hole is bad in both; the SAT box only where the mask says so.
        expected_bad = reference.bad.copy()
        expected_bad[2, 10:14, 20:30] = True
        np.testing.assert_array_equal(coadd.bad, expected_bad)
        self.assertTrue(coadd.bad[:, NAN_HOLE[0], NAN_HOLE[1]].all())
        # Only the model's bands are stacked, in its order; a missing one is an error.
        self.assertEqual(coadd_from_arrays(BANDS[::-1], planes, xy0, []).bands, tuple(BANDS[::-1]))
        with self.assertRaises(MadnessMissingBandError):
            coadd_from_arrays(BANDS, {b: planes[b] for b in BANDS[:-1]}, xy0, [])
        bad_shape = dict(planes)
        bad_shape["g"] = (image[1, :-1], var[1], masks[1], PLANE_BITS)
        with self.assertRaises(MadnessValueError):
            coadd_from_arrays(BANDS, bad_shape, xy0, [])
        self.assertEqual(coadd.shape, (h, w))

    def test_scarlet_v30_names(self):
        """Skip flags carry meas_extensions_scarlet v30's names; per-band coverage is a float."""
        types = {f.name: f.type for f in afw_fields(BANDS, 16)}
        for flag in ("deblend_skipped_tooManyPeaks", "deblend_skipped_parentTooBig",
                     "deblend_skipped_isolatedParent", "deblend_skipped_isPseudo"):
            self.assertEqual(types[flag], "Flag")
        self.assertEqual(types["deblend_dataCoverage"], "F")
        for old in ("deblend_tooManyPeaks", "deblend_parentTooBig", "deblend_isolatedParent"):
            self.assertNotIn(old, types)

    def test_data_coverage(self):
        # Rows 10-11 of a mask whose first pixel is (y, x) = (10, 20): 3 + 4 pixels, one of them
        # NO_DATA (bit 8), one off the mask (x = 24 on a 4-pixel-wide mask).
        fp = Footprint(np.array([[10, 21, 23], [11, 21, 24]]))
        mask = np.zeros((2, 4), np.int32)
        mask[1, 2] = 1 << PLANE_BITS["NO_DATA"]
        mask[0, 1] = 1 << PLANE_BITS["SAT"]  # other planes do not count
        self.assertAlmostEqual(data_coverage(fp, mask, (10, 20), PLANE_BITS["NO_DATA"]), 5 / 7)
        self.assertAlmostEqual(data_coverage(fp, mask, (10, 20), None), 6 / 7)
        self.assertTrue(np.isnan(data_coverage(Footprint(np.zeros((0, 3), np.int64)), mask, (10, 20), 8)))

    def test_footprint_image(self):
        rng = np.random.default_rng(3)
        mask = rng.random((9, 7)) > 0.5
        fp = Footprint.from_mask(mask, (100, 200))
        values = rng.random(fp.area).astype(np.float32)
        img, xy0 = footprint_image(fp, values)
        y0, x0, y1, x1 = fp.bbox
        self.assertEqual(xy0, (x0, y0))
        self.assertEqual(img.shape, (y1 - y0, x1 - x0))
        # Values land on the footprint's pixels in span order.
        y, x = fp.pixels()
        np.testing.assert_array_equal(img[y - y0, x - x0], values)
        self.assertAlmostEqual(float(img.sum()), float(values.sum()), places=4)
        with self.assertRaises(MadnessValueError):
            footprint_image(fp, values[:-1])


class AfwTaskConnectionsTestCase(MadnessTestCase):
    """The afw task's connections and config import and behave without afw."""

    def test_lint_and_cell_switch(self):
        lintConnections(MadnessDeblendAfwConnections)
        config = MadnessDeblendAfwConfig()
        connections = MadnessDeblendAfwConnections(config=config)
        self.assertEqual(set(connections.inputs), {"mergedDetections", "coadds"})
        self.assertEqual(set(connections.initInputs), {"inputSchema", "peakSchema"})
        self.assertEqual(set(connections.outputs), {"deblendedCatalog", "deblendedFlux", "objectParents"})
        # Scarlet's name for the parents catalog (consolidateParentTable reads it).
        self.assertEqual(connections.objectParents.name, "object_parent_patch")
        self.assertEqual(connections.coadds.name, "deepCoadd_calexp")
        self.assertEqual(connections.coadds.storageClass, "ExposureF")
        self.assertEqual(connections.mergedDetections.name, "deepCoadd_mergeDet")
        self.assertEqual(connections.deblendedCatalog.name, "deepCoadd_deblendedCatalog")
        self.assertEqual(connections.deblendedFlux.name, "deepCoadd_deblendedFlux")
        self.assertIn("band", connections.deblendedFlux.dimensions)
        # The name MeasureMergedCoaddSourcesTask reads its inputSchema from.
        self.assertEqual(connections.outputSchema.name, "deepCoadd_deblendedFlux_schema")
        config.useCellCoadds = True
        connections = MadnessDeblendAfwConnections(config=config)
        self.assertEqual(set(connections.inputs), {"mergedDetections", "coadds_cell", "backgrounds"})

    def test_config_is_the_pip_config_plus_afw_fields(self):
        config = MadnessDeblendAfwConfig()
        for name in ("bundlePath", "bands", "maxNumberOfPeaks", "maxFootprintArea", "catchFailures"):
            self.assertIn(name, config)
        config.idGenerator.release_id = 2
        # Residual peaks are the pip task's default; the afw task (a drop-in for DRP) leaves the
        # merged detections' peaks alone unless asked, and accepts both when asked.
        self.assertFalse(config.doResidualPeaks)
        self.assertFalse(config.doPairSplits)
        config.validate()
        for name in ("doResidualPeaks", "doPairSplits"):
            setattr(config, name, True)
        config.validate()

    @unittest.skipIf(HAVE_PIPE_TASKS, "lsst.pipe.tasks is importable")
    def test_measurement_task_needs_pipe_tasks(self):
        import lsst.meas.madness.tasks.afw as afw_tasks

        with self.assertRaisesRegex(ImportError, "lsst.pipe.tasks"):
            getattr(afw_tasks, "MadnessMeasureMergedCoaddSourcesTask")

    def test_shared_core_matches_pip_task(self):
        """deblendParents (the core the afw task calls) gives the pip task's children."""
        from lsst.meas.madness.tasks import parents_from_tables

        image, var, truth = scene()
        detections, spans = truth_detections(truth)
        task = MadnessDeblendTask(config=run_config())
        full = task.run(coadds=masked_images(image, var), detections=detections, detectionSpans=spans)
        zero_mask = np.zeros(image.shape[1:], np.int32)
        planes = {b: (image[i], var[i], zero_mask, PLANE_BITS) for i, b in enumerate(BANDS)}
        coadd = coadd_from_arrays(BANDS, planes, (PATCH_YX0[1], PATCH_YX0[0]), ["BAD", "SAT", "NO_DATA"])
        core = task.deblendParents(coadd, parents_from_tables(detections, spans), deblender())
        catalog = full.deblendedCatalog
        children = catalog[catalog["parent"] != 0]
        self.assertEqual(sorted(r["id"] for r in core.childRows), sorted(children["id"]))
        for row in core.childRows:
            # Every child's footprint lies inside its parent's, holding its own peak.
            parent_fp = core.heavyFootprints[row["parent"]]
            fp = core.heavyFootprints[row["id"]]
            y, x = fp.pixels()
            self.assertTrue(parent_fp.contains(y, x).all())
            self.assertTrue(fp.contains(row["deblend_peak_center_y"], row["deblend_peak_center_x"])[0])
            self.assertEqual(core.heavyValues[row["id"]].shape, (len(BANDS), fp.area))


def _afw_scene(bands, fluxes, noise=10.0, seed=0):
    """One TestDataset per band with the same sources: an isolated star, a 2-galaxy blend,
    a 3-galaxy blend. Returns ``{band: exposure}`` and the r-band truth catalog."""
    import lsst.afw.geom
    import lsst.geom
    from lsst.meas.base.tests import TestDataset

    bbox = lsst.geom.Box2I(lsst.geom.Point2I(1000, 2000), lsst.geom.Extent2I(140, 120))
    exposures, catalogs = {}, {}
    for b, band in enumerate(bands):
        dataset = TestDataset(bbox, psfSigma=2.0)
        scale = fluxes[b]
        dataset.addSource(scale * 4e4, lsst.geom.Point2D(1030, 2030))
        with dataset.addBlend() as family:
            family.addChild(scale * 6e4, lsst.geom.Point2D(1080, 2040), lsst.afw.geom.Quadrupole(6, 4, 1))
            family.addChild(scale * 4e4, lsst.geom.Point2D(1088, 2046), lsst.afw.geom.Quadrupole(5, 5, 0))
        with dataset.addBlend() as family:
            family.addChild(scale * 5e4, lsst.geom.Point2D(1060, 2090), lsst.afw.geom.Quadrupole(7, 5, -1))
            family.addChild(scale * 3e4, lsst.geom.Point2D(1068, 2094), lsst.afw.geom.Quadrupole(4, 4, 0))
            family.addChild(scale * 3e4, lsst.geom.Point2D(1055, 2098), lsst.afw.geom.Quadrupole(4, 4, 1))
        exposure, catalog = dataset.realize(noise, TestDataset.makeMinimalSchema(), randomSeed=seed + b)
        exposures[band] = exposure
        catalogs[band] = catalog
    return exposures, catalogs["r"]


def _apertureAtPeak(config, radius):
    """A meas_base measurement config (single-frame or forced) that measures only a circular
    aperture flux of ``radius`` at the peak."""
    config.plugins.names = ["base_PeakCentroid", "base_CircularApertureFlux"]
    config.plugins["base_CircularApertureFlux"].radii = [radius]
    config.slots.centroid = "base_PeakCentroid"
    for slot in ("shape", "psfShape", "psfFlux", "apFlux", "gaussianFlux", "modelFlux", "calibFlux"):
        setattr(config.slots, slot, None)
    return config


@unittest.skipUnless(HAVE_AFW, NO_AFW)
class AfwDeblendTestCase(MadnessTestCase):
    """MadnessDeblendAfwTask on TestDataset coadds (afw, meas_base)."""

    @classmethod
    def setUpClass(cls):
        from lsst.meas.madness.tasks.afw import MadnessDeblendAfwTask

        cls.exposures, truth = _afw_scene(BANDS, [0.3, 0.6, 1.0, 1.2, 1.3, 1.2])
        # The merged detections: the truth parents, with their Footprints and peaks.
        cls.merged = truth[truth["parent"] == 0].copy(deep=True)
        cls.peakSchema = cls.merged[0].getFootprint().getPeaks().getSchema()
        config = MadnessDeblendAfwConfig()
        config.bundlePath = str(quick_bundle_path())
        config.maxIter = 60
        config.minIter = 20
        cls.task = MadnessDeblendAfwTask(
            schema=cls.merged.schema, peakSchema=cls.peakSchema, config=config, deblender=deblender()
        )
        cls.result = cls.task.run(coadds=cls.exposures, mergedDetections=cls.merged)
        cls.catalog = cls.result.deblendedCatalog

    def test_schema_and_init_output(self):
        names = self.task.schema.getNames()
        expected = (
            "parent",
            "deblend_nChild",
            "deblend_nPeaks",
            "deblend_failed",
            "deblend_skipped",
            "deblend_skipped_tooManyPeaks",
            "deblend_skipped_parentTooBig",
            "deblend_peak_center_x",
            "deblend_latents",
            "deblend_logPrior",
            "deblend_chi2_r",
            "deblend_iterations",
            "deblend_converged",
        )
        for name in expected:
            self.assertIn(name, names)
        self.assertEqual(self.task.outputSchema.schema, self.task.schema)

    def test_children_and_footprints(self):
        import lsst.afw.table as afwTable

        catalog = self.catalog
        self.assertTrue(catalog.isSorted(afwTable.SourceTable.getParentKey()))
        parents = [r for r in catalog if r.getParent() == 0]
        self.assertEqual(len(parents), len(self.merged))
        for parent in parents:
            nPeaks = len(parent.getFootprint().getPeaks())
            children = catalog.getChildren(parent.getId())
            self.assertEqual(parent.get("deblend_nChild"), len(children))
            self.assertEqual(parent.get("deblend_nPeaks"), nPeaks)
            self.assertEqual(len(children), nPeaks)
            for child in children:
                fp = child.getFootprint()
                self.assertEqual(len(fp.getPeaks()), 1)
                self.assertTrue(parent.getFootprint().getSpans().contains(fp.getSpans()))
                peak = fp.getPeaks()[0]
                self.assertEqual(child.get("deblend_peakId"), peak.getId())
                self.assertEqual(child.get("deblend_peak_center_x"), peak.getIx())
                self.assertTrue(np.isfinite(child.get("deblend_latents")).all())
                self.assertFalse(fp.isHeavy())

    def test_object_parents(self):
        """object_parent_patch: the parents, same schema and values, Footprints kept, no children."""
        parents = self.result.objectParents
        self.assertEqual(parents.schema, self.task.schema)
        expected = [r for r in self.catalog if r.getParent() == 0]
        self.assertEqual([r.getId() for r in parents], [r.getId() for r in expected])
        for mine, theirs in zip(parents, expected):
            self.assertEqual(mine.get("deblend_nChild"), theirs.get("deblend_nChild"))
            self.assertEqual(mine.getFootprint().getArea(), theirs.getFootprint().getArea())
        self.assertEqual(len(parents), len(self.merged))

    def test_heavy_footprints_per_band(self):
        self.assertEqual(set(self.result.deblendedFlux), set(BANDS))
        for band, catalog in self.result.deblendedFlux.items():
            exposure = self.exposures[band]
            self.assertEqual(len(catalog), len(self.catalog))
            for parent in [r for r in catalog if r.getParent() == 0]:
                children = catalog.getChildren(parent.getId())
                if not len(children):
                    continue
                parentFlux = np.zeros(parent.getFootprint().getArea(), np.float32)
                parent.getFootprint().getSpans().flatten(parentFlux, exposure.image.array, exposure.getXY0())
                childSum = 0.0
                for child in children:
                    heavy = child.getFootprint()
                    self.assertTrue(heavy.isHeavy())
                    values = heavy.getImageArray()
                    # Scarlet's Object-table columns: the blend, and the value at the peak pixel.
                    self.assertEqual(child.get("deblend_blendId"), parent.getId())
                    self.assertEqual(child.get("deblend_blendNChild"), len(children))
                    self.assertEqual(child.get("deblend_zeroFlux"), not np.any(values != 0))
                    peak = heavy.getPeaks()[0]
                    box = heavy.getBBox()
                    image = np.zeros((box.getHeight(), box.getWidth()), np.float32)
                    heavy.getSpans().unflatten(image, values, box.getMin())
                    atPeak = image[peak.getIy() - box.getMinY(), peak.getIx() - box.getMinX()]
                    self.assertAlmostEqual(child.get("deblend_peak_instFlux"), float(atPeak), places=4)
                    self.assertAlmostEqual(
                        float(values.sum()),
                        child.get(f"deblend_flux_{band}"),
                        delta=1e-4 * float(np.abs(values).sum()) + 1e-3,
                    )
                    # Mask and variance are the coadd's.
                    variance = np.zeros(heavy.getArea(), np.float32)
                    heavy.getSpans().flatten(variance, exposure.variance.array, exposure.getXY0())
                    np.testing.assert_allclose(heavy.getVarianceArray(), variance)
                    childSum += float(values.sum())
                # Flux-conserving children share the parent's pixels (the part given to no child,
                # deblend_unassignedFluxFraction, is small for these isolated blends).
                noise = 10.0 * np.sqrt(parentFlux.size)
                self.assertLess(abs(childSum - parentFlux.sum()), 0.2 * abs(parentFlux.sum()) + 5 * noise)

    def test_data_coverage_per_band(self):
        """Every record of a per-band catalog has deblend_dataCoverage (1 on these complete coadds,
        as MergeMeasurementsTask reads it); the band-merged catalog leaves it NaN."""
        from lsst.meas.madness.tasks.afw.convert import footprint_data_coverage

        for band, catalog in self.result.deblendedFlux.items():
            coverage = np.array([r.get("deblend_dataCoverage") for r in catalog])
            np.testing.assert_array_equal(coverage, 1.0, err_msg=band)
        self.assertTrue(np.isnan([r.get("deblend_dataCoverage") for r in self.catalog]).all())
        # NO_DATA on the left half of a parent's box: the fraction of its pixels there.
        exposure = self.exposures["r"].clone()
        parent = self.merged[0].getFootprint()
        box = parent.getBBox()
        half = box.getMinX() + box.getWidth() // 2
        x0 = exposure.getX0()
        exposure.mask.array[:, : half - x0] |= exposure.mask.getPlaneBitMask("NO_DATA")
        spans = parent.getSpans()
        left = sum(max(0, min(s.getX1(), half - 1) - s.getX0() + 1) for s in spans)
        self.assertAlmostEqual(footprint_data_coverage(parent, exposure), 1 - left / parent.getArea(),
                               places=6)

    def test_sky_objects_are_not_deblended(self):
        """A parent flagged sky_source is skipped (deblend_skipped_isPseudo), as scarlet skips it."""
        import lsst.afw.table as afwTable

        from lsst.meas.madness.tasks.afw import MadnessDeblendAfwTask

        mapper = afwTable.SchemaMapper(self.merged.schema)
        mapper.addMinimalSchema(self.merged.schema)
        for item in self.merged.schema:
            if item.field.getName() not in mapper.getOutputSchema().getNames():
                mapper.addMapping(item.key)
        sky = mapper.editOutputSchema().addField("sky_source", type="Flag", doc="sky object")
        merged = afwTable.SourceCatalog(mapper.getOutputSchema())
        merged.extend(self.merged[:2], mapper)
        merged[0].set(sky, True)
        config = MadnessDeblendAfwConfig()
        config.bundlePath = str(quick_bundle_path())
        config.maxIter = config.minIter = 5
        task = MadnessDeblendAfwTask(schema=merged.schema, peakSchema=self.peakSchema, config=config,
                                     deblender=deblender())
        catalog = task.run(coadds=self.exposures, mergedDetections=merged).deblendedCatalog
        skyParent, other = catalog.find(merged[0].getId()), catalog.find(merged[1].getId())
        self.assertTrue(skyParent.get("deblend_skipped") and skyParent.get("deblend_skipped_isPseudo"))
        self.assertEqual(skyParent.get("deblend_nChild"), 0)
        self.assertEqual(len(catalog.getChildren(skyParent.getId())), 0)
        self.assertFalse(other.get("deblend_skipped_isPseudo") or other.get("deblend_skipped"))
        self.assertEqual(len(catalog.getChildren(other.getId())), len(other.getFootprint().getPeaks()))

    def test_noise_replacer_accepts_outputs(self):
        """meas_base's NoiseReplacer (used by coadd measurement) takes the per-band catalog."""
        from lsst.meas.base import NoiseReplacer, NoiseReplacerConfig

        catalog = self.result.deblendedFlux["r"]
        exposure = self.exposures["r"].clone()
        before = exposure.image.array.copy()
        footprints = {r.getId(): (r.getParent(), r.getFootprint()) for r in catalog}
        replacer = NoiseReplacer(NoiseReplacerConfig(), exposure, footprints, noiseImage=None)
        for record in catalog:
            replacer.insertSource(record.getId())
            replacer.removeSource(record.getId())
        replacer.end()
        np.testing.assert_allclose(exposure.image.array, before)

    def test_single_frame_measurement(self):
        """SingleFrameMeasurementTask (what MeasureMergedCoaddSourcesTask runs) measures children."""
        import lsst.afw.table as afwTable
        from lsst.meas.base import SingleFrameMeasurementConfig, SingleFrameMeasurementTask

        catalog = self.result.deblendedFlux["r"]
        mapper = afwTable.SchemaMapper(catalog.schema)
        mapper.addMinimalSchema(catalog.schema)
        schema = mapper.getOutputSchema()
        config = SingleFrameMeasurementConfig()
        config.plugins.names = ["base_SdssCentroid", "base_PsfFlux", "base_SdssShape"]
        config.slots.centroid = "base_SdssCentroid"
        config.slots.shape = "base_SdssShape"
        config.slots.psfFlux = "base_PsfFlux"
        config.slots.apFlux = None
        config.slots.gaussianFlux = None
        config.slots.modelFlux = None  # base_GaussianFlux by default, not among the plugins run
        config.slots.calibFlux = None
        task = SingleFrameMeasurementTask(schema=schema, config=config)
        sources = afwTable.SourceCatalog(schema)
        sources.extend(catalog, mapper)
        task.run(sources, self.exposures["r"].clone())
        children = sources[sources["parent"] != 0]
        self.assertGreater(len(children), 0)
        self.assertTrue(np.isfinite(children["base_PsfFlux_instFlux"]).all())

    def test_measurement_reads_our_heavy_footprints(self):
        """Single-frame and forced measurement (meas_base, with the noise replacer) measure each
        child on its own HeavyFootprint: a 12-px aperture flux at its peak is the sum of its
        deblended pixels there, within the noise of the aperture's other pixels."""
        import lsst.afw.table as afwTable
        from lsst.meas.base import (
            ForcedMeasurementConfig,
            ForcedMeasurementTask,
            SingleFrameMeasurementConfig,
            SingleFrameMeasurementTask,
        )

        band, radius = "r", 12.0
        catalog = self.result.deblendedFlux[band]
        exposure = self.exposures[band].clone()
        mapper = afwTable.SchemaMapper(catalog.schema)
        mapper.addMinimalSchema(catalog.schema)
        config = _apertureAtPeak(SingleFrameMeasurementConfig(), radius)
        schema = mapper.getOutputSchema()
        task = SingleFrameMeasurementTask(schema=schema, config=config)
        sources = afwTable.SourceCatalog(schema)
        sources.extend(catalog, mapper)
        task.run(sources, exposure)
        field = "base_CircularApertureFlux_12_0_instFlux"

        forcedConfig = _apertureAtPeak(ForcedMeasurementConfig(), radius)
        forced = ForcedMeasurementTask(refSchema=catalog.schema, config=forcedConfig)
        wcs = exposure.getWcs()
        measCat = forced.generateMeasCat(exposure, catalog, wcs)
        # As drp_tasks' ForcedPhotCoaddTask does with the deblender's per-band catalog.
        for meas, ref in zip(measCat, catalog):
            meas.setFootprint(ref.getFootprint())
        forced.run(measCat, exposure, catalog, wcs)

        n = 0
        for single, forcedRecord, child in zip(sources, measCat, catalog):
            if child.getParent() == 0:
                continue
            expected, noise = aperture_oracle(self.exposures[band], child, radius)
            self.assertAlmostEqual(single.get(field), expected, delta=noise, msg=child.getId())
            self.assertAlmostEqual(forcedRecord.get(field), expected, delta=noise, msg=child.getId())
            n += 1
        self.assertGreater(n, 3)

    def test_residual_peak_gets_a_peak_record(self):
        """doResidualPeaks on the afw path: the galaxy whose peak the merged detections lost comes
        back as a child with a new peak, in its own footprint and in its parent's (the scene and
        the lost galaxy of the pip task's test_residual_peaks)."""
        import lsst.afw.detection as afwDet
        import lsst.afw.image as afwImage
        import lsst.afw.table as afwTable
        import lsst.geom

        from lsst.meas.madness.tasks.afw import MadnessDeblendAfwTask, spanset_from_footprint

        image, var, truth = scene()
        members, lost = SCENE_GROUPS[0], 1
        footprint = Footprint.from_mask(truth[members].sum(axis=(0, 1)) > 5.0, PATCH_YX0)
        height, width = image.shape[1:]
        box = lsst.geom.Box2I(lsst.geom.Point2I(PATCH_YX0[1], PATCH_YX0[0]), lsst.geom.Extent2I(width, height))
        exposures = {}
        for b, band in enumerate(BANDS):
            exposure = afwImage.ExposureF(box)
            exposure.image.array[:] = image[b]
            exposure.variance.array[:] = var[b]
            exposures[band] = exposure
        peakSchema = afwDet.PeakTable.makeMinimalSchema()
        merged = afwTable.SourceCatalog(afwTable.SourceTable.makeMinimalSchema())
        parent = merged.addNew()
        fp = afwDet.Footprint(spanset_from_footprint(footprint), peakSchema)
        for i in members:
            if i != lost:
                x, y = (int(v) for v in SCENE_PEAKS[i])
                fp.addPeak(x + PATCH_YX0[1], y + PATCH_YX0[0], float(np.nansum(image[:, y, x])))
        parent.setFootprint(fp)
        config = MadnessDeblendAfwConfig()
        config.bundlePath = str(quick_bundle_path())
        config.maxIter = 60
        config.minIter = 20
        config.inputUnit = "electron"
        config.doResidualPeaks = True
        task = MadnessDeblendAfwTask(schema=merged.schema, peakSchema=peakSchema, config=config,
                                     deblender=deblender())
        result = task.run(coadds=exposures, mergedDetections=merged)
        catalog = result.deblendedCatalog
        added = [r for r in catalog if r.getParent() != 0 and r.get("deblend_residualPeak")]
        self.assertEqual(len(added), 1)
        child = added[0]
        self.assertEqual(child.getParent(), parent.getId())
        out = next(r for r in catalog if r.getId() == parent.getId())
        self.assertEqual(out.get("deblend_nResidualPeaks"), 1)
        self.assertEqual(out.get("deblend_nPeaks"), 2)  # the detection's peaks
        self.assertEqual(out.get("deblend_nChild"), 3)
        self.assertEqual(len(catalog.getChildren(parent.getId())), 3)
        # The child's one peak sits on the lost galaxy, and the parent's footprint holds it too.
        peaks = child.getFootprint().getPeaks()
        self.assertEqual(len(peaks), 1)
        x, y = SCENE_PEAKS[lost] + np.array([PATCH_YX0[1], PATCH_YX0[0]])
        self.assertLessEqual(np.hypot(peaks[0].getFx() - x, peaks[0].getFy() - y), 1.5)
        self.assertEqual(child.get("deblend_peakId"), peaks[0].getId())
        parentPeakIds = [p.getId() for p in out.getFootprint().getPeaks()]
        self.assertIn(peaks[0].getId(), parentPeakIds)
        self.assertEqual(len(set(parentPeakIds)), 3)
        self.assertGreater(peaks[0].getPeakValue(), 0)
        self.assertTrue(out.getFootprint().getSpans().contains(child.getFootprint().getSpans()))
        self.assertEqual(len({r.getId() for r in catalog}), len(catalog))
        # Every band's catalog carries its heavy footprint; the object parents hold the new peak.
        for band, bandCatalog in result.deblendedFlux.items():
            record = next(r for r in bandCatalog if r.getId() == child.getId())
            self.assertTrue(record.getFootprint().isHeavy(), band)
        objectParent = next(r for r in result.objectParents if r.getId() == parent.getId())
        self.assertEqual(len(objectParent.getFootprint().getPeaks()), 3)
        # The merged detections handed to run() are not changed.
        self.assertEqual(len(merged[0].getFootprint().getPeaks()), 2)

    def test_flags_on_injected_failures(self):
        """Too many peaks and too big parents are skipped with their flags; NaN blends fail alone."""
        import lsst.geom

        from lsst.meas.madness.tasks.afw import MadnessDeblendAfwTask

        config = MadnessDeblendAfwConfig()
        config.bundlePath = str(quick_bundle_path())
        config.maxIter = 30
        config.minIter = 10
        config.maxNumberOfPeaks = 2
        task = MadnessDeblendAfwTask(
            schema=self.merged.schema, peakSchema=self.peakSchema, config=config, deblender=deblender()
        )
        exposures = {b: e.clone() for b, e in self.exposures.items()}
        # Every pixel of the 2-galaxy blend's fit region is NaN in every band: no data to fit. The
        # fit region is the union of its peaks' 45x45 stamps, not only its footprint (NaN only
        # inside the footprint leaves the stamps' other pixels to fit, and the blend succeeds).
        blend2 = next(r for r in self.merged if len(r.getFootprint().getPeaks()) == 2)
        box = lsst.geom.Box2I(blend2.getFootprint().getBBox())
        box.grow(23)
        for exposure in exposures.values():
            box.clip(exposure.getBBox())
            exposure[box].image.array[:] = np.nan
        result = task.run(coadds=exposures, mergedDetections=self.merged)
        catalog = result.deblendedCatalog
        for parent in [r for r in catalog if r.getParent() == 0]:
            nPeaks = len(parent.getFootprint().getPeaks())
            if nPeaks > 2:
                self.assertTrue(parent.get("deblend_skipped"))
                self.assertTrue(parent.get("deblend_skipped_tooManyPeaks"))
                self.assertEqual(parent.get("deblend_nChild"), 0)
            elif parent.getId() == blend2.getId():
                self.assertTrue(parent.get("deblend_failed"))
                self.assertEqual(parent.get("deblend_error"), "MadnessNoDataError")
            else:
                self.assertFalse(parent.get("deblend_skipped") or parent.get("deblend_failed"))
        config.maxNumberOfPeaks = 50
        config.maxFootprintArea = 10
        task = MadnessDeblendAfwTask(
            schema=self.merged.schema, peakSchema=self.peakSchema, config=config, deblender=deblender()
        )
        catalog = task.run(coadds=self.exposures, mergedDetections=self.merged).deblendedCatalog
        for parent in [r for r in catalog if r.getParent() == 0]:
            self.assertTrue(parent.get("deblend_skipped_parentTooBig"))

    def test_missing_band_and_bad_mask(self):
        with self.assertRaises(MadnessMissingBandError):
            self.task.run(
                coadds={b: e for b, e in self.exposures.items() if b != "u"}, mergedDetections=self.merged
            )
        from lsst.meas.madness.tasks.afw import coadd_from_exposures

        exposures = {b: e.clone() for b, e in self.exposures.items()}
        mask = exposures["g"].mask
        mask.array[5:9, 5:9] |= mask.getPlaneBitMask("SAT")
        coadd = coadd_from_exposures(exposures, BANDS, ["SAT"])
        self.assertTrue(coadd.bad[1, 5:9, 5:9].all())
        self.assertFalse(coadd.bad[0, 5:9, 5:9].any())
        self.assertEqual(coadd.yx0, (2000, 1000))

    def test_mask_limits_and_incomplete_data(self):
        """With afw masks: a parent half NO_DATA in g is skipped under maskLimits 0.25
        (deblend_skipped_masked), deblended under 0.75; a parent NO_DATA in all of u is deblended
        and flagged deblend_incompleteData."""
        from lsst.meas.madness.tasks.afw import MadnessDeblendAfwTask, coadd_from_exposures

        parents = [r for r in self.merged if len(r.getFootprint().getPeaks()) > 1]
        self.assertGreaterEqual(len(parents), 2)
        halfParent, fullParent = parents[0], parents[1]
        exposures = {b: e.clone() for b, e in self.exposures.items()}
        spans = halfParent.getFootprint().getSpans()
        bbox = halfParent.getFootprint().getBBox()
        top = [s for s in spans if s.getY() < bbox.getCenterY()]
        import lsst.afw.geom as afwGeom

        topSpans = afwGeom.SpanSet(top)
        fraction = topSpans.getArea() / spans.getArea()
        self.assertTrue(0.25 < fraction < 0.75, fraction)
        gMask = exposures["g"].mask
        topSpans.setMask(gMask, gMask.getPlaneBitMask("NO_DATA"))
        uMask = exposures["u"].mask
        fullParent.getFootprint().getSpans().setMask(uMask, uMask.getPlaneBitMask("NO_DATA"))
        coadd = coadd_from_exposures(exposures, BANDS, ["NO_DATA"], keep_planes=["NO_DATA", "NOT_A_PLANE"])
        self.assertEqual(set(coadd.planes), {"NO_DATA"})
        self.assertEqual(int(coadd.planes["NO_DATA"][1].sum()), topSpans.getArea())

        def run(limits):
            config = MadnessDeblendAfwConfig()
            config.bundlePath = str(quick_bundle_path())
            config.maxIter = 30
            config.minIter = 10
            config.maskLimits = limits
            task = MadnessDeblendAfwTask(
                schema=self.merged.schema, peakSchema=self.peakSchema, config=config, deblender=deblender()
            )
            catalog = task.run(coadds=exposures, mergedDetections=self.merged).deblendedCatalog
            return {r.getId(): r for r in catalog if r.getParent() == 0}

        records = run({"NO_DATA": 0.25})
        self.assertTrue(records[halfParent.getId()].get("deblend_skipped_masked"))
        self.assertTrue(records[halfParent.getId()].get("deblend_skipped"))
        self.assertTrue(records[fullParent.getId()].get("deblend_skipped_masked"))
        records = run({"NO_DATA": 0.75})
        self.assertFalse(records[halfParent.getId()].get("deblend_skipped_masked"))
        self.assertGreater(records[halfParent.getId()].get("deblend_nChild"), 0)
        self.assertFalse(records[halfParent.getId()].get("deblend_incompleteData"))
        full = records[fullParent.getId()]
        self.assertTrue(full.get("deblend_skipped_masked"))
        records = run({})
        full = records[fullParent.getId()]
        self.assertFalse(full.get("deblend_skipped"))
        self.assertTrue(full.get("deblend_incompleteData"))
        self.assertGreater(full.get("deblend_nChild"), 0)


@unittest.skipUnless(HAVE_PIPE_TASKS and HAVE_AFW, "needs lsst.pipe.tasks and lsst.afw (the Rubin stack)")
class AfwMeasurementConfigTestCase(MadnessTestCase):
    def test_measurement_reads_per_band_catalog(self):
        from lsst.pex.config import FieldValidationError

        from lsst.meas.madness.tasks.afw.measurement import (
            MadnessMeasureMergedCoaddSourcesConfig,
            MadnessMeasureMergedCoaddSourcesConnections,
        )

        config = MadnessMeasureMergedCoaddSourcesConfig()
        self.assertFalse(config.doAddFootprints)
        connections = MadnessMeasureMergedCoaddSourcesConnections(config=config)
        self.assertEqual(connections.scarletCatalog.name, "deepCoadd_deblendedFlux")
        self.assertIn("band", connections.scarletCatalog.dimensions)
        self.assertNotIn("scarletModels", connections.inputs)
        config.doAddFootprints = True
        with self.assertRaises(FieldValidationError):
            config.validate()


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
