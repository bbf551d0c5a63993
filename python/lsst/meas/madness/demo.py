"""The README's demo: a simulated LSST patch through ``pipelines/madness.yaml`` in a local butler.

`run_demo` (``madness demo``, ``make demo``):

1. simulates a square LSST patch with BTK (SkyPy CatSim-format galaxies after the paper's
   SNR cut, SurveyCodex 10-year conditions, six bands; `lsst.meas.madness.localrepo`), seeded,
   and converts it from electrons to nJy, the unit of Rubin's coadds (the deblender converts
   it back into its model's electrons and its outputs into nJy: `lsst.meas.madness.units`);
2. creates a local SQLite butler with the dimension records inserted directly (no obs_base) and
   ingests the per-band coadds (unit nJy) as lsst.images ``MaskedImage`` plus the truth
   catalogue;
3. runs ``pipetask run -p pipelines/madness.yaml`` (detect -> deblend -> measure) in a
   subprocess with the packaged model bundle (or ``bundle``), no network;
4. reads the outputs back, matches detections to the truth, compares aperture fluxes measured
   with and without deblending against the truth (same aperture), and decodes the children's
   latents into the MADNESS model of the scene;
5. writes ``demo.png`` (scene, models, residuals, flux errors), ``summary.json`` and
   ``summary.md``, and keeps ``repo/`` and ``pipetask.log``.
"""

from __future__ import annotations

__all__ = ["run_demo", "score_patch", "model_image"]

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .localrepo import SKYMAP, TRACT, TRUTH_DATASET, create_local_repo, ingest_patch, pipetask_command, \
    run_logged, simulate_patch
from .skymap import SKYMAP_RUN, SimSkyMap

INPUT_COLLECTION = "sim/coadds"
OUTPUT_COLLECTION = "madness/demo"
MATCH_RADIUS = 3.0  # pixels between a truth centre and a detected object's centroid
LABELS = ("detect", "deblend", "measure")


def _aperture_fluxes(images: np.ndarray, objects, rows: np.ndarray, yx0, config) -> np.ndarray:
    """Flux of ``(bands, H, W)`` ``images`` in the measurement's aperture of each object row.

    The aperture is the one `MadnessMeasurementTask` used (its ellipse, Kron radius and
    ``kronFactor``, or a circle of ``minApertureRadius`` when ``ap_radius_flag``), shifted from the
    tract frame to the array.
    """
    import sep

    rows = np.asarray(rows, dtype=np.int64)
    out = np.full((len(rows), images.shape[0]), np.nan)
    x = np.asarray(objects["x"], float)[rows] - yx0[1]
    y = np.asarray(objects["y"], float)[rows] - yx0[0]
    finite = np.isfinite(x) & np.isfinite(y)
    circle = finite & np.asarray(objects["ap_radius_flag"], bool)[rows]
    ellipse = finite & ~circle
    semi_a, semi_b = (np.asarray(objects[c], float)[rows][ellipse] for c in ("shape_a", "shape_b"))
    theta = np.asarray(objects["shape_theta"], float)[rows][ellipse]
    radius = config.kronFactor * np.asarray(objects["kron_radius"], float)[rows][ellipse]
    # Every object of a band in one sep call, on one float64 copy of the band: per object, the
    # copy of a 4000x4000 band cost more than the sum.
    for b in range(images.shape[0]):
        data = np.ascontiguousarray(images[b], dtype=np.float64)
        if circle.any():
            out[circle, b] = sep.sum_circle(data, x[circle], y[circle], config.minApertureRadius)[0]
        if ellipse.any():
            out[ellipse, b] = sep.sum_ellipse(data, x[ellipse], y[ellipse], semi_a, semi_b, theta, radius)[0]
    return out


