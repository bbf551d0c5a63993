"""The convolutional encoder of the beta-VAE (paper section 3.2, figure 3).

The same class serves twice: as the VAE's encoder, and (retrained on blends, section 3.4) as the
"VAE-deblender" that initialises the MAP latents from a peak-centred cutout.
"""

from __future__ import annotations

__all__ = ["Encoder"]

from collections.abc import Sequence

import keras

from .gaussian import gaussian_params_size, latent_mean

PAPER_ENCODER_FILTERS = (32, 128, 256, 512)
"""Encoder filters of the authors' code. The paper's text says 64/128/256/128, but its stated
6.7M parameters match only 32/128/256/512 with a 512-unit dense layer and a full-covariance
16-d Gaussian head (6,691,608 parameters), so we follow the code."""


@keras.saving.register_keras_serializable(package="meas_madness")
class Encoder(keras.Model):
    """Map a ``(batch, H, W, bands)`` stamp to the parameters of a Gaussian over the latents.

    Four ``kernel_size`` stride-2 convolutions with PReLU, a dense layer with PReLU, and a
    linear dense layer with ``latent_dim + latent_dim (latent_dim + 1) / 2`` outputs (mean and
    lower-triangular scale; see `lsst.meas.madness.networks.gaussian`). PReLU slopes are per
    unit and position, as Keras' default and the authors' code have them.

    Parameters
    ----------
    stamp_size : `int`
        Side of the square input stamp in pixels (45 in the paper: 9 arcsec at 0.2"/px).
    num_bands : `int`
        Number of bands (channels), 6 for ugrizy.
    latent_dim : `int`
        Dimension of the latent space (16 in the paper).
    filters : sequence of `int`
        Filters of the convolutional layers.
    kernel_size : `int`
        Convolution kernel size (5 in the paper).
    dense_units : `int`
        Units of the hidden dense layer.
    **kwargs
        Forwarded to `keras.Model` (``name``, ``dtype``).

    Examples
    --------
    >>> enc = Encoder(stamp_size=45, num_bands=6, latent_dim=16)
    >>> enc.count_params()
    6691608
    """

    def __init__(
        self,
        stamp_size: int = 45,
        num_bands: int = 6,
        latent_dim: int = 16,
        filters: Sequence[int] = PAPER_ENCODER_FILTERS,
        kernel_size: int = 5,
        dense_units: int = 512,
        **kwargs,
    ):
        # === Layers ===
        inputs = keras.Input(shape=(stamp_size, stamp_size, num_bands), name="stamps")
        x = inputs
        for i, n_filters in enumerate(filters):
            x = keras.layers.Conv2D(
                n_filters, kernel_size, strides=2, padding="same", name=f"conv{i + 1}"
            )(x)
            x = keras.layers.PReLU(name=f"conv{i + 1}_prelu")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(dense_units, name="d1")(x)
        x = keras.layers.PReLU(name="d1_prelu")(x)
        outputs = keras.layers.Dense(gaussian_params_size(latent_dim), name="d2")(x)

        # === Functional Model ===
        kwargs.setdefault("name", "encoder")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.stamp_size = int(stamp_size)
        self.num_bands = int(num_bands)
        self.latent_dim = int(latent_dim)
        self.filters = tuple(int(f) for f in filters)
        self.kernel_size = int(kernel_size)
        self.dense_units = int(dense_units)

    def encode_mean(self, stamps, batch_size: int = 256):
        """Mean latent vector ``(batch, latent_dim)`` of each ``(batch, H, W, bands)`` stamp.

        The MAP initialisation uses only the mean of the predicted distribution (section 3.4).
        """
        params = self.predict(stamps, batch_size=batch_size, verbose=0)
        return latent_mean(params, self.latent_dim)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "stamp_size": self.stamp_size,
            "num_bands": self.num_bands,
            "latent_dim": self.latent_dim,
            "filters": list(self.filters),
            "kernel_size": self.kernel_size,
            "dense_units": self.dense_units,
        }

    @classmethod
    def from_config(cls, config: dict) -> "Encoder":
        return cls(**config)
