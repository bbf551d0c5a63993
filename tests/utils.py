"""Shared test helpers: synthetic galaxies with known truth and a small trained model."""

from __future__ import annotations

import functools
import tempfile
import unittest
from pathlib import Path

import numpy as np

BANDS = ("u", "g", "r", "i", "z", "y")
STAMP = 45
# Per-band sky variance (electrons^2 per pixel) of the order of LSST 10-year coadds.
SKY_VARIANCE = np.array([60.0, 110.0, 280.0, 400.0, 550.0, 600.0])


def synthetic_galaxies(n: int, seed: int, size: int = STAMP) -> np.ndarray:
    """``(n, 6, size, size)`` centred elliptical exponential-like galaxies, electrons per pixel.

    Fluxes 3e3-1e5 e- in r, half-light radii 1.5-4 px, ellipticities up to 0.5, smooth colours.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size // 2
    flux = 10 ** rng.uniform(3.5, 5.0, n)
    hlr = rng.uniform(1.5, 4.0, n)
    e = rng.uniform(0, 0.5, n)
    theta = rng.uniform(0, np.pi, n)
    q = (1 - e) / (1 + e)
    colour = rng.normal(0, 0.3, n)
    sed = np.exp(colour[:, None] * np.linspace(-1, 1, 6)[None, :]) * np.array([0.3, 0.7, 1.0, 1.2, 1.3, 1.3])
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u = c * xx + s * yy
    v = (-s * xx + c * yy) / q[:, None, None]
    r = np.sqrt(u**2 + v**2 + 0.5)
    profile = np.exp(-1.678 * r / hlr[:, None, None])
    profile /= profile.sum(axis=(1, 2), keepdims=True)
    return (flux[:, None, None, None] * sed[:, :, None, None] * profile[:, None]).astype(np.float32)


def draw_galsim_scene(galaxies, peaks, shape, seed, scale: float = 0.2):
    """GalSim truths ``(n, bands, *shape)`` of ``(profile, r magnitude)`` pairs at ``peaks`` (x, y)
    with a flat SED (the same magnitude in every band), the LSST PSF per band, and the image with
    sky noise of seed ``seed``: ``(image, variance, truth)``."""
    import galsim

    from lsst.meas.madness.simulation import LsstConditions

    conditions = LsstConditions.from_surveycodex()
    bands = conditions.bands
    truth = np.zeros((len(galaxies), len(bands), *shape))
    for b, band in enumerate(bands):
        psf = galsim.Moffat(beta=3.5, fwhm=conditions.psf_fwhm[b])
        for k, (gal, mag) in enumerate(galaxies):
            obj = galsim.Convolve(gal.withFlux(conditions.counts(mag, band)), psf)
            offset = (peaks[k, 0] - (shape[1] - 1) / 2, peaks[k, 1] - (shape[0] - 1) / 2)
            truth[k, b] = obj.drawImage(nx=shape[1], ny=shape[0], scale=scale, offset=offset).array
    sky = conditions.sky_levels
    variance = np.broadcast_to(sky[:, None, None], (len(bands), *shape)).astype(np.float32).copy()
    rng = np.random.default_rng(seed)
    image = truth.sum(axis=0) + rng.normal(size=variance.shape) * np.sqrt(variance)
    return image.astype(np.float32), variance, truth


@functools.lru_cache(maxsize=1)
def quick_bundle_path() -> Path:
    """Directory of a small model trained (once per process) on `synthetic_galaxies`."""
    from lsst.meas.madness.simulation.conditions import LsstConditions
    from lsst.meas.madness.training import QuickTrainingConfig, train_quick_bundle

    # Small and short: the truths of the engine tests are drawn by this decoder, so its
    # reconstruction quality does not matter, only that it is smooth and galaxy-like.
    stamps = synthetic_galaxies(640, seed=1)
    config = QuickTrainingConfig(
        encoder_filters=(8, 16, 32, 32), decoder_filters=(32, 16, 16), dense_units=64,
        epochs=10, flow_epochs=20, batch_size=64, seed=3,
    )
    # The LSST conditions make the fixture's images "electrons at LSST 10-year depth", as the
    # shipped model's are, so the tasks can convert coadds in nJy into its units.
    conditions = LsstConditions.from_surveycodex(bands=BANDS).as_dict()
    bundle = train_quick_bundle(stamps, SKY_VARIANCE, bands=BANDS, config=config, conditions=conditions,
                                description="test fixture trained on synthetic galaxies")
    path = Path(tempfile.mkdtemp(prefix="madness-test-bundle-")) / "bundle"
    bundle.save(path)
    return path


def make_blend(deblender, latents, peaks_xy, shape, seed, variance=SKY_VARIANCE):
    """Blend of decoder-drawn galaxies at ``peaks_xy`` plus Gaussian noise.

    Returns image, variance, and per-source truth images on the image grid.
    """
    rng = np.random.default_rng(seed)
    from lsst.meas.madness.engine.geometry import (paste_stamps, shift_stamps, stamp_origins_xy,
                                                   subpixel_shifts)

    # Decoded centred, moved to each peak's sub-pixel position (none for integer peaks).
    stamps = shift_stamps(deblender.decode(latents), subpixel_shifts(peaks_xy))
    origins = stamp_origins_xy(peaks_xy, deblender.stamp_size)
    truth = paste_stamps(stamps, origins, shape, total=False, dtype=np.float32)
    var = np.broadcast_to(np.asarray(variance, np.float32)[:, None, None], (6, *shape)).copy()
    image = truth.sum(0) + rng.normal(size=var.shape).astype(np.float32) * np.sqrt(var)
    return image.astype(np.float32), var, truth


class MadnessTestCase(unittest.TestCase):
    """Assertions shared by the test modules."""

    def assertImagesClose(self, a, b, rtol=1e-5, atol=1e-6, msg=None):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, err_msg=msg or "")
