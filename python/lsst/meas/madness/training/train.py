"""`train_madness`: the paper's three training stages, from simulated datasets to a bundle.

Stages (sections 3.2-3.4), each resumable (see `loop.run_stage`):

1. ``vae_warmup`` -- beta-VAE on IsolatedSims with the SSIM-weighted loss, alpha 1 -> 0;
2. ``vae`` -- the plain beta-VAE loss, restarted learning rate, early stopping;
3. ``flow`` -- the MAF prior on the encoder's mean latents of IsolatedSims;
4. ``deblender`` -- a copy of the encoder trained on BlendedSims to predict the frozen
   encoder's latents of the isolated central galaxy.

The run directory holds ``config.json``, ``checkpoints/``, ``logs/`` (CSV and TensorBoard),
``figures/``, ``summary.json`` and the finished model in ``bundle/``. After every epoch of the
VAE stages ``snapshot/`` holds a bundle of that epoch's networks, small enough (with
``scripts/share_bundle.py``) to commit while a run spans sessions on machines that are not kept,
and a new run continues it with ``init_from=<snapshot>, continue_schedule=True``.
"""

from __future__ import annotations

__all__ = ["train_madness"]

import json
import logging
import os
import time
from pathlib import Path

import keras
import numpy as np

from ..errors import MadnessValueError
from ..io.bundle import BundleMetadata, ModelBundle
from ..networks import Decoder, Encoder, LinearNormalization, MaskedAutoregressiveFlow
from ..precision import dtype_policy, with_precision
from ..networks.layout import to_network_layout
from .config import TrainingConfig
from .loop import run_stage
from .models import DeblenderTrainer, FlowTrainer, VaeTrainer

_log = logging.getLogger(__name__)

DATASETS = ("isolated-train", "isolated-validation", "blended-train", "blended-validation")


VAE_MONITOR = "val_chi2_fraction"
"""The validation number that picks the VAE stage's kept epoch (`_chi2_fraction`).

Not the validation loss: its mean chi^2 is the sum over stamps of each galaxy's chi^2, which
grows with the galaxy's flux, so a handful of the brightest validation galaxies decide it. On
`sims-v3`'s 2,000 validation stamps one galaxy (signal-to-noise 45,776) holds two thirds of the
packaged model's mean chi^2 per pixel (1,177 of 0.907 x 2,000), and the model ahead on that
one stamp wins although it is behind on the other 1,999 (doc/training.md)."""


def _signal_chi2(truth: np.ndarray, sky_variance: np.ndarray, scale: float) -> np.ndarray:
    """Per-stamp chi^2 of drawing nothing: ``sum(truth^2 / (sky + truth / scale))``, the
    galaxy's own signal-to-noise squared (at least 1)."""
    from .losses import reconstruction_chi2

    zeros = keras.ops.zeros_like(keras.ops.convert_to_tensor(truth))
    chi2 = reconstruction_chi2(truth, zeros, truth, sky_variance, scale)
    return np.maximum(np.asarray(keras.ops.convert_to_numpy(chi2), np.float64), 1.0)


def _chi2_fraction(chi2: np.ndarray, signal: np.ndarray) -> float:
    """Mean over stamps of the fraction of each galaxy's signal chi^2 the reconstruction leaves
    (``chi2 / signal``): every galaxy counts once, whatever its flux.

    Examples
    --------
    >>> _chi2_fraction(np.array([1.0, 100.0]), np.array([10.0, 1e4]))  # 10% and 1% left
    0.055
    """
    return float(np.mean(np.asarray(chi2, np.float64) / signal))


