"""The decoder of the beta-VAE (paper section 3.2, figure 3): latents -> 45x45x6 galaxy stamp."""

from __future__ import annotations

__all__ = ["BandScaledReLU", "Decoder", "OUTPUT_ACTIVATIONS"]

from collections.abc import Sequence

import keras
import numpy as np

PAPER_DECODER_FILTERS = (128, 96, 64)
"""Transposed-convolution filters; with the 6-channel output layer this gives the paper's
3,473,062 trainable parameters."""

OUTPUT_ACTIVATIONS = ("relu", "linear")
"""Output activations a `Decoder` accepts."""


@keras.saving.register_keras_serializable(package="meas_madness")
class BandScaledReLU(keras.layers.Layer):
    """``scale[b] * relu(x[..., b])``: the paper's non-negative output with a scale per band.

    With ``scale`` a fixed fraction of each band's sky noise, a pre-activation of 1 is the same
    fraction of a sky sigma in every band, so one optimiser step moves the faint u band no more,
    relative to its signal, than it moves r. Unscaled, the u channel's signals (~0.01 network
    units against ~0.1 in r) are smaller than what a few hundred Adam steps move its bias, which
    drove every u pre-activation below zero, where a ReLU passes no gradient (doc/training.md).
    Its exact zeros away from the galaxy are what a linear output lacks (a background pedestal
    that widens the children's apertures in the task path).

    Parameters
    ----------
    scale : sequence of `float`
        Positive output scale per band (last axis), in the decoder's output units.
    **kwargs
        Forwarded to `keras.layers.Layer`.
    """

    def __init__(self, scale: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        scale = [float(s) for s in scale]
        if not scale or not all(np.isfinite(s) and s > 0 for s in scale):
            raise ValueError(f"BandScaledReLU scale must be positive and finite per band, not {scale}.")
        self.scale = scale

    def call(self, x):
        scale = keras.ops.convert_to_tensor(np.asarray(self.scale, np.float32), dtype=x.dtype)
        return scale * keras.ops.relu(x)

    def get_config(self) -> dict:
        config = super().get_config()
        config["scale"] = list(self.scale)
        return config


@keras.saving.register_keras_serializable(package="meas_madness")
class Decoder(keras.Model):
    """Map ``(batch, latent_dim)`` latents to ``(batch, stamp_size, stamp_size, bands)`` stamps.

    Dense ``dense_units`` and dense ``base_size^2 * filters[0]`` layers with PReLU, a reshape to
    ``(base_size, base_size, filters[0])``, stride-2 transposed convolutions with PReLU, a
    stride-1 transposed convolution to ``num_bands`` channels, then a crop to ``stamp_size``.
    Outputs are in normalised flux units (`lsst.meas.madness.networks.LinearNormalization`).

    The paper ends in a ReLU (fluxes are not negative). A ReLU channel whose pre-activations go
    negative for every galaxy receives no gradient again: trained fast on a CPU, the faint u
    channel died that way (``doc/training.md``). ``output_activation="linear"`` cannot die, but
    must learn an exact zero background and keeps a pedestal that widens the children's
    apertures in the task path. A ReLU with a per-band ``output_scale`` (`BandScaledReLU`) puts
    every band's pre-activations on the scale of its own sky noise, which removes the cause of
    the dying u channel, and keeps the ReLU's exact zeros.

    Parameters
    ----------
    stamp_size : `int`
        Side of the output stamp in pixels (45).
    num_bands : `int`
        Number of output bands (6).
    latent_dim : `int`
        Dimension of the latent space (16).
    filters : sequence of `int`
        Filters of the stride-2 transposed convolutions (128, 96, 64).
    kernel_size : `int`
        Kernel of the stride-2 transposed convolutions (5).
    output_kernel_size : `int`
        Kernel of the last, stride-1 transposed convolution (3).
    dense_units : `int`
        Units of the first dense layer (512).
    output_activation : `str`
        Activation of the output layer: ``"relu"`` (the paper) or ``"linear"``.
    output_scale : sequence of `float`, optional
        Per-band scale of a ``"relu"`` output (`BandScaledReLU`), in normalised flux units;
        `lsst.meas.madness.training` uses a fraction of each band's sky sigma. `None`: the
        paper's plain ReLU.
    **kwargs
        Forwarded to `keras.Model`.

    Examples
    --------
    >>> dec = Decoder()
    >>> dec.count_params()
    3473062
    """

    def __init__(
        self,
        stamp_size: int = 45,
        num_bands: int = 6,
        latent_dim: int = 16,
        filters: Sequence[int] = PAPER_DECODER_FILTERS,
        kernel_size: int = 5,
        output_kernel_size: int = 3,
        dense_units: int = 512,
        output_activation: str = "relu",
        output_scale: Sequence[float] | None = None,
        **kwargs,
    ):
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"Decoder output_activation must be one of {OUTPUT_ACTIVATIONS}, "
                             f"not {output_activation!r}.")
        if output_scale is not None and output_activation != "relu":
            raise ValueError(f"Decoder output_scale applies to a 'relu' output, not {output_activation!r}.")
        if output_scale is not None:
            output_scale = tuple(float(s) for s in output_scale)
            if len(output_scale) != num_bands:
                raise ValueError(f"Decoder output_scale has {len(output_scale)} values for {num_bands} bands.")
        filters = tuple(int(f) for f in filters)
        upsampling = 2 ** len(filters)
        base_size = -(-stamp_size // upsampling)  # ceil: the crop removes the excess
        out_size = base_size * upsampling
        crop = out_size - stamp_size

        # === Layers ===
        inputs = keras.Input(shape=(latent_dim,), name="latents")
        x = keras.layers.Dense(dense_units, name="d3")(inputs)
        x = keras.layers.PReLU(name="d3_prelu")(x)
        x = keras.layers.Dense(base_size * base_size * filters[0], name="d4")(x)
        x = keras.layers.PReLU(name="d4_prelu")(x)
        x = keras.layers.Reshape((base_size, base_size, filters[0]), name="reshape")(x)
        for i, n_filters in enumerate(filters):
            x = keras.layers.Conv2DTranspose(
                n_filters, kernel_size, strides=2, padding="same", name=f"convT{i + 1}"
            )(x)
            x = keras.layers.PReLU(name=f"convT{i + 1}_prelu")(x)
        x = keras.layers.Conv2DTranspose(
            num_bands, output_kernel_size, strides=1, padding="same",
            activation=None if output_scale is not None else output_activation,
            name=f"convT{len(filters) + 1}",
        )(x)
        if output_scale is not None:
            x = BandScaledReLU(output_scale, name="output_relu")(x)
        # Centre the crop (the extra pixel of an odd crop goes to the high side).
        outputs = keras.layers.Cropping2D(
            ((crop // 2, crop - crop // 2), (crop // 2, crop - crop // 2)), name="crop"
        )(x)

        # === Functional Model ===
        kwargs.setdefault("name", "decoder")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.stamp_size = int(stamp_size)
        self.num_bands = int(num_bands)
        self.latent_dim = int(latent_dim)
        self.filters = filters
        self.kernel_size = int(kernel_size)
        self.output_kernel_size = int(output_kernel_size)
        self.dense_units = int(dense_units)
        self.output_activation = output_activation
        self.output_scale = output_scale

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "stamp_size": self.stamp_size,
            "num_bands": self.num_bands,
            "latent_dim": self.latent_dim,
            "filters": list(self.filters),
            "kernel_size": self.kernel_size,
            "output_kernel_size": self.output_kernel_size,
            "dense_units": self.dense_units,
            "output_activation": self.output_activation,
            "output_scale": None if self.output_scale is None else list(self.output_scale),
        }

    @classmethod
    def from_config(cls, config: dict) -> "Decoder":
        return cls(**config)
