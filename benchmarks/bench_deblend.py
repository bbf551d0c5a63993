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
  steps the fits took;
- **the authors' setting, converged** (``--fields``, case ``authors-converged``): each of the
  fields given that holds exactly 12 galaxies (the TestFields are 205x205 px) deblended alone,
  in its own call, with the default stopping rule -- the authors' field as a user runs it, where
  ``authors`` times its 200 fixed steps.

``--cases`` picks the groups (default: all but ``large-batches``); ``large-batches`` adds batches
of 64 and 256 blends x 15 sources, sizes for an accelerator (raise ``--batch-sources`` with it, the
largest number of sources one compiled step decodes). ``--save-blends`` writes the fields' blends
(image, peaks, variance) to one ``.npz`` and ``--blends`` reads them back, so the converged case
runs where the simulation stack (astropy, GalSim) is not installed, e.g. a GPU node with JAX
alone; ``--save-results`` keeps the converged fits' models, to be scored against the truth
elsewhere (``scripts/map_ablations.py --score-results``).

Every case is timed on ``--repeats`` calls after a warm-up call that pays compilation, and its
numbers come from the median call (the range of the calls is kept as ``wall_s_range``: on a shared
2-core VM one call of the same case has been seen to take 1.5x another). Each backend
runs in its own process; memory is that process's peak RSS after the case (monotone within the
process).

Usage::

    python benchmarks/bench_deblend.py --output benchmarks/output            # both backends
    python benchmarks/bench_deblend.py --backend tensorflow --fields VALIDATION_FIELDS --output DIR
    python benchmarks/bench_deblend.py --fields VALIDATION_FIELDS --max-fields 20 --save-blends blends.npz
    KERAS_BACKEND=jax python benchmarks/bench_deblend.py --backend jax --blends blends.npz \
        --cases batches large-batches authors converged --batch-sources 4096 --save-results fits.npz
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
CASES = ("singles", "batches", "large-batches", "authors", "converged", "authors-converged")
DEFAULT_CASES = ("singles", "batches", "authors", "converged", "authors-converged")


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


def _accelerator() -> tuple[str | None, float | None]:
    """The first JAX accelerator's kind and its peak memory in use so far (MB), or Nones on CPU."""
    import keras

    if keras.config.backend() != "jax":
        return None, None
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return None, None
    stats = device.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return device.device_kind, (round(peak / 2**20, 1) if peak is not None else None)


def save_blends(path, blends) -> None:
    """Write ``blends`` (dicts of image, peaks_xy, variance) to one ``.npz``, atomically."""
    import numpy as np

    arrays = {}
    for k, b in enumerate(blends):
        arrays[f"{k}/image"] = np.asarray(b["image"], np.float32)
        arrays[f"{k}/peaks_xy"] = np.asarray(b["peaks_xy"], np.float64)
        variance = np.asarray(b["variance"], np.float32)
        # A per-band sky variance broadcast over the field is stored as one number per band.
        flat = variance.reshape(len(variance), -1)
        arrays[f"{k}/variance"] = flat[:, 0].copy() if np.all(flat == flat[:, :1]) else variance
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, n_blends=len(blends), **arrays)
    os.replace(tmp, path)


def load_blends(path) -> list[dict]:
    """The blends written by `save_blends`."""
    import numpy as np

    with np.load(path) as data:
        blends = []
        for k in range(int(data["n_blends"])):
            image = data[f"{k}/image"]
            variance = data[f"{k}/variance"]
            if variance.ndim == 1:
                variance = np.broadcast_to(variance[:, None, None], image.shape)
            blends.append(dict(image=image, peaks_xy=data[f"{k}/peaks_xy"], variance=variance))
    return blends


def save_results(path, results) -> None:
    """Write the models of ``results`` (`DeblendResult` per blend) to one ``.npz``, atomically."""
    import numpy as np

    arrays = {"n_blends": len(results)}
    for k, r in enumerate(results):
        arrays[f"{k}/models"] = np.asarray(r.models, np.float32)
        arrays[f"{k}/stamp_yx0"] = np.asarray(r.stamp_yx0)
        arrays[f"{k}/n_iter"] = np.asarray(r.n_iter)
        if r.envelopes is not None:
            arrays[f"{k}/envelopes"] = np.asarray(r.envelopes, np.float32)
            arrays[f"{k}/envelope_sources"] = np.asarray(r.envelope_sources)
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


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


def field_blends_from(fields, max_fields: int) -> list[dict]:
    """The blends of the first ``max_fields`` TestFields in ``fields`` (all galaxies of a field as one)."""
    import numpy as np

    from lsst.meas.madness.evaluation import iter_test_fields

    blends = []
    for f in iter_test_fields(fields, max_fields=max_fields):
        variance = np.broadcast_to(np.asarray(f.variance, np.float32)[:, None, None], f.image.shape)
        blends.append(dict(image=f.image, peaks_xy=f.centers_xy, variance=variance))
    return blends


