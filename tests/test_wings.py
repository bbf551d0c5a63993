"""Each source's outer profile: its outskirts and its light beyond its footprint
(`lsst.meas.madness.engine.wings`).

The oracle is GalSim: sources convolved with a Kolmogorov + Airy PSF (the LSST PSF of BTK's
simulations, built here from GalSim's own profiles) and drawn on a large grid. Their light outside
a 45-px footprint is compared with the wings the module paints from the model inside it; a bulge
+ disc galaxy cut beyond 14 px (as the decoder draws it) gets its outskirts back; and in the
deblender, faint galaxies 28-31 px from bright compact ones are measured better once the bright
ones' wings are subtracted with them.
"""

import doctest
import math
import unittest

import galsim
import keras
import lsst.utils.tests
import numpy as np
from lsst.meas.madness import MadnessDeblender
from lsst.meas.madness.engine.geometry import paste_stamps
from lsst.meas.madness.engine import wings as wings_module
from lsst.meas.madness.engine.settings import MapSettings
from lsst.meas.madness.engine.wings import (
    OUTSKIRTS_START,
    check_psf,
    complete_outskirts,
    paint_wings,
    wing_profiles,
    wing_templates,
)
from lsst.meas.madness.errors import MadnessValueError
from lsst.meas.madness.simulation import LsstConditions

SCALE = 0.2
SIDE = 45
# Effective wavelengths of the LSST bands (Angstrom), for the Airy part of the PSF.
WAVELENGTH = {"u": 3670.7, "g": 4826.9, "r": 6223.2, "i": 7546.0, "z": 8691.0, "y": 9712.0}


def _lsst_psf(fwhm: float, band: str) -> galsim.GSObject:
    """Kolmogorov atmosphere of ``fwhm`` arcsec and the Airy pattern of an 8.36 m mirror with
    the LSST's central obscuration, as BTK builds its survey PSF."""
    diameter, area = 8.36, 32.4
    lam_over_diam = 3600 * math.degrees(1e-10 * WAVELENGTH[band] / diameter)
    obscuration = math.sqrt(1 - area / (math.pi * (diameter / 2) ** 2))
    # GalSim's default folding threshold (5e-3) aliases a few per cent of the light beyond
    # 22 px back in, which is the light tested here: draw it to 1e-4.
    return galsim.Convolve(galsim.Kolmogorov(fwhm=fwhm),
                           galsim.Airy(lam_over_diam=lam_over_diam, obscuration=obscuration),
                           gsparams=galsim.GSParams(folding_threshold=1e-4, maximum_fft_size=16384))


def _draw(obj, shape, xy):
    """``obj`` drawn on a ``shape`` grid with its centre at pixel coordinates ``xy`` = (x, y)."""
    offset = (xy[0] - (shape[1] - 1) / 2, xy[1] - (shape[0] - 1) / 2)
    return obj.drawImage(nx=shape[1], ny=shape[0], scale=SCALE, offset=offset).array


def _stamp(image, pixel_yx, side=SIDE):
    """The ``side x side`` cut of ``image`` centred on ``pixel_yx``, as a one-source, one-band model."""
    half = side // 2
    y, x = pixel_yx
    return image[y - half:y + half + 1, x - half:x + half + 1][None, None].astype(np.float64)


def _footprint(shape, pixel_yx, side=SIDE):
    inside = np.zeros(shape, bool)
    half = side // 2
    y, x = pixel_yx
    inside[max(y - half, 0):y + half + 1, max(x - half, 0):x + half + 1] = True
    return inside


