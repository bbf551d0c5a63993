#!/usr/bin/env python
"""Two MAP runs on the same fields, galaxy by galaxy (issue 12: selecting models on validation fields).

Usage::

    python scripts/paired_comparison.py A.npz B.npz [--ablation default] [--ablation-b default] \
        [--bootstrap 2000] [--seed 0] [--output comparison.json]
    python scripts/paired_comparison.py EVAL_A EVAL_B --ablation madness [--ablation-b scarlet]

``A.npz`` and ``B.npz`` are the per-galaxy files `scripts/map_ablations.py` writes beside its JSON;
``EVAL_A`` / ``EVAL_B`` may instead be output directories of ``madness evaluate`` (their
``partial/`` per-field files), with ``--ablation`` naming the method (two models on the same test
fields, or two methods of one run). Both must be the same fields, in the same order: the script
refuses inputs whose galaxy counts or kappas differ. For every band (kappa <= 5 in that band, as the evaluation report cuts) it prints each
run's mean and median abs(dF/F), the mean of the paired difference B - A with a bootstrap 95%
interval over *fields* (galaxies of one field are not independent: they share blends), and the
fraction of galaxies B fits better; then the same for r's cosine and e1 residual, and, where both
runs carry it, the g-r colour residual against the catalogue (kappa_r <= 5, as the report cuts):
its abs value paired, and the difference of its standard deviations (issue 12's std dC) with the
same interval over fields, since one galaxy far off in colour moves a std as much as many. A mean over a
few hundred galaxies moves with its few catastrophic ones; the paired difference removes what
both runs get equally wrong, and the interval says whether 20 fields can tell the two apart.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np


def _interval(statistic, a: np.ndarray, b: np.ndarray, groups: np.ndarray, n_boot: int, seed: int):
    """95% interval of ``statistic(a, b)`` from resampling whole groups (fields) with replacement:
    galaxies of one field share blends, so they are not independent draws."""
    ids = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in ids]
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for k in range(n_boot):
        pick = np.concatenate([members[i] for i in rng.integers(0, len(ids), len(ids))])
        boot[k] = statistic(a[pick], b[pick])
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return [float(round(lo, 12)), float(round(hi, 12))]


def _finite_pairs(a: np.ndarray, b: np.ndarray, groups: np.ndarray):
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok], groups[ok]


def paired(a: np.ndarray, b: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> dict:
    """Summary of ``b - a`` over finite pairs, the interval from resampling whole groups.

    Examples
    --------
    >>> a = np.array([0.1, 0.2, 0.3, 0.4]); g = np.array([0, 0, 1, 1])
    >>> out = paired(a, a - 0.05, g, n_boot=200, seed=0)
    >>> round(out["mean_diff"], 6), out["b_better"], out["ci95"] == [-0.05, -0.05]
    (-0.05, 1.0, True)
    """
    a, b, groups = _finite_pairs(a, b, groups)
    d = b - a
    return {"n": len(a), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "median_a": float(np.median(a)), "median_b": float(np.median(b)),
            "mean_diff": float(d.mean()),
            "ci95": _interval(lambda x, y: (y - x).mean(), a, b, groups, n_boot, seed),
            "b_better": float(np.mean(d < 0)), "a_better": float(np.mean(d > 0))}


def paired_std(a: np.ndarray, b: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> dict:
    """``std(b) - std(a)`` over finite pairs, the interval from resampling whole groups.

    Examples
    --------
    >>> g = np.repeat(np.arange(10), 3); a = np.tile([-1.0, 0.0, 1.0], 10)
    >>> out = paired_std(a, 2 * a, g, n_boot=100, seed=0)
    >>> round(out["diff"], 6), [round(x, 6) for x in out["ci95"]]
    (0.816497, [0.816497, 0.816497])
    """
    a, b, groups = _finite_pairs(a, b, groups)
    return {"n": len(a), "std_a": float(a.std()), "std_b": float(b.std()),
            "diff": float(b.std() - a.std()),
            "ci95": _interval(lambda x, y: y.std() - x.std(), a, b, groups, n_boot, seed)}


def load_evaluation(directory: Path) -> dict:
    """The per-galaxy arrays of a ``madness evaluate`` output directory, keyed as
    `scripts/map_ablations.py` writes them (``<method>/abs_flux_residual``, ``<method>/cosine``,
    ``<method>/e1_residual``, ``<method>/colour_residual_gr`` (the evaluation's
    ``colour_residual_true``), ``kappa``, ``field_of_galaxy``, ``bands``)."""
    partial = directory / "partial"
    bands = json.loads((partial / "run.json").read_text())["bands"]
    files = sorted(partial.glob("field-*.npz"))
    if not files:
        raise ValueError(f"{partial} holds no finished field")
    parts: dict[str, list[np.ndarray]] = {}
    for path in files:
        with np.load(path) as data:
            parts.setdefault("kappa", []).append(data["g/kappa"])
            parts.setdefault("field_of_galaxy", []).append(data["g/field_id"])
            for key in data.files:
                if key.startswith("m/") and key.rsplit("/", 1)[1] in ("flux_residual", "cosine", "e1_residual",
                                                                       "colour_residual_true"):
                    method, name = key[2:].rsplit("/", 1)
                    value = np.abs(data[key]) if name == "flux_residual" else data[key]
                    name = {"flux_residual": "abs_flux_residual",
                            "colour_residual_true": "colour_residual_gr"}.get(name, name)
                    parts.setdefault(f"{method}/{name}", []).append(value)
    out = {k: np.concatenate(v) for k, v in parts.items() if len(v) == len(files)}
    out["bands"] = np.array(bands)
    return out


def _load(path: Path):
    return load_evaluation(path) if path.is_dir() else np.load(path)


def compare(a_path: Path, b_path: Path, ablation_a: str = "default", ablation_b: str | None = None,
            n_boot: int = 2000, seed: int = 0) -> dict:
    """Per band abs(dF/F), and r cosine and abs(e1 residual), of run B against run A."""
    a, b = _load(a_path), _load(b_path)
    ablation_b = ablation_b or ablation_a
    if a["kappa"].shape != b["kappa"].shape or not np.allclose(a["kappa"], b["kappa"], equal_nan=True):
        raise ValueError(f"{a_path} and {b_path} are not the same galaxies (kappa differs)")
    bands = [str(x) for x in a["bands"]]
    groups, kappa = a["field_of_galaxy"], a["kappa"]
    out = {"a": f"{a_path}:{ablation_a}", "b": f"{b_path}:{ablation_b}", "bands": {}}
    for i, band in enumerate(bands):
        keep = kappa[:, i] <= 5
        out["bands"][band] = paired(a[f"{ablation_a}/abs_flux_residual"][keep, i],
                                    b[f"{ablation_b}/abs_flux_residual"][keep, i], groups[keep], n_boot, seed)
    r = bands.index("r")
    keep = kappa[:, r] <= 5

    def column(run, ablation, name):
        values = run[f"{ablation}/{name}"]
        return values[:, r] if values.ndim == 2 else values

    # Cosine: higher is better, so compare 1 - cosine.
    out["one_minus_cosine_r"] = paired(1 - column(a, ablation_a, "cosine")[keep],
                                       1 - column(b, ablation_b, "cosine")[keep], groups[keep], n_boot, seed)
    out["abs_e1_residual_r"] = paired(np.abs(column(a, ablation_a, "e1_residual")[keep]),
                                      np.abs(column(b, ablation_b, "e1_residual")[keep]), groups[keep], n_boot, seed)
    colour_a, colour_b = f"{ablation_a}/colour_residual_gr", f"{ablation_b}/colour_residual_gr"
    if colour_a in a and colour_b in b:
        ca, cb = np.asarray(a[colour_a])[keep], np.asarray(b[colour_b])[keep]
        out["abs_colour_residual_gr"] = paired(np.abs(ca), np.abs(cb), groups[keep], n_boot, seed)
        out["std_colour_residual_gr"] = paired_std(ca, cb, groups[keep], n_boot, seed)
    return out


def markdown(result: dict) -> str:
    rows = ["| quantity | n | mean A | mean B | median A | median B | mean B - A (95% over fields) | B better |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    items = [(f"abs(dF/F) {k}", v) for k, v in result["bands"].items()]
    items += [("1 - cosine r", result["one_minus_cosine_r"]), ("abs(e1 residual) r", result["abs_e1_residual_r"])]
    if "abs_colour_residual_gr" in result:
        items.append(("abs(dC) g-r", result["abs_colour_residual_gr"]))
    for name, v in items:
        rows.append(f"| {name} | {v['n']} | {v['mean_a']:.4f} | {v['mean_b']:.4f} | {v['median_a']:.4f} | "
                    f"{v['median_b']:.4f} | {v['mean_diff']:+.4f} ({v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}) | "
                    f"{100 * v['b_better']:.0f}% |")
    if "std_colour_residual_gr" in result:
        v = result["std_colour_residual_gr"]
        rows.append(f"\nstd dC (g-r), n {v['n']}: A {v['std_a']:.4f}, B {v['std_b']:.4f}, "
                    f"B - A {v['diff']:+.4f} ({v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f})")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--ablation", default="default", help="ablation of run A (and of B unless --ablation-b)")
    parser.add_argument("--ablation-b", default=None)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    result = compare(args.a, args.b, args.ablation, args.ablation_b, args.bootstrap, args.seed)
    print(f"A = {result['a']}\nB = {result['b']}\n")
    print(markdown(result))
    if args.output:
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
