"""Compute precision of the image networks: float32, or bfloat16 compute with float32 weights.

Keras fixes a layer's dtype policy when the layer is built, so a network is given another
precision by building a copy of it under that policy and copying the weights over. On CPUs with
AMX-BF16 (and on GPUs) ``"mixed_bfloat16"`` about halves the time of a decoder forward and
backward pass (doc/training.md, doc/benchmarks.md); the weights stay float32.
"""

from __future__ import annotations

__all__ = ["PRECISIONS", "dtype_policy", "with_precision"]

import contextlib

# Keras is imported inside the functions: the engine's settings validate a precision name, and
# tasks and evaluation import those settings without loading a Keras backend.

PRECISIONS = ("float32", "mixed_bfloat16")
"""Precisions the package trains and deblends in."""


@contextlib.contextmanager
def dtype_policy(policy: str):
    """Build the networks created inside under the Keras dtype ``policy``; restore it after."""
    if policy not in PRECISIONS:
        raise ValueError(f"Precision must be one of {PRECISIONS}, not {policy!r}.")
    import keras

    before = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def with_precision(network, policy: str):
    """``network`` itself when it already computes in ``policy``, else a copy that does.

    The copy has the same architecture (``get_config``) and the same (float32) weights.
    """
    if network.dtype_policy.name == policy:
        return network
    with dtype_policy(policy):
        copy = type(network).from_config(network.get_config())
    copy.set_weights(network.get_weights())
    return copy
