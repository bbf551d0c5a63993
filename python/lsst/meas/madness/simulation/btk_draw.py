"""The BTK glue: draw planned blends of CatSim galaxies with BTK, GalSim and SurveyCodex.

A *plan* says which catalogue rows go in a blend and where (integer or sub-pixel offsets from
the stamp centre); BTK draws it. Planning is ours (seeded numpy, see `plans`), so which galaxy
ends up in which shard never depends on BTK's own sampling or on the number of workers. BTK
draws every galaxy with GalSim (bulge + disk + AGN, convolved with the survey's Kolmogorov +
Airy PSF per band) and adds Poisson noise from the source and the 10-year sky level, sky
subtracted, gain 1.
"""

from __future__ import annotations

__all__ = [
    "BlendPlan",
    "draw_planned_blends",
    "draw_galaxy_stamps",
    "add_btk_noise",
    "lsst_survey",
    "stamp_arcsec",
]

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


KNOT_COUNT = 20
"""Knots per disc of `knotty_galaxy`."""


def knotty_galaxy(entry, filt, survey, knots: float):
    """BTK's CatSim galaxy with a fraction ``knots`` of its disc's flux drawn as star-forming knots.

    The knots are GalSim's `galsim.RandomKnots` (`KNOT_COUNT` points drawn from the disc's own
    exponential profile, the disc's half-light radius and shear): light that is not symmetric
    under a rotation by 180 degrees, as real discs are not, where every CatSim bulge and disc is.
    Their positions depend on the galaxy alone (a seed from its catalogue row), so every band and
    its isolated truth image hold the same knots.

    Parameters
    ----------
    entry : `astropy.table.Row`
        CatSim-format catalogue row.
    filt, survey
        BTK filter and survey.
    knots : `float`
        Fraction of the disc's flux in knots, in [0, 1].

    Returns
    -------
    galaxy : `galsim.GSObject`
        The galaxy before the PSF.
    """
    import galsim
    from btk.draw_blends import get_catsim_galaxy

    if not 0.0 <= knots <= 1.0:
        raise MadnessValueError(f"knots is a fraction of the disc's flux in [0, 1], not {knots}.")
    galaxy = get_catsim_galaxy(entry, filt, survey)
    if knots == 0.0 or entry["fluxnorm_disk"] <= 0:
        return galaxy
    total_norm = entry["fluxnorm_disk"] + entry["fluxnorm_bulge"] + entry["fluxnorm_agn"]
    disc_share = entry["fluxnorm_disk"] / total_norm
    disc_flux = knots * disc_share * galaxy.flux
    # A seed from the galaxy's shape and magnitudes: the same in every band and call.
    key = np.array([entry["a_d"], entry["b_d"], entry["pa_disk"], entry["r_ab"], entry["redshift"]], np.float64)
    seed = int(np.random.SeedSequence(np.frombuffer(key.tobytes(), np.uint32).tolist()).generate_state(1)[0])
    hlr = float(np.sqrt(entry["a_d"] * entry["b_d"]))
    shear = dict(q=float(entry["b_d"] / entry["a_d"]), beta=float(entry["pa_disk"]) * galsim.degrees)
    smooth = galsim.Exponential(flux=disc_flux, half_light_radius=hlr).shear(**shear)
    knotted = galsim.RandomKnots(KNOT_COUNT, half_light_radius=hlr, flux=disc_flux,
                                 rng=galsim.BaseDeviate(seed)).shear(**shear)
    # The knots replace that share of the smooth disc: the galaxy's total flux is unchanged.
    return galsim.Add([galaxy, -1.0 * smooth, knotted])


