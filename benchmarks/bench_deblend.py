"""Benchmark of the MAP deblender: per-galaxy wall time and peak memory.

Runs the paper-size networks (decoder 3,473,062 parameters, encoder 6,691,608, flow 15,936)
with UNTRAINED weights -- no trained bundle ships yet -- so every fit runs a FIXED number of steps
(``min_iter = max_iter``): the numbers are the cost of a step and of a full 200-step fit, not of
convergence. Cases: single blends of 1, 5, 15 and 50 sources; batches of 1, 4 and 16 blends of
15 sources in one ``deblend_batch`` call; and the authors' published setting, one 205x205 field
of 12 galaxies for exactly 200 steps (their code: ~23.5 s on the same 2-core machine kind,
per the project's design brief). Every case is timed on a second call, after a warm-up call
that pays compilation. Each backend runs in its own process; memory is that process's peak RSS
after the case (monotone within the process).

Usage::

    python benchmarks/bench_deblend.py --output benchmarks/output            # both backends
    python benchmarks/bench_deblend.py --backend jax --output benchmarks/output
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

STEPS = 20


def _case_blend(rng, n_sources, size):
    import numpy as np

    margin = 25
    pix = set()
    while len(pix) < n_sources:
        pix.add(tuple(rng.integers(margin, size - margin, 2)))
    peaks = np.array(sorted(pix), float)
    image = rng.normal(0, 20, (6, size, size)).astype("f4")
    yy, xx = np.mgrid[:size, :size]
    for x, y in peaks:
        image += (3000 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)).astype("f4")
    return dict(image=image, peaks_xy=peaks, variance=np.full_like(image, 400.0))


def run_backend(backend: str) -> dict:
    os.environ["KERAS_BACKEND"] = backend
    import keras
    import numpy as np

    from lsst.meas.madness import MadnessDeblender, MapSettings
    from lsst.meas.madness.networks import Decoder, Encoder, MaskedAutoregressiveFlow

    keras.utils.set_random_seed(0)
    flow = MaskedAutoregressiveFlow()
    flow.build()
    deblender = MadnessDeblender(Decoder(), flow, Encoder(), bands="ugrizy")
    rng = np.random.default_rng(0)

    def timed(blends, steps):
        settings = MapSettings(max_iter=steps, min_iter=steps)
        deblender.deblend_batch(blends, settings=settings)  # warm-up: compilation
        t0 = time.perf_counter()
        results = deblender.deblend_batch(blends, settings=settings)
        wall = time.perf_counter() - t0
        assert all(r.n_iter == steps for r in results)
        n_gal = sum(r.n_sources for r in results)
        return {
            "n_blends": len(blends),
            "n_galaxies": n_gal,
            "steps": steps,
            "wall_s": round(wall, 3),
            "ms_per_galaxy_step": round(1e3 * wall / (n_gal * steps), 3),
            "s_per_galaxy_200_steps": round(200 * wall / (n_gal * steps), 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }

    cases = []
    for n, size in [(1, 60), (5, 100), (15, 150), (50, 260)]:
        cases.append({"case": f"single blend, {n} sources", **timed([_case_blend(rng, n, size)], STEPS)})
    for nb in (1, 4, 16):
        blends = [_case_blend(rng, 15, 150) for _ in range(nb)]
        cases.append({"case": f"batch of {nb} blends x 15 sources", **timed(blends, STEPS)})
    cases.append({"case": "authors' setting: 205x205 field, 12 galaxies, 200 steps",
                  **timed([_case_blend(rng, 12, 205)], 200)})
    versions = {"keras": keras.__version__, "numpy": np.__version__}
    try:
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    except ImportError:
        pass
    try:
        import jax

        versions["jax"] = jax.__version__
    except ImportError:
        pass
    return {
        "backend": backend,
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "versions": versions,
        "weights": "untrained paper-size networks; fixed step counts",
        "batch_sources": 256,
        "cases": cases,
    }


def markdown(result: dict) -> str:
    lines = [
        f"Backend **{result['backend']}**, {result['machine']['cpus']} CPUs, {result['date']}, "
        f"versions {result['versions']}.",
        "",
        "| case | galaxies | steps | wall (s) | ms / galaxy / step | s / galaxy for 200 steps | peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in result["cases"]:
        lines.append(
            f"| {c['case']} | {c['n_galaxies']} | {c['steps']} | {c['wall_s']} | {c['ms_per_galaxy_step']} | "
            f"{c['s_per_galaxy_200_steps']} | {c['peak_rss_mb']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["tensorflow", "jax"], default=None,
                        help="one backend in this process (default: both, each in a subprocess)")
    parser.add_argument("--output", default="benchmarks/output")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.backend is None:
        for backend in ("tensorflow", "jax"):
            subprocess.run([sys.executable, __file__, "--backend", backend, "--output", str(out)], check=True)
        return 0
    result = run_backend(args.backend)
    (out / f"deblend_{args.backend}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"deblend_{args.backend}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
