"""The decoder of the beta-VAE (paper section 3.2, figure 3): latents -> 45x45x6 galaxy stamp."""

from __future__ import annotations

__all__ = ["Decoder"]

from collections.abc import Sequence

import keras

PAPER_DECODER_FILTERS = (128, 96, 64)
"""Transposed-convolution filters; with the 6-channel output layer this gives the paper's
3,473,062 trainable parameters."""


@keras.saving.register_keras_serializable(package="meas_madness")
class Decoder(keras.Model):
    """Map ``(batch, latent_dim)`` latents to ``(batch, stamp_size, stamp_size, bands)`` stamps.

    Dense ``dense_units`` and dense ``base_size^2 * filters[0]`` layers with PReLU, a reshape to
    ``(base_size, base_size, filters[0])``, stride-2 transposed convolutions with PReLU, a
    stride-1 transposed convolution to ``num_bands`` channels, then a crop to ``stamp_size``.
    Outputs are in normalised flux units (`lsst.meas.madness.networks.LinearNormalization`).

    The paper ends in a ReLU (fluxes are not negative). A ReLU channel whose pre-activations go
    negative for every galaxy receives no gradient again: trained fast on a CPU, the faint u
    channel died that way (``doc/training.md``). ``output_activation="linear"`` cannot die; the
    noiseless training targets keep its outputs close to non-negative.

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
        **kwargs,
    ):
        if output_activation not in ("relu", "linear"):
            raise ValueError(f"Decoder output_activation must be 'relu' or 'linear', not {output_activation!r}.")
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
            num_bands, output_kernel_size, strides=1, padding="same", activation=output_activation,
            name=f"convT{len(filters) + 1}",
        )(x)
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
        }

    @classmethod
    def from_config(cls, config: dict) -> "Decoder":
        return cls(**config)