def _load(directory: Path, limit: int | None, norm: LinearNormalization, names=("images", "truth")):
    """Arrays ``names`` of a dataset in network units and layout, at most ``limit`` stamps.

    Shards are read one at a time into preallocated ``(n, H, W, bands)`` arrays, so the peak
    memory is the result plus one shard (150k six-band 45x45 stamps are 7.3 GB per array; a
    concatenate-then-convert load would need three times that).
    """
    from ..simulation import SimulatedDataset

    data = SimulatedDataset(directory)
    if not data.manifest.complete:
        raise MadnessValueError(f"{directory} is incomplete ({len(data.manifest.shards)} of {data.manifest.n_shards} "
                                "shards): finish it by rerunning its `madness simulate datasets` command.")
    n = len(data) if limit is None else min(int(limit), len(data))
    out: dict[str, np.ndarray] = {}
    filled = 0
    for arrays, _ in data.iter_shards(*names):
        if filled >= n:
            break
        take = min(len(arrays[names[0]]), n - filled)
        for name in names:
            if name not in arrays:
                raise MadnessValueError(f"{directory} has no array {name!r}; it has {sorted(arrays)}.")
            part = to_network_layout(norm.normalize(arrays[name][:take]))
            if name not in out:
                out[name] = np.empty((n, *part.shape[1:]), np.float32)
            out[name][filled:filled + take] = part
        filled += take
    return (*(out[name] for name in names), data)


def _encode_fresh(encoder, truth: np.ndarray, augment, seed: int, chunk: int = 4096) -> np.ndarray:
    """Mean latents of noisy draws of ``truth`` (no symmetry), made and encoded chunk by chunk.

    With fresh noise the VAE never reads the stored noisy training images, so they are not
    loaded; the flow's latents come from a seeded noise draw of each galaxy instead (the same
    distribution, and the same on a resumed run).
    """
    from .augment import FreshNoise

    noise = FreshNoise(augment.sky_variance.ravel(), augment.scale, symmetries=False)
    z = np.empty((len(truth), encoder.latent_dim), np.float32)
    for i, start in enumerate(range(0, len(truth), chunk)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 3, i]))
        noisy, _ = noise(truth[start:start + chunk], rng)
        z[start:start + chunk] = np.asarray(encoder.encode_mean(noisy), np.float32)
    return z


def _machine() -> str:
    from ..backend import cpu_model, device_description

    return f"{cpu_model()}, {os.cpu_count()} cores, {keras.config.backend()} on {device_description()}"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)


# Shares of a time budget kept for the stages after the VAE (the flow takes seconds; the
# VAE-deblender a few epochs of an encoder).
_BUDGET_RESERVE = {"flow": 0.02, "deblender": 0.15}


