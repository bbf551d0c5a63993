"""Where a MAP step's time goes: the decoder floor against the full compiled step, per region size.

Usage::

    python scripts/profile_map_step.py [--sources 15] [--widths 64 192 400] [--repeats 20] \
        [--precision float32] [--clock cpu] [--output profile.json]

For one blend of ``--sources`` sources in square regions of each width, times (each on a second
round, after compilation, the variants interleaved so that a loaded machine slows all alike):

- ``decoder``: forward + backward of the decoder alone for the blend's sources (the floor);
- ``decoder+flow``: the same plus the flow's log-density (the prior term);
- ``step``: the engine's compiled step (`MadnessDeblender._step_fn`: decode, place, chi^2, prior,
  flux factors, gradient), on the engine's own packed arrays.

Times are wall seconds, or with ``--clock cpu`` the process's CPU seconds (all threads), which a
loaded machine disturbs less. Prints a table and writes JSON. Issue 13: a step should cost <= 1.3x the decoder floor.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=15)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 192, 400])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--symmetry-weight", type=float, default=None,
                        help="MapSettings.symmetry_weight of the step (default: the engine's)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or the process's CPU time (all its threads): steadier on a loaded machine")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import keras
    import numpy as np

    from lsst.meas.madness import MadnessDeblender, MapSettings
    from lsst.meas.madness.backend import compile_value_and_grad, cpu_model
    from lsst.meas.madness.engine.observation import prepare_blend
    from lsst.meas.madness.precision import with_precision

    keras.utils.set_random_seed(0)
    deblender = MadnessDeblender.from_bundle(args.bundle)
    settings = MapSettings(precision=args.precision)
    if args.symmetry_weight is not None:
        settings = settings.replace(symmetry_weight=args.symmetry_weight)
    n = args.sources
    rng = np.random.default_rng(0)
    net = with_precision(deblender.decoder, args.precision)

    def decoder_loss(z, *, calls):
        return keras.ops.sum(keras.ops.square(keras.ops.cast(calls[0](z), "float32")), axis=(1, 2, 3))

    def decoder_flow_loss(z, *, calls):
        return decoder_loss(z, calls=calls[:1]) - calls[1](z)

    floor = compile_value_and_grad(decoder_loss, [net])
    floor_flow = compile_value_and_grad(decoder_flow_loss, [net, deblender.flow])
    z = keras.ops.convert_to_tensor(rng.normal(0, 0.7, (n, deblender.latent_dim)).astype("f4"))

    def blend(width):
        margin = 12
        peaks = rng.uniform(margin, width - margin, (n, 2))
        image = rng.normal(0, 20, (6, width, width)).astype("f4")
        return dict(image=image, peaks_xy=peaks, variance=np.full_like(image, 400.0))

    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def time_it(fn, repeats):
        fn()
        t0 = clock()
        for _ in range(repeats):
            fn()
        return (clock() - t0) / repeats

    rows = []
    for width in args.widths:
        b = blend(width)
        prepared = prepare_blend(b["image"], b["peaks_xy"], b["variance"], None, num_bands=6,
                                 stamp_size=deblender.stamp_size, normalization=deblender.normalization,
                                 max_sources=settings.max_sources)
        *arrays, bounds = deblender._pack([prepared])
        packed, _, _ = deblender._select(arrays, bounds, np.arange(1), bucket=False)
        x = np.zeros((n, deblender.latent_dim + 6), np.float32)
        x = keras.ops.convert_to_tensor(x)
        step = deblender._step_fn(settings)
        times = {k: [] for k in ("decoder", "decoder+flow", "step")}
        for _ in range(2):  # interleaved rounds; the first pays compilation
            times["decoder"].append(time_it(lambda: keras.ops.convert_to_numpy(floor(z)[1]), args.repeats))
            times["decoder+flow"].append(time_it(lambda: keras.ops.convert_to_numpy(floor_flow(z)[1]),
                                                 args.repeats))
            times["step"].append(time_it(lambda: keras.ops.convert_to_numpy(step(x, *packed)[1]), args.repeats))
        row = {"width": width, "sources": n}
        for k, v in times.items():
            row[f"{k}_ms_per_galaxy"] = round(1e3 * v[-1] / n, 3)
        base = row["decoder_ms_per_galaxy"]
        for k in times:
            row[f"{k}_x_floor"] = round(row[f"{k}_ms_per_galaxy"] / base, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)

    result = {"machine": f"{cpu_model()}, {os.cpu_count()} CPUs", "backend": keras.config.backend(), "clock": args.clock,
              "precision": args.precision,
              "symmetry_weight": settings.symmetry_weight, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    print("\n| width | " + " | ".join(f"{k} ms/gal (x floor)" for k in ("decoder", "decoder+flow", "step")) + " |")
    print("| --- " * 4 + "|")
    for r in rows:
        cells = [f"{r[k + '_ms_per_galaxy']} ({r[k + '_x_floor']})" for k in ("decoder", "decoder+flow", "step")]
        print(f"| {r['width']} | " + " | ".join(cells) + " |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
