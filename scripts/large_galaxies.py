"""Galaxies bigger than the stamp: MADNESS with and without zoom, a fitted tail, and scarlet_lite.

Usage::

    python scripts/large_galaxies.py --output large.json [--dense 10] [--seed 7141] \
        [--val-fields VALIDATION_FIELDS --max-val-fields 8] [--approaches off zoom-auto ...] \
        [--scarlet-lite] [--precision mixed_bfloat16]

Two sets of fields, each deblended as one blend with the true centres:

- **dense fields** (``--dense N``): each holds one r 18.5-20 disc-dominated galaxy with a
  half-light semi-major axis of 2-3.5" near its centre and 12-20 neighbours from an ordinary
  SNR >= 10 catalogue in the inner 150 x 150 px of a 205 x 205 field, drawn here: catalogues
  from `generate_catsim_catalog` (0.2 deg^2 to r = 20, seed ``--seed``, for the big galaxies;
  0.004 deg^2 to r = 28, seed ``--seed + 1``, for the neighbours), every galaxy drawn alone on
  a GalSim-good-size stamp (`draw_galaxy_stamps`, so no truth is cut), BTK's noise seeded with
  ``--seed * 1000 + field``;
- **validation fields** (``--val-fields``): the first ``--max-val-fields`` TestFields of the
  validation set (seed 101), whose truths are kept in 65-px windows.

Approaches (``--approaches``):

- ``off``: every zoom 1 (``MapSettings(max_zoom=1)``; the engine's default is 3 since stop 21);
- ``zoom-auto``: ``MapSettings(max_zoom=3)``, the zoom chosen per source by the engine;
- ``zoom-fit``: ``MapSettings(max_zoom=3, zoom_choice="fit")``: every source fitted at zoom 1
  first; those whose fitted model runs into the stamp edge (more than ``--edge-threshold`` of
  its flux in the outer 2 px) and dominate their zoomed window are zoomed and refitted;
- ``zoom-oracle``: zoom 2 for the galaxies whose truth has more than 1% of its r flux outside
  the 45-px stamp (on the dense fields: also the big galaxy), 1 for the others -- what a
  perfect choice of which sources to zoom gives;
- ``zoom-oracle-sb``: the same with ``geometry.ZOOM_UNITS = "surface"`` (a zoomed stamp pixel
  holds the mean of its image pixels, not their sum);
- ``tail``: zoom 1, then the same sources as ``zoom-oracle`` get their models extended beyond
  the stamp by an elliptical exponential fitted to the MAP model's outer annulus (a smooth
  extension; the neighbours are not refitted);
- ``tail-refit``: as ``tail``, then the extensions outside the stamps are subtracted from the
  image and every source refitted at zoom 1; the final models are the refit plus the tails.

plus scarlet_lite (``--scarlet-lite``, as ``madness evaluate`` runs it, with its rendered
models kept in 139-px stamps instead of 61 so that its big models are not cut by the scoring).

Reported per approach and field set (r band, the paper's apertures, kappa <= 5): the big
galaxies' (dense: the planted galaxy; validation: truth > 1% of r flux outside the stamp) own
mean abs(dF/F) and mean cosine (45-px and 93-px cutouts), their neighbours' within 10" mean
abs(dF/F), all galaxies' mean and median, the sources zoomed or extended, and seconds.
Single-threaded measurements: set ``TF_NUM_INTRAOP_THREADS=1`` and friends.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

APPROACHES = ("off", "zoom-auto", "zoom-fit", "zoom-oracle", "zoom-oracle-sb", "tail", "tail-refit")
BIG_CUT = dict(r_min=18.5, r_max=20.0, a_min=2.0, a_max=3.5)
NEIGHBOUR_RADIUS_PX = 50.0  # 10" at 0.2"/px
STAMP = 45


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--dense", type=int, default=10, help="dense fields with one big galaxy each (0: none)")
    parser.add_argument("--seed", type=int, default=7141, help="seed of the dense fields (never 2026)")
    parser.add_argument("--val-fields", type=Path, default=None, help="validation TestFields directory")
    parser.add_argument("--max-val-fields", type=int, default=8)
    parser.add_argument("--approaches", nargs="+", default=list(APPROACHES), choices=APPROACHES)
    parser.add_argument("--scarlet-lite", action="store_true", help="also run scarlet_lite")
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16"))
    parser.add_argument("--max-zoom", type=int, default=3)
    parser.add_argument("--edge-threshold", type=float, default=0.02,
                        help="zoom-fit: MapSettings.zoom_edge_threshold")
    args = parser.parse_args(argv)
    if args.seed == 2026:
        parser.error("2026 is the test fields' seed; draw the dense fields with another.")

    from lsst.meas.madness import MadnessDeblender
    from lsst.meas.madness.simulation import LsstConditions

    deblender = MadnessDeblender.from_bundle(None)
    settings = deblender.settings.replace(precision=args.precision)
    out = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "bundle": "packaged default", "precision": args.precision, "max_zoom": args.max_zoom,
           "zoom_outside_threshold": settings.zoom_outside_threshold,
           # What else ran on the machine is the caller's to say (the numbers of doc/large-galaxies.md do).
           "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "seed": args.seed, "sets": {}}
    sets = {}
    if args.dense:
        sets["dense"] = dense_fields(args.dense, args.seed)
    if args.val_fields is not None:
        from lsst.meas.madness.evaluation import iter_test_fields

        sets["validation"] = list(iter_test_fields(args.val_fields, max_fields=args.max_val_fields))
    for name, fields in sets.items():
        bands = tuple(fields[0].bands)
        conditions = LsstConditions.from_surveycodex(bands=bands)
        out["sets"][name] = run_set(name, fields, deblender, settings, conditions, args)
        write(out, args.output)
    print(markdown_table(out))
    return 0


def write(out: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, path)


# --- fields ---------------------------------------------------------------------------------------


def dense_fields(n_fields: int, seed: int, field_size: int = 205, inner: int = 150):
    """``n_fields`` TestFields, each with one big bright disc near the centre among 12-20 neighbours."""
    import numpy as np

    from lsst.meas.madness.evaluation.fields import TestField
    from lsst.meas.madness.simulation import LsstConditions
    from lsst.meas.madness.simulation.btk_draw import add_btk_noise, draw_galaxy_stamps, lsst_survey
    from lsst.meas.madness.simulation.catalog import apply_snr_cut
    from lsst.meas.madness.simulation.skypy_catalog import generate_catsim_catalog
    from lsst.meas.madness.evaluation.stamps import paint_stamps
    from astropy.table import vstack

    big = apply_snr_cut(generate_catsim_catalog(0.2, seed, mag_limit_r=20.0), 10.0)
    big = big[(big["r_ab"] >= BIG_CUT["r_min"]) & (big["r_ab"] <= BIG_CUT["r_max"])
              & (big["a_d"] >= BIG_CUT["a_min"]) & (big["a_d"] <= BIG_CUT["a_max"])
              & (big["fluxnorm_disk"] > 0.5)]
    neighbours = apply_snr_cut(generate_catsim_catalog(0.004, seed + 1), 10.0)
    if len(big) < n_fields:
        raise RuntimeError(f"Only {len(big)} big galaxies for {n_fields} fields.")
    survey = lsst_survey()
    bands = tuple(survey.available_filters)
    conditions = LsstConditions.from_surveycodex(bands=bands)
    variance = np.array([conditions.sky_level(b) for b in bands])
    rng = np.random.default_rng(seed)
    fields = []
    lo = (field_size - inner) // 2
    for i in range(n_fields):
        n_nb = int(rng.integers(12, 21))
        rows_nb = rng.choice(len(neighbours), n_nb, replace=False)
        table = vstack([big[i : i + 1], neighbours[rows_nb]])
        centre = field_size // 2 + rng.uniform(-10, 10, 2)
        while True:
            xy = np.concatenate([centre[None], rng.uniform(lo, lo + inner, (n_nb, 2))])
            pix = np.floor(xy + 0.5).astype(int)
            if len({tuple(p) for p in pix}) == len(pix):
                break
        stamps, yx0 = draw_galaxy_stamps(table, np.arange(len(table)), xy, survey=survey)
        isolated = np.zeros((len(table), len(bands), field_size, field_size), np.float32)
        for k, (stamp, origin) in enumerate(zip(stamps, yx0)):
            isolated[k] = paint_stamps(stamp[None], origin[None], (field_size, field_size))[0]
        image = add_btk_noise(isolated.sum(axis=0), seed * 1000 + i, survey=survey).astype(np.float32)
        table["x_peak"] = xy[:, 0]
        table["y_peak"] = xy[:, 1]
        table["field_id"] = i
        fields.append(TestField(field_id=i, image=image, variance=variance.copy(), isolated=isolated,
                                catalog=table, bands=bands))
    return fields


# --- approaches -----------------------------------------------------------------------------------


def outside_stamp(field, band: str = "r"):
    """``(n,)`` fraction of each galaxy's truth flux in ``band`` outside its 45-px stamp."""
    from lsst.meas.madness.evaluation import flux_outside_stamp

    return flux_outside_stamp(field.isolated[:, list(field.bands).index(band)], field.centers_xy, STAMP)