def train_madness(data_dir, output, config: TrainingConfig, *, progress: bool = True, figures: bool = True,
                  description: str = "", init_from=None, time_budget_s: float | None = None,
                  teacher_from=None, data_workers: int | None = None,
                  continue_schedule: bool = False) -> ModelBundle:
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
    init_from : `str`, `pathlib.Path` or `ModelBundle`, optional
        Warm start: a bundle whose networks (same architecture) initialise this run's. The
        encoder starts from the bundle's training encoder, or from its VAE-deblender encoder when
        the bundle has none; the SSIM warm-up, whose purpose is to start a new network's bands,
        is skipped. The bundle's training record (time, data, stages) is carried into this
        one's ``training["lineage"]`` and its time into the totals.
    time_budget_s : `float`, optional
        Training seconds for the whole run (resumes included): the VAE stages stop at an epoch
        boundary so that the flow and the VAE-deblender (which keep 2% and 15% of the budget)
        still fit, and every stage ends cleanly inside its share.
    teacher_from : `str`, `pathlib.Path` or `ModelBundle`, optional
        With distillation, the bundle whose decoder teaches (default: ``init_from``'s). It must
        share ``init_from``'s latent space (the same encoder, weight for weight): e.g. a student
        continued from its own bundle and taught again by its original teacher.
    data_workers : `int`, optional
        Threads making the training batches (`lsst.meas.madness.training.loop.run_stage`);
        `None`: 1 on CPUs, up to 8 beside a GPU. It changes the speed, never the batches.
    continue_schedule : `bool`
        Continue ``init_from``'s VAE stage where it stopped instead of starting its schedule
        again: ``init_from`` is a snapshot or bundle of a run with this configuration whose VAE
        stage has epochs left (e.g. stopped by its time budget on a machine that was not kept).
        The learning rate picks up at the next epoch; the optimiser's moments start again, so
        the result is close to, not equal to, the uninterrupted run's.

    Returns
    -------
    bundle : `ModelBundle`
        Also saved in ``<output>/bundle``.
    """
    data_dir, output = Path(data_dir), Path(output)
    if data_workers is not None and data_workers < 1:
        raise MadnessValueError(f"data_workers must be at least 1, not {data_workers}.")
    parent = _load_parent(init_from, config)
    if config.freeze_encoder and parent is None:
        raise MadnessValueError("TrainingConfig.freeze_encoder continues a trained model's decoder: give init_from.")
    teacher_bundle = _load_teacher(teacher_from, parent, config)
    first_epoch = _continued_epoch(parent, config) if continue_schedule else 0
    missing = [d for d in DATASETS if not (data_dir / d / "manifest.json").exists()]
    if any(d.startswith("isolated") for d in missing) or len(missing) == len(DATASETS):
        raise MadnessValueError(f"{data_dir} lacks the datasets {missing}; make them with `madness simulate datasets`.")
    if missing:
        _log.warning("%s lacks %s: they must be complete before the VAE-deblender stage.", data_dir, missing)
    output.mkdir(parents=True, exist_ok=True)
    config_path = output / "config.json"
    if config_path.exists():
        # Through from_dict, so that a run written before a field was added still resumes.
        previous = json.loads(json.dumps(TrainingConfig.from_dict(json.loads(config_path.read_text())).as_dict()))
        if previous != json.loads(json.dumps(config.as_dict())):
            raise MadnessValueError(f"{output} holds a run with another configuration; use another directory.")
    else:
        _write_json(config_path, config.as_dict())
    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    norm = LinearNormalization()

    if config.fresh_noise:
        # Every training batch is drawn from the noiseless stamps: the stored noisy draws would
        # only double the memory (7.3 GB more at the paper's 150k galaxies).
        y_iso, iso = _load(data_dir / "isolated-train", config.max_train, norm, names=("truth",))
        x_iso = y_iso  # unused by the VAE stages (see run_stage's augment); only its length counts
    else:
        x_iso, y_iso, iso = _load(data_dir / "isolated-train", config.max_train, norm)
    xv_iso, yv_iso, _ = _load(data_dir / "isolated-validation", config.max_validation, norm)
    bands = iso.bands
    sky = np.array([iso.manifest.info["sky_level"][b] for b in bands])
    sky_net = norm.normalize_variance(sky).astype(np.float32)
    size = y_iso.shape[1]
    _log.info("Training on %d isolated stamps (%d validation).", len(y_iso), len(xv_iso))

    with dtype_policy(config.precision):
        encoder = Encoder(size, len(bands), config.latent_dim, config.encoder_filters, dense_units=config.dense_units)
        decoder = Decoder(size, len(bands), config.latent_dim, config.decoder_filters,
                          dense_units=config.dense_units, output_activation=config.decoder_output_activation,
                          output_scale=_output_scale(config, sky_net))
        encoder.build((None, size, size, len(bands)))
    # The flow is a density: it trains in float32 whatever the image networks do. Its layer order
    # (the permutations between MADE layers, drawn from a seed) is part of what its weights mean,
    # so a warm start keeps the parent's whatever this run's seed: with the run's own order the
    # parent's weights describe another density (a --seed 1 continuation of the seed-0 bundle
    # deblended with a meaningless prior: doc/training.md, cpu7-b).
    if parent is not None:
        flow = MaskedAutoregressiveFlow.from_config(parent.flow.get_config())
    else:
        flow = MaskedAutoregressiveFlow(config.latent_dim, seed=config.seed)
    flow.build()
    if parent is not None:
        _warm_start(parent, encoder, decoder, flow, bands, size)
    if config.freeze_encoder:
        encoder.trainable = False
    results = {}
    # A frozen encoder keeps the parent's flow and VAE-deblender: nothing is reserved for them.
    reserve = {} if config.freeze_encoder else _BUDGET_RESERVE

    def budget(stage: str) -> float | None:
        """Seconds ``stage`` may use: what the budget leaves after the stages before it, less
        the reserves of the stages after it."""
        if time_budget_s is None:
            return None
        order = ["vae_warmup", "vae", "flow", "deblender"]
        spent = sum(r.seconds for k, r in results.items())
        later = sum(reserve.get(k, 0.0) for k in order[order.index(stage) + 1:])
        return max(time_budget_s * (1.0 - later) - spent, 0.0)

    augment = None
    if config.fresh_noise:
        from .augment import FreshNoise

        augment = FreshNoise(sky_net, norm.scale)

    def bundle_metadata(results: dict, wall: float, metrics: dict, n_blended: int, n_validation_blended: int,
                        snapshot: dict | None = None) -> BundleMetadata:
        """The bundle's metadata: what was trained, on what, for how long (this run and its lineage)."""
        from ..simulation.conditions import LsstConditions

        lineage = _lineage(parent)
        passes = _sample_passes(results, len(y_iso), n_blended)
        text = description or f"MADNESS trained with the {config.name!r} preset on {data_dir.name}."
        if snapshot is not None:
            text += (f" Snapshot after epoch {snapshot['epoch']} of stage {snapshot['stage']!r}, to continue the run "
                     "(`madness train --init-from <this> --continue-schedule`).")
        return BundleMetadata(
            bands=bands, stamp_size=size, pixel_scale=float(iso.manifest.info.get("pixel_scale", 0.2)),
            normalization=float(norm.scale), latent_dim=config.latent_dim, trained=True,
            conditions=LsstConditions.from_surveycodex(bands=bands).as_dict(), description=text,
            training={
                "preset": config.name, "config": config.as_dict(), "data": data_dir.name,  # the suite's name, not this machine's path
                "catalog": iso.manifest.request["catalog"],
                "n_train": {"isolated": len(y_iso), "blended": n_blended},
                "n_validation": {"isolated": len(xv_iso), "blended": n_validation_blended},
                "stages": {k: v.as_dict() for k, v in results.items()},
                "wall_time_s": round(wall, 1), "machine": _machine(), "backend": keras.config.backend(),
                "augmentation": augment.describe() if augment is not None else None,
                "time_budget_s": time_budget_s,
                "sample_passes": passes,
                "lineage": lineage,
                # The teacher's directory name (not this machine's path) when it is not the warm start.
                "teacher": (None if teacher_from is None else
                            teacher_from.metadata.description if isinstance(teacher_from, ModelBundle)
                            else Path(teacher_from).name),
                "total_wall_time_s": round(wall + sum(p.get("wall_time_s", 0.0) for p in lineage), 1),
                "total_sample_passes": passes + sum(p.get("sample_passes", 0) for p in lineage),
                "snapshot": snapshot,
            },
            metrics=metrics,
        )

    def write_snapshot(result) -> None:
        """``<output>/snapshot``: a bundle of the VAE stage's networks after its last epoch.

        With a frozen encoder the flow and the VAE-deblender are the parent's, so the snapshot
        deblends; otherwise they are not trained yet for this encoder (the VAE-deblender slot
        holds the training encoder, which the deblender stage would start from) and the
        snapshot is only for continuing.
        """
        done = dict(results, **{result.name: result})
        nets = [with_precision(n, "float32") if config.precision != "float32" else n for n in (encoder, decoder)]
        deblender = parent.deblender_encoder if config.freeze_encoder else nets[0]
        last = result.history[-1]
        snapshot = {"stage": result.name, "epoch": last["epoch"],
                    "validation": {k: v for k, v in last.items() if k.startswith("val_")}}
        meta = bundle_metadata(done, sum(r.seconds for r in done.values()), {}, 0, 0, snapshot)
        ModelBundle(meta, nets[1], flow, deblender_encoder=deblender, encoder=nets[0]).save(
            output / "snapshot", overwrite=True)
        _log.info("Snapshot of %s after epoch %d: %s", result.name, last["epoch"], output / "snapshot")

    # --- 1-2: beta-VAE, warm-up then plain loss -------------------------------------------------
    teacher = None
    if config.distill_weight > 0:
        # The teacher's decoder (the parent's unless given), at this run's precision: a target, never trained.
        teacher = with_precision(teacher_bundle.decoder, config.precision)
    vae = VaeTrainer(encoder, decoder, sky_net, scale=norm.scale, beta=config.beta, target=config.target,
                     seed=config.seed, teacher=teacher, distill_weight=config.distill_weight,
                     distill_spread=config.distill_spread)

    signal_val = _signal_chi2(yv_iso, sky_net, norm.scale)

    def vae_components():
        # Against the truth only (no distillation term), so that runs with and without a teacher
        # compare; the teacher's stamps, if any, are the third output.
        params, prediction = vae.predict(xv_iso, batch_size=config.vae.batch_size, verbose=0)[:2]
        chi2, kl, ssim = (np.asarray(keras.ops.convert_to_numpy(t)) for t in vae.loss_terms(
            keras.ops.convert_to_tensor(xv_iso), keras.ops.convert_to_tensor(yv_iso),
            keras.ops.convert_to_tensor(params), keras.ops.convert_to_tensor(prediction)))
        row = {"val_chi2_per_pixel": float(chi2.mean() / yv_iso[0].size), "val_kl": float(kl.mean()),
               "val_ssim": float(ssim.mean()),
               "val_chi2_median_per_pixel": float(np.median(chi2) / yv_iso[0].size),
               "val_chi2_fraction": _chi2_fraction(chi2, signal_val)}
        row.update(_dead_bands(np.asarray(prediction), bands))
        return row

    def set_alpha(epoch):
        alpha = max(0.0, 1.0 - epoch / config.ssim_warmup_epochs)
        vae.alpha.assign(alpha)
        return {"alpha": alpha}

    if parent is None:
        results["vae_warmup"] = run_stage("vae_warmup", vae, config.vae_warmup, x_iso, y_iso, xv_iso, yv_iso,
                                          directory=output, seed=config.seed, extra_metrics=vae_components,
                                          on_epoch_start=set_alpha, progress=progress, augment=augment,
                                          time_budget_s=budget("vae_warmup"), data_workers=data_workers,
                                          on_epoch_end=write_snapshot)
    vae.alpha.assign(0.0)
    results["vae"] = run_stage("vae", vae, config.vae, x_iso, y_iso, xv_iso, yv_iso, directory=output,
                               seed=config.seed, extra_metrics=vae_components,
                               on_epoch_start=lambda e: {"alpha": 0.0}, progress=progress, augment=augment,
                               time_budget_s=budget("vae"), data_workers=data_workers, monitor=VAE_MONITOR,
                               first_epoch=first_epoch, on_epoch_end=write_snapshot)

    # --- 3: the flow prior on the encoder's mean latents ----------------------------------------
    z_val = np.asarray(encoder.encode_mean(xv_iso), np.float32)
    if not config.freeze_encoder:
        if augment is not None:
            z_train = _encode_fresh(encoder, y_iso, augment, config.seed)
        else:
            z_train = np.asarray(encoder.encode_mean(x_iso), np.float32)
        flow_trainer = FlowTrainer(flow)
        results["flow"] = run_stage("flow", flow_trainer, config.flow, z_train, None, z_val, None,
                                    directory=output, seed=config.seed, progress=progress,
                                    time_budget_s=budget("flow"), data_workers=data_workers)

    # --- 4: the VAE-deblender -------------------------------------------------------------------
    # BlendedSims are read only now: the VAE stages do not need them (memory), and a suite whose
    # blended datasets are still being drawn can start training.
    # With a frozen encoder only the validation blends are read (for the bundle's metrics).
    if config.freeze_encoder:
        x_bl = y_bl = np.empty((0,) + y_iso.shape[1:], np.float32)
    else:
        x_bl, y_bl, _ = _load(data_dir / "blended-train", config.max_train, norm)
    xv_bl, yv_bl, _ = _load(data_dir / "blended-validation", config.max_validation, norm)
    _log.info("VAE-deblender on %d blended stamps (%d validation).", len(x_bl), len(xv_bl))
    # Targets: the frozen encoder's mean latents of the isolated central galaxy with a noise
    # realisation of its own (sky + Poisson, Gaussian approximation, seeded), so the encoder sees
    # the kind of stamp it was trained on.
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 4]))

    def isolated_noisy(truth):
        sigma = np.sqrt(sky_net[None, None, None, :] + np.maximum(truth, 0) / norm.scale)
        return (truth + rng.standard_normal(truth.shape).astype(np.float32) * sigma).astype(np.float32)

    if not config.freeze_encoder:
        target_train = np.asarray(encoder.encode_mean(isolated_noisy(y_bl)), np.float32)
    target_val = np.asarray(encoder.encode_mean(isolated_noisy(yv_bl)), np.float32)
    with dtype_policy(config.precision):
        deblender_encoder = Encoder(size, len(bands), config.latent_dim, config.encoder_filters,
                                    dense_units=config.dense_units, name="deblender_encoder")
        deblender_encoder.build((None, size, size, len(bands)))
    if config.freeze_encoder:
        deblender_encoder.set_weights(parent.deblender_encoder.get_weights())
    else:
        deblender_encoder.set_weights(encoder.get_weights())
        results["deblender"] = run_stage("deblender", DeblenderTrainer(deblender_encoder), config.deblender,
                                         x_bl, target_train, xv_bl, target_val, directory=output,
                                         seed=config.seed, progress=progress, time_budget_s=budget("deblender"),
                                         data_workers=data_workers)

    # --- bundle, metrics, figures -----------------------------------------------------------------
    # A resumed run's stages carry the seconds of every process that ran them; this process's
    # clock alone would record only the resume.
    wall = max(time.perf_counter() - start, sum(r.seconds for r in results.values()))
    if config.precision != "float32":
        # The bundle, its metrics and figures are what inference sees: float32 networks.
        encoder, decoder, deblender_encoder = (with_precision(n, "float32") for n in (encoder, decoder, deblender_encoder))
        vae = VaeTrainer(encoder, decoder, sky_net, scale=norm.scale, beta=config.beta, target=config.target,
                         seed=config.seed)
    metrics = _validation_metrics(vae, flow, deblender_encoder, decoder, xv_iso, yv_iso, z_val, xv_bl, yv_bl,
                                  target_val, sky_net, norm.scale, bands)
    metadata = bundle_metadata(results, wall, metrics, len(x_bl), len(xv_bl))
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


