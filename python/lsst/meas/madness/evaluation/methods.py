"""The deblenders compared side by side, one adapter each, all called the same way.

Every adapter takes a field (``(bands, H, W)`` image, per-band variance, true centres) and
returns one model per galaxy, in catalogue order, as stamps with their origins or as
full-field images, plus the wall time of the deblending proper. What each one is:

=================  ==========================================================================
``blended``        no deblending: the metrics are measured on the blended field itself.
``vae_deblender``  MADNESS's initialisation only (paper 3.4): the VAE-deblender encoder on each
                   peak-centred cutout, its mean latents decoded.
``madness``        MADNESS: MAP in the latent space from that initialisation (paper 3.5),
                   all galaxies of a field in one blend, the engine's default settings.
``scarlet2``       scarlet2 (JAX, PyPI), known centres, the simulation's own PSF per band
                   (Kolmogorov + Airy, drawn with BTK's model), Gaussian model PSF of
                   0.7 px; each source one factorised component initialised with
                   ``init.pixel_spectrum(correct_psf=True)`` and ``init.compact_morphology()``
                   padded to the ``init.best_box_moments`` box; positive spectrum (Adam step
                   0.05 on its log), unit-interval morphology (0.1 on its logit); Adam
                   (scarlet2's ``fit``) for at most 200 steps (paper appendix B), ``e_rel`` 1e-4.
``scarlet_lite``   ``lsst.scarlet.lite`` (Rubin; built from source by ``scripts/build-peers.sh``)
                   as meas_extensions_scarlet runs it, on the whole field: per-band PSFs,
                   Gaussian model PSF 0.8 px, ``FactorizedInitialization`` on the band sum of
                   the images deconvolved as ``DeconvolveExposureTask`` does, inverse-variance
                   weights (zero outside the 5-sigma detection footprints), ``fit_spectra``,
                   proximal Adam, ``fit(300, e_rel=1e-3, min_iter=5, resize=3)``, models
                   convolved back to the observed PSF.
``scarlet``        classic scarlet (``pmelchior/scarlet`` 1.0.x, numpy < 2, in its own
                   environment through ``scarlet_worker.py``), the paper's appendix B settings:
                   ``init_all_sources(max_components=2, min_snr=50)``, 200 iterations,
                   ``e_rel`` 1e-6, Gaussian model PSF (sigma 0.6 px, as BTK's wrapper).
=================  ==========================================================================

Comparators that cannot be imported are not silently dropped: `method_availability` says why,
and the runner reports them as absent.
"""

from __future__ import annotations

__all__ = [
    "METHOD_NAMES",
    "MODEL_METHOD_NAMES",
    "BlendedMethod",
    "DeblendMethod",
    "FieldInput",
    "MadnessMethod",
    "MethodOutput",
    "Scarlet2Method",
    "ScarletLiteMethod",
    "ScarletMethod",
    "VaeDeblenderMethod",
    "get_method",
    "method_availability",
    "check_psf_size",
    "psf_images",
    "PSF_SIZE",
    "LEGACY_PSF_SIZE",
]

import abc
import dataclasses
import functools
import importlib
import json
import importlib.util
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..engine.geometry import peaks_to_pixels, shift_stamps
from ..errors import MadnessValueError
from ..psf import check_psf_size, survey_psf_images
from .stamps import cutout_stamps

PSF_SIZE = 201
"""Default side (pixels, odd, centred) of the PSF images every method of a run is given
(``madness evaluate --psf-size``): the scarlets convolve with it, MADNESS draws each source's
light beyond its stamp from it (`lsst.meas.madness.engine.wings`; a PSF no wider than the
45-px stamp gives no wing). One size for all, so that no method knows more of the PSF. 201 px
since stop 47: MADNESS's decoder learnt the whole PSF from its training images, so a narrower
image handicaps only the scarlets (doc/evaluation.md, "One PSF for every method"); runs made
before the size was a choice used 41 (`LEGACY_PSF_SIZE`)."""

LEGACY_PSF_SIZE = 41
"""The PSF side of every run made before ``--psf-size`` existed (stop 46), and the default until
stop 47: a checkpoint that does not record its PSF size used this."""

RENDERED_MARGIN = 20
"""The scarlet family's rendered models are cut to stamps of the PSF's side plus this (221 px at
the default PSF, 61 at 41 px): a source's model box plus the PSF's extent, so no flux is cut
(their models are zero elsewhere)."""


