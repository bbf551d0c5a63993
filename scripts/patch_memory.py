#!/usr/bin/env python
"""Time and peak memory of drawing one simulated patch, the stamp way or BTK's full-size way.

``--mode stamps`` runs `lsst.meas.madness.localrepo.simulate_patch` (each galaxy on its own
stamp, pasted). ``--mode btk`` draws the same galaxies at the same places as one BTK blend of
the patch's size (`draw_planned_blends`, what ``simulate_patch`` did before: every galaxy's
isolated image at full patch size), and sums them as it did. Run it under ``/usr/bin/time -v``
for the process's peak resident memory; it prints its own wall time and
``resource.getrusage`` peak RSS. Numbers: doc/tasks.md, "Simulated patches".

Examples
--------
::

    /usr/bin/time -v python scripts/patch_memory.py --mode stamps --size 1001 --galaxies 440
    python scripts/patch_memory.py --mode btk --size 1001 --galaxies 40
"""

from __future__ import annotations

import argparse
import resource
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["stamps", "btk"], default="stamps")
    parser.add_argument("--size", type=int, default=1001, help="side of the patch, pixels (odd)")
    parser.add_argument("--galaxies", type=int, default=440)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from lsst.meas.madness.localrepo import plan_patch, simulate_patch
    from lsst.meas.madness.simulation.btk_draw import BlendPlan, draw_planned_blends

    kwargs = dict(size=args.size, n_galaxies=args.galaxies, min_snr=10.0)
    plan_patch(args.seed, **kwargs)  # the SkyPy catalogue, so that the timing is the drawing's
    start = time.perf_counter()
    if args.mode == "stamps":
        patch = simulate_patch(args.seed, **kwargs)
        held = patch.image.nbytes * 2 + sum(s.nbytes for s in patch.stamps)
    else:
        catalog, rows, centers_xy = plan_patch(args.seed, **kwargs)
        half = (args.size - 1) // 2
        plan = BlendPlan(rows, centers_xy[:, 0] - half, centers_xy[:, 1] - half)
        blends, isolated, _ = draw_planned_blends(catalog, [plan], args.size, seed=args.seed)
        isolated = isolated[0, : args.galaxies]
        noiseless = isolated.sum(axis=0)
        held = blends.nbytes + isolated.nbytes + noiseless.nbytes
    wall = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"mode={args.mode} size={args.size} galaxies={args.galaxies} wall_s={wall:.1f} "
          f"peak_rss_GiB={peak_gib:.2f} arrays_held_GiB={held / 2**30:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
