"""Benchmark of training throughput: samples per second of one VAE train step, per backend.

The paper-size encoder (6,691,608 parameters) and decoder (3,473,062) in the `VaeTrainer` of
``madness train`` (chi^2 + beta KL, Adam, clip value 0.1), batch 64, random stamps: the cost of
a step does not depend on the pixel values. Variants:

- ``tensorflow``: Keras's TensorFlow trainer, a ``tf.function`` graph (what ``madness train``
  uses on CPU);
- ``tensorflow-xla``: the same with ``jit_compile=True``;
- ``tensorflow-bf16``: the ``mixed_bfloat16`` policy (float32 variables, bfloat16 compute);
  fast only where the CPU has AVX512-BF16/AMX, and not used for the shipped models;
- ``jax``: Keras's JAX trainer, ``jit_compile=True`` (``jax.jit`` of the stateless step; until
  2026-12-04 this variant ran without it, op by op);
- ``jax-bf16``: the same with the ``mixed_bfloat16`` policy (for GPUs: tensor cores);
- ``tensorflow-frozen-encoder``, ``tensorflow-bf16-frozen-encoder``: the decoder-only
  continuation (``madness train --freeze-encoder``): the encoder runs forward only.

Each variant runs in its own process: a warm-up of 3 steps (compilation), then steps for
``--seconds`` of wall time, at ``--batch-size`` stamps per step (default 64, as ``madness
train``; a GPU wants more). Writes ``training_throughput.json`` and prints a markdown table.

Usage::

    python benchmarks/bench_training.py --output benchmarks/output [--seconds 40]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("tensorflow", "tensorflow-xla", "tensorflow-bf16", "jax", "jax-bf16", "tensorflow-frozen-encoder",
            "tensorflow-bf16-frozen-encoder")
BATCH = 64
PER_CALL = 16


def run_variant(variant: str, seconds: float, batch: int = BATCH) -> dict:
    os.environ["KERAS_BACKEND"] = "jax" if variant.startswith("jax") else "tensorflow"
    import keras
    import numpy as np

    from lsst.meas.madness.networks import Decoder, Encoder
    from lsst.meas.madness.training.models import VaeTrainer

    if "-bf16" in variant:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    encoder, decoder = Encoder(), Decoder()
    if variant.endswith("frozen-encoder"):
        encoder.build((None, 45, 45, 6))
        encoder.trainable = False
    vae = VaeTrainer(encoder, decoder, np.full(6, 1e-6, np.float32), scale=1e4, beta=0.01)
    # JAX's step is jitted as in `run_stage` (without it Keras runs it op by op: ~0.3 s per step on
    # an H200 whatever the batch); TensorFlow's only with the -xla variant.
    vae.compile(optimizer=keras.optimizers.Adam(1e-4, clipvalue=0.1),
                jit_compile=variant == "tensorflow-xla" or variant.startswith("jax"))
    rng = np.random.default_rng(0)
    # 16 batches per `fit` call: Keras's per-call set-up (iterator, callbacks) is then a small
    # part of the time, as in an epoch of `madness train`.
    y = rng.uniform(0, 0.01, (batch * PER_CALL, 45, 45, 6)).astype(np.float32)
    x = (y + rng.normal(0, 1e-3, y.shape)).astype(np.float32)
    start = time.perf_counter()
    vae.fit(x[:batch * 3], y[:batch * 3], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    compile_s = time.perf_counter() - start
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        vae.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
        steps += PER_CALL
    elapsed = time.perf_counter() - start
    from lsst.meas.madness.backend import device_description

    return {"variant": variant, "batch_size": batch, "steps": steps, "seconds": round(elapsed, 2),
            "samples_per_second": round(steps * batch / elapsed, 1), "warmup_seconds": round(compile_s, 1),
            "keras": keras.__version__, "backend": keras.config.backend(), "devices": device_description()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=40.0, help="timed wall time per variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[BATCH],
                        help=f"stamps per train step; each variant runs at each size given (default {BATCH})")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        print(json.dumps(run_variant(args._child, args.seconds, args.batch_size[0])))
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in args.variants:
        for batch in args.batch_size:
            proc = subprocess.run([sys.executable, __file__, "--output", str(args.output), "--seconds",
                                   str(args.seconds), "--batch-size", str(batch), "--_child", variant],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append({"variant": variant, "batch_size": batch,
                             "error": proc.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
            # Write after every variant, so a run stopped at a time limit keeps what it measured.
            _write(args.output, rows)
    print("| variant | batch | samples/s | warm-up s |\n| --- | --- | --- | --- |")
    for row in rows:
        if "error" in row:
            print(f"| {row['variant']} | {row['batch_size']} | failed: {row['error']} | |")
        else:
            print(f"| {row['variant']} | {row['batch_size']} | {row['samples_per_second']} "
                  f"| {row['warmup_seconds']} |")
    return 0


def _write(output: Path, rows: list) -> None:
    from lsst.meas.madness.backend import cpu_model

    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{cpu_model()}, {os.cpu_count()} cores", "results": rows}
    tmp = output / "training_throughput.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, output / "training_throughput.json")


if __name__ == "__main__":
    sys.exit(main())
