"""Where the evaluation's means come from: galaxies near one bigger than the model stamp, and the rest.

Usage::

    python scripts/error_tail.py --fields TESTFIELDS_DIR --evaluation EVAL_OUTPUT_DIR \
        --output tail.json [--band r] [--radius-arcsec 10] [--threshold 0.05]
    python scripts/error_tail.py --fields TESTFIELDS_DIR --ablations ABLATIONS.npz --output tail.json

Reads the per-galaxy measurements of a ``madness evaluate`` run (``measurements.json``; every
method it ran) or of ``scripts/map_ablations.py`` (its ``.npz``; every ablation, as methods)
and the same TestFields' truth, and splits the galaxies of the report's cut
(``kappa <= 5`` in the band) by where they are relative to a "large" galaxy, one with more than
``--threshold`` of its own flux outside the 45-px model stamp (`flux_outside_stamp`): within
``--radius-arcsec`` of one (the galaxy itself included), elsewhere in a field that holds one (a
disc of r ~ 17 can still put about the sky noise per pixel 20" away, which a 45-px model of it
leaves to its neighbours), and in fields without one. For each method and group: the number of
galaxies, mean and median abs(dF/F), mean cosine and the std of the e1 residual (the report's
definitions), and the share of the whole mean the group holds. The split uses the truth alone,
so it is the same for every method: what a model of the stamp's size cannot reach whatever its
training, against what training can still move (issue 12's "what would close the rest"; issue
14, section 2).

Writes the JSON and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fields", type=Path, required=True,
                        help="TestFields directory the evaluation ran on")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--evaluation", type=Path, help="madness evaluate output directory")
    source.add_argument("--ablations", type=Path, help="scripts/map_ablations.py per-galaxy .npz")
    parser.add_argument("--output", type=Path, required=True, help="JSON to write")
    parser.add_argument("--band", default="r")
    parser.add_argument("--radius-arcsec", type=float, default=10.0,
                        help="a galaxy bigger than the stamp this close counts (issue 14: 10\")")
    parser.add_argument("--threshold", type=float, default=0.05,
                        help="fraction of a galaxy's own flux outside its stamp that makes it 'large'")
    args = parser.parse_args(argv)

    import numpy as np

    from lsst.meas.madness.evaluation import flux_outside_stamp, iter_test_fields, near_large_galaxy
    from lsst.meas.madness.evaluation.report import KAPPA_MAX, read_measurements
    from lsst.meas.madness.simulation import SimulatedDataset

    if args.evaluation is not None:
        measurements = args.evaluation / "measurements.json"
        if not measurements.exists():
            print(f"error: {measurements} does not exist (run `madness evaluate --output {args.evaluation}` "
                  "to the end first)", file=sys.stderr)
            return 2
        bands, galaxies, metrics = read_measurements(measurements)
    else:
        bands, galaxies, metrics = _read_ablations(args.ablations)
    if args.band not in bands:
        print(f"error: band {args.band!r} not measured (bands: {' '.join(bands)})", file=sys.stderr)
        return 2
    b = bands.index(args.band)

    # The truth's split, field by field, in the measurements' (field_id, galaxy) order.
    field_ids = galaxies["field_id"].astype(int)
    index = galaxies["galaxy"].astype(int)
    near = np.zeros(len(field_ids), bool)
    in_field = np.zeros(len(field_ids), bool)
    outside = np.full(len(field_ids), np.nan)
    seen = set()
    stamp_size = 45
    pixel_scale = float((SimulatedDataset(args.fields).manifest.info or {}).get("pixel_scale", 0.2))
    for field in iter_test_fields(args.fields):
        rows = np.flatnonzero(field_ids == field.field_id)
        if not len(rows):
            continue
        seen.add(field.field_id)
        frac = flux_outside_stamp(field.isolated[:, list(field.bands).index(args.band)], field.centers_xy,
                                  stamp_size)
        flags = near_large_galaxy(field.centers_xy, frac, radius=args.radius_arcsec / pixel_scale,
                                  threshold=args.threshold)
        near[rows] = flags[index[rows]]
        in_field[rows] = bool(np.any(np.nan_to_num(frac) > args.threshold))
        outside[rows] = frac[index[rows]]
    missing = set(field_ids.tolist()) - seen
    if missing:
        print(f"error: {len(missing)} evaluated fields are not in {args.fields} "
              f"(e.g. {sorted(missing)[:3]}): "
              "give the TestFields the evaluation ran on", file=sys.stderr)
        return 2

    kappa = galaxies["kappa"][:, b]
    cut = np.isfinite(kappa) & (kappa <= KAPPA_MAX)
    groups = {"all": cut, "near_large": cut & near, "field_with_large": cut & in_field & ~near,
              "fields_without": cut & ~in_field}
    out = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores",
        "band": args.band, "radius_arcsec": args.radius_arcsec, "threshold": args.threshold,
        "stamp_size": stamp_size,
        "n_fields": len(seen),
        "n_fields_with_large": int(len({int(f) for f, o in zip(field_ids, outside) if o > args.threshold})),
        "n_large": int(np.sum(cut & (outside > args.threshold))),
        "methods": {},
    }
    for name, m in metrics.items():
        err = np.abs(m["flux_residual"][:, b])
        cos = m["cosine"][:, b]
        e1 = m["e1_residual"][:, b]
        total = np.nansum(err[cut])
        entry = {}
        for group, sel in groups.items():
            ok = sel & np.isfinite(err)
            entry[group] = {
                "n": int(ok.sum()),
                "mean_abs_flux_residual": _finite_mean(err[ok]),
                "median_abs_flux_residual": float(np.median(err[ok])) if ok.any() else None,
                "share_of_total": float(err[ok].sum() / total) if total > 0 else None,
                "mean_cosine": _finite_mean(cos[sel]),
                "std_e1_residual": _finite_std(e1[sel]),
            }
        out["methods"][name] = entry
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(args.output.suffix + ".tmp")
    tmp.write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
    tmp.replace(args.output)
    print(markdown_table(out))
    return 0


def _read_ablations(path: Path):
    """``map_ablations.py``'s per-galaxy arrays as ``(bands, galaxies, metrics)``, like `read_measurements`.

    Its rows are every galaxy of every field, in field order, so a galaxy's index in its field
    is its rank among its field's rows.
    """
    import numpy as np

    data = np.load(path)
    fields = data["field_of_galaxy"].astype(int)
    index = np.zeros(len(fields), int)
    for f in np.unique(fields):
        rows = np.flatnonzero(fields == f)
        index[rows] = np.arange(len(rows))
    galaxies = {"field_id": fields, "galaxy": index, "kappa": data["kappa"]}
    names = sorted({key.split("/")[0] for key in data.files if "/" in key})
    metrics = {name: {"flux_residual": data[f"{name}/abs_flux_residual"], "cosine": data[f"{name}/cosine"],
                      "e1_residual": data[f"{name}/e1_residual"]} for name in names}
    return tuple(str(b) for b in data["bands"]), galaxies, metrics


def _finite_mean(values):
    import numpy as np

    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def _finite_std(values):
    import numpy as np

    values = values[np.isfinite(values)]
    return float(values.std()) if len(values) > 1 else None


def markdown_table(out: dict) -> str:
    """One row per method and group: n, mean / median abs(dF/F), share of the mean, cosine, std e1."""
    band = out["band"]
    lines = [f"{out['n_fields']} fields, {out['n_fields_with_large']} with a galaxy of more than "
             f"{out['threshold']:.0%} of its {band} flux outside the {out['stamp_size']}-px stamp; "
             f"'near': within {out['radius_arcsec']:g}\" of one.", "",
             f"| method | galaxies | n | mean abs(dF/F) {band} | median | share of the mean "
             f"| mean cosine {band} "
             f"| std e1 {band} |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in out["methods"].items():
        for group, label in (("all", "all"), ("near_large", "near a large galaxy"),
                             ("field_with_large", "elsewhere in its field"),
                             ("fields_without", "fields without one")):
            g = entry[group]
            lines.append(f"| {name} | {label} | {g['n']} | {_fmt(g['mean_abs_flux_residual'])} | "
                         f"{_fmt(g['median_abs_flux_residual'])} | {_fmt(g['share_of_total'], 2)} | "
                         f"{_fmt(g['mean_cosine'])} | {_fmt(g['std_e1_residual'], 3)} |")
    return "\n".join(lines)


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