def _load_parent(init_from, config: TrainingConfig) -> ModelBundle | None:
    """The warm-start bundle, checked against the configuration's architecture."""
    if init_from is None:
        return None
    parent = init_from if isinstance(init_from, ModelBundle) else ModelBundle.load(init_from)
    dec = parent.decoder
    mine = (config.latent_dim, tuple(config.decoder_filters), config.dense_units)
    theirs = (dec.latent_dim, tuple(dec.filters), dec.dense_units)
    if config.freeze_encoder:
        # Only the latent space is carried over: a new decoder of another width may learn it.
        mine, theirs = mine[:1], theirs[:1]
    if mine != theirs or tuple(parent.deblender_encoder.filters) != tuple(config.encoder_filters):
        raise MadnessValueError(
            f"Cannot warm-start the {config.name!r} preset (latent_dim, decoder filters, dense units {mine}, "
            f"encoder filters {tuple(config.encoder_filters)}) from a bundle with {theirs}, encoder filters "
            f"{tuple(parent.deblender_encoder.filters)}.")
    return parent


def _load_teacher(teacher_from, parent: ModelBundle | None, config: TrainingConfig) -> ModelBundle | None:
    """The bundle whose decoder teaches: ``teacher_from``, checked to share the parent's latent space."""
    if teacher_from is None:
        return parent
    if not config.distill_weight > 0:
        raise MadnessValueError("A teacher bundle is for distillation: it needs distill_weight > 0.")
    teacher = teacher_from if isinstance(teacher_from, ModelBundle) else ModelBundle.load(teacher_from)
    mine = parent.encoder or parent.deblender_encoder
    theirs = teacher.encoder or teacher.deblender_encoder
    same = (teacher.decoder.latent_dim == parent.decoder.latent_dim
            and [w.shape for w in mine.get_weights()] == [w.shape for w in theirs.get_weights()]
            and all(np.array_equal(a, b) for a, b in zip(mine.get_weights(), theirs.get_weights())))
    if not same:
        raise MadnessValueError(
            "The teacher bundle's encoder differs from the warm-start bundle's: its decoder draws another latent "
            "space, and distilling it would teach the wrong galaxies. Give a teacher trained in the same latent "
            "space (e.g. the bundle the warm-start one was distilled from).")
    return teacher