def run_backend(backend: str, precisions, bundle=None, fields=None, max_fields: int = 8,
                repeats: int = 3, cases_wanted=DEFAULT_CASES, batch_sources: int | None = None,
                blends_file=None, results_file=None, progress=None, map_settings=()) -> dict:
    os.environ["KERAS_BACKEND"] = backend
    import keras
    import numpy as np

    from lsst.meas.madness import MadnessDeblender, MapSettings
    from lsst.meas.madness.backend import cpu_model, device_description

    keras.utils.set_random_seed(0)
    deblender = MadnessDeblender.from_bundle(bundle)
    field_blends = []
    if blends_file is not None:
        field_blends = load_blends(blends_file)[:max_fields]
    elif fields is not None:
        field_blends = field_blends_from(fields, max_fields)
    base = MapSettings() if batch_sources is None else MapSettings(batch_sources=batch_sources)
    overrides = MapSettings.parse_overrides(map_settings)
    base = base.replace(**overrides)

    def timed(blends, settings, fixed: bool, keep=None):
        start = time.perf_counter()
        deblender.deblend_batch(blends, settings=settings)  # warm-up: compilation
        warmup = time.perf_counter() - start
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            results = deblender.deblend_batch(blends, settings=settings)
            walls.append(time.perf_counter() - t0)
        if keep is not None:
            save_results(keep, results)
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
            "warmup_s": round(warmup, 1),
            "peak_rss_mb": _peak_rss_mb(),
            "accelerator_peak_mb": _accelerator()[1],
        }

    cases = []
    floors = {}
    versions = {"keras": keras.__version__, "numpy": np.__version__}
    for module in ("tensorflow", "jax"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    meta = deblender.metadata

    def snapshot() -> dict:
        return {
            "backend": backend,
            "date": datetime.date.today().isoformat(),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "python": platform.python_version(), "processor": cpu_model(),
                        "devices": device_description(), "accelerator": _accelerator()[0]},
            "threads": {k: os.environ.get(k) for k in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")},
            # JAX on a GPU runs float32 convolutions in TF32 unless this says "float32"/"highest"
            "jax_default_matmul_precision": os.environ.get("JAX_DEFAULT_MATMUL_PRECISION"),
            "versions": versions,
            "bundle": str(bundle) if bundle else "packaged",
            "model": meta.description if meta is not None else None,
            "batch_sources": base.batch_sources,
            "map_settings": {k: v for k, v in overrides.items()},
            "repeats": repeats,
            "decoder_floor_ms_per_galaxy": floors,
            "cases": cases,
        }

    def record(case: dict) -> None:
        case["x_floor"] = round(case["ms_per_galaxy_step"] / floors[case["precision"]], 2)
        cases.append(case)
        if progress is not None:  # a run stopped at a time limit keeps the cases it finished
            progress(snapshot())

    for precision in precisions:
        floors[precision] = round(decoder_floor_ms(deblender.decoder, precision), 3)
        rng = np.random.default_rng(0)  # the same blends in every precision
        fixed = base.replace(max_iter=STEPS, min_iter=STEPS, precision=precision)
        # The blends are drawn whether or not their case runs, so every case sees the same blends.
        singles = [(n, _case_blend(rng, n, size)) for n, size in [(1, 60), (5, 100), (15, 150), (50, 260)]]
        batches = {nb: [_case_blend(rng, 15, 150) for _ in range(nb)] for nb in (1, 4, 16)}
        authors = _case_blend(rng, 12, 205)
        # Converged fits first: they are what a user runs, and the case a time limit should not cut.
        if field_blends and "converged" in cases_wanted:
            keep = None
            if results_file is not None:
                keep = Path(results_file)
                if len(precisions) > 1:
                    keep = keep.with_name(f"{keep.stem}_{precision}{keep.suffix}")
            record({"case": f"converged: {len(field_blends)} validation TestFields, default stopping",
                    "precision": precision,
                    **timed(field_blends, base.replace(precision=precision), False, keep=keep)})
        if "singles" in cases_wanted:
            for n, blend in singles:
                record({"case": f"single blend, {n} sources", "precision": precision,
                        **timed([blend], fixed, True)})
        sizes = [nb for nb in (1, 4, 16) if "batches" in cases_wanted]
        sizes += [nb for nb in (64, 256) if "large-batches" in cases_wanted]
        for nb in sizes:
            # Large batches repeat the 16 drawn blends: the cost of a step does not depend on pixel values.
            blends = batches[nb] if nb in batches else [batches[16][k % 16] for k in range(nb)]
            record({"case": f"batch of {nb} blends x 15 sources", "precision": precision,
                    **timed(blends, fixed, True)})
        if "authors" in cases_wanted:
            record({"case": "authors' setting: 205x205 field, 12 galaxies, 200 steps", "precision": precision,
                    **timed([authors], fixed.replace(max_iter=200, min_iter=200), True)})
        twelve = [b for b in field_blends if len(b["peaks_xy"]) == 12]
        if twelve and "authors-converged" in cases_wanted:
            fields = [timed([b], base.replace(precision=precision), False) for b in twelve]
            walls = [f["wall_s"] for f in fields]
            record({"case": f"authors' setting converged: {len(twelve)} validation TestField(s) of 12 galaxies, "
                            "each alone, default stopping (median field)",
                    "precision": precision, "n_blends": len(twelve), "n_galaxies": 12,
                    "steps": round(float(np.mean([f["steps"] for f in fields])), 1),
                    "wall_s": round(float(np.median(walls)), 3),
                    "wall_s_range": [round(min(walls), 3), round(max(walls), 3)],
                    "s_per_galaxy": round(float(np.median(walls)) / 12, 3),
                    "ms_per_galaxy_step": round(float(np.median([f["ms_per_galaxy_step"] for f in fields])), 3),
                    "warmup_s": max(f["warmup_s"] for f in fields), "peak_rss_mb": _peak_rss_mb(),
                    "accelerator_peak_mb": _accelerator()[1], "fields": fields})
    return snapshot()


def markdown(result: dict) -> str:
    floors = ", ".join(f"{k} {v} ms" for k, v in result["decoder_floor_ms_per_galaxy"].items())
    machine = result["machine"]
    where = f"{machine['processor']}, {machine['cpus']} CPUs"
    if machine.get("accelerator"):
        where = f"{machine['accelerator']} ({machine['devices']}), host {where}"
    lines = [
        f"Backend **{result['backend']}**, {where}, "
        f"{result['date']}, model: {result['model']}; versions {result['versions']}. Decoder forward + "
        f"backward per galaxy (the floor of a step): {floors}. Median of {result.get('repeats', 1)} timed "
        "call(s) per case (wall range: the fastest and slowest call)."
        + (f" MapSettings changed from the defaults: {result['map_settings']}." if result.get("map_settings") else ""),
        "",
        "| case | precision | galaxies | steps (mean) | wall (s) | wall range (s) | s / galaxy "
        "| ms / galaxy / step | x floor | first call (s) | peak RSS (MB) | peak device memory (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in result["cases"]:
        lines.append(
            f"| {c['case']} | {c['precision']} | {c['n_galaxies']} | {c['steps']} | {c['wall_s']} | "
            f"{'-'.join(str(v) for v in c.get('wall_s_range', [c['wall_s']] * 2))} | {c['s_per_galaxy']} | "
            f"{c['ms_per_galaxy_step']} | {c['x_floor']} | {c.get('warmup_s', '-')} | {c['peak_rss_mb']} | "
            f"{c.get('accelerator_peak_mb') or '-'} |"
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
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), choices=CASES,
                        help="case groups to time (default: all but large-batches, which is sized for a GPU)")
    parser.add_argument("--batch-sources", type=int, default=None,
                        help="MapSettings.batch_sources of every case (default: the engine's)")
    parser.add_argument("--blends", default=None,
                        help="the converged case's blends from a --save-blends file instead of --fields")
    parser.add_argument("--save-blends", default=None,
                        help="write the --fields blends to this .npz and exit (no timing)")
    parser.add_argument("--save-results", default=None,
                        help="write the converged fits' models to this .npz (per precision when several)")
    parser.add_argument("--map-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a MapSettings field for every case, e.g. freeze_drift=0.1 (repeatable)")
    parser.add_argument("--output", default="benchmarks/output")
    args = parser.parse_args()
    if args.save_blends:
        if not args.fields:
            parser.error("--save-blends needs --fields")
        blends = field_blends_from(args.fields, args.max_fields)
        save_blends(args.save_blends, blends)
        print(f"wrote {len(blends)} blends to {args.save_blends}")
        return 0
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.backend is None:
        for backend in ("tensorflow", "jax"):
            cmd = [sys.executable, __file__, "--backend", backend, "--output", str(out),
                   "--max-fields", str(args.max_fields), "--repeats", str(args.repeats)]
            for flag, value in (("--bundle", args.bundle), ("--fields", args.fields),
                                ("--blends", args.blends), ("--batch-sources", args.batch_sources),
                                ("--save-results", args.save_results)):
                if value:
                    cmd += [flag, str(value)]
            cmd += ["--cases", *args.cases]
            for item in args.map_setting:
                cmd += ["--map-setting", item]
            if args.precision:
                cmd += ["--precision", *args.precision]
            subprocess.run(cmd, check=True)
        return 0
    precisions = args.precision or (["float32", "mixed_bfloat16"] if args.backend == "tensorflow" else ["float32"])
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    def write(result: dict) -> None:
        for suffix, text in (("json", json.dumps(result, indent=2) + "\n"), ("md", markdown(result))):
            path = out / f"deblend_{args.backend}.{suffix}"
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)

    result = run_backend(args.backend, precisions, bundle=args.bundle, fields=args.fields,
                         max_fields=args.max_fields, repeats=args.repeats, cases_wanted=args.cases,
                         batch_sources=args.batch_sources, blends_file=args.blends,
                         results_file=args.save_results, progress=write, map_settings=args.map_setting)
    write(result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