def exponential_tail(model, size: int):
    """Extend one ``(bands, S, S)`` centred model to ``(bands, size, size)`` with a fitted exponential.

    The ellipse comes from the model's second moments (band sum, positive pixels); the scale
    length from a straight-line fit of log(model) against elliptical radius over the annulus
    between 0.6 and 1 times the largest ellipse inside the stamp; the per-band amplitudes by
    least squares on the same annulus. Inside the stamp the model is kept; outside, the tail.
    Returns the extended model and the tail alone (zero inside the stamp).
    """
    import numpy as np

    nb, s, _ = model.shape
    total = np.clip(model.sum(axis=0), 0, None)
    c = s // 2
    yy, xx = np.mgrid[:s, :s] - c
    w = total / max(total.sum(), 1e-30)
    qyy, qxx, qxy = (w * yy * yy).sum(), (w * xx * xx).sum(), (w * xx * yy).sum()
    cov = np.array([[qxx, qxy], [qxy, qyy]])
    evals, evecs = np.linalg.eigh(cov)
    if not np.all(evals > 0):
        return None, None
    inv = np.linalg.inv(cov)

    def radius(y, x):
        return np.sqrt(inv[0, 0] * x * x + 2 * inv[0, 1] * x * y + inv[1, 1] * y * y)

    r_stamp = radius(yy, xx)
    edge = np.concatenate([r_stamp[0], r_stamp[-1], r_stamp[:, 0], r_stamp[:, -1]]).min()
    ring = (r_stamp >= 0.6 * edge) & (r_stamp <= edge) & (total > 0)
    if ring.sum() < 20:
        return None, None
    slope, _ = np.polyfit(r_stamp[ring], np.log(total[ring]), 1)
    if slope >= 0:
        return None, None
    shape = np.exp(slope * r_stamp[ring])
    amplitudes = model[:, ring] @ shape / (shape @ shape)
    big_y, big_x = np.mgrid[:size, :size] - size // 2
    tail = np.clip(amplitudes, 0, None)[:, None, None] * np.exp(slope * radius(big_y, big_x))[None]
    pad = (size - s) // 2
    tail[:, pad : pad + s, pad : pad + s] = 0.0
    extended = tail.copy()
    extended[:, pad : pad + s, pad : pad + s] = model
    return extended.astype(np.float32), tail.astype(np.float32)


