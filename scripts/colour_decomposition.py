"""The g-r colour residual against the catalogue taken apart: the floor every method shares, and each method's own part.

Usage::

    python scripts/colour_decomposition.py EVAL_DIR/measurements.json [--bootstrap 2000] [--seed 0] \
        [--reference scarlet2] [--output colour.json]

The paper's true colour residual ``dC^T = C_m - C^T`` (eq. 20, against the catalogue colour)
is the sum of the method's blending residual ``dC^B = C_m - C^N`` (eq. 21, against the colour
of the same galaxy photometered alone in the same noise) and a floor ``C^N - C^T`` that no
deblender changes (the aperture fluxes' noise, and the aperture's colour against the total's).
So ``var(dC^T) = var(floor) + var(dC^B) + 2 cov(dC^B, floor)``: a method can have the smallest
``dC^B`` and not the smallest ``dC^T`` when its colour errors cancel less of the floor's.

On the galaxies with kappa_r <= 5 that every method measures (g and r finite), prints per method
the std of dC^T and dC^B and their covariance term, and, resampling the fields (galaxies of a
field share blends), the 95% interval of MADNESS's dC^T std minus each peer's. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("measurements", type=Path, help="measurements.json of a `madness evaluate` run")
    parser.add_argument("--method", default="madness", help="the method compared with the others")
    parser.add_argument("--kappa-max", type=float, default=5.0)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    from lsst.meas.madness.evaluation.report import read_measurements

    bands, galaxies, metrics = read_measurements(args.measurements)
    if args.method not in metrics:
        parser.error(f"{args.measurements} has no method {args.method!r}: {', '.join(metrics)}")
    kappa_r = galaxies["kappa"][:, bands.index("r")]
    c_true, c_iso = galaxies["colour_true"], galaxies["colour_isolated"]
    keep = np.isfinite(c_true) & np.isfinite(c_iso) & (kappa_r <= args.kappa_max)
    methods = [m for m in metrics if np.isfinite(metrics[m]["colour"]).any()]
    for m in methods:
        keep &= np.isfinite(metrics[m]["colour"])
    floor = (c_iso - c_true)[keep]
    field = galaxies["field_id"][keep]
    rows = {}
    for m in methods:
        blend = (metrics[m]["colour"] - c_iso)[keep]
        rows[m] = {"std_dC_true": float(np.std(blend + floor)), "std_dC_blend": float(np.std(blend)),
                   "cov_blend_floor": float(np.cov(blend, floor)[0, 1])}
    rng = np.random.default_rng(args.seed)
    fields = np.unique(field)
    members = [np.flatnonzero(field == f) for f in fields]
    dct = {m: (metrics[m]["colour"] - c_true)[keep] for m in methods}
    for m in methods:
        if m == args.method:
            continue
        diffs = []
        for _ in range(args.bootstrap):
            s = np.concatenate([members[i] for i in rng.integers(0, len(fields), len(fields))])
            diffs.append(np.std(dct[args.method][s]) - np.std(dct[m][s]))
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        rows[m][f"{args.method}_minus_this_std_dC_true"] = {
            "value": rows[args.method]["std_dC_true"] - rows[m]["std_dC_true"], "ci95": [float(lo), float(hi)]}
    result = {"measurements": args.measurements.name, "n_galaxies": int(keep.sum()), "n_fields": len(fields),
              "kappa_r_max": args.kappa_max, "std_floor": float(np.std(floor)), "methods": rows}
    print(f"{result['n_galaxies']} galaxies in {len(fields)} fields; std of the floor C^N - C^T: "
          f"{result['std_floor']:.4f}\n")
    print(f"| method | std dC^T | std dC^B | cov(dC^B, floor) | {args.method} minus it, std dC^T (95% over fields) |")
    print("| --- | --- | --- | --- | --- |")
    for m, r in rows.items():
        d = r.get(f"{args.method}_minus_this_std_dC_true")
        diff = "" if d is None else f"{d['value']:+.4f} ({d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f})"
        print(f"| {m} | {r['std_dC_true']:.4f} | {r['std_dC_blend']:.4f} | {r['cov_blend_floor']:+.5f} | {diff} |")
    if args.output:
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
