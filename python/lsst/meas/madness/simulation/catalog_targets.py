"""Calibration targets of the CatSim-format catalog generator, each with its source.

scripts/calibrate_catalog.py measures these statistics on a generated catalog and compares;
tests/test_catalog.py checks the counts on a small area. A target with ``tolerance=None`` is
reported, not enforced: no published number was found for it (doc/catalog.md says so).

Sources
-------
- Paper: Biswas et al., MADNESS, section 2 (CatSim one-square-degree subset: ~858k galaxies to
  r = 28, ~317k after the appendix-A SNR >= 10 cut in r; 0 < z < 6).
- Science Book: LSST Science Book v2.0 (2009, arXiv:0912.0201), section 3.7.2, eq. 3.7:
  N(< i) = 46 x 10^(0.31 (i - 25)) galaxies/arcmin^2 (fit to deep CFHTLS counts, valid for
  ~20.5 < i < 25.5), and eq. 3.8: p(z) proportional to z^2 exp(-z / z0) with
  z0 = 0.0417 i - 0.744, whose median is 2.674 z0.
- DESC SRD: The LSST DESC Science Requirements Document (Mandelbaum et al. 2018,
  arXiv:1809.01669): shape noise 0.26 per ellipticity component.
"""

from __future__ import annotations

__all__ = [
    "CatalogTarget",
    "CATALOG_TARGETS",
    "compare_to_targets",
    "measure_catalog_statistics",
    "science_book_counts",
    "science_book_median_z",
    "target",
]

import dataclasses

import numpy as np


def science_book_counts(i_limit: float) -> float:
    """Galaxies per deg^2 brighter than ``i_limit`` (LSST Science Book eq. 3.7)."""
    return 46.0 * 10.0 ** (0.31 * (i_limit - 25.0)) * 3600.0


def science_book_median_z(i_limit: float) -> float:
    """Median redshift of an i < ``i_limit`` sample (LSST Science Book eq. 3.8)."""
    return 2.674 * (0.0417 * i_limit - 0.744)


@dataclasses.dataclass(frozen=True)
class CatalogTarget:
    """One calibration target.

    Parameters
    ----------
    name : `str`
        Key of the statistic in the calibration JSON.
    value : `float`
        Target value.
    tolerance : `float` or `None`
        Allowed deviation; `None`: reported only.
    relative : `bool`
        Whether ``tolerance`` is a fraction of ``value`` (else absolute).
    unit : `str`
        Unit of ``value``.
    source : `str`
        Where the value comes from.
    """

    name: str
    value: float
    tolerance: float | None
    relative: bool
    unit: str
    source: str

    def passes(self, measured: float) -> bool | None:
        """Whether ``measured`` is within tolerance; `None` for report-only targets."""
        if self.tolerance is None:
            return None
        allowed = self.tolerance * abs(self.value) if self.relative else self.tolerance
        return abs(measured - self.value) <= allowed

    def bounds(self) -> tuple[float, float] | None:
        """(low, high) accepted range, or `None`."""
        if self.tolerance is None:
            return None
        allowed = self.tolerance * abs(self.value) if self.relative else self.tolerance
        return self.value - allowed, self.value + allowed


CATALOG_TARGETS: tuple[CatalogTarget, ...] = (
    CatalogTarget("n_r28_per_deg2", 858_000.0, 0.10, True, "deg^-2",
                  "Paper section 2: CatSim 1 deg^2 subset has ~858k galaxies with r < 28."),
    CatalogTarget("n_snr10_per_deg2", 317_000.0, 0.10, True, "deg^-2",
                  "Paper section 2: ~317k galaxies remain after the SNR >= 10 cut in r (appendix A)."),
    CatalogTarget("snr10_fraction", 317.0 / 858.0, 0.03, False, "",
                  "Paper section 2: 317k / 858k."),
    CatalogTarget("n_i24_per_deg2", science_book_counts(24.0), 0.20, True, "deg^-2",
                  "LSST Science Book eq. 3.7 at i < 24."),
    CatalogTarget("n_i25_per_deg2", science_book_counts(25.0), 0.20, True, "deg^-2",
                  "LSST Science Book eq. 3.7 at i < 25."),
    CatalogTarget("n_i25.3_per_deg2", science_book_counts(25.3), 0.20, True, "deg^-2",
                  "LSST Science Book eq. 3.7 at i < 25.3 (the gold sample)."),
    CatalogTarget("median_z_i25.3", science_book_median_z(25.3), 0.10, False, "",
                  "LSST Science Book eq. 3.8 at i < 25.3 (z0 = 0.311)."),
    CatalogTarget("max_redshift", 6.0, 0.0, False, "",
                  "Paper section 2: CatSim covers 0 < z < 6 (checked as max z <= 6)."),
    CatalogTarget("shape_noise_per_component", 0.26, 0.03, False, "",
                  "DESC SRD: 0.26 per component, for e = (1 - q) / (1 + q) of the larger component."),
    CatalogTarget("bulge_dominated_fraction", float("nan"), None, False, "",
                  "Reported only: fraction with fluxnorm_bulge > 0.5; no published CatSim B/T "
                  "distribution found."),
    CatalogTarget("pure_disk_fraction", float("nan"), None, False, "",
                  "Reported only: fraction with fluxnorm_bulge == 0 (CatSim has many, e.g. the example rows "
                  "of WeakLensingDeblending docs/catalog.rst)."),
    CatalogTarget("median_hlr_r24_25_arcsec", float("nan"), None, False, "arcsec",
                  "Reported only: median sqrt(a b) of the larger component at 24 < r < 25; sizes are "
                  "calibrated through the SNR-cut fraction, which depends on them."),
)
"""Every target, by name in `target`."""

