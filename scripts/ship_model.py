"""Ship a trained run as the packaged default bundle and write its model card.

Usage::

    python scripts/ship_model.py RUN_DIR [--card doc/model-card.md] [--no-ship]

Copies ``RUN_DIR/bundle`` to ``python/lsst/meas/madness/data/bundles/lsst-default`` (with the
VAE's training encoder, which the deblender does not use but a warm-started run continues from:
``madness train --init-from default``; ``--no-encoder`` drops it), copies the run's figures to
``doc/figures/model/`` and writes the model card from ``RUN_DIR/summary.json``, the bundle
metadata, the per-stage CSV logs, the data manifests and the diagnostics of
``scripts/model_diagnostics.py`` (``--diagnostics``, one JSON per model compared, the shipped
one first).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def _stage_table(run: Path) -> list[str]:
    rows = ["| stage | epochs run | best epoch | best validation score (monitor) | stopped early | stopped for time "
            "| wall time |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    summary = json.loads((run / "summary.json").read_text())
    order = ["vae_warmup", "vae", "flow", "deblender"]
    for name in sorted(summary["stages"], key=lambda k: order.index(k) if k in order else len(order)):
        stage = summary["stages"][name]
        rows.append(f"| {name} | {stage['epochs_run']} | {stage['best_epoch']} | {stage['best_val_loss']:.6g} "
                    f"({stage.get('monitor') or 'val_loss'}) | "
                    f"{stage['stopped_early']} | {stage.get('stopped_for_time', False)} | {stage['seconds'] / 60:.1f} min |")
    return rows


def _last_rows(run: Path, stage: str, keys: list[str]) -> str:
    path = run / "logs" / f"{stage}.csv"
    with open(path) as f:
        rows = list(csv.DictReader(f))
    out = ["| epoch | " + " | ".join(keys) + " |", "| --- " * (len(keys) + 1) + "|"]
    for row in rows:
        out.append(f"| {row['epoch']} | " + " | ".join(f"{float(row[k]):.4g}" for k in keys) + " |")
    return "\n".join(out)


def _schedule(stage: dict) -> str:
    if stage.get("schedule", "step") == "cosine":
        shape = f"cosine to x{stage.get('min_factor', 0.05):g}"
    else:
        shape = f"/{stage.get('decay_factor', 2.5):g} every {stage['decay_every']}"
    ramp = f", {stage['warmup_epochs']}-epoch ramp" if stage.get("warmup_epochs") else ""
    return (f"<= {stage['max_epochs']} epochs (lr {stage['learning_rate']:g}, {shape}{ramp}, "
            f"patience {stage['patience']}, batch {stage['batch_size']})")


def _lineage_lines(training: dict) -> list[str]:
    lineage = training.get("lineage") or []
    if not lineage:
        return []
    earlier = "; ".join(f"`{p.get('preset')}` on {p.get('data')} ({p.get('wall_time_s', 0) / 3600:.2f} h, "
                        f"{p.get('sample_passes', 0):,} stamp passes)" for p in lineage)
    return [f"- Continues (warm start) from: {earlier}. All training together: "
            f"{training.get('total_wall_time_s', 0) / 3600:.2f} h, {training.get('total_sample_passes', 0):,} "
            "stamp passes through the image networks."]


def _peer_lines(diag: dict) -> list[str]:
    """MADNESS beside scarlet_lite (the Rubin DRP deblender) on the same fields, when it ran."""
    methods = diag["methods"]
    if "scarlet_lite" not in methods:
        return []
    bands = diag["bands"]
    lines = ["Beside scarlet_lite on the same fields (mean / median abs(dF/F), kappa <= 5; mean cosine and "
             "std of the e1 residual in r):", "",
             "| method | " + " | ".join(bands) + " | cosine r | std e1 r |",
             "| --- | " + " | ".join("---" for _ in bands) + " | --- | --- |"]
    for name in ("madness", "scarlet_lite"):
        per = methods[name]["bands"]
        cells = " | ".join(f"{per[b]['mean_abs_flux_residual']:.3f} / {per[b]['median_abs_flux_residual']:.4f}"
                           for b in bands)
        lines.append(f"| {name} | {cells} | {per['r']['mean_cosine']:.3f} | {per['r']['std_e1_residual']:.3f} |")
    return lines + [""]


def _diagnostics_lines(paths: list[Path]) -> list[str]:
    if not paths:
        return []
    sys.path.insert(0, str(HERE / "scripts"))
    from model_diagnostics import largest_errors_table, markdown_table

    lines = ["## Where the error lives", "",
             "`scripts/model_diagnostics.py` on validation TestFields (never used to report results): the decoder's",
             "reach (each galaxy fitted alone on its noiseless image, 200 MAP steps: what the decoder can draw at all),",
             "the VAE-deblender alone and MADNESS (MAP) in the blended fields, and no deblending; abs(dF/F) in 8-px",
             "apertures for the reach, the paper's apertures and kappa <= 5 in the fields. Which galaxies carry the",
             "mean, and what does not limit it (the optimiser, the noise model): [error-budget.md](error-budget.md).",
             ""]
    for path in paths:
        diag = json.loads(Path(path).read_text())
        lines += [f"**{diag['label']}** ({diag['n_fields']} fields of `{diag['fields']}`, "
                  f"{diag['reach']['n_galaxies']} galaxies in reach):", "", markdown_table(diag), ""]
        lines += _peer_lines(diag)
        if diag.get("largest_errors"):
            lines += ["Which galaxies carry the mean (the largest MADNESS errors and what surrounds them):", "",
                      largest_errors_table(diag["largest_errors"]), ""]
    return lines


def _flattening_lines() -> list[str]:
    """The learning curves of every decoder on the suite (`scripts/plot_selection_scores.py`)."""
    if not (HERE / "doc" / "figures" / "model" / "selection_scores.png").exists():
        return []
    return ["## Where training flattens", "",
            "The selection score of every decoder trained on this suite, across continuations",
            "(`scripts/plot_selection_scores.py`); where the recipe flattens and what would close the rest:",
            "[training.md](training.md#where-the-2-core-recipe-flattens-and-what-would-close-the-rest).", "",
            "![selection scores](figures/model/selection_scores.png)", ""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--card", type=Path, default=HERE / "doc" / "model-card.md")
    parser.add_argument("--no-ship", action="store_true", help="write the card only")
    parser.add_argument("--data", type=Path, default=None,
                        help="the suite directory the run trained on (for its suite.json)")
    parser.add_argument("--data-note", default="", help="extra line for the Data section (e.g. the command)")
    parser.add_argument("--limits", default="", help="extra paragraph for the Limits section")
    parser.add_argument("--no-encoder", action="store_true", help="ship without the training encoder")
    parser.add_argument("--diagnostics", type=Path, nargs="*", default=[],
                        help="scripts/model_diagnostics.py JSON files: this model first, then the ones it is "
                             "compared with")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE / "python"))
    from lsst.meas.madness.io.bundle import ModelBundle, default_bundle_path

    run = args.run
    bundle = ModelBundle.load(run / "bundle")
    if not args.no_ship:
        target = default_bundle_path()
        shipped = ModelBundle(bundle.metadata, bundle.decoder, bundle.flow,
                              deblender_encoder=bundle.deblender_encoder,
                              encoder=None if args.no_encoder else bundle.encoder)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shipped.save(target)
        total = sum(p.stat().st_size for p in target.iterdir())
        print(f"shipped {target} ({total / 1e6:.1f} MB)")
    figures = HERE / "doc" / "figures" / "model"
    figures.mkdir(parents=True, exist_ok=True)
    for png in (run / "figures").glob("*.png"):
        shutil.copy(png, figures / png.name)

    meta = bundle.metadata
    training = dict(meta.training)
    config = training["config"]
    summary = json.loads((run / "summary.json").read_text())
    # Runs resumed before train.py counted earlier processes recorded only the resume's clock;
    # the stages' own seconds cover every process.
    stage_seconds = sum(stage["seconds"] for stage in summary["stages"].values())
    if stage_seconds > training.get("wall_time_s", 0):
        earlier = training.get("total_wall_time_s", 0) - training.get("wall_time_s", 0)
        training["wall_time_s"] = stage_seconds
        training["total_wall_time_s"] = earlier + stage_seconds
    kept = [name for name in ("flow", "deblender") if name not in training["stages"]]
    catalog = training.get("catalog", {})
    data = args.data if args.data is not None else Path(training["data"])
    suite = json.loads((data / "suite.json").read_text()) if (data / "suite.json").exists() else {}
    metrics = meta.metrics
    lines = [
        "# Model card: the packaged default LSST model",
        "",
        "`MadnessDeblender.from_bundle()` with no path loads this model",
        "(`python/lsst/meas/madness/data/bundles/lsst-default`). Generated by",
        f"`python scripts/ship_model.py {run}` from the training run's own records.",
        "",
        "## What it is",
        "",
        f"- Bands {''.join(meta.bands)}, {meta.stamp_size}x{meta.stamp_size} stamps at {meta.pixel_scale}\"/px, "
        f"latent dimension {meta.latent_dim}, fluxes divided by {meta.normalization:g}.",
        f"- Networks at the paper's sizes: decoder {bundle.decoder.count_params():,}, flow "
        f"{bundle.flow.count_params():,}, VAE-deblender encoder {bundle.deblender_encoder.count_params():,} "
        "parameters; weights stored as float16.",
        f"- Conditions: {meta.survey} 10-year (SurveyCodex; paper table 1), gain 1, sky-subtracted Poisson noise.",
        f"- Decoder output activation: {bundle.decoder.output_activation}"
        + (f", scaled per band by {', '.join(f'{b} {v:.3g}' for b, v in zip(meta.bands, bundle.decoder.output_scale))} "
           f"network units ({training['config'].get('decoder_output_scale_sigma')} of each band's sky sigma; "
           "`BandScaledReLU`)." if bundle.decoder.output_scale else "."),
        f"- Trained with the `{training['preset']}` preset on {training['backend']} "
        f"({training['machine']}), {training['wall_time_s'] / 3600:.2f} h wall time, "
        f"meas_madness {meta.code_version}, {meta.created}.",
        *_lineage_lines(training),
        "",
        "## Data",
        "",
        f"- Catalogue: `{catalog.get('source', '')}`, fingerprint {catalog.get('fingerprint', '')}; "
        "a CatSim-format catalogue from the calibrated SkyPy generator ([catalog.md](catalog.md)).",
    ]
    if suite:
        cat = suite["catalog"]
        req = suite["request"]
        lines += [
            f"- Suite: `madness simulate datasets --area {req.get('area_deg2')} --seed {req['seed']} "
            f"--n-train {req.get('n_train')} --n-validation {req.get('n_validation')}`: {cat['n_input']:,} galaxies, "
            f"{cat['n_after_snr_cut']:,} after SNR >= {req['min_snr']} in r, split {cat['splits']}.",
        ]
    lines += [
        f"- Used for training: {training['n_train']['isolated']:,} IsolatedSims and "
        f"{training['n_train']['blended']:,} BlendedSims stamps; validation {training['n_validation']['isolated']:,} "
        f"and {training['n_validation']['blended']:,}.",
        *([f"- {args.data_note}"] if args.data_note else []),
        "",
        "## Training",
        "",
        f"Preset `{config['name']}` ([training.md](training.md)): "
        + ("" if "vae_warmup" in training["stages"] else "warm start (no SSIM warm-up); ")
        + ", ".join(f"{stage} {_schedule(config[key])}" for stage, key in
                    (("warm-up", "vae_warmup"), ("VAE", "vae"), ("flow", "flow"), ("VAE-deblender", "deblender"))
                    if key in training["stages"])
        + f"; beta {config['beta']}, seed {config['seed']}"
        + (f"; fresh noise and the {training['augmentation']['symmetries']} symmetries of the square every batch"
           if training.get("augmentation") else "")
        + (f"; time budget {training['time_budget_s'] / 3600:.2f} h" if training.get("time_budget_s") else "")
        + "."
        + (f" Not retrained (`--freeze-encoder`: the encoder and the latent space stay the warm start's): "
           f"{' and '.join('the flow' if k == 'flow' else 'the VAE-deblender' for k in kept)}, taken from the "
           "warm-start bundle." if kept else ""),
        "",
        *_stage_table(run),
        "",
        "VAE validation per epoch (chi2 per pixel of the decoded mean against the noiseless galaxy, KL, SSIM,",
        "fraction of validation stamps whose u band is dark):",
        "",
        *([_last_rows(run, "vae_warmup", ["alpha", "val_chi2_per_pixel", "val_kl", "val_ssim"]), ""]
          if (run / "logs" / "vae_warmup.csv").exists() else []),
        _last_rows(run, "vae", ["learning_rate", "val_chi2_per_pixel", "val_kl", "val_ssim", "val_zero_frac_u"]),
        "",
        *_diagnostics_lines(args.diagnostics),
        *_flattening_lines(),
        "## Validation metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {k} | {v:.4g} |" for k, v in metrics.items()],
        "",
        "`vae_val_chi2_per_pixel` is the mean over validation IsolatedSims of the decoded mean's",
        "chi^2 against the noiseless galaxy per pixel and band (0 would be perfect; 1 is one sky-plus-",
        "Poisson sigma per pixel); `deblender_*` decode the VAE-deblender's prediction on validation",
        "BlendedSims against the isolated central galaxy; `*_dflux_r` is the median |dF/F| of the",
        "total r flux of that prediction.",
        "",
        "## Intended use and limits",
        "",
        "- LSST 10-year coadd depth, the SurveyCodex PSF FWHM of each band, 0.2\"/px, sky-subtracted",
        "  images in electrons (gain 1). Other depths, PSFs or calibrations are out of distribution:",
        "  train a bundle for them (`madness train`).",
        "- Galaxies like the SkyPy/CatSim-like bulge+disk population of the training catalogue; no",
        "  stars, AGN-dominated sources, irregular morphologies or sources larger than the 45x45 stamp.",
        *([f"- {args.limits}"] if args.limits else []),
        "- Deblending quality on unseen TestFields, side by side with every peer and no deblending, on",
        "  the training population and on another one (larger, flatter, more bulge-dominated galaxies):",
        "  [evaluation.md](evaluation.md).",
        "",
        "## Figures",
        "",
        "![learning curves](figures/model/learning_curves.png)",
        "",
        "Paper fig. 5: validation latents against the flow.",
        "![latents vs flow](figures/model/latents_vs_flow.png)",
        "",
        "Paper fig. 6: decoded samples of N(0, I) and of the flow.",
        "![samples](figures/model/flow_samples.png)",
        "",
        "Paper fig. 8: VAE-deblender predictions on validation BlendedSims.",
        "![deblender](figures/model/deblender_predictions.png)",
        "",
    ]
    args.card.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
