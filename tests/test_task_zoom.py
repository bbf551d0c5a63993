"""MadnessDeblendTask with maxZoom: a galaxy bigger than the stamp, through the task.

The engine can draw a source with larger pixels (``MapSettings.max_zoom``, see
``doc/large-galaxies.md`` and ``tests/test_large_galaxies.py``); the task must grow each blend's
fit region to hold the zoomed windows, cut the larger models into children, and report the zoom
per child. The truth is GalSim's: a bright exponential disc (half-light radius 2.5", r = 19.5)
with ~16% of its r light outside the 45-px stamp, and a fainter small galaxy 6.5" away, with
LSST sky noise, deblended with the packaged model at maxZoom 1 (the default) and 3. (The quick
test bundle of tests/utils.py is trained on small synthetic galaxies of 3e3-1e5 electrons and says
nothing about a disc of this size and brightness; the packaged model also loads in seconds.)
"""

import unittest

import galsim
import keras
import lsst.pex.config as pexConfig
import lsst.utils.tests
import numpy as np
from lsst.meas.madness import MadnessDeblender
from lsst.meas.madness.simulation import LsstConditions
from lsst.meas.madness.tasks import (
    Footprint,
    MadnessDeblendConfig,
    MadnessDeblendTask,
    footprints_from_table,
    heavy_footprints_from_table,
)
from lsst.meas.madness.tasks.blends import ParentFootprint, plan_blend, with_zoom
from task_utils import masked_images, truth_detections
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

SCALE = 0.2
SHAPE = (141, 141)
YX0 = (500, 700)  # tract frame of the patch's first pixel, non-zero so that frame mistakes show
PEAKS = np.array([[70, 70], [100, 82]])  # local (x, y): the disc, and the small galaxy
STAMP = 45


def _scene(large=True):
    """Image, variance and per-galaxy truth ``(2, bands, H, W)`` of the disc and its neighbour
    (``large=False``: a galaxy of the stamp's size, r = 21, in place of the disc)."""
    conditions = LsstConditions.from_surveycodex()
    bands = conditions.bands
    # Flat SED: the same magnitude in every band.
    disc = galsim.Exponential(half_light_radius=2.5 if large else 0.7).shear(e1=0.2, e2=-0.1)
    small = galsim.Exponential(half_light_radius=0.5).shear(e1=-0.1, e2=0.2)
    truth = np.zeros((2, len(bands), *SHAPE))
    for b, band in enumerate(bands):
        psf = galsim.Moffat(beta=3.5, fwhm=conditions.psf_fwhm[b])
        for k, (gal, mag) in enumerate([(disc, 19.5 if large else 21.0), (small, 22.0)]):
            obj = galsim.Convolve(gal.withFlux(conditions.counts(mag, band)), psf)
            offset = (PEAKS[k, 0] - (SHAPE[1] - 1) / 2, PEAKS[k, 1] - (SHAPE[0] - 1) / 2)
            truth[k, b] = obj.drawImage(nx=SHAPE[1], ny=SHAPE[0], scale=SCALE, offset=offset).array
    variance = np.broadcast_to(conditions.sky_levels[:, None, None], (len(bands), *SHAPE))
    variance = variance.astype(np.float32).copy()
    rng = np.random.default_rng(14)
    image = truth.sum(axis=0) + rng.normal(size=variance.shape) * np.sqrt(variance)
    return image.astype(np.float32), variance, truth


class ZoomConfigTestCase(lsst.utils.tests.TestCase):
    """maxZoom and zoomOutsideThreshold: defaults, validation, MapSettings."""

    def test_defaults_are_off(self):
        config = MadnessDeblendConfig()
        config.validate()
        settings = config.makeMapSettings()
        self.assertEqual(config.maxZoom, 1)
        self.assertEqual((settings.max_zoom, settings.zoom_outside_threshold), (1, 0.03))

    def test_passed_to_map_settings(self):
        config = MadnessDeblendConfig()
        config.maxZoom = 3
        config.zoomOutsideThreshold = 0.1
        config.zoomChoice = "fit"
        config.zoomEdgeThreshold = 0.03
        config.validate()
        settings = config.makeMapSettings()
        self.assertEqual((settings.max_zoom, settings.zoom_outside_threshold), (3, 0.1))
        self.assertEqual((settings.zoom_choice, settings.zoom_edge_threshold), ("fit", 0.03))

    def test_validation(self):
        for name, value in [("maxZoom", 0), ("maxZoom", 5), ("zoomOutsideThreshold", 0.0),
                            ("zoomOutsideThreshold", 1.0), ("zoomEdgeThreshold", 0.0),
                            ("zoomEdgeThreshold", 1.0), ("zoomChoice", "always")]:
            config = MadnessDeblendConfig()
            with self.assertRaises(pexConfig.FieldValidationError, msg=(name, value)) as cm:
                setattr(config, name, value)  # a ChoiceField refuses a value here, the rest in validate()
                config.validate()
            self.assertIn(name, str(cm.exception))
        config = MadnessDeblendConfig()
        config.maxZoom = 2
        config.fitPositionOffsets = True
        with self.assertRaisesRegex(pexConfig.FieldValidationError, "fitPositionOffsets"):
            config.validate()