class WingGeometryTestCase(lsst.utils.tests.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.psf_object = _lsst_psf(0.81, "r")
        cls.psf = check_psf(_draw(cls.psf_object, (401, 401), (200, 200))[None], 1)

    def test_point_source(self):
        """A point source's light outside its footprint, painted from the model inside it, is the
        GalSim image's to a few parts in a thousand of the source's flux, pixel by pixel."""
        shape, xy = (171, 201), (61.0, 75.0)
        truth = _draw(self.psf_object.withFlux(1e6), shape, xy)
        pixel = (75, 61)
        inside = _footprint(shape, pixel)
        profiles = wing_profiles(_stamp(truth, pixel), [SIDE], [1], self.psf)
        # A point source has no light of its own beyond the PSF's.
        self.assertLess(float(profiles.excess[0, 0]), 1e-3 * truth[pixel[0], pixel[1] + 11])
        fluxes = profiles.fluxes(self.psf)
        wings = paint_wings(profiles, np.array([pixel]), self.psf, shape)[0]
        np.testing.assert_array_equal(wings[inside], 0.0)
        # The PSF's whole light beyond the footprint (the grid is 401 px): 0.6% of the flux.
        self.assertAlmostEqual(fluxes[0, 0] / 1e6, 0.006, delta=0.001)
        outside = ~inside
        self.assertAlmostEqual(wings[outside].sum() / truth[outside].sum(), 1.0, delta=0.01)
        np.testing.assert_allclose(wings[outside], truth[outside], atol=2e-3 * truth.max())

    def test_small_galaxy(self):
        """A compact galaxy off the pixel grid: its light 25-60 px from its centre is the wing's
        to 15%, and the wing holds its flux beyond the footprint to 10%."""
        shape, xy = (181, 181), (90.3, 89.6)
        galaxy = galsim.Exponential(half_light_radius=0.4).shear(e1=0.2, e2=-0.1).withFlux(1e6)
        truth = _draw(galsim.Convolve(galaxy, self.psf_object), shape, xy)
        pixel = (int(math.floor(xy[1] + 0.5)), int(math.floor(xy[0] + 0.5)))
        inside = _footprint(shape, pixel)
        wings = paint_wings(wing_profiles(_stamp(truth, pixel), [SIDE], [1], self.psf), np.array([pixel]),
                            self.psf, shape)[0]
        beyond = truth[~inside].sum()
        self.assertAlmostEqual(wings[~inside].sum() / beyond, 1.0, delta=0.1)
        y, x = np.mgrid[: shape[0], : shape[1]]
        ring = ~inside & (np.hypot(y - xy[1], x - xy[0]) >= 25) & (np.hypot(y - xy[1], x - xy[0]) <= 60)
        self.assertLess(abs(wings[ring].sum() / truth[ring].sum() - 1), 0.15)

    def test_outskirts_completed(self):
        """A galaxy drawn as the decoder draws it (its light cut where it falls below its mean at
        14-15 px) gets its outskirts back: within 20% of GalSim's light 12-22 px from its centre
        and 15% beyond its footprint for discs, where the cut model and the PSF's wing alone
        leave 45-56% and 3-28% out; a bulge + disc gets closer, never above the truth."""
        shape, xy, pixel = (241, 241), (120.0, 120.0), (120, 120)
        y, x = np.mgrid[: shape[0], : shape[1]]
        r = np.hypot(y - pixel[0], x - pixel[1])
        inside = _footprint(shape, pixel)
        outskirts, beyond = inside & (r >= OUTSKIRTS_START), ~inside & (r < 100)
        gsparams = galsim.GSParams(folding_threshold=1e-4, maximum_fft_size=16384)
        galaxies = {"disc": galsim.Exponential(half_light_radius=0.8).shear(e1=0.3, e2=0.1),
                    "small disc": galsim.Exponential(half_light_radius=0.3),
                    "bulge + disc": galsim.Add(galsim.DeVaucouleurs(half_light_radius=0.5).withFlux(0.4),
                                               galsim.Exponential(half_light_radius=1.0).withFlux(0.6))
                    .shear(e1=-0.2, e2=0.25)}
        for name, galaxy in galaxies.items():
            truth = _draw(galsim.Convolve(galaxy.withFlux(1e6), self.psf_object, gsparams=gsparams), shape, xy)
            level = truth[(r >= 14) & (r < 15)].mean()
            model = _stamp(np.where(truth >= level, truth, 0.0), pixel)
            ratios = {}
            for complete in (False, True):
                profiles = wing_profiles(model, [SIDE], [1], self.psf, outskirts=complete)
                filled = complete_outskirts(model, profiles, self.psf) if complete else model
                image = paint_wings(profiles, np.array([pixel]), self.psf, shape)[0]
                image[inside] += filled[0, 0].ravel()
                ratios[complete] = (image[outskirts].sum() / truth[outskirts].sum(),
                                    image[beyond].sum() / truth[beyond].sum())
                if complete:
                    # Only the outskirts change, and only upwards.
                    near = _stamp(r, pixel)[0, 0] < OUTSKIRTS_START
                    np.testing.assert_array_equal(filled[0, 0][near], model[0, 0][near])
                    self.assertTrue((filled >= model).all())
            with self.subTest(name=name):
                (cut_in, psf_out), (full_in, full_out) = ratios[False], ratios[True]
                self.assertLess(cut_in, 0.6)
                if name == "bulge + disc":
                    self.assertGreater(full_in, cut_in + 0.1)
                    self.assertGreater(full_out, psf_out)
                    self.assertLess(max(full_in, full_out), 1.0)
                else:
                    self.assertLess(abs(full_in - 1), 0.2, ratios)
                    self.assertLess(abs(full_out - 1), 0.15, ratios)

    def test_outskirts_in_the_models_colour(self):
        """A disc whose faint band the decoder cuts nearer its centre (at 10 px, inside the ring the
        excess is measured on) gets that band's outskirts in the model's colour: the two bands'
        excesses stand in the ratio of their model fluxes, and the faint band's light at 12-22 px
        comes back to more than 40% of GalSim's, where the band's own ring (the band fitted
        alone) brings back less than 30% of it. Cut as far out as the bright band, both give the
        same light."""
        shape, xy, pixel = (241, 241), (120.0, 120.0), (120, 120)
        y, x = np.mgrid[: shape[0], : shape[1]]
        r = np.hypot(y - pixel[0], x - pixel[1])
        inside = _footprint(shape, pixel)
        outskirts = inside & (r >= OUTSKIRTS_START)
        gsparams = galsim.GSParams(folding_threshold=1e-4, maximum_fft_size=16384)
        galaxy = galsim.Exponential(half_light_radius=0.8).shear(e1=0.3, e2=0.1)
        truth = _draw(galsim.Convolve(galaxy.withFlux(1e6), self.psf_object, gsparams=gsparams), shape, xy)
        faint = 0.2 * truth
        psf = np.concatenate([self.psf, self.psf])

        def recovered(cut_radius):
            cuts = (truth >= truth[(r >= 14) & (r < 15)].mean(),
                    faint >= faint[(r >= cut_radius) & (r < cut_radius + 1)].mean())
            model = np.concatenate([_stamp(np.where(cut, image, 0.0), pixel)
                                    for cut, image in zip(cuts, (truth, faint))], axis=1)
            profiles = wing_profiles(model, [SIDE], [1], psf)
            excess, flux = profiles.excess[0], model[0].sum(axis=(1, 2))
            self.assertAlmostEqual(excess[1] / excess[0], flux[1] / flux[0], places=6)
            alone = complete_outskirts(model[:, 1:], wing_profiles(model[:, 1:], [SIDE], [1], self.psf), self.psf)
            out = []
            for stamp in (complete_outskirts(model, profiles, psf)[0, 1], alone[0, 0]):
                band = np.zeros(shape)
                band[inside] = stamp.ravel()
                out.append(band[outskirts].sum() / faint[outskirts].sum())
            return out

        shared, own = recovered(10)
        self.assertGreater(shared, 0.4)
        self.assertLess(own, 0.3)
        shared, own = recovered(14)
        self.assertAlmostEqual(shared, own, delta=1e-6)
        self.assertLess(abs(shared - 1), 0.2)

    def test_templates(self):
        template, inside = wing_templates(self.psf, SIDE)
        self.assertAlmostEqual(float(template.sum()), 1.0, places=6)
        self.assertAlmostEqual(float(inside[0] + self.psf[0][template[0] > 0].sum()), 1.0, places=6)
        # A larger footprint (zoom 2) leaves less light outside it.
        point = np.zeros((1, 1, 93, 93))
        point[0, 0, 46, 46] = 1.0
        wide, narrow = (wing_profiles(point[:, :, 46 - s // 2:47 + s // 2, 46 - s // 2:47 + s // 2], [s], [z],
                                      self.psf, outskirts=False).fluxes(self.psf)[0, 0] for s, z in ((93, 2), (SIDE, 1)))
        self.assertLess(wide, narrow)
        # A PSF image no larger than the footprint has no wing.
        small = check_psf(np.ones((1, 45, 45)), 1)
        self.assertEqual(float(wing_profiles(point[:, :, 24:69, 24:69], [SIDE], [1], small).fluxes(small)[0, 0]), 0.0)

    def test_doctests(self):
        result = doctest.testmod(wings_module)
        self.assertGreater(result.attempted, 0)
        self.assertEqual(result.failed, 0)

    def test_bad_psf(self):
        good = np.ones((2, 5, 5))
        for bad, why in ((np.ones((2, 4, 5)), "odd"), (np.ones((3, 5, 5)), "bands"),
                         (np.where(np.eye(5)[None] > 0, np.nan, 1.0).repeat(2, 0), "non-finite"),
                         (good * [[[0.0]], [[1.0]]], "positive sum"), (np.ones((5, 5)), "bands")):
            with self.subTest(why=why), self.assertRaises(MadnessValueError):
                check_psf(bad, 2)


# Bright compact galaxies and faint ones 28-31 px from them (beyond the bright ones' stamps).
PEAKS = np.array([[50.3, 60.6], [78.0, 68.0], [56.0, 90.0], [120.0, 130.4], [148.0, 118.0], [126.0, 101.0]])
MAGS = [17.5, 24.5, 24.0, 18.0, 24.5, 24.2]
SHAPE = (181, 181)


def _scene(conditions, seed=4):
    galaxies = [galsim.Exponential(half_light_radius=0.5).shear(e1=0.1, e2=0.05),
                galsim.Exponential(half_light_radius=0.3),
                galsim.Exponential(half_light_radius=0.4).shear(e1=-0.2, e2=0.1),
                galsim.Exponential(half_light_radius=0.6).shear(e1=-0.1, e2=-0.15),
                galsim.Exponential(half_light_radius=0.3).shear(e1=0.2, e2=0.0),
                galsim.Exponential(half_light_radius=0.35)]
    bands = conditions.bands
    truth = np.zeros((len(galaxies), len(bands), *SHAPE))
    psf = np.zeros((len(bands), 2 * SHAPE[0] + 1, 2 * SHAPE[1] + 1))
    for b, band in enumerate(bands):
        psf_object = _lsst_psf(conditions.psf_fwhm[b], band)
        psf[b] = _draw(psf_object, psf.shape[1:], (SHAPE[1], SHAPE[0]))
        for k, (galaxy, mag) in enumerate(zip(galaxies, MAGS)):
            truth[k, b] = _draw(galsim.Convolve(galaxy.withFlux(conditions.counts(mag, band)), psf_object),
                                SHAPE, PEAKS[k])
    variance = np.broadcast_to(conditions.sky_levels[:, None, None], (len(bands), *SHAPE)).astype(np.float32)
    rng = np.random.default_rng(seed)
    image = truth.sum(axis=0) + rng.normal(size=variance.shape) * np.sqrt(variance)
    return image.astype(np.float32), variance.copy(), truth, psf


def _aperture_errors(image, result, truth, band, faint, radius=4.0):
    """Relative flux error of each faint galaxy in a circular aperture on the image minus the
    other sources' images (their wings included when the result has them)."""
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]]
    errors = []
    for k in faint:
        others = sum(result.source_image(j)[band] for j in range(len(PEAKS)) if j != k)
        aperture = (x - PEAKS[k, 0]) ** 2 + (y - PEAKS[k, 1]) ** 2 <= radius**2
        errors.append(float((image[band] - others)[aperture].sum() / truth[k, band][aperture].sum() - 1))
    return np.array(errors)