@dataclasses.dataclass(frozen=True)
class FieldInput:
    """What every method gets for one field.

    Attributes
    ----------
    field_id : `int`
        Index of the field.
    image : `numpy.ndarray`
        ``(bands, H, W)`` float32 noisy field, electrons per pixel, sky subtracted.
    variance : `numpy.ndarray`
        ``(bands, H, W)`` float32 per-pixel variance, electrons squared.
    centers_xy : `numpy.ndarray`
        ``(n, 2)`` true centres, ``(x, y)`` pixels.
    bands : `tuple` [`str`]
        Band of each plane.
    """

    field_id: int
    image: np.ndarray
    variance: np.ndarray
    centers_xy: np.ndarray
    bands: tuple[str, ...]


@dataclasses.dataclass
class MethodOutput:
    """One method's models of one field.

    Attributes
    ----------
    models : `numpy.ndarray` or `None`
        ``(n, bands, h, w)`` float32 model of each galaxy in catalogue order (PSF-convolved, as
        observed), electrons per pixel; `None` for no deblending.
    models_yx0 : `numpy.ndarray` or `None`
        ``(n, 2)`` field pixel of each stamp's first pixel; `None` if ``models`` are full fields.
    seconds : `float`
        Wall time of the deblending proper, seconds (compilation excluded, see
        ``compile_seconds``).
    compile_seconds : `float`
        Wall time spent compiling for this field (scarlet2's JIT of each new scene), seconds.
    info : `dict`
        Method-specific diagnostics (iterations, convergence).
    extra_rss_before, extra_peak_rss : `int` or `None`
        Resident memory (bytes) before and at the peak of the call of a helper process the
        method runs in (classic scarlet's own interpreter); added to the worker's own.
    envelopes, envelope_sources : `numpy.ndarray` or `None`
        ``(m, bands, H, W)`` light of galaxies beyond their stamps and the ``(m,)`` galaxy each
        belongs to (MADNESS's `DeblendResult.far_light`: envelopes and PSF wings).
    """

    models: np.ndarray | None
    models_yx0: np.ndarray | None
    seconds: float
    compile_seconds: float = 0.0
    info: dict = dataclasses.field(default_factory=dict)
    extra_rss_before: int | None = None
    extra_peak_rss: int | None = None
    envelopes: np.ndarray | None = None
    envelope_sources: np.ndarray | None = None


class DeblendMethod(abc.ABC):
    """Adapter of one deblender to the evaluation.

    Parameters
    ----------
    bands : sequence of `str`
        Bands of the fields, in plane order.
    conditions : `lsst.meas.madness.simulation.LsstConditions`
        Survey conditions (PSF FWHM, pixel scale) of those bands.
    bundle : path-like, optional
        MADNESS model bundle (MADNESS methods only); the packaged default if `None`.
    precision : `str`
        Compute precision of MADNESS's MAP steps (`MapSettings.precision`: ``"float32"`` or
        ``"mixed_bfloat16"``); the other methods have no such choice and ignore it.
    map_settings : `dict`, optional
        Further `MapSettings` fields of MADNESS's engine (its defaults otherwise); ignored by
        the other methods.
    psf_size : `int`
        Side of the PSF images the method is given (`PSF_SIZE`), the same for every method.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    """Modules that must import for the method to be available."""

    def __init__(self, bands: Sequence[str], conditions, bundle=None, precision: str = "float32",
                 map_settings: dict | None = None, psf_size: int = PSF_SIZE):
        self.bands = tuple(bands)
        self.conditions = conditions
        self.bundle = bundle
        self.precision = precision
        self.map_settings = dict(map_settings or {})
        self.psf_size = check_psf_size(psf_size)

    @classmethod
    def availability(cls) -> str | None:
        """`None` if the method's modules are installed here, else why not.

        Only looks the modules up (cheap, nothing imported); a module that is installed but
        fails to import is reported by the worker's `setup` instead, and is absent just the same.
        """
        for module in cls.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):  # a missing parent package
                found = False
            if not found:
                return f"{module} is not installed"
        return None

    def setup(self) -> None:
        """Import libraries and load models (done once, before any field; not timed per galaxy)."""

    @abc.abstractmethod
    def deblend(self, field: FieldInput) -> MethodOutput:
        """Models of every galaxy of ``field``."""

    def close(self) -> None:
        """Release what `setup` started (helper processes, temporary files)."""

    def describe(self) -> dict:
        """JSON-friendly description of the method's configuration."""
        return {"label": self.label}


class BlendedMethod(DeblendMethod):
    """No deblending: every galaxy is measured on the blended field (the paper's baseline)."""

    name = "blended"
    label = "no deblending"

    def deblend(self, field: FieldInput) -> MethodOutput:
        return MethodOutput(models=None, models_yx0=None, seconds=0.0)

    def describe(self) -> dict:
        return {"label": self.label, "config": "photometry on the blended field; no models (no morphology)"}


