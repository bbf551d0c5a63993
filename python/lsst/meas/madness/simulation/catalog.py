"""CatSim-format galaxy catalogs: schema, reading with validation, the SNR cut and splits.

A CatSim-format catalog is what BTK 1.0.9's ``btk.catalog.CatsimCatalog`` and
``btk.draw_blends.CatsimGenerator`` read: one row per galaxy, a de Vaucouleurs bulge plus an
exponential disk (plus an optional point-source AGN) sharing a position angle, and AB
magnitudes in ugrizy (paper section 2). The columns, units and valid ranges are in
`CATSIM_COLUMNS`.

CatSim's own files (e.g. WeakLensingDeblending's OneDegSq.fits, the paper's catalog) store
``fluxnorm_*`` as absolute SED normalisations (~1e-19), not fractions; BTK only uses their
ratios. `read_catsim_catalog` refuses fluxnorms that do not sum to 1 unless asked to
rescale them (``normalize_fluxnorms=True``), so that a mistyped column cannot pass silently.
"""

from __future__ import annotations

__all__ = [
    "CATSIM_BANDS",
    "CATSIM_COLUMNS",
    "CatsimColumn",
    "apply_snr_cut",
    "appendix_a_snr",
    "larger_component_axes",
    "read_catsim_catalog",
    "split_catalog",
    "validate_catsim_table",
]

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import MadnessRangeError, MadnessValueError

CATSIM_BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")
"""LSST bands of the ``<band>_ab`` columns, in channel order."""


@dataclasses.dataclass(frozen=True)
class CatsimColumn:
    """One column of the CatSim-format schema.

    Parameters
    ----------
    name : `str`
        Column name, as BTK reads it.
    dtype : `str`
        numpy dtype the column is stored with.
    unit : `str` or `None`
        Astropy unit string.
    description : `str`
        What the column holds.
    min, max : `float`
        Valid range (inclusive); NaN is never valid.
    required : `bool`
        Whether BTK needs the column (``galtileid`` is an identifier BTK does not read).
    """

    name: str
    dtype: str
    unit: str | None
    description: str
    min: float = -math.inf
    max: float = math.inf
    required: bool = True


CATSIM_COLUMNS: tuple[CatsimColumn, ...] = (
    CatsimColumn("galtileid", "int64", None, "Unique galaxy identifier (CatSim's tiled galaxy id).",
                 0, math.inf, required=False),
    CatsimColumn("ra", "float64", "deg", "Right ascension of the galaxy centre.", 0.0, 360.0),
    CatsimColumn("dec", "float64", "deg", "Declination of the galaxy centre.", -90.0, 90.0),
    CatsimColumn("redshift", "float64", None, "Cosmological redshift.", 0.0, 12.0),
    CatsimColumn("fluxnorm_bulge", "float64", None,
                 "Bulge (de Vaucouleurs) share of the flux; BTK uses fluxnorm_x / sum of the three.", 0.0),
    CatsimColumn("fluxnorm_disk", "float64", None, "Disk (exponential) share of the flux.", 0.0),
    CatsimColumn("fluxnorm_agn", "float64", None, "AGN (point source) share of the flux.", 0.0),
    CatsimColumn("a_b", "float64", "arcsec", "Bulge half-light semi-major axis (0 when no bulge).",
                 0.0, 60.0),
    CatsimColumn("b_b", "float64", "arcsec", "Bulge half-light semi-minor axis (0 when no bulge).",
                 0.0, 60.0),
    CatsimColumn("a_d", "float64", "arcsec", "Disk half-light semi-major axis (0 when no disk).", 0.0, 60.0),
    CatsimColumn("b_d", "float64", "arcsec", "Disk half-light semi-minor axis (0 when no disk).", 0.0, 60.0),
    CatsimColumn("pa_bulge", "float64", "deg",
                 "Bulge position angle; equal to pa_disk when both carry flux (BTK asserts it).",
                 -360.0, 360.0),
    CatsimColumn("pa_disk", "float64", "deg", "Disk position angle.", -360.0, 360.0),
) + tuple(
    CatsimColumn(f"{band}_ab", "float64", "mag", f"Apparent AB magnitude in the LSST {band} band.", 5.0, 45.0)
    for band in CATSIM_BANDS
)
"""The CatSim-format schema, in file order. Sizes are half-light semi-axes: BTK draws each
component with half-light radius sqrt(a b) and axis ratio b / a."""

