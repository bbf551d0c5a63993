#!/usr/bin/env python
"""Where the deblender's unmatched detections come from (issue 14: purity for i < 25).

Usage::

    python scripts/false_detections.py --output false-detections.json [--patches 16] [--first-seed 0] \
        [-c FIELD=VALUE ...]

Runs the detection benchmark's ``madness`` row (`scripts/detection_benchmark.py`: the same
simulated patches, the default detections, `MadnessDeblendTask` in process with the packaged
model and its default config, or ``-c`` overrides of `MadnessDeblendConfig`) and scores the
children against the truth as the benchmark does (one-to-one match within 0.5"; a detection's
magnitude is its galaxy's true i when matched, else its own i in a 1" radius aperture). For
every child with i < 25 that matches no galaxy, and for every child the residual peaks added
(matched or not), it records: whether the residual peaks or a pair split added it, the distance
to the nearest galaxy and that galaxy's i, whether that galaxy is matched by another child, and
the nearest *other* galaxy (for a matched child: the nearest but its own). Writes the JSON
(atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

PIXEL_SCALE = 0.2  # arcsec per pixel of the simulated patches


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--patches", type=int, default=16)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=301)
    parser.add_argument("--galaxies", type=int, default=40)
    parser.add_argument("--group-shift", type=int, default=15)
    parser.add_argument("-c", "--config", action="append", default=[], metavar="FIELD=VALUE",
                        help="MadnessDeblendConfig override, as detection_benchmark.py's variants")
    args = parser.parse_args(argv)

    from detection_benchmark import aperture_mag_i, deblended_children, make_config, patch_inputs

    from lsst.meas.madness import MadnessDeblender
    from lsst.meas.madness.evaluation.detection import score_detections
    from lsst.meas.madness.simulation.conditions import LsstConditions

    deblender = MadnessDeblender.from_bundle(None)
    config = make_config("madness", dict(item.split("=", 1) for item in args.config))
    conditions = LsstConditions.from_surveycodex()
    fwhm_i = conditions.psf_fwhm[conditions.bands.index("i")]
    rows, n_bright, n_bright_matched = [], 0, 0
    for seed in range(args.first_seed, args.first_seed + args.patches):
        patch, coadd, truth_xy = patch_inputs(seed, args.size, args.galaxies, args.group_shift, 3)
        truth_i = np.asarray(patch.truth["i_ab"])
        children, det_xy = deblended_children(coadd, config, deblender)
        score = score_detections(truth_xy, truth_i, np.asarray(patch.truth["snr_r"]), det_xy,
                                 aperture_mag_i(patch, det_xy), psf_fwhm=fwhm_i)
        matched, mag = score["detections"]["matched"], score["detections"]["mag"]
        bright = mag < 25
        n_bright += int(bright.sum())
        n_bright_matched += int((bright & matched).sum())
        residual = np.array([bool(c.get("deblend_residualPeak")) for c in children], bool)
        for j in np.flatnonzero(bright & (~matched | residual)):
            distance = np.hypot(*(truth_xy - det_xy[j]).T) * PIXEL_SCALE
            nearest = int(np.argmin(distance))
            others = distance.copy()
            if matched[j]:  # the nearest galaxy is its own: the nearest other one
                others[nearest] = np.inf
            other = int(np.argmin(others))
            rows.append({
                "seed": seed, "matched": bool(matched[j]), "i": round(float(mag[j]), 2),
                "residual_peak": bool(residual[j]), "pair_split": bool(children[j].get("deblend_pairSplit")),
                "nearest_arcsec": round(float(distance[nearest]), 2), "nearest_i": round(float(truth_i[nearest]), 2),
                "nearest_matched": bool(score["truth"]["matched"][nearest]),
                "other_arcsec": round(float(others[other]), 2), "other_i": round(float(truth_i[other]), 2),
            })
        print(f"seed {seed}: {int(bright.sum())} children with i < 25, {int((bright & ~matched).sum())} unmatched",
              flush=True)
    out = {"setup": {"patches": args.patches, "first_seed": args.first_seed, "size": args.size,
                     "galaxies_per_patch": args.galaxies, "group_shift_px": args.group_shift,
                     "config": args.config, "bundle": "packaged"},
           "children_i_lt_25": n_bright, "matched": n_bright_matched,
           "purity_i_lt_25": round(n_bright_matched / max(n_bright, 1), 4), "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, args.output)
    print(f"\npurity for i < 25: {n_bright_matched}/{n_bright}\n")
    print("| matched | added by | i | nearest galaxy (\") | its i | it is matched | nearest other galaxy (\") | its i |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in sorted(rows, key=lambda r: (r["matched"], r["other_arcsec"])):
        added = "residual peaks" if r["residual_peak"] else "pair split" if r["pair_split"] else "detection"
        print(f"| {'yes' if r['matched'] else 'no'} | {added} | {r['i']} | {r['nearest_arcsec']} | {r['nearest_i']} | "
              f"{'yes' if r['nearest_matched'] else 'no'} | {r['other_arcsec']} | {r['other_i']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
