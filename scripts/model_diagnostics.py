"""Where a model's error lives: the decoder's reach, the VAE-deblender alone, MAP in blends.

Usage::

    python scripts/model_diagnostics.py --bundle BUNDLE --fields VALIDATION_FIELDS \
        --output diagnostics.json [--max-fields 20] [--label NAME]

On the same validation TestFields (a seed never used to report results):

1. **reach** -- every galaxy fitted alone on its noiseless image with 200 MAP steps
   (`lsst.meas.madness.evaluation.decoder_reach`): what the decoder can draw at all;
2. **VAE-deblender** -- the initialisation alone, in the blended fields;
3. **MADNESS** -- MAP in the blended fields (the engine's defaults);

and no deblending and scarlet_lite (when installed: the Rubin DRP deblender, run as DRP runs it)
for scale. Per band: median |dF/F| and mean cosine (reach), mean and median |dF/F| (kappa <= 5)
and mean cosine (fields). Then which galaxies carry the mean r-band error: the share of each
method's mean in its 5 largest errors, and the largest MADNESS errors with what surrounds them
(brightest neighbour within 3", nearest neighbour, the fraction of the galaxy's own r flux that
falls outside the model stamp). Writes the JSON and prints Markdown tables;
``scripts/ship_model.py --diagnostics`` puts them in the model card.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="model bundle (default: the packaged one)")
    parser.add_argument("--fields", required=True, type=Path, help="validation TestFields dataset directory")
    parser.add_argument("--max-fields", type=int, default=20)
    parser.add_argument("--output", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--label", default=None, help="name of the model in the table")
    args = parser.parse_args(argv)

    from lsst.meas.madness import MadnessDeblender
    from lsst.meas.madness.evaluation import decoder_reach, iter_test_fields, run_evaluation, summarize

    start = time.perf_counter()
    deblender = MadnessDeblender.from_bundle(args.bundle)
    fields = list(iter_test_fields(args.fields, max_fields=args.max_fields))
    reach = decoder_reach(deblender, fields).summary()
    reach_seconds = time.perf_counter() - start
    result = run_evaluation(fields, ["blended", "vae_deblender", "madness", "scarlet_lite"], bundle=args.bundle,
                            progress=False, n_fields=len(fields))
    summary = summarize(result)
    bands = list(result.bands)
    out = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "bundle": args.bundle or "packaged default",
        "label": args.label or (Path(args.bundle).name if args.bundle else "packaged default"),
        "fields": args.fields.name,
        "n_fields": len(fields),
        "bands": bands,
        "reach": reach,
        "reach_seconds": round(reach_seconds, 1),
        "methods": {name: {"bands": entry.get("bands"), "resources": entry.get("resources")}
                    for name, entry in summary["methods"].items()},
        "machine": f"{os.cpu_count()} cores",
        "largest_errors": largest_errors(result, fields, deblender.stamp_size),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, args.output)
    print(markdown_table(out))
    print()
    print(largest_errors_table(out["largest_errors"]))
    return 0


def largest_errors(result, fields, stamp_size: int, band: str = "r", top: int = 10) -> dict:
    """Which galaxies carry each method's mean abs(dF/F) in ``band`` (kappa <= 5).

    Returns, per method, the mean, the mean without its 5 largest errors and their share of the
    total; and the ``top`` largest MADNESS errors with their surroundings.
    """
    import numpy as np

    b = list(result.bands).index(band)
    g = result.galaxies
    keep = g["kappa"][:, b] <= 5
    out = {"band": band, "methods": {}}
    for name, metrics in result.metrics.items():
        err = np.abs(metrics["flux_residual"][:, b])[keep]
        err = err[np.isfinite(err)]
        if not len(err):
            continue
        ranked = np.sort(err)[::-1]
        out["methods"][name] = {"n": int(len(err)), "mean": float(err.mean()),
                                "mean_without_top5": float(ranked[5:].mean()),
                                "top5_share": float(ranked[:5].sum() / ranked.sum())}
    # How common galaxies bigger than the stamp are (truth only: the same for every model).
    outside = np.array([_outside(f.isolated[k, list(f.bands).index(band)], f.centers_xy[k], stamp_size)
                        for f in fields for k in range(f.n_galaxies)])
    out["own_flux_outside_stamp"] = {"n_galaxies": int(len(outside)), "fraction_over_1pc": float((outside > 0.01).mean()),
                                     "fraction_over_5pc": float((outside > 0.05).mean())}
    if "madness" not in result.metrics:
        return out
    # Per galaxy: neighbours and the own flux outside the stamp, from each field's truth.
    by_field = {f.field_id: f for f in fields}
    rows = []
    err = np.abs(result.metrics["madness"]["flux_residual"][:, b])
    order = [i for i in np.argsort(-np.where(keep & np.isfinite(err), err, -1)) if keep[i]][:top]
    for i in order:
        f = by_field[int(g["field_id"][i])]
        j = int(g["galaxy"][i])
        field_band = list(f.bands).index(band)
        iso = f.isolated[:, field_band]
        flux = iso.sum(axis=(1, 2))
        d = np.hypot(*(f.centers_xy - f.centers_xy[j]).T)
        d[j] = np.inf
        near = d < 15.0  # 3" at 0.2"/px
        around = np.flatnonzero(d < 2 * stamp_size)
        rows.append({
            "field_id": int(f.field_id), "galaxy": j, "r_ab": float(g["r_ab"][i]), "snr_r": float(g["snr_r"][i]),
            "kappa": float(g["kappa"][i, b]), "nearest_px": float(d.min()),
            "brightest_neighbour_ratio_3arcsec": float(flux[near].max() / flux[j]) if near.any() else 0.0,
            "own_flux_outside_stamp": _outside(iso[j], f.centers_xy[j], stamp_size),
            "brightest_in_field_outside_stamp": max((_outside(iso[k], f.centers_xy[k], stamp_size) for k in around),
                                                    default=0.0),
            "abs_dflux": {name: float(abs(m["flux_residual"][i, b])) for name, m in result.metrics.items()},
        })
    out["madness_largest"] = rows
    return out


def _outside(image, center_xy, stamp_size: int) -> float:
    """Fraction of ``image``'s flux ``(H, W)`` outside the model stamp around ``center_xy``."""
    import numpy as np

    from lsst.meas.madness.evaluation import flux_outside_stamp

    return float(flux_outside_stamp(image[None], np.asarray([center_xy]), stamp_size)[0])