class _MadnessBase(DeblendMethod):
    requires = ("keras",)

    def setup(self) -> None:
        from ..engine import MadnessDeblender, MapSettings

        self.deblender = MadnessDeblender.from_bundle(
            self.bundle, settings=MapSettings(precision=self.precision, **self.map_settings))
        if self.deblender.bands != self.bands:
            raise MadnessValueError(f"The model's bands {self.deblender.bands} differ from the fields' "
                                    f"{self.bands}.")

    def describe(self) -> dict:
        meta = self.deblender.metadata if hasattr(self, "deblender") else None
        out = {"label": self.label, "bundle": str(self.bundle) if self.bundle else "packaged default",
               "map_settings": self.map_settings}
        if meta is not None:
            out["bundle_description"] = meta.description
            out["bundle_created"] = meta.created
        return out


class VaeDeblenderMethod(_MadnessBase):
    """The VAE-deblender alone: MADNESS's initial latents of each galaxy, decoded (paper 3.4)."""

    name = "vae_deblender"
    label = "VAE-deblender"

    def deblend(self, field: FieldInput) -> MethodOutput:
        from ..engine.observation import prepare_blend

        d = self.deblender
        start = time.perf_counter()
        prepared = prepare_blend(field.image, field.centers_xy, field.variance, None, num_bands=len(d.bands),
                                 stamp_size=d.stamp_size, normalization=d.normalization,
                                 max_sources=d.settings.max_sources)
        # decoded centred; moved to each peak's sub-pixel position as the MAP's models are
        models = shift_stamps(d.decode(d.initial_latents(prepared.cutouts)), prepared.shifts)
        seconds = time.perf_counter() - start
        return MethodOutput(models=models.astype(np.float32), models_yx0=np.asarray(prepared.origins),
                            seconds=seconds)

    def describe(self) -> dict:
        return {**super().describe(),
                "config": "VAE-deblender encoder mean on each 45x45 peak-centred cutout, decoded"}


class MadnessMethod(_MadnessBase):
    """MADNESS: MAP of all latents of the field at once (paper 3.5), the engine's defaults."""

    name = "madness"
    label = "MADNESS"

    def deblend(self, field: FieldInput) -> MethodOutput:
        # The PSF the fields were drawn with, as every method of the run gets it: with a PSF
        # wider than the stamp each source's light beyond it is drawn from the PSF
        # (`lsst.meas.madness.engine.wings`). Drawn once (cached), not timed.
        psf = psf_images(self.conditions, self.bands, self.psf_size)
        start = time.perf_counter()
        result = self.deblender.deblend(field.image, field.centers_xy, variance=field.variance, psf=psf)
        seconds = time.perf_counter() - start
        far_light, far_sources = result.far_light()
        return MethodOutput(models=result.models.astype(np.float32), models_yx0=np.asarray(result.stamp_yx0),
                            seconds=seconds, envelopes=far_light, envelope_sources=far_sources,
                            info={"n_iter": int(np.max(result.n_iter)),
                                  "converged": bool(np.all(result.converged))})

    def describe(self) -> dict:
        s = self.deblender.settings
        return {**super().describe(),
                "config": f"MAP, whole field as one blend; Adam lr {s.learning_rate} x{s.lr_decay} every "
                          f"{s.lr_decay_steps} steps, {s.min_iter}-{s.max_iter} steps, "
                          f"EWMA stop rtol {s.rtol}; prior weight {s.prior_weight}; "
                          + (f"symmetry prior weight {s.symmetry_weight:g}; " if s.symmetry_weight else "")
                          + (f"flux factor per band (sigma {s.amplitude_sigma})" if s.fit_amplitudes
                             else "no flux factors")
                          + f"; zoom up to {s.max_zoom} ({s.zoom_choice}); "
                          + (f"envelopes (edge {s.envelope_edge_sigma} sigma); " if s.fit_envelopes
                             else "no envelopes; ")
                          + (f"PSF wings beyond the stamps ({self.psf_size}x{self.psf_size} PSF); " if s.psf_wings
                             else "no PSF wings; ")
                          + (f"second start at lr {s.second_start_rate} (kept per group of overlapping "
                             "sources by objective); " if s.second_start_rate is not None else "")
                          + f"MAP steps in {s.precision}"}


def psf_images(conditions, bands: Sequence[str] | None = None, size: int = PSF_SIZE) -> np.ndarray:
    """``(bands, size, size)`` unit-sum PSF images of the simulation (BTK's Kolmogorov + Airy).

    The same GalSim model BTK draws the fields with (SurveyCodex FWHM, mirror diameter and
    obscuration), drawn on the pixel grid and centred on the central pixel
    (`lsst.meas.madness.psf.survey_psf_images`).
    """
    bands = tuple(conditions.bands if bands is None else bands)
    return survey_psf_images(conditions.survey, bands, float(conditions.pixel_scale), size)


