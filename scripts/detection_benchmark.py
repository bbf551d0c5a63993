#!/usr/bin/env python
"""Detection benchmark (issue 14, section 1): every detection method on the same simulated patches.

Each patch is `lsst.meas.madness.localrepo.simulate_patch` (SkyPy CatSim-format galaxies after the
paper's SNR >= 10 cut in r, BTK profiles and noise, LSST 10-year depth, six bands), converted to
nJy as the demo's coadds are, with galaxies at sub-pixel positions. Every method of
`MadnessDetectionTask` (``method=...``, plus variants given as ``name:field=value,...``) runs on
the same coadds; its peaks are scored against the truth by
`lsst.meas.madness.evaluation.detection` (one-to-one match within 0.5"). Writes
``<output>/detection_benchmark.json`` and, with ``--markdown``, the tables of ``doc/detection.md``
between its ``<!-- benchmark -->`` markers.

    python scripts/detection_benchmark.py --patches 16 --output benchmarks/detection --markdown doc/detection.md
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

# name -> (method, {field path: value}); the anchors of issue 14 and this package's default.
METHODS = {
    "sep (before)": ("sep", {}),
    "sep PSF-matched": ("sepPsf", {}),
    "Rubin-like": ("rubinLike", {}),
    "scarlet_lite": ("scarletLite", {}),
    "prominence (default)": ("prominence", {}),
    "prominence 2.0": ("prominence", {"prominence.prominence": 2.0}),
}


def make_config(method: str, fields: dict):
    """The configuration of one row: a `MadnessDetectionConfig` with ``method``, or for ``madness``
    the `MadnessDeblendConfig` (its fields named ``detection.<field>`` are the detection's: see
    `detection_config`)."""
    from lsst.meas.madness.tasks import MadnessDeblendConfig, MadnessDetectionConfig

    if method == "madness":
        # A detection, then the deblend with these deblend-config fields: its children are the peaks.
        config = MadnessDeblendConfig()
    else:
        config = MadnessDetectionConfig()
        config.method = method
    for path, value in fields.items():
        if not (method == "madness" and path.startswith("detection.")):
            _set_field(config, path, value)
    return config


def detection_config(fields: dict):
    """The `MadnessDetectionConfig` a ``madness`` row deblends: the default one, with the row's
    fields named ``detection.<field>``."""
    from lsst.meas.madness.tasks import MadnessDetectionConfig

    config = MadnessDetectionConfig()
    for path, value in fields.items():
        if path.startswith("detection."):
            _set_field(config, path.removeprefix("detection."), value)
    return config


def _set_field(config, path: str, value) -> None:
    """Set the field of ``config`` at the dotted ``path`` from a command-line string."""
    target = config
    *parents, leaf = path.split(".")
    for p in parents:
        target = getattr(target, p)
    current = getattr(target, leaf)
    if isinstance(current, bool):
        value = value in (True, "True", "true", "1")
    elif value in ("None", "none"):
        value = None
    elif current is not None:
        value = type(current)(value)
    else:  # an optional field that is None by default: its declared type converts
        value = getattr(type(target), leaf).dtype(value)
    setattr(target, leaf, value)


def patch_inputs(seed: int, size: int, n_galaxies: int, group_shift: int, max_group: int, knots: float = 0.0):
    """A benchmark patch (nJy), its coadd for the tasks and the truth's ``(n, 2)`` array-pixel centres."""
    from lsst.meas.madness.localrepo import simulate_patch
    from lsst.meas.madness.tasks import MultibandCoadd

    patch = simulate_patch(seed, size=size, n_galaxies=n_galaxies, min_snr=10.0, group_shift=group_shift,
                           max_group=max_group, subpixel=True, knots=knots).to_nanojansky()
    coadd = MultibandCoadd(bands=patch.bands, image=patch.image, variance=patch.variance,
                           bad=np.zeros(patch.image.shape, bool), yx0=patch.yx0, unit=patch.unit)
    truth_xy = np.stack([np.asarray(patch.truth["x_true"]) - patch.yx0[1],
                         np.asarray(patch.truth["y_true"]) - patch.yx0[0]], axis=1)
    return patch, coadd, truth_xy