def largest_errors_table(entry: dict) -> str:
    """The share of the mean in the largest errors, and the largest MADNESS errors, as Markdown."""
    band = entry["band"]
    lines = [f"| method | mean abs(dF/F) {band} | without its 5 largest | share of the 5 largest |",
             "| --- | --- | --- | --- |"]
    for name, m in entry["methods"].items():
        lines.append(f"| {name} | {m['mean']:.4f} | {m['mean_without_top5']:.4f} | {m['top5_share']:.2f} |")
    share = entry.get("own_flux_outside_stamp")
    if share:
        lines += ["", f"Of the {share['n_galaxies']} galaxies of these fields, {100 * share['fraction_over_1pc']:.1f}% have "
                  f"more than 1% of their own {band} flux outside the model stamp, "
                  f"{100 * share['fraction_over_5pc']:.1f}% more than 5%."]
    rows = entry.get("madness_largest") or []
    if rows:
        others = [k for k in rows[0]["abs_dflux"] if k != "madness"]
        lines += ["", f"| field | galaxy | {band} mag | SNR | kappa | nearest (px) | brightest within 3\" "
                  "(flux ratio) | own flux outside stamp | worst neighbour's flux outside stamp | MADNESS | "
                  + " | ".join(others) + " |",
                  "| " + " | ".join(["---"] * (10 + len(others))) + " |"]
        for r in rows:
            lines.append(f"| {r['field_id']} | {r['galaxy']} | {r['r_ab']:.2f} | {r['snr_r']:.0f} | {r['kappa']:.2f} | "
                         f"{r['nearest_px']:.1f} | {r['brightest_neighbour_ratio_3arcsec']:.1f} | "
                         f"{r['own_flux_outside_stamp']:.3f} | {r['brightest_in_field_outside_stamp']:.3f} | "
                         f"{r['abs_dflux']['madness']:.3f} | "
                         + " | ".join(f"{r['abs_dflux'][k]:.3f}" for k in others) + " |")
    return "\n".join(lines)


def _fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(diag: dict) -> str:
    """The diagnostics as a Markdown table, one row per band."""
    rows = ["| band | reach median abs(dF/F) | reach mean cosine | VAE-deblender mean abs(dF/F) | "
            "MADNESS mean abs(dF/F) | MADNESS median abs(dF/F) | MADNESS mean cosine | no deblending mean abs(dF/F) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    reach, methods = diag["reach"], diag["methods"]

    def band(method, b, key):
        entry = (methods.get(method) or {}).get("bands") or {}
        return (entry.get(b) or {}).get(key)

    for b in diag["bands"]:
        rows.append(f"| {b} | {_fmt(reach.get(f'flux_error_median_{b}'))} | {_fmt(reach.get(f'cosine_mean_{b}'))} | "
                    f"{_fmt(band('vae_deblender', b, 'mean_abs_flux_residual'))} | "
                    f"{_fmt(band('madness', b, 'mean_abs_flux_residual'))} | "
                    f"{_fmt(band('madness', b, 'median_abs_flux_residual'))} | "
                    f"{_fmt(band('madness', b, 'mean_cosine'))} | "
                    f"{_fmt(band('blended', b, 'mean_abs_flux_residual'))} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