_COLUMNS = {c.name: c for c in CATSIM_COLUMNS}
_FLUXNORMS = ("fluxnorm_bulge", "fluxnorm_disk", "fluxnorm_agn")


def _rows(mask: np.ndarray, limit: int = 5) -> str:
    idx = np.flatnonzero(mask)
    shown = ", ".join(str(i) for i in idx[:limit])
    return f"{len(idx)} row(s) (first: {shown})"


def validate_catsim_table(table, *, normalize_fluxnorms: bool = False, fluxnorm_tolerance: float = 1e-3,
                          source: str = "catalog"):
    """Check a CatSim-format table and return a copy with the schema's dtypes and units.

    Parameters
    ----------
    table : `astropy.table.Table`
        Candidate catalog; extra columns are kept unchanged.
    normalize_fluxnorms : `bool`
        Rescale ``fluxnorm_*`` to fractions that sum to 1 (needed for CatSim's own files, which
        store absolute normalisations). Otherwise their sum must be 1 within
        ``fluxnorm_tolerance``.
    fluxnorm_tolerance : `float`
        Allowed ``|sum - 1|`` of the three fluxnorms per row.
    source : `str`
        Name used in error messages (e.g. the file path).

    Returns
    -------
    table : `astropy.table.Table`
        Validated copy; the missing optional ``galtileid`` is added as the row index.

    Raises
    ------
    MadnessValueError
        Missing required columns (all named), non-numeric columns, NaN/inf values, values out
        of the schema's ranges (negative sizes, b > a), rows without flux, fluxnorms that do not
        sum to 1, a component with flux but zero size, or bulge and disk position angles that
        differ where both carry flux.
    """
    from astropy.table import Table

    if not isinstance(table, Table):
        raise MadnessValueError(f"{source}: expected an astropy Table, got {type(table).__name__}.")
    missing = [c.name for c in CATSIM_COLUMNS if c.required and c.name not in table.colnames]
    if missing:
        raise MadnessValueError(f"{source}: missing CatSim column(s) {missing}; BTK's CatsimCatalog needs "
                                f"{[c.name for c in CATSIM_COLUMNS if c.required]}.")
    out = table.copy(copy_data=True)
    if "galtileid" not in out.colnames:
        out.add_column(np.arange(len(out), dtype=np.int64), name="galtileid", index=0)
    for column in CATSIM_COLUMNS:
        values = out[column.name]
        # Astropy reads NaN in FITS float columns back as masked values: report both alike.
        if getattr(values, "mask", None) is not None and np.any(values.mask):
            raise MadnessValueError(f"{source}: column {column.name!r} has NaN, infinite or masked (missing) "
                                    f"values in {_rows(np.asarray(values.mask))}.")
        data = np.asarray(values)
        numeric = np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)
        if data.ndim != 1 or not numeric:
            raise MadnessValueError(f"{source}: column {column.name!r} must be a 1-d real number column, got "
                                    f"dtype {data.dtype} and shape {data.shape}.")
        data = data.astype(column.dtype)
        if np.issubdtype(data.dtype, np.floating):
            bad = ~np.isfinite(data)
            if bad.any():
                raise MadnessValueError(f"{source}: column {column.name!r} has NaN, infinite or masked "
                                        f"(missing) values in {_rows(bad)}.")
        bad = (data < column.min) | (data > column.max)
        if bad.any():
            raise MadnessRangeError(f"{source}: column {column.name!r} has values outside "
                                    f"[{column.min}, {column.max}] in {_rows(bad)}.",
                                    data[bad][0], column.min, column.max)
        out[column.name] = data
        out[column.name].unit = column.unit
        out[column.name].description = column.description
    if len(out) and np.unique(out["galtileid"]).size != len(out):
        raise MadnessValueError(f"{source}: galtileid values are not unique.")

    norms = np.stack([np.asarray(out[n]) for n in _FLUXNORMS])
    total = norms.sum(axis=0)
    if (total <= 0).any():
        raise MadnessValueError(f"{source}: fluxnorm_bulge + fluxnorm_disk + fluxnorm_agn is zero in "
                                f"{_rows(total <= 0)}: such galaxies have no flux.")
    if normalize_fluxnorms:
        for name, values in zip(_FLUXNORMS, norms / total):
            out[name] = values
    else:
        off = np.abs(total - 1.0) > fluxnorm_tolerance
        if off.any():
            raise MadnessValueError(
                f"{source}: fluxnorm_bulge + fluxnorm_disk + fluxnorm_agn differs from 1 by more than "
                f"{fluxnorm_tolerance} in {_rows(off)} (e.g. {total[off][0]:.4g}). CatSim's own files store "
                "absolute SED normalisations: pass normalize_fluxnorms=True to rescale them to fractions.")

    for comp, a_name, b_name in (("bulge", "a_b", "b_b"), ("disk", "a_d", "b_d")):
        a = np.asarray(out[a_name])
        b = np.asarray(out[b_name])
        lit = np.asarray(out[f"fluxnorm_{comp}"]) > 0
        flat = lit & ((a <= 0) | (b <= 0))
        if flat.any():
            raise MadnessValueError(f"{source}: the {comp} carries flux but has a zero {a_name}/{b_name} "
                                    f"half-light axis in {_rows(flat)}.")
        swapped = lit & (b > a * (1 + 1e-6))
        if swapped.any():
            raise MadnessValueError(f"{source}: {b_name} > {a_name} (minor axis longer than major) in "
                                    f"{_rows(swapped)}.")
    both = (np.asarray(out["fluxnorm_bulge"]) > 0) & (np.asarray(out["fluxnorm_disk"]) > 0)
    differ = both & (np.asarray(out["pa_bulge"]) != np.asarray(out["pa_disk"]))
    if differ.any():
        raise MadnessValueError(f"{source}: pa_bulge differs from pa_disk in {_rows(differ)}; BTK requires "
                                "equal position angles when both components carry flux.")
    return out


