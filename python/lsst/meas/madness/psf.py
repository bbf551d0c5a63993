"""The survey PSF as unit-sum images: the PSF a model's decoder learnt to draw its galaxies with.

A MADNESS decoder draws galaxies already convolved with the PSF of the survey its training stamps
were simulated for (BTK's Kolmogorov + Airy model of SurveyCodex's conditions). Its stamps cut
that PSF's wings; the engine paints them back from a PSF image (`lsst.meas.madness.engine.wings`).
This module draws that image, once per survey, bands, pixel scale and size, for the evaluation
(every method is given the same PSF) and for the tasks (the pip-only coadds carry no PSF; the
model's own is the one its stamps are convolved with).
"""

from __future__ import annotations

__all__ = ["check_psf_size", "model_psf_images", "survey_psf_images"]

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import MadnessValueError


def check_psf_size(size) -> int:
    """``size`` as an int, or a clear error unless it is an odd side of at least 3 pixels."""
    try:
        side = int(size)
    except (TypeError, ValueError):
        raise MadnessValueError(f"PSF images must have an odd side of at least 3 pixels; got {size!r}.") from None
    if side != size or side < 3 or side % 2 == 0:
        raise MadnessValueError(f"PSF images must have an odd side of at least 3 pixels; got {size}.")
    return side


@functools.lru_cache(maxsize=8)
def _survey_psf_cached(survey: str, bands: tuple[str, ...], pixel_scale: float, size: int) -> np.ndarray:
    from btk.survey import get_surveys

    btk_survey = get_surveys(survey)
    images = []
    for band in bands:
        filt = btk_survey.get_filter(band)
        # BTK builds some surveys' PSFs lazily from the survey and filter.
        psf = filt.psf(btk_survey, filt) if callable(filt.psf) else filt.psf
        images.append(psf.drawImage(nx=size, ny=size, scale=pixel_scale).array)
    images = np.stack(images).astype(np.float32)
    return images / images.sum(axis=(1, 2), keepdims=True)


def survey_psf_images(survey: str, bands: Sequence[str], pixel_scale: float, size: int) -> np.ndarray:
    """``(bands, size, size)`` unit-sum PSF images of a survey's bands (BTK's GalSim model).

    Parameters
    ----------
    survey : `str`
        Survey name known to BTK (``"LSST"``).
    bands : sequence of `str`
        Bands, in the order of the planes returned.
    pixel_scale : `float`
        Arcseconds per pixel.
    size : `int`
        Odd side of the images; the PSF is centred on the central pixel.

    Returns
    -------
    psf : `numpy.ndarray`
        float32, each band summing to 1 (a copy: the cache is not exposed).

    Raises
    ------
    MadnessValueError
        An even or too small ``size``, a band the survey does not have, a non-positive scale.
    """
    size = check_psf_size(size)
    if not float(pixel_scale) > 0:
        raise MadnessValueError(f"The pixel scale must be positive; got {pixel_scale}.")
    try:
        images = _survey_psf_cached(str(survey), tuple(bands), float(pixel_scale), size)
    except (KeyError, ValueError) as error:
        raise MadnessValueError(f"No PSF for survey {survey!r}, bands {tuple(bands)}: {error}") from error
    return images.copy()


def model_psf_images(metadata: Any, size: int) -> np.ndarray:
    """The PSF a model was trained with, ``(bands, size, size)`` in its band order.

    Parameters
    ----------
    metadata : `lsst.meas.madness.io.BundleMetadata`
        The bundle's metadata (``MadnessDeblender.metadata``): its survey, bands and pixel scale.
    size : `int`
        Odd side of the images.

    Raises
    ------
    MadnessValueError
        No metadata, or no survey in it.
    """
    if metadata is None or not getattr(metadata, "survey", ""):
        raise MadnessValueError(
            "The model records no survey, so the PSF it was trained with is unknown; "
            "switch psfWings off or load a bundle with its metadata."
        )
    return survey_psf_images(metadata.survey, metadata.bands, metadata.pixel_scale, size)
