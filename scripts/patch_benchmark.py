#!/usr/bin/env python
"""Time and peak memory of each stage on one simulated patch through ``pipetask`` (issue 14, section 3).

Usage::

    python scripts/patch_benchmark.py --output OUT [--size 4001] [--galaxies 10000] [--seed 0] \
        [-c LABEL:FIELD=VALUE ...] [--json OUT/patch-benchmark.json]

Runs the demo's chain (`lsst.meas.madness.demo.run_demo`: simulate the patch galaxy by galaxy
on stamps, ingest it into a local butler, ``pipetask run`` of ``pipelines/madness.yaml``, score
against the truth) on a patch of the given size, then reads each quantum's metadata from the
butler: wall seconds, CPU seconds and the resident-memory high-water mark of the ``pipetask``
process at the quantum's start and end (Linux ``ru_maxrss``; the quanta run one after another
in one process, so a stage's peak is its end value and its rise is end - start). The
simulation runs in this process: its peak is this process's high-water mark after it. Writes
the JSON (atomically) and prints a Markdown table for ``doc/tasks.md``.

A real LSST patch is about 4,000 x 4,000 pixels with ~10,000 galaxies at 10-year depth: the
defaults. It takes hours on 2 cores; ``--size 1001 --galaxies 440`` takes minutes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path


def _quantum_stats(repo: Path, collection: str, labels) -> dict:
    """Per label: wall and CPU seconds, and the process's max RSS (GiB) at the quantum's start and end."""
    from lsst.daf.butler import Butler

    out = {}
    with Butler.from_config(str(repo), collections=[collection]) as butler:
        for label in labels:
            refs = list(butler.registry.queryDatasets(f"{label}_metadata", collections=collection))
            if not refs:
                continue
            rows = []
            for ref in refs:
                q = butler.get(ref)["quantum"]
                start = datetime.datetime.fromisoformat(q["startUtc"].replace("Z", "+00:00"))
                end = datetime.datetime.fromisoformat(q["endUtc"].replace("Z", "+00:00"))
                rows.append({
                    "wall_s": (end - start).total_seconds(),
                    "cpu_s": float(q["endCpuTime"]) - float(q["startCpuTime"]),
                    "start_max_rss_gib": float(q["startMaxResidentSetSize"]) / 2**30,
                    "end_max_rss_gib": float(q["endMaxResidentSetSize"]) / 2**30,
                })
            out[label] = {
                "quanta": len(rows),
                "wall_s": round(sum(r["wall_s"] for r in rows), 2),
                "cpu_s": round(sum(r["cpu_s"] for r in rows), 2),
                "peak_rss_gib": round(max(r["end_max_rss_gib"] for r in rows), 3),
                "rss_rise_gib": round(max(r["end_max_rss_gib"] - r["start_max_rss_gib"] for r in rows), 3),
            }
    return out


def markdown(result: dict) -> str:
    rows = ["| stage | wall s | CPU s | peak RSS (GiB) | rise during the stage (GiB) |",
            "| --- | ---: | ---: | ---: | ---: |"]
    sim = result["simulate"]
    rows.append(f"| simulate ({result['n_galaxies']} galaxies, stamps) | {sim['wall_s']:.1f} | - | "
                f"{sim['peak_rss_gib']:.2f} | - |")
    for label, v in result["stages"].items():
        rows.append(f"| {label} ({v['quanta']} quanta) | {v['wall_s']:.1f} | {v['cpu_s']:.1f} | "
                    f"{v['peak_rss_gib']:.2f} | {v['rss_rise_gib']:.2f} |")
    rows.append(f"| whole `pipetask run` | {result['pipetask_run_s']:.1f} | - | "
                f"{result['pipetask_peak_rss_gib']:.2f} | - |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path,
                        help="directory for the butler and the demo outputs")
    parser.add_argument("--size", type=int, default=4001, help="patch side, pixels (odd)")
    parser.add_argument("--galaxies", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-c", "--config", action="append", default=[],
                        help="pipetask -c override, label:field=value")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the results (default OUTPUT/patch-benchmark.json)")
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(here / "python"))
    from lsst.meas.madness.demo import LABELS, OUTPUT_COLLECTION, json_safe, run_demo

    lines = []

    def echo(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    start = time.perf_counter()
    summary = run_demo(args.output, seed=args.seed, size=args.size, n_galaxies=args.galaxies,
                       config=args.config, echo=echo)
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    timings = summary["timings_s"]
    result = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
        "size": args.size, "n_galaxies": args.galaxies, "seed": args.seed, "config": args.config,
        # run_demo simulates first, in this process, before any child runs: the high-water mark
        # of this process is the simulation's, unless the scoring after pipetask went higher.
        "simulate": {"wall_s": timings["simulate"], "peak_rss_gib": round(self_peak, 3)},
        "butler_setup_ingest_s": timings["butler_setup_ingest"],
        "pipetask_run_s": timings["pipetask_run"],
        "pipetask_peak_rss_gib": round(child_peak, 3),
        "stages": _quantum_stats(args.output / "repo", OUTPUT_COLLECTION, LABELS),
        "detection": summary.get("detection"),
        "deblend_counts": summary.get("deblend_counts"),
        "mean_abs_dF_over_F": summary.get("mean_abs_dF_over_F"),
        "n_without_true_flux": summary.get("n_without_true_flux"),
        "total_s": round(time.perf_counter() - start, 1),
    }
    path = args.json or args.output / "patch-benchmark.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(result), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    print(markdown(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