class DeblendWithWingsTestCase(lsst.utils.tests.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.deblender = MadnessDeblender.from_bundle(None)
        conditions = LsstConditions.from_surveycodex(bands=cls.deblender.bands)
        cls.image, cls.variance, cls.truth, cls.psf = _scene(conditions)
        precision = "mixed_bfloat16" if keras.config.backend() == "tensorflow" else "float32"
        # The joint fit alone: a refit beside a brighter neighbour (on by default) is fitted on the
        # image minus its neighbours' wings, so with it the fit depends on the PSF.
        cls.settings = cls.deblender.settings.replace(precision=precision, max_zoom=1, fit_envelopes=False,
                                                      refit_beside_brighter=None)
        cls.plain = cls.deblender.deblend(cls.image, PEAKS, variance=cls.variance, settings=cls.settings)
        cls.winged = cls.deblender.deblend(cls.image, PEAKS, variance=cls.variance, settings=cls.settings,
                                           psf=cls.psf)

    def test_settings(self):
        self.assertTrue(MapSettings().psf_wings)
        self.assertTrue(MapSettings().outskirts)

    def test_wings_drawn_and_fit_unchanged(self):
        plain, winged = self.plain, self.winged
        self.assertIsNone(plain.wing_fluxes)
        self.assertFalse(plain.winged.any())
        self.assertEqual(winged.wing_fluxes.shape, (len(PEAKS), len(self.deblender.bands)))
        self.assertTrue(winged.winged.all())
        # The wings are drawn after the fit: the models are the same within 12 px of each
        # centre, and only lifted beyond (the outskirts).
        size = plain.models.shape[-1]
        y, x = np.mgrid[:size, :size] - size // 2
        near = np.hypot(y, x) < OUTSKIRTS_START
        np.testing.assert_array_equal(plain.models[..., near], winged.models[..., near])
        self.assertTrue((winged.models >= plain.models).all())
        self.assertGreater(float(winged.models.sum()), float(plain.models.sum()))
        # Each wing holds 0.5-1.2% of its model's flux (the PSF's share beyond 45 px is 0.6%;
        # these discs have a little more).
        share = winged.wing_fluxes / winged.models.sum(axis=(2, 3))
        self.assertTrue(((share > 0.004) & (share < 0.012)).all(), share)
        # source_image and model_image carry the wings; far_light holds them.
        painted = sum(winged.source_image(i) for i in range(len(PEAKS)))
        np.testing.assert_allclose(winged.model_image(), painted, rtol=1e-5, atol=1e-2)
        far, sources = winged.far_light()
        self.assertEqual(sorted(sources.tolist()), list(range(len(PEAKS))))
        stamps = paste_stamps(winged.models, winged.stamp_yx0, winged.image_shape, dtype=np.float32)
        np.testing.assert_allclose(far.sum(axis=0) + stamps, winged.model_image(), atol=1e-2)
        self.assertEqual(plain.far_light(), (None, None))

    def test_neighbours_measured_better(self):
        """The faint galaxies' aperture fluxes on the image less their neighbours' models: the
        bright galaxies' wings, left in the apertures without them, are taken out with them."""
        r = self.deblender.bands.index("r")
        faint = [k for k, mag in enumerate(MAGS) if mag > 23]
        before = _aperture_errors(self.image, self.plain, self.truth, r, faint)
        after = _aperture_errors(self.image, self.winged, self.truth, r, faint)
        # Without wings each faint galaxy keeps the bright ones' light (3-9% here): biased high.
        self.assertGreater(before.min(), 0.02, before)
        self.assertLess(np.abs(after).mean(), 0.5 * np.abs(before).mean(), (before, after))

    def test_switched_off_and_bad_psf(self):
        off = self.deblender.deblend(self.image, PEAKS, variance=self.variance, psf=self.psf,
                                     settings=self.settings.replace(psf_wings=False))
        self.assertIsNone(off.wing_fluxes)
        # Wings without outskirts: the models are the fit's, each wing the PSF's alone.
        bare = self.deblender.deblend(self.image, PEAKS, variance=self.variance, psf=self.psf,
                                      settings=self.settings.replace(outskirts=False))
        np.testing.assert_array_equal(bare.models, self.plain.models)
        self.assertEqual(float(np.abs(bare.wings.excess).max()), 0.0)
        _, inside = wing_templates(check_psf(self.psf, len(self.deblender.bands)), SIDE)
        np.testing.assert_allclose(bare.wing_fluxes, bare.models.sum(axis=(2, 3)) * (1 - inside) / inside, rtol=1e-4)
        with self.assertRaises(MadnessValueError):
            self.deblender.deblend(self.image, PEAKS, variance=self.variance, psf=self.psf[:, :-1],
                                   settings=self.settings)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
