"""The README's demo: simulate LSST galaxies, train a quick model, deblend a blend, plot it.

Until a trained default bundle ships, the demo trains a reduced-size model on the spot
(`lsst.meas.madness.training.quick`, a few minutes on 2 cores) on GalSim bulge+disk galaxies
drawn under LSST 10-year conditions from SurveyCodex, then deblends a simulated blend with the
engine and compares the fluxes with the truth, with no deblending and with the VAE-deblender
initialisation alone. Everything is seeded.
"""

from __future__ import annotations

__all__ = ["LsstConditions", "draw_galaxies", "run_demo"]

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LsstConditions:
    """Per-band LSST 10-year conditions from SurveyCodex (paper table 1)."""

    bands: tuple[str, ...]
    pixel_scale: float  # arcsec / pixel
    psf_fwhm: tuple[float, ...]  # arcsec
    sky_level: tuple[float, ...]  # electrons / pixel (mean sky, the variance of the sky noise)
    zeropoint_counts: tuple[float, ...]  # electrons of a magnitude-0 source... as counts at mag 24
    mag24_counts: tuple[float, ...]

    @classmethod
    def from_surveycodex(cls) -> "LsstConditions":
        import surveycodex
        from surveycodex.utilities import mag2counts, mean_sky_level

        survey = surveycodex.get_survey("LSST")
        bands = tuple(survey.available_filters)
        filters = [survey.get_filter(b) for b in bands]
        return cls(
            bands=bands,
            pixel_scale=float(survey.pixel_scale.value),
            psf_fwhm=tuple(float(f.psf_fwhm.value) for f in filters),
            sky_level=tuple(float(mean_sky_level(survey, f).value) for f in filters),
            zeropoint_counts=tuple(float(f.zeropoint.value) for f in filters),
            mag24_counts=tuple(float(mag2counts(24.0, survey, f).value) for f in filters),
        )

    def as_dict(self) -> dict:
        return {
            b: {"psf_fwhm_arcsec": p, "sky_electrons_per_pixel": s, "zeropoint_mag": z}
            for b, p, s, z in zip(self.bands, self.psf_fwhm, self.sky_level, self.zeropoint_counts)
        }


