"""The ``madness`` command line: ``info``, ``demo``, ``simulate catalog|datasets``, ``train``,
``evaluate``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _info(args: argparse.Namespace) -> int:
    import platform

    import keras
    import numpy

    from . import __version__
    from .backend import backend_name, device_description
    from .io.bundle import METADATA_FILE, ModelBundle, default_bundle_path

    print(f"meas_madness {__version__}")
    print(f"python       {platform.python_version()} ({sys.executable})")
    print(f"numpy        {numpy.__version__}")
    print(f"keras        {keras.__version__}  backend: {backend_name()}  devices: {device_description()}")
    for mod in ("tensorflow", "jax", "galsim", "astropy", "lsst.pipe.base", "lsst.daf.butler"):
        try:
            module = __import__(mod, fromlist=["__version__"])
            print(f"{mod:<12} {getattr(module, '__version__', 'installed')}")
        except ImportError:
            print(f"{mod:<12} not installed")
    path = args.bundle or default_bundle_path()
    if args.bundle is None and not (default_bundle_path() / METADATA_FILE).exists():
        print(f"bundle       none: no packaged default bundle yet ({default_bundle_path()})")
        return 0
    bundle = ModelBundle.load(path)
    meta = bundle.metadata
    print(f"bundle       {path}")
    print(f"  bands {''.join(meta.bands)}, stamp {meta.stamp_size}px at {meta.pixel_scale}\"/px, "
          f"latent {meta.latent_dim}, trained: {meta.trained}, created {meta.created}")
    print(f"  {meta.description}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output, seed=args.seed, size=args.size, n_galaxies=args.galaxies, min_snr=args.min_snr,
             bundle=args.bundle, config=args.config, subpixel=args.subpixel)
    return 0


def _simulate_catalog(args: argparse.Namespace) -> int:
    import os
    import time
    from pathlib import Path

    from .simulation.catalog import apply_snr_cut
    from .simulation.skypy_catalog import generate_catsim_catalog

    start = time.perf_counter()
    params = _catalog_parameters(args.param)
    table = generate_catsim_catalog(args.area, args.seed, mag_limit_r=args.mag_limit, params=params)
    n_all = len(table)
    if args.min_snr is not None:
        table = apply_snr_cut(table, args.min_snr)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    table.write(tmp, format="fits", overwrite=True)
    os.replace(tmp, output)
    cut = "" if args.min_snr is None else f", {len(table)} with SNR_r >= {args.min_snr}"
    print(f"{output}: {n_all} galaxies to r < {args.mag_limit} over {args.area} deg^2{cut} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def _catalog_parameters(items: list[str]):
    """``["size_scale=1.2", "blue_ellipticity=(0.4, 3.5)"]`` -> `SkyPyCatalogParameters` with those fields."""
    import ast
    import dataclasses

    from .simulation.skypy_catalog import SkyPyCatalogParameters

    if not items:
        return None
    fields = {f.name for f in dataclasses.fields(SkyPyCatalogParameters)}
    overrides = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in fields:
            raise SystemExit(f"madness simulate catalog: --param {item!r} is not NAME=VALUE with NAME a field of "
                             f"SkyPyCatalogParameters ({', '.join(sorted(fields))})")
        try:
            overrides[name] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise SystemExit(f"madness simulate catalog: --param {item!r}: {text!r} is not a Python literal") from None
    from .errors import MadnessError

    try:  # SkyPyCatalogParameters validates the values; its errors name the field
        return dataclasses.replace(SkyPyCatalogParameters(), **overrides)
    except MadnessError as error:
        raise SystemExit(f"madness simulate catalog: {error}") from None


def _simulate_datasets(args: argparse.Namespace) -> int:
    import json

    from .simulation.catalog import read_catsim_catalog
    from .simulation.suite import simulate_suite

    if (args.catalog is None) == (args.area is None):
        raise SystemExit("madness simulate datasets: give --catalog FILE or --area DEG2 (one of them).")
    from .simulation.datasets import DATASET_KINDS

    catalog = None if args.catalog is None else read_catsim_catalog(args.catalog)
    configs = {}
    for kind, size in (("isolated", args.shard_size), ("blended", args.shard_size),
                       ("testfields", args.fields_per_shard)):
        changes = {} if size is None else {"shard_size": size}
        if args.knots:
            changes["knots"] = args.knots
        if changes:
            configs[kind] = DATASET_KINDS[kind](**changes)
    datasets = simulate_suite(
        args.output, catalog=catalog, area_deg2=args.area, seed=args.seed, min_snr=args.min_snr,
        kinds=args.kinds, n_train=args.n_train, n_validation=args.n_validation,
        n_train_blended=args.n_train_blended,
        n_test_fields=args.n_test_fields, configs=configs, workers=args.workers, progress=not args.no_progress,
        catalog_source=args.catalog or "",
    )
    for name, data in datasets.items():
        info = data.manifest.info
        rate = (info.get("last_run") or {}).get("items_per_second")
        print(f"{name:22s} {len(data):7d} {'fields' if data.kind == 'testfields' else 'stamps'}"
              f"  {info.get('bytes', 0) / 1e6:8.1f} MB" + (f"  {rate:.1f}/s" if rate else ""))
    summary = json.loads((Path(args.output) / "suite.json").read_text())
    print(f"catalogue: {summary['catalog']['n_input']} galaxies, {summary['catalog']['n_after_snr_cut']} after "
          f"the SNR cut, splits {summary['catalog']['splits']}; {args.output}/examples.png")
    return 0


def _duration(text: str | None) -> float | None:
    """``"7200"``, ``"90m"``, ``"2h"``, ``"45s"`` -> seconds."""
    if text is None:
        return None
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise SystemExit(f"madness: not a duration: {text!r} (e.g. 7200, 90m, 2h)") from None
    if not value > 0:
        raise SystemExit(f"madness: the time budget must be positive, not {text!r}")
    return value


def _bundle_argument(value: str | None):
    """A bundle option's value: ``"default"`` is the packaged bundle, anything else a path (or None)."""
    if value != "default":
        return value
    from .io.bundle import default_bundle_path

    return default_bundle_path()