def _generator_class(knots: float = 0.0):
    """`btk.draw_blends.CatsimGenerator` with the seed hand-off fixed (imported lazily), and with
    `knotty_galaxy` discs where ``knots`` > 0."""
    import btk
    import galsim

    class _CatsimGenerator(btk.draw_blends.CatsimGenerator):
        def render_blend(self, blend_catalog, psf, filt, survey, seedseq_blend):
            return super().render_blend(blend_catalog, psf, filt, survey, _ScalarSeed(seedseq_blend))

        if knots > 0:
            def render_single(self, entry, filt, psf, survey):
                # BTK's render_single_catsim_galaxy with `knotty_galaxy` for its galaxy.
                try:
                    galaxy = knotty_galaxy(entry, filt, survey, knots)
                except btk.draw_blends.SourceNotVisible:
                    entry["not_drawn_" + filt.name] = 1
                    return None
                galaxy = galaxy.rotate(galsim.Angle(entry["btk_rotation"], unit=galsim.degrees))
                if self.apply_shear:
                    galaxy = galaxy.shear(g1=entry["g1"], g2=entry["g2"])
                drawn = galsim.Convolve(galaxy, psf).shift(entry["ra"], entry["dec"])
                slen = self._get_pix_stamp_size(survey)
                return drawn.drawImage(nx=slen, ny=slen, scale=survey.pixel_scale.to_value("arcsec"))

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
                        noise: str = "all", survey=None, knots: float = 0.0):
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
    knots : `float`
        Fraction of each disc's flux drawn as star-forming knots (`knotty_galaxy`); 0: BTK's
        galaxies as they are.

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
    if not 0.0 <= knots <= 1.0:
        raise MadnessValueError(f"knots is a fraction of the disc's flux in [0, 1], not {knots}.")
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
    generator = _generator_class(knots)(
        btk.catalog.CatsimCatalog(table[:0]), sampling, survey, batch_size=len(plans), njobs=1,
        add_noise=noise, seed=int(seed),
    )
    batch = next(generator)
    if batch.blend_images.shape[-1] != stamp_pixels:
        raise MadnessValueError(f"BTK drew {batch.blend_images.shape[-1]}-pixel stamps, not {stamp_pixels}.")
    return (batch.blend_images.astype(np.float32), batch.isolated_images.astype(np.float32),
            list(batch.catalog_list))


def _survey_psfs(survey) -> list:
    """The PSF of each band of ``survey`` (a GalSim object), as BTK's generator builds them."""
    psfs = []
    for band in survey.available_filters:
        filt = survey.get_filter(band)
        psfs.append(filt.psf(survey, filt) if callable(filt.psf) else filt.psf)
    return psfs


def draw_galaxy_stamps(table, rows, centers_xy: np.ndarray, *, survey=None,
                       min_size: int = 45, knots: float = 0.0) -> tuple[list[np.ndarray], np.ndarray]:
    """Draw each galaxy alone on its own stamp, the way BTK draws it in a blend.

    Every galaxy is BTK's CatSim profile (bulge + disk + AGN, `btk.draw_blends.get_catsim_galaxy`)
    convolved with the survey's PSF of each band and drawn by BTK's own
    ``render_single_catsim_galaxy``, only on a stamp centred on the galaxy's pixel instead of
    the whole image, so memory scales with the galaxies' sizes, not with ``n * image area``.

    Parameters
    ----------
    table : `astropy.table.Table`
        CatSim-format catalogue.
    rows : `numpy.ndarray`
        ``(n,)`` row of each galaxy in ``table``.
    centers_xy : `numpy.ndarray`
        ``(n, 2)`` float ``(x, y)`` centre of each galaxy, pixels, in the frame of the image
        the stamps will be pasted into (pixel ``(iy, ix)`` covers ``[i - 0.5, i + 0.5)``).
    survey : BTK survey, optional
        Default `lsst_survey`.
    min_size : `int`
        Smallest stamp side, pixels.
    knots : `float`
        Fraction of each disc's flux drawn as star-forming knots (`knotty_galaxy`); 0: BTK's
        smooth profiles. The stamp's size is the smooth galaxy's (the knots follow its disc).

    Returns
    -------
    stamps : `list` [`numpy.ndarray`]
        Per galaxy, a ``(bands, S, S)`` float32 noiseless stamp, electrons per pixel; ``S`` is
        odd, at least ``min_size`` and at least GalSim's ``getGoodImageSize`` of the galaxy in
        every band (which holds all but ~0.5% of its flux: GalSim's ``folding_threshold``).
        A galaxy with no flux in a band (BTK's ``SourceNotVisible``) is zero there.
    yx0 : `numpy.ndarray`
        ``(n, 2)`` int64 ``(y0, x0)`` of each stamp's first pixel in the image frame
        (`lsst.meas.madness.engine.geometry.stamp_origins`): the stamp is centred on the
        galaxy's pixel and the sub-pixel remainder is drawn as a GalSim shift.
    """
    import btk
    import galsim
    from btk.draw_blends import get_catsim_galaxy, render_single_catsim_galaxy

    from ..engine.geometry import peaks_to_pixels, stamp_origins, subpixel_shifts

    survey = lsst_survey() if survey is None else survey
    pixel_scale = float(survey.pixel_scale.to_value("arcsec"))
    psfs = _survey_psfs(survey)
    filters = [survey.get_filter(band) for band in survey.available_filters]
    centers_xy = np.asarray(centers_xy, dtype=np.float64).reshape(-1, 2)
    rows = np.asarray(rows, dtype=np.int64)
    if not 0.0 <= knots <= 1.0:
        raise MadnessValueError(f"knots is a fraction of the disc's flux in [0, 1], not {knots}.")
    if len(rows) != len(centers_xy):
        raise MadnessValueError(f"draw_galaxy_stamps: {len(rows)} rows but {len(centers_xy)} centres.")
    pixels_yx = peaks_to_pixels(centers_xy)
    shifts_yx = subpixel_shifts(centers_xy)
    stamps, origins = [], []
    for k, row in enumerate(rows):
        entry = table[int(row) : int(row) + 1].copy()
        entry["btk_rotation"] = [0.0]
        # BTK's shift of the galaxy from the stamp centre, arcsec (x -> ra, y -> dec).
        entry["ra"] = [shifts_yx[k, 1] * pixel_scale]
        entry["dec"] = [shifts_yx[k, 0] * pixel_scale]
        entry = entry[0]
        size = int(min_size)
        for filt, psf in zip(filters, psfs):
            try:
                galaxy = get_catsim_galaxy(entry, filt, survey)
            except btk.draw_blends.SourceNotVisible:
                continue
            size = max(size, galsim.Convolve(galaxy, psf).getGoodImageSize(pixel_scale))
        size += 1 - size % 2  # odd: the galaxy's pixel is the centre pixel
        stamp = np.zeros((len(filters), size, size), np.float32)
        for b, (filt, psf) in enumerate(zip(filters, psfs)):
            try:
                if knots > 0:
                    # BTK's render_single_catsim_galaxy with `knotty_galaxy` for its galaxy.
                    drawn = galsim.Convolve(knotty_galaxy(entry, filt, survey, knots), psf)
                    stamp[b] = drawn.shift(entry["ra"], entry["dec"]).drawImage(
                        nx=size, ny=size, scale=pixel_scale).array
                else:
                    stamp[b] = render_single_catsim_galaxy(entry, filt, survey, psf, size).array
            except btk.draw_blends.SourceNotVisible:
                pass
        stamps.append(stamp)
        origins.append(stamp_origins(pixels_yx[k : k + 1], size)[0])
    return stamps, np.asarray(origins, dtype=np.int64).reshape(-1, 2)