def deblended_children(coadd, deblend_config, deblender, detection=None) -> tuple[list[dict], np.ndarray]:
    """The child rows of `MadnessDeblendTask` on the detections of ``detection`` (a
    `MadnessDetectionConfig`; default: the default one) and their ``(n, 2)`` array-pixel centres.

    The deblend runs in process (``deblendInModelUnits``) with the packaged model; with
    ``doResidualPeaks`` its children include the sources it found in the residual.
    """
    from lsst.meas.madness.tasks import MadnessDeblendTask, MadnessDetectionConfig
    from lsst.meas.madness.tasks.deblend import parents_from_tables
    from lsst.meas.madness.tasks.detection import detect_footprints
    from lsst.meas.madness.units import ModelUnits, resolve_unit

    detections, spans = detect_footprints(coadd, detection or MadnessDetectionConfig())
    parents = parents_from_tables(detections, spans)
    scale = ModelUnits.from_deblender(deblender).scale(resolve_unit(coadd.unit, None), deblender.bands)
    children = MadnessDeblendTask(config=deblend_config).deblendInModelUnits(coadd, parents, deblender,
                                                                           scale).childRows
    y0, x0 = coadd.yx0
    return children, np.array([[c["deblend_center_x"] - x0, c["deblend_center_y"] - y0]
                               for c in children], np.float64).reshape(-1, 2)


