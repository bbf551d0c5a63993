"""MADE: the masked autoregressive dense network inside each MAF layer (Germain et al. 2015)."""

from __future__ import annotations

__all__ = ["MADE", "made_masks"]

from collections.abc import Sequence

import keras
import numpy as np


def made_masks(event_size: int, hidden_units: Sequence[int], params: int) -> list[np.ndarray]:
    """Connectivity masks of a MADE with left-to-right input order.

    Inputs have degrees ``1..D``; hidden units get degrees spread evenly over ``[1, D - 1]``
    ("equal" assignment); a hidden unit sees inputs of degree ``<=`` its own, and output ``i``
    (all ``params`` of it, laid out as column ``i * params + p``) sees hidden units of degree
    ``< i + 1``. This is the construction of TFP's ``AutoregressiveNetwork`` with
    ``input_order="left-to-right"`` and ``hidden_degrees="equal"``, which the tests check.

    Parameters
    ----------
    event_size : `int`
        Dimension ``D`` of the modelled vector (>= 2).
    hidden_units : sequence of `int`
        Units of each hidden layer.
    params : `int`
        Outputs per dimension (2: shift and log-scale).

    Returns
    -------
    masks : `list` of `numpy.ndarray`
        One float32 ``(fan_in, fan_out)`` mask per dense layer.
    """
    degrees = [np.arange(1, event_size + 1)]
    for units in hidden_units:
        min_degree = min(int(np.min(degrees[-1])), event_size - 1)
        degrees.append(
            np.maximum(min_degree, np.ceil(np.arange(1, units + 1) * (event_size - 1) / float(units + 1)))
            .astype(int)
        )
    masks = []
    for d_in, d_out in zip(degrees[:-1], degrees[1:]):
        masks.append((d_in[:, None] <= d_out[None, :]).astype("float32"))
    out = (degrees[-1][:, None] < degrees[0][None, :]).astype("float32")
    masks.append(np.repeat(out, params, axis=1))  # column i * params + p
    return masks


@keras.saving.register_keras_serializable(package="meas_madness")
class MADE(keras.layers.Layer):
    """Autoregressive dense network: output ``i`` depends only on inputs ``< i``.

    Called on ``(batch, event_size)`` it returns ``(batch, event_size, params)``; with
    ``params=2`` these are the shift and log-scale of a masked autoregressive flow layer.
    The masks are rebuilt from the configuration, never stored as weights.

    Parameters
    ----------
    event_size : `int`
        Dimension of the input vector.
    hidden_units : sequence of `int`
        Hidden layer sizes ((32, 32) in the paper).
    activation : `str`
        Hidden activation ("tanh" in the paper).
    params : `int`
        Outputs per input dimension.
    kernel_initializer : `str`
        Initializer of the kernels.
    **kwargs
        Forwarded to `keras.layers.Layer`.

    Examples
    --------
    >>> made = MADE(16, hidden_units=(32, 32))
    >>> made.build((None, 16))
    >>> made.count_params()
    2656
    """

    def __init__(
        self,
        event_size: int,
        hidden_units: Sequence[int] = (32, 32),
        activation: str = "tanh",
        params: int = 2,
        kernel_initializer: str = "glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.event_size = int(event_size)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.params = int(params)
        self.kernel_initializer = kernel_initializer
        self._activation_fn = keras.activations.get(activation)
        self._masks = made_masks(self.event_size, self.hidden_units, self.params)

    def build(self, input_shape) -> None:
        sizes = [self.event_size, *self.hidden_units, self.event_size * self.params]
        self.kernels = []
        self.biases = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.kernels.append(
                self.add_weight(shape=(fan_in, fan_out), initializer=self.kernel_initializer, name=f"kernel_{i}")
            )
            self.biases.append(self.add_weight(shape=(fan_out,), initializer="zeros", name=f"bias_{i}"))

    def call(self, inputs):
        x = inputs
        n_layers = len(self.kernels)
        for i, (kernel, bias, mask) in enumerate(zip(self.kernels, self.biases, self._masks)):
            x = keras.ops.matmul(x, kernel * mask) + bias
            if i < n_layers - 1:
                x = self._activation_fn(x)
        return keras.ops.reshape(x, (-1, self.event_size, self.params))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.event_size, self.params)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "event_size": self.event_size,
                "hidden_units": list(self.hidden_units),
                "activation": self.activation,
                "params": self.params,
                "kernel_initializer": self.kernel_initializer,
            }
        )
        return config