def _warm_start(parent: ModelBundle, encoder, decoder, flow, bands, size) -> None:
    meta = parent.metadata
    if tuple(meta.bands) != tuple(bands) or meta.stamp_size != size:
        raise MadnessValueError(f"The warm-start bundle has bands {meta.bands} and {meta.stamp_size}px stamps; "
                                f"the data have {bands} and {size}px.")
    if [w.shape for w in decoder.get_weights()] == [w.shape for w in parent.decoder.get_weights()]:
        decoder.set_weights(parent.decoder.get_weights())
        _match_output_scale(parent.decoder, decoder)
    else:  # another architecture (freeze_encoder only, _load_parent): a new decoder, same latent space
        _log.info("New decoder (filters %s, dense %d) in the warm-start bundle's latent space (its decoder: "
                  "filters %s, dense %d).", tuple(decoder.filters), decoder.dense_units,
                  tuple(parent.decoder.filters), parent.decoder.dense_units)
    if flow.get_config()["permutations"] != parent.flow.get_config()["permutations"]:
        raise MadnessValueError("The flow to warm-start has other permutations than the warm-start bundle's; its "
                                "weights would describe another density (build it from the bundle's config).")
    flow.set_weights(parent.flow.get_weights())
    encoder.set_weights((parent.encoder or parent.deblender_encoder).get_weights())
    _log.info("Warm start from a bundle trained with %r (%s encoder).", meta.training.get("preset"),
              "training" if parent.encoder is not None else "VAE-deblender")


