"""CatSim-format catalogs: schema, BTK compatibility, SkyPy generator calibration and determinism,
the appendix-A SNR, validation errors and train/validation/test splits."""

import importlib.util
import os
import shutil
import tempfile
import time
import unittest

import lsst.utils.tests
import numpy as np
import skypy.galaxies.spectrum  # noqa: F401
from astropy.table import Table
from lsst.meas.madness import MadnessValueError
from lsst.meas.madness.simulation.catalog import (
    CATSIM_BANDS,
    CATSIM_COLUMNS,
    appendix_a_snr,
    apply_snr_cut,
    larger_component_axes,
    read_catsim_catalog,
    split_catalog,
    validate_catsim_table,
)
from lsst.meas.madness.simulation.catalog_targets import measure_catalog_statistics, target
from lsst.meas.madness.simulation.conditions import LsstConditions
from lsst.meas.madness.simulation.skypy_catalog import SkyPyCatalogParameters, generate_catsim_catalog
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

# SkyPy memory-maps its kcorrect templates when skypy.galaxies.spectrum is imported and keeps
# the file open for the life of the process; importing it above, before lsst.utils.tests.init(),
# keeps MemoryTestCase from counting that file as a leak.

# 0.01 deg^2 holds ~8.6k galaxies to r = 28: Poisson scatter of the counts ~1%, far inside the
# 10% tolerance of the targets, so the count tests are not flaky for any seed.
COUNT_AREA = 0.01


