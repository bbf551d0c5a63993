#!/usr/bin/env python
"""The decoder's transposed convolutions, timed as TensorFlow runs them and as exact rewrites.

A MAP step costs one forward and backward pass of the decoder per source (`doc/benchmarks.md`),
and most of that pass is its transposed convolutions. Two exact rewrites are timed against
``tf.nn.conv2d_transpose`` (what `keras.layers.Conv2DTranspose` calls), forward plus the gradient
with respect to the layer's input (the MAP step differentiates with respect to the latents):

- a stride-2 transposed convolution of kernel 5 with ``"same"`` padding is, output phase by output
  phase, a correlation of the input with a 3x3 sub-kernel (taps 3, 1 and 4, 2, 0 of each axis);
  all four phases are one ordinary convolution with four times the output channels followed by
  ``tf.nn.depth_to_space`` (the "sub-pixel convolution" form). It does 9/6.25 of the
  multiply-adds, in a convolution oneDNN may run faster;
- a stride-1 transposed convolution is a correlation with the spatially flipped kernel, its
  channel axes swapped.

Each rewrite is checked against the original (relative difference of outputs and gradients).
Random weights at the shapes of a decoder of the given filters (the packaged ``cpu9-a``: 96, 64,
32) and a 45-px stamp; TensorFlow, float32. Prints a markdown table and writes JSON.

Usage::

    python benchmarks/bench_decoder_layers.py [--filters 96,64,32] [--batch 16] [--repeats 7]
        [--output doc/benchmark-results/decoder-layers.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

# One output phase per row: the kernel taps (of 5) at input offsets -1, 0, +1 (None: no tap).
PHASE_TAPS = {0: (3, 1, None), 1: (4, 2, 0)}


def phase_kernel(kernel: np.ndarray) -> np.ndarray:
    """A stride-2, kernel-5, ``"same"`` transposed-convolution kernel as one ordinary convolution.

    Parameters
    ----------
    kernel : `numpy.ndarray`
        ``(5, 5, out_channels, in_channels)``, as ``tf.nn.conv2d_transpose`` takes it.

    Returns
    -------
    kernel : `numpy.ndarray`
        ``(3, 3, in_channels, 4 * out_channels)`` for ``tf.nn.conv2d`` (stride 1, ``"SAME"``),
        whose output ``tf.nn.depth_to_space(., 2)`` interleaves into the transposed convolution's.
    """
    size, _, n_out, n_in = kernel.shape
    if size != 5:
        raise ValueError(f"phase_kernel handles kernel size 5, not {size}.")
    out = np.zeros((3, 3, n_in, 2, 2, n_out), kernel.dtype)
    for a in (0, 1):
        for b in (0, 1):
            for u, ku in enumerate(PHASE_TAPS[a]):
                for v, kv in enumerate(PHASE_TAPS[b]):
                    if ku is not None and kv is not None:
                        out[u, v, :, a, b, :] = kernel[ku, kv].T
    return out.reshape(3, 3, n_in, 4 * n_out)


def flipped_kernel(kernel: np.ndarray) -> np.ndarray:
    """A stride-1 ``"same"`` transposed-convolution kernel ``(k, k, out, in)`` as a ``conv2d`` one."""
    return np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", default="96,64,32", help="the decoder's transposed-convolution filters")
    parser.add_argument("--stamp", type=int, default=45)
    parser.add_argument("--bands", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    import tensorflow as tf

    from lsst.meas.madness.backend import cpu_model

    filters = [int(f) for f in args.filters.split(",")]
    base = -(-args.stamp // 2 ** len(filters))
    rng = np.random.default_rng(0)
    batch = args.batch

    def timed(step, x) -> float:
        """Best of ``repeats`` means over 20 calls, ms per galaxy."""
        for _ in range(5):
            step(x)
        best = np.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(20):
                step(x)
            best = min(best, (time.perf_counter() - t0) / 20 / batch * 1e3)
        return float(best)

    def forward_backward(layer, g):
        """Forward, and the gradient of sum(output * g) with respect to the input."""

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(y * g)
            return y, tape.gradient(loss, x)

        return step

    def rel(a, b) -> float:
        return float(tf.reduce_max(tf.abs(a - b)) / tf.reduce_max(tf.abs(a)))

    rows = []
    size, n_in = base, filters[0]
    layers = [(n_out, 2, 5) for n_out in filters] + [(args.bands, 1, 3)]
    for n_out, stride, k in layers:
        x = tf.constant(rng.normal(size=(batch, size, size, n_in)).astype(np.float32))
        kernel = (rng.normal(size=(k, k, n_out, n_in)) * 0.05).astype(np.float32)
        out_size = size * stride
        out_shape = (out_size, out_size, n_out)
        g = tf.constant(rng.normal(size=(batch, *out_shape)).astype(np.float32))  # the same for both forms
        original = tf.constant(kernel)
        transposed = forward_backward(
            lambda x: tf.nn.conv2d_transpose(x, original, (batch, *out_shape), stride, "SAME"), g)
        if stride == 2:
            rewritten = tf.constant(phase_kernel(kernel))
            rewrite = forward_backward(lambda x: tf.nn.depth_to_space(tf.nn.conv2d(x, rewritten, 1, "SAME"), 2), g)
            name = "conv2d 3x3 + depth_to_space"
        else:
            rewritten = tf.constant(flipped_kernel(kernel))
            rewrite = forward_backward(lambda x: tf.nn.conv2d(x, rewritten, 1, "SAME"), g)
            name = "conv2d, flipped kernel"
        (y0, g0), (y1, g1) = transposed(x), rewrite(x)
        row = {
            "layer": f"{size}x{size}x{n_in} -> {out_size}x{out_size}x{n_out}, kernel {k}, stride {stride}",
            "rewrite": name,
            "max_rel_diff_output": rel(y0, y1),
            "max_rel_diff_gradient": rel(g0, g1),
            "ms_per_galaxy_conv2d_transpose": timed(transposed, x),
            "ms_per_galaxy_rewrite": timed(rewrite, x),
        }
        rows.append(row)
        size, n_in = out_size, n_out

    print("| layer | rewrite | max rel. difference (output / gradient) | conv2d_transpose (ms / galaxy) "
          "| rewrite (ms / galaxy) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['layer']} | {r['rewrite']} | {r['max_rel_diff_output']:.1e} / {r['max_rel_diff_gradient']:.1e} "
              f"| {r['ms_per_galaxy_conv2d_transpose']:.3f} | {r['ms_per_galaxy_rewrite']:.3f} |")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "command": "python benchmarks/bench_decoder_layers.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count()},
            "tensorflow": tf.__version__, "filters": filters, "batch": batch, "repeats": args.repeats,
            "layers": rows,
        }
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
