"""`train_madness`: the paper's three training stages, from simulated datasets to a bundle.

Stages (sections 3.2-3.4), each resumable (see `loop.run_stage`):

1. ``vae_warmup`` -- beta-VAE on IsolatedSims with the SSIM-weighted loss, alpha 1 -> 0;
2. ``vae`` -- the plain beta-VAE loss, restarted learning rate, early stopping;
3. ``flow`` -- the MAF prior on the encoder's mean latents of IsolatedSims;
4. ``deblender`` -- a copy of the encoder trained on BlendedSims to predict the frozen
   encoder's latents of the isolated central galaxy.

The run directory holds ``config.json``, ``checkpoints/``, ``logs/`` (CSV and TensorBoard),
``figures/``, ``summary.json`` and the finished model in ``bundle/``.
"""

from __future__ import annotations

__all__ = ["train_madness"]

import json
import logging
import os
import platform
import time
from pathlib import Path

import keras
import numpy as np

from ..errors import MadnessValueError
from ..io.bundle import BundleMetadata, ModelBundle
from ..networks import Decoder, Encoder, LinearNormalization, MaskedAutoregressiveFlow
from ..networks.layout import to_network_layout
from .config import TrainingConfig
from .loop import run_stage
from .models import DeblenderTrainer, FlowTrainer, VaeTrainer

_log = logging.getLogger(__name__)

DATASETS = ("isolated-train", "isolated-validation", "blended-train", "blended-validation")


def _load(directory: Path, limit: int | None, norm: LinearNormalization):
    from ..simulation import SimulatedDataset

    data = SimulatedDataset(directory)
    images, truth = data.load("images", "truth")
    if limit is not None:
        images, truth = images[:limit], truth[:limit]
    return (np.ascontiguousarray(to_network_layout(norm.normalize(images))),
            np.ascontiguousarray(to_network_layout(norm.normalize(truth))), data)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from ..backend import device_description

    return f"{cpu}, {os.cpu_count()} cores, {keras.config.backend()} on {device_description()}"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)


