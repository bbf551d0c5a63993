"""CatSim-format galaxy catalogs generated with SkyPy's galaxy models.

The paper's galaxies come from CatSim's one-square-degree catalog (De Lucia et al. semi-analytic
model on the Millennium light cone, ~858k galaxies to r = 28), which cannot be downloaded here.
This module draws statistically similar catalogs from SkyPy (Amara et al. 2021) models:

1. Two populations, star-forming ("blue", disk-dominated) and quiescent ("red",
   bulge-dominated), each with a Schechter luminosity function in the B band whose
   characteristic magnitude and normalisation evolve with redshift (Herbel et al. 2017,
   ``skypy.galaxies.schechter_lf``).
2. A rest-frame spectrum per galaxy as a Dirichlet mixture of the five kcorrect templates
   (Blanton & Roweis 2007; ``skypy.galaxies.spectrum.dirichlet_coefficients``), whose
   redshifted photometry through speclite's LSST filters (``lsst2016-*``) gives the ugrizy AB
   magnitudes (``skypy.galaxies.spectrum.kcorrect.apparent_magnitudes``).
3. Physical half-light radii from the Shen et al. (2003) size-luminosity relations
   (``late_type_lognormal_size`` / ``early_type_lognormal_size``) evaluated at the SDSS-r
   absolute magnitude, times a size-evolution factor, converted to arcsec
   (``skypy.galaxies.morphology.angular_size``).
4. Ellipticities from SkyPy's beta model (``beta_ellipticity``, Kacprzak et al. 2020); a
   bulge-to-total flux ratio per population; bulge and disk share the position angle (BTK
   asserts this when both carry flux).

Every constant lives in `SkyPyCatalogParameters`, with its source; the values that were tuned
against CatSim and LSST references are marked "calibrated" there and documented in
doc/catalog.md (scripts/calibrate_catalog.py reproduces the comparison).

SkyPy draws from numpy's global random state. `generate_catsim_catalog` seeds it from the
given seed for the duration of the call and restores it afterwards, so equal seeds give equal
tables and the caller's global random stream is left as it was. That hand-over is not
thread-safe: do not generate catalogs from several threads of one process at once (processes
are fine).
"""

from __future__ import annotations

__all__ = ["SkyPyCatalogParameters", "generate_catsim_catalog"]

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

import numpy as np

