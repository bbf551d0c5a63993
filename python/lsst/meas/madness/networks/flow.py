"""The latent-space prior: a masked autoregressive flow (paper section 3.3, Papamakarios et al. 2017)."""

from __future__ import annotations

__all__ = ["MaskedAutoregressiveFlow", "default_permutations"]

import math
from collections.abc import Sequence

import keras
import numpy as np

from .made import MADE


def default_permutations(latent_dim: int, num_layers: int, seed: int = 0) -> list[list[int]]:
    """Seeded random permutations placed between consecutive MAF layers.

    Parameters
    ----------
    latent_dim : `int`
        Dimension of the latent space.
    num_layers : `int`
        Number of MAF layers; ``num_layers - 1`` permutations are returned.
    seed : `int`
        Seed of the permutation draw; the permutations are stored in the config, so a saved
        flow does not depend on this function staying the same.
    """
    rng = np.random.default_rng(seed)
    return [rng.permutation(latent_dim).tolist() for _ in range(num_layers - 1)]


@keras.saving.register_keras_serializable(package="meas_madness")
class MaskedAutoregressiveFlow(keras.Model):
    """Density over the latents: ``num_layers`` MAF layers with permutations between them.

    The generative direction maps a standard normal ``u`` to a latent ``z``: each MAF layer does
    ``y_i = u_i exp(s_i(y_<i)) + m_i(y_<i)`` with ``(m, s)`` from a `MADE`, and a permutation
    follows every layer but the last. The density direction (used by the MAP objective) inverts
    each layer in one pass, ``u_i = (y_i - m_i(y)) exp(-s_i(y))``, so `log_prob` costs
    ``num_layers`` MADE evaluations. These are the conventions of TFP's
    ``tfb.Chain([MAF_n, Permute_{n-1}, ..., Permute_1, MAF_1])``, which the tests use as oracle.

    Calling the model returns `log_prob`.

    Parameters
    ----------
    latent_dim : `int`
        Dimension of the latent space (16).
    num_layers : `int`
        Number of MAF layers (6).
    hidden_units : sequence of `int`
        Hidden layers of each MADE ((32, 32)).
    activation : `str`
        Hidden activation of each MADE ("tanh").
    permutations : sequence of sequence of `int`, optional
        ``num_layers - 1`` permutations; by default `default_permutations` with ``seed``.
    seed : `int`
        Seed for the default permutations and for `sample`.
    **kwargs
        Forwarded to `keras.Model`.

    Examples
    --------
    >>> flow = MaskedAutoregressiveFlow()
    >>> _ = flow(np.zeros((1, 16), "float32"))
    >>> flow.count_params()
    15936
    """

    def __init__(
        self,
        latent_dim: int = 16,
        num_layers: int = 6,
        hidden_units: Sequence[int] = (32, 32),
        activation: str = "tanh",
        permutations: Sequence[Sequence[int]] | None = None,
        seed: int = 0,
        **kwargs,
    ):
        kwargs.setdefault("name", "flow")
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)
        self.num_layers = int(num_layers)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.seed = int(seed)
        if permutations is None:
            permutations = default_permutations(self.latent_dim, self.num_layers, self.seed)
        self.permutations = [list(map(int, p)) for p in permutations]
        if len(self.permutations) != self.num_layers - 1 or any(
            sorted(p) != list(range(self.latent_dim)) for p in self.permutations
        ):
            raise ValueError(
                f"Need {self.num_layers - 1} permutations of range({self.latent_dim}); got {self.permutations}."
            )
        self._inverse_permutations = [np.argsort(p).tolist() for p in self.permutations]
        self.mades = [
            MADE(self.latent_dim, self.hidden_units, activation, params=2, name=f"made_{i}")
            for i in range(self.num_layers)
        ]
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def build(self, input_shape=None) -> None:
        for made in self.mades:
            made.build((None, self.latent_dim))
        self.built = True

    def inverse(self, z):
        """Map latents ``(batch, latent_dim)`` to base-space ``u``; also return ``log|du/dz|``.

        Returns
        -------
        u : tensor
            ``(batch, latent_dim)`` standard-normal-distributed under the flow.
        log_det : tensor
            ``(batch,)`` log-determinant of the Jacobian of ``z -> u``.
        """
        y = z
        log_det = keras.ops.zeros_like(z[..., 0])
        for i in reversed(range(self.num_layers)):
            params = self.mades[i](y)
            shift, log_scale = params[..., 0], params[..., 1]
            y = (y - shift) * keras.ops.exp(-log_scale)
            log_det = log_det - keras.ops.sum(log_scale, axis=-1)
            if i > 0:
                # Undo the permutation that followed layer i - 1.
                y = keras.ops.take(y, self._inverse_permutations[i - 1], axis=-1)
        return y, log_det

    def log_prob(self, z):
        """Log-density ``(batch,)`` of latents ``(batch, latent_dim)`` under the flow."""
        u, log_det = self.inverse(z)
        base = -0.5 * keras.ops.sum(u * u, axis=-1) - 0.5 * self.latent_dim * math.log(2.0 * math.pi)
        return base + log_det

    def forward(self, u):
        """Map base-space ``u`` ``(batch, latent_dim)`` to latents (sequential, ``latent_dim`` passes per layer)."""
        y = u
        for i in range(self.num_layers):
            x = keras.ops.zeros_like(y)
            # Output i depends only on inputs < i, so latent_dim passes fix every coordinate.
            for _ in range(self.latent_dim):
                params = self.mades[i](x)
                x = y * keras.ops.exp(params[..., 1]) + params[..., 0]
            y = x
            if i < self.num_layers - 1:
                y = keras.ops.take(y, self.permutations[i], axis=-1)
        return y

    def sample(self, num_samples: int, seed=None):
        """Draw ``(num_samples, latent_dim)`` latents from the flow.

        Parameters
        ----------
        num_samples : `int`
            Number of samples.
        seed : `int` or `keras.random.SeedGenerator`, optional
            Seed of the draw; by default the model's own seed generator.
        """
        seed = self.seed_generator if seed is None else seed
        u = keras.random.normal((num_samples, self.latent_dim), seed=seed)
        return self.forward(u)

    def call(self, z):
        return self.log_prob(z)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "latent_dim": self.latent_dim,
            "num_layers": self.num_layers,
            "hidden_units": list(self.hidden_units),
            "activation": self.activation,
            "permutations": self.permutations,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict) -> "MaskedAutoregressiveFlow":
        return cls(**config)