def aperture_mag_i(patch, xy: np.ndarray, radius_px: float = 5.0) -> np.ndarray:
    """i AB magnitude in a 1" radius circle at each ``(x, y)`` (array pixels) of an nJy patch."""
    import sep

    i = patch.bands.index("i")
    data = np.ascontiguousarray(patch.image[i], dtype=np.float64)
    if not len(xy):
        return np.zeros(0)
    flux, _, _ = sep.sum_circle(data, xy[:, 0].astype(float), xy[:, 1].astype(float), radius_px)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, 31.4 - 2.5 * np.log10(flux), 99.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=16, help="number of patches (seeds first-seed..)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=301)
    parser.add_argument("--galaxies", type=int, default=40)
    parser.add_argument("--group-shift", type=int, default=15, help="as the demo's patches")
    parser.add_argument("--pair-patches", type=int, default=8,
                        help="extra patches of close pairs (groups of <= 2 within --pair-shift px), scored for "
                        "the pair statistics only (seeds first-seed + 10000 ..)")
    parser.add_argument("--pair-shift", type=int, default=4)
    parser.add_argument("--knots", type=float, default=0.0,
                        help="fraction of each disc's flux drawn as star-forming knots (asymmetric light that "
                        "can be split into false peaks); 0: BTK's smooth profiles")
    parser.add_argument("--output", default="benchmarks/detection")
    parser.add_argument("--markdown", default=None, help="rewrite this file's benchmark section")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD[:FIELD=VALUE,...]",
                        help="extra configurations (e.g. 'p1.5=prominence:prominence.prominence=1.5'); METHOD "
                        "'madness' deblends the default detections with the packaged model and scores its "
                        "children, FIELDs then being MadnessDeblendConfig's (e.g. "
                        "'residual=madness:doResidualPeaks=True'; 'detection.<field>' FIELDs set the "
                        "detection it deblends)")
    parser.add_argument("--bundle", default=None,
                        help="model bundle of the 'madness' rows (default: the packaged one), e.g. a candidate's")
    parser.add_argument("--only", default=None, help="comma-separated names to run (default: all)")
    parser.add_argument("--merge", metavar="JSON", default=None,
                        help="an earlier detection_benchmark.json on the same patches: its methods are kept, "
                             "those run now replace theirs (rerun one row with --only)")
    args = parser.parse_args(argv)

    from lsst.meas.madness.evaluation.detection import score_detections, summarise_detections
    from lsst.meas.madness.simulation.conditions import LsstConditions
    from lsst.meas.madness.tasks.detection import find_detections

    earlier = None
    if args.merge:
        # Checked before the run: a merge of other patches would be refused only after it.
        earlier = json.loads(Path(args.merge).read_text())
        mine = {"patches": args.patches, "first_seed": args.first_seed, "size": args.size,
                "pair_patches": args.pair_patches, "pair_shift_px": args.pair_shift,
                "galaxies_per_patch": args.galaxies, "group_shift_px": args.group_shift, "knots": args.knots}
        if any(earlier["setup"].get(k, 0.0 if k == "knots" else None) != v for k, v in mine.items()):
            raise SystemExit(f"--merge {args.merge}: its patches ({ {k: earlier['setup'].get(k) for k in mine} }) "
                             f"differ from this run's ({mine}).")
    methods = dict(METHODS)
    for spec in args.variant:
        name, rest = spec.split("=", 1)
        if "," in name:  # --only is a comma-separated list: such a row could not be named there
            parser.error(f"--variant name {name!r} holds a comma; use another separator")
        method, _, fields = rest.partition(":")
        methods[name] = (method, dict(f.split("=", 1) for f in fields.split(",") if f))
    if args.only:
        wanted = args.only.split(",")
        unknown = [name for name in wanted if name not in methods]
        if unknown:  # a misspelt or undeclared row would otherwise run nothing and rewrite the tables
            parser.error(f"--only names no method: {', '.join(unknown)} (known: {', '.join(methods)}; "
                         "a 'madness' row needs its --variant)")
        methods = {k: v for k, v in methods.items() if k in wanted}
    psf_fwhm_i = LsstConditions.from_surveycodex().psf_fwhm[LsstConditions.from_surveycodex().bands.index("i")]

    scores = {name: [] for name in methods}
    pair_scores = {name: [] for name in methods}
    seconds = {name: 0.0 for name in methods}
    t_sim = 0.0
    deblender = None  # loaded for the first "madness" method
    main_seeds = list(range(args.first_seed, args.first_seed + args.patches))
    pair_seeds = list(range(args.first_seed + 10000, args.first_seed + 10000 + args.pair_patches))
    for seed in main_seeds + pair_seeds:
        pairs_only = seed in pair_seeds
        t = time.perf_counter()
        patch, coadd, truth_xy = patch_inputs(seed, args.size, args.galaxies,
                                              args.pair_shift if pairs_only else args.group_shift,
                                              2 if pairs_only else 3, args.knots)
        t_sim += time.perf_counter() - t
        truth = patch.truth
        for name, (method, fields) in methods.items():
            config = make_config(method, fields)
            t = time.perf_counter()
            if method == "madness":
                if deblender is None:
                    from lsst.meas.madness import MadnessDeblender
                    deblender = MadnessDeblender.from_bundle(args.bundle)
                _, peaks_xy = deblended_children(coadd, config, deblender, detection_config(fields))
            else:
                peaks_xy = find_detections(coadd, config).peaks_xy
            seconds[name] += time.perf_counter() - t
            score = score_detections(
                truth_xy, np.asarray(truth["i_ab"]), np.asarray(truth["snr_r"]), peaks_xy,
                aperture_mag_i(patch, peaks_xy), psf_fwhm=psf_fwhm_i)
            (pair_scores if pairs_only else scores)[name].append(score)
        done = pair_scores if pairs_only else scores
        print(f"seed {seed}{' (pairs)' if pairs_only else ''}: "
              + ", ".join(f"{n} {int(s[-1]['detections']['matched'].sum())}/"
                          f"{len(s[-1]['detections']['matched'])}" for n, s in done.items()), flush=True)
    result = {
        "setup": {"patches": args.patches, "first_seed": args.first_seed, "size": args.size,
                  "pair_patches": args.pair_patches, "pair_shift_px": args.pair_shift,
                  "galaxies_per_patch": args.galaxies, "group_shift_px": args.group_shift, "min_snr_r": 10.0,
                  "knots": args.knots, "subpixel": True, "unit": "nJy", "psf_fwhm_i_arcsec": psf_fwhm_i,
                  "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                             f"{__import__('os').cpu_count()} cores",
                  "simulate_seconds": round(t_sim, 1)},
        "methods": {name: {"method": m, "fields": f, "seconds": round(seconds[name], 2),
                           **({"bundle": args.bundle or "packaged"} if m == "madness" else {}),
                           **summarise_detections(scores[name], pair_scores=pair_scores[name])}
                    for name, (m, f) in methods.items()},
    }
    if args.merge:
        # Rows keep the earlier order; the new ones replace theirs or come last.
        result["methods"] = {**earlier["methods"], **result["methods"]}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detection_benchmark.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown_tables(result)
    print(text)
    if args.markdown:
        path = Path(args.markdown)
        doc = path.read_text() if path.exists() else "<!-- benchmark -->\n<!-- /benchmark -->\n"
        head, _, rest = doc.partition("<!-- benchmark -->")
        _, _, tail = rest.partition("<!-- /benchmark -->")
        path.write_text(head + "<!-- benchmark -->\n" + text + "<!-- /benchmark -->" + tail)
    return 0


