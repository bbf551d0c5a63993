#!/usr/bin/env python
"""Faint galaxies beside much brighter neighbours: what of the neighbour makes their shape error.

Usage::

    python scripts/neighbour_oracle.py --budget doc/diagnostics/shape-budget-cpu9-a-stop59-validation.npz \
        --fields VALIDATION_FIELDS --max-fields 20 --output neighbour-oracle.json \
        [--modes truth model alone alone-stamp alone-far]

`scripts/shape_budget.py` found that galaxies whose nearest neighbour (catalogue position) is more
than ``--dmag`` magnitudes brighter in r carry most of the blends' excess e1 scatter. Each field
holding such a *target* is deblended again (MADNESS, the engine's defaults, `run_evaluation`)
with its targets' bright neighbours taken out of the peak list and something subtracted from
the image in their place:

- ``truth``: their noiseless true images (an oracle: perfect neighbours);
- ``model``: their models from the joint fit of the whole field (the neighbours as MADNESS drew
  them, held fixed);
- ``alone``: each neighbour fitted alone on the field minus every other galaxy's truth (its best
  model in its own noise, light beyond its stamp included);
- ``alone-stamp``: that model inside the neighbour's stamp, its truth beyond (only the stamp's
  error left);
- ``alone-far``: its truth inside the stamp, the model beyond (only the error of the light
  beyond the stamp left: envelope, outskirts, PSF wing).

The targets' r-band e1 residuals (HSM, as the evaluation measures them) are compared with their
values in the budget's "in blends" and "alone in noise" stages. Writes the JSON (per target and
the std per mode) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
from pathlib import Path

import numpy as np

MODES = ("truth", "model", "alone", "alone-stamp", "alone-far")


def find_targets(budget, fields: dict, dmag: float) -> list[tuple[int, int, int, int]]:
    """``(row in the budget, field, galaxy, neighbour)`` of each galaxy whose nearest neighbour is
    more than ``dmag`` magnitudes brighter in r."""
    targets = []
    for k, (f, g) in enumerate(zip(budget["field_id"].tolist(), budget["galaxy"].tolist())):
        catalog = fields[f].catalog
        x, y, r = (np.asarray(catalog[n], float) for n in ("x_peak", "y_peak", "r_ab"))
        distance = np.hypot(x - x[g], y - y[g])
        distance[g] = np.inf
        j = int(np.argmin(distance))
        if r[j] - r[g] < -dmag:
            targets.append((int(k), int(f), int(g), j))
    return targets


def neighbour_light(mode: str, field, neighbours, deblender, psf, variance) -> np.ndarray:
    """``(bands, H, W)`` what ``mode`` subtracts for ``neighbours`` of ``field``."""
    from lsst.meas.madness.engine.geometry import paste_stamps

    if mode == "truth":
        return field.isolated[neighbours].sum(axis=0)
    if mode == "model":
        result = deblender.deblend(field.image, field.centers_xy, variance=variance, psf=psf)
        return sum(result.source_image(j) for j in neighbours)
    total = np.zeros(field.image.shape, np.float64)
    for j in neighbours:
        others = np.setdiff1d(np.arange(field.n_galaxies), [j])
        image = field.image - field.isolated[others].sum(axis=0)
        result = deblender.deblend(image, field.centers_xy[[j]], variance=variance, psf=psf)
        model = result.source_image(0)
        if mode != "alone":
            inside = paste_stamps(np.ones_like(result.models[[0]]), result.stamp_yx0[[0]],
                                  field.image.shape[1:], dtype=np.float32) > 0
            truth = field.isolated[j]
            model = np.where(inside, model, truth) if mode == "alone-stamp" else np.where(inside, truth, model)
        total += model
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", required=True, type=Path, help="per-galaxy npz of scripts/shape_budget.py")
    parser.add_argument("--fields", required=True, type=Path, help="the budget's TestFields dataset directory")
    parser.add_argument("--max-fields", type=int, default=20)
    parser.add_argument("--dmag", type=float, default=2.0, help="nearest neighbour brighter by more than this")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--output", required=True, type=Path, help="JSON file to write")
    args = parser.parse_args(argv)

    from lsst.meas.madness import MadnessDeblender
    from lsst.meas.madness.evaluation import iter_test_fields, run_evaluation
    from lsst.meas.madness.evaluation.methods import psf_images
    from lsst.meas.madness.simulation import LsstConditions

    budget = np.load(args.budget)
    stages = [str(s) for s in budget["stages"]]
    blends = budget["e1_residual"][stages.index("in blends (engine defaults)")]
    alone = budget["e1_residual"][next(i for i, s in enumerate(stages) if s.startswith("alone"))]
    fields = {f.field_id: f for f in iter_test_fields(args.fields, max_fields=args.max_fields)}
    targets = find_targets(budget, fields, args.dmag)
    rows = [t[0] for t in targets]
    deblender = MadnessDeblender.from_bundle(None)
    psf = psf_images(LsstConditions.from_surveycodex(bands=deblender.bands), deblender.bands)
    r = list(deblender.bands).index("r")
    out = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "budget": args.budget.name, "fields": args.fields.name, "dmag": args.dmag,
           "machine": f"{os.cpu_count()} cores",
           "targets": [{"field": f, "galaxy": g, "neighbour": j, "e1_in_blends": float(blends[k]),
                        "e1_alone_in_noise": float(alone[k])} for k, f, g, j in targets],
           "std": {"in blends": float(np.std(blends[rows])), "alone in noise": float(np.std(alone[rows]))}}
    for mode in args.modes:
        modified, index = [], {}
        for f in sorted({t[1] for t in targets}):
            field = fields[f]
            neighbours = sorted({j for _, tf, _, j in targets if tf == f})
            keep = np.setdiff1d(np.arange(field.n_galaxies), neighbours)
            index[f] = {int(old): new for new, old in enumerate(keep)}
            variance = np.broadcast_to(field.variance[:, None, None], field.image.shape).astype(np.float32)
            light = neighbour_light(mode, field, neighbours, deblender, psf, variance)
            modified.append(dataclasses.replace(field, image=(field.image - light).astype(np.float32),
                                                isolated=field.isolated[keep], catalog=field.catalog[keep]))
        result = run_evaluation(modified, ["madness"], progress=False, n_fields=len(modified))
        galaxies = result.galaxies
        row_of = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(galaxies["field_id"], galaxies["galaxy"]))}
        e1 = np.asarray(result.metrics["madness"]["e1_residual"])[:, r]
        values = np.array([e1[row_of[(f, index[f][g])]] for _, f, g, _ in targets])
        for entry, value in zip(out["targets"], values):
            entry[f"e1_with_{mode}"] = float(value)  # the neighbours replaced by ``mode``
        out["std"][mode] = float(np.nanstd(values))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, args.output)
    print(f"| {len(targets)} targets | " + " | ".join(out["std"]) + " |")
    print("| --- |" + " --- |" * len(out["std"]))
    print("| std e1 residual r | " + " | ".join(f"{v:.4f}" for v in out["std"].values()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
