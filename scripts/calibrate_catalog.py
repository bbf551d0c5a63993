#!/usr/bin/env python
"""Generate a CatSim-format catalog with SkyPy and compare it to the calibration targets.

Writes doc/catalog-calibration.json (statistics, targets, pass/fail, parameters, timing) and the
figures doc/figures/catalog/*.png; doc/catalog.md shows them. Run from the repository root:

    python scripts/calibrate_catalog.py [--area 0.1] [--seed 0] [--output doc/catalog-calibration.json]

Exit status 1 if an enforced target fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _figures(table, stats: dict, area: float, outdir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lsst.meas.madness.simulation.catalog import appendix_a_snr, larger_component_axes
    from lsst.meas.madness.simulation.catalog_targets import science_book_counts, target

    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    r = np.asarray(table["r_ab"])
    i = np.asarray(table["i_ab"])
    z = np.asarray(table["redshift"])
    snr = appendix_a_snr(table)
    cut = snr >= 10

    def save(fig, name):
        path = outdir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))

    # 1. Cumulative counts in r and i with the targets.
    fig, ax = plt.subplots(figsize=(6, 4.5))
    grid = np.arange(18.0, 28.01, 0.1)
    ax.semilogy(grid, [np.sum(r < m) / area for m in grid], label="generated, r")
    ax.semilogy(grid, [np.sum(i < m) / area for m in grid], label="generated, i")
    ax.semilogy(grid, [np.sum((r < m) & cut) / area for m in grid], ls=":", label="generated, r, SNR>=10")
    sb = np.arange(20.5, 25.51, 0.1)
    ax.semilogy(sb, science_book_counts(sb), "k--", label="LSST Science Book eq. 3.7 (i)")
    ax.errorbar([28.0], [target("n_r28_per_deg2").value], yerr=[[85_800], [85_800]], fmt="o", color="C0",
                label="paper: CatSim r<28 (858k)")
    ax.errorbar([28.0], [target("n_snr10_per_deg2").value], yerr=[[31_700], [31_700]], fmt="s", color="C2",
                label="paper: after SNR>=10 (317k)")
    ax.set_xlabel("AB magnitude limit")
    ax.set_ylabel("N(< m) per deg$^2$")
    ax.set_title(f"Cumulative counts ({area:g} deg$^2$)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save(fig, "counts.png")

    # 1b. Differential counts per 0.5 mag.
    fig, ax = plt.subplots(figsize=(6, 4.5))
    edges = np.arange(18.0, 28.01, 0.5)
    centres = 0.5 * (edges[1:] + edges[:-1])
    for mags, lab in ((r, "r"), (i, "i")):
        n, _ = np.histogram(mags, edges)
        ax.semilogy(centres, n / area / 0.5, "o-", ms=3, label=f"generated, {lab}")
    sb = np.arange(20.75, 25.3, 0.5)
    ax.semilogy(sb, np.log(10) * 0.31 * science_book_counts(sb), "k--",
                label="d/dm of Science Book eq. 3.7 (i)")
    ax.set_xlabel("AB magnitude")
    ax.set_ylabel("dN/dm per deg$^2$ per mag")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, "counts_differential.png")

    # 2. Redshift and r distributions before/after the SNR cut (paper figure 1).
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].hist(z, bins=np.arange(0, 6.01, 0.1), color="C1", alpha=0.7, label=f"r<28 ({len(z)})")
    axes[0].hist(z[cut], bins=np.arange(0, 6.01, 0.1), color="C0", alpha=0.7, label=f"SNR>=10 ({cut.sum()})")
    axes[0].set_xlabel("redshift")
    axes[0].legend()
    axes[1].hist(r, bins=np.arange(16, 28.01, 0.25), color="C1", alpha=0.7, label="r<28")
    axes[1].hist(r[cut], bins=np.arange(16, 28.01, 0.25), color="C0", alpha=0.7, label="SNR>=10")
    axes[1].set_xlabel("r AB magnitude")
    axes[1].legend()
    fig.suptitle("Before (orange) and after (blue) the SNR cut, as paper figure 1")
    save(fig, "redshift_magnitude_snr_cut.png")

    # 3. Size vs magnitude.
    a, b = larger_component_axes(table)
    hlr = np.sqrt(a * b)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    sub = np.random.default_rng(0).choice(len(r), size=min(len(r), 20000), replace=False)
    ax.scatter(r[sub], hlr[sub], s=1, alpha=0.15, color="gray", label="galaxies")
    bins = np.arange(18, 28.01, 0.5)
    idx = np.digitize(r, bins)
    mids, p16, p50, p84 = [], [], [], []
    for k in range(1, len(bins)):
        sel = idx == k
        if sel.sum() > 10:
            mids.append(0.5 * (bins[k - 1] + bins[k]))
            lo, med, hi = np.percentile(hlr[sel], [16, 50, 84])
            p16.append(lo), p50.append(med), p84.append(hi)
    ax.plot(mids, p50, "r-", label="median")
    ax.fill_between(mids, p16, p84, color="r", alpha=0.2, label="16-84%")
    ax.axhline(0.81 / 2, color="k", ls=":", label="r-band PSF HWHM")
    ax.set_yscale("log")
    ax.set_ylim(0.02, 5)
    ax.set_xlabel("r AB magnitude")
    ax.set_ylabel("half-light radius sqrt(ab) of the larger component [arcsec]")
    ax.legend(fontsize=8)
    save(fig, "size_magnitude.png")

    # 4. Bulge fraction.
    bt = np.asarray(table["fluxnorm_bulge"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].hist(bt, bins=np.linspace(0, 1, 41), color="C4")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("bulge-to-total flux ratio (fluxnorm_bulge)")
    mids = np.arange(18.5, 28, 1.0)
    frac = [np.mean(bt[(r >= m - 0.5) & (r < m + 0.5)] > 0.5) if np.any((r >= m - 0.5) & (r < m + 0.5))
            else np.nan for m in mids]
    axes[1].plot(mids, frac, "o-")
    axes[1].set_xlabel("r AB magnitude")
    axes[1].set_ylabel("fraction with B/T > 0.5")
    axes[1].set_ylim(0, 1)
    save(fig, "bulge_fraction.png")

    # 5. Ellipticity.
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(a > 0, b / a, 1.0)
    e = (1 - q) / (1 + q)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(e, bins=np.linspace(0, 1, 51), density=True, color="C5")
    ax.set_xlabel("|e| = (1-q)/(1+q) of the larger component")
    ax.set_title(f"shape noise per component {stats['shape_noise_per_component']:.3f} (DESC SRD: 0.26)")
    save(fig, "ellipticity.png")

    # 6. Colours vs redshift.
    g = np.asarray(table["g_ab"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    bright = r < 25.0
    for ax, colour, lab in ((axes[0], g - r, "g - r"), (axes[1], r - i, "r - i")):
        ax.scatter(z[bright][: 20000], colour[bright][: 20000], s=1, alpha=0.15, color="gray")
        zb = np.arange(0, 4.01, 0.25)
        zi = np.digitize(z[bright], zb)
        med = [np.median(colour[bright][zi == k]) if np.sum(zi == k) > 10 else np.nan
               for k in range(1, len(zb))]
        ax.plot(0.5 * (zb[1:] + zb[:-1]), med, "r-", label="median (r < 25)")
        ax.set_xlabel("redshift")
        ax.set_ylabel(lab)
        ax.set_ylim(-0.5, 2.5)
        ax.legend()
    save(fig, "colours_redshift.png")
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--area", type=float, default=0.1, help="sky area in deg^2 (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--output", default="doc/catalog-calibration.json", help="JSON output path")
    parser.add_argument("--figures", default="doc/figures/catalog", help="figure folder ('' for none)")
    args = parser.parse_args(argv)

    from lsst.meas.madness.simulation.catalog_targets import compare_to_targets, measure_catalog_statistics
    from lsst.meas.madness.simulation.skypy_catalog import SkyPyCatalogParameters, generate_catsim_catalog

    params = SkyPyCatalogParameters()
    t0 = time.perf_counter()
    table = generate_catsim_catalog(args.area, args.seed, params=params)
    seconds = time.perf_counter() - t0
    stats = measure_catalog_statistics(table, args.area)
    rows = compare_to_targets(stats)
    figures = _figures(table, stats, args.area, Path(args.figures)) if args.figures else []

    # Colour medians per redshift bin, reported in the JSON for doc/catalog.md.
    z = np.asarray(table["redshift"])
    r = np.asarray(table["r_ab"])
    bright = r < 25.0
    colours = {}
    for lo, hi in ((0.0, 0.5), (0.5, 1.0), (1.0, 1.5), (1.5, 2.5), (2.5, 4.0)):
        sel = bright & (z >= lo) & (z < hi)
        colours[f"{lo}-{hi}"] = {
            "n": int(sel.sum()),
            "median_g_r": float(np.median((table["g_ab"] - table["r_ab"])[sel])) if sel.any() else None,
            "median_r_i": float(np.median((table["r_ab"] - table["i_ab"])[sel])) if sel.any() else None,
        }
    result = {
        "area_deg2": args.area,
        "seed": args.seed,
        "generation_seconds": round(seconds, 2),
        "galaxies_per_second": round(len(table) / seconds, 1),
        "statistics": stats,
        "targets": rows,
        "colours_r_lt_25": colours,
        "parameters": params.as_dict(),
        "figures": figures,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")

    print(f"{len(table)} galaxies over {args.area} deg^2 in {seconds:.1f} s (seed {args.seed})")
    print(f"{'statistic':30s} {'measured':>12s} {'target':>12s} {'range':>25s} pass")
    for row in rows:
        rng = "" if row["range"] is None else f"[{row['range'][0]:.4g}, {row['range'][1]:.4g}]"
        tgt = "" if row["target"] is None else f"{row['target']:.4g}"
        print(f"{row['name']:30s} {row['measured']:12.4g} {tgt:>12s} {rng:>25s} {row['pass']}")
    failed = [row["name"] for row in rows if row["pass"] is False]
    if failed:
        print(f"FAILED targets: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
