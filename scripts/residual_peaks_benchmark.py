#!/usr/bin/env python
"""Residual peaks and pair splits (issue 14, section 1): MADNESS with and without a step on simulated patches.

Each patch is the detection benchmark's (`lsst.meas.madness.localrepo.simulate_patch`, SNR >= 10 in
r, sub-pixel centres, nJy). The default detection (``method="prominence"``) gives the parents;
`MadnessDeblendTask.deblendInModelUnits` deblends them with the packaged model, once with the
``--toggle`` field (default ``doResidualPeaks``; ``doPairSplits`` for pair splits) False and once
True; a field named ``detection.<field>`` is the detection's (e.g.
``detection.prominence.doBandPassPeaks``), and each run then deblends its own detections. The
children's centres are scored as detections against the truth
(`lsst.meas.madness.evaluation.detection`, one-to-one within 0.5"), and each matched child's r flux
against its galaxy's noiseless r flux.

    python scripts/residual_peaks_benchmark.py --patches 4 --output benchmarks/residual_peaks
    python scripts/residual_peaks_benchmark.py --patches 4 --toggle doPairSplits --output OUT
    python scripts/residual_peaks_benchmark.py --toggle none --on-config residualPeakMaxOffset=3 --output OUT

``--toggle none`` toggles nothing: the two runs then differ only by the ``--on-config`` overrides.

Each patch's numbers are kept in ``OUTPUT/patch-SEED.json``; rerunning the same command skips them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def run_patch(seed, args, deblender, psf_fwhm_i):
    from lsst.meas.madness.evaluation.detection import match_one_to_one, score_detections
    from lsst.meas.madness.localrepo import simulate_patch
    from lsst.meas.madness.tasks import (MadnessDeblendConfig, MadnessDeblendTask, MadnessDetectionConfig,
                                         MultibandCoadd)
    from lsst.meas.madness.tasks.deblend import parents_from_tables
    from lsst.meas.madness.tasks.detection import detect_footprints
    from lsst.meas.madness.units import ModelUnits, resolve_unit

    patch = simulate_patch(seed, size=args.size, n_galaxies=args.galaxies, min_snr=10.0,
                           group_shift=args.group_shift, max_group=args.max_group, subpixel=True).to_nanojansky()
    coadd = MultibandCoadd(bands=patch.bands, image=patch.image, variance=patch.variance,
                           bad=np.zeros(patch.image.shape, bool), yx0=patch.yx0, unit=patch.unit)
    toggles_detection = args.toggle.startswith("detection.")
    toggles_nothing = args.toggle == "none"

    def detected_parents(on: bool):
        detection = MadnessDetectionConfig()
        if toggles_detection:
            *path, leaf = args.toggle.removeprefix("detection.").split(".")
            target = detection
            for name in path:
                target = getattr(target, name)
            setattr(target, leaf, on)
        return parents_from_tables(*detect_footprints(coadd, detection))

    parents = None if toggles_detection else detected_parents(False)
    y0, x0 = patch.yx0
    scale = ModelUnits.from_deblender(deblender).scale(resolve_unit(coadd.unit, None), deblender.bands)
    truth = patch.truth
    truth_xy = np.stack([np.asarray(truth["x_true"]) - x0, np.asarray(truth["y_true"]) - y0], axis=1)
    out = {}
    if args.reuse_off:
        # The run without the toggled step does not depend on its settings: take it from another
        # output (DIR, or DIR:KEY to take that output's run KEY, e.g. its "on").
        where, _, key = args.reuse_off.partition(":")
        out["off"] = json.loads((Path(where) / f"patch-{seed}.json").read_text())[key or "off"]
    for name, on in (("off", False), ("on", True)):
        if name in out:
            continue
        config = MadnessDeblendConfig()
        if not (toggles_detection or toggles_nothing):
            setattr(config, args.toggle, on)
        for item in args.config + (args.on_config if on else []):
            field, value = item.split("=", 1)
            current = getattr(config, field)
            if isinstance(current, bool):
                value = value.lower() == "true"
            elif value.lower() == "none":
                value = None
            else:  # an optional field that is None by default converts with its declared type
                value = (type(current) if current is not None else getattr(type(config), field).dtype)(value)
            setattr(config, field, value)
        task = MadnessDeblendTask(config=config)
        t = time.perf_counter()
        result = task.deblendInModelUnits(coadd, parents or detected_parents(on), deblender, scale)
        seconds = time.perf_counter() - t
        kids = result.childRows
        xy = np.array([[c["deblend_center_x"] - x0, c["deblend_center_y"] - y0] for c in kids]).reshape(-1, 2)
        residual = np.array([bool(c.get("deblend_residualPeak", False)) for c in kids], bool)
        split = np.array([bool(c.get("deblend_pairSplit", False)) for c in kids], bool)
        score = score_detections(truth_xy, np.asarray(truth["i_ab"]), np.asarray(truth["snr_r"]), xy,
                                 np.full(len(xy), 99.0), psf_fwhm=psf_fwhm_i)
        ti, dj = match_one_to_one(truth_xy, xy, 0.5 / 0.2)
        flux = np.array([kids[j]["deblend_flux_r"] for j in dj])
        true_flux = np.asarray(truth["flux_r"])[ti]
        out[name] = {
            "seconds": seconds,
            # Wall seconds of the task's steps (fit, residual peaks, ...), from its metadata.
            "step_seconds": {key.removeprefix("seconds_"): float(task.metadata[key]) for key in task.metadata.names()
                             if key.startswith("seconds_")},
            "n_truth": len(truth_xy),
            "n_children": len(kids),
            "matched": int(score["detections"]["matched"].sum()),
            "residual_children": int(residual.sum()),
            "residual_matched": int(score["detections"]["matched"][residual].sum()),
            "split_children": int(split.sum()),
            "split_matched": int(score["detections"]["matched"][split].sum()),
            "snr_r": np.asarray(truth["snr_r"]).tolist(),
            "truth_matched": score["truth"]["matched"].tolist(),
            "abs_dflux_r": np.abs(flux / true_flux - 1).tolist(),
            "matched_truth_index": [int(i) for i in ti],
            # Positions, for a look at the residual children that match no galaxy.
            "children_xy": xy.round(2).tolist(),
            "children_residual": residual.tolist(),
            "children_matched": score["detections"]["matched"].astype(bool).tolist(),
            "children_flux_r": [float(c["deblend_flux_r"]) for c in kids],
        }
    out["truth_xy"] = truth_xy.round(2).tolist()
    out["truth_i"] = np.asarray(truth["i_ab"]).round(3).tolist()
    out["truth_flux_r"] = np.asarray(truth["flux_r"]).tolist()
    print(f"seed {seed}: " + ", ".join(
        f"{n}: {o['matched']}/{o['n_truth']} matched, {o['n_children']} children, {o['residual_children']} "
        f"residual ({o['residual_matched']} matched), {o.get('split_children', 0)} split "
        f"({o.get('split_matched', 0)} matched), {o['seconds']:.0f} s" for n, o in out.items() if n in ("off", "on")),
        flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=4)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=301)
    parser.add_argument("--galaxies", type=int, default=40)
    parser.add_argument("--group-shift", type=int, default=15)
    parser.add_argument("--max-group", type=int, default=3,
                        help="galaxies per group (2 with --group-shift 4: the detection benchmark's pair patches)")
    parser.add_argument("--output", default="benchmarks/residual_peaks")
    parser.add_argument("--toggle", default="doResidualPeaks",
                        help="the bool config field that is False in the 'off' run and True in the 'on' run "
                        "(detection.<field>: a MadnessDetectionConfig field; none: no field, the runs differ by --on-config)")
    parser.add_argument("--reuse-off", metavar="DIR[:KEY]",
                        help="take each patch's 'off' run from DIR/patch-SEED.json (an earlier output on "
                        "the same patches; :KEY takes its run KEY instead, e.g. :on)")
    parser.add_argument("--config", action="append", default=[], metavar="FIELD=VALUE",
                        help="MadnessDeblendConfig override for both runs, e.g. residualPeakThreshold=7")
    parser.add_argument("--on-config", action="append", default=[], metavar="FIELD=VALUE",
                        help="MadnessDeblendConfig override for the 'on' run only (after --config)")
    args = parser.parse_args(argv)

    from lsst.meas.madness import MadnessDeblender
    from lsst.meas.madness.simulation.conditions import LsstConditions

    conditions = LsstConditions.from_surveycodex()
    psf_fwhm_i = conditions.psf_fwhm[conditions.bands.index("i")]
    deblender = MadnessDeblender.from_bundle()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    patches = {}
    for seed in range(args.first_seed, args.first_seed + args.patches):
        # One file per patch, written atomically: a stopped run resumes at the next patch.
        done = out / f"patch-{seed}.json"
        if done.exists():
            patches[seed] = json.loads(done.read_text())
            print(f"seed {seed}: read from {done}", flush=True)
            continue
        patches[seed] = run_patch(seed, args, deblender, psf_fwhm_i)
        tmp = done.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(patches[seed]) + "\n")
        os.replace(tmp, done)
    summary = {}
    for name in ("off", "on"):
        rows = [p[name] for p in patches.values()]
        snr = np.concatenate([r["snr_r"] for r in rows])
        matched = np.concatenate([r["truth_matched"] for r in rows]).astype(bool)
        dflux = np.concatenate([r["abs_dflux_r"] for r in rows])
        summary[name] = {
            "galaxies": int(len(snr)),
            "completeness_snr>10": float(matched.mean()),
            "completeness_snr>20": float(matched[snr >= 20].mean()),
            "children": int(sum(r["n_children"] for r in rows)),
            "purity": float(sum(r["matched"] for r in rows) / max(sum(r["n_children"] for r in rows), 1)),
            "residual_children": int(sum(r["residual_children"] for r in rows)),
            "residual_matched": int(sum(r["residual_matched"] for r in rows)),
            "split_children": int(sum(r.get("split_children", 0) for r in rows)),
            "split_matched": int(sum(r.get("split_matched", 0) for r in rows)),
            "mean_abs_dflux_r_matched": float(dflux.mean()) if len(dflux) else None,
            "median_abs_dflux_r_matched": float(np.median(dflux)) if len(dflux) else None,
            "seconds": float(sum(r["seconds"] for r in rows)),
            "step_seconds": {key: float(sum(r.get("step_seconds", {}).get(key, 0.0) for r in rows))
                             for key in sorted({k for r in rows for k in r.get("step_seconds", {})})},
        }
    # Flux error on the galaxies matched in both runs (the same galaxies).
    both_off, both_on = [], []
    for p in patches.values():
        off = dict(zip(p["off"]["matched_truth_index"], p["off"]["abs_dflux_r"]))
        on = dict(zip(p["on"]["matched_truth_index"], p["on"]["abs_dflux_r"]))
        for i in sorted(set(off) & set(on)):
            both_off.append(off[i])
            both_on.append(on[i])
    summary["matched_in_both"] = {"galaxies": len(both_off), "mean_abs_dflux_r_off": float(np.mean(both_off)),
                                  "mean_abs_dflux_r_on": float(np.mean(both_on)),
                                  "median_abs_dflux_r_off": float(np.median(both_off)),
                                  "median_abs_dflux_r_on": float(np.median(both_on))}
    result = {"setup": {**vars(args), "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores"},
              "summary": summary, "patches": {str(k): v for k, v in patches.items()}}
    (out / "residual_peaks_benchmark.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
