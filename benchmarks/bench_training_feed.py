"""Where a training step's time goes: the compiled step against the host feeding it.

`bench_training.py` compares backends on a step fed from arrays already made; this benchmark
takes one backend (``KERAS_BACKEND``, JAX for a GPU) and one batch size and feeds the same
paper-size `VaeTrainer` step (chi^2 + beta KL, Adam, clip value 0.1) the ways ``madness train``
can, in one process and one compilation:

- ``fixed``: batches of stamps already made, sliced from arrays (the step and the slicing);
- ``fresh_noise_1_worker``: the real loop's batches (`FreshNoise`: a symmetry of the square and
  new sky + Poisson noise per stamp, drawn on the host), made by one thread;
- ``fresh_noise_<N>_workers``: the same batches made by ``--workers`` threads ahead of the step;
- ``run_stage``: two epochs of `lsst.meas.madness.training.loop.run_stage` itself (fresh noise,
  its default number of workers, the validation pass and the checkpoints), seconds per epoch.

Each feed is one ``fit`` of ``--steps`` batches, timed per batch by a callback (the median after
the first 3) and as a whole. Writes ``training_feed_<backend>_<batch>.json``.

Usage::

    KERAS_BACKEND=jax python benchmarks/bench_training_feed.py --batch-size 1024 --output DIR
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=40, help="batches per feed (default 40)")
    parser.add_argument("--workers", type=int, default=8, help="threads of the threaded feed (default 8)")
    parser.add_argument("--jit", choices=["auto", "on", "off"], default="auto",
                        help="Keras's jit_compile of the step (auto: what run_stage does: on for JAX only)")
    parser.add_argument("--skip-run-stage", action="store_true", help="leave out the run_stage epochs")
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from lsst.meas.madness.backend import device_description
    from lsst.meas.madness.networks import Decoder, Encoder
    from lsst.meas.madness.training.augment import FreshNoise
    from lsst.meas.madness.training.config import StageSchedule
    from lsst.meas.madness.training.loop import _Batches, default_data_workers, run_stage
    from lsst.meas.madness.training.models import VaeTrainer

    backend = keras.config.backend()
    jit = {"auto": backend == "jax", "on": True, "off": False}[args.jit]
    batch = args.batch_size
    keras.utils.set_random_seed(0)
    sky = np.full(6, 1e-6, np.float32)
    vae = VaeTrainer(Encoder(), Decoder(), sky, scale=1e4, beta=0.01)
    vae.compile(optimizer=keras.optimizers.Adam(1e-4, clipvalue=0.1), jit_compile=jit)
    rng = np.random.default_rng(0)
    n = 4 * batch  # the cost of a step does not depend on the pixel values
    y = rng.uniform(0, 0.01, (n, 45, 45, 6)).astype(np.float32)
    x = (y + rng.normal(0, 1e-3, y.shape)).astype(np.float32)
    noise = FreshNoise(sky, 1e4)
    result = {"date": datetime.date.today().isoformat(), "backend": backend, "devices": device_description(),
              "keras": keras.__version__, "batch_size": batch, "steps": args.steps, "jit_compile": jit,
              "cpus": os.cpu_count(), "feeds": {}}
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"training_feed_{backend}_{batch}.json"

    def write():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, path)

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.times = [time.perf_counter()]

        def on_train_batch_end(self, index, logs=None):
            self.times.append(time.perf_counter())

    start = time.perf_counter()
    vae.fit(_Batches(x, y, batch, np.arange(2 * batch)), epochs=1, verbose=0, shuffle=False)
    result["first_fit_s"] = round(time.perf_counter() - start, 1)
    print(f"first fit (compilation): {result['first_fit_s']} s", flush=True)
    order = np.tile(np.arange(n), args.steps * batch // n + 1)[: args.steps * batch]

    def feed(name, data):
        clock = Clock()
        start = time.perf_counter()
        vae.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
        wall = time.perf_counter() - start
        step = float(np.median(np.diff(clock.times)[3:]))
        result["feeds"][name] = {"wall_s": round(wall, 2), "median_step_s": round(step, 4),
                                 "samples_per_s_median": round(batch / step, 1),
                                 "samples_per_s_wall": round((len(clock.times) - 1) * batch / wall, 1)}
        print(name, result["feeds"][name], flush=True)
        write()

    feed("fixed", _Batches(x, y, batch, order))
    feed("fresh_noise_1_worker", _Batches(x, y, batch, order, noise, (0, 1, 2)))
    feed(f"fresh_noise_{args.workers}_workers", _Batches(x, y, batch, order, noise, (0, 1, 2), workers=args.workers))
    if not args.skip_run_stage:
        # The real loop on the same trainer: Adam restarted, validation on a batch, checkpoints.
        schedule = StageSchedule(learning_rate=1e-5, clip_value=0.1, max_epochs=2, patience=None, batch_size=batch)
        with tempfile.TemporaryDirectory() as tmp:
            stamps = y[order]  # an epoch of --steps batches; with augment the inputs are made from these
            stage = run_stage("bench", vae, schedule, stamps, stamps, x[:batch], y[:batch], directory=Path(tmp),
                              seed=0, progress=False, augment=noise)
        seconds = [row["seconds"] for row in stage.history]
        result["feeds"]["run_stage"] = {"workers": default_data_workers(), "stamps_per_epoch": len(order),
                                        "epoch_s": seconds,
                                        "samples_per_s_last_epoch": round(len(order) / seconds[-1], 1)}
        print("run_stage", result["feeds"]["run_stage"], flush=True)
        write()
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