class ZoomPlanTestCase(lsst.utils.tests.TestCase):
    """plan_blend grows the fit region and the neighbour search to the zoomed windows."""

    # Tract frame: a coadd of 400 x 400 pixels at (y, x) = (1000, 2000).
    BBOX = (1000, 2000, 1400, 2400)

    @staticmethod
    def _parent(peaks_xy):
        """A parent with an 11 x 11 footprint around its first peak, and peaks ``peaks_xy``."""
        x, y = peaks_xy[0]
        mask = np.ones((11, 11), bool)
        return ParentFootprint(1, Footprint.from_mask(mask, (y - 3, x - 3)),
                               np.arange(7, 7 + len(peaks_xy)), np.asarray(peaks_xy))

    def setUp(self):
        self.parent = self._parent([[2198, 1198], [2202, 1204]])
        # Peaks of other parents: one 18 px from the nearest own peak, one 56 px.
        self.others = np.array([[2220, 1200], [2258, 1200]])

    def test_default_is_the_stamp_union(self):
        plan = plan_blend(self.parent, self.BBOX, stamp_size=STAMP, other_peaks_xy=self.others,
                          max_neighbours=5)
        same = plan_blend(self.parent, self.BBOX, stamp_size=STAMP, other_peaks_xy=self.others,
                          max_neighbours=5, max_zoom=1)
        self.assertEqual(plan.region, same.region)
        self.assertEqual(plan.neighbours_xy.tolist(), [[2220, 1200]])
        # The 45-px stamps of the peaks and of the near neighbour.
        self.assertEqual(plan.region, (1198 - 22, 2198 - 22, 1204 + 23, 2220 + 23))

    def test_zoomed_windows(self):
        plan = plan_blend(self.parent, self.BBOX, stamp_size=STAMP, other_peaks_xy=self.others,
                          max_neighbours=5, max_zoom=3)
        # Both neighbours are inside a 139-px window; the region is the union of the windows
        # around the peaks and the neighbours.
        self.assertEqual(plan.neighbours_xy.tolist(), [[2220, 1200], [2258, 1200]])
        self.assertEqual(plan.region, (1198 - 69, 2198 - 69, 1204 + 70, 2258 + 70))
        # Near the coadd's corner the windows are clipped to it.
        corner = plan_blend(self._parent([[2010, 1010]]), self.BBOX, stamp_size=STAMP, max_zoom=3)
        self.assertEqual(corner.region, (1000, 2000, 1010 + 70, 2010 + 70))


    def test_with_zoom_cuts_the_region_to_each_window(self):
        plan = plan_blend(self.parent, self.BBOX, stamp_size=STAMP, other_peaks_xy=self.others,
                          max_neighbours=5, max_zoom=3)
        # All at zoom 1: the union of the four sources' 45-px stamps.
        flat = with_zoom(plan, [1, 1, 1, 1], self.BBOX, stamp_size=STAMP)
        self.assertEqual(flat.zoom.tolist(), [1, 1, 1, 1])
        self.assertEqual(flat.region, (1198 - 22, 2198 - 22, 1204 + 23, 2258 + 23))
        self.assertEqual(flat.neighbours_xy.tolist(), plan.neighbours_xy.tolist())
        # The first peak at zoom 3: its 139-px window, the others' stamps.
        big = with_zoom(plan, [3, 1, 1, 1], self.BBOX, stamp_size=STAMP)
        self.assertEqual(big.region, (1198 - 69, 2198 - 69, 1198 + 70, 2258 + 23))
        # The near neighbour (2220, 1200) at zoom 2: its 93-px window.
        self.assertEqual(with_zoom(plan, [1, 1, 2, 1], self.BBOX, stamp_size=STAMP).region,
                         (1200 - 46, 2220 - 46, 1200 + 47, 2258 + 23))
        with self.assertRaises(ValueError):
            with_zoom(plan, [1, 1], self.BBOX, stamp_size=STAMP)
        # The engine gets the zooms: it does not choose again.
        self.assertNotIn("zoom", plan.engine_input(_FakeCoadd(self.BBOX)))
        self.assertEqual(big.engine_input(_FakeCoadd(self.BBOX))["zoom"].tolist(), [3, 1, 1, 1])