def score_patch(patch, catalog, objects, measure_config, match_radius: float = MATCH_RADIUS) -> dict:
    """Detections against the truth, and flux errors with and without deblending.

    Each truth galaxy is matched to at most one primary object (a child, or a parent without
    children) within ``match_radius`` pixels of its centre (Hungarian assignment; where one
    object is within reach of two galaxies and only one can have it, the brighter in r does:
    an unresolved pair's object holds mostly its brighter member's light). For a match,
    three fluxes are taken in the object's own measurement aperture: on the galaxy's noiseless
    isolated image (the truth), on its heavy footprint (the deblended flux the object table holds)
    and on the observed coadd (no deblending: the neighbours' light in the aperture stays).

    Every truth galaxy is scored: completeness is matched galaxies over all truth galaxies (and
    over those with SNR >= 20 in r), purity is matched objects over primary objects, and
    ``all_truth`` is the mean abs(dF/F) over every truth galaxy with a missed galaxy counted as
    1 (no flux measured for it), beside the means over the matched ones.

    Returns
    -------
    score : `dict`
        ``detection`` counts, completeness and purity, ``objects`` (one entry per truth galaxy,
        missed ones with ``matched: false``) and ``mean_abs_dF_over_F`` per band for
        ``deblended`` and ``no_deblending``, over all matches, over the matches whose parent has
        several children (``in_blends``) and over every truth galaxy (``all_truth``); matched
        galaxies with no true flux in a band's aperture are left out of that band's means and
        counted in ``n_without_true_flux``.
    """
    from .evaluation.detection import match_one_to_one

    truth = patch.truth
    bands = patch.bands
    primary = np.flatnonzero(np.asarray(objects["detect_isPrimary"]))
    tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    ox, oy = np.asarray(objects["x"], float)[primary], np.asarray(objects["y"], float)[primary]
    # Sparse, group by group: a 4000x4000 patch's 10,000 galaxies in well under a second.
    ti, oj = match_one_to_one(np.stack([tx, ty], 1), np.stack([ox, oy], 1), match_radius,
                              truth_brightness=10.0 ** (-0.4 * np.asarray(truth["r_ab"], float)))
    separation = np.hypot(tx[ti] - ox[oj], ty[ti] - oy[oj])
    oj = primary[oj]

    ids = np.asarray(catalog["id"])
    parent_of = dict(zip(ids.tolist(), np.asarray(catalog["parent"]).tolist()))
    n_child = dict(zip(ids.tolist(), np.asarray(catalog["deblend_nChild"]).tolist()))
    flux_true = _aperture_fluxes_per_truth(patch, objects, ti, oj, measure_config)
    flux_blended = _aperture_fluxes(patch.image, objects, oj, patch.yx0, measure_config)
    flux_deblended = np.stack([np.asarray(objects[f"{b}_apFlux"], float)[oj] for b in bands], axis=1)

    entries = []
    matched = dict(zip(ti.tolist(), range(len(ti))))
    for t in range(len(truth)):
        entry = {
            "truth_id": int(truth["truth_id"][t]),
            "x": int(truth["x"][t]),
            "y": int(truth["y"][t]),
            "r_ab": float(truth["r_ab"][t]),
            "blendedness_r": float(truth["blendedness_r"][t]),
            "matched": t in matched,
        }
        if t in matched:
            k = matched[t]
            obj = int(objects["id"][oj[k]])
            parent = int(parent_of.get(obj, 0))
            entry.update(
                object_id=obj,
                parent_id=parent,
                n_children_of_parent=int(n_child.get(parent, 0)) if parent else 0,
                separation_px=float(separation[k]),
                flux_true={b: float(flux_true[k, i]) for i, b in enumerate(bands)},
                flux_deblended={b: float(flux_deblended[k, i]) for i, b in enumerate(bands)},
                flux_no_deblending={b: float(flux_blended[k, i]) for i, b in enumerate(bands)},
            )
        entries.append(entry)

    # dF/F needs a true flux: a galaxy with none in a band's aperture (a catalogue galaxy dark
    # in u, say) has no relative error there and is left out of that band's means (counted in
    # ``n_without_true_flux``), rather than making the mean infinite.
    has_flux = np.isfinite(flux_true) & (flux_true > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        def relative(measured):
            return np.where(has_flux, np.abs(measured / np.where(has_flux, flux_true, 1.0) - 1.0), np.nan)

        rel_deblended, rel_blended = relative(flux_deblended), relative(flux_blended)

    def mean_abs(rel, subset):
        rel = rel[subset]
        return {b: (float(np.nanmean(rel[:, i])) if np.isfinite(rel[:, i]).any() else float("nan"))
                for i, b in enumerate(bands)}

    in_blends = np.array([entries[t].get("n_children_of_parent", 0) >= 2 for t in ti], dtype=bool)
    everything = np.ones(len(ti), dtype=bool)
    parents = np.asarray(catalog["parent"]) == 0

    def every_truth(rel):
        # Every truth galaxy: a missed one has no flux measured, abs(dF/F) = 1.
        n_missed = len(truth) - len(ti)
        return {b: (float((np.nansum(rel[:, i]) + n_missed) / (np.isfinite(rel[:, i]).sum() + n_missed))
                    if len(truth) else float("nan")) for i, b in enumerate(bands)}

    snr = np.asarray(truth["snr_r"], float) if "snr_r" in truth.colnames else np.full(len(truth), np.nan)
    is_matched = np.zeros(len(truth), bool)
    is_matched[ti] = True

    def fraction(k, n):
        return float(k / n) if n else float("nan")

    return {
        "detection": {
            "n_truth": int(len(truth)),
            "n_parents": int(parents.sum()),
            "n_children": int((~parents).sum()),
            "n_primary_objects": int(len(primary)),
            "n_matched": int(len(ti)),
            "n_missed": int(len(truth) - len(ti)),
            "n_unmatched_objects": int(len(primary) - len(ti)),
            "n_matched_in_blends": int(in_blends.sum()),
            "n_skipped_parents": int(np.asarray(catalog["deblend_skipped"])[parents].sum()),
            "n_failed_parents": int(np.asarray(catalog["deblend_failed"])[parents].sum()),
            "match_radius_px": match_radius,
            "completeness": fraction(len(ti), len(truth)),
            "completeness_snr_gt_20": fraction(int(is_matched[snr >= 20].sum()), int((snr >= 20).sum())),
            "n_truth_snr_gt_20": int((snr >= 20).sum()),
            "purity": fraction(len(ti), len(primary)),
        },
        "objects": entries,
        "mean_abs_dF_over_F": {
            "all_matched": {"deblended": mean_abs(rel_deblended, everything),
                            "no_deblending": mean_abs(rel_blended, everything)},
            "in_blends": {"deblended": mean_abs(rel_deblended, in_blends),
                          "no_deblending": mean_abs(rel_blended, in_blends)},
            "all_truth": {"deblended": every_truth(rel_deblended),
                          "no_deblending": every_truth(rel_blended)},
        },
        "n_without_true_flux": {b: int((~has_flux[:, i]).sum()) for i, b in enumerate(bands)},
    }


def _aperture_fluxes_per_truth(patch, objects, ti, oj, config) -> np.ndarray:
    out = np.full((len(ti), len(patch.bands)), np.nan)
    for k, (t, o) in enumerate(zip(ti, oj)):
        # The galaxy's own stamp (zero elsewhere in the patch), placed by its tract-frame origin.
        out[k] = _aperture_fluxes(patch.stamps[t], objects, np.array([o]), patch.stamp_yx0[t], config)[0]
    return out


def model_image(catalog, deblender, shape: tuple[int, int], yx0: tuple[int, int]) -> np.ndarray:
    """``(bands, H, W)`` MADNESS model of a patch: every child's decoded latents at its peak.

    In the model's units (electrons; `lsst.meas.madness.units.ModelUnits.from_model` converts
    them). Children whose latents are NaN (none in a normal run) are left out.
    """
    children = np.flatnonzero(np.asarray(catalog["parent"]) != 0)
    latents = np.asarray(catalog["deblend_latents"], dtype=np.float32)[children]
    good = np.isfinite(latents).all(axis=1)
    children, latents = children[good], latents[good]
    model = np.zeros((len(deblender.bands), *shape), np.float32)
    if not len(children):
        return model
    from .engine.geometry import paste_stamps, shift_stamps, stamp_origins_xy, subpixel_shifts

    # Each child's model drawn at the centre the fit used (its peak, plus the fitted offset).
    names = ("deblend_center_x", "deblend_center_y")
    if not all(n in catalog.colnames for n in names):  # catalogs written before these columns
        names = ("deblend_peak_center_x", "deblend_peak_center_y")
    centres = np.stack([np.asarray(catalog[n], np.float64)[children] for n in names], axis=1)
    stamps = shift_stamps(deblender.decode(latents), subpixel_shifts(centres))
    origins = stamp_origins_xy(centres, deblender.stamp_size)
    return paste_stamps(stamps, origins, shape, image_yx0=yx0, out=model)


def _task_seconds(butler, data_id) -> dict:
    """Wall seconds of each task's ``run`` (``@timeMethod``), from the ``<label>_metadata`` datasets."""
    from datetime import datetime

    out = {}
    for label in LABELS:
        try:
            meta = butler.get(f"{label}_metadata", data_id)
        except Exception:  # noqa: BLE001 - an absent metadata dataset only loses a timing
            continue
        quantum = meta.get("quantum") if "quantum" in meta else None
        try:
            start = datetime.fromisoformat(quantum["startUtc"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(quantum["endUtc"].replace("Z", "+00:00"))
            out[label] = round((end - start).total_seconds(), 2)
        except (TypeError, KeyError, ValueError):
            continue
    return out


def _plot(path: Path, patch, model, truth_xy, objects, score) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import make_lupton_rgb

    bands = list(patch.bands)
    g, r, i = (bands.index(b) for b in "gri")
    noise = np.sqrt(np.median(patch.variance[[g, r, i]], axis=(1, 2)))

    def rgb(cube):
        # Each band in units of its sky noise, so the colour balance does not depend on zero points.
        return make_lupton_rgb(cube[i] / noise[2], cube[r] / noise[1], cube[g] / noise[0], minimum=-1.0,
                               stretch=8.0, Q=8.0)

    y0, x0 = patch.yx0
    fig, axes = plt.subplots(2, 2, figsize=(12, 11.5))
    ax = axes[0, 0]
    ax.imshow(rgb(patch.image), origin="lower")
    ax.plot(truth_xy[:, 0] - x0, truth_xy[:, 1] - y0, "o", mfc="none", mec="cyan", ms=9, label="truth")
    prim = np.asarray(objects["detect_isPrimary"])
    ax.plot(np.asarray(objects["x"])[prim] - x0, np.asarray(objects["y"])[prim] - y0, "+", color="orange",
            ms=8, label="detected (primary)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"simulated LSST patch (gri), seed {patch.seed}")
    axes[0, 1].imshow(rgb(model), origin="lower")
    axes[0, 1].set_title("MADNESS models (decoded latents of all children)")
    resid = (patch.image[r] - model[r]) / np.sqrt(patch.variance[r])
    im = axes[1, 0].imshow(resid, origin="lower", cmap="coolwarm", vmin=-5, vmax=5)
    axes[1, 0].set_title("residual r: (image - model) / sigma")
    fig.colorbar(im, ax=axes[1, 0], fraction=0.046)
    ax = axes[1, 1]
    matched = [o for o in score["objects"] if o["matched"] and o["flux_true"]["r"] > 0]
    mag = np.array([o["r_ab"] for o in matched])
    for key, colour, label in (("flux_no_deblending", "tab:red", "no deblending"),
                               ("flux_deblended", "tab:blue", "MADNESS")):
        rel = np.array([o[key]["r"] / o["flux_true"]["r"] - 1.0 for o in matched])
        ax.plot(mag, rel, "o", color=colour, alpha=0.75, label=label)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("true r (AB)")
    ax.set_ylabel("dF/F in r (same aperture)")
    ax.legend(fontsize=8)
    ax.set_title("aperture flux error per matched galaxy")
    for a in axes.flat[:3]:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def json_safe(value):
    """NaN and infinities as ``null`` (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _markdown(summary: dict) -> str:
    det = summary["detection"]
    bands = summary["bands"]
    lines = [
        f"# MADNESS demo: {summary['patch']['size']}x{summary['patch']['size']} px LSST patch, seed "
        f"{summary['seed']}",
        "",
        f"Bundle: {summary['bundle']}",
        "",
        "## Detections vs truth",
        "",
        "| truth galaxies | parents | children | primary objects | matched | missed | unmatched objects "
        "| matched in blends | skipped / failed parents |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {det['n_truth']} | {det['n_parents']} | {det['n_children']} | {det['n_primary_objects']} | "
        f"{det['n_matched']} | {det['n_missed']} | {det['n_unmatched_objects']} | "
        f"{det['n_matched_in_blends']} | "
        f"{det['n_skipped_parents']} / {det['n_failed_parents']} |",
        "",
        f"Completeness {100 * det['completeness']:.0f}% ({det['n_matched']} of {det['n_truth']}; SNR >= 20 in r: "
        f"{100 * det['completeness_snr_gt_20']:.0f}% of {det['n_truth_snr_gt_20']}), purity "
        f"{100 * det['purity']:.0f}% ({det['n_matched']} of {det['n_primary_objects']} primary objects match a "
        "galaxy).",
        "",
        "## Mean |dF/F| per band (aperture fluxes against the noiseless truth in the same aperture)",
        "",
        "| galaxies | method | " + " | ".join(bands) + " |",
        "| --- | --- | " + " | ".join("---" for _ in bands) + " |",
    ]
    for subset, name in (("all_truth", f"every truth galaxy, missed = 1 ({det['n_truth']})"),
                         ("all_matched", f"all matched ({det['n_matched']})"),
                         ("in_blends", f"in blends ({det['n_matched_in_blends']})")):
        for method, label in (("no_deblending", "no deblending"), ("deblended", "MADNESS")):
            values = summary["mean_abs_dF_over_F"][subset][method]
            lines.append(f"| {name} | {label} | " + " | ".join(f"{values[b]:.3f}" for b in bands) + " |")
    dark = {b: n for b, n in summary.get("n_without_true_flux", {}).items() if n}
    if dark:
        lines += ["", "Matched galaxies with no true flux in a band's aperture have no dF/F there and are "
                  "left out of that band's means: " + ", ".join(f"{b} {n}" for b, n in dark.items()) + "."]
    lines += [
        "",
        "## Per galaxy (r band)",
        "",
        f"| truth | r mag | blendedness | object | children of parent | true flux ({summary['flux_unit']}) "
        "| MADNESS | "
        "no deblending | abs(dF/F) MADNESS | abs(dF/F) no deblending |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in summary["objects"]:
        if not o["matched"]:
            lines.append(
                f"| {o['truth_id']} | {o['r_ab']:.2f} | {o['blendedness_r']:.3f} | missed | | | | | | |"
            )
            continue
        t, d, n = o["flux_true"]["r"], o["flux_deblended"]["r"], o["flux_no_deblending"]["r"]
        lines.append(
            f"| {o['truth_id']} | {o['r_ab']:.2f} | {o['blendedness_r']:.3f} | {o['object_id']} | "
            f"{o['n_children_of_parent']} | {t:.1f} | {d:.1f} | {n:.1f} | {abs(d / t - 1):.3f} | "
            f"{abs(n / t - 1):.3f} |"
        )
    tm = summary["timings_s"]
    lines += [
        "",
        "## Timings (s)",
        "",
        "| " + " | ".join(tm) + " |",
        "| " + " | ".join("---" for _ in tm) + " |",
        "| " + " | ".join(str(v) for v in tm.values()) + " |",
        "",
    ]
    return "\n".join(lines)


def run_demo(
    output: str | Path,
    *,
    seed: int = 0,
    size: int = 301,
    n_galaxies: int = 40,
    min_snr: float = 10.0,
    group_shift: int = 15,
    bundle: str | Path | None = None,
    config: Sequence[str] = (),
    echo: Callable[[str], None] | None = print,
    subpixel: bool = False,
) -> dict:
    """Run the demo; write ``demo.png``, ``summary.json``, ``summary.md``, ``repo/``, ``pipetask.log``.

    Parameters
    ----------
    output : path-like
        Output directory (created; a ``repo/`` from an earlier run is replaced).
    seed : `int`
        Seed of the simulation (catalogue, positions, noise).
    size : `int`
        Side of the patch in pixels (odd).
    n_galaxies : `int`
        Galaxies in the patch.
    min_snr : `float`
        The appendix-A SNR cut in r that the galaxies pass: the paper's 10. Every galaxy that
        passes it is scored, detected or not.
    group_shift : `int`
        Largest offset of a galaxy from its group's centre, pixels (`simulate_patch`).
    bundle : path-like, optional
        Model bundle directory; `None` for the packaged default LSST bundle.
    config : sequence of `str`
        Extra ``pipetask -c`` overrides, ``label:field=value`` (e.g. ``deblend:maxIter=100``).
    echo : callable, optional
        Where progress lines go (`print` by default; `None` for silence).
    subpixel : `bool`
        Draw the galaxies at sub-pixel positions (`simulate_patch`); off by default.

    Returns
    -------
    summary : `dict`
        What ``summary.json`` holds.
    """
    from lsst.daf.butler import Butler

    from .engine import MadnessDeblender
    from .errors import MadnessBundleError
    from .io.bundle import METADATA_FILE, default_bundle_path
    from .tasks import MadnessMeasurementConfig
    from .units import ModelUnits

    say = echo or (lambda _line: None)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    if bundle is None and not (default_bundle_path() / METADATA_FILE).is_file():
        raise MadnessBundleError(
            f"No packaged default bundle at {default_bundle_path()}; pass a bundle directory "
            "(madness demo --bundle PATH)."
        )
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    repo = output / "repo"
    if (repo / "butler.yaml").is_file():
        shutil.rmtree(repo)

    say(f"[demo] simulating a {size}x{size} px LSST patch with {n_galaxies} galaxies (BTK, seed {seed}) ...")
    t = time.perf_counter()
    patch = simulate_patch(seed, size=size, n_galaxies=n_galaxies, min_snr=min_snr,
                           group_shift=group_shift, subpixel=subpixel).to_nanojansky()
    timings["simulate"] = round(time.perf_counter() - t, 1)

    say(f"[demo] creating the butler at {repo} and ingesting {len(patch.bands)} coadds ({patch.unit}) "
        "+ the truth ...")
    t = time.perf_counter()
    # One patch, all of it inner (no neighbour to share objects with): every leaf is primary.
    create_local_repo(repo, SimSkyMap.from_patch_size(patch.size, patch_border=0), bands=patch.bands)
    ingest_patch(repo, patch, 0, INPUT_COLLECTION)
    timings["butler_setup_ingest"] = round(time.perf_counter() - t, 1)

    overrides = [f"deblend:bundlePath={Path(bundle).resolve()}"] if bundle is not None else []
    overrides += list(config)
    command = pipetask_command(repo, f"{INPUT_COLLECTION},{SKYMAP_RUN}", OUTPUT_COLLECTION, config=overrides)
    shown = "pipetask " + " ".join(command[3:])
    say(f"[demo] running: {shown}")
    timings["pipetask_run"] = round(run_logged(command, output / "pipetask.log", prefix="[pipetask] ",
                                               echo=echo), 1)

    say("[demo] reading the outputs back and scoring against the truth ...")
    t = time.perf_counter()
    data_id = {"skymap": SKYMAP, "tract": TRACT, "patch": 0}
    with Butler.from_config(str(repo), collections=[OUTPUT_COLLECTION]) as butler:
        catalog = butler.get("deepCoadd_madnessDeblendedCatalog", data_id)
        objects = butler.get("deepCoadd_madnessObj", data_id)
        truth = butler.get(TRUTH_DATASET, data_id)
        try:
            measure_config = butler.get("measure_config")
        except LookupError:  # older runs without init-outputs: the defaults were used
            measure_config = MadnessMeasurementConfig()
        deblend_meta = butler.get("deblend_metadata", data_id)
        task_seconds = _task_seconds(butler, data_id)
    score = score_patch(patch, catalog, objects, measure_config)
    timings["score"] = round(time.perf_counter() - t, 1)

    say("[demo] decoding the children's latents into the model of the scene and plotting ...")
    t = time.perf_counter()
    deblender = MadnessDeblender.from_bundle(bundle)
    model = model_image(catalog, deblender, patch.image.shape[1:], patch.yx0)
    # The decoder draws in the model's electrons; the patch (and every flux above) is in nJy.
    model = ModelUnits.from_deblender(deblender).from_model(model, patch.unit, patch.bands)
    truth_xy = np.stack([np.asarray(truth["x"]), np.asarray(truth["y"])], axis=1)
    _plot(output / "demo.png", patch, model, truth_xy, objects, score)
    timings["model_and_figure"] = round(time.perf_counter() - t, 1)
    for label, seconds in task_seconds.items():
        timings[f"task_{label}"] = seconds
    meta = deblend_meta.get("deblend") if "deblend" in deblend_meta else {}
    # Where the deblend quantum's time went (MadnessDeblendTask's steps).
    for step in ("zoom", "fit", "residual_peaks", "pair_splits", "children"):
        if meta is not None and f"seconds_{step}" in meta and float(meta[f"seconds_{step}"]) > 0:
            timings[f"deblend_{step}"] = round(float(meta[f"seconds_{step}"]), 2)
    timings["total"] = round(time.perf_counter() - start, 1)

    counts = {k: int(meta[k]) for k in ("n_parents", "n_blends", "n_children", "n_skipped", "n_failed",
                                        "n_not_converged") if meta is not None and k in meta}
    summary = {
        "seed": int(seed),
        "bands": list(patch.bands),
        "flux_unit": patch.unit,
        "patch": {"size": patch.size, "n_galaxies": int(n_galaxies), "min_snr_r": float(min_snr),
                  "group_shift_px": int(group_shift), "subpixel_positions": bool(subpixel),
                  "pixel_scale_arcsec": 0.2},
        "bundle": (str(Path(bundle).resolve()) if bundle is not None
                   else f"packaged ({default_bundle_path()})"),
        "pipetask": shown,
        "deblend_counts": counts,
        **score,
        "timings_s": timings,
    }
    (output / "summary.json").write_text(json.dumps(json_safe(summary), indent=1, allow_nan=False) + "\n")
    text = _markdown(summary)
    (output / "summary.md").write_text(text)
    m = summary["mean_abs_dF_over_F"]
    det = summary["detection"]
    say(f"[demo] {det['n_matched']} of {det['n_truth']} galaxies detected and matched "
        f"({det['n_matched_in_blends']} in blends); completeness {100 * det['completeness']:.0f}% "
        f"(SNR >= 20: {100 * det['completeness_snr_gt_20']:.0f}%), purity {100 * det['purity']:.0f}%; "
        f"{det['n_missed']} missed: " + ", ".join(f"truth {o['truth_id']} (r {o['r_ab']:.1f})"
                                                  for o in summary["objects"] if not o["matched"]))
    say(f"[demo] r-band mean |dF/F|: no deblending {m['all_matched']['no_deblending']['r']:.3f}, MADNESS "
        f"{m['all_matched']['deblended']['r']:.3f} over the matched (in blends: "
        f"{m['in_blends']['no_deblending']['r']:.3f} -> {m['in_blends']['deblended']['r']:.3f}); over every "
        f"truth galaxy, a missed one counted as 1: {m['all_truth']['no_deblending']['r']:.3f} -> "
        f"{m['all_truth']['deblended']['r']:.3f}")
    say(f"[demo] timings (s): {timings}")
    say(f"[demo] wrote {output}/demo.png, summary.md, summary.json, pipetask.log and repo/")
    return summary