def add_btk_noise(noiseless: np.ndarray, seed: int, *, survey=None, noise: str = "all") -> np.ndarray:
    """Noisy image from a noiseless one, with BTK 1.0.9's noise model and seeding.

    As BTK's ``DrawBlendsGenerator`` does for the first blend of a batch of one drawn with
    ``seed``: per band, Poisson noise of the sources (GalSim ``PoissonNoise``, no sky), then
    the sky-subtracted Poisson noise of the survey's mean sky level, each from a
    ``galsim.BaseDeviate`` seeded from the band's spawned `numpy.random.SeedSequence`.

    Parameters
    ----------
    noiseless : `numpy.ndarray`
        ``(bands, H, W)`` noiseless image, electrons per pixel (the survey's bands, in order).
    seed : `int`
        BTK's batch seed.
    survey : BTK survey, optional
        Default `lsst_survey`.
    noise : `str`
        ``"all"``, ``"background"``, ``"galaxy"`` or ``"none"``, as BTK's ``add_noise``.

    Returns
    -------
    image : `numpy.ndarray`
        ``(bands, H, W)`` float64 noisy image, electrons, sky subtracted.

    Notes
    -----
    The source noise depends on every pixel's expectation, so an image whose galaxies were
    drawn on stamps (zero past each stamp) gets the same sky noise as BTK's full-image drawing
    of the same galaxies but another realisation of the source noise.
    """
    import galsim
    from surveycodex.utilities import mean_sky_level

    if noise not in ("all", "background", "galaxy", "none"):
        raise MadnessValueError(f"noise must be all, background, galaxy or none; got {noise!r}.")
    survey = lsst_survey() if survey is None else survey
    noiseless = np.asarray(noiseless, dtype=np.float64)
    if len(noiseless) != len(survey.available_filters):
        raise MadnessValueError(f"{len(noiseless)} bands given; the survey has "
                                f"{len(survey.available_filters)}.")
    # BTK: SeedSequence(seed).spawn(batch_size // mini_batch_size + 1)[0], then spawn(n_bands).
    band_seeds = np.random.SeedSequence(int(seed)).spawn(2)[0].spawn(len(noiseless))
    out = np.empty_like(noiseless)
    for b, band in enumerate(survey.available_filters):
        image = galsim.Image(noiseless[b].copy())
        state = int(band_seeds[b].generate_state(1)[0])
        if noise in ("galaxy", "all"):
            image.addNoise(galsim.PoissonNoise(rng=galsim.BaseDeviate(state), sky_level=0.0))
        if noise in ("background", "all"):
            sky = mean_sky_level(survey, survey.get_filter(band)).to_value("electron")
            background = galsim.Image(np.zeros(noiseless.shape[1:]))
            background.addNoise(galsim.PoissonNoise(rng=galsim.BaseDeviate(state), sky_level=sky))
            image += background
        out[b] = image.array
    return out