class _FakeCoadd:
    """The attributes of `MultibandCoadd` that `BlendPlan.engine_input` reads."""

    def __init__(self, bbox):
        y0, x0, y1, x1 = bbox
        self.yx0 = (y0, x0)
        self.image = self.variance = np.zeros((1, y1 - y0, x1 - x0), np.float32)
        self.bad = np.zeros((1, y1 - y0, x1 - x0), bool)


def _runTask(coadds, detections, spans, deblender, maxZoom, precision, **overrides):
    config = MadnessDeblendConfig()
    config.maxZoom = maxZoom
    config.precision = precision
    # The zoom under test: without envelopes (the task's default), which would fit the disc's
    # light beyond its stamp at maxZoom 1 (tests/test_task_envelope.py), and without PSF wings,
    # which reach beyond it too (tests/test_task_wings.py).
    config.fitEnvelopes = False
    config.psfWings = False
    for name, value in overrides.items():
        setattr(config, name, value)
    task = MadnessDeblendTask(config=config)
    return task.run(coadds=coadds, detections=detections, detectionSpans=spans, deblender=deblender), task


class LargeGalaxyTaskTestCase(lsst.utils.tests.TestCase):
    """A disc bigger than the stamp, deblended by the task at maxZoom 1 and 3."""

    @classmethod
    def setUpClass(cls):
        cls.image, cls.variance, cls.truth = _scene()
        cls.deblender = MadnessDeblender.from_bundle(None)
        cls.bands = cls.deblender.bands
        cls.coadds = masked_images(cls.image, cls.variance, bands=cls.bands, yx0=YX0)
        # One parent: the two galaxies' band-summed truth above one sigma of the band-summed
        # noise, so that it reaches well beyond the disc's 45-px stamp (~96% of its light).
        sigma = float(np.sqrt(cls.variance.sum(axis=0)).mean())
        cls.detections, cls.spans = truth_detections(cls.truth, groups=[[0, 1]], peaks=PEAKS.astype(float),
                                                     yx0=YX0, threshold=sigma)
        # bfloat16 steps halve the time on TensorFlow; JAX's CPU convolutions are slow in bfloat16.
        precision = "mixed_bfloat16" if keras.config.backend() == "tensorflow" else "float32"
        cls.results, cls.tasks = {}, {}
        for maxZoom in (1, 3):
            cls.results[maxZoom], cls.tasks[maxZoom] = _runTask(cls.coadds, cls.detections, cls.spans,
                                                                cls.deblender, maxZoom, precision)
        # The same pair with a galaxy of the stamp's size in place of the disc: nothing to zoom.
        image, variance, cls.smallTruth = _scene(large=False)
        coadds = masked_images(image, variance, bands=cls.bands, yx0=YX0)
        detections, spans = truth_detections(cls.smallTruth, groups=[[0, 1]], peaks=PEAKS.astype(float),
                                             yx0=YX0, threshold=sigma)
        cls.smallResults = {maxZoom: _runTask(coadds, detections, spans, cls.deblender, maxZoom, precision)
                            for maxZoom in (1, 3)}

    def _children(self, maxZoom):
        catalog = self.results[maxZoom].deblendedCatalog
        children = catalog[catalog["parent"] != 0]
        self.assertEqual(len(children), 2)
        # Children are in peak order: the disc first (its peak is the first of the parent).
        self.assertEqual(int(children["deblend_peak_center_x"][0]), YX0[1] + PEAKS[0, 0])
        return children

    def _fluxError(self, children, k, column="deblend_flux_r"):
        r = self.bands.index("r")
        return abs(float(children[column][k]) / self.truth[k, r].sum() - 1)

    def test_fixture_overflows_the_stamp(self):
        """The disc has more than 10% of its r light outside its 45-px stamp; the parent holds it."""
        r = self.bands.index("r")
        x, y = PEAKS[0]
        inside = self.truth[0, r, y - 22 : y + 23, x - 22 : x + 23].sum()
        self.assertLess(inside / self.truth[0, r].sum(), 0.9)
        parent = footprints_from_table(self.spans)[int(self.detections["id"][0])]
        y0, x0, y1, x1 = parent.bbox
        self.assertTrue(y0 < YX0[0] + y - 22 and x0 < YX0[1] + x - 22)
        self.assertTrue(y1 > YX0[0] + y + 23 and x1 > YX0[1] + x + 23)

    def test_default_is_not_zoomed(self):
        """maxZoom=1: every child at zoom 1, not extended; the cut-off disc is flagged truncated."""
        children = self._children(1)
        self.assertEqual(children["deblend_zoom"].tolist(), [1, 1])
        self.assertEqual(children["deblend_extended"].tolist(), [False, False])
        self.assertEqual(children["deblend_truncated"].tolist(), [True, False])
        catalog = self.results[1].deblendedCatalog
        self.assertEqual(catalog[catalog["parent"] == 0]["deblend_zoom"].tolist(), [0])

    def test_big_galaxy_zoomed(self):
        """maxZoom=3: the disc is drawn zoomed and no longer truncated; its neighbour stays at zoom 1."""
        children = self._children(3)
        self.assertGreater(int(children["deblend_zoom"][0]), 1)
        self.assertLessEqual(int(children["deblend_zoom"][0]), 3)
        self.assertTrue(children["deblend_extended"][0])
        self.assertFalse(children["deblend_truncated"][0])
        self.assertEqual(int(children["deblend_zoom"][1]), 1)
        self.assertFalse(children["deblend_extended"][1])
        # The fit region was grown to hold the zoomed window, which lies inside the coadd: the
        # disc's model is not cropped (with the default 45-px stamp union it would be).
        self.assertEqual(children["deblend_edge"].tolist(), [False, False])

    def test_zoom_chosen_before_the_fit(self):
        """The task chose the disc's zoom on the wide region and fitted the sources' windows."""
        self.assertEqual(self.tasks[3].metadata["n_zoomed_blends"], 1)
        self.assertNotIn("n_zoomed_blends", self.tasks[1].metadata)

    def test_nothing_to_zoom_fits_as_without_zoom(self):
        """Without a galaxy bigger than the stamp, maxZoom=3 gives the children of maxZoom=1: same
        region, neighbours, zooms and fluxes (the zoom choice is the only extra work)."""
        (plain, _), (zoomed, task) = self.smallResults[1], self.smallResults[3]
        self.assertEqual(task.metadata["n_zoomed_blends"], 0)
        a, b = plain.deblendedCatalog, zoomed.deblendedCatalog
        self.assertEqual(len(a), 3)
        self.assertEqual(b["deblend_zoom"].tolist(), a["deblend_zoom"].tolist())
        for column in ("deblend_flux_r", "deblend_modelFlux_r", "deblend_iterations", "footprint_area",
                       "deblend_nNeighbors"):
            np.testing.assert_allclose(np.asarray(b[column], float), np.asarray(a[column], float), rtol=1e-6,
                                       err_msg=column)

    def test_child_footprint_beyond_the_stamp(self):
        """The zoomed disc's child reaches beyond the 45 x 45 stamp around its peak (at maxZoom=1 it
        cannot), and every child stays inside its parent."""
        parents = footprints_from_table(self.spans)
        for maxZoom in (1, 3):
            children = self._children(maxZoom)
            heavy = heavy_footprints_from_table(self.results[maxZoom].deblendedFlux[self.bands.index("r")])
            disc = children[0]
            px, py = int(disc["deblend_peak_center_x"]), int(disc["deblend_peak_center_y"])
            x0, y0 = int(disc["bbox_x0"]), int(disc["bbox_y0"])
            x1, y1 = x0 + int(disc["bbox_width"]), y0 + int(disc["bbox_height"])
            # The stamp around the peak covers [p - 22, p + 23) on each axis.
            half = STAMP // 2
            beyond = min(x0 - px, y0 - py) < -half or max(x1 - px, y1 - py) > half + 1
            self.assertEqual(beyond, maxZoom > 1, (maxZoom, x0, y0, x1, y1))
            for child in children:
                fp, values = heavy[int(child["id"])]
                ys, xs = fp.pixels()
                self.assertTrue(parents[int(child["parent"])].contains(ys, xs).all())
                self.assertTrue(fp.contains(int(child["deblend_peak_center_y"]),
                                            int(child["deblend_peak_center_x"]))[0])
                self.assertEqual(fp.area, int(child["footprint_area"]))
                self.assertEqual(values.shape, (fp.area,))
        # The zoomed disc's footprint holds more pixels than any 45 x 45 stamp.
        self.assertGreater(int(self._children(3)["footprint_area"][0]), STAMP * STAMP)

    def test_zoom_lowers_the_flux_error(self):
        """The disc's r flux (heavy footprint and model) is closer to GalSim's with maxZoom=3."""
        plain, zoomed = self._children(1), self._children(3)
        for column in ("deblend_flux_r", "deblend_modelFlux_r"):
            errPlain = self._fluxError(plain, 0, column)
            errZoom = self._fluxError(zoomed, 0, column)
            # Measured (packaged cpu3-a model, mixed_bfloat16): flux 0.167 -> 0.054, model flux
            # 0.284 -> 0.103; the cut at zoom 1 is ~16% of the disc's light.
            self.assertLess(errZoom, 0.6 * errPlain, (column, errZoom, errPlain))
        self.assertLess(self._fluxError(zoomed, 0), 0.1)