def run_set(name, fields, deblender, settings, conditions, args) -> dict:
    """Every approach on one set of fields; per-galaxy rows and the summary."""
    # "off" and the tails' fits are at zoom 1, whatever the engine's default max_zoom.
    zoom1 = settings.replace(max_zoom=1)
    import numpy as np

    from lsst.meas.madness.evaluation.metrics import model_metrics, reference_metrics
    from lsst.meas.madness.evaluation.stamps import cutout_stamps, paint_stamps
    from lsst.meas.madness.engine import geometry
    from lsst.meas.madness.engine.geometry import paste_stamps

    bands = tuple(fields[0].bands)
    rb = bands.index("r")
    approaches = list(args.approaches) + (["scarlet_lite"] if args.scarlet_lite else [])
    per = {a: {"abs_dflux": [], "cosine": [], "cosine93": [], "zoomed": [], "seconds": 0.0} for a in approaches}
    big_flag, nb_flag, keep, truth_out = [], [], [], []
    scarlet = None
    if args.scarlet_lite:
        from lsst.meas.madness.evaluation import methods

        # The 41-px PSF images its published numbers were measured with (doc/large-galaxies.md);
        # big models kept whole: 139-px stamps (module docstring).
        methods.RENDERED_MARGIN = 139 - methods.LEGACY_PSF_SIZE
        scarlet = methods.ScarletLiteMethod(bands, conditions, psf_size=methods.LEGACY_PSF_SIZE)
        scarlet.setup()
    for field in fields:
        variance = np.broadcast_to(np.asarray(field.variance, np.float32)[:, None, None], field.image.shape)
        ref = reference_metrics(field.image, field.isolated, field.catalog, variance=field.variance,
                                conditions=conditions, bands=bands, centers_xy=field.centers_xy)
        truth93, _ = cutout_stamps(field.isolated, field.centers_xy, 93)
        out = outside_stamp(field)
        spills = out > 0.01
        big = spills.copy()
        if name == "dense":  # the planted galaxy only
            big[:] = False
            big[0] = True
        d = np.hypot(*(field.centers_xy[:, None] - field.centers_xy[None]).transpose(2, 0, 1))
        near = ((d < NEIGHBOUR_RADIUS_PX) & big[None, :] & ~np.eye(len(d), dtype=bool)).any(axis=1) & ~big
        big_flag.append(big)
        nb_flag.append(near)
        keep.append(ref.metrics["kappa"][:, rb] <= 5)
        truth_out.append(out)
        cache = {}  # the zoom-1 fit and the automatic zoom choice, each run once per field

        def fit(key, **kwargs):
            """The fit, its seconds, and whether it was made now (inside the caller's timing)."""
            if key in cache:
                return cache[key] + (False,)
            t0 = time.perf_counter()
            result = deblender.deblend(field.image, field.centers_xy, variance=variance, **kwargs)
            cache[key] = (result, time.perf_counter() - t0)
            return cache[key] + (True,)

        for approach in approaches:
            start = time.perf_counter()
            extra = 0.0  # seconds of a cached fit this approach is built on
            zoomed = np.zeros(field.n_galaxies, bool)
            if approach == "scarlet_lite":
                from lsst.meas.madness.evaluation.methods import FieldInput

                output = scarlet.deblend(FieldInput(field.field_id, field.image, variance, field.centers_xy, bands))
                models, yx0 = output.models, output.models_yx0
            elif approach in ("off", "zoom-auto", "zoom-fit", "zoom-oracle", "zoom-oracle-sb"):
                if approach == "zoom-oracle":
                    result, seconds, fresh = fit("oracle", settings=settings, zoom=np.where(spills | big, 2, 1))
                elif approach == "zoom-oracle-sb":
                    geometry.ZOOM_UNITS = "surface"
                    try:
                        result, seconds, fresh = fit("oracle-sb", settings=settings,
                                                     zoom=np.where(spills | big, 2, 1))
                    finally:
                        geometry.ZOOM_UNITS = "flux"
                elif approach == "zoom-auto":
                    result, seconds, fresh = fit("auto", settings=settings.replace(max_zoom=args.max_zoom))
                elif approach == "zoom-fit":
                    result, seconds, fresh = fit("fit", settings=settings.replace(
                        max_zoom=args.max_zoom, zoom_choice="fit", zoom_edge_threshold=args.edge_threshold))
                else:
                    result, seconds, fresh = fit("off", settings=zoom1)
                extra = 0.0 if fresh else seconds
                models, yx0 = result.models, result.stamp_yx0
                zoomed = np.asarray(result.zoom) > 1
            else:
                # The zoom-oracle's sources, fitted at zoom 1, then extended.
                result, seconds, fresh = fit("off", settings=zoom1)
                extra = 0.0 if fresh else seconds
                models, yx0, zoomed = _with_tails(result, spills | big)
                if approach == "tail-refit" and zoomed.any():
                    tails = models - _pad(result.models, models.shape[-1])
                    tail_image = paste_stamps(tails, yx0, field.image.shape[1:])
                    refit = deblender.deblend(field.image - tail_image, field.centers_xy, variance=variance,
                                              settings=zoom1)
                    models = _pad(refit.models, models.shape[-1]) + tails
            per[approach]["seconds"] += time.perf_counter() - start + extra
            metrics = model_metrics(ref, np.asarray(models, np.float32), models_yx0=np.asarray(yx0),
                                    conditions=conditions)
            full = paint_stamps(np.asarray(models, np.float64), np.asarray(yx0), field.image.shape[1:])
            stamps93, _ = cutout_stamps(full, field.centers_xy, 93)
            per[approach]["abs_dflux"].append(np.abs(metrics["flux_residual"][:, rb]))
            per[approach]["cosine"].append(metrics["cosine"][:, rb])
            per[approach]["cosine93"].append(_cosine(stamps93[:, rb], truth93[:, rb]))
            per[approach]["zoomed"].append(zoomed)
            if approach != "scarlet_lite" and not approach.startswith("tail"):
                per[approach].setdefault("edge_flux_fraction", []).append(np.asarray(result.edge_flux_fraction))
            print(f"{name} field {field.field_id} {approach}: {per[approach]['seconds']:.0f} s", flush=True)
    big_flag, nb_flag, keep = (np.concatenate(v) for v in (big_flag, nb_flag, keep))
    summary = {"n_fields": len(fields), "n_galaxies": int(len(keep)), "n_kappa_le_5": int(keep.sum()),
               "n_big": int((big_flag & keep).sum()), "n_neighbours_10arcsec": int((nb_flag & keep).sum()),
               "truth_outside_stamp_r": [float(v) for v in np.concatenate(truth_out)], "approaches": {}}
    for approach, entry in per.items():
        err = np.concatenate(entry["abs_dflux"])
        cos = np.concatenate(entry["cosine"])
        cos93 = np.concatenate(entry["cosine93"])
        zoomed = np.concatenate(entry["zoomed"])
        summary["approaches"][approach] = {
            "big_mean_abs_dflux": _mean(err[big_flag & keep]), "big_mean_cosine": _mean(cos[big_flag & keep]),
            "big_mean_cosine_93px": _mean(cos93[big_flag & keep]),
            "neighbours_mean_abs_dflux": _mean(err[nb_flag & keep]),
            "all_mean_abs_dflux": _mean(err[keep]), "all_median_abs_dflux": float(np.nanmedian(err[keep])),
            "n_zoomed_or_extended": int(zoomed.sum()), "n_big_zoomed": int((zoomed & big_flag).sum()),
            "seconds": round(entry["seconds"], 1),
            "abs_dflux_r": [float(v) for v in err], "zoomed": [bool(v) for v in zoomed],
        }
        if "edge_flux_fraction" in entry:
            summary["approaches"][approach]["edge_flux_fraction"] = [
                float(v) for v in np.concatenate(entry["edge_flux_fraction"])]
    summary["big"] = [bool(v) for v in big_flag]
    summary["neighbour"] = [bool(v) for v in nb_flag]
    summary["kappa_le_5"] = [bool(v) for v in keep]
    return summary