def _output_scale(config: TrainingConfig, sky_net: np.ndarray) -> list[float] | None:
    """Per-band output scale of a ReLU decoder: a fraction of each band's sky sigma (network units)."""
    if config.decoder_output_scale_sigma is None:
        return None
    return [float(config.decoder_output_scale_sigma * np.sqrt(v)) for v in sky_net]


def _match_output_scale(parent: Decoder, decoder: Decoder) -> None:
    """Rescale the warm-started output layer so ``decoder`` draws what ``parent`` drew.

    An unscaled output ``act(W h + b)`` and a scaled ReLU ``s relu(W' h + b')`` agree where the
    old output is positive when ``W' = W / s`` and ``b' = b / s`` (a linear parent's negative
    pixels become zeros); between two output scales the same ratio carries over.
    """
    old = np.ones(parent.num_bands) if parent.output_scale is None else np.asarray(parent.output_scale)
    new = np.ones(decoder.num_bands) if decoder.output_scale is None else np.asarray(decoder.output_scale)
    if np.allclose(old, new):
        return
    layer = decoder.get_layer(f"convT{len(decoder.filters) + 1}")
    kernel, bias = layer.get_weights()  # kernel (k, k, bands, filters): Conv2DTranspose puts outputs third
    ratio = (old / new).astype(kernel.dtype)
    layer.set_weights([kernel * ratio[None, None, :, None], bias * ratio])
    _log.info("Output layer rescaled by %s per band (output scale %s -> %s).", np.round(ratio, 2), old, new)