def read_catsim_catalog(path: str | os.PathLike, *, format: str | None = None,
                        normalize_fluxnorms: bool = False, fluxnorm_tolerance: float = 1e-3):
    """Read and validate a CatSim-format catalog file.

    Parameters
    ----------
    path : `str` or `os.PathLike`
        FITS (``.fits``, ``.fit``, ``.fits.gz``), or anything `astropy.table.Table.read` reads
        (ECSV, HDF5 with ``format``, ...); CatSim's whitespace-separated text files (``.dat``,
        ``.txt``) are read as ``ascii.basic``, as WeakLensingDeblending and BTK do.
    format : `str`, optional
        Astropy format name; default: guessed from the file name.
    normalize_fluxnorms, fluxnorm_tolerance
        See `validate_catsim_table`.

    Returns
    -------
    table : `astropy.table.Table`
        The validated catalog; ``table.meta["source"]`` holds the path.

    Raises
    ------
    FileNotFoundError
        No such file.
    MadnessValueError
        The file cannot be read as a table, or fails `validate_catsim_table`.
    """
    from astropy.table import Table

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"CatSim catalog {path!r} does not exist.")
    if format is None:
        lower = path.lower()
        if lower.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
            format = "fits"
        elif lower.endswith((".dat", ".txt")):
            format = "ascii.basic"
    try:
        table = Table.read(path, format=format)
    except Exception as exc:  # astropy raises many types for unreadable files
        raise MadnessValueError(f"Cannot read {path!r} as a table ({type(exc).__name__}: {exc}).") from exc
    table = validate_catsim_table(table, normalize_fluxnorms=normalize_fluxnorms,
                                  fluxnorm_tolerance=fluxnorm_tolerance, source=path)
    table.meta["source"] = path
    return table


def larger_component_axes(table) -> tuple[np.ndarray, np.ndarray]:
    """Half-light semi-axes (a, b) of each galaxy's larger component, arcsec (paper eq. 26).

    "Larger" is by half-light area a*b among the components that carry flux
    (``fluxnorm_* > 0``), so a zero-flux component with non-zero catalog sizes cannot win.
    A galaxy whose flux is all AGN gets (0, 0): a point source.
    """
    a_b = np.asarray(table["a_b"], dtype=np.float64)
    b_b = np.asarray(table["b_b"], dtype=np.float64)
    a_d = np.asarray(table["a_d"], dtype=np.float64)
    b_d = np.asarray(table["b_d"], dtype=np.float64)
    area_b = np.where(np.asarray(table["fluxnorm_bulge"]) > 0, a_b * b_b, -1.0)
    area_d = np.where(np.asarray(table["fluxnorm_disk"]) > 0, a_d * b_d, -1.0)
    use_bulge = area_b > area_d
    a = np.where(use_bulge, a_b, a_d)
    b = np.where(use_bulge, b_b, b_d)
    none = (area_b < 0) & (area_d < 0)
    return np.where(none, 0.0, a), np.where(none, 0.0, b)


