"""The one place with Keras-backend-specific code: compiled value-and-gradient functions.

Everything else (networks, the MAP objective, the Adam update) is written with ``keras.ops``
or numpy. Only differentiation and compilation differ between backends: TensorFlow uses
``tf.GradientTape`` inside ``tf.function``; JAX uses ``jax.value_and_grad`` inside ``jax.jit``
with the models called statelessly, so their weights are arguments of the compiled function
rather than constants baked into it. Backends are imported lazily, inside their branch.
"""

from __future__ import annotations

__all__ = ["backend_name", "compile_value_and_grad", "compile_function", "compiles_per_shape", "cpu_model",
           "device_description", "device_scope", "require_backend"]

import os
from collections.abc import Callable, Sequence

import keras

# Quiet TensorFlow/absl start-up chatter in one place (set before TensorFlow is imported).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def backend_name() -> str:
    """Name of the active Keras backend (``"tensorflow"``, ``"jax"``, ...)."""
    return keras.config.backend()


def compiles_per_shape() -> bool:
    """Whether every new input shape costs a compilation of `compile_value_and_grad`'s function.

    True for JAX (``jax.jit`` specialises on shapes), so callers should keep the set of shapes
    small (bucketed sizes); False for TensorFlow, whose ``tf.function(reduce_retracing=True)``
    generalises to unknown dimensions after the first shapes and then takes any size.
    """
    return backend_name() == "jax"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what `platform` knows where that is absent."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_accelerator() -> bool:
    """Whether the active backend computes on a GPU (or another non-CPU device)."""
    name = backend_name()
    if name == "jax":
        import jax

        return any(d.platform != "cpu" for d in jax.devices())
    if name == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    return False


def device_description() -> str:
    """Human-readable list of the devices the active backend computes on."""
    name = backend_name()
    if name == "jax":
        import jax

        return ", ".join(f"{d.platform}:{d.id}" for d in jax.devices())
    if name == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return ", ".join(d.name for d in gpus) if gpus else "CPU"
    return "unknown"


def require_backend(name: str | None) -> None:
    """Raise a clear error when the running Keras backend is not ``name`` (None: any).

    Keras picks its backend once per process, at import, from ``KERAS_BACKEND``; a task
    configuration can only check it, not switch it.
    """
    if name and name != backend_name():
        from .errors import MadnessValueError

        raise MadnessValueError(
            f"This process runs the Keras {backend_name()!r} backend but {name!r} was asked for; "
            f"set KERAS_BACKEND={name} in the environment before starting (e.g. before pipetask)."
        )


def device_scope(device: str | None):
    """Context manager placing the computations inside it on ``device`` (None: the default).

    ``device`` is ``"cpu"``, ``"gpu"`` or ``"gpu:N"`` (``"cuda:N"`` is accepted for JAX).
    """
    import contextlib

    if not device:
        return contextlib.nullcontext()
    kind, _, index = device.lower().partition(":")
    index = int(index or 0)
    name = backend_name()
    from .errors import MadnessValueError

    if name == "tensorflow":
        import tensorflow as tf

        found = tf.config.list_logical_devices(kind.upper().replace("CUDA", "GPU"))
        if index >= len(found):
            raise MadnessValueError(f"No TensorFlow device {device!r}; have {[d.name for d in tf.config.list_logical_devices()]}.")
        return tf.device(found[index].name)
    if name == "jax":
        import jax

        try:
            found = jax.devices("gpu" if kind in ("gpu", "cuda") else kind)
        except RuntimeError:
            found = []
        if index >= len(found):
            raise MadnessValueError(f"No JAX device {device!r}; have {jax.devices()}.")
        return jax.default_device(found[index])
    raise MadnessValueError(f"Devices are not supported on the Keras backend {name!r}.")


