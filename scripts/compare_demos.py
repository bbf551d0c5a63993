"""Compare ``madness demo`` runs of several models on the galaxies every run matched.

Usage::

    python scripts/compare_demos.py LABEL=DEMO_DIR [LABEL=DEMO_DIR ...] [--output compare.json]

The demo matches each truth galaxy to a detected object by the object's *measured* centroid
(`lsst.meas.madness.demo.score_patch`), which depends on the deblended child: two models run on
the same patch can match different galaxies, and a galaxy one model's child pulls more than
3 px away is dropped from its mean. A single badly deblended galaxy matched by one run and not
the other then decides the comparison (2026-11-30: one r = 23.4 galaxy carried half of a
candidate's mean). So this script scores every run on the galaxies that **all** runs matched,
per band (mean and median abs(dF/F) of the deblended flux, and of no deblending, each in the
run's own apertures), and lists the galaxies some runs matched and others did not.

Reads each run's ``summary.json``; writes the JSON when ``--output`` is given and prints
Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _matched(summary: dict) -> dict[int, dict]:
    return {o["truth_id"]: o for o in summary["objects"] if o["matched"]}


def _errors(entry: dict, key: str, band: str) -> float:
    true = entry["flux_true"][band]
    return abs(entry[key][band] / true - 1.0) if true > 0 else float("nan")


def compare(runs: dict[str, dict]) -> dict:
    """Per-band statistics of every run on the truth galaxies all runs matched.

    Parameters
    ----------
    runs : `dict` [`str`, `dict`]
        Label -> the demo's ``summary.json`` content.

    Returns
    -------
    comparison : `dict`
        ``common`` (truth ids matched by every run), ``only`` (label -> ids matched by that
        run but not by all), and ``stats`` (label -> ``deblended``/``no_deblending`` -> band ->
        ``mean``/``median`` abs(dF/F)).
    """
    bands = None
    matched = {}
    for label, summary in runs.items():
        if bands is not None and list(summary["bands"]) != bands:
            raise ValueError(f"Run {label!r} has bands {summary['bands']}, the first run {bands}.")
        if bands is not None and summary["seed"] != next(iter(runs.values()))["seed"]:
            raise ValueError(f"Run {label!r} is a demo of another patch (seed {summary['seed']}).")
        bands = list(summary["bands"])
        matched[label] = _matched(summary)
    common = sorted(set.intersection(*(set(m) for m in matched.values())))
    if not common:
        raise ValueError("No truth galaxy is matched by every run.")
    stats = {}
    for label, m in matched.items():
        stats[label] = {}
        for key, name in (("flux_deblended", "deblended"), ("flux_no_deblending", "no_deblending")):
            stats[label][name] = {}
            for band in bands:
                e = np.array([_errors(m[t], key, band) for t in common])
                e = e[np.isfinite(e)]
                stats[label][name][band] = {"mean": float(np.mean(e)), "median": float(np.median(e))}
    only = {label: sorted(set(m) - set(common)) for label, m in matched.items()}
    return {"bands": bands, "common": common, "only": only, "stats": stats}


def markdown(result: dict, runs: dict[str, dict]) -> str:
    bands = result["bands"]
    lines = [f"{len(result['common'])} truth galaxies matched by every run.", "",
             "| run | flux | " + " | ".join(f"{b} mean | {b} median" for b in bands) + " |",
             "| --- | --- | " + " | ".join("--- | ---" for _ in bands) + " |"]
    for label, by_key in result["stats"].items():
        for key, per_band in by_key.items():
            cells = " | ".join(f"{per_band[b]['mean']:.3f} | {per_band[b]['median']:.3f}" for b in bands)
            lines.append(f"| {label} | {key} | {cells} |")
    lines += ["", "| run | matched only by some runs: truth id (r abs(dF/F)) |", "| --- | --- |"]
    for label, ids in result["only"].items():
        m = _matched(runs[label])
        text = ", ".join(f"{t} ({_errors(m[t], 'flux_deblended', 'r'):.3f})" for t in ids) or "-"
        lines.append(f"| {label} | {text} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=DEMO_DIR", help="a label and a demo output directory")
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep:
            parser.error(f"{item!r} is not LABEL=DEMO_DIR")
        runs[label] = json.loads((Path(path) / "summary.json").read_text())
    result = compare(runs)
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
