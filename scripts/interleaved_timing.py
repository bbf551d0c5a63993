"""The time of MAP settings side by side: each field deblended by every variant in turn.

Usage::

    python scripts/interleaved_timing.py --fields TESTFIELDS --max-fields 20 \
        --variant off:symmetry_weight=0 --variant on: [--output timing.json]

Two evaluation runs one after the other compare the machine's state as much as the settings (a
virtual machine's cores change speed between runs): here every field is deblended by each
variant in turn, so a drift slows all of them alike. Each variant is a ``NAME:KEY=VALUE,...`` of
`MapSettings` fields over the engine's defaults (``NAME:`` alone: the defaults) and has its own
`MadnessDeblender`, compiled on the first field before anything is timed. The fields are
deblended as `madness evaluate` does (all galaxies of a field as one blend at their true
centres, the simulation's PSF of ``--psf-size``). Reports per variant the wall and process CPU
seconds, MAP steps, seconds per galaxy and per step, and the ratio of each variant's seconds per
step to the first variant's (median over fields, with the 10th and 90th percentiles).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def _variant(text: str) -> tuple[str, dict]:
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a variant is NAME:KEY=VALUE,... (or NAME:), got {text!r}")
    from lsst.meas.madness import MapSettings
    from lsst.meas.madness.errors import MadnessValueError

    try:
        return name, MapSettings.parse_overrides(filter(None, rest.split(",")))
    except MadnessValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", required=True, type=Path, help="TestFields dataset directory")
    parser.add_argument("--max-fields", type=int, default=20)
    parser.add_argument("--variant", dest="variants", type=_variant, action="append", required=True,
                        help="NAME:KEY=VALUE,... of MapSettings over the defaults (repeatable; the first is "
                        "the reference of the ratios)")
    parser.add_argument("--bundle", default=None, help="model bundle (default: the packaged one)")
    parser.add_argument("--psf-size", type=int, default=201)
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    names = [n for n, _ in args.variants]
    if len(set(names)) != len(names):
        parser.error(f"variant names repeat: {names}")

    import numpy as np

    from lsst.meas.madness import MadnessDeblender
    from lsst.meas.madness.backend import cpu_model
    from lsst.meas.madness.evaluation import iter_test_fields
    from lsst.meas.madness.evaluation.methods import psf_images
    from lsst.meas.madness.simulation import LsstConditions

    deblenders = {}
    for name, overrides in args.variants:
        d = MadnessDeblender.from_bundle(args.bundle)
        d.settings = d.settings.replace(**overrides)
        deblenders[name] = d
    bands = tuple(deblenders[names[0]].bands)
    conditions = LsstConditions.from_surveycodex(bands=bands)
    psf = psf_images(conditions, bands, args.psf_size)
    rows = []
    for k, field in enumerate(iter_test_fields(args.fields, max_fields=args.max_fields, conditions=conditions)):
        variance = np.broadcast_to(np.asarray(field.variance, np.float32)[:, None, None], field.image.shape)
        row = {"field_id": int(field.field_id), "n_galaxies": int(len(field.catalog))}
        for name, d in deblenders.items():
            if k == 0:  # compile first: the timed fit below is the warm one
                d.deblend(field.image, field.centers_xy, variance=variance, psf=psf)
            cpu, wall = time.process_time(), time.perf_counter()
            result = d.deblend(field.image, field.centers_xy, variance=variance, psf=psf)
            row[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                         "steps": int(np.max(result.n_iter))}
        rows.append(row)
        print(json.dumps({"field": row["field_id"], **{n: round(row[n]["wall_s"], 2) for n in names}}), flush=True)

    n_gal = sum(r["n_galaxies"] for r in rows)
    summary = {}
    ref = names[0]
    for name in names:
        wall = sum(r[name]["wall_s"] for r in rows)
        cpu = sum(r[name]["cpu_s"] for r in rows)
        steps = sum(r[name]["steps"] for r in rows)
        ratio = [(r[name]["wall_s"] / r[name]["steps"]) / (r[ref]["wall_s"] / r[ref]["steps"]) for r in rows]
        summary[name] = {"settings": {k: str(v) for k, v in dict(args.variants)[name].items()}, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                         "steps": steps, "s_per_galaxy": round(wall / n_gal, 4),
                         "ms_per_step": round(1e3 * wall / steps, 2),
                         "step_time_ratio_median": round(float(np.median(ratio)), 3),
                         "step_time_ratio_p10_p90": [round(float(q), 3) for q in np.percentile(ratio, [10, 90])]}
    result = {"fields": str(args.fields), "n_fields": len(rows), "n_galaxies": n_gal,
              "machine": f"{cpu_model()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
              "summary": summary, "per_field": rows}
    print(f"\n| variant | settings | s / galaxy | steps | ms / step | step time / {ref}'s (median, p10-p90) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, s in summary.items():
        lo, hi = s["step_time_ratio_p10_p90"]
        settings = ", ".join(f"{k}={v}" for k, v in s["settings"].items()) or "defaults"
        print(f"| {name} | {settings} | {s['s_per_galaxy']} | {s['steps']} | {s['ms_per_step']} | "
              f"{s['step_time_ratio_median']} ({lo}-{hi}) |")
    if args.output:
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