def draw_galaxies(n: int, seed: int, conditions: LsstConditions, stamp_size: int = 45,
                  offsets: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Draw ``n`` noiseless bulge+disk galaxies, ``(n, bands, S, S)`` electrons per pixel.

    A simple parametric population (r magnitude 20-25, half-light radius 0.2-1.2", bulge
    fraction 0-0.6, ellipticity up to 0.6, colours scattered around a typical galaxy SED),
    convolved with each band's Kolmogorov PSF. It is a demo population, not the CatSim
    catalog of the paper.

    Parameters
    ----------
    n : `int`
        Number of galaxies.
    seed : `int`
        Seed of the draw.
    conditions : `LsstConditions`
        Band PSFs, pixel scale and flux calibration.
    stamp_size : `int`
        Stamp side in pixels.
    offsets : `numpy.ndarray`, optional
        ``(n, 2)`` sub-stamp ``(dx, dy)`` shifts in pixels (default centred).
    """
    import galsim

    rng = np.random.default_rng(seed)
    mag_r = rng.uniform(20.0, 25.0, n)
    hlr = rng.uniform(0.2, 1.2, n)
    bulge_frac = rng.uniform(0.0, 0.6, n)
    g = rng.uniform(0, 0.6, n) * np.exp(2j * rng.uniform(0, np.pi, n))
    # Colours relative to r (u g r i z y), scattered per galaxy.
    # The scatter tilts the SED about r, so mag_r is the r magnitude.
    tilt = np.array([1.0, 0.5, 0.0, -0.3, -0.6, -0.9])
    colours = np.array([1.2, 0.5, 0.0, -0.3, -0.45, -0.55])[None, :] + rng.normal(0, 0.2, (n, 1)) * tilt
    stamps = np.zeros((n, len(conditions.bands), stamp_size, stamp_size), np.float32)
    offsets = np.zeros((n, 2)) if offsets is None else np.asarray(offsets)
    psfs = [galsim.Kolmogorov(fwhm=f) for f in conditions.psf_fwhm]
    for i in range(n):
        shape = galsim.Shear(g1=g[i].real, g2=g[i].imag)
        disk = galsim.Exponential(half_light_radius=hlr[i]).shear(shape)
        bulge = galsim.DeVaucouleurs(half_light_radius=0.6 * hlr[i]).shear(shape)
        for k, psf in enumerate(psfs):
            flux = conditions.mag24_counts[k] * 10 ** (-0.4 * (mag_r[i] + colours[i, k] - 24.0))
            gal = (bulge_frac[i] * bulge + (1 - bulge_frac[i]) * disk).withFlux(flux)
            image = galsim.Convolve(gal, psf).drawImage(
                nx=stamp_size, ny=stamp_size, scale=conditions.pixel_scale,
                offset=(offsets[i, 0], offsets[i, 1]),
            )
            stamps[i, k] = image.array
    truth = {"mag_r": mag_r, "hlr_arcsec": hlr, "bulge_frac": bulge_frac}
    return stamps, truth


def run_demo(output: str | Path, *, n_train: int = 1500, seed: int = 0, n_blend: int = 4) -> dict:
    """Run the demo and write ``demo.png``, ``summary.json``, ``summary.md`` and the bundle.

    Returns the summary dictionary.
    """
    from tqdm.auto import tqdm

    from .engine import MadnessDeblender
    from .training import QuickTrainingConfig, train_quick_bundle

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cond = LsstConditions.from_surveycodex()
    print(f"[demo] drawing {n_train} LSST galaxies with GalSim ...", flush=True)
    chunks = [draw_galaxies(100, seed * 1000 + k, cond)[0] for k in tqdm(range(n_train // 100), unit="x100 gal")]
    train = np.concatenate(chunks)
    print("[demo] training a quick reduced-size model (autoencoder + flow) ...", flush=True)
    bundle = train_quick_bundle(
        train, cond.sky_level, bands=cond.bands, pixel_scale=cond.pixel_scale, conditions=cond.as_dict(),
        config=QuickTrainingConfig(seed=seed), description="Demo model trained by `madness demo`.", verbose=2,
    )
    bundle.save(output / "bundle", overwrite=True)
    deblender = MadnessDeblender.from_model_bundle(bundle)

    # A blend: n_blend new galaxies with centres in a 20x20 px box (BlendedSims-like) on a 100x100 image.
    rng = np.random.default_rng(seed + 17)
    size = 100
    centres = 40 + rng.uniform(0, 20, (n_blend, 2))
    pix = np.floor(centres + 0.5)
    stamps, truth_cat = draw_galaxies(n_blend, seed + 99, cond, offsets=centres - pix)
    truth = np.zeros((n_blend, len(cond.bands), size, size), np.float32)
    for i, (x, y) in enumerate(pix.astype(int)):
        truth[i, :, y - 22 : y + 23, x - 22 : x + 23] = stamps[i]
    sky = np.asarray(cond.sky_level, np.float32)[:, None, None]
    variance = sky + truth.sum(0)
    image = truth.sum(0) + rng.normal(size=variance.shape).astype(np.float32) * np.sqrt(variance)
    print("[demo] deblending ...", flush=True)
    t1 = time.perf_counter()
    result = deblender.deblend(image, centres, variance=variance, bands=cond.bands)
    t_deblend = time.perf_counter() - t1

    r = cond.bands.index("r")
    flux_true = truth[:, r].sum(axis=(1, 2))
    flux_map = np.array([result.source_image(i)[r].sum() for i in range(n_blend)])
    init_models = deblender.decode(result.initial_latents)
    flux_init = init_models[:, r].sum(axis=(1, 2))
    # No deblending: every source claims all flux of the noiseless blend inside its own support
    # (pixels above 1% of its peak), i.e. what a footprint on the undeblended scene would see.
    support = truth[:, r] > 0.01 * truth[:, r].max(axis=(1, 2), keepdims=True)
    flux_blended = np.array([(truth[:, r].sum(0) * s).sum() for s in support])
    rel = lambda f: np.abs(f / flux_true - 1)  # noqa: E731
    summary = {
        "bands": list(cond.bands),
        "n_train": int(len(train)),
        "training": bundle.metadata.training,
        "deblend_seconds": round(t_deblend, 2),
        "n_iter": result.n_iter,
        "converged": result.converged,
        "sources": [
            {
                "x": float(centres[i, 0]), "y": float(centres[i, 1]), "mag_r": float(truth_cat["mag_r"][i]),
                "flux_true_r": float(flux_true[i]), "flux_madness_r": float(flux_map[i]),
                "flux_vae_deblender_r": float(flux_init[i]), "flux_no_deblending_r": float(flux_blended[i]),
            }
            for i in range(n_blend)
        ],
        "mean_abs_dF_over_F_r": {
            "no_deblending": float(rel(flux_blended).mean()),
            "vae_deblender": float(rel(flux_init).mean()),
            "madness": float(rel(flux_map).mean()),
        },
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "| source | r mag | true flux (e-) | no deblending | VAE-deblender | MADNESS |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i, s in enumerate(summary["sources"]):
        lines.append(
            f"| {i} | {s['mag_r']:.2f} | {s['flux_true_r']:.0f} | {rel(flux_blended)[i]:.3f} | "
            f"{rel(flux_init)[i]:.3f} | {rel(flux_map)[i]:.3f} |"
        )
    m = summary["mean_abs_dF_over_F_r"]
    lines.append(f"| mean abs(dF/F) | | | {m['no_deblending']:.3f} | {m['vae_deblender']:.3f} | {m['madness']:.3f} |")
    (output / "summary.md").write_text(
        "# MADNESS demo (quick model, r band, abs(dF/F) per source)\n\n" + "\n".join(lines) + "\n"
    )
    _plot(output / "demo.png", image[r], result, truth[:, r], r)
    print("\n".join(lines))
    print(f"[demo] wrote {output}/demo.png, summary.json, summary.md and bundle/ in {summary['wall_seconds']} s")
    return summary


def _plot(path: Path, image_r, result, truth_r, r: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = result.n_sources
    model = result.model_image()[r]
    fig, axes = plt.subplots(2, max(3, n), figsize=(3.2 * max(3, n), 6.4), squeeze=False)
    vmax = np.percentile(image_r, 99.5)
    panels = [(image_r, "blend (r)"), (model, "MADNESS model"), (image_r - model, "residual")]
    for ax, (data, title) in zip(axes[0], panels):
        im = ax.imshow(data, origin="lower", cmap="magma" if title != "residual" else "coolwarm",
                       vmin=-vmax if title == "residual" else None, vmax=vmax)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[0, 0].plot(result.peaks_xy[:, 0], result.peaks_xy[:, 1], "c+", ms=10)
    for ax in axes[0, 3:]:
        ax.axis("off")
    for i in range(axes.shape[1]):
        ax = axes[1, i]
        if i >= n:
            ax.axis("off")
            continue
        # Truth and model side by side, cut to the source's stamp.
        src = result.source_image(i)[r]
        oy, ox = (max(int(v), 0) for v in result.stamp_yx0[i])
        cut = np.s_[oy : oy + result.stamp_size, ox : ox + result.stamp_size]
        ax.imshow(np.hstack([truth_r[i][cut], src[cut]]), origin="lower", cmap="magma")
        ax.set_title(f"source {i}: truth | model")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
