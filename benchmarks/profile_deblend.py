"""`bench_deblend.py` with each ``deblend_batch`` call's time split by engine method.

Runs `bench_deblend.py` unchanged (same arguments, same JSON and table) with timers around
`MadnessDeblender` methods: the compiled MAP step (on JAX blocked until its outputs are ready,
so the device's time lands there), the network calls (``_inference``), the zoom choice, the
envelope test, the results (``_finish``), packing and the whole MAP loop (``_fit_batch``).
Each call's ``[calls, seconds]`` per method is printed as a ``PROF`` line and written to
``--profile-output`` (JSON, rewritten after every call, so a run cut short keeps what it did).
The network calls are also counted inside the zoom choice and the loop. This produced
``doc/benchmark-results/profile_jax_h200_stop44.json`` (doc/benchmarks.md, "GPU").

Usage::

    KERAS_BACKEND=jax python benchmarks/profile_deblend.py --profile-output prof.json \\
        --backend jax --blends blends20.npz --max-fields 20 --cases converged authors \\
        --batch-sources 4096 --repeats 2 --output DIR
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

TIMED = ("_inference", "_fit_batch", "_choose_zoom", "_envelopes", "_finish", "_pack")


def install(profile_output: Path) -> list[dict]:
    """Wrap the engine's methods; return the list that collects one row per ``deblend_batch``."""
    import keras

    from lsst.meas.madness.engine import deblender as engine

    totals: dict[str, list] = {}
    rows: list[dict] = []

    def add(key, seconds):
        entry = totals.setdefault(key, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds

    step_fn = engine.MadnessDeblender._step_fn

    def timed_step_fn(self, *args, **kwargs):
        step = step_fn(self, *args, **kwargs)

        def timed(*step_args):
            start = time.perf_counter()
            out = step(*step_args)
            if keras.config.backend() == "jax":
                import jax

                jax.block_until_ready(out)
            add("step", time.perf_counter() - start)
            return out

        return timed

    engine.MadnessDeblender._step_fn = timed_step_fn

    def wrap(name):
        method = getattr(engine.MadnessDeblender, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = method(*args, **kwargs)
            add(name, time.perf_counter() - start)
            return result

        setattr(engine.MadnessDeblender, name, timed)

    for name in TIMED:
        wrap(name)
    deblend_batch = engine.MadnessDeblender.deblend_batch

    def timed_batch(self, blends, *args, **kwargs):
        totals.clear()
        start = time.perf_counter()
        result = deblend_batch(self, blends, *args, **kwargs)
        row = {"n_blends": len(blends), "wall_s": round(time.perf_counter() - start, 3),
               **{k: [v[0], round(v[1], 3)] for k, v in totals.items()}}
        rows.append(row)
        print("PROF", json.dumps(row), flush=True)
        tmp = profile_output.with_name(profile_output.name + ".tmp")
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
        os.replace(tmp, profile_output)
        return result

    engine.MadnessDeblender.deblend_batch = timed_batch
    return rows


def main() -> int:
    argv = sys.argv[1:]
    if "--profile-output" not in argv or argv.index("--profile-output") + 1 >= len(argv):
        raise SystemExit("profile_deblend.py: give --profile-output FILE, then bench_deblend.py's arguments")
    at = argv.index("--profile-output")
    profile_output = Path(argv[at + 1])
    rest = argv[:at] + argv[at + 2:]
    if "--backend" not in rest:
        raise SystemExit("profile_deblend.py: give --backend (the profile is of one backend, in this process)")
    os.environ.setdefault("KERAS_BACKEND", rest[rest.index("--backend") + 1])
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_deblend

    install(profile_output)
    sys.argv = ["bench_deblend.py", *rest]
    return bench_deblend.main()


if __name__ == "__main__":
    sys.exit(main())