def _rendered_stamps(full_models: np.ndarray, centers_xy: np.ndarray, psf_size: int) -> tuple[np.ndarray, np.ndarray]:
    stamps, yx0 = cutout_stamps(full_models, centers_xy, psf_size + RENDERED_MARGIN)
    return stamps.astype(np.float32), yx0


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """Unit-sum circular Gaussian of ``sigma`` pixels on an odd grid of half-width ``ceil(4 sigma)``."""
    half = max(int(np.ceil(4 * sigma)), 1)
    x = np.arange(-half, half + 1)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    kernel = np.outer(g, g)
    return kernel / kernel.sum()


def detection_footprints(image: np.ndarray, variance: np.ndarray, psf_sigma: Sequence[float],
                         nsigma: float = 5.0, grow_sigma: float = 2.4) -> np.ndarray:
    """``(H, W)`` boolean union over bands of the pixels detected as Rubin's detection does.

    As `SourceDetectionTask` with its defaults: each band smoothed by a Gaussian of its PSF's
    sigma, thresholded at ``nsigma`` times the smoothed image's own noise, footprints grown by
    ``grow_sigma`` PSF sigmas; then the bands merged (`MergeDetectionsTask`, union). These are
    the ``deepCoadd_mergeDet`` footprints that `DeconvolveExposureTask` multiplies its model by.
    """
    from scipy import ndimage

    detected = np.zeros(image.shape[1:], bool)
    for img, var, sigma in zip(image, variance, psf_sigma):
        kernel = _gaussian_kernel(float(sigma))
        smoothed = ndimage.convolve(np.asarray(img, np.float64), kernel, mode="constant")
        noise = np.sqrt(ndimage.convolve(np.asarray(var, np.float64), kernel**2, mode="constant"))
        mask = smoothed > nsigma * noise
        grow = int(round(grow_sigma * float(sigma)))
        if grow > 0 and mask.any():
            yy, xx = np.mgrid[-grow:grow + 1, -grow:grow + 1]
            mask = ndimage.binary_dilation(mask, structure=(xx**2 + yy**2) <= grow**2)
        detected |= mask
    return detected


def _deconvolution_step(observation, min_scale: float = 0.01, default_scale: float = 0.1) -> float:
    """``calculate_update_step`` of meas_extensions_scarlet's ``deconvolveExposureTask``."""
    noise_level = observation.noise_rms[0]
    if noise_level <= 0 or not np.isfinite(noise_level):
        return default_scale
    signal_mask = observation.images.data > 3 * noise_level
    sparsity = np.sum(signal_mask) / observation.images.data.size
    snr = np.median(observation.images.data[signal_mask]) / noise_level if np.any(signal_mask) else 1.0
    return max(min_scale, min(1.0, (sparsity * np.sqrt(snr)) / 0.1))


def deconvolve_band(image: np.ndarray, variance: np.ndarray, psf: np.ndarray, model_psf: np.ndarray,
                    footprints: np.ndarray | None = None, max_iter: int = 100, min_iter: int = 10,
                    e_rel: float = 1e-3) -> tuple[np.ndarray, int]:
    """One band deconvolved to the model PSF as `DeconvolveExposureTask` does (its defaults).

    Gradient steps on the unweighted squared residual through scarlet_lite's FFT convolution
    with the difference kernel, step from ``calculate_update_step``, halved when the loss rises;
    the model clipped at zero and multiplied by the detection footprints; stop after
    ``min_iter`` when the loss changes by less than ``e_rel``. Returns the model and the
    iterations run.
    """
    import lsst.scarlet.lite as scl

    weights = np.ones_like(image)
    observation = scl.Observation(images=image[None].copy(), variance=variance[None].copy(),
                                  weights=weights[None], psfs=psf[None], model_psf=model_psf[None],
                                  convolution_mode="fft", bands=("x",))
    model = observation.images.copy()
    loss = []
    step = _deconvolution_step(observation)
    for n in range(max_iter):
        residual = observation.images - observation.convolve(model)
        loss.append(-0.5 * np.sum(residual.data**2))
        update = observation.convolve(residual, grad=True)
        update.data[:] *= step
        model += update
        model.data[(model.data < 0) | ~np.isfinite(model.data)] = 0
        if footprints is not None:
            model.data[:] *= footprints
        if len(loss) > 1 and loss[-1] < loss[-2]:
            step = step / 2
        if n > min_iter and np.abs(loss[-1] - loss[-2]) < e_rel * np.abs(loss[-1]):
            break
    return model.data[0], n + 1