from ..errors import MadnessRangeError, MadnessValueError
from .catalog import CATSIM_BANDS, CATSIM_COLUMNS

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SkyPyCatalogParameters:
    """Every constant of the SkyPy-based CatSim-format generator, with its source.

    Defaults are the calibrated values (see doc/catalog.md). "Herbel+17" is Herbel et al. 2017,
    JCAP 08, 035, as shipped in SkyPy's examples (sdss_photometry.yml, mccl_galaxies.yml);
    "Shen+03" is Shen et al. 2003, MNRAS 343, 978; "vdW+14" is van der Wel et al. 2014,
    ApJ 788, 28; "Kacprzak+20" is Kacprzak et al. 2020, PRD 101, 082003.

    Parameters
    ----------
    h0, om0 : `float`
        Flat LambdaCDM cosmology. Source: the Millennium simulation under CatSim's galaxies
        (Springel et al. 2005: H0 = 73 km/s/Mpc, Omega_m = 0.25).
    z_min : `float`
        Lowest redshift drawn (0.02). Sampling the luminosity functions down to z = 0 yields,
        in a fraction of a square degree, the odd galaxy at z ~ 0.0005 with a 2-arcminute disk
        and r ~ 8: larger than a TestFields field, and a 16384^2 FFT for GalSim. CatSim's
        1 deg^2 holds of order one galaxy below z = 0.02, so the cut changes no statistic.
    z_max : `float`
        Highest redshift drawn. Source: paper section 2 (CatSim covers 0 < z < 6).
    z_step : `float`
        Step of the redshift grid on which the luminosity functions are tabulated.
    blue_m_star, red_m_star : `tuple` [`float`, `float`]
        (slope, intercept) of M*(z) = slope z + intercept, B-band AB mag. Source: Herbel+17
        (blue: -0.941, -20.405; red: -0.708, -20.372). The blue slope is calibrated to -1.6:
        with Herbel's slope the i < 25.3 sample has median z 0.64 against the LSST Science
        Book's 0.83, and the counts at i < 25 are 30% of the Science Book's.
    blue_phi_star, red_phi_star : `tuple` [`float`, `float`]
        (amplitude, scale) of phi*(z) = amplitude exp(z / scale), Mpc^-3 mag^-1. Source:
        Herbel+17.
    blue_alpha, red_alpha : `float`
        Faint-end slopes. Source: Herbel+17.
    m_star_z_max : `float`
        Calibrated: M* stops brightening above this redshift. Herbel+17 fit the evolution at
        z < ~1.5; extrapolated linearly to z = 6 it makes M* ~ -26 and overproduces bright
        high-redshift galaxies (2.5 keeps ~7% of r < 28 galaxies at z > 3).
    phi_star_high_z_decay : `float`
        Calibrated: above ``m_star_z_max`` both phi* are multiplied by
        exp(-(z - m_star_z_max) / phi_star_high_z_decay), the decline of the UV luminosity
        density beyond its z ~ 2 peak (Madau & Dickinson 2014, fig. 9).
    phi_star_scale : `float`
        Calibrated: common factor on both phi*, fixed by CatSim's 858k galaxies/deg^2 to r = 28
        (with the blue slope above it also brings i < 24 and i < 25 counts within 10% of the
        LSST Science Book's).
    blue_dirichlet_alpha0, blue_dirichlet_alpha1, blue_dirichlet_weight : `tuple` [`float`, ...]
        kcorrect template mixture of star-forming galaxies at z = 0 and z = 1, and template
        weights. Source: Herbel+17.
    red_dirichlet_alpha0, red_dirichlet_alpha1, red_dirichlet_weight : `tuple` [`float`, ...]
        Same for quiescent galaxies. Source: Herbel+17.
    sampling_margin_mag : `float`
        The luminosity functions are sampled to ``mag_limit_r + sampling_margin_mag`` in
        B-band magnitude without k-correction; redshifted star-forming spectra are up to
        ~2.5 log10(1 + z) brighter in r than that, so the margin keeps the r-limited sample
        complete (checked: counts at r < 28 change by < 1% from margin 2 to 3).
    late_size : `tuple` [`float`, ...]
        (alpha, beta, gamma, M0, sigma1, sigma2) of the late-type size relation, kpc, at the
        SDSS-r absolute magnitude. Source: Shen+03 via SkyPy's mccl_galaxies.yml.
    early_size : `tuple` [`float`, ...]
        (a, b, M0, sigma1, sigma2) of the early-type size relation. Source: Shen+03 via SkyPy.
    late_size_evolution, early_size_evolution : `float`
        Sizes scale as (1 + z)^-evolution at fixed luminosity. Source: vdW+14 (0.75 for
        late types, 1.48 for early types, at fixed stellar mass).
    size_scale : `float`
        Calibrated: common factor on all sizes, fixed by the paper's 317k galaxies/deg^2 that
        pass the appendix-A SNR >= 10 cut in r (the cut depends on size through n_eff).
    min_size_arcsec : `float`
        Floor on half-light radii (arcsec), far below the PSF, so that no profile is
        degenerate for GalSim.
    blue_ellipticity, red_ellipticity : `tuple` [`float`, `float`]
        (e_ratio, e_sum) of SkyPy's beta ellipticity model, for the ellipticity
        |e| = (1 - q) / (1 + q). Source: form from Kacprzak+20; e_ratio calibrated to a shape
        noise of 0.26 per component (LSST DESC SRD, Mandelbaum et al. 2018), rounder
        quiescent galaxies.
    blue_bulge_fraction : `tuple` [`float`, `float`, `float`]
        (probability of a pure disk, Beta a, Beta b) of the bulge-to-total flux ratio of
        star-forming galaxies. Source: typical B/T of late types (e.g. Lackner & Gunn 2012)
        and CatSim's many pure-disk galaxies (WeakLensingDeblending docs/catalog.rst rows).
    red_bulge_fraction : `tuple` [`float`, `float`, `float`]
        (probability of a pure bulge, Beta a, Beta b) of B/T of quiescent galaxies.
    bulge_to_disk_size : `float`
        Ratio of bulge to disk half-light radius in two-component galaxies (~0.5 for disk
        galaxies, e.g. de Jong 1996 / Graham & Worley 2008 r_e/h ~ 0.2 -> r_e,b/r_e,d ~ 0.3-0.6).
    """

    # Cosmology.
    h0: float = 73.0
    om0: float = 0.25
    z_min: float = 0.02
    z_max: float = 6.0
    z_step: float = 0.02
    # Luminosity functions.
    blue_m_star: tuple[float, float] = (-1.6, -20.40492365)
    blue_phi_star: tuple[float, float] = (0.00370253, -9.73858)
    blue_alpha: float = -1.3
    red_m_star: tuple[float, float] = (-0.70798041, -20.37196157)
    red_phi_star: tuple[float, float] = (0.0035097, -1.41649)
    red_alpha: float = -0.5
    m_star_z_max: float = 2.5
    phi_star_high_z_decay: float = 1.5
    phi_star_scale: float = 2.0
    sampling_margin_mag: float = 2.5
    # Spectra.
    blue_dirichlet_alpha0: tuple[float, ...] = (2.079, 3.524, 1.917, 1.992, 2.536)
    blue_dirichlet_alpha1: tuple[float, ...] = (2.265, 3.862, 1.921, 1.685, 2.480)
    blue_dirichlet_weight: tuple[float, ...] = (3.47e09, 3.31e06, 2.13e09, 1.64e10, 1.01e09)
    red_dirichlet_alpha0: tuple[float, ...] = (2.461, 2.358, 2.568, 2.268, 2.402)
    red_dirichlet_alpha1: tuple[float, ...] = (2.410, 2.340, 2.200, 2.540, 2.464)
    red_dirichlet_weight: tuple[float, ...] = (3.84e09, 1.57e06, 3.91e08, 4.66e10, 3.03e07)
    # Sizes.
    late_size: tuple[float, ...] = (0.21, 0.53, -1.31, -20.52, 0.48, 0.25)
    early_size: tuple[float, ...] = (0.60, -4.63, -20.52, 0.48, 0.25)
    late_size_evolution: float = 0.75
    early_size_evolution: float = 1.48
    size_scale: float = 0.9
    min_size_arcsec: float = 0.01
    # Shapes and components.
    blue_ellipticity: tuple[float, float] = (0.30, 3.5)
    red_ellipticity: tuple[float, float] = (0.20, 7.0)
    blue_bulge_fraction: tuple[float, float, float] = (0.5, 1.2, 6.0)
    red_bulge_fraction: tuple[float, float, float] = (0.3, 5.0, 1.5)
    bulge_to_disk_size: float = 0.5

    def __post_init__(self):
        if not 0.0 < self.z_max <= 10.0:
            raise MadnessRangeError("SkyPyCatalogParameters.z_max must be positive and at most 10.",
                                    self.z_max, 0.0, 10.0)
        if not 0.0 <= self.z_min < self.z_max:
            raise MadnessRangeError("SkyPyCatalogParameters.z_min must lie in [0, z_max).",
                                    self.z_min, 0.0, self.z_max)
        if not 0.0 < self.z_step < self.z_max:
            raise MadnessRangeError("SkyPyCatalogParameters.z_step must lie in (0, z_max).",
                                    self.z_step, 0.0, self.z_max)
        for name in ("phi_star_scale", "size_scale", "phi_star_high_z_decay", "bulge_to_disk_size",
                     "min_size_arcsec"):
            if getattr(self, name) <= 0:
                raise MadnessRangeError(f"SkyPyCatalogParameters.{name} must be positive.",
                                        getattr(self, name), 0.0, None)
        for name in ("blue_ellipticity", "red_ellipticity"):
            e_ratio, e_sum = getattr(self, name)
            if not (0.0 < e_ratio < 1.0 and e_sum > 0):
                raise MadnessValueError(f"SkyPyCatalogParameters.{name} = {(e_ratio, e_sum)}: e_ratio must "
                                        "lie in (0, 1) and e_sum be positive.")
        for name in ("blue_bulge_fraction", "red_bulge_fraction"):
            p, a, b = getattr(self, name)
            if not (0.0 <= p <= 1.0 and a > 0 and b > 0):
                raise MadnessValueError(f"SkyPyCatalogParameters.{name} = {(p, a, b)}: the probability must "
                                        "lie in [0, 1] and the Beta parameters be positive.")

    def as_dict(self) -> dict:
        """JSON-friendly copy (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@contextlib.contextmanager
def _global_numpy_seed(seed_sequence: np.random.SeedSequence) -> Iterator[None]:
    """Seed numpy's global RandomState inside the block and restore the caller's state after.

    SkyPy's samplers call ``np.random.*`` directly; this makes them reproducible without
    leaking state into, or taking it from, the rest of the program.
    """
    saved = np.random.get_state()
    np.random.seed(seed_sequence.generate_state(1, dtype=np.uint32)[0])
    try:
        yield
    finally:
        np.random.set_state(saved)


# Rest-frame wavelength (Angstrom) of the Lyman limit and of the Lyman series lines with the
# coefficients of their IGM line-blanketing optical depth (Madau 1995, ApJ 441, 18, eq. 15 and
# table 2 as usually quoted: tau = A_j (lambda_obs / lambda_j)^3.46).
_LYMAN_LIMIT = 911.75
_LYMAN_SERIES = ((1215.67, 3.6e-3), (1025.72, 1.7e-3), (972.54, 1.2e-3), (949.74, 9.3e-4))
_TEMPLATE_TABLES: dict = {}
DROPOUT_MAGNITUDE = 40.0
"""AB magnitude given to bands that receive no flux (blueward of the Lyman limit)."""


def _igm_transmission(rest_wavelength: np.ndarray, z: float) -> np.ndarray:
    """Mean IGM transmission (Madau 1995) of light emitted at ``rest_wavelength`` from ``z``.

    Emission blueward of the Lyman limit is set to zero (no escaping ionising photons), so the
    Lyman-continuum term of Madau's model is not needed.
    """
    obs = rest_wavelength * (1.0 + z)
    tau = np.zeros_like(rest_wavelength)
    for line, coeff in _LYMAN_SERIES:
        blue = rest_wavelength < line
        tau[blue] += coeff * (obs[blue] / line) ** 3.46
    return np.where(rest_wavelength < _LYMAN_LIMIT, 0.0, np.exp(-tau))


def _template_maggies(z_max: float) -> tuple[np.ndarray, np.ndarray]:
    """AB maggies of the five kcorrect templates through the LSST filters on a redshift grid.

    Returns ``(z_grid, maggies)`` with maggies of shape (nz, 5, 6), per unit template mass, at
    10 pc, including the (1 + z) bandwidth factor: what SkyPy's ``mag_ab`` computes before its
    interpolation, plus the IGM attenuation and a zero-padded blue end that SkyPy's templates
    lack (they stop at 600 A rest, which the u band passes below at z > 4.1). Cached per
    process: ~3 s once instead of once per population and call.
    """
    key = round(float(z_max), 6)
    if key in _TEMPLATE_TABLES:
        return _TEMPLATE_TABLES[key]
    from skypy.galaxies.spectrum import kcorrect
    from speclite.filters import load_filters

    filters = load_filters(*[f"lsst2016-{b}" for b in CATSIM_BANDS])
    wavelength = kcorrect.wavelength.to_value("angstrom")
    templates = kcorrect.templates.to_value("erg s-1 cm-2 angstrom-1")
    # Pad the blue end with zero flux down to where the u band sits at z_max.
    pad = np.arange(100.0, wavelength[0], 20.0)
    wavelength = np.concatenate([pad, wavelength])
    templates = np.concatenate([np.zeros((templates.shape[0], pad.size)), templates], axis=1)
    z_grid = np.arange(0.0, z_max + 0.01, 0.01)
    maggies = np.empty((z_grid.size, templates.shape[0], len(filters)))
    for i, z in enumerate(z_grid):
        spectrum = templates * _igm_transmission(wavelength, z)
        for j, band_filter in enumerate(filters):
            maggies[i, :, j] = band_filter.create_shifted(z).get_ab_maggies(spectrum, wavelength)
    # The (1 + z) bandwidth compression, as skypy.utils.photometry.mag_ab applies it.
    maggies /= (1.0 + z_grid)[:, None, None]
    _TEMPLATE_TABLES[key] = (z_grid, maggies)
    return z_grid, maggies


def _apparent_magnitudes(coefficients: np.ndarray, z: np.ndarray, stellar_mass: np.ndarray, cosmology,
                         z_max: float) -> np.ndarray:
    """(N, 6) ugrizy AB magnitudes of template mixtures, as SkyPy's ``apparent_magnitudes``.

    Same mixture, stellar-mass and distance-modulus arithmetic, with the maggies of
    `_template_maggies` (IGM-attenuated) linearly interpolated in redshift.
    """
    z_grid, maggies = _template_maggies(z_max)
    position = np.interp(z, z_grid, np.arange(z_grid.size))
    lower = np.minimum(position.astype(np.int64), z_grid.size - 2)
    frac = position - lower
    galaxy = np.empty((len(z), maggies.shape[2]))
    # Chunks bound the (chunk, 5 templates, 6 bands) temporaries to ~100 MB at 1 deg^2.
    for start in range(0, len(z), 100_000):
        sl = slice(start, start + 100_000)
        f = frac[sl, None, None]
        table = maggies[lower[sl]] * (1.0 - f) + maggies[lower[sl] + 1] * f
        galaxy[sl] = np.einsum("nt,ntf->nf", coefficients[sl], table)
    with np.errstate(divide="ignore"):
        mags = -2.5 * np.log10(galaxy)
    mags += cosmology.distmod(z).value[:, None] - 2.5 * np.log10(stellar_mass)[:, None]
    # Bands wholly blueward of the Lyman limit (u at z > ~5.4) receive no flux: cap at a
    # finite magnitude whose flux is negligible (1e-5 of an r = 28 galaxy) so that tables stay
    # finite for writers and BTK.
    return np.minimum(mags, DROPOUT_MAGNITUDE)


def _population(params: SkyPyCatalogParameters, kind: str, z_grid: np.ndarray, m_lim: float,
                sky_area_deg2: float, cosmology, templates) -> dict[str, np.ndarray]:
    """Redshifts, absolute magnitudes, ugrizy magnitudes and sizes of one population."""
    from astropy import units
    from skypy.galaxies import schechter_lf
    from skypy.galaxies.morphology import (angular_size, beta_ellipticity, early_type_lognormal_size,
                                           late_type_lognormal_size)
    from skypy.galaxies.spectrum import dirichlet_coefficients

    slope, intercept = getattr(params, f"{kind}_m_star")
    amplitude, scale = getattr(params, f"{kind}_phi_star")
    z_cap = params.m_star_z_max

    def m_star(z):
        return slope * np.minimum(z, z_cap) + intercept

    def phi_star(z):
        high = np.exp(-np.maximum(np.asarray(z) - z_cap, 0.0) / params.phi_star_high_z_decay)
        return params.phi_star_scale * amplitude * np.exp(np.asarray(z) / scale) * high

    z, m_abs_b = schechter_lf(z_grid, m_star, phi_star, getattr(params, f"{kind}_alpha"), m_lim,
                              sky_area_deg2 * units.deg**2, cosmology)
    z = np.asarray(z, dtype=np.float64)
    m_abs_b = np.asarray(m_abs_b, dtype=np.float64)
    if len(z) == 0:
        return {"z": z, "mags": np.zeros((0, len(CATSIM_BANDS))), "size": z.copy(), "e_disk": z.copy(),
                "e_bulge": z.copy()}
    coeff = dirichlet_coefficients(z, np.array(getattr(params, f"{kind}_dirichlet_alpha0")),
                                   np.array(getattr(params, f"{kind}_dirichlet_alpha1")),
                                   weight=np.array(getattr(params, f"{kind}_dirichlet_weight")))
    # Template units are per unit stellar mass: the mass follows from the sampled B magnitude.
    stellar_mass = templates.stellar_mass(coeff, m_abs_b, "bessell-B")
    mags = _apparent_magnitudes(coeff, z, stellar_mass, cosmology, params.z_max)
    # Shen+03 relations are in SDSS r absolute magnitudes.
    m_abs_r = templates.absolute_magnitudes(coeff, "sdss2010-r", stellar_mass=stellar_mass)
    m_abs_r = np.asarray(m_abs_r, dtype=np.float64).reshape(-1)
    if kind == "blue":
        r_kpc = late_type_lognormal_size(m_abs_r, *params.late_size)
        evolution = params.late_size_evolution
    else:
        r_kpc = early_type_lognormal_size(m_abs_r, *params.early_size)
        evolution = params.early_size_evolution
    r_kpc = r_kpc * (1.0 + z) ** (-evolution) * params.size_scale
    size = angular_size(r_kpc, z, cosmology).to_value(units.arcsec)
    # Ellipticity |e| = (1 - q) / (1 + q): disks with their population's parameters, bulges
    # always with the rounder quiescent set.
    e_disk = beta_ellipticity(*getattr(params, f"{kind}_ellipticity"), size=len(z))
    e_bulge = beta_ellipticity(*params.red_ellipticity, size=len(z))
    return {"z": z, "mags": np.asarray(mags, dtype=np.float64), "size": np.asarray(size, dtype=np.float64),
            "e_disk": np.asarray(e_disk, dtype=np.float64), "e_bulge": np.asarray(e_bulge, dtype=np.float64)}


def generate_catsim_catalog(area_deg2: float, seed: int, mag_limit_r: float = 28.0, *,
                            ra_center: float = 0.0, dec_center: float = 0.0,
                            params: SkyPyCatalogParameters | None = None):
    """Draw a CatSim-format galaxy catalog (the columns BTK's ``CatsimCatalog`` reads).

    Parameters
    ----------
    area_deg2 : `float`
        Sky area in square degrees; galaxies lie uniformly in a square patch of this area
        around (``ra_center``, ``dec_center``). 1e-4 to 20 deg^2 (1 deg^2 is ~860k galaxies to
        r = 28, ~1.5 GB of intermediate arrays at most).
    seed : `int`
        Seed of every random draw: equal seeds (and parameters) give equal tables.
    mag_limit_r : `float`
        Keep galaxies with r_ab <= this AB magnitude (the paper's catalog stops at 28).
    ra_center, dec_center : `float`
        Centre of the patch, degrees; ``|dec_center| + half the patch side`` must stay below 89.
    params : `SkyPyCatalogParameters`, optional
        Model constants; default: the calibrated set.

    Returns
    -------
    table : `astropy.table.Table`
        One row per galaxy with the `~lsst.meas.madness.simulation.catalog.CATSIM_COLUMNS`
        (units in the column metadata), fluxnorms that sum to 1, and the table metadata
        ``AREADEG2`` (deg^2), ``SEED``, ``MAGLIM_R`` and ``GENERATR`` (FITS-safe keys). Rows are in
        random order.

    Notes
    -----
    Every random draw comes from ``seed`` through a `numpy.random.SeedSequence`: SkyPy's
    (numpy's global state, restored afterwards) and this module's own (a separate
    `numpy.random.Generator`).
    """
    from astropy.cosmology import FlatLambdaCDM
    from astropy.table import Table
    from skypy.galaxies.spectrum import kcorrect

    params = SkyPyCatalogParameters() if params is None else params
    if not 1e-6 <= area_deg2 <= 20.0:
        raise MadnessRangeError("generate_catsim_catalog: area_deg2 out of range (memory grows with it).",
                                area_deg2, 1e-6, 20.0)
    if not 15.0 <= mag_limit_r <= 30.0:
        raise MadnessRangeError("generate_catsim_catalog: mag_limit_r out of the range the models cover.",
                                mag_limit_r, 15.0, 30.0)
    side = float(np.sqrt(area_deg2))
    if abs(dec_center) + side / 2 >= 89.0:
        raise MadnessRangeError("generate_catsim_catalog: the patch must stay away from the poles.",
                                dec_center, -89.0 + side / 2, 89.0 - side / 2)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MadnessValueError(f"generate_catsim_catalog: seed must be a non-negative int, got {seed!r}.")

    cosmology = FlatLambdaCDM(H0=params.h0, Om0=params.om0)
    z_grid = np.arange(params.z_min, params.z_max + 0.5 * params.z_step, params.z_step)
    m_lim = mag_limit_r + params.sampling_margin_mag
    skypy_seq, own_seq = np.random.SeedSequence(int(seed)).spawn(2)
    with _global_numpy_seed(skypy_seq):
        pops = {kind: _population(params, kind, z_grid, m_lim, area_deg2, cosmology, kcorrect)
                for kind in ("blue", "red")}

    rng = np.random.default_rng(own_seq)
    keys = ("z", "mags", "size", "e_disk", "e_bulge", "is_red")
    parts = {key: [] for key in keys}
    for kind, pop in pops.items():
        keep = pop["mags"][:, CATSIM_BANDS.index("r")] <= mag_limit_r
        pop["is_red"] = np.full(len(keep), kind == "red")
        for key in keys:
            parts[key].append(pop[key][keep])
    order = rng.permutation(sum(len(p) for p in parts["z"]))  # mix populations: any prefix is fair
    z, mags, size, e_disk, e_bulge, is_red = (np.concatenate(parts[key])[order] for key in keys)
    size = np.maximum(size, params.min_size_arcsec)
    n = len(z)

    # Bulge-to-total flux ratio: a point mass at 0 (pure disk) or 1 (pure bulge) plus a Beta.
    bt = np.empty(n)
    p_pure = np.where(is_red, params.red_bulge_fraction[0], params.blue_bulge_fraction[0])
    a = np.where(is_red, params.red_bulge_fraction[1], params.blue_bulge_fraction[1])
    b = np.where(is_red, params.red_bulge_fraction[2], params.blue_bulge_fraction[2])
    pure = rng.random(n) < p_pure
    bt[:] = rng.beta(a, b)
    bt[pure & ~is_red] = 0.0
    bt[pure & is_red] = 1.0

    # Axis ratios; the clip keeps GalSim's shear below |g| ~ 0.9 for the rare e -> 1 draws.
    q_disk = np.clip((1.0 - e_disk) / (1.0 + e_disk), 0.05, 1.0)
    q_bulge = np.clip((1.0 - e_bulge) / (1.0 + e_bulge), 0.05, 1.0)

    # The drawn size is the half-light radius of the dominant component; the other one is
    # bulge_to_disk_size times (or divided by) it. Half-light semi-axes keep sqrt(a b) = r.
    r_disk = np.where(is_red, size / params.bulge_to_disk_size, size)
    r_bulge = np.where(is_red, size, size * params.bulge_to_disk_size)
    has_disk = bt < 1.0
    has_bulge = bt > 0.0
    a_d = np.where(has_disk, r_disk / np.sqrt(q_disk), 0.0)
    b_d = np.where(has_disk, r_disk * np.sqrt(q_disk), 0.0)
    a_b = np.where(has_bulge, r_bulge / np.sqrt(q_bulge), 0.0)
    b_b = np.where(has_bulge, r_bulge * np.sqrt(q_bulge), 0.0)
    pa = rng.uniform(0.0, 180.0, size=n)

    # Uniform on the sphere inside the patch: uniform in sin(dec), and in ra across the patch.
    dec0 = np.deg2rad(dec_center)
    half = np.deg2rad(side / 2)
    sin_dec = rng.uniform(np.sin(dec0 - half), np.sin(dec0 + half), size=n)
    dec = np.rad2deg(np.arcsin(sin_dec))
    ra_half_width = side / 2 / np.cos(dec0)
    ra = np.mod(ra_center + rng.uniform(-ra_half_width, ra_half_width, size=n), 360.0)

    data = {
        "galtileid": np.arange(n, dtype=np.int64),
        "ra": ra,
        "dec": dec,
        "redshift": z,
        "fluxnorm_bulge": bt,
        "fluxnorm_disk": 1.0 - bt,
        "fluxnorm_agn": np.zeros(n),
        "a_b": a_b,
        "b_b": b_b,
        "a_d": a_d,
        "b_d": b_d,
        "pa_bulge": pa,
        "pa_disk": pa.copy(),
    }
    for i, band in enumerate(CATSIM_BANDS):
        data[f"{band}_ab"] = mags[:, i]
    table = Table()
    for column in CATSIM_COLUMNS:
        table[column.name] = np.asarray(data[column.name], dtype=column.dtype)
        table[column.name].unit = column.unit
        table[column.name].description = column.description
    # Eight-character keys: they survive a FITS header without HIERARCH cards.
    table.meta.update({"AREADEG2": float(area_deg2), "SEED": int(seed), "MAGLIM_R": float(mag_limit_r),
                       "GENERATR": "lsst.meas.madness.simulation.skypy_catalog"})
    _log.info("Generated %d galaxies to r <= %.1f over %.4g deg^2 (seed %d).", n, mag_limit_r, area_deg2,
              seed)
    return table

