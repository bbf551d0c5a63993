"""The paper's evaluation figures, drawn from the per-galaxy measurements of every method.

=====================================  ================  =======================================
file                                   paper             what
=====================================  ================  =======================================
``flux_cumulative.png``                fig. 10           cumulative abs(dF/F), all and kappa >= 0.01
``flux_vs_snr_blendedness_kappa.png``  fig. 11           abs(dF/F) in bins of SNR, beta, kappa
``colour_residuals.png``               fig. 12           dC^T and dC^B vs colour and kappa_r
``morphology.png``                     fig. 13           SSIM and cosine distributions
``ellipticity_residuals.png``          fig. 14           e1/e2 residuals, all and kappa >= 0.01
``flux_cumulative_bands.png``          fig. 18           per band, all and SNR_blend >= 5
``ssim_cumulative_bands.png``          fig. 19           1 - SSIM per band, all and SNR_blend >= 5
=====================================  ================  =======================================

The single-band figures use r (the paper's band) when it was measured, else the first band.
Box plots show the 25-75th percentiles (box), the median (line) and the 5-95th (whiskers), as
in the paper. matplotlib is imported here only.
"""

from __future__ import annotations

__all__ = ["FIGURES", "plot_all"]

from pathlib import Path

import numpy as np

from .report import KAPPA_BLENDED, KAPPA_MAX, SNR_BLEND_MIN

FIGURES = {
    "flux_cumulative.png": "Cumulative abs(dF/F) (paper fig. 10)",
    "flux_vs_snr_blendedness_kappa.png": "abs(dF/F) vs SNR, blendedness and contamination (paper fig. 11)",
    "colour_residuals.png": "g-r colour residuals (paper fig. 12)",
    "morphology.png": "SSIM and cosine similarity (paper fig. 13)",
    "ellipticity_residuals.png": "Ellipticity residuals (paper fig. 14)",
    "flux_cumulative_bands.png": "Cumulative abs(dF/F) per band (paper fig. 18)",
    "ssim_cumulative_bands.png": "Cumulative 1 - SSIM per band (paper fig. 19)",
}

_COLOURS = {"blended": "0.45", "vae_deblender": "tab:orange", "madness": "tab:blue", "scarlet2": "tab:green",
            "scarlet_lite": "tab:olive", "scarlet": "tab:red"}
_LABELS = {"blended": "no deblending", "vae_deblender": "VAE-deblender", "madness": "MADNESS",
           "scarlet2": "scarlet2", "scarlet_lite": "scarlet_lite", "scarlet": "scarlet"}


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64)
    return values[np.isfinite(values)]


def _cumulative(ax, values, name, *, log=True):
    values = np.sort(_finite(values))
    if len(values) == 0:
        return
    if log:
        values = np.clip(values, 1e-5, None)
    ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", color=_COLOURS[name],
            label=f"{_LABELS[name]} ({len(values)})")
    if log:
        ax.set_xscale("log")


def _box_stats(values):
    values = _finite(values)
    if len(values) == 0:
        return None
    p5, q1, med, q3, p95 = np.percentile(values, [5, 25, 50, 75, 95])
    return {"whislo": p5, "q1": q1, "med": med, "q3": q3, "whishi": p95, "fliers": []}


def _binned_boxes(ax, x, ys: dict, edges, *, log_y=True):
    """Boxes of each method's values in bins of ``x``; returns the bin counts."""
    names = list(ys)
    width = 0.8 / max(len(names), 1)
    counts = np.histogram(_finite(x), edges)[0]
    for k, name in enumerate(names):
        stats, positions = [], []
        for i in range(len(edges) - 1):
            sel = (x >= edges[i]) & (x < edges[i + 1])
            s = _box_stats(ys[name][sel])
            if s is not None:
                stats.append(s)
                positions.append(i + (k - (len(names) - 1) / 2) * width)
        if stats:
            ax.bxp(stats, positions=positions, widths=width * 0.9, showfliers=False, patch_artist=True,
                   boxprops={"facecolor": _COLOURS[name], "alpha": 0.6}, medianprops={"color": "k"})
    ax.set_xticks(range(len(edges) - 1))
    ax.set_xticklabels([f">{edges[i]:g}" if edges[i + 1] >= 1e5 else f"{edges[i]:g}-{edges[i + 1]:.3g}"
                        for i in range(len(edges) - 1)], rotation=30, fontsize=7)
    if log_y:
        ax.set_yscale("log")
    return counts