class LargeGalaxyResidualPeaksTestCase(lsst.utils.tests.TestCase):
    """Residual peaks (on by default) must not split the disc: its wings beyond the stamp
    (maxZoom=1) or its coarse zoomed profile (maxZoom=3) are its own light, not galaxies the
    detection missed. LargeGalaxyTaskTestCase's runs have the defaults; one more run here has
    the guard off."""

    @classmethod
    def setUpClass(cls):
        image, variance, truth = _scene()
        cls.deblender = MadnessDeblender.from_bundle(None)
        coadds = masked_images(image, variance, bands=cls.deblender.bands, yx0=YX0)
        sigma = float(np.sqrt(variance.sum(axis=0)).mean())
        detections, spans = truth_detections(truth, groups=[[0, 1]], peaks=PEAKS.astype(float), yx0=YX0,
                                             threshold=sigma)
        precision = "mixed_bfloat16" if keras.config.backend() == "tensorflow" else "float32"
        # Both guards off: the large-source mask, and the ring test (which alone drops the disc's
        # wing bumps too, with cpu9-a; with cpu6-a one of them is kept).
        cls.unguarded = _runTask(coadds, detections, spans, cls.deblender, 1, precision,
                                 residualPeakSkipLarge=False, residualPeakRing=None)[0].deblendedCatalog
        cls.defaults = LargeGalaxyTaskTestCase
        if not hasattr(cls.defaults, "results"):
            cls.defaults.setUpClass()

    def test_no_residual_children_in_the_disc(self):
        config = MadnessDeblendConfig()
        self.assertTrue(config.doResidualPeaks and config.residualPeakSkipLarge)
        for maxZoom in (1, 3):
            catalog = self.defaults.results[maxZoom].deblendedCatalog
            children = catalog[catalog["parent"] != 0]
            parent = catalog[catalog["parent"] == 0]
            self.assertEqual(len(children), 2, maxZoom)
            self.assertFalse(children["deblend_residualPeak"].any(), maxZoom)
            # The disc is truncated (maxZoom=1) or zoomed (maxZoom=3): the search was limited.
            self.assertTrue(parent["deblend_residualPeaksLimited"][0], maxZoom)
            self.assertEqual(int(parent["deblend_nResidualPeaks"][0]), 0)

    def test_without_the_guard_the_disc_is_split(self):
        """The guards are what keep them out: without them the truncated disc's wings read as sources
        (measured: 2 residual children 25-27 px from its centre, at its stamp's corners and beyond)."""
        children = self.unguarded[self.unguarded["parent"] != 0]
        self.assertGreater(int(children["deblend_residualPeak"].sum()), 0)
        self.assertFalse(self.unguarded[self.unguarded["parent"] == 0]["deblend_residualPeaksLimited"][0])


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
