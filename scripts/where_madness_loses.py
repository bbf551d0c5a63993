"""Where MADNESS loses to classic scarlet in a `madness evaluate` run: r abs(dF/F) per galaxy by
blendedness kappa_r, r magnitude and SNR, over the galaxies with kappa_r <= 5.

Usage::

    python scripts/where_madness_loses.py RUN_DIR OUT.json

``RUN_DIR`` is an evaluation output (its ``partial/field-*.npz``) holding ``madness`` and
``scarlet``; prints Markdown tables and writes them as JSON.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np

KAPPA_MAX = 5.0
R = 2  # r in the fields' ugrizy order


def galaxies(run: Path) -> dict[str, np.ndarray]:
    """Per galaxy with kappa_r <= 5: kappa_r, r_ab, snr_r and both methods' abs(dF/F) in r."""
    columns: dict[str, list] = {}
    files = sorted(glob.glob(str(run / "partial" / "field-*.npz")))
    if not files:
        raise SystemExit(f"{run}: no partial/field-*.npz")
    for path in files:
        z = np.load(path)
        keep = z["g/kappa"][:, R] <= KAPPA_MAX
        for name, values in (("kappa", z["g/kappa"][:, R]), ("r_ab", z["g/r_ab"]), ("snr", z["g/snr_r"]),
                             ("madness", np.abs(z["m/madness/flux_residual"][:, R])),
                             ("scarlet", np.abs(z["m/scarlet/flux_residual"][:, R]))):
            columns.setdefault(name, []).append(np.asarray(values)[keep])
    return {name: np.concatenate(parts) for name, parts in columns.items()}


def binned(g: dict[str, np.ndarray], key: str, edges) -> list[dict]:
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (g[key] >= lo) & (g[key] < hi) & np.isfinite(g["madness"]) & np.isfinite(g["scarlet"])
        if not sel.any():
            continue
        m, s = g["madness"][sel], g["scarlet"][sel]
        rows.append(dict(lo=lo, hi=hi, n=int(sel.sum()), madness_mean=float(m.mean()),
                         scarlet_mean=float(s.mean()), madness_median=float(np.median(m)),
                         scarlet_median=float(np.median(s)), madness_better=float((m < s).mean())))
    return rows


def markdown(rows: list[dict], label: str) -> str:
    lines = [f"| {label} | n | MADNESS mean | classic scarlet mean | ratio | MADNESS median | "
             "classic scarlet median | MADNESS better |", "| --- " * 8 + "|"]
    for r in rows:
        lines.append(f"| {r['lo']:g}-{r['hi']:g} | {r['n']} | {r['madness_mean']:.4f} | {r['scarlet_mean']:.4f} | "
                     f"{r['madness_mean'] / r['scarlet_mean']:.2f} | {r['madness_median']:.4f} | "
                     f"{r['scarlet_median']:.4f} | {r['madness_better']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    g = galaxies(args.run)
    out = {"run": args.run.name, "n_galaxies": int(len(g["kappa"])),
           "kappa": binned(g, "kappa", [0, 0.001, 0.01, 0.1, 1, KAPPA_MAX + 1e-9]),
           "r_ab": binned(g, "r_ab", [15, 21, 23, 24, 25, 26, 28]),
           "snr": binned(g, "snr", [10, 20, 50, 100, 1000, 1e7])}
    for key, label in (("kappa", "kappa_r"), ("r_ab", "r mag"), ("snr", "SNR_r")):
        print(markdown(out[key], label) + "\n")
    args.output.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