def _full_float32(models: Sequence[keras.Model]):
    """JAX context in which float32 convolutions and matrix products are computed in float32.

    On NVIDIA GPUs XLA's default precision runs float32 convolutions in TensorFloat-32 (10-bit
    mantissa). Measured on an H200 (doc/benchmarks.md, "GPU"): the 20-field MAP fits then lose
    in r flux (+0.0004) and in e1 (+0.0015) against the CPU's, while in full float32 they agree
    with the CPU's; mixed bfloat16 is the faster option and costs about as much as TF32. So
    ``precision="float32"`` means float32 here. The precision is fixed when a function is traced,
    so the context sits inside the traced bodies. It changes nothing on CPUs, whose float32 is
    already full. Networks computing in bfloat16 keep XLA's default (their measured setting).
    """
    import contextlib

    import jax

    if any(m.dtype_policy.compute_dtype != "float32" for m in models):
        return contextlib.nullcontext()
    return jax.default_matmul_precision("float32")


def _stateless(model: keras.Model, variables: tuple) -> Callable:
    trainable, non_trainable = variables

    def call(x):
        outputs, _ = model.stateless_call(trainable, non_trainable, x)
        return outputs

    return call


def _model_variables(models: Sequence[keras.Model]) -> Callable[[], list[tuple]]:
    """A function returning the models' current weight values, as the jitted functions take them.

    The lists of variables are gathered at the first call, once the models are built (Keras walks
    every layer to build them: ~0.45 ms a call on a 2-core host, paid at every MAP step before);
    their values are read at each call, so weights assigned later are still seen.
    """
    variables = []

    def values() -> list[tuple]:
        if not variables:
            variables.extend((list(m.trainable_variables), list(m.non_trainable_variables)) for m in models)
        return [([v.value for v in trainable], [v.value for v in fixed]) for trainable, fixed in variables]

    return values


def compile_value_and_grad(
    loss_fn: Callable, models: Sequence[keras.Model]
) -> Callable:
    """Compile ``x, *data -> (per_item_loss, d sum(loss) / d x)``.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(x, *data, calls=calls)`` returning a ``(batch,)`` tensor, written with
        ``keras.ops``. ``calls`` holds one callable per model in ``models`` (same order),
        to be used instead of calling the models directly.
    models : sequence of `keras.Model`
        Models whose weights are held fixed.

    Returns
    -------
    fn : callable
        ``fn(x, *data) -> (loss, grad)`` with backend tensors in and out.
    """
    name = backend_name()
    if name == "tensorflow":
        import tensorflow as tf

        calls = tuple(m.__call__ for m in models)

        @tf.function(reduce_retracing=True)
        def value_and_grad(x, *data):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = loss_fn(x, *data, calls=calls)
                total = tf.reduce_sum(loss)
            return loss, tape.gradient(total, x)

        return value_and_grad

    if name == "jax":
        import jax

        def total_loss(model_vars, x, *data):
            calls = tuple(_stateless(m, v) for m, v in zip(models, model_vars))
            with _full_float32(models):
                loss = loss_fn(x, *data, calls=calls)
            return loss.sum(), loss

        grad_fn = jax.jit(jax.value_and_grad(total_loss, argnums=1, has_aux=True))
        model_values = _model_variables(models)

        def value_and_grad(x, *data):
            (_, loss), grad = grad_fn(model_values(), x, *data)
            return loss, grad

        return value_and_grad

    raise NotImplementedError(f"Keras backend {name!r} is not supported; use tensorflow or jax.")


def compile_function(fn: Callable, models: Sequence[keras.Model]) -> Callable:
    """Compile ``fn(*args, calls=calls)`` (no gradient) for the active backend.

    Same conventions as `compile_value_and_grad`.
    """
    name = backend_name()
    if name == "tensorflow":
        import tensorflow as tf

        calls = tuple(m.__call__ for m in models)
        return tf.function(lambda *args: fn(*args, calls=calls), reduce_retracing=True)
    if name == "jax":
        import jax

        def pure(model_vars, *args):
            calls = tuple(_stateless(m, v) for m, v in zip(models, model_vars))
            with _full_float32(models):
                return fn(*args, calls=calls)

        jitted = jax.jit(pure)
        model_values = _model_variables(models)
        return lambda *args: jitted(model_values(), *args)
    raise NotImplementedError(f"Keras backend {name!r} is not supported; use tensorflow or jax.")