def _lineage(parent: ModelBundle | None) -> list[dict]:
    """The training records of the runs this one continues, oldest first."""
    if parent is None:
        return []
    record = dict(parent.metadata.training)
    earlier = list(record.pop("lineage", []) or [])
    keep = ("preset", "data", "catalog", "n_train", "wall_time_s", "machine", "backend", "augmentation",
            "sample_passes")
    entry = {k: record[k] for k in keep if k in record}
    if "sample_passes" not in entry and "stages" in record and "config" in record:
        stages = record["stages"]
        n_iso = record.get("n_train", {}).get("isolated", 0)
        n_bl = record.get("n_train", {}).get("blended", 0)
        entry["sample_passes"] = int(sum(stages.get(k, {}).get("epochs_run", 0) for k in ("vae_warmup", "vae")) * n_iso
                                     + stages.get("deblender", {}).get("epochs_run", 0) * n_bl)
    return earlier + [entry]


def _sample_passes(results: dict, n_iso: int, n_bl: int) -> int:
    """Stamps seen by the image networks in this run (the flow's latent vectors not counted).

    Epochs are counted from each stage's history, not its epoch index: a stage continued from
    another run's snapshot (``first_epoch``) starts its index where that run stopped.
    """
    vae = sum(len(results[k].history) for k in ("vae_warmup", "vae") if k in results)
    return int(vae * n_iso + (len(results["deblender"].history) if "deblender" in results else 0) * n_bl)


