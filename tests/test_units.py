"""Photometric units: the model's flux unit per band, conversions, and the tasks' use of them.

The known answers: SurveyCodex's own magnitude-to-electrons (``mag2counts``, what BTK draws
galaxies with) with astropy's AB magnitudes for the factor; and, for the task, the same patch
given once in electrons and once in nJy, whose children must agree after dividing by the factor.
"""

import copy
import dataclasses
import json
import unittest

import astropy.units as u
import lsst.pex.config as pexConfig
import lsst.utils.tests
import numpy as np
from lsst.meas.madness import MadnessUnitError, MadnessValueError
from lsst.meas.madness.io.bundle import METADATA_FILE, default_bundle_path
from lsst.meas.madness.simulation.conditions import LsstConditions
from lsst.meas.madness.units import AB_NANOJANSKY_MAG, ModelUnits, electrons_per_nanojansky, resolve_unit
from task_utils import BANDS, deblender, masked_images, run_config, scene, truth_detections
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

LSST_CONDITIONS = LsstConditions.from_surveycodex(bands=BANDS).as_dict()


def _units() -> ModelUnits:
    return ModelUnits.from_conditions(LSST_CONDITIONS, BANDS)


class FactorTestCase(lsst.utils.tests.TestCase):
    """electrons per nJy against SurveyCodex's mag2counts and astropy's AB magnitudes."""

    def test_against_surveycodex_mag2counts(self):
        from surveycodex.utilities import mag2counts

        units = _units()
        for magnitude in (15.0, 18.0):
            # astropy's AB system, independent of the 31.4 in the module.
            njy = (magnitude * u.ABmag).to_value(u.nJy)
            for b, band in enumerate(BANDS):
                expected = mag2counts(magnitude, "LSST", band).to_value(u.electron)  # truncated to int
                ours = njy * units.electrons_per_nanojansky[b]
                self.assertGreater(expected, 1e6)
                self.assertLess(abs(ours - expected), 1.0 + 1e-9 * expected, msg=band)

    def test_r_band_by_hand(self):
        # SurveyCodex LSST r: zero point 28.13 mag (1 e-/s), 5520 s over ten years.
        self.assertAlmostEqual(float(electrons_per_nanojansky(28.13, 5520.0)),
                               5520.0 * 10 ** (0.4 * (28.13 - 31.4)), places=9)
        self.assertAlmostEqual((1 * u.nJy).to_value(u.ABmag), AB_NANOJANSKY_MAG, places=10)
        # afw PhotoCalib's reference flux: 1e23 * 10**(48.6 / -2.5) Jy is AB 0.
        self.assertAlmostEqual(2.5 * np.log10(1e23 * 10 ** (48.6 / -2.5) * 1e9), AB_NANOJANSKY_MAG, places=10)

    def test_packaged_bundle(self):
        path = default_bundle_path() / METADATA_FILE
        if not path.is_file():
            self.skipTest("the packaged default bundle is not installed")
        meta = json.loads(path.read_text())["metadata"]
        units = ModelUnits.from_conditions(meta["conditions"], meta["bands"])
        np.testing.assert_allclose(units.electrons_per_nanojansky, _units().electrons_per_nanojansky,
                                   rtol=1e-12)
        self.assertEqual(units.gain, 1.0)

    def test_scale_per_unit(self):
        units = _units()
        k = units.electrons_per_nanojansky
        np.testing.assert_allclose(units.scale("nJy"), k, rtol=1e-12)
        np.testing.assert_allclose(units.scale(u.Jy), 1e9 * k, rtol=1e-12)
        np.testing.assert_allclose(units.scale(u.erg / u.s / u.cm**2 / u.Hz), 1e32 * k, rtol=1e-9)
        np.testing.assert_array_equal(units.scale("electron"), np.ones(6))
        np.testing.assert_array_equal(units.scale("ct"), np.ones(6))
        gained = dataclasses.replace(units, gain=2.5)
        np.testing.assert_array_equal(gained.scale("adu"), np.full(6, 2.5))
        np.testing.assert_allclose(units.scale("nJy", ["r", "u"]), k[[2, 0]], rtol=1e-12)

    def test_round_trip(self):
        units = _units()
        rng = np.random.default_rng(1)
        image = rng.normal(size=(6, 5, 7)).astype(np.float32)
        variance = rng.uniform(1, 2, size=(6, 5, 7)).astype(np.float32)
        k = units.electrons_per_nanojansky[:, None, None]
        mi, mv = units.to_model(image, variance, "nJy")
        np.testing.assert_allclose(mi, image * k, rtol=1e-6)
        np.testing.assert_allclose(mv, variance * k**2, rtol=1e-6)
        np.testing.assert_allclose(units.from_model(mi, "nJy"), image, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(units.from_model(mv, "nJy", variance=True), variance, rtol=1e-6)
        self.assertEqual(units.from_model(mi, "nJy").dtype, np.float32)


class ErrorTestCase(lsst.utils.tests.TestCase):
    """Unknown units and bands, and bundles without conditions: clear errors, never a pass."""

    def test_unknown_units(self):
        units = _units()
        for unit in ("electron / s", "mag", "", None, "not-a-unit", u.dimensionless_unscaled, "nJy / s"):
            with self.assertRaises(MadnessUnitError, msg=repr(unit)) as cm:
                units.scale(unit)
            self.assertIsInstance(cm.exception, MadnessValueError)

    def test_unknown_band(self):
        with self.assertRaisesRegex(MadnessUnitError, r"band\(s\) \['w'\]"):
            _units().scale("nJy", ["r", "w"])

    def test_bundle_without_conditions(self):
        with self.assertRaisesRegex(MadnessUnitError, "records no photometric conditions"):
            ModelUnits.from_conditions({}, BANDS)
        with self.assertRaisesRegex(MadnessUnitError, "no bundle metadata"):
            ModelUnits.from_metadata(None)
        partial = copy.deepcopy(LSST_CONDITIONS)
        del partial["bands"]["y"]
        with self.assertRaisesRegex(MadnessUnitError, r"no calibration for band\(s\) \['y'\]"):
            ModelUnits.from_conditions(partial, BANDS)
        broken = copy.deepcopy(LSST_CONDITIONS)
        del broken["bands"]["g"]["exposure_time_s"]
        with self.assertRaisesRegex(MadnessUnitError, "band 'g'"):
            ModelUnits.from_conditions(broken, BANDS)

    def test_resolve_unit(self):
        self.assertEqual(resolve_unit("nJy"), u.nJy)
        self.assertEqual(resolve_unit(None, "nJy"), u.nJy)
        self.assertEqual(resolve_unit(u.nJy, "nJy"), u.nJy)
        with self.assertRaisesRegex(MadnessUnitError, "carry no unit"):
            resolve_unit(None, None)
        with self.assertRaisesRegex(MadnessUnitError, "inconsistent"):
            resolve_unit("nJy", "electron")


class _FakePhotoCalib:
    """The two members of afw's ``PhotoCalib`` that `photocalib_scales` reads."""

    def __init__(self, mean, constant=True):
        self._mean = mean
        self._isConstant = constant

    def getCalibrationMean(self):
        return self._mean


class PhotoCalibTestCase(lsst.utils.tests.TestCase):
    """The afw path's factor, from each band's PhotoCalib (no afw needed for this part)."""

    def test_scales(self):
        from lsst.meas.madness.tasks.afw.conventions import photocalib_scales

        units = _units()
        k = units.electrons_per_nanojansky
        # Rubin coadds: pixels in nJy, calibration mean 1; a coadd in counts of 0.5 nJy each.
        calibs = {b: _FakePhotoCalib(1.0) for b in BANDS}
        np.testing.assert_allclose(photocalib_scales(calibs, BANDS, units), k, rtol=1e-12)
        calibs["g"] = _FakePhotoCalib(0.5)
        np.testing.assert_allclose(photocalib_scales(calibs, BANDS, units)[1], 0.5 * k[1], rtol=1e-12)
        calibs["g"] = None
        with self.assertRaisesRegex(MadnessUnitError, "no PhotoCalib"):
            photocalib_scales(calibs, BANDS, units)
        np.testing.assert_allclose(photocalib_scales(calibs, BANDS, units, "nJy"), k, rtol=1e-12)
        calibs["g"] = _FakePhotoCalib(1.0, constant=False)
        with self.assertRaisesRegex(MadnessUnitError, "varies across the image"):
            photocalib_scales(calibs, BANDS, units)
        calibs["g"] = _FakePhotoCalib(float("nan"))
        with self.assertRaisesRegex(MadnessUnitError, "calibration mean"):
            photocalib_scales(calibs, BANDS, units)


class TaskUnitsTestCase(lsst.utils.tests.TestCase):
    """MadnessDeblendTask on the same patch in electrons and in nJy."""

    @classmethod
    def setUpClass(cls):
        from lsst.meas.madness.tasks import MadnessDeblendTask

        cls.image, cls.variance, truth = scene()
        cls.detections, cls.spans = truth_detections(truth)
        cls.k = ModelUnits.from_deblender(deblender()).electrons_per_nanojansky
        cls.task = MadnessDeblendTask(config=run_config())
        kb = cls.k[:, None, None]
        cls.njy = (cls.image / kb).astype(np.float32), (cls.variance / kb**2).astype(np.float32)
        cls.out_e = cls._run(masked_images(cls.image, cls.variance, unit="electron"))
        cls.out_n = cls._run(masked_images(*cls.njy, unit="nJy"))

    @classmethod
    def _run(cls, coadds, task=None, dbl=None):
        return (task or cls.task).run(coadds=coadds, detections=cls.detections, detectionSpans=cls.spans,
                                      deblender=dbl or deblender())

    def test_same_children_in_nanojansky(self):
        cat_e, cat_n = self.out_e.deblendedCatalog, self.out_n.deblendedCatalog
        children = np.asarray(cat_e["parent"]) != 0
        self.assertGreaterEqual(int(children.sum()), 6)
        np.testing.assert_array_equal(cat_e["id"], cat_n["id"])
        np.testing.assert_array_equal(cat_e["parent"], cat_n["parent"])
        np.testing.assert_array_equal(cat_e["footprint_area"], cat_n["footprint_area"])
        np.testing.assert_allclose(cat_n["deblend_latents"], cat_e["deblend_latents"], rtol=1e-3, atol=1e-3)
        for b, band in enumerate(BANDS):
            for name in (f"deblend_flux_{band}", f"deblend_modelFlux_{band}"):
                np.testing.assert_allclose(np.asarray(cat_n[name]), np.asarray(cat_e[name]) / self.k[b],
                                           rtol=2e-4, atol=1e-6 * np.nanmax(np.abs(cat_e[name])) / self.k[b],
                                           err_msg=name)
            self.assertEqual(cat_n[f"deblend_flux_{band}"].unit, u.nJy)
            self.assertEqual(cat_e[f"deblend_flux_{band}"].unit, u.electron)
            np.testing.assert_allclose(cat_n[f"deblend_chi2_{band}"], cat_e[f"deblend_chi2_{band}"],
                                       rtol=1e-3)
        self.assertEqual(cat_n.meta["unit"], "nJy")

    def test_heavy_footprints_in_nanojansky(self):
        for b, (flux_e, flux_n) in enumerate(zip(self.out_e.deblendedFlux, self.out_n.deblendedFlux)):
            np.testing.assert_array_equal(flux_e["id"], flux_n["id"])
            np.testing.assert_array_equal(flux_e["x"], flux_n["x"])
            e = np.asarray(flux_e["flux"], np.float64) / self.k[b]
            n = np.asarray(flux_n["flux"], np.float64)
            good = np.isfinite(e)
            np.testing.assert_array_equal(good, np.isfinite(n))
            scale = np.abs(e[good]).max()
            np.testing.assert_allclose(n[good], e[good], rtol=2e-4, atol=1e-5 * scale)
            self.assertEqual(flux_n["flux"].unit, u.nJy)
        # Parents carry the observed pixels: exactly the nJy coadd's, up to float rounding.
        catalog = self.out_n.deblendedCatalog
        parents = np.asarray(catalog["id"])[np.asarray(catalog["parent"]) == 0]
        table = self.out_n.deblendedFlux[2]
        rows = np.isin(np.asarray(table["id"]), parents)
        y = np.asarray(table["y"])[rows] - 1000
        x = np.asarray(table["x"])[rows] - 2000
        np.testing.assert_allclose(np.asarray(table["flux"])[rows], self.njy[0][2][y, x],
                                   rtol=1e-6, atol=1e-9)

    def test_unitless_coadds(self):
        from lsst.meas.madness.tasks import MadnessDeblendTask

        coadds = masked_images(*self.njy, unit=None)
        with self.assertRaisesRegex(MadnessUnitError, "carry no unit and no input unit is configured"):
            self._run(coadds)
        out = self._run(coadds, task=MadnessDeblendTask(config=run_config(inputUnit="nJy")))
        for name in ("deblend_flux_r", "deblend_latents"):
            np.testing.assert_array_equal(out.deblendedCatalog[name], self.out_n.deblendedCatalog[name])
        with self.assertRaisesRegex(MadnessUnitError, "inconsistent"):
            self._run(masked_images(self.image, self.variance, unit="electron"),
                      task=MadnessDeblendTask(config=run_config(inputUnit="nJy")))

    def test_bad_units(self):
        with self.assertRaisesRegex(MadnessUnitError, "Cannot convert images in electron / s"):
            self._run(masked_images(self.image, self.variance, unit="electron / s"))
        mixed = masked_images(self.image, self.variance, unit="electron")
        mixed["g"] = masked_images(*self.njy, unit="nJy")["g"]
        with self.assertRaisesRegex(MadnessUnitError, "units differ between bands"):
            self._run(mixed)
        config = run_config(inputUnit="bogus-unit")
        with self.assertRaises(pexConfig.FieldValidationError):
            config.validate()

    def test_bundle_without_band_conditions(self):
        dbl = copy.copy(deblender())
        conditions = copy.deepcopy(dict(dbl.metadata.conditions))
        del conditions["bands"]["y"]
        dbl.metadata = dataclasses.replace(dbl.metadata, conditions=conditions)
        with self.assertRaisesRegex(MadnessUnitError, r"no calibration for band\(s\) \['y'\]"):
            self._run(masked_images(*self.njy, unit="nJy"), dbl=dbl)
        dbl.metadata = dataclasses.replace(dbl.metadata, conditions={})
        with self.assertRaisesRegex(MadnessUnitError, "records no photometric conditions"):
            self._run(masked_images(*self.njy, unit="nJy"), dbl=dbl)


class SimulatedPatchUnitsTestCase(lsst.utils.tests.TestCase):
    """The demo's patch in nJy: every plane and the truth divided by the same factor."""

    def test_to_nanojansky(self):
        from lsst.meas.madness.localrepo import simulate_patch

        patch = simulate_patch(5, size=71, n_galaxies=3)
        njy = patch.to_nanojansky()
        k = _units().electrons_per_nanojansky
        self.assertEqual((patch.unit, njy.unit), ("electron", "nJy"))
        np.testing.assert_allclose(njy.image * k[:, None, None], patch.image, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(njy.variance * k[:, None, None] ** 2, patch.variance, rtol=1e-5)
        np.testing.assert_allclose(njy.truth["flux_r"] * k[2], patch.truth["flux_r"], rtol=1e-12)
        coadd = njy.masked_images()["r"]
        self.assertEqual(coadd.unit, u.nJy)
        with self.assertRaises(MadnessValueError):
            njy.to_nanojansky()


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    # SkyPy's kcorrect templates (the simulated patch's catalogue) stay open for the process.
    ignore_regexps = [r"skypy/data/kcorrect/"]


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
