#!/usr/bin/env python
"""MADNESS on TestFields with galaxies off their pixel centres: true float centres vs rounded ones.

Simulates ``--fields`` TestFields twice with the same seed, once on pixel centres (the default)
and once with uniform sub-pixel offsets (``TestFieldsConfig(subpixel=True)``), and deblends them
with the packaged model given (a) the true centres, (b) for the off-grid fields also the centres
rounded to their pixels (what the engine did before it shifted models: the same as (a) with the
shift ignored), (c) the rounded centres with position offsets fitted
(``MapSettings(fit_offsets=True)``). Reports, in r, mean abs(dF/F), mean cosine and std of the e1 residual (paper
section 4; all galaxies, and kappa <= 5 as in the paper's anchors).

Usage (single-threaded; ~2 min for 4 fields):
    TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1 \\
        .venv/bin/python scripts/subpixel_fields.py --fields 4 --output /tmp/subpixel-fields
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--seed", type=int, default=913)
    parser.add_argument("--output", default="/tmp/subpixel-fields")
    parser.add_argument("--json", default=None)
    parser.add_argument("--off-grid-only", action="store_true", help="skip the on-grid fields")
    args = parser.parse_args()

    from lsst.meas.madness import MadnessDeblender
    from lsst.meas.madness.engine.geometry import round_half_up
    from lsst.meas.madness.evaluation import (iter_test_fields, model_metrics, reference_metrics,
                                              simulate_test_fields)
    from lsst.meas.madness.simulation import LsstConditions, TestFieldsConfig

    out = Path(args.output)
    conditions = LsstConditions.from_surveycodex()
    deblender = MadnessDeblender.from_bundle(None)
    r = list(conditions.bands).index("r")
    rows = {}
    grids = (("on-grid", False), ("off-grid", True)) if not args.off_grid_only else (("off-grid", True),)
    for grid, subpixel in grids:
        simulate_test_fields(out / grid, args.fields, args.seed, workers=1, progress=False,
                             config=TestFieldsConfig(subpixel=subpixel))
        modes = (("true centres",) if not subpixel
                 else ("true centres (shifted)", "rounded centres", "rounded + fitted offsets"))
        acc = {m: {"dF": [], "cos": [], "e1": [], "kappa": []} for m in modes}
        for field in iter_test_fields(out / grid, max_fields=args.fields, conditions=conditions):
            ref = reference_metrics(field.image, field.isolated, field.catalog, variance=field.variance,
                                    conditions=conditions, centers_xy=field.centers_xy)
            var = np.broadcast_to(np.asarray(field.variance, np.float32)[:, None, None], field.image.shape)
            var = var.copy()
            for mode in modes:
                peaks = field.centers_xy
                if not mode.startswith("true"):
                    peaks = round_half_up(peaks).astype(float)
                settings = deblender.settings.replace(fit_offsets=mode.endswith("fitted offsets"))
                result = deblender.deblend(field.image, peaks, variance=var, settings=settings)
                m = model_metrics(ref, result.models, models_yx0=result.stamp_yx0, conditions=conditions)
                acc[mode]["dF"].append(m["flux_residual"][:, r])
                acc[mode]["cos"].append(m["cosine"][:, r])
                acc[mode]["e1"].append(m["e1_residual"])
                acc[mode]["kappa"].append(ref.metrics["kappa"][:, r] if ref.metrics["kappa"].ndim == 2
                                          else ref.metrics["kappa"])
        for mode, a in acc.items():
            dF, cos, e1, kappa = (np.concatenate(a[k]) for k in ("dF", "cos", "e1", "kappa"))
            e1 = e1[:, r] if e1.ndim == 2 else e1
            for sel_name, sel in (("all", np.ones(len(dF), bool)), ("kappa<=5", kappa <= 5)):
                key = f"{grid}, {mode}, {sel_name}"
                rows[key] = dict(n=int(sel.sum()), mean_abs_dF=float(np.nanmean(np.abs(dF[sel]))),
                                 mean_cosine=float(np.nanmean(cos[sel])), std_e1=float(np.nanstd(e1[sel])),
                                 median_abs_e1=float(np.nanmedian(np.abs(e1[sel]))),
                                 hsm_failed=int(np.isnan(e1[sel]).sum()))
    print(f"{'fields, peaks, galaxies':46s} {'n':>4s} {'|dF/F|':>8s} {'cosine':>8s} {'std e1':>8s} "
          f"{'med|e1|':>8s} {'HSM fail':>8s}")
    for key, v in rows.items():
        print(f"{key:46s} {v['n']:4d} {v['mean_abs_dF']:8.4f} {v['mean_cosine']:8.4f} {v['std_e1']:8.4f} "
              f"{v['median_abs_e1']:8.4f} {v['hsm_failed']:8d}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(fields=args.fields, seed=args.seed, rows=rows), indent=1))


if __name__ == "__main__":
    main()
