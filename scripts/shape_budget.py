#!/usr/bin/env python
"""Where a model's shape error lives: the decoder's reach, each galaxy alone in its noise, in blends.

Usage::

    python scripts/shape_budget.py --fields VALIDATION_FIELDS --output shape-budget.json \
        [--max-fields 20] [--bundle BUNDLE] [--prior-weights 0.25 0.1 0]

Issue 12 asks for a std of the r-band e1 residual of at most 0.08 in blends. The same validation
galaxies (those whose 45x45 stamp holds >= 95% of their r flux, kappa_r <= 5 in their field) are
fitted three ways, and the e1 residual (HSM adaptive moments of the model minus the noiseless
truth's, eq. 23) compared:

1. **reach**: each galaxy alone on its noiseless image, 200 MAP steps
   (`lsst.meas.madness.evaluation.decoder_reach`): what the decoder can draw;
2. **alone in noise**: each galaxy alone on its image plus its field's own noise, the engine's
   stopping rule (``decoder_reach(noisy=True, steps=None)``), once per prior weight given: what
   the noise and the prior leave before any neighbour;
3. **in blends**: MADNESS on the fields with the engine's defaults (`run_evaluation`).

Per stage: the std of the residual over the common galaxies, split by r-band SNR (< 20, 20-50,
>= 50); a robust std (1.4826 MAD); and the slope of the residual against the true e1 (below zero:
shapes drawn rounder than they are). Writes the JSON and prints a Markdown table; beside the JSON,
``<output stem>.npz`` keeps every galaxy's residual per stage (``e1_residual``, one row per
``stages`` entry) with its ``field_id``, ``galaxy``, ``snr_r``, ``kappa_r`` and ``e1_true``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import numpy as np

SNR_BINS = ((0.0, 20.0), (20.0, 50.0), (50.0, np.inf))


def stage_stats(residual: np.ndarray, e1_true: np.ndarray, snr: np.ndarray) -> dict:
    """Std, robust std, per-SNR std and the slope against the true e1 of one stage's residuals.

    Examples
    --------
    >>> e = np.linspace(-0.5, 0.5, 101)
    >>> out = stage_stats(-0.2 * e, e, np.full(101, 30.0))
    >>> round(out["slope_vs_true_e1"], 6), out["n"], out["std_by_snr"]["20-50"]["n"]
    (-0.2, 101, 101)
    """
    ok = np.isfinite(residual) & np.isfinite(e1_true)
    res, e1, s = residual[ok], e1_true[ok], snr[ok]
    out = {"n": int(ok.sum()), "std": float(np.std(res)), "mean": float(np.mean(res)),
           "robust_std": float(1.4826 * np.median(np.abs(res - np.median(res)))),
           "slope_vs_true_e1": float(np.polyfit(e1, res, 1)[0]) if len(res) > 2 else float("nan"),
           "std_by_snr": {}}
    for lo, hi in SNR_BINS:
        m = (s >= lo) & (s < hi)
        key = f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">={lo:g}"
        out["std_by_snr"][key] = {"n": int(m.sum()), "std": float(np.std(res[m])) if m.any() else None}
    return out


def markdown_table(budget: dict) -> str:
    keys = [f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">={lo:g}" for lo, hi in SNR_BINS]
    rows = ["| stage | galaxies | std e1 residual r | SNR " + " | SNR ".join(keys)
            + " | robust std | slope vs true e1 |",
            "| --- | --- | --- |" + " --- |" * len(keys) + " --- | --- |"]
    for name, st in budget["stages"].items():
        cells = " | ".join(f"{st['std_by_snr'][k]['std']:.4f} ({st['std_by_snr'][k]['n']})"
                           if st["std_by_snr"][k]["std"] is not None else "-" for k in keys)
        rows.append(f"| {name} | {st['n']} | {st['std']:.4f} | {cells} | {st['robust_std']:.4f} | "
                    f"{st['slope_vs_true_e1']:+.3f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="model bundle (default: the packaged one)")
    parser.add_argument("--fields", required=True, type=Path, help="validation TestFields dataset directory")
    parser.add_argument("--max-fields", type=int, default=20)
    parser.add_argument("--prior-weights", type=float, nargs="+", default=[0.25],
                        help="prior weights of the 'alone in noise' fits (the engine's default first)")
    parser.add_argument("--output", required=True, type=Path, help="JSON file to write")
    args = parser.parse_args(argv)

    from lsst.meas.madness import MadnessDeblender
    from lsst.meas.madness.evaluation import decoder_reach, iter_test_fields, run_evaluation

    deblender = MadnessDeblender.from_bundle(args.bundle)
    fields = list(iter_test_fields(args.fields, max_fields=args.max_fields))
    bands = tuple(deblender.bands)
    r = bands.index("r")
    seconds, fits = {}, {}
    start = time.perf_counter()
    fits["reach (noiseless, alone, 200 steps)"] = decoder_reach(deblender, fields, steps=200)
    seconds["reach"] = time.perf_counter() - start
    for weight in args.prior_weights:
        start = time.perf_counter()
        settings = deblender.settings.replace(prior_weight=weight)
        fits[f"alone in noise, prior weight {weight:g}"] = decoder_reach(deblender, fields, steps=None,
                                                                         noisy=True, settings=settings)
        seconds[f"alone {weight:g}"] = time.perf_counter() - start
    start = time.perf_counter()
    blends = run_evaluation(fields, ["madness"], bundle=args.bundle, progress=False, n_fields=len(fields))
    seconds["blends"] = time.perf_counter() - start

    # The galaxies of the reach set, in its order, with their row in the blends' table.
    galaxies = blends.galaxies
    row_of = {(int(f), int(g)): k for k, (f, g) in enumerate(zip(galaxies["field_id"], galaxies["galaxy"]))}
    sources = next(iter(fits.values())).sources
    rows = np.array([row_of[(int(f), int(g))] for f, g in sources])
    kappa = np.asarray(galaxies["kappa"])[rows, r]
    keep = kappa <= 5
    e1_true = np.asarray(galaxies["e1_true"])[rows, r][keep]
    snr = np.asarray(galaxies["snr_r"])[rows][keep]
    residuals = {name: fit.e1_residual[keep, r] for name, fit in fits.items()}
    residuals["in blends (engine defaults)"] = np.asarray(blends.metrics["madness"]["e1_residual"])[rows, r][keep]
    common = np.logical_and.reduce([np.isfinite(v) for v in residuals.values()])
    out = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "bundle": args.bundle or "packaged default",
        "fields": args.fields.name,
        "n_fields": len(fields),
        "selection": "r flux >= 95% inside the 45x45 stamp, kappa_r <= 5, HSM finite in every stage",
        "machine": f"{os.cpu_count()} cores",
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "stages": {name: stage_stats(v[common], e1_true[common], snr[common]) for name, v in residuals.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, args.output)
    # Every galaxy of the common set beside the JSON, to ask which galaxies make a stage's excess.
    npz = args.output.with_suffix(".npz")
    tmp = npz.with_name(npz.stem + ".tmp.npz")
    np.savez(tmp, field_id=np.asarray(galaxies["field_id"])[rows][keep][common],
             galaxy=np.asarray(galaxies["galaxy"])[rows][keep][common], snr_r=snr[common],
             kappa_r=kappa[keep][common], e1_true=e1_true[common],
             stages=np.array(list(residuals)), e1_residual=np.stack([v[common] for v in residuals.values()]))
    os.replace(tmp, npz)
    print(markdown_table(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