_BY_NAME = {t.name: t for t in CATALOG_TARGETS}


def target(name: str) -> CatalogTarget:
    """The `CatalogTarget` called ``name``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"No catalog target {name!r}; known: {sorted(_BY_NAME)}.") from None


def measure_catalog_statistics(table, area_deg2: float, conditions=None) -> dict[str, float]:
    """Measure every `CATALOG_TARGETS` statistic on a CatSim-format ``table`` covering ``area_deg2``."""
    from .catalog import appendix_a_snr, larger_component_axes

    r = np.asarray(table["r_ab"], dtype=np.float64)
    i = np.asarray(table["i_ab"], dtype=np.float64)
    z = np.asarray(table["redshift"], dtype=np.float64)
    bt = np.asarray(table["fluxnorm_bulge"], dtype=np.float64)
    total = bt + np.asarray(table["fluxnorm_disk"]) + np.asarray(table["fluxnorm_agn"])
    bt = bt / total
    snr = appendix_a_snr(table, conditions, band="r")
    a, b = larger_component_axes(table)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(a > 0, b / a, 1.0)
    e = (1.0 - q) / (1.0 + q)
    in_r = r <= 28.0
    mid = (r > 24.0) & (r <= 25.0)

    def _median(x):
        return float(np.median(x)) if x.size else float("nan")

    return {
        "n_galaxies": int(len(table)),
        "area_deg2": float(area_deg2),
        "n_r28_per_deg2": float(in_r.sum() / area_deg2),
        "n_snr10_per_deg2": float(((snr >= 10.0) & in_r).sum() / area_deg2),
        "snr10_fraction": float(((snr >= 10.0) & in_r).sum() / max(in_r.sum(), 1)),
        "n_i24_per_deg2": float((i < 24.0).sum() / area_deg2),
        "n_i25_per_deg2": float((i < 25.0).sum() / area_deg2),
        "n_i25.3_per_deg2": float((i < 25.3).sum() / area_deg2),
        "median_z_i25.3": _median(z[i < 25.3]),
        "max_redshift": float(z.max()) if z.size else float("nan"),
        # Random orientations: each component carries half of <|e|^2>.
        "shape_noise_per_component": float(np.sqrt(np.mean(e**2) / 2.0)) if e.size else float("nan"),
        "bulge_dominated_fraction": float(np.mean(bt > 0.5)) if bt.size else float("nan"),
        "pure_disk_fraction": float(np.mean(bt == 0.0)) if bt.size else float("nan"),
        "median_hlr_r24_25_arcsec": _median(np.sqrt(a * b)[mid]),
    }


def compare_to_targets(statistics: dict[str, float]) -> list[dict]:
    """One row per target: name, measured, target, accepted range, pass (or None), source."""
    rows = []
    for t in CATALOG_TARGETS:
        measured = statistics.get(t.name, float("nan"))
        if t.name == "max_redshift":
            ok = bool(measured <= t.value)
            bounds = (0.0, t.value)
        else:
            ok = t.passes(measured)
            bounds = t.bounds()
        rows.append({"name": t.name, "measured": measured, "target": None if np.isnan(t.value) else t.value,
                     "range": None if bounds is None else list(bounds), "pass": ok, "unit": t.unit,
                     "source": t.source})
    return rows
