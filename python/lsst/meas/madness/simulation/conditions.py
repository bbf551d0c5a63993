"""LSST observing conditions (paper table 1) and the catalog-level SNR of appendix A.

Every number comes from SurveyCodex (``surveycodex.get_survey("LSST")``): 10-year exposure
time per band, zero point, sky brightness, PSF FWHM, 0.2"/pixel. The gain is 1 (electrons are
counts), as in the paper's BTK simulations.
"""

from __future__ import annotations

__all__ = ["LsstConditions", "effective_fwhm", "snr_appendix_a"]

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..errors import MadnessValueError


@dataclasses.dataclass(frozen=True)
class LsstConditions:
    """Per-band survey conditions used to turn magnitudes into electrons and to set the noise.

    Parameters
    ----------
    bands : `tuple` [`str`]
        Band names, in channel order.
    pixel_scale : `float`
        Arcseconds per pixel.
    psf_fwhm : `tuple` [`float`]
        PSF FWHM per band, arcseconds.
    zeropoint : `tuple` [`float`]
        AB magnitude of a source giving 1 electron per second, per band.
    exposure_time : `tuple` [`float`]
        Total (10-year) exposure time per band, seconds.
    sky_brightness : `tuple` [`float`]
        Sky surface brightness per band, AB magnitudes per square arcsecond.
    survey : `str`
        Name of the survey in SurveyCodex.
    """

    bands: tuple[str, ...]
    pixel_scale: float
    psf_fwhm: tuple[float, ...]
    zeropoint: tuple[float, ...]
    exposure_time: tuple[float, ...]
    sky_brightness: tuple[float, ...]
    survey: str = "LSST"

    def __post_init__(self):
        n = len(self.bands)
        for name in ("psf_fwhm", "zeropoint", "exposure_time", "sky_brightness"):
            if len(getattr(self, name)) != n:
                raise MadnessValueError(f"LsstConditions.{name} has {len(getattr(self, name))} values "
                                        f"for {n} bands {self.bands}.")

    @classmethod
    def from_surveycodex(cls, survey: str = "LSST", bands: Sequence[str] | None = None) -> "LsstConditions":
        """Conditions of ``survey`` from SurveyCodex, for ``bands`` (default: all, in its order)."""
        import surveycodex

        codex = surveycodex.get_survey(survey)
        available = tuple(codex.available_filters)
        bands = available if bands is None else tuple(bands)
        missing = [b for b in bands if b not in available]
        if missing:
            raise MadnessValueError(f"Bands {missing} are not in SurveyCodex's {survey} filters {available}.")
        filters = [codex.get_filter(b) for b in bands]
        return cls(
            bands=bands,
            pixel_scale=float(codex.pixel_scale.to_value("arcsec")),
            psf_fwhm=tuple(float(f.psf_fwhm.to_value("arcsec")) for f in filters),
            zeropoint=tuple(float(f.zeropoint.value) for f in filters),
            exposure_time=tuple(float(f.full_exposure_time.to_value("s")) for f in filters),
            sky_brightness=tuple(float(f.sky_brightness.value) for f in filters),
            survey=survey,
        )

    def band_index(self, band: str) -> int:
        """Channel index of ``band``; a clear error if it is not one of `bands`."""
        try:
            return self.bands.index(band)
        except ValueError:
            raise MadnessValueError(f"Band {band!r} is not one of {self.bands}.") from None

    def counts(self, magnitude, band: str) -> np.ndarray:
        """Total electrons of a source of AB ``magnitude`` over the full exposure in ``band``.

        Same formula as ``surveycodex.utilities.mag2counts`` but vectorised and not truncated to
        an integer.
        """
        i = self.band_index(band)
        mag = np.asarray(magnitude, dtype=np.float64)
        return 10.0 ** (-0.4 * (mag - self.zeropoint[i])) * self.exposure_time[i]

    def magnitude(self, counts, band: str) -> np.ndarray:
        """AB magnitude of a source giving ``counts`` electrons in ``band`` (inverse of `counts`)."""
        i = self.band_index(band)
        c = np.asarray(counts, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.zeropoint[i] - 2.5 * np.log10(c / self.exposure_time[i])

    def sky_level(self, band: str) -> float:
        """Mean sky electrons per pixel in ``band`` (the variance of the sky noise, gain 1)."""
        i = self.band_index(band)
        return float(self.counts(self.sky_brightness[i], band) * self.pixel_scale**2)

    @property
    def sky_levels(self) -> np.ndarray:
        """`sky_level` of every band, in band order."""
        return np.array([self.sky_level(b) for b in self.bands])

    def snr(self, magnitude, a_hlr, b_hlr, band: str = "r") -> np.ndarray:
        """Catalog-level SNR of appendix A in ``band``; see `snr_appendix_a`."""
        i = self.band_index(band)
        return snr_appendix_a(self.counts(magnitude, band), self.sky_level(band), self.psf_fwhm[i],
                              a_hlr, b_hlr, self.pixel_scale)

    def as_dict(self) -> dict:
        """JSON-friendly per-band table (paper table 1 plus the derived sky level)."""
        return {
            "survey": self.survey,
            "pixel_scale_arcsec": self.pixel_scale,
            "gain": 1.0,
            "bands": {
                b: {
                    "psf_fwhm_arcsec": self.psf_fwhm[i],
                    "zeropoint_mag": self.zeropoint[i],
                    "exposure_time_s": self.exposure_time[i],
                    "sky_brightness_mag_arcsec2": self.sky_brightness[i],
                    "sky_electrons_per_pixel": self.sky_level(b),
                }
                for i, b in enumerate(self.bands)
            },
        }


def effective_fwhm(psf_fwhm: float, a_hlr, b_hlr) -> np.ndarray:
    """FWHM_eff of eq. 26: PSF and galaxy FWHM added in quadrature, FWHM_gal = 2 sqrt(a b).

    ``a_hlr``/``b_hlr`` are the half-light semi-axes (arcsec) of the larger component.
    """
    fwhm_gal = 2.0 * np.sqrt(np.asarray(a_hlr, dtype=np.float64) * np.asarray(b_hlr, dtype=np.float64))
    return np.sqrt(psf_fwhm**2 + fwhm_gal**2)


def snr_appendix_a(counts, sky_level: float, psf_fwhm: float, a_hlr, b_hlr,
                   pixel_scale: float = 0.2, gain: float = 1.0) -> np.ndarray:
    """SNR = C / sqrt(C + (B/g) n_eff) with n_eff = 2.266 (FWHM_eff / P)^2 (paper eqs. 24-26).

    Parameters
    ----------
    counts : array-like
        Total source electrons ``C``.
    sky_level : `float`
        Sky electrons per pixel ``B``.
    psf_fwhm : `float`
        PSF FWHM, arcsec.
    a_hlr, b_hlr : array-like
        Half-light semi-major and semi-minor axes of the galaxy's larger component, arcsec.
    pixel_scale : `float`
        Arcsec per pixel ``P``.
    gain : `float`
        Electrons per ADU ``g``; the instrumental noise term is dropped as in the paper.
    """
    c = np.asarray(counts, dtype=np.float64)
    n_eff = 2.266 * (effective_fwhm(psf_fwhm, a_hlr, b_hlr) / pixel_scale) ** 2
    return c / np.sqrt(c + (sky_level / gain) * n_eff)