def train_madness(data_dir, output, config: TrainingConfig, *, progress: bool = True, figures: bool = True,
                  description: str = "") -> ModelBundle:
    """Train encoder, decoder, flow and VAE-deblender; write and return the model bundle.

    Parameters
    ----------
    data_dir : `str` or `pathlib.Path`
        A directory from ``madness simulate datasets`` with ``isolated-train``,
        ``isolated-validation``, ``blended-train`` and ``blended-validation``.
    output : `str` or `pathlib.Path`
        Run directory; rerunning with the same config resumes where a killed run stopped.
    config : `TrainingConfig`
        Sizes and schedules (`lsst.meas.madness.training.preset`).
    progress : `bool`
        Progress bars.
    figures : `bool`
        Write the learning curves and the paper-style figures to ``figures/``.
    description : `str`
        Free text for the bundle's metadata.

    Returns
    -------
    bundle : `ModelBundle`
        Also saved in ``<output>/bundle``.
    """
    data_dir, output = Path(data_dir), Path(output)
    missing = [d for d in DATASETS if not (data_dir / d / "manifest.json").exists()]
    if missing:
        raise MadnessValueError(f"{data_dir} lacks the datasets {missing}; make them with `madness simulate datasets`.")
    output.mkdir(parents=True, exist_ok=True)
    config_path = output / "config.json"
    if config_path.exists():
        previous = json.loads(config_path.read_text())
        if previous != json.loads(json.dumps(config.as_dict())):
            raise MadnessValueError(f"{output} holds a run with another configuration; use another directory.")
    else:
        _write_json(config_path, config.as_dict())
    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    norm = LinearNormalization()

    x_iso, y_iso, iso = _load(data_dir / "isolated-train", config.max_train, norm)
    xv_iso, yv_iso, _ = _load(data_dir / "isolated-validation", config.max_validation, norm)
    x_bl, y_bl, _ = _load(data_dir / "blended-train", config.max_train, norm)
    xv_bl, yv_bl, _ = _load(data_dir / "blended-validation", config.max_validation, norm)
    bands = iso.bands
    sky = np.array([iso.manifest.info["sky_level"][b] for b in bands])
    sky_net = norm.normalize_variance(sky).astype(np.float32)
    size = x_iso.shape[1]
    _log.info("Training on %d isolated / %d blended stamps (%d / %d validation).", len(x_iso), len(x_bl),
              len(xv_iso), len(xv_bl))

    encoder = Encoder(size, len(bands), config.latent_dim, config.encoder_filters, dense_units=config.dense_units)
    decoder = Decoder(size, len(bands), config.latent_dim, config.decoder_filters, dense_units=config.dense_units)
    flow = MaskedAutoregressiveFlow(config.latent_dim, seed=config.seed)
    flow.build()
    results = {}

    # --- 1-2: beta-VAE, warm-up then plain loss -------------------------------------------------
    vae = VaeTrainer(encoder, decoder, sky_net, scale=norm.scale, beta=config.beta, target=config.target,
                     seed=config.seed)

    def vae_components():
        params, prediction = vae.predict(xv_iso, batch_size=config.vae.batch_size, verbose=0)
        chi2, kl, ssim = (np.asarray(keras.ops.convert_to_numpy(t)) for t in vae.loss_terms(
            keras.ops.convert_to_tensor(xv_iso), keras.ops.convert_to_tensor(yv_iso),
            keras.ops.convert_to_tensor(params), keras.ops.convert_to_tensor(prediction)))
        row = {"val_chi2_per_pixel": float(chi2.mean() / yv_iso[0].size), "val_kl": float(kl.mean()),
               "val_ssim": float(ssim.mean())}
        row.update(_dead_bands(np.asarray(prediction), bands))
        return row

    def set_alpha(epoch):
        alpha = max(0.0, 1.0 - epoch / config.ssim_warmup_epochs)
        vae.alpha.assign(alpha)
        return {"alpha": alpha}

    results["vae_warmup"] = run_stage("vae_warmup", vae, config.vae_warmup, x_iso, y_iso, xv_iso, yv_iso,
                                      directory=output, seed=config.seed, extra_metrics=vae_components,
                                      on_epoch_start=set_alpha, progress=progress)
    vae.alpha.assign(0.0)
    results["vae"] = run_stage("vae", vae, config.vae, x_iso, y_iso, xv_iso, yv_iso, directory=output,
                               seed=config.seed, extra_metrics=vae_components,
                               on_epoch_start=lambda e: {"alpha": 0.0}, progress=progress)

    # --- 3: the flow prior on the encoder's mean latents ----------------------------------------
    z_train = np.asarray(encoder.encode_mean(x_iso), np.float32)
    z_val = np.asarray(encoder.encode_mean(xv_iso), np.float32)
    flow_trainer = FlowTrainer(flow)
    results["flow"] = run_stage("flow", flow_trainer, config.flow, z_train, None, z_val, None,
                                directory=output, seed=config.seed, progress=progress)

    # --- 4: the VAE-deblender -------------------------------------------------------------------
    # Targets: the frozen encoder's mean latents of the isolated central galaxy with a noise
    # realisation of its own (sky + Poisson, Gaussian approximation, seeded), so the encoder sees
    # the kind of stamp it was trained on.
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 4]))

    def isolated_noisy(truth):
        sigma = np.sqrt(sky_net[None, None, None, :] + np.maximum(truth, 0) / norm.scale)
        return (truth + rng.standard_normal(truth.shape).astype(np.float32) * sigma).astype(np.float32)

    target_train = np.asarray(encoder.encode_mean(isolated_noisy(y_bl)), np.float32)
    target_val = np.asarray(encoder.encode_mean(isolated_noisy(yv_bl)), np.float32)
    deblender_encoder = Encoder(size, len(bands), config.latent_dim, config.encoder_filters,
                                dense_units=config.dense_units, name="deblender_encoder")
    deblender_encoder.build((None, size, size, len(bands)))
    deblender_encoder.set_weights(encoder.get_weights())
    results["deblender"] = run_stage("deblender", DeblenderTrainer(deblender_encoder), config.deblender,
                                     x_bl, target_train, xv_bl, target_val, directory=output,
                                     seed=config.seed, progress=progress)

    # --- bundle, metrics, figures -----------------------------------------------------------------
    wall = time.perf_counter() - start
    metrics = _validation_metrics(vae, flow, deblender_encoder, decoder, xv_iso, yv_iso, z_val, xv_bl, yv_bl,
                                  target_val, sky_net, norm.scale, bands)
    from ..simulation.conditions import LsstConditions

    conditions = LsstConditions.from_surveycodex(bands=bands).as_dict()
    metadata = BundleMetadata(
        bands=bands, stamp_size=size, pixel_scale=float(iso.manifest.info.get("pixel_scale", 0.2)),
        normalization=float(norm.scale), latent_dim=config.latent_dim, trained=True, conditions=conditions,
        description=description or f"MADNESS trained with the {config.name!r} preset on {data_dir.name}.",
        training={
            "preset": config.name, "config": config.as_dict(), "data": data_dir.name,  # the suite's name, not this machine's path
            "catalog": iso.manifest.request["catalog"],
            "n_train": {"isolated": len(x_iso), "blended": len(x_bl)},
            "n_validation": {"isolated": len(xv_iso), "blended": len(xv_bl)},
            "stages": {k: v.as_dict() for k, v in results.items()},
            "wall_time_s": round(wall, 1), "machine": _machine(), "backend": keras.config.backend(),
        },
        metrics=metrics,
    )
    bundle = ModelBundle(metadata, decoder, flow, deblender_encoder=deblender_encoder, encoder=encoder)
    bundle.save(output / "bundle", overwrite=True)
    summary = {"metrics": metrics, "stages": {k: v.as_dict() for k, v in results.items()},
               "wall_time_s": round(wall, 1), "machine": _machine(), "config": config.as_dict()}
    _write_json(output / "summary.json", summary)
    if figures:
        from .plots import write_training_figures

        write_training_figures(output, results, decoder, flow, deblender_encoder, z_val, xv_bl, yv_bl, bands,
                               seed=config.seed)
    return bundle


