#!/usr/bin/env python
"""Simulate several LSST patches into one local butler and run pipelines/madness.yaml on all.

Scale-out as Rubin does it: with ``ctrl_bps`` and its Parsl plugin (``bps/madness-parsl.yaml``:
one job per patch, Parsl workers on this machine's cores), or, when bps is not installed or for
comparison, with ``pipetask run -j N`` (one process per quantum) and ``pipetask run`` (one
process for everything). Each mode writes into its own output collection of the same repository
and is timed; a JSON summary is written next to the repository.

Examples
--------
::

    # four overlapping 201x201 patches (20-pixel borders), through bps if installed, else pipetask -j 2
    python scripts/run-patches.py --work runs/patches --patches 4
    # compare all three executions on the same repository
    python scripts/run-patches.py --work runs/patches --patches 4 --mode bps pipetask-j pipetask
    # a model other than the packaged one, and fewer MAP steps
    python scripts/run-patches.py --work runs/patches --bundle path/to/bundle -c deblend:maxIter=100

Needs: the meas_madness environment (``make env``); for bps mode also lsst-ctrl-bps,
lsst-ctrl-bps-parsl and parsl. The commands of this interpreter's environment (``pipetask``,
``butler``, ``bps``, Parsl's ``process_worker_pool.py``) are put first on PATH for the jobs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INPUT = "sim/coadds"


def _log(message: str) -> None:
    print(f"[run-patches] {message}", flush=True)


def _environment(work: Path) -> dict:
    env = dict(os.environ)
    env["PWD"] = str(work)  # bps puts submit/ under ${PWD}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("MEAS_MADNESS_DIR", str(ROOT))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def _bps_available() -> bool:
    modules = ("lsst.ctrl.bps", "lsst.ctrl.bps.parsl", "parsl")
    return all(importlib.util.find_spec(m) is not None for m in modules)


def simulate(work: Path, skymap, n_patches: int, n_galaxies: int, seed: int, min_snr: float):
    """Simulate one scene over ``n_patches`` overlapping patches and ingest each into ``work/repo``.

    Returns the repository and the scene's truth (all patches).
    """
    from lsst.daf.butler import Butler, MissingCollectionError

    from lsst.meas.madness.localrepo import TRUTH_DATASET, create_local_repo, ingest_patch, simulate_tract

    repo = work / "repo"
    create_local_repo(repo, skymap, n_patches=n_patches)
    with Butler.from_config(str(repo)) as butler:
        try:
            refs = butler.query_datasets(TRUTH_DATASET, collections=INPUT, explain=False)
        except MissingCollectionError:
            refs = []
    have = {ref.dataId["patch"] for ref in refs}
    start = time.perf_counter()
    scene = simulate_tract(seed, skymap, n_patches, n_galaxies=n_galaxies * n_patches, min_snr=min_snr,
                           group_shift=15)
    _log(f"scene over {n_patches} patches: {len(scene.truth)} galaxies, {scene.image.shape[-2]}x"
         f"{scene.image.shape[-1]} px, simulated in {time.perf_counter() - start:.1f} s")
    for patch in range(n_patches):
        if patch in have:
            _log(f"patch {patch} already in {repo} (use a new --work for other sizes or seeds)")
            continue
        sim = scene.cutout(skymap.patch_outer_bbox(patch))
        ingest_patch(repo, sim, patch, INPUT)
        _log(f"patch {patch}: {len(sim.truth)} galaxies in {skymap.patch_size}x{skymap.patch_size} px "
             f"(inner box {skymap.patch_inner_bbox(patch)}), ingested")
    return repo, scene.truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="run-patches", help="work directory (repo/, submit/, logs)")
    parser.add_argument("--patches", type=int, default=4, help="number of patches")
    parser.add_argument("--size", type=int, default=201, help="side of each patch in pixels (odd)")
    parser.add_argument("--border", type=int, default=20,
                        help="pixels each patch extends past its inner box (neighbours overlap by twice this)")
    parser.add_argument("--galaxies", type=int, default=20, help="galaxies per patch (the scene has this x patches)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scene")
    parser.add_argument("--min-snr", type=float, default=20.0,
                        help="appendix-A SNR cut in r (as madness demo)")
    parser.add_argument("--mode", nargs="+", default=["auto"],
                        choices=["auto", "bps", "pipetask-j", "pipetask"],
                        help="auto: bps if installed, else pipetask-j (default: auto)")
    parser.add_argument("-j", "--jobs", type=int, default=2,
                        help="processes for pipetask-j (bps: site.local.cores in bps/madness-parsl.yaml)")
    parser.add_argument("--bundle", default=None, help="model bundle (default: the packaged one)")
    parser.add_argument("-c", "--config", action="append", default=[], metavar="LABEL:FIELD=VALUE",
                        help="task config override, repeatable")
    args = parser.parse_args(argv)

    from lsst.daf.butler import Butler

    from lsst.meas.madness.localrepo import pipeline_path, pipetask_command, primary_counts, run_logged
    from lsst.meas.madness.skymap import SKYMAP_RUN, SimSkyMap

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    modes = args.mode
    if "auto" in modes:
        modes = ["bps" if _bps_available() else "pipetask-j"]
        if modes == ["pipetask-j"]:
            _log("lsst-ctrl-bps / lsst-ctrl-bps-parsl / parsl are not installed: using pipetask run -j")
    if "bps" in modes and not _bps_available():
        parser.error("--mode bps needs lsst-ctrl-bps, lsst-ctrl-bps-parsl and parsl")

    skymap = SimSkyMap.from_patch_size(args.size, patch_border=args.border)
    start = time.perf_counter()
    repo, truth = simulate(work, skymap, args.patches, args.galaxies, args.seed, args.min_snr)
    t_sim = time.perf_counter() - start
    SKYMAP = skymap.name
    overrides = ([f"deblend:bundlePath={Path(args.bundle).resolve()}"] if args.bundle else []) + args.config
    where = f"skymap = '{SKYMAP}' AND tract = 0 AND patch IN ({', '.join(map(str, range(args.patches)))})"
    stamp = time.strftime("%Y%m%dT%H%M%S")
    env = _environment(work)
    results = {"patches": args.patches, "size": args.size, "border": args.border, "galaxies": len(truth),
               "simulate_and_ingest_s": round(t_sim, 1), "runs": {}}
    for mode in modes:
        output = f"madness/{mode}/{stamp}"
        log = work / f"{mode}-{stamp}.log"
        if mode == "bps":
            command = [str(Path(sys.executable).parent / "bps"), "submit",
                       str(ROOT / "bps" / "madness-parsl.yaml"),
                       "-b", str(repo), "-i", f"{INPUT},{SKYMAP_RUN}", "-o", output, "-d", where, "-p", str(pipeline_path())]
            command += ["--extra-qgraph-options", " ".join(f"-c {c}" for c in overrides)] if overrides else []
        else:
            jobs = args.jobs if mode == "pipetask-j" else 1
            command = pipetask_command(repo, f"{INPUT},{SKYMAP_RUN}", output, config=overrides, where=where,
                                       jobs=jobs)
        _log(f"{mode}: {' '.join(command[3:] if command[0] == sys.executable else command)}")
        wall = run_logged(command, log, echo=None, env=env, cwd=work)  # Parsl's runinfo/ goes to cwd
        with Butler.from_config(str(repo)) as butler:
            refs = butler.query_datasets("deepCoadd_madnessObj", collections=output, explain=False)
            tables = [butler.get(ref) for ref in refs]
        n_rows = sum(len(t) for t in tables)
        # Each truth galaxy should be primary in at most one patch, however many patches see it.
        counts = primary_counts(truth, tables)
        primary = {"truth_galaxies": len(truth),
                   "detected_in_several_patches": int((counts["detected"] > 1).sum()),
                   "primary_once": int((counts["primary"] == 1).sum()),
                   "primary_more_than_once": int((counts["primary"] > 1).sum()),
                   "detected_never_primary": int(((counts["detected"] > 0) & (counts["primary"] == 0)).sum())}
        results["runs"][mode] = {"wall_s": round(wall, 1), "output": output, "patches_done": len(refs),
                                 "object_rows": n_rows, "primary": primary, "log": str(log)}
        if mode == "bps":
            # bps logs each stage's time: the quantum graph build ("Acquire") and the run ("Submit",
            # which for Parsl waits for every job and the final merge).
            text = log.read_text()
            for stage in ("Acquire", "Submit"):
                found = re.search(rf"{stage} stage completed: Took ([0-9.]+) seconds", text)
                if found:
                    results["runs"][mode][f"{stage.lower()}_stage_s"] = round(float(found.group(1)), 1)
        _log(f"{mode}: {len(refs)} of {args.patches} patches, {n_rows} object rows, {wall:.1f} s wall "
             f"(log {log.name})")
        _log(f"{mode}: {primary['truth_galaxies']} truth galaxies, {primary['detected_in_several_patches']} "
             f"detected in two patches (overlaps); primary once: {primary['primary_once']}, more than once: "
             f"{primary['primary_more_than_once']}, detected but never primary: "
             f"{primary['detected_never_primary']}")
    summary = work / f"run-patches-{stamp}.json"
    summary.write_text(json.dumps(results, indent=1) + "\n")
    _log(f"summary: {summary}")
    ok = all(r["patches_done"] == args.patches and r["primary"]["primary_more_than_once"] == 0
             for r in results["runs"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