class Scarlet2Method(DeblendMethod):
    """scarlet2 (JAX) with known centres and the simulation's PSFs; see the module table."""

    name = "scarlet2"
    label = "scarlet2"
    requires = ("scarlet2", "optax", "numpyro")
    max_iter = 200
    e_rel = 1e-4
    # Adam step sizes on the unconstrained parameters: the log of the spectrum and the logit of
    # the morphology (fixed, not relative: a relative step on the log spectrum scales with the
    # image units). Compact morphologies padded to `init.best_box_moments` boxes. On the 6
    # fields of seed 77 (101 galaxies, r, kappa <= 5) this gave mean abs(dF/F) 0.045 against
    # 0.068 for the earlier relative steps (0.02 spectrum, 1e-3 morphology, 11 px boxes);
    # DESIGN.md measured 0.035 against 0.131 on dense single-Sersic fields.
    spectrum_step = 0.05
    morphology_step = 0.1
    relative_steps = False
    box_moments = True

    def setup(self) -> None:
        import jax  # noqa: F401
        import scarlet2

        scarlet2.set_validation(False)
        self.psf = psf_images(self.conditions, self.bands, self.psf_size)

    def _scene(self, field: FieldInput):
        import jax.numpy as jnp
        import scarlet2 as sc2
        from numpyro.distributions import constraints

        obs = sc2.Observation(jnp.asarray(field.image), weights=jnp.asarray(1.0 / field.variance),
                              psf=sc2.ArrayPSF(jnp.asarray(self.psf)), channels=list(self.bands))
        frame = sc2.Frame.from_observations(obs)
        with sc2.Scene(frame) as scene:
            for x, y in field.centers_xy:
                center = jnp.array([float(y), float(x)])
                spectrum = sc2.init.pixel_spectrum(obs, center, correct_psf=True)
                # A negative band (noise, faint u) would make the positive constraint's inverse NaN.
                spectrum = jnp.maximum(spectrum, 1e-3 * jnp.max(jnp.abs(spectrum)) + 1e-12)
                morph = sc2.init.compact_morphology()
                if self.box_moments:
                    box, _ = sc2.init.best_box_moments(obs, center)
                    side = max(int(box.shape[-1]), morph.shape[-1])
                    pad = (side - morph.shape[-1]) // 2
                    morph = jnp.pad(morph, pad, constant_values=1e-6)
                sc2.Source(center, spectrum, morph)
        if self.relative_steps:
            spec_step = functools.partial(sc2.relative_step, factor=self.spectrum_step)
            morph_step = functools.partial(sc2.relative_step, factor=self.morphology_step)
        else:
            spec_step, morph_step = self.spectrum_step, self.morphology_step
        with sc2.Parameters(scene):
            for i, source in enumerate(scene.sources):
                sc2.Parameter(source.spectrum, name=f"spectrum:{i}", constraint=constraints.positive,
                              stepsize=spec_step)
                sc2.Parameter(source.morphology, name=f"morph:{i}", constraint=constraints.unit_interval,
                              stepsize=morph_step)
        return obs, scene

    def deblend(self, field: FieldInput) -> MethodOutput:
        import contextlib
        import io

        import jax

        if self.psf_size > min(field.image.shape[1:]):
            # scarlet2 pads the observation to the PSF's size and fails deep inside JAX otherwise.
            raise MadnessValueError(
                f"scarlet2 cannot convolve a {field.image.shape[2]}x{field.image.shape[1]} field with "
                f"{self.psf_size}-px PSF images; give a psf_size no larger than the field "
                "(madness evaluate cuts it to the field by itself)."
            )
        # scarlet2 prints (does not log) its initialisation warnings; keep them out of the report.
        with contextlib.redirect_stdout(io.StringIO()):
            start = time.perf_counter()
            obs, scene = self._scene(field)
            t_init = time.perf_counter() - start
            # Each scene compiles anew (its boxes are static): a one-step fit pays the JIT.
            t0 = time.perf_counter()
            jax.block_until_ready(scene.fit(obs, max_iter=1, e_rel=0.0, progress_bar=False)())
            compile_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            fitted = scene.fit(obs, max_iter=self.max_iter, e_rel=self.e_rel, progress_bar=False)
            full = np.stack([np.asarray(obs.render(fitted.evaluate_source(s))) for s in fitted.sources])
            seconds = t_init + time.perf_counter() - t0
        models, yx0 = _rendered_stamps(full, field.centers_xy, self.psf_size)
        return MethodOutput(models=models, models_yx0=yx0, seconds=seconds, compile_seconds=compile_seconds)

    def describe(self) -> dict:
        import scarlet2

        return {"label": self.label, "version": getattr(scarlet2, "__version__", "unknown"),
                "config": f"known centres; PSF: BTK Kolmogorov+Airy {self.psf_size}x{self.psf_size} per band; "
                          f"model PSF Gaussian 0.7 px; init pixel_spectrum(correct_psf=True) + "
                          f"compact_morphology()"
                          + (" padded to best_box_moments boxes; " if self.box_moments else "; ")
                          + f"fit(max_iter={self.max_iter}, e_rel={self.e_rel}), Adam steps "
                          f"{self.spectrum_step} on the log spectrum, {self.morphology_step} on the logit "
                          f"morphology" + (" (relative)" if self.relative_steps else "")}


