"""Benchmark of the MAP deblender: per-galaxy wall time and peak memory, with the trained model.

Runs the packaged trained bundle (or ``--bundle``) in each requested compute precision
(``MapSettings.precision``: float32, and bfloat16 decoder steps on TensorFlow):

- **the floor**: one forward and backward pass of the decoder per galaxy (batch of 15), what a
  MAP step cannot go below;
- **fixed steps** (``min_iter = max_iter``): single blends of 1, 5, 15 and 50 sources, batches
  of 1, 4 and 16 blends of 15 sources in one ``deblend_batch`` call, and the authors' published
  setting, one 205x205 field of 12 galaxies for exactly 200 steps (their code: ~23.5 s on the
  same 2-core machine kind, per the project's design brief) -- the cost of a step;
- **converged fits** (``--fields``): the validation TestFields deblended with the default
  stopping rule, all galaxies of a field as one blend -- seconds per galaxy end to end and the
  steps the fits took.

Every case is timed on ``--repeats`` calls after a warm-up call that pays compilation, and its
numbers come from the median call (the range of the calls is kept as ``wall_s_range``: on a shared
2-core VM one call of the same case has been seen to take 1.5x another). Each backend
runs in its own process; memory is that process's peak RSS after the case (monotone within the
process).

Usage::

    python benchmarks/bench_deblend.py --output benchmarks/output            # both backends
    python benchmarks/bench_deblend.py --backend tensorflow --fields VALIDATION_FIELDS --output DIR
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


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def decoder_floor_ms(decoder, precision: str, n: int = 15, repeats: int = 20) -> float:
    """Milliseconds per galaxy of one decoder forward + backward pass (batch of ``n``)."""
    import keras
    import numpy as np

    from lsst.meas.madness.backend import compile_value_and_grad
    from lsst.meas.madness.precision import with_precision

    net = with_precision(decoder, precision)

    def loss(z, *, calls):
        return keras.ops.sum(keras.ops.square(keras.ops.cast(calls[0](z), "float32")), axis=(1, 2, 3))

    step = compile_value_and_grad(loss, [net])
    z = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(0, 0.7, (n, decoder.latent_dim)).astype("f4"))
    for _ in range(3):
        keras.ops.convert_to_numpy(step(z)[1])
    t0 = time.perf_counter()
    for _ in range(repeats):
        keras.ops.convert_to_numpy(step(z)[1])
    return 1e3 * (time.perf_counter() - t0) / (repeats * n)


def run_backend(backend: str, precisions, bundle=None, fields=None, max_fields: int = 8,
                repeats: int = 3) -> dict:
    os.environ["KERAS_BACKEND"] = backend
    import keras
    import numpy as np

    from lsst.meas.madness import MadnessDeblender, MapSettings
    from lsst.meas.madness.backend import cpu_model

    keras.utils.set_random_seed(0)
    deblender = MadnessDeblender.from_bundle(bundle)
    field_blends = []
    if fields is not None:
        from lsst.meas.madness.evaluation import iter_test_fields

        for f in iter_test_fields(fields, max_fields=max_fields):
            variance = np.broadcast_to(np.asarray(f.variance, np.float32)[:, None, None], f.image.shape)
            field_blends.append(dict(image=f.image, peaks_xy=f.centers_xy, variance=variance))

    def timed(blends, settings, fixed: bool):
        deblender.deblend_batch(blends, settings=settings)  # warm-up: compilation
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            results = deblender.deblend_batch(blends, settings=settings)
            walls.append(time.perf_counter() - t0)
        wall = float(np.median(walls))
        if fixed:
            assert all(r.n_iter == settings.max_iter for r in results)
        n_gal = sum(r.n_sources for r in results)
        steps = float(np.mean([r.n_iter for r in results]))
        gal_steps = sum(r.n_sources * r.n_iter for r in results)
        return {
            "n_blends": len(blends),
            "n_galaxies": n_gal,
            "steps": round(steps, 1),
            "wall_s": round(wall, 3),
            "wall_s_range": [round(min(walls), 3), round(max(walls), 3)],
            "s_per_galaxy": round(wall / n_gal, 3),
            "ms_per_galaxy_step": round(1e3 * wall / gal_steps, 3),
            "peak_rss_mb": _peak_rss_mb(),
        }

    cases = []
    floors = {}
    for precision in precisions:
        floors[precision] = round(decoder_floor_ms(deblender.decoder, precision), 3)
        rng = np.random.default_rng(0)  # the same blends in every precision
        fixed = MapSettings(max_iter=STEPS, min_iter=STEPS, precision=precision)
        for n, size in [(1, 60), (5, 100), (15, 150), (50, 260)]:
            cases.append({"case": f"single blend, {n} sources", "precision": precision,
                          **timed([_case_blend(rng, n, size)], fixed, True)})
        for nb in (1, 4, 16):
            blends = [_case_blend(rng, 15, 150) for _ in range(nb)]
            cases.append({"case": f"batch of {nb} blends x 15 sources", "precision": precision,
                          **timed(blends, fixed, True)})
        cases.append({"case": "authors' setting: 205x205 field, 12 galaxies, 200 steps", "precision": precision,
                      **timed([_case_blend(rng, 12, 205)], fixed.replace(max_iter=200, min_iter=200), True)})
        if field_blends:
            cases.append({"case": f"converged: {len(field_blends)} validation TestFields, default stopping",
                          "precision": precision,
                          **timed(field_blends, MapSettings(precision=precision), False)})
        for c in cases:
            if c["precision"] == precision:
                c["x_floor"] = round(c["ms_per_galaxy_step"] / floors[precision], 2)
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
    meta = deblender.metadata
    return {
        "backend": backend,
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "processor": cpu_model()},
        "threads": {k: os.environ.get(k) for k in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")},
        "versions": versions,
        "bundle": str(bundle) if bundle else "packaged",
        "model": meta.description if meta is not None else None,
        "batch_sources": MapSettings().batch_sources,
        "repeats": repeats,
        "decoder_floor_ms_per_galaxy": floors,
        "cases": cases,
    }


def markdown(result: dict) -> str:
    floors = ", ".join(f"{k} {v} ms" for k, v in result["decoder_floor_ms_per_galaxy"].items())
    lines = [
        f"Backend **{result['backend']}**, {result['machine']['processor']}, {result['machine']['cpus']} CPUs, "
        f"{result['date']}, model: {result['model']}; versions {result['versions']}. Decoder forward + "
        f"backward per galaxy (the floor of a step): {floors}. Median of {result.get('repeats', 1)} timed "
        "call(s) per case (wall range: the fastest and slowest call).",
        "",
        "| case | precision | galaxies | steps (mean) | wall (s) | wall range (s) | s / galaxy "
        "| ms / galaxy / step | x floor | peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in result["cases"]:
        lines.append(
            f"| {c['case']} | {c['precision']} | {c['n_galaxies']} | {c['steps']} | {c['wall_s']} | "
            f"{'-'.join(str(v) for v in c.get('wall_s_range', [c['wall_s']] * 2))} | {c['s_per_galaxy']} | "
            f"{c['ms_per_galaxy_step']} | {c['x_floor']} | {c['peak_rss_mb']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["tensorflow", "jax"], default=None,
                        help="one backend in this process (default: both, each in a subprocess)")
    parser.add_argument("--bundle", default=None, help="model bundle (default: the packaged one)")
    parser.add_argument("--precision", nargs="+", default=None, choices=["float32", "mixed_bfloat16"],
                        help="compute precisions of the MAP steps (default: both on TensorFlow, float32 on JAX, "
                             "whose CPU convolutions are slow in bfloat16)")
    parser.add_argument("--fields", default=None, help="validation TestFields for the converged-fit case")
    parser.add_argument("--max-fields", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls per case after the warm-up; the median is reported (default 3)")
    parser.add_argument("--output", default="benchmarks/output")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.backend is None:
        for backend in ("tensorflow", "jax"):
            cmd = [sys.executable, __file__, "--backend", backend, "--output", str(out),
                   "--max-fields", str(args.max_fields), "--repeats", str(args.repeats)]
            for flag, value in (("--bundle", args.bundle), ("--fields", args.fields)):
                if value:
                    cmd += [flag, value]
            if args.precision:
                cmd += ["--precision", *args.precision]
            subprocess.run(cmd, check=True)
        return 0
    precisions = args.precision or (["float32", "mixed_bfloat16"] if args.backend == "tensorflow" else ["float32"])
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    result = run_backend(args.backend, precisions, bundle=args.bundle, fields=args.fields,
                         max_fields=args.max_fields, repeats=args.repeats)
    (out / f"deblend_{args.backend}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"deblend_{args.backend}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