def _pad(models, size: int):
    import numpy as np

    s = models.shape[-1]
    if s == size:
        return np.asarray(models)
    pad = (size - s) // 2
    out = np.zeros(models.shape[:2] + (size, size), np.float32)
    out[:, :, pad : pad + s, pad : pad + s] = models
    return out


def _with_tails(result, select, size: int = 139):
    """The zoom-1 result's models with an exponential tail on the ``select`` sources."""
    import numpy as np

    models = _pad(result.models, size)
    pad = (size - result.models.shape[-1]) // 2
    yx0 = np.asarray(result.stamp_yx0) - pad
    extended = np.zeros(len(models), bool)
    for i in np.flatnonzero(select):
        model, _ = exponential_tail(result.models[i], size)
        if model is not None:
            models[i] = model
            extended[i] = True
    return models, yx0, extended


def _cosine(a, b):
    import numpy as np

    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _mean(values) -> float | None:
    import numpy as np

    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def markdown_table(out: dict) -> str:
    """One table per field set, one row per approach."""
    lines = []
    for name, entry in out["sets"].items():
        lines += ["", f"{name}: {entry['n_fields']} fields, {entry['n_kappa_le_5']} galaxies with kappa <= 5, "
                  f"{entry['n_big']} big, {entry['n_neighbours_10arcsec']} neighbours within 10\"", "",
                  "| approach | big: mean abs(dF/F) r | big: mean cosine r (45 px / 93 px) | neighbours within 10\": "
                  "mean abs(dF/F) r | all: mean abs(dF/F) r | all: median | zoomed or extended (big) | seconds |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for approach, a in entry["approaches"].items():
            lines.append(f"| {approach} | {_fmt(a['big_mean_abs_dflux'])} | {_fmt(a['big_mean_cosine'])} / "
                         f"{_fmt(a['big_mean_cosine_93px'])} | {_fmt(a['neighbours_mean_abs_dflux'])} | "
                         f"{_fmt(a['all_mean_abs_dflux'])} | {_fmt(a['all_median_abs_dflux'])} | "
                         f"{a['n_zoomed_or_extended']} ({a['n_big_zoomed']}) | {a['seconds']:.0f} |")
    return "\n".join(lines)


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