class ScarletLiteMethod(DeblendMethod):
    """``lsst.scarlet.lite`` run as meas_extensions_scarlet runs it, whole field, known centres.

    The recipe of ``scarletDeblendTask.deblend`` with ``ScarletDeblendConfig``'s defaults, on
    the whole field as one blend (DESIGN.md: per-footprint fits truncate models), with the
    deconvolved detection image that ``DeconvolveExposureTask`` makes (see the module table).
    """

    name = "scarlet_lite"
    label = "scarlet_lite"
    requires = ("lsst.scarlet.lite",)
    # ScarletDeblendConfig defaults (meas_extensions_scarlet).
    max_iter = 300
    e_rel = 1e-3
    min_iter = 5
    resize = 3
    min_snr = 50.0
    model_psf_sigma = 0.8
    bg_thresh = 1.0
    initial_bg_thresh = 1.0
    weight_footprints = True
    # DeconvolveExposureConfig defaults.
    deconvolve_max_iter = 100
    deconvolve_min_iter = 10
    deconvolve_e_rel = 1e-3

    def setup(self) -> None:
        import lsst.scarlet.lite  # noqa: F401

        self.psf = psf_images(self.conditions, self.bands, self.psf_size)
        fwhm = np.array([self.conditions.psf_fwhm[self.conditions.band_index(b)] for b in self.bands])
        self.psf_sigma = fwhm / self.conditions.pixel_scale / (2 * np.sqrt(2 * np.log(2)))

    def deblend(self, field: FieldInput) -> MethodOutput:
        import lsst.scarlet.lite as scl

        start = time.perf_counter()
        model_psf = scl.utils.integrated_circular_gaussian(sigma=self.model_psf_sigma)
        image = np.asarray(field.image, np.float32)
        variance = np.asarray(field.variance, np.float32)
        # DeconvolveExposureTask, band by band, inside the merged detection footprints.
        footprints = detection_footprints(image, variance, self.psf_sigma)
        deconvolved = np.empty_like(image)
        deconvolve_iter = []
        for b in range(len(self.bands)):
            deconvolved[b], n = deconvolve_band(image[b], variance[b], self.psf[b], model_psf, footprints,
                                                self.deconvolve_max_iter, self.deconvolve_min_iter,
                                                self.deconvolve_e_rel)
            deconvolve_iter.append(n)
        t_deconvolve = time.perf_counter() - start
        # scarletDeblendTask.deblend: inverse-variance weights, FFT convolution.
        weights = np.where(np.isfinite(1.0 / variance), 1.0 / variance, 0.0).astype(np.float32)
        if self.weight_footprints:
            weights *= footprints
        observation = scl.Observation(image, variance, weights, self.psf, model_psf[None], bands=self.bands,
                                      convolution_mode="fft")
        centers = [(int(y), int(x)) for y, x in peaks_to_pixels(field.centers_xy)]
        monotonicity = scl.operators.Monotonicity((101, 101))
        sources = scl.initialization.FactorizedInitialization(
            observation=observation, centers=centers, detect=np.sum(deconvolved, axis=0),
            min_snr=self.min_snr, monotonicity=monotonicity, bg_thresh=self.bg_thresh,
            initial_bg_thresh=self.initial_bg_thresh).sources
        blend = scl.Blend(sources, observation)
        blend.fit_spectra()
        blend.parameterize(functools.partial(scl.component.default_adaprox_parameterization,
                                             noise_rms=observation.noise_rms / 10))
        n_iter, _ = blend.fit(max_iter=self.max_iter, e_rel=self.e_rel, min_iter=self.min_iter,
                              resize=self.resize)
        full = np.zeros((len(centers), *image.shape), np.float32)
        n_null = 0
        for i, source in enumerate(blend.sources):
            if source.is_null:
                n_null += 1
                continue
            model = source.get_model().project(bbox=observation.bbox)
            full[i] = observation.convolve(model, mode="real").data
        seconds = time.perf_counter() - start
        models, yx0 = _rendered_stamps(full, field.centers_xy, self.psf_size)
        return MethodOutput(models=models, models_yx0=yx0, seconds=seconds,
                            info={"n_iter": int(n_iter), "deconvolve_iter": deconvolve_iter,
                                  "deconvolve_seconds": round(t_deconvolve, 3), "null_sources": n_null})

    def describe(self) -> dict:
        import lsst.scarlet.lite as scl

        return {"label": self.label, "version": getattr(scl, "__version__", "unknown"),
                "config": f"as meas_extensions_scarlet: whole field; PSF: BTK Kolmogorov+Airy "
                          f"{self.psf_size}x{self.psf_size} per band; model PSF Gaussian {self.model_psf_sigma} px; "
                          f"detection image: band sum of DeconvolveExposureTask's deconvolution "
                          f"({self.deconvolve_max_iter} iterations, e_rel {self.deconvolve_e_rel}, inside "
                          f"5-sigma PSF-matched detection footprints); FactorizedInitialization("
                          f"min_snr={self.min_snr:g}, monotonicity, bg_thresh={self.bg_thresh:g}); "
                          f"fit_spectra; adaprox; fit({self.max_iter}, e_rel={self.e_rel}, "
                          f"min_iter={self.min_iter}, resize={self.resize}); models convolved to the "
                          f"observed PSF (real space)"}