def _legend_handles(names):
    from matplotlib.patches import Patch

    return [Patch(facecolor=_COLOURS[n], alpha=0.6, label=_LABELS[n]) for n in names]


def _band(bands) -> int:
    return list(bands).index("r") if "r" in bands else 0


def plot_all(bands, galaxies: dict, metrics: dict, directory) -> dict[str, str]:
    """Draw every figure of the module table into ``directory``.

    Parameters
    ----------
    bands : sequence of `str`
        Bands of the ``(N, bands)`` columns.
    galaxies, metrics : `dict`
        As in `lsst.meas.madness.evaluation.runner.EvaluationResult`.
    directory : path-like
        Where the PNG files go (created).

    Returns
    -------
    figures : `dict` [`str`, `str`]
        ``{title: file name}`` of the figures written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bands = list(bands)
    j = _band(bands)
    b = bands[j]
    kappa = galaxies["kappa"][:, j]
    keep = np.isfinite(kappa) & (kappa <= KAPPA_MAX)
    written = {}

    def save(fig, file):
        fig.tight_layout()
        fig.savefig(directory / file, dpi=110)
        plt.close(fig)
        written[FIGURES[file]] = file

    deblenders = [n for n in metrics if n != "blended"]

    # fig. 10
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for name, m in metrics.items():
        res = np.abs(m["flux_residual"][:, j])
        _cumulative(axes[0], res, name)
        _cumulative(axes[1], res[kappa >= KAPPA_BLENDED], name)
    axes[0].set_title(f"all galaxies ({b})")
    axes[1].set_title(f"kappa_{b} >= {KAPPA_BLENDED:g}")
    for ax in axes:
        ax.set_xlabel(f"abs(dF/F), {b} band")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("cumulative fraction")
    save(fig, "flux_cumulative.png")

    # fig. 11
    fig, axes = plt.subplots(2, 3, figsize=(14, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex="col")
    snr = galaxies["snr_r"] if "snr_r" in galaxies else galaxies["snr_blend"][:, j]
    panels = [(snr, [10, 20, 40, 80, 160, 320, 1e6], "SNR (catalogue, r)"),
              (galaxies["beta"][:, j], [0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0001], f"blendedness beta_{b}"),
              (kappa, [0, 1e-3, 1e-2, 0.1, 1, KAPPA_MAX + 1e-9], f"contamination kappa_{b}")]
    for k, (x, edges, label) in enumerate(panels):
        ys = {n: np.abs(m["flux_residual"][:, j]) for n, m in metrics.items()}
        counts = _binned_boxes(axes[0, k], np.asarray(x, np.float64), ys, edges)
        axes[1, k].bar(range(len(counts)), counts, color="0.6")
        axes[1, k].set_xlabel(label)
        axes[0, k].grid(alpha=0.3, axis="y")
    axes[0, 0].set_ylabel(f"abs(dF/F), {b}")
    axes[1, 0].set_ylabel("galaxies")
    axes[0, 2].legend(handles=_legend_handles(list(metrics)), fontsize=8)
    save(fig, "flux_vs_snr_blendedness_kappa.png")

    # fig. 12
    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    c_true = galaxies["colour_true"]
    kappa_r = galaxies["kappa"][:, bands.index("r")] if "r" in bands else kappa
    if np.isfinite(c_true).any():
        c_edges = list(np.round(np.nanpercentile(c_true, [0, 20, 40, 60, 80, 100]), 2))
    else:
        c_edges = [0.0, 1.0]
    c_edges[-1] += 1e-6
    for row, key, title in ((0, "colour_residual_true", "dC^T = C - C^T (catalogue)"),
                            (1, "colour_residual_blend", "dC^B = C - C^N (noisy isolated)")):
        ys = {n: m[key] for n, m in metrics.items()}
        _binned_boxes(axes[row, 0], c_true, ys, c_edges, log_y=False)
        _binned_boxes(axes[row, 1], kappa_r, ys, [0, 1e-3, 1e-2, 0.1, 1, KAPPA_MAX + 1e-9], log_y=False)
        axes[row, 0].set_ylabel(title)
        for ax in axes[row]:
            ax.axhline(0, color="k", lw=0.5)
            ax.grid(alpha=0.3, axis="y")
    axes[1, 0].set_xlabel("true g-r colour C^T")
    axes[1, 1].set_xlabel("contamination kappa_r")
    axes[0, 1].legend(handles=_legend_handles(list(metrics)), fontsize=8)
    save(fig, "colour_residuals.png")

    # fig. 13
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in deblenders:
        m = metrics[name]
        for ax, key, lo in ((axes[0], "ssim", -0.2), (axes[1], "cosine", 0.5)):
            v = _finite(m[key][keep, j])
            if len(v):
                ax.hist(np.clip(v, lo, 1), bins=np.linspace(lo, 1, 41), histtype="step", color=_COLOURS[name],
                        label=f"{_LABELS[name]} (mean {v.mean():.3f})")
    for ax, label in zip(axes, ("SSIM", "cosine similarity")):
        ax.set_xlabel(f"{label}, {b} (kappa <= {KAPPA_MAX:g})")
        ax.set_yscale("log")
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("galaxies")
    save(fig, "morphology.png")

    # fig. 14
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    bins = np.linspace(-0.5, 0.5, 41)
    for name in deblenders:
        m = metrics[name]
        for col, key in enumerate(("e1_residual", "e2_residual")):
            for row, sel in enumerate((keep, keep & (kappa >= KAPPA_BLENDED))):
                v = _finite(m[key][sel, j])
                if len(v) > 1:
                    axes[row, col].hist(np.clip(v, -0.5, 0.5), bins=bins, histtype="step",
                                        color=_COLOURS[name], label=f"{_LABELS[name]} (std {v.std():.3f})")
    for col, key in enumerate(("e1", "e2")):
        axes[1, col].set_xlabel(f"{key} residual, {b}")
        axes[0, col].set_title(f"{key}: all (kappa <= {KAPPA_MAX:g})")
        axes[1, col].set_title(f"{key}: kappa >= {KAPPA_BLENDED:g}")
    for ax in axes.flat:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    save(fig, "ellipticity_residuals.png")

    # fig. 18 and 19
    for file, key, names, label in (
            ("flux_cumulative_bands.png", "flux_residual", list(metrics), "abs(dF/F)"),
            ("ssim_cumulative_bands.png", "ssim", deblenders, "1 - SSIM")):
        fig, axes = plt.subplots(2, len(bands), figsize=(3.2 * len(bands), 6), sharey=True, squeeze=False)
        for k, band in enumerate(bands):
            bright = galaxies["snr_blend"][:, k] >= SNR_BLEND_MIN
            for name in names:
                v = metrics[name][key][:, k]
                v = np.abs(v) if key == "flux_residual" else 1.0 - v
                _cumulative(axes[0, k], v, name)
                _cumulative(axes[1, k], v[bright], name)
            axes[0, k].set_title(f"{band}: all")
            axes[1, k].set_title(f"{band}: SNR_blend >= {SNR_BLEND_MIN:g}")
            axes[1, k].set_xlabel(label)
            for ax in axes[:, k]:
                ax.grid(alpha=0.3)
        axes[0, 0].set_ylabel("cumulative fraction")
        axes[1, 0].set_ylabel("cumulative fraction")
        axes[0, -1].legend(fontsize=7, loc="lower right")
        save(fig, file)
    return written