def _train(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import logging

    from .errors import MadnessValueError
    from .training import preset, train_madness

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.max_train is not None:
        overrides["max_train"] = args.max_train
    if args.max_validation is not None:
        overrides["max_validation"] = args.max_validation
    if args.precision is not None:
        overrides["precision"] = args.precision
    if args.output_scale_sigma is not None:
        overrides["decoder_output_scale_sigma"] = args.output_scale_sigma
    if args.freeze_encoder:
        overrides["freeze_encoder"] = True
    if args.decoder_filters is not None:
        try:
            overrides["decoder_filters"] = tuple(int(f) for f in args.decoder_filters.split(","))
        except ValueError:
            raise SystemExit(f"madness train: --decoder-filters takes integers like 96,64,32, not "
                             f"{args.decoder_filters!r}") from None
    if args.distill is not None:
        overrides["distill_weight"] = args.distill
    if args.distill_spread is not None:
        overrides["distill_spread"] = args.distill_spread
    config = preset(args.preset, **overrides)
    if args.vae_epochs is not None:
        config = dataclasses.replace(config, vae=dataclasses.replace(config.vae, max_epochs=args.vae_epochs))
    if args.vae_lr is not None:
        if not args.vae_lr > 0:
            raise MadnessValueError(f"--vae-lr must be positive, not {args.vae_lr}.")
        config = dataclasses.replace(config, vae=dataclasses.replace(config.vae, learning_rate=args.vae_lr))
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise MadnessValueError(f"--batch-size must be positive, not {args.batch_size}.")
        config = dataclasses.replace(config, **{stage: dataclasses.replace(getattr(config, stage),
                                                                           batch_size=args.batch_size)
                                                for stage in ("vae_warmup", "vae")})
    if args.vae_ema is not None:
        config = dataclasses.replace(config, vae=dataclasses.replace(config.vae, ema_momentum=args.vae_ema))
    bundle = train_madness(args.data, args.output, config, progress=not args.no_progress,
                           figures=not args.no_figures, init_from=_bundle_argument(args.init_from),
                           time_budget_s=_duration(args.time_budget), teacher_from=_bundle_argument(args.teacher),
                           data_workers=args.data_workers, continue_schedule=args.continue_schedule)
    print(json.dumps(bundle.metadata.metrics, indent=1))
    print(f"bundle: {Path(args.output) / 'bundle'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json
    import logging
    import shlex

    from .engine.settings import MapSettings
    from .errors import MadnessError
    from .evaluation.fields import iter_test_fields, simulate_test_fields
    from .evaluation.methods import METHOD_NAMES, check_psf_size
    from .evaluation.report import write_evaluation
    from .evaluation.runner import run_evaluation
    from .simulation import SimulatedDataset

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    output = Path(args.output)
    if args.simulate is not None:
        from .simulation import TestFieldsConfig

        dataset = simulate_test_fields(output / "fields", args.simulate, args.seed, workers=args.workers,
                                       progress=not args.no_progress, config=TestFieldsConfig(subpixel=args.subpixel))
        fields_dir = dataset.directory
        source = f"{args.simulate} TestFields simulated with seed {args.seed} ({fields_dir})"
    else:
        dataset = SimulatedDataset(args.fields)
        fields_dir = dataset.directory
        source = f"TestFields {fields_dir}"
    n_fields = len(dataset) if args.max_fields is None else min(len(dataset), args.max_fields)
    bands = None
    if args.bands:
        bands = [c for b in args.bands for c in (list(b) if len(b) > 1 and b not in dataset.bands else [b])]
    methods = args.methods or list(METHOD_NAMES)
    try:
        map_settings = MapSettings.parse_overrides(args.map_setting)
    except MadnessError as error:
        raise SystemExit(f"madness evaluate: --map-setting: {error}") from None
    try:
        check_psf_size(args.psf_size)
    except MadnessError as error:
        raise SystemExit(f"madness evaluate: --psf-size: {error}") from None
    result = run_evaluation(iter_test_fields(fields_dir, max_fields=args.max_fields), methods,
                            bundle=args.bundle, bands=bands, progress=not args.no_progress, n_fields=n_fields,
                            info={"fields": source, "bundle": args.bundle or "packaged default",
                                  "precision": args.precision, "map_settings": map_settings,
                                  "psf_size": args.psf_size,
                                  "command": "madness " + " ".join(shlex.quote(a) for a in args.argv)},
                            checkpoint=output / "partial", restart=args.restart, rerun=args.rerun or (),
                            precision=args.precision, map_settings=map_settings, psf_size=args.psf_size)
    paths = write_evaluation(result, output, figures=not args.no_figures)
    summary = json.loads(paths["summary"].read_text())
    band = "r" if "r" in result.bands else result.bands[0]

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    print(f"{result.info['n_fields']} fields, {result.info['n_galaxies']} galaxies; {band} band, kappa <= 5:")
    print(f"{'method':15s} {'status':7s} {'|dF/F|':>8s} {'cosine':>7s} {'std e1':>7s} {'s/galaxy':>9s} "
          f"{'peak MB':>8s}")
    for name, m in summary["methods"].items():
        if m["status"] != "ok" and "bands" not in m:
            print(f"{name:15s} {m['status']:7s} {m['reason']}")
            continue
        s = m["bands"][band]
        r = m.get("resources") or {}
        print(f"{name:15s} {m['status']:7s} {fmt(s['mean_abs_flux_residual'], '8.4f')} "
              f"{fmt(s['mean_cosine'], '7.3f')} {fmt(s['std_e1_residual'], '7.3f')} "
              f"{fmt(r.get('seconds_per_galaxy'), '9.4f')} {fmt(r.get('peak_rss_mb'), '8.0f')}")
    if summary["absent"]:
        print("absent: " + "; ".join(f"{n} ({reason})" for n, reason in summary["absent"].items()))
    print(f"report: {paths['report']}  summary: {paths['summary']}  measurements: {paths['measurements']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``madness`` command."""
    parser = argparse.ArgumentParser(prog="madness", description="MADNESS galaxy deblender.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, Keras backend, devices and the model bundle in use")
    info.add_argument("--bundle", default=None, help="bundle directory (default: the packaged one)")
    info.set_defaults(func=_info)
    demo = sub.add_parser(
        "demo", help="simulate an LSST patch, run pipelines/madness.yaml in a local butler, plot and score"
    )
    demo.add_argument("--output", default="demo-output", help="output directory")
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulated patch")
    demo.add_argument("--size", type=int, default=301, help="side of the patch in pixels (odd)")
    demo.add_argument("--galaxies", type=int, default=40, help="galaxies in the patch")
    demo.add_argument("--min-snr", type=float, default=10.0,
                      help="appendix-A SNR cut in r (the paper's 10); every galaxy passing it is scored")
    demo.add_argument("--bundle", default=None, help="model bundle directory (default: the packaged one)")
    demo.add_argument("-c", "--config", action="append", default=[], metavar="LABEL:FIELD=VALUE",
                      help="pipetask config override, repeatable (e.g. deblend:maxIter=100)")
    demo.add_argument("--subpixel", action="store_true",
                      help="draw the galaxies at random sub-pixel positions instead of pixel centres")
    demo.set_defaults(func=_demo)

    simulate = sub.add_parser("simulate", help="CatSim-format catalogues and the paper's datasets (BTK)")
    sim = simulate.add_subparsers(dest="what", required=True)
    cat = sim.add_parser("catalog", help="generate a CatSim-format catalogue with SkyPy")
    cat.add_argument("--area", type=float, required=True, help="square degrees")
    cat.add_argument("--seed", type=int, default=0)
    cat.add_argument("--mag-limit", type=float, default=28.0, help="r_ab limit (CatSim's is 28)")
    cat.add_argument("--min-snr", type=float, default=None, help="also apply the appendix-A SNR cut in r")
    cat.add_argument("--output", required=True, help="output FITS file")
    cat.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="override a field of SkyPyCatalogParameters, repeatable (e.g. size_scale=1.2, "
                          "'blue_ellipticity=(0.4, 3.5)'): another galaxy population")
    cat.set_defaults(func=_simulate_catalog)
    ds = sim.add_parser("datasets", help="SNR cut, train/validation/test split, IsolatedSims, BlendedSims, "
                                         "TestFields in resumable shards")
    ds.add_argument("--output", required=True, help="suite directory (rerun to resume)")
    ds.add_argument("--catalog", default=None, help="CatSim-format catalogue file (FITS or any astropy table)")
    ds.add_argument("--area", type=float, default=None, help="generate the catalogue over this many deg^2")
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--min-snr", type=float, default=10.0, help="appendix-A SNR cut in r (paper: 10)")
    ds.add_argument("--kinds", nargs="+", default=["isolated", "blended", "testfields"],
                    choices=["isolated", "blended", "testfields"])
    ds.add_argument("--n-train", type=int, default=None, help="cap on stamps per training dataset")
    ds.add_argument("--n-train-blended", type=int, default=None,
                    help="cap on BlendedSims training stamps (default: --n-train)")
    ds.add_argument("--n-validation", type=int, default=None, help="cap on stamps per validation dataset")
    ds.add_argument("--n-test-fields", type=int, default=None, help="number of TestFields (default: all fit)")
    ds.add_argument("--shard-size", type=int, default=None, help="stamps per shard (default 2000)")
    ds.add_argument("--fields-per-shard", type=int, default=None, help="TestFields per shard (default 25)")
    ds.add_argument("--knots", type=float, default=0.0, metavar="FRACTION",
                    help="draw this fraction of every disc's flux as star-forming knots (GalSim RandomKnots): "
                         "asymmetric galaxies, another population for the evaluation (default 0: BTK's)")
    ds.add_argument("--workers", type=int, default=1, help="worker processes")
    ds.add_argument("--no-progress", action="store_true", help="no progress bars")
    ds.set_defaults(func=_simulate_datasets)
    train = sub.add_parser("train", help="the paper's training stages -> a model bundle (resumable)")
    train.add_argument("--data", required=True, help="directory from `madness simulate datasets`")
    train.add_argument("--output", required=True, help="run directory (rerun the same command to resume)")
    train.add_argument("--preset", default="cpu2", choices=["paper", "cpu", "cpu2", "cpu3", "tiny"],
                       help="paper: full schedule (GPU); cpu: the first 2-core recipe (0.6 h); cpu2: fresh noise, "
                            "linear output, cosine schedule, sized by --time-budget; cpu3: cpu2 with the paper's ReLU "
                            "output scaled per band to the sky noise (exact zeros; u cannot die); tiny: smoke tests")
    train.add_argument("--init-from", default=None, metavar="BUNDLE",
                       help="warm start from this bundle ('default' for the packaged one); skips the SSIM warm-up")
    train.add_argument("--continue-schedule", action="store_true",
                       help="with --init-from a run's snapshot (RUN/snapshot) or bundle: take up its VAE schedule at "
                            "the epoch it reached instead of starting it again (a run continued on a new machine)")
    train.add_argument("--time-budget", default=None, metavar="DURATION",
                       help="training time for the whole run, e.g. 7200, 90m, 2h (stages end cleanly inside it)")
    train.add_argument("--vae-epochs", type=int, default=None,
                       help="epochs of the VAE stage (its cosine schedule spans them)")
    train.add_argument("--vae-lr", type=float, default=None,
                       help="peak learning rate of the VAE stage (a continuation starts lower than a new run)")
    train.add_argument("--batch-size", type=int, default=None,
                       help="stamps per step of the VAE stages (default: the preset's; a GPU wants ~1,000)")
    train.add_argument("--vae-ema", type=float, default=None, metavar="MOMENTUM",
                       help="average the VAE's weights over steps with this momentum (e.g. 0.999); each epoch ends on "
                            "the average")
    train.add_argument("--precision", default=None, choices=["float32", "mixed_bfloat16"],
                       help="compute precision of the image networks while training (mixed_bfloat16: about 2x "
                            "faster on CPUs with AMX-BF16; bundles are float32 either way)")
    train.add_argument("--output-scale-sigma", type=float, default=None, metavar="FRACTION",
                       help="scale of the decoder's ReLU output per band, as a fraction of the band's sky sigma "
                            "(cpu3: 0.1); a warm start rescales the output layer so it first draws what its parent drew")
    train.add_argument("--freeze-encoder", action="store_true",
                       help="continue only the decoder (with --init-from): the encoder, the flow and the VAE-deblender "
                            "stay the warm-start bundle's, so the latent space they share does not move")
    train.add_argument("--decoder-filters", default=None, metavar="F1,F2,F3",
                       help="the decoder's transposed-convolution filters (paper: 128,96,64); with --freeze-encoder "
                            "a decoder of another width starts from scratch in the warm-start bundle's latent space")
    train.add_argument("--distill", type=float, default=None, metavar="WEIGHT",
                       help="with --freeze-encoder: weight in [0, 1] of the warm-start decoder's stamps as the VAE "
                            "stage's target beside the truth (distillation into a new decoder)")
    train.add_argument("--teacher", default=None, metavar="BUNDLE",
                       help="with --distill: the bundle whose decoder teaches ('default': the packaged one), "
                            "instead of --init-from's; it must share --init-from's latent space")
    train.add_argument("--distill-spread", type=float, default=None, metavar="SIGMA",
                       help="with --distill: also distil at latents z + SIGMA * N(0, 1) beside each posterior "
                            "sample z, so that the new decoder learns its parent away from the encoder's latents "
                            "(where the MAP also goes)")
    train.add_argument("--data-workers", type=int, default=None, metavar="N",
                       help="threads making the training batches (default: 1 on CPUs, up to 8 beside a GPU, where "
                            "one thread drawing the noise is slower than the step); the batches do not depend on it")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--max-train", type=int, default=None, help="cap on training stamps per dataset")
    train.add_argument("--max-validation", type=int, default=None, help="cap on validation stamps")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--no-figures", action="store_true")
    train.set_defaults(func=_train)
    from .evaluation.methods import PSF_SIZE  # numpy only: the default of --psf-size

    evaluate = sub.add_parser("evaluate", help="every deblender side by side on TestFields: the paper's "
                                               "section-4 metrics, time and memory, report and figures")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--fields", default=None,
                        help="a TestFields dataset directory (madness simulate datasets)")
    source.add_argument("--simulate", type=int, default=None, metavar="N",
                        help="simulate N TestFields first (into OUTPUT/fields)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of --simulate")
    evaluate.add_argument("--subpixel", action="store_true",
                          help="--simulate draws the galaxies at random sub-pixel positions (true float centres)")
    evaluate.add_argument("--methods", nargs="+", default=None,
                          choices=["blended", "vae_deblender", "madness", "scarlet2", "scarlet_lite",
                                   "scarlet"],
                          help="methods to compare (default: all; those not installed are reported absent)")
    evaluate.add_argument("--bands", nargs="+", default=None,
                          help="bands to measure and report, e.g. 'g r i' or 'gri' (default: all; deblending "
                               "always uses every band)")
    evaluate.add_argument("--max-fields", type=int, default=None, help="evaluate only the first N fields")
    evaluate.add_argument("--bundle", default=None, help="MADNESS model bundle (default: the packaged one)")
    evaluate.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"],
                          help="compute precision of MADNESS's MAP steps (MapSettings.precision; "
                               "mixed_bfloat16: the decoder in bfloat16, faster where the CPU has bfloat16 "
                               "instructions)")
    evaluate.add_argument("--map-setting", action="append", default=[], metavar="KEY=VALUE",
                          help="a MapSettings field of MADNESS's engine, repeatable (e.g. max_iter=60, "
                               "second_start_rate=0.02); part of the run's signature like --precision")
    evaluate.add_argument("--psf-size", type=int, default=PSF_SIZE, metavar="PIXELS",
                          help=f"side (odd) of the PSF images every method is given (default {PSF_SIZE}); MADNESS "
                               "draws each galaxy's light beyond its 45-px stamp from a wider one (PSF wings); "
                               "part of the run's signature")
    evaluate.add_argument("--restart", action="store_true",
                          help="discard the finished fields in OUTPUT/partial; without it, the same command "
                               "run again continues after the last finished field")
    evaluate.add_argument("--rerun", nargs="+", default=None, metavar="METHOD",
                          help="discard these methods' results stored in OUTPUT/partial and compute them again, "
                               "keeping the other methods' (e.g. after a change to MADNESS); an interrupted "
                               "rerun continues without --rerun")
    evaluate.add_argument("--output", required=True, help="directory for measurements.json, summary.json, "
                                                          "report.md and figures/")
    evaluate.add_argument("--workers", type=int, default=1, help="drawing processes for --simulate")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.add_argument("--no-figures", action="store_true", help="skip the figures")
    evaluate.set_defaults(func=_evaluate)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
