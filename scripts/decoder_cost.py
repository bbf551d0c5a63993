#!/usr/bin/env python
"""Forward + backward time of the decoder per galaxy for several widths (what a MAP step costs).

Usage::

    python scripts/decoder_cost.py [--filters 128,96,64 96,64,48 64,48,32] [--batch 15] [--repeats 5]

Random weights (the cost does not depend on them), TensorFlow, float32; the gradient is taken
with respect to the latents, as in the MAP step. Prints parameters and the best of ``repeats``
timings of 20 steps, in ms per galaxy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", nargs="+", default=["128,96,64", "96,64,48", "64,48,32"])
    parser.add_argument("--batch", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
    import numpy as np
    import tensorflow as tf

    from lsst.meas.madness.networks import Decoder

    print("| decoder filters | parameters | ms / galaxy (forward + backward) |")
    print("| --- | --- | --- |")
    for text in args.filters:
        filters = tuple(int(f) for f in text.split(","))
        decoder = Decoder(45, 6, 16, filters, dense_units=512)
        z = tf.Variable(np.random.default_rng(0).normal(size=(args.batch, 16)).astype(np.float32))

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(decoder(z)))
            return tape.gradient(loss, z)

        step()
        best = np.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(20):
                step()
            best = min(best, (time.perf_counter() - start) / 20 / args.batch * 1e3)
        print(f"| {', '.join(map(str, filters))} | {decoder.count_params():,} | {best:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