def _btk_catsim_catalog_class():
    """BTK's CatsimCatalog; loaded from its file if ``import btk`` fails on an unrelated dependency.

    ``btk/__init__`` imports scikit-image, which needs ``lazy_loader``; catalog.py itself only
    needs astropy, galsim and numpy, so the class under test is BTK's own code either way.
    """
    try:
        from btk.catalog import CatsimCatalog

        return CatsimCatalog
    except ImportError:
        spec = importlib.util.find_spec("btk")
        if spec is None or not spec.submodule_search_locations:
            raise unittest.SkipTest("blending-toolkit is not installed")
        path = os.path.join(list(spec.submodule_search_locations)[0], "catalog.py")
        module_spec = importlib.util.spec_from_file_location("_btk_catalog_under_test", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.CatsimCatalog


def _row(**overrides):
    """One valid CatSim-format row (disk-dominated galaxy) as a Table."""
    values = {"galtileid": 7, "ra": 0.01, "dec": -0.02, "redshift": 0.8, "fluxnorm_bulge": 0.2,
              "fluxnorm_disk": 0.8, "fluxnorm_agn": 0.0, "a_b": 0.2, "b_b": 0.15, "a_d": 0.6, "b_d": 0.3,
              "pa_bulge": 30.0, "pa_disk": 30.0}
    values.update({f"{b}_ab": 25.0 for b in CATSIM_BANDS})
    values.update(overrides)
    return Table({k: [v] for k, v in values.items()})


class CatalogTestCase(lsst.utils.tests.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.conditions = LsstConditions.from_surveycodex()
        cls.catalog = generate_catsim_catalog(COUNT_AREA, seed=0)
        cls.tmp = tempfile.mkdtemp()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # --- Schema and BTK ---------------------------------------------------------------------
    def test_columns_and_dtypes(self):
        self.assertEqual(self.catalog.colnames, [c.name for c in CATSIM_COLUMNS])
        for column in CATSIM_COLUMNS:
            self.assertEqual(self.catalog[column.name].dtype, np.dtype(column.dtype), column.name)
        self.assertEqual(str(self.catalog["a_d"].unit), "arcsec")
        self.assertEqual(str(self.catalog["ra"].unit), "deg")

    def test_btk_reads_it(self):
        CatsimCatalog = _btk_catsim_catalog_class()
        catalog = CatsimCatalog(self.catalog)
        self.assertEqual(len(catalog.table), len(self.catalog))
        path = os.path.join(self.tmp, "generated.fits")
        self.catalog.write(path, overwrite=True)
        from_file = CatsimCatalog.from_file(path)
        np.testing.assert_array_equal(from_file.table["r_ab"], self.catalog["r_ab"])
        # Every column BTK's CatsimGenerator reads is present (draw_blends.render_single_catsim_galaxy).
        needed = {"ra", "dec", "fluxnorm_bulge", "fluxnorm_disk", "fluxnorm_agn", "a_d", "b_d", "a_b", "b_b",
                  "pa_bulge", "pa_disk"} | {f"{b}_ab" for b in CATSIM_BANDS}
        self.assertTrue(needed <= set(from_file.table.colnames))

    def test_galsim_builds_profiles_as_btk_does(self):
        """BTK's profile construction (hlr = sqrt(ab), q = b/a, shared beta) accepts every row kind."""
        import galsim

        t = self.catalog
        picks = [np.flatnonzero(t["fluxnorm_bulge"] == 0)[0], np.flatnonzero(t["fluxnorm_bulge"] == 1)[0],
                 np.flatnonzero((t["fluxnorm_bulge"] > 0) & (t["fluxnorm_bulge"] < 1))[0]]
        for k in picks:
            e = t[k]
            parts = []
            if e["fluxnorm_disk"] > 0:
                hlr = np.sqrt(e["a_d"] * e["b_d"])
                disk = galsim.Exponential(flux=e["fluxnorm_disk"], half_light_radius=hlr)
                parts.append(disk.shear(q=e["b_d"] / e["a_d"], beta=e["pa_disk"] * galsim.degrees))
            if e["fluxnorm_bulge"] > 0:
                self.assertTrue(e["fluxnorm_disk"] == 0 or e["pa_disk"] == e["pa_bulge"])
                parts.append(galsim.DeVaucouleurs(flux=e["fluxnorm_bulge"],
                                                  half_light_radius=np.sqrt(e["a_b"] * e["b_b"]))
                             .shear(q=e["b_b"] / e["a_b"], beta=e["pa_bulge"] * galsim.degrees))
            psf = galsim.Gaussian(fwhm=0.81)
            image = galsim.Convolve(galsim.Add(parts), psf).drawImage(nx=45, ny=45, scale=0.2)
            self.assertGreater(image.array.sum(), 0.5)

    # --- Ranges and calibration ---------------------------------------------------------------
    def test_ranges(self):
        t = validate_catsim_table(self.catalog)  # the generator's output passes its own reader
        self.assertTrue(np.all(t["r_ab"] <= 28.0))
        self.assertTrue(np.all((t["redshift"] > 0) & (t["redshift"] <= 6.0)))
        np.testing.assert_allclose(t["fluxnorm_bulge"] + t["fluxnorm_disk"] + t["fluxnorm_agn"], 1.0)
        for name in ("a_b", "b_b", "a_d", "b_d"):
            self.assertTrue(np.all(t[name] >= 0), name)
        self.assertTrue(np.all(t["b_d"] <= t["a_d"]) and np.all(t["b_b"] <= t["a_b"]))
        np.testing.assert_array_equal(t["pa_bulge"], t["pa_disk"])
        self.assertTrue(np.all((t["pa_disk"] >= 0) & (t["pa_disk"] < 180)))
        half = np.sqrt(COUNT_AREA) / 2
        self.assertTrue(np.all(np.abs(t["dec"]) <= half + 1e-9))
        ra = np.where(t["ra"] > 180, t["ra"] - 360, t["ra"])
        self.assertTrue(np.all(np.abs(ra) <= half + 1e-9))
        for band in CATSIM_BANDS:
            self.assertTrue(np.all(np.isfinite(t[f"{band}_ab"])), band)

    def test_counts_within_targets(self):
        """Counts per deg^2 to r = 28 and after the SNR cut within the documented 10% tolerance."""
        stats = measure_catalog_statistics(self.catalog, COUNT_AREA, self.conditions)
        for name in ("n_r28_per_deg2", "n_snr10_per_deg2", "snr10_fraction", "n_i25_per_deg2",
                     "median_z_i25.3", "shape_noise_per_component"):
            with self.subTest(name=name):
                self.assertTrue(target(name).passes(stats[name]), f"{name}: {stats[name]} vs {target(name)}")

    # --- Determinism and speed ------------------------------------------------------------------
    def test_determinism_and_global_state(self):
        np.random.seed(1234)
        expected_next = np.random.random()
        np.random.seed(1234)
        start = time.perf_counter()
        a = generate_catsim_catalog(0.002, seed=5)
        elapsed = time.perf_counter() - start
        self.assertEqual(np.random.random(), expected_next)  # SkyPy's global draws did not leak
        b = generate_catsim_catalog(0.002, seed=5)
        c = generate_catsim_catalog(0.002, seed=6)
        self.assertGreater(len(a), 1000)
        self.assertLess(elapsed, 10.0)
        for name in a.colnames:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        self.assertFalse(len(a) == len(c) and np.array_equal(a["r_ab"], c["r_ab"]))

    def test_centre_and_parameter_checks(self):
        t = generate_catsim_catalog(0.001, seed=1, mag_limit_r=25.0, ra_center=150.0, dec_center=2.0)
        self.assertTrue(np.all(np.abs(t["ra"] - 150.0) < 0.05) and np.all(np.abs(t["dec"] - 2.0) < 0.05))
        self.assertTrue(np.all(t["r_ab"] <= 25.0))
        with self.assertRaises(ValueError):
            generate_catsim_catalog(-1.0, seed=0)
        with self.assertRaises(ValueError):
            generate_catsim_catalog(0.001, seed=-3)
        with self.assertRaises(ValueError):
            SkyPyCatalogParameters(blue_ellipticity=(1.5, 3.0))

    # --- SNR ----------------------------------------------------------------------------------------
    def test_snr_against_hand_computation(self):
        import surveycodex

        r_filter = surveycodex.get_survey("LSST").get_filter("r")
        zp = r_filter.zeropoint.value
        exposure = r_filter.full_exposure_time.to_value("s")
        sky_mag = r_filter.sky_brightness.value
        psf = r_filter.psf_fwhm.to_value("arcsec")
        counts = 10 ** (-0.4 * (25.0 - zp)) * exposure
        sky = 10 ** (-0.4 * (sky_mag - zp)) * exposure * 0.2**2
        fwhm_eff = np.sqrt(psf**2 + (2 * np.sqrt(0.6 * 0.3)) ** 2)  # the disk is larger than the bulge
        expected = counts / np.sqrt(counts + sky * 2.266 * (fwhm_eff / 0.2) ** 2)
        snr = appendix_a_snr(_row(r_ab=25.0), self.conditions)
        self.assertFloatsAlmostEqual(snr[0], expected, rtol=1e-10)
        # A zero-flux component never counts as the larger one, however big its catalog size.
        row = _row(fluxnorm_bulge=0.0, fluxnorm_disk=1.0, a_b=3.0, b_b=2.0)
        a, b = larger_component_axes(row)
        self.assertEqual((a[0], b[0]), (0.6, 0.3))
        cut = apply_snr_cut(self.catalog, 10.0, conditions=self.conditions)
        self.assertTrue(np.all(cut["snr_r"] >= 10.0))
        self.assertEqual(len(cut), int(np.sum(appendix_a_snr(self.catalog, self.conditions) >= 10)))

    # --- Reading and validation -----------------------------------------------------------------
    def test_read_round_trip_and_errors(self):
        path = os.path.join(self.tmp, "ok.fits")
        self.catalog[:50].write(path, overwrite=True)
        back = read_catsim_catalog(path)
        np.testing.assert_array_equal(back["a_d"], self.catalog["a_d"][:50])
        self.assertEqual(back.meta["source"], path)

        missing = self.catalog[:5].copy()
        missing.remove_columns(["a_d", "pa_disk"])
        bad_path = os.path.join(self.tmp, "missing.fits")
        missing.write(bad_path, overwrite=True)
        with self.assertRaisesRegex(MadnessValueError, r"missing CatSim column\(s\) \['a_d', 'pa_disk'\]"):
            read_catsim_catalog(bad_path)

        nan = self.catalog[:5].copy()
        nan["redshift"][3] = np.nan
        nan_path = os.path.join(self.tmp, "nan.fits")
        nan.write(nan_path, overwrite=True)
        with self.assertRaisesRegex(MadnessValueError, r"'redshift' has NaN, infinite or masked.*first: 3"):
            read_catsim_catalog(nan_path)

        with self.assertRaisesRegex(ValueError, "'a_d' has values outside"):
            validate_catsim_table(_row(a_d=-0.1))
        with self.assertRaisesRegex(MadnessValueError, "normalize_fluxnorms=True"):
            validate_catsim_table(_row(fluxnorm_bulge=1e-19, fluxnorm_disk=4e-19))
        scaled = validate_catsim_table(_row(fluxnorm_bulge=1e-19, fluxnorm_disk=4e-19),
                                       normalize_fluxnorms=True)
        self.assertFloatsAlmostEqual(scaled["fluxnorm_disk"][0], 0.8, rtol=1e-12)
        with self.assertRaisesRegex(MadnessValueError, "no flux"):
            validate_catsim_table(_row(fluxnorm_bulge=0.0, fluxnorm_disk=0.0))
        with self.assertRaisesRegex(MadnessValueError, "pa_bulge differs"):
            validate_catsim_table(_row(pa_bulge=10.0))
        with self.assertRaisesRegex(MadnessValueError, "zero a_d/b_d"):
            validate_catsim_table(_row(a_d=0.0, b_d=0.0))
        with self.assertRaises(FileNotFoundError):
            read_catsim_catalog(os.path.join(self.tmp, "nope.fits"))

    def test_catsim_text_format(self):
        """CatSim's own text files (absolute fluxnorms, 'id'-less) read with normalize_fluxnorms."""
        path = os.path.join(self.tmp, "catsim.dat")
        row = _row(fluxnorm_bulge=0.0, fluxnorm_disk=5.9757610912e-19, a_b=0.0, b_b=0.0, pa_bulge=0.0)
        row.remove_column("galtileid")
        row.write(path, format="ascii.basic", overwrite=True)
        table = read_catsim_catalog(path, normalize_fluxnorms=True)
        self.assertEqual(table["fluxnorm_disk"][0], 1.0)
        self.assertEqual(table["galtileid"][0], 0)

    # --- Splits ---------------------------------------------------------------------------------------
    def test_split_disjoint_and_deterministic(self):
        table = self.catalog[:1001]
        splits = split_catalog(table, seed=3)
        ids = [set(np.asarray(s["galtileid"])) for s in splits.values()]
        self.assertEqual(sum(len(s) for s in ids), len(table))
        self.assertEqual(set().union(*ids), set(np.asarray(table["galtileid"])))
        for i in range(3):
            for j in range(i + 1, 3):
                self.assertFalse(ids[i] & ids[j])
        self.assertEqual([len(s) for s in splits.values()], [473, 158, 370])
        again = split_catalog(table, seed=3)
        np.testing.assert_array_equal(again["train"]["galtileid"], splits["train"]["galtileid"])
        other = split_catalog(table, seed=4)
        self.assertFalse(np.array_equal(other["train"]["galtileid"], splits["train"]["galtileid"]))
        named = split_catalog(table[:10], {"a": 0.5, "b": 0.5}, seed=0)
        self.assertEqual(sorted(named), ["a", "b"])
        with self.assertRaisesRegex(MadnessValueError, "sum to 1"):
            split_catalog(table, (0.5, 0.4), names=("a", "b"))
        with self.assertRaises(MadnessValueError):
            split_catalog(table, (0.5, 0.5, 0.0), names=("a", "a", "b"))


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
