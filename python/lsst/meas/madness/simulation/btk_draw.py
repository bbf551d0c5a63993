"""The BTK glue: draw planned blends of CatSim galaxies with BTK, GalSim and SurveyCodex.

A *plan* says which catalogue rows go in a blend and where (integer or sub-pixel offsets from
the stamp centre); BTK draws it. Planning is ours (seeded numpy, see `plans`), so which galaxy
ends up in which shard never depends on BTK's own sampling or on the number of workers. BTK
draws every galaxy with GalSim (bulge + disk + AGN, convolved with the survey's Kolmogorov +
Airy PSF per band) and adds Poisson noise from the source and the 10-year sky level, sky
subtracted, gain 1.
"""

from __future__ import annotations

__all__ = ["BlendPlan", "draw_planned_blends", "lsst_survey", "stamp_arcsec"]

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..errors import MadnessValueError


@dataclasses.dataclass(frozen=True)
class BlendPlan:
    """Where each galaxy of one blend goes.

    Parameters
    ----------
    rows : `numpy.ndarray`
        Row indices into the catalogue handed to `draw_planned_blends`.
    dx, dy : `numpy.ndarray`
        Offsets of each galaxy's centre from the stamp centre, in pixels (x along columns).
    """

    rows: np.ndarray
    dx: np.ndarray
    dy: np.ndarray

    def __post_init__(self):
        if not (len(self.rows) == len(self.dx) == len(self.dy)):
            raise MadnessValueError("BlendPlan rows, dx and dy must have the same length.")

    def __len__(self) -> int:
        return len(self.rows)


def stamp_arcsec(pixels: int, pixel_scale: float) -> float:
    """BTK stamp size in arcsec that gives exactly ``pixels`` pixels.

    BTK computes ``int(stamp_size / pixel_scale)``; ``205 * 0.2 / 0.2`` is 204.99999999999997 in
    floating point, so a quarter pixel is added to land safely inside the integer.
    """
    return (int(pixels) + 0.25) * float(pixel_scale)


def lsst_survey(bands: Sequence[str] | None = None):
    """BTK's LSST survey (SurveyCodex parameters, Kolmogorov + Airy PSF per band).

    ``bands``, when given, must equal the survey's own band order: BTK draws every band of the
    survey, in its order, and the datasets store them in that order.
    """
    import btk

    survey = btk.survey.get_surveys("LSST")
    available = tuple(survey.available_filters)
    if bands is not None and tuple(bands) != available:
        raise MadnessValueError(f"BTK's LSST survey draws bands {available}; {tuple(bands)} was asked for.")
    return survey


class _ScalarSeed:
    """Hands GalSim a Python int where BTK passes a size-1 seed array.

    BTK 1.0.9 seeds ``galsim.BaseDeviate`` with ``SeedSequence.generate_state(1)``, a size-1
    array, which GalSim refuses with numpy >= 2.4. Only ``generate_state(1)`` is used there.
    """

    def __init__(self, seedseq: np.random.SeedSequence):
        self._seedseq = seedseq

    def generate_state(self, n_words, dtype=np.uint32):
        state = self._seedseq.generate_state(n_words, dtype)
        return int(state[0]) if n_words == 1 else state


def _generator_class():
    """`btk.draw_blends.CatsimGenerator` with the seed hand-off fixed (imported lazily)."""
    import btk

    class _CatsimGenerator(btk.draw_blends.CatsimGenerator):
        def render_blend(self, blend_catalog, psf, filt, survey, seedseq_blend):
            return super().render_blend(blend_catalog, psf, filt, survey, _ScalarSeed(seedseq_blend))

    return _CatsimGenerator


def _planned_sampling(table, plans: Sequence[BlendPlan], stamp_size_arcsec: float, pixel_scale: float):
    """A BTK sampling function that returns the planned blends, in order."""
    import btk

    max_number = max(len(p) for p in plans)
    min_number = min(len(p) for p in plans)

    class _PlannedSampling(btk.sampling_functions.SamplingFunction):
        def __init__(self):
            super().__init__(stamp_size=stamp_size_arcsec, max_number=max_number, min_number=min_number,
                             seed=0)
            self._next = 0

        def __call__(self, _table):
            plan = plans[self._next]
            self._next += 1
            blend = table[np.asarray(plan.rows)]
            blend["ra"] = np.asarray(plan.dx, dtype=np.float64) * pixel_scale
            blend["dec"] = np.asarray(plan.dy, dtype=np.float64) * pixel_scale
            return blend

    return _PlannedSampling()


def draw_planned_blends(table, plans: Sequence[BlendPlan], stamp_pixels: int, seed: int,
                        noise: str = "all", survey=None):
    """Draw ``plans`` with BTK: noisy blends, noiseless isolated galaxies, blend catalogues.

    Parameters
    ----------
    table : `astropy.table.Table`
        CatSim-format catalogue; plans index its rows.
    plans : sequence of `BlendPlan`
        The blends to draw (one BTK batch).
    stamp_pixels : `int`
        Side of the drawn stamp in pixels (odd, so that the centre is a pixel centre).
    seed : `int`
        Seed of BTK's noise draws for this batch.
    noise : `str`
        BTK's ``add_noise``: ``"all"`` (source + sky Poisson noise), ``"background"``,
        ``"galaxy"`` or ``"none"``.
    survey : BTK survey, optional
        Default `lsst_survey`.

    Returns
    -------
    blends : `numpy.ndarray`
        ``(n_plans, bands, S, S)`` float32, electrons, sky subtracted.
    isolated : `numpy.ndarray`
        ``(n_plans, max_galaxies, bands, S, S)`` float32 noiseless galaxies (zeros past each
        blend's own count).
    catalogs : `list` [`astropy.table.Table`]
        Per blend, the catalogue rows with BTK's ``x_peak``/``y_peak`` (0-based pixels).
    """
    import btk

    if not plans:
        raise MadnessValueError("draw_planned_blends needs at least one plan.")
    if int(stamp_pixels) % 2 != 1:
        raise MadnessValueError(f"stamp_pixels must be odd (a pixel at the centre), got {stamp_pixels}.")
    survey = lsst_survey() if survey is None else survey
    pixel_scale = float(survey.pixel_scale.to_value("arcsec"))
    stamp = stamp_arcsec(stamp_pixels, pixel_scale)
    half = (stamp_pixels - 1) / 2
    for plan in plans:
        if len(plan) == 0:
            raise MadnessValueError("A blend plan has no galaxy.")
        if np.any(np.abs(plan.dx) > half) or np.any(np.abs(plan.dy) > half):
            raise MadnessValueError(f"A planned galaxy lies outside the {stamp_pixels}-pixel stamp.")
    sampling = _planned_sampling(table, plans, stamp, pixel_scale)
    generator = _generator_class()(
        btk.catalog.CatsimCatalog(table[:0]), sampling, survey, batch_size=len(plans), njobs=1,
        add_noise=noise, seed=int(seed),
    )
    batch = next(generator)
    if batch.blend_images.shape[-1] != stamp_pixels:
        raise MadnessValueError(f"BTK drew {batch.blend_images.shape[-1]}-pixel stamps, not {stamp_pixels}.")
    return (batch.blend_images.astype(np.float32), batch.isolated_images.astype(np.float32),
            list(batch.catalog_list))
