"""Figures of a training run: learning curves and the paper's figures 5, 6 and 8."""

from __future__ import annotations

__all__ = ["write_training_figures"]

import os
from pathlib import Path

import keras
import numpy as np


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def plot_learning_curves(results: dict, path: Path) -> None:
    """Training and validation loss per epoch of every stage."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.4 * len(results), 3.0), squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items()):
        epochs = [row["epoch"] for row in result.history]
        ax.plot(epochs, [row["loss"] for row in result.history], label="train")
        ax.plot(epochs, [row["val_loss"] for row in result.history], label="validation")
        if result.best_epoch >= 0:
            ax.axvline(result.best_epoch, color="grey", ls=":", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        if name != "flow":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("loss")
    fig.tight_layout()
    _save(fig, path)


def plot_latents_vs_flow(z_val: np.ndarray, flow, path: Path, seed: int = 0, pairs: int = 4) -> None:
    """Paper fig. 5: validation latents against samples of the flow, for a few pairs of axes."""
    import matplotlib.pyplot as plt

    samples = np.asarray(keras.ops.convert_to_numpy(flow.sample(len(z_val), seed=seed)))
    dims = z_val.shape[1]
    fig, axes = plt.subplots(1, pairs, figsize=(3.0 * pairs, 3.0), squeeze=False)
    for k, ax in enumerate(axes[0]):
        i, j = (2 * k) % dims, (2 * k + 1) % dims
        lo = np.percentile(np.concatenate([z_val[:, [i, j]], samples[:, [i, j]]]), [0.5, 99.5], axis=0)
        bins = [np.linspace(lo[0, 0], lo[1, 0], 40), np.linspace(lo[0, 1], lo[1, 1], 40)]
        for data, colour, label in ((z_val, "C0", "validation latents"), (samples, "C1", "flow samples")):
            h, xe, ye = np.histogram2d(data[:, i], data[:, j], bins=bins)
            flat = np.sort(h.ravel())[::-1]
            cum = np.cumsum(flat) / max(flat.sum(), 1)
            levels = sorted({flat[min(np.searchsorted(cum, q), len(flat) - 1)] for q in (0.25, 0.5, 0.75, 0.9)})
            if len(levels) > 1:
                ax.contour(0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1]), h.T, levels=levels,
                           colors=colour, linewidths=1)
            ax.plot([], [], color=colour, label=label)
        ax.set_xlabel(f"z{i}")
        ax.set_ylabel(f"z{j}")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Latent distribution (validation IsolatedSims) and the flow: 25/50/75/90% contours", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_flow_samples(decoder, flow, latent_dim: int, bands, path: Path, seed: int = 0, n: int = 8) -> None:
    """Paper fig. 6: r-band decoded samples of the N(0, I) prior (top) and of the flow (bottom)."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    gaussian = rng.standard_normal((n, latent_dim)).astype(np.float32)
    from_flow = np.asarray(keras.ops.convert_to_numpy(flow.sample(n, seed=seed)), np.float32)
    r = list(bands).index("r") if "r" in bands else 0
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.6))
    for row, (z, label) in enumerate(((gaussian, "N(0, I)"), (from_flow, "flow"))):
        images = np.asarray(decoder.predict(z, verbose=0))[..., r]
        for k in range(n):
            ax = axes[row, k]
            ax.imshow(images[k], origin="lower", cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(label)
    fig.suptitle("Decoded samples, r band (network units)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_deblender_predictions(deblender_encoder, decoder, blended, truth, bands, path: Path, n: int = 6) -> None:
    """Paper fig. 8: blended stamp, VAE-deblender's central galaxy, residual, truth (r band)."""
    import matplotlib.pyplot as plt

    r = list(bands).index("r") if "r" in bands else 0
    # Show real blends: a neighbour carrying 0.3-3x the central galaxy's flux in the stamp,
    # brightest centrals first (a faint central next to a bright neighbour shows nothing).
    central = truth[..., r].sum(axis=(1, 2))
    excess = (blended - truth)[..., r].sum(axis=(1, 2))
    ratio = excess / np.maximum(central, 1e-12)
    candidates = np.flatnonzero((ratio > 0.3) & (ratio < 3.0) & (central > 0))
    if len(candidates) < n:
        candidates = np.argsort(-excess)[:n]
    pick = candidates[np.argsort(-central[candidates])][:n]
    z = np.asarray(deblender_encoder.encode_mean(blended[pick]), np.float32)
    predicted = np.asarray(decoder.predict(z, verbose=0))
    fig, axes = plt.subplots(n, 4, figsize=(7.2, 1.8 * n), squeeze=False)
    for row, k in enumerate(pick):
        vmax = blended[k, ..., r].max()
        for col, (image, title) in enumerate(((blended[k, ..., r], "blend"), (predicted[row, ..., r], "prediction"),
                                              (blended[k, ..., r] - predicted[row, ..., r], "blend - prediction"),
                                              (truth[k, ..., r], "isolated truth"))):
            ax = axes[row, col]
            ax.imshow(image, origin="lower", cmap="viridis", vmin=-0.05 * vmax, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
    fig.suptitle("VAE-deblender on validation BlendedSims, r band", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def write_training_figures(output: Path, results: dict, decoder, flow, deblender_encoder, z_val, xv_bl, yv_bl,
                           bands, seed: int = 0) -> list[Path]:
    """All figures of a run into ``<output>/figures``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    figures = Path(output) / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    paths = [figures / "learning_curves.png", figures / "latents_vs_flow.png", figures / "flow_samples.png",
             figures / "deblender_predictions.png"]
    plot_learning_curves(results, paths[0])
    plot_latents_vs_flow(z_val, flow, paths[1], seed=seed)
    plot_flow_samples(decoder, flow, z_val.shape[1], bands, paths[2], seed=seed)
    plot_deblender_predictions(deblender_encoder, decoder, xv_bl, yv_bl, bands, paths[3])
    return paths