SCARLET_PYTHON_ENV = "MADNESS_SCARLET_PYTHON"
"""Environment variable naming the interpreter of classic scarlet's own environment."""

SCARLET_VENV = ".venv-scarlet"
"""Default environment of classic scarlet (``scripts/build-peers.sh``), in the project's root or the
current directory."""


def scarlet_python_candidates() -> list[tuple[str, Path]]:
    """Where classic scarlet's interpreter is looked for, in order: ``(where from, path)``."""
    explicit = os.environ.get(SCARLET_PYTHON_ENV)
    if explicit:
        return [(f"${SCARLET_PYTHON_ENV}", Path(explicit))]
    roots = [Path(__file__).resolve().parents[5], Path.cwd()]
    out = []
    for root in dict.fromkeys(roots):
        out.append((f"{SCARLET_VENV} in {root}", root / SCARLET_VENV / "bin" / "python"))
    return out


_SCARLET_PROBE = ("import json, numpy, autograd, scarlet; "
                  "assert hasattr(scarlet, 'initialization') and hasattr(scarlet, 'Blend'), "
                  "'the importable scarlet is not pmelchior/scarlet'; "
                  "print(json.dumps({'scarlet': getattr(scarlet, '__version__', 'unknown'), "
                  "'numpy': numpy.__version__}))")


@functools.lru_cache(maxsize=4)
def _probe_scarlet_python(key: tuple) -> tuple[str | None, str]:
    """``(interpreter, versions)`` of the first candidate that imports scarlet, or ``(None, why)``."""
    reasons = []
    for where, path in key:
        if not path.exists():
            reasons.append(f"{where}: {path} does not exist")
            continue
        try:
            done = subprocess.run([str(path), "-c", _SCARLET_PROBE], capture_output=True, text=True,
                                  timeout=120, cwd=tempfile.gettempdir())
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"{where}: {path} does not run ({exc})")
            continue
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            reasons.append(f"{where}: scarlet does not import with {path} ({last})")
            continue
        try:
            versions = json.loads(done.stdout.strip().splitlines()[-1])["scarlet"]
        except (IndexError, KeyError, TypeError, ValueError):
            reasons.append(f"{where}: {path} ran but did not report scarlet's version")
            continue
        return str(path), f"scarlet {versions}"
    return None, "; ".join(reasons) + " (build it with scripts/build-peers.sh)"


def find_scarlet_python() -> tuple[str | None, str]:
    """Interpreter that runs classic scarlet here and its versions, or `None` and why not."""
    return _probe_scarlet_python(tuple(scarlet_python_candidates()))