def appendix_a_snr(table, conditions=None, band: str = "r") -> np.ndarray:
    """Catalog-level SNR of each galaxy in ``band`` (paper appendix A, eqs. 24-26).

    SNR = C / sqrt(C + B n_eff), C the total electrons of ``<band>_ab`` over the 10-year
    exposure, B the sky electrons per pixel, n_eff = 2.266 (FWHM_eff / 0.2")^2 with FWHM_eff the
    PSF FWHM and 2 sqrt(a b) of the larger component added in quadrature; gain 1.

    Parameters
    ----------
    table : `astropy.table.Table`
        CatSim-format catalog.
    conditions : `~lsst.meas.madness.simulation.LsstConditions`, optional
        Survey conditions; default: SurveyCodex's LSST (paper table 1).
    band : `str`
        Band of the magnitude, PSF and sky.

    Returns
    -------
    snr : `numpy.ndarray`
        (N,) float64.
    """
    from .conditions import LsstConditions

    conditions = LsstConditions.from_surveycodex() if conditions is None else conditions
    column = f"{band}_ab"
    if column not in table.colnames:
        raise MadnessValueError(f"appendix_a_snr: the catalog has no {column!r} column.")
    a, b = larger_component_axes(table)
    return conditions.snr(np.asarray(table[column], dtype=np.float64), a, b, band=band)


def apply_snr_cut(table, min_snr: float = 10.0, *, conditions=None, band: str = "r"):
    """Keep the galaxies with `appendix_a_snr` >= ``min_snr`` (the paper's cut: 10 in r).

    Returns a new table with an added ``snr_<band>`` column.
    """
    snr = appendix_a_snr(table, conditions, band=band)
    out = table.copy()
    out[f"snr_{band}"] = snr
    return out[snr >= min_snr]


def split_catalog(table, fractions: Mapping[str, float] | Sequence[float] = (0.75 * 0.63, 0.25 * 0.63, 0.37),
                  seed: int = 0, *, names: Sequence[str] = ("train", "validation", "test")) -> dict:
    """Split a catalog into disjoint subsets (train/validation/test) by seeded random permutation.

    Parameters
    ----------
    table : `astropy.table.Table`
        Catalog to split (usually after `apply_snr_cut`).
    fractions : mapping or sequence of `float`
        Share of the rows for each subset; must sum to 1 within 1e-6. The default is the
        paper's: of ~317k cut galaxies, 200k (63%) go to training+validation, split 75/25, the
        rest (37%) to test. A mapping gives names and fractions at once.
    seed : `int`
        Seed of the permutation: equal seeds give equal splits.
    names : sequence of `str`
        Subset names when ``fractions`` is a sequence.

    Returns
    -------
    subsets : `dict` [`str`, `astropy.table.Table`]
        Disjoint tables covering every row; sizes are the rounded fractions (largest remainders
        get the leftover rows), and each keeps the input's row order.
    """
    if isinstance(fractions, Mapping):
        names = tuple(fractions)
        values = np.array([fractions[n] for n in names], dtype=np.float64)
    else:
        values = np.asarray(fractions, dtype=np.float64)
        names = tuple(names)
        if len(names) != len(values):
            raise MadnessValueError(f"split_catalog: {len(values)} fractions for {len(names)} names {names}.")
    if len(set(names)) != len(names):
        raise MadnessValueError(f"split_catalog: subset names must be unique, got {names}.")
    if values.ndim != 1 or len(values) == 0 or np.any(values < 0) or not np.all(np.isfinite(values)):
        raise MadnessValueError("split_catalog: fractions must be finite and non-negative, got "
                                f"{values.tolist()}.")
    if abs(values.sum() - 1.0) > 1e-6:
        raise MadnessValueError(f"split_catalog: fractions must sum to 1, got {values.tolist()} "
                                f"(sum {values.sum():.6g}).")
    n = len(table)
    exact = values * n
    sizes = np.floor(exact).astype(np.int64)
    leftover = n - sizes.sum()
    sizes[np.argsort(-(exact - sizes), kind="stable")[:leftover]] += 1
    order = np.random.default_rng(np.random.SeedSequence(int(seed))).permutation(n)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return {name: table[np.sort(order[bounds[i]:bounds[i + 1]])] for i, name in enumerate(names)}