def _continued_epoch(parent: ModelBundle | None, config: TrainingConfig) -> int:
    """The VAE epoch at which a run continuing ``parent``'s schedule starts (``continue_schedule``)."""
    if parent is None:
        raise MadnessValueError("continue_schedule continues a run: give init_from (its snapshot or bundle).")
    record = parent.metadata.training
    stage = (record.get("stages") or {}).get("vae")
    theirs = (record.get("config") or {}).get("vae")
    mine = json.loads(json.dumps(config.as_dict()))["vae"]
    if stage is None or theirs is None:
        raise MadnessValueError("continue_schedule: the init_from bundle records no VAE stage to continue.")
    if json.loads(json.dumps(theirs)) != mine:
        raise MadnessValueError(f"continue_schedule: the init_from bundle's VAE schedule {theirs} is not this run's "
                                f"{mine}; continue it with the same preset and options.")
    if stage.get("stopped_early") or stage["epochs_run"] >= config.vae.max_epochs:
        raise MadnessValueError(f"continue_schedule: the init_from bundle's VAE stage is finished ({stage['epochs_run']} "
                                f"of {config.vae.max_epochs} epochs{', stopped early' if stage.get('stopped_early') else ''}).")
    return int(stage["epochs_run"])


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

    params, prediction = vae.predict(xv_iso, batch_size=256, verbose=0)[:2]  # a teacher adds a third
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
        "vae_val_chi2_median_per_pixel": float(np.median(chi2) / pixels),
        "vae_val_chi2_fraction": _chi2_fraction(chi2, _signal_chi2(yv_iso, sky_net, scale)),
        "vae_val_kl": float(kl.mean()),
        "vae_val_ssim": float(ssim.mean()),
        "flow_val_nll": float(-log_prob.mean()),
        "deblender_val_latent_l2": float(np.mean(np.sum((z_deb - target_val) ** 2, axis=-1))),
        "deblender_val_chi2_per_pixel": float(deb_chi2.mean() / pixels),
        "deblender_val_median_abs_dflux_r": float(np.median(np.abs(flux_deb[bright] / flux_true[bright] - 1))),
    }