class ScarletMethod(DeblendMethod):
    """Classic scarlet with the paper's appendix B settings, in its own environment.

    Classic scarlet needs numpy < 2 and autograd 1.6.2, so it runs in its own interpreter
    (``$MADNESS_SCARLET_PYTHON``, else ``.venv-scarlet`` built by ``scripts/build-peers.sh``):
    `setup` starts ``scarlet_worker.py`` there once, and each field goes to it as an ``.npz``
    and comes back as models. The time is the fit as measured inside that process; the
    memory is this process's plus that process's.
    """

    name = "scarlet"
    label = "scarlet"
    max_iter = 200
    e_rel = 1e-6
    max_components = 2
    min_snr = 50.0
    thresh = 1.0
    model_psf_sigma = 0.6

    @classmethod
    def availability(cls) -> str | None:
        python, why = find_scarlet_python()
        return None if python else why

    def setup(self) -> None:
        python, versions = find_scarlet_python()
        if python is None:
            raise ImportError(versions)
        self.python = python
        self.psf = psf_images(self.conditions, self.bands, self.psf_size)
        self.tmp = tempfile.TemporaryDirectory(prefix="madness-scarlet-")
        worker = Path(__file__).with_name("scarlet_worker.py")
        self.process = subprocess.Popen([python, str(worker)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, bufsize=1, cwd=self.tmp.name)
        hello = json.loads(self.process.stdout.readline() or '{"ready": false, "error": "it exited"}')
        if not hello.get("ready"):
            raise ImportError(f"scarlet's worker did not start with {python}: {hello.get('error')}")
        self.versions = hello
        self._n = 0

    def deblend(self, field: FieldInput) -> MethodOutput:
        start = time.perf_counter()
        self._n += 1
        src = Path(self.tmp.name) / f"in-{self._n}.npz"
        dst = Path(self.tmp.name) / f"out-{self._n}.npz"
        centers_yx = np.asarray(field.centers_xy, np.float64)[:, ::-1]
        np.savez(src, image=field.image, variance=field.variance, psf=self.psf, centers_yx=centers_yx,
                 bands=np.asarray(self.bands), model_psf_sigma=self.model_psf_sigma,
                 max_components=self.max_components, min_snr=self.min_snr, thresh=self.thresh,
                 max_iter=self.max_iter, e_rel=self.e_rel)
        if self.process.poll() is not None:
            raise RuntimeError(f"scarlet's worker exited (code {self.process.returncode})")
        self.process.stdin.write(json.dumps({"input": str(src), "output": str(dst)}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        src.unlink(missing_ok=True)
        if not line:
            raise RuntimeError(f"scarlet's worker died (code {self.process.wait()})")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"scarlet failed: {reply['error']}")
        with np.load(dst) as data:
            full = data["models"]
        dst.unlink(missing_ok=True)
        models, yx0 = _rendered_stamps(full, field.centers_xy, self.psf_size)
        transfer = time.perf_counter() - start - reply["seconds"]
        return MethodOutput(models=models, models_yx0=yx0, seconds=float(reply["seconds"]),
                            extra_rss_before=reply["rss_before"], extra_peak_rss=reply["peak_rss"],
                            info={"n_iter": reply["n_iter"], "skipped": reply["n_skipped"],
                                  "transfer_seconds": round(transfer, 3)})

    def close(self) -> None:
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            try:
                process.stdin.write("\n")
                process.stdin.close()
                process.wait(timeout=30)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                process.kill()
        if getattr(self, "tmp", None) is not None:
            self.tmp.cleanup()

    def describe(self) -> dict:
        versions = getattr(self, "versions", {})
        return {"label": self.label, "version": versions.get("scarlet", "unknown"),
                "interpreter": "own environment (numpy " + str(versions.get("numpy", "?")) + ")",
                "config": f"paper appendix B, as BTK's ScarletDeblender: whole field; PSF: BTK "
                          f"Kolmogorov+Airy {self.psf_size}x{self.psf_size} per band; model PSF Gaussian "
                          f"{self.model_psf_sigma} px; init_all_sources(max_components="
                          f"{self.max_components}, min_snr={self.min_snr:g}, thresh={self.thresh:g}); "
                          f"fit({self.max_iter}, e_rel={self.e_rel}); models rendered as observed, "
                          f"clipped at 0"}


_METHODS = {m.name: m for m in (BlendedMethod, VaeDeblenderMethod, MadnessMethod, Scarlet2Method,
                                ScarletLiteMethod, ScarletMethod)}
METHOD_NAMES = tuple(_METHODS)
"""Every method the evaluation knows, in report order."""

MODEL_METHOD_NAMES = tuple(name for name, cls in _METHODS.items() if issubclass(cls, _MadnessBase))
"""The methods that run MADNESS's model bundle (the only ones a bundle or precision changes)."""


def get_method(name: str) -> type[DeblendMethod]:
    """The adapter class called ``name``."""
    try:
        return _METHODS[name]
    except KeyError:
        raise MadnessValueError(f"Unknown method {name!r}; choose from {list(METHOD_NAMES)}.") from None


def method_availability(names: Sequence[str] = METHOD_NAMES) -> dict[str, str | None]:
    """``{name: None}`` for methods that can run here, ``{name: reason}`` for the absent ones."""
    return {name: get_method(name).availability() for name in names}