def _pct(entry) -> str:
    if not entry or entry["fraction"] is None:
        return "-"
    return f"{100 * entry['fraction']:.0f}% ({entry['k']}/{entry['n']})"


def markdown_tables(result: dict) -> str:
    s = result["setup"]
    methods = result["methods"]
    names = list(methods)
    lines = [
        f"{s['patches']} patches of {s['size']}x{s['size']} px, {s['galaxies_per_patch']} galaxies each "
        f"(SNR >= {s['min_snr_r']:g} in r, groups within {s['group_shift_px']} px, sub-pixel centres, nJy), "
        f"seeds {s['first_seed']}-{s['first_seed'] + s['patches'] - 1}"
        + (f", {s['knots']:g} of each disc's flux in knots" if s.get("knots") else "") + f"; {s['machine']}. "
        f"Pair statistics also count {s['pair_patches']} patches of close pairs (groups of <= 2 within "
        f"{s['pair_shift_px']} px). Written by `scripts/detection_benchmark.py`; seconds: the method alone, "
        "all patches.",
        "",
        "### Goals",
        "",
        "| method | detections | completeness SNR>20 (goal 95%) | completeness SNR>10 (85%) | purity i<25 (98%) "
        "| unrecognised 23<i<24.5 (<=10%) | pairs dm<1 resolved, 1-3\" (90%) | pairs dm<1, 0.6-0.8\" (50%) "
        "| same, both i<25: 1-3\" / 0.6-0.8\" | detections matched | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in names:
        m = methods[n]
        lines.append(
            f"| {n} | {m['n_detections']} | {_pct(m['completeness']['snr>20'])} | "
            f"{_pct(m['completeness']['snr>10'])} | {_pct(m['purity']['i<25'])} | "
            f"{_pct(m['unrecognised_blends']['23<i<24.5'])} | {_pct(m['pairs_goal']['dm<1, sep>=1arcsec'])} | "
            f"{_pct(m['pairs_goal']['dm<1, 0.6-0.8arcsec'])} | "
            f"{_pct(m['pairs_goal']['dm<1, sep>=1arcsec, both i<25'])} / "
            f"{_pct(m['pairs_goal']['dm<1, 0.6-0.8arcsec, both i<25'])} | {_pct(m['purity']['all'])} | "
            f"{m['seconds']} |")
    lines += ["", "### Completeness / purity per 0.5 mag in i", "",
              "| i | galaxies | " + " | ".join(names) + " |",
              "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    bins = methods[names[0]]["per_i_bin"]
    for k, b in enumerate(bins):
        n_truth = b["completeness"]["n"]
        if n_truth == 0 and all(methods[n]["per_i_bin"][k]["purity"]["n"] == 0 for n in names):
            continue
        cells = []
        for n in names:
            e = methods[n]["per_i_bin"][k]
            c, p = e["completeness"], e["purity"]
            cs = "-" if c["fraction"] is None else f"{100 * c['fraction']:.0f}"
            ps = "-" if p["fraction"] is None else f"{100 * p['fraction']:.0f}"
            cells.append(f"{cs} / {ps}")
        lines.append(f"| {b['i_low']:.1f}-{b['i_high']:.1f} | {n_truth} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: completeness / purity, %.", "", "### Unrecognised blends per 0.5 mag in i", "",
              "| i | " + " | ".join(names) + " |", "| --- | " + " | ".join("---" for _ in names) + " |"]
    for k, b in enumerate(bins):
        if b["completeness"]["n"] == 0:
            continue
        lines.append(f"| {b['i_low']:.1f}-{b['i_high']:.1f} | "
                     + " | ".join(_pct(methods[n]["per_i_bin"][k]["unrecognised"]) for n in names) + " |")
    lines += ["", "### Pairs resolved vs separation (i-band PSF FWHM "
              f"{s['psf_fwhm_i_arcsec']:.2f}\")", "",
              "| separation (FWHM) | dm | " + " | ".join(names) + " |",
              "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for label in methods[names[0]]["pairs_resolved"]:
        for dm in ("dm<1", "1<=dm<2.5"):
            lines.append(f"| {label} | {dm} | "
                         + " | ".join(_pct(methods[n]["pairs_resolved"][label][dm]) for n in names) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
