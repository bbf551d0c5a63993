"""MadnessMeasurementTask: Kron-aperture fluxes and HSM shapes on known GalSim galaxies."""

import unittest

import galsim
import lsst.utils.tests
import numpy as np
from lsst.meas.madness.tasks import (
    Footprint,
    MadnessMeasurementConfig,
    MadnessMeasurementTask,
    deblend_columns,
    heavy_footprints_to_table,
    make_table,
)
from lsst.pipe.base.testUtils import assertValidOutput
from task_utils import masked_images
from utils import MadnessTestCase
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

BANDS = ("g", "r", "i")
YX0 = (500, 700)
SHAPE = (80, 120)
# (x, y) local, flux in r, Gaussian sigma (pixels), shear g1
GALAXIES = [((30, 40), 2e4, 2.0, 0.2), ((85, 35), 8e3, 3.0, -0.1)]
SED = np.array([0.6, 1.0, 1.3])
VARIANCE = 4.0


class MeasurementTestCase(MadnessTestCase):
    @classmethod
    def setUpClass(cls):
        rng = np.random.default_rng(11)
        truth = np.zeros((len(GALAXIES), len(BANDS), *SHAPE))
        for k, ((x, y), flux, sigma, g1) in enumerate(GALAXIES):
            gal = galsim.Gaussian(sigma=sigma, flux=1.0).shear(g1=g1, g2=0.0)
            stamp = gal.drawImage(
                nx=SHAPE[1], ny=SHAPE[0], scale=1.0, offset=(x - (SHAPE[1] - 1) / 2, y - (SHAPE[0] - 1) / 2)
            ).array
            truth[k] = flux * SED[:, None, None] * stamp[None]
        noise = rng.normal(scale=np.sqrt(VARIANCE), size=(len(BANDS), *SHAPE))
        image = (truth.sum(0) + noise).astype(np.float32)
        variance = np.full(image.shape, VARIANCE, np.float32)
        cls.truth = truth
        cls.coadds = masked_images(image, variance, bands=BANDS, yx0=YX0)
        catalog = make_table(deblend_columns(BANDS, 16), len(GALAXIES) + 1)
        catalog["id"] = [1, 2, 3]
        footprints, values = {}, {b: {} for b in BANDS}
        for k, ((x, y), *_rest) in enumerate(GALAXIES):
            mask = np.zeros(SHAPE, bool)
            mask[y - 14 : y + 15, x - 14 : x + 15] = True
            fp = Footprint.from_mask(mask, YX0)
            footprints[k + 1] = fp
            for b, band in enumerate(BANDS):
                values[band][k + 1] = image[b][mask]
            catalog["deblend_peak_center_x"][k] = x + YX0[1]
            catalog["deblend_peak_center_y"][k] = y + YX0[0]
        footprints[3] = Footprint(np.zeros((0, 3), np.int64))  # an empty footprint
        for band in BANDS:
            values[band][3] = np.zeros(0, np.float32)
        cls.flux = {band: heavy_footprints_to_table(footprints, values[band], band=band) for band in BANDS}
        cls.task = MadnessMeasurementTask(config=MadnessMeasurementConfig())
        cls.result = cls.task.run(coadds=cls.coadds, deblendedCatalog=catalog, deblendedFlux=cls.flux)
        cls.objects = cls.result.objectTable

    def test_fluxes_and_errors(self):
        for k, ((x, y), flux, sigma, g1) in enumerate(GALAXIES):
            row = self.objects[k]
            self.assertAlmostEqual(row["x"], x + YX0[1], delta=0.3)
            self.assertAlmostEqual(row["y"], y + YX0[0], delta=0.3)
            for b, band in enumerate(BANDS):
                true = flux * SED[b]
                self.assertLess(abs(row[f"{band}_apFlux"] - true), 0.03 * true + 4 * row[f"{band}_apFluxErr"])
                self.assertGreater(row[f"{band}_apFluxErr"], 0)
                self.assertFalse(row[f"{band}_apFlux_flag"])

    def test_hsm_shapes(self):
        for k, ((x, y), flux, sigma, g1) in enumerate(GALAXIES):
            row = self.objects[k]
            for band in BANDS:
                self.assertFalse(row[f"{band}_hsm_flag"])
                self.assertAlmostEqual(row[f"{band}_hsm_g1"], g1, delta=0.05)
                self.assertAlmostEqual(row[f"{band}_hsm_g2"], 0.0, delta=0.05)
                self.assertAlmostEqual(row[f"{band}_hsm_sigma"], sigma, delta=0.3)

    def test_empty_footprint_flagged(self):
        row = self.objects[2]
        self.assertTrue(row["centroid_flag"])
        self.assertTrue(np.isnan(row["r_apFlux"]))
        self.assertEqual(self.task.metadata["n_sources"], 3)

    def test_valid_output(self):
        assertValidOutput(self.task, self.result)
        self.assertEqual(self.objects["id"].tolist(), [1, 2, 3])
        self.assertTrue(self.objects["detect_isPrimary"].all())


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