def _dead_bands(prediction: np.ndarray, bands) -> dict:
    """Fraction of decoded validation stamps whose band is identically zero, per band.

    The decoder ends in a ReLU: a band whose output channel is driven negative everywhere early
    in training stops receiving gradient and stays dark (the paper's SSIM warm-up exists to make
    every band learn; a short, fast warm-up can still lose the faint u band). Logged per epoch so
    that a dying channel is seen while it happens.
    """
    zero = (prediction.reshape(len(prediction), -1, prediction.shape[-1]).max(axis=1) <= 0).mean(axis=0)
    return {f"val_zero_frac_{b}": float(z) for b, z in zip(bands, zero)}


def _validation_metrics(vae, flow, deblender_encoder, decoder, xv_iso, yv_iso, z_val, xv_bl, yv_bl,
                        target_val, sky_net, scale, bands) -> dict:
    """Validation numbers for the model card (network units unless stated)."""
    from .losses import reconstruction_chi2

    params, prediction = vae.predict(xv_iso, batch_size=256, verbose=0)
    chi2, kl, ssim = (np.asarray(keras.ops.convert_to_numpy(t)) for t in vae.loss_terms(
        keras.ops.convert_to_tensor(xv_iso), keras.ops.convert_to_tensor(yv_iso),
        keras.ops.convert_to_tensor(params), keras.ops.convert_to_tensor(prediction)))
    log_prob = np.asarray(keras.ops.convert_to_numpy(flow.log_prob(keras.ops.convert_to_tensor(z_val))))
    z_deb = np.asarray(deblender_encoder.encode_mean(xv_bl), np.float32)
    decoded = np.asarray(decoder.predict(z_deb, batch_size=256, verbose=0))
    deb_chi2 = np.asarray(keras.ops.convert_to_numpy(reconstruction_chi2(
        keras.ops.convert_to_tensor(yv_bl), keras.ops.convert_to_tensor(decoded),
        keras.ops.convert_to_tensor(yv_bl), sky_net, scale)))
    r = 2 if yv_bl.shape[-1] == 6 else 0
    flux_true = yv_bl[..., r].sum(axis=(1, 2))
    flux_deb = decoded[..., r].sum(axis=(1, 2))
    bright = flux_true > 0
    pixels = yv_iso[0].size
    dead = _dead_bands(np.asarray(prediction), bands)
    return {
        **dead,
        "vae_val_chi2_per_pixel": float(chi2.mean() / pixels),
        "vae_val_kl": float(kl.mean()),
        "vae_val_ssim": float(ssim.mean()),
        "flow_val_nll": float(-log_prob.mean()),
        "deblender_val_latent_l2": float(np.mean(np.sum((z_deb - target_val) ** 2, axis=-1))),
        "deblender_val_chi2_per_pixel": float(deb_chi2.mean() / pixels),
        "deblender_val_median_abs_dflux_r": float(np.median(np.abs(flux_deb[bright] / flux_true[bright] - 1))),
    }
