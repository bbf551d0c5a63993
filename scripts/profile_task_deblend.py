#!/usr/bin/env python
"""Where the deblend quantum's time goes (issue 13, the task path): the task on a demo repository.

Usage::

    madness demo --output demo-output                      # makes demo-output/repo
    python scripts/profile_task_deblend.py demo-output/repo --output task-deblend-profile.json \
        [--clock cpu] [-c maxIter=100 -c precision=mixed_bfloat16]

Runs `MadnessDeblendTask.run` in this process on the repository's coadds and detections (the
demo's collection ``madness/demo``), once to pay tracing and compilation and once timed, and
records, for the timed run:

- the task's time, and how much of it the engine's compiled MAP steps took;
- every blend's sources (peaks plus neighbours), steps and whether it converged, so the
  galaxy-steps (sum over blends of sources x steps) and the time per galaxy-step;
- the compiled steps grouped by how many sources they held (finished blends leave the batch),
  with the time per step and per source.

Times are wall seconds, or with ``--clock cpu`` the process's CPU seconds (all threads), which
a loaded machine disturbs less. Compare the time per galaxy-step with the decoder's forward +
backward per galaxy (``scripts/profile_map_step.py``, the floor). Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import time
from pathlib import Path


def _clock(kind: str):
    return time.process_time if kind == "cpu" else time.perf_counter


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="butler repository of a `madness demo` run")
    parser.add_argument("--collection", default="madness/demo")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("-c", "--config", action="append", default=[],
                        help="task config override FIELD=VALUE (e.g. maxIter=100); repeatable")
    args = parser.parse_args(argv)

    import keras
    from lsst.daf.butler import Butler

    from lsst.meas.madness.engine.deblender import MadnessDeblender
    from lsst.meas.madness.tasks.deblend import MadnessDeblendConfig, MadnessDeblendTask

    clock = _clock(args.clock)
    butler = Butler(str(args.repo), collections=[args.collection])
    detections_ref = next(iter(butler.registry.queryDatasets("deepCoadd_madnessDet", collections=args.collection)))
    data_id = dict(detections_ref.dataId.required)
    config = MadnessDeblendConfig()
    for item in args.config:
        field, value = item.split("=", 1)
        setattr(config, field, type(getattr(config, field))(value) if getattr(config, field) is not None
                else value)
    coadds = {b: butler.get("deepCoadd_calexp", band=b, **data_id) for b in config.bands}
    detections = butler.get("deepCoadd_madnessDet", **data_id)
    spans = butler.get("deepCoadd_madnessDet_spans", **data_id)
    config.catchFailures = False  # a profile of failed parents would time nothing: fail loudly
    task = MadnessDeblendTask(config=config)
    deblender = task._loadDeblender()

    blends, steps = [], []
    fit_batch = MadnessDeblendTask._fitBatch
    step_fn = MadnessDeblender._step_fn

    def recording_fit_batch(deblender_, batch, settings):
        out = fit_batch(deblender_, batch, settings)
        for _, plan, result, _ in out:
            blends.append({"parent": int(plan.parent.id), "peaks": int(plan.parent.n_peaks),
                           "sources": int(len(result.peaks_xy)), "steps": int(result.n_iter),
                           "converged": bool(result.converged), "region": list(map(int, result.image_shape))})
        return out

    def timed_step_fn(self, settings, *args, **kwargs):
        step = step_fn(self, settings, *args, **kwargs)

        def timed(x, *step_args):
            start = clock()
            loss, grad = step(x, *step_args)
            grad = keras.ops.convert_to_numpy(grad)  # the step's result on the host, as the loop needs it
            b, h, _, w = (int(v) for v in step_args[2].shape)  # the data: (blends, h, bands, w), padded
            steps.append((int(x.shape[0]), clock() - start, b * h * w))
            return loss, grad

        return timed

    MadnessDeblendTask._fitBatch = staticmethod(recording_fit_batch)
    MadnessDeblender._step_fn = timed_step_fn
    try:
        task.run(coadds=coadds, detections=detections, detectionSpans=spans, deblender=deblender)  # compile
        blends.clear()
        steps.clear()
        start = clock()
        task.run(coadds=coadds, detections=detections, detectionSpans=spans, deblender=deblender)
        total = clock() - start
    finally:
        MadnessDeblendTask._fitBatch = staticmethod(fit_batch)
        MadnessDeblender._step_fn = step_fn

    galaxy_steps = sum(b["sources"] * b["steps"] for b in blends)
    by_size = collections.defaultdict(lambda: [0, 0.0])
    for n, seconds, _ in steps:
        by_size[n][0] += 1
        by_size[n][1] += seconds
    step_seconds = sum(s for _, s, _ in steps)
    # Pixels the compiled steps held (every blend padded to its batch's largest region) against
    # the pixels of the blends' own regions over their own steps: what padding costs.
    padded_pixel_steps = sum(p for _, _, p in steps)
    own_pixel_steps = sum(b["region"][0] * b["region"][1] * b["steps"] for b in blends)
    peaks = sum(b["peaks"] for b in blends)
    out = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "clock": args.clock, "config_overrides": args.config,
        "blends": len(blends), "peaks": peaks, "sources": sum(b["sources"] for b in blends),
        "galaxy_steps": galaxy_steps, "task_seconds": round(total, 2),
        "step_seconds": round(step_seconds, 2), "compiled_steps": len(steps),
        "ms_per_galaxy_step": round(1e3 * step_seconds / max(galaxy_steps, 1), 3),
        "seconds_per_peak": round(total / max(peaks, 1), 3),
        "region_pixel_steps": {"padded": padded_pixel_steps, "own": own_pixel_steps,
                               "ratio": round(padded_pixel_steps / max(own_pixel_steps, 1), 2)},
        "steps_by_sources": [{"sources": n, "steps": k, "ms_per_step": round(1e3 * s / k, 2),
                              "ms_per_source_step": round(1e3 * s / k / n, 3)}
                             for n, (k, s) in sorted(by_size.items(), reverse=True)],
        "per_blend": blends,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, args.output)
    print(f"{out['blends']} blends, {peaks} peaks, {out['sources']} sources, {galaxy_steps} galaxy-steps; "
          f"task {total:.1f} s ({args.clock}), compiled steps {step_seconds:.1f} s "
          f"({100 * step_seconds / max(total, 1e-9):.0f}%), {out['ms_per_galaxy_step']} ms per galaxy-step, "
          f"{out['seconds_per_peak']} s per peak; region pixel-steps {padded_pixel_steps:.3g} padded, "
          f"{own_pixel_steps:.3g} own ({out['region_pixel_steps']['ratio']}x)\n")
    print("| sources in the step | steps | ms per step | ms per source-step |")
    print("| --- | --- | --- | --- |")
    for row in out["steps_by_sources"]:
        print(f"| {row['sources']} | {row['steps']} | {row['ms_per_step']} | {row['ms_per_source_step']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
