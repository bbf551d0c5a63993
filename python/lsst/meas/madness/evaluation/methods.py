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
                   ``init.pixel_spectrum(correct_psf=True)`` and ``init.compact_morphology()``,
                   positive spectrum (relative step 0.02), unit-interval morphology (1e-3);
                   Adam (scarlet2's ``fit``) for at most 200 steps (paper appendix B),
                   ``e_rel`` 1e-4 (scarlet2's default).
``scarlet_lite``   ``lsst.scarlet.lite`` (Rubin stack only) on the whole field, chi^2
                   initialisation with monotonicity, at most 2 components, min SNR 50, proximal
                   Adam, 200 iterations, ``e_rel`` 1e-4 (its tutorial's settings).
``scarlet``        classic scarlet (``pmelchior/scarlet``), the paper's appendix B settings:
                   ``init_all_sources(max_components=2, min_snr=50)``, 200 iterations,
                   ``e_rel`` 1e-6, Gaussian model PSF (sigma 0.6 px, as BTK's wrapper).
=================  ==========================================================================

Comparators that cannot be imported are not silently dropped: `method_availability` says why,
and the runner reports them as absent.
"""

from __future__ import annotations

__all__ = [
    "METHOD_NAMES",
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
    "psf_images",
]

import abc
import dataclasses
import functools
import importlib
import importlib.util
import time
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from ..errors import MadnessValueError
from .stamps import cutout_stamps

PSF_SIZE = 41
"""Side (pixels) of the PSF images given to the scarlet family (odd, centred)."""

RENDERED_STAMP = 61
"""Side (pixels) of the stamps the scarlet family's rendered models are cut to: a source's
model box plus the PSF's extent, so no flux is cut (their models are zero elsewhere)."""


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
    """

    models: np.ndarray | None
    models_yx0: np.ndarray | None
    seconds: float
    compile_seconds: float = 0.0
    info: dict = dataclasses.field(default_factory=dict)


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
    """

    name: ClassVar[str]
    label: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    """Modules that must import for the method to be available."""

    def __init__(self, bands: Sequence[str], conditions, bundle=None):
        self.bands = tuple(bands)
        self.conditions = conditions
        self.bundle = bundle

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
        from ..engine import MadnessDeblender

        self.deblender = MadnessDeblender.from_bundle(self.bundle)
        if self.deblender.bands != self.bands:
            raise MadnessValueError(f"The model's bands {self.deblender.bands} differ from the fields' "
                                    f"{self.bands}.")

    def describe(self) -> dict:
        meta = self.deblender.metadata if hasattr(self, "deblender") else None
        out = {"label": self.label, "bundle": str(self.bundle) if self.bundle else "packaged default"}
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
        models = d.decode(d.initial_latents(prepared.cutouts))
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
        start = time.perf_counter()
        result = self.deblender.deblend(field.image, field.centers_xy, variance=field.variance)
        seconds = time.perf_counter() - start
        return MethodOutput(models=result.models.astype(np.float32), models_yx0=np.asarray(result.stamp_yx0),
                            seconds=seconds,
                            info={"n_iter": int(np.max(result.n_iter)),
                                  "converged": bool(np.all(result.converged))})

    def describe(self) -> dict:
        s = self.deblender.settings
        return {**super().describe(),
                "config": f"MAP, whole field as one blend; Adam lr {s.learning_rate} x{s.lr_decay} every "
                          f"{s.lr_decay_steps} steps, {s.min_iter}-{s.max_iter} steps, "
                          f"EWMA stop rtol {s.rtol}"}


@functools.lru_cache(maxsize=4)
def _psf_images_cached(survey: str, bands: tuple[str, ...], pixel_scale: float, size: int) -> np.ndarray:
    from btk.survey import get_surveys

    btk_survey = get_surveys(survey)
    images = [btk_survey.get_filter(b).psf.drawImage(nx=size, ny=size, scale=pixel_scale).array
              for b in bands]
    images = np.stack(images).astype(np.float32)
    return images / images.sum(axis=(1, 2), keepdims=True)


def psf_images(conditions, bands: Sequence[str] | None = None, size: int = PSF_SIZE) -> np.ndarray:
    """``(bands, size, size)`` unit-sum PSF images of the simulation (BTK's Kolmogorov + Airy).

    The same GalSim model BTK draws the fields with (SurveyCodex FWHM, mirror diameter and
    obscuration), drawn on the pixel grid and centred on the central pixel.
    """
    bands = tuple(conditions.bands if bands is None else bands)
    if size % 2 == 0:
        raise MadnessValueError(f"PSF images must have an odd side; got {size}.")
    return _psf_images_cached(conditions.survey, bands, float(conditions.pixel_scale), int(size)).copy()


def _rendered_stamps(full_models: np.ndarray, centers_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    stamps, yx0 = cutout_stamps(full_models, centers_xy, RENDERED_STAMP)
    return stamps.astype(np.float32), yx0


class Scarlet2Method(DeblendMethod):
    """scarlet2 (JAX) with known centres and the simulation's PSFs; see the module table."""

    name = "scarlet2"
    label = "scarlet2"
    requires = ("scarlet2", "optax", "numpyro")
    max_iter = 200
    e_rel = 1e-4
    # Relative Adam step sizes. The scarlet2 tutorial's 0.05 for the spectrum let bright
    # neighbours take over fainter galaxies; 0.02 halved the mean abs(dF/F) in r on 6 TestFields
    # (0.077 -> 0.034, medians equal); 0.01 on the morphology or 400 steps did not help.
    spectrum_step = 0.02
    morphology_step = 1e-3

    def setup(self) -> None:
        import jax  # noqa: F401
        import scarlet2

        scarlet2.set_validation(False)
        self.psf = psf_images(self.conditions, self.bands)

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
                sc2.Source(center, spectrum, sc2.init.compact_morphology())
        spec_step = functools.partial(sc2.relative_step, factor=self.spectrum_step)
        morph_step = functools.partial(sc2.relative_step, factor=self.morphology_step)
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
        models, yx0 = _rendered_stamps(full, field.centers_xy)
        return MethodOutput(models=models, models_yx0=yx0, seconds=seconds, compile_seconds=compile_seconds)

    def describe(self) -> dict:
        import scarlet2

        return {"label": self.label, "version": getattr(scarlet2, "__version__", "unknown"),
                "config": f"known centres; PSF: BTK Kolmogorov+Airy {PSF_SIZE}x{PSF_SIZE} per band; "
                          f"model PSF Gaussian 0.7 px; init pixel_spectrum(correct_psf=True) + "
                          f"compact_morphology(); "
                          f"fit(max_iter={self.max_iter}, e_rel={self.e_rel}), steps spectrum "
                          f"{self.spectrum_step} / morphology {self.morphology_step} (relative)"}


class ScarletLiteMethod(DeblendMethod):
    """``lsst.scarlet.lite`` on the whole field, with known centres; see the module table."""

    name = "scarlet_lite"
    label = "scarlet_lite"
    requires = ("lsst.scarlet.lite",)
    max_iter = 200
    e_rel = 1e-4
    min_snr = 50.0

    def setup(self) -> None:
        import lsst.scarlet.lite  # noqa: F401

        self.psf = psf_images(self.conditions, self.bands)

    def deblend(self, field: FieldInput) -> MethodOutput:
        import lsst.scarlet.lite as scl
        from lsst.scarlet.lite.utils import integrated_circular_gaussian

        start = time.perf_counter()
        model_psf = integrated_circular_gaussian(sigma=0.8)
        observation = scl.Observation(field.image, field.variance, 1.0 / field.variance, self.psf,
                                      model_psf[None], bands=self.bands)
        centers = [(int(round(y)), int(round(x))) for x, y in field.centers_xy]
        monotonicity = scl.operators.Monotonicity((101, 101))
        init = scl.initialization.FactorizedChi2Initialization(observation, centers, min_snr=self.min_snr,
                                                                monotonicity=monotonicity)
        blend = scl.Blend(init.sources, observation).fit_spectra()
        blend.parameterize(functools.partial(scl.component.default_adaprox_parameterization,
                                             noise_rms=observation.noise_rms / 10))
        n_iter, _ = blend.fit(self.max_iter, e_rel=self.e_rel, min_iter=15, resize=10)
        full = np.zeros((len(centers), *field.image.shape), np.float32)
        for i, source in enumerate(blend.sources):
            if source.is_null:
                continue
            model = source.get_model().project(bbox=observation.bbox)
            full[i] = observation.convolve(model, mode="real").data
        seconds = time.perf_counter() - start
        models, yx0 = _rendered_stamps(full, field.centers_xy)
        return MethodOutput(models=models, models_yx0=yx0, seconds=seconds, info={"n_iter": int(n_iter)})

    def describe(self) -> dict:
        return {"label": self.label,
                "config": f"whole field; FactorizedChi2Initialization(min_snr={self.min_snr}, monotonicity); "
                          f"fit_spectra; adaprox; fit({self.max_iter}, e_rel={self.e_rel}, min_iter=15, "
                          f"resize=10); model PSF Gaussian 0.8 px"}


class ScarletMethod(DeblendMethod):
    """Classic scarlet with the paper's appendix B settings; see the module table."""

    name = "scarlet"
    label = "scarlet"
    requires = ("scarlet",)
    max_iter = 200
    e_rel = 1e-6

    def setup(self) -> None:
        import scarlet

        if not hasattr(scarlet, "initialization") or not hasattr(scarlet, "Blend"):
            raise ImportError("the importable 'scarlet' module is not pmelchior/scarlet")
        self.psf = psf_images(self.conditions, self.bands)

    def deblend(self, field: FieldInput) -> MethodOutput:
        import scarlet

        start = time.perf_counter()
        nb = len(self.bands)
        frame = scarlet.Frame(field.image.shape, psf=scarlet.GaussianPSF(sigma=(0.6,) * nb),
                              channels=list(self.bands))
        observation = scarlet.Observation(field.image, psf=scarlet.ImagePSF(self.psf),
                                          weights=1.0 / field.variance, channels=list(self.bands))
        observation = observation.match(frame)
        centers = [(float(y), float(x)) for x, y in field.centers_xy]
        sources, _ = scarlet.initialization.init_all_sources(
            frame, centers, observation, max_components=2, min_snr=50, thresh=1, fallback=True, silent=True,
            set_spectra=True)
        blend = scarlet.Blend(sources, observation)
        blend.fit(self.max_iter, e_rel=self.e_rel)
        full = np.stack([observation.render(s.get_model(frame=frame)) for s in sources]).astype(np.float32)
        seconds = time.perf_counter() - start
        models, yx0 = _rendered_stamps(full, field.centers_xy)
        return MethodOutput(models=models, models_yx0=yx0, seconds=seconds)

    def describe(self) -> dict:
        return {"label": self.label,
                "config": f"paper appendix B: init_all_sources(max_components=2, min_snr=50, thresh=1), "
                          f"fit({self.max_iter}, e_rel={self.e_rel}); model PSF Gaussian 0.6 px"}


_METHODS = {m.name: m for m in (BlendedMethod, VaeDeblenderMethod, MadnessMethod, Scarlet2Method,
                                ScarletLiteMethod, ScarletMethod)}
METHOD_NAMES = tuple(_METHODS)
"""Every method the evaluation knows, in report order."""


def get_method(name: str) -> type[DeblendMethod]:
    """The adapter class called ``name``."""
    try:
        return _METHODS[name]
    except KeyError:
        raise MadnessValueError(f"Unknown method {name!r}; choose from {list(METHOD_NAMES)}.") from None


def method_availability(names: Sequence[str] = METHOD_NAMES) -> dict[str, str | None]:
    """``{name: None}`` for methods that can run here, ``{name: reason}`` for the absent ones."""
    return {name: get_method(name).availability() for name in names}
