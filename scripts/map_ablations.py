"""MADNESS in blends under changes of the MAP set-up: does the optimiser or the noise model limit it?

Usage::

    python scripts/map_ablations.py --fields VALIDATION_FIELDS --output ablations.json \
        [--bundle BUNDLE] [--max-fields 8] [--precision mixed_bfloat16] \
        [--ablations default forced200 variance-image variance-truth max100 max60]

Each ablation deblends the same validation TestFields (all galaxies of a field as one blend, true
centres) with the engine and measures every galaxy with the paper's apertures (kappa <= 5):

- ``default``: the engine's defaults (paper: EWMA stop, Adam lr 0.05 x0.8 every 30 steps; and,
  unlike the paper, a flux factor per source and band, ``MapSettings.fit_amplitudes``);
- ``paper``: the defaults without the flux factors (the paper's MAP);
- ``forced200``: 200 MAP steps for every blend (no early stop);
- ``variance-image``: inverse-variance weights from sky + the observed image (source Poisson
  noise, as a coadd's variance plane carries it) instead of the sky alone;
- ``variance-truth``: sky + the noiseless truth (the exact variance the noise was drawn with);
- ``max100``, ``max60``: the default stopping rule with at most 100 or 60 steps (issue 13: do the
  steps after those buy anything?);
- ``amp<SIGMA>`` (e.g. ``amp0.1``, ``amp0.5``): a flux factor per source and band fitted with the
  latents (``MapSettings.fit_amplitudes``) with prior width SIGMA in log flux;
- ``ampstep<SCALE>`` (e.g. ``ampstep0.1``): the factors' Adam rate SCALE times the latents'
  (``MapSettings.amplitude_step_scale``);
- ``prior<W>`` (e.g. ``prior0.5``): the flow prior's weight W in the objective
  (``MapSettings.prior_weight``; 1 is the paper's, 0 a maximum-likelihood fit);
- ``min<N>``, ``rtol<X>``, ``atol<X>``, ``sfloor<X>``: the stopping rule's ``min_iter``,
  ``rtol``, ``stop_atol`` and ``stop_floor``;
- ``lr<X>``, ``decay<X>``: Adam's initial learning rate and its decay factor every
  ``lr_decay_steps`` (``MapSettings.learning_rate``, ``lr_decay``);
- ``lbfgs``, ``lbfgs-scalar``, ``lbfgs-after<N>``: L-BFGS instead of Adam for every fit
  (``MapSettings.optimizer``), with its diagonal initial Hessian, with a scalar one
  (``lbfgs_diagonal=False``), or after N Adam steps (``lbfgs_after``);
- ``freeze<X>``: sources stop one by one when their variables drift less than X of Adam's
  pace (``MapSettings.freeze_drift``);
- ``start2-<X>``: a second fit of every blend at learning rate X (``MapSettings.second_start_rate``);
- ``zoom1``: no per-source zoom (``MapSettings(max_zoom=1)``, the task's default);
- ``zoom-guess``, ``zoom-fit``: ``MapSettings(max_zoom=3)`` with the zoom chosen from the
  VAE-deblender's guess or from the zoom-1 fit (``MapSettings.zoom_choice``);
- ``zoomout<X>``, ``zoomedge<X>``: the guess's ``zoom_outside_threshold`` or the fit's
  ``zoom_edge_threshold`` (with ``zoom_choice="fit"``) set to X;
- ``envelope``, ``envelope<X>``: the light of galaxies beyond their stamps fitted as envelopes
  (``MapSettings.fit_envelopes``), with ``envelope_edge_sigma`` X (the photometry counts
  each envelope as its galaxy's);
- ``noenvelope``: no envelopes, whatever the defaults.
- ``nowings``: no PSF wings beyond the stamps (``MapSettings(psf_wings=False)``; every fit is
  given the PSF the fields were drawn with, and by default each source's light beyond its stamp
  is drawn from it, ``lsst.meas.madness.engine.wings``).
- ``nooutskirts``: the PSF wings alone, without each galaxy's outer profile from 12 px
  (``MapSettings(outskirts=False)``).
- ``twopass``: a diagnostic, not a setting: every field fitted once, then again on its image
  minus every source's outskirts and wings from the first fit (which the engine otherwise draws
  after the fit), so that no model can take a neighbour's outer light (``doc/error-budget.md``,
  "Where the shape error lives"); its seconds hold both fits.
- ``alonestart``: a diagnostic: the joint fit started from each galaxy's own fit alone on its
  noiseless image plus the field's noise (latents and flux factors, at the zoom the default fit
  chose; ``deblend(..., init=)``) instead of the VAE-deblender's guesses. Where it ends better
  than the default, the default's start or path is what limits it; where it ends where the
  default does, the joint objective itself prefers that trade of light between neighbours.
- ``neighbours-fixed``: a diagnostic: after a first fit, each galaxy is fitted again alone on the
  image minus every other source's fitted model (envelopes and wings included), its neighbours
  held at their fits. Where it ends better than the joint fit, the joint fit traded light the
  neighbours' models could have held; where it does not, the neighbours' misfit is in the light
  it is given. Its seconds hold both fits.

- ``refit<DMAG>``: the engine's refit of the same sources (``MapSettings.refit_beside_brighter``),
  all of a field's refits in one batch, the blend rebuilt from the refits' variables;
  ``refit<DMAG>warm`` starts them from the blend's fit (``MapSettings.refit_start="fit"``).
- ``refit-brighter<DMAG>``: after a first fit, each galaxy whose nearest galaxy (peak distance)
  has a model more than DMAG magnitudes brighter (band sum) is fitted again alone on the image
  minus every other source's model (as ``neighbours-fixed``, at its zoom, without an envelope of
  its own: in a bright galaxy's light it would take what that galaxy's envelope left), and its
  refit replaces its model in the blend; the others keep the first fit, so the models stay one
  blend model and every metric applies. Its seconds hold both fits.

- ``polish``: after a first fit, each galaxy is fitted again alone on the image minus its
  neighbours' fitted models (as ``neighbours-fixed``), and the joint fit is run again from those
  latents and flux factors (``deblend(..., init=)``, at the first fit's zoom); the field keeps
  whichever of the two joint fits ends with the lower objective. Its seconds hold all three.

``--score-results NAME=FILE`` scores, beside the ablations (or alone, with ``--ablations`` given no
names), fits made elsewhere and saved by ``benchmarks/bench_deblend.py --save-results`` on the
same fields (blend k = field k of the first ``--max-fields``): e.g. the fits of a GPU node, which
has JAX but not the simulation stack this scoring needs. Their time is the other machine's and
is not reported here.

Writes the JSON (mean abs(dF/F) per band, median in r, mean steps, seconds) and prints a
Markdown table. Beside the JSON, ``<output stem>.npz`` keeps every galaxy's numbers
(``<ablation>/abs_flux_residual`` and the signed ``flux_residual`` (galaxies, bands), ``cosine``,
``e1_residual``, ``colour_residual_gr`` (g-r against the catalogue), ``log_prior`` (the flow
log-density of each galaxy's fitted latents), and ``kappa``), in
field order, so that two runs on the same fields can be compared galaxy by galaxy
(``scripts/paired_comparison.py``): a mean over a few hundred galaxies is decided by its few
catastrophic ones, a paired difference is not. Runs in this process; set
``TF_NUM_INTRAOP_THREADS`` to share the cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

ABLATIONS = ("default", "paper", "forced200", "variance-image", "variance-truth", "max100", "max60", "zoom1",
             "zoom-guess", "zoom-fit", "envelope", "noenvelope", "nowings", "nooutskirts", "twopass",
             "alonestart", "neighbours-fixed", "polish", "lbfgs", "lbfgs-scalar")


def _ablation(name: str) -> str:
    """An ``--ablations`` value: one of `ABLATIONS`, ``amp<SIGMA>``, ``ampstep<SCALE>``, ``prior<W>``,
    or several of them joined by ``+`` (applied in order, e.g. ``prior0+forced200``)."""
    if "+" in name:
        for part in name.split("+"):
            _ablation(part)
        return name
    if name in ABLATIONS:
        return name
    try:
        if name.startswith("prior") and float(name[5:]) >= 0:
            return name
        if name.startswith("sym") and float(name[3:]) >= 0:
            return name
        if name.startswith("min") and int(name[3:]) >= 0:
            return name
        if name.startswith("rtol") and float(name[4:]) > 0:
            return name
        if name.startswith("atol") and float(name[4:]) > 0:
            return name
        if name.startswith("sfloor") and float(name[6:]) > 0:
            return name
        if name.startswith("lbfgs-after") and int(name[11:]) >= 0:
            return name
        if name.startswith("lr") and float(name[2:]) > 0:
            return name
        if name.startswith("start2-") and float(name[7:]) > 0:
            return name
        if name.startswith("decay") and 0 < float(name[5:]) <= 1:
            return name
        if name.startswith("freeze") and float(name[6:]) > 0:
            return name
        if name.startswith("refit-brighter") and float(name[14:]) >= 0:
            return name
        if name.startswith("refit") and float(name[5:].removesuffix("warm")) >= 0:
            return name
        if name.startswith("envh") and int(name[4:]) >= 0:
            return name
        if name.startswith("envelope") and float(name[8:]) > 0:
            return name
        if name.startswith("ampstep") and float(name[7:]) > 0:
            return name
        if name.startswith(("zoomout", "zoomedge")) and 0 < float(name.removeprefix("zoomout")
                                                                 .removeprefix("zoomedge")) < 1:
            return name
        if name.startswith("amp") and float(name[3:]) > 0:
            return name
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(ABLATIONS)}, amp<SIGMA>, "
                                     "ampstep<SCALE>, prior<W>, min<N>, rtol<X>, atol<X>, sfloor<X>, lr<X>, "
                                     "decay<X>, freeze<X>, zoomout<X>, zoomedge<X>, envh<N>, lbfgs-after<N>, "
                                     "refit-brighter<DMAG>, refit<DMAG> or envelope<X>")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="model bundle (default: the packaged one)")
    parser.add_argument("--fields", required=True, type=Path, help="validation TestFields dataset directory")
    parser.add_argument("--max-fields", type=int, default=8)
    parser.add_argument("--field-ids", type=int, nargs="+", default=None,
                        help="only these fields (0-based, among the first --max-fields), e.g. the ones where an "
                        "ablation can change anything")
    parser.add_argument("--output", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--ablations", nargs="*", type=_ablation,
                        default=["default", "paper", "forced200", "variance-image", "variance-truth"],
                        help=f"any of {', '.join(ABLATIONS)}, amp<SIGMA>, ampstep<SCALE>, prior<W>, min<N>, "
                        "rtol<X>, atol<X>, sfloor<X>, lr<X>, decay<X>, or several joined by '+'")
    parser.add_argument("--precision", default=None, help="MapSettings.precision of every ablation")
    parser.add_argument("--score-results", nargs="+", default=[], metavar="NAME=FILE",
                        help="also score fits saved by benchmarks/bench_deblend.py --save-results as NAME")
    args = parser.parse_args(argv)
    saved = {}
    for item in args.score_results:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            parser.error(f"--score-results takes NAME=FILE, got {item!r}")
        saved[name] = Path(file)
    names = list(args.ablations) + [n for n in saved if n not in args.ablations]
    if not names:
        parser.error("nothing to do: give --ablations or --score-results")

    import numpy as np

    from lsst.meas.madness import MadnessDeblender
    from lsst.meas.madness.evaluation import iter_test_fields
    from lsst.meas.madness.evaluation.methods import psf_images
    from lsst.meas.madness.evaluation.metrics import model_metrics, reference_metrics
    from lsst.meas.madness.simulation import LsstConditions

    deblender = MadnessDeblender.from_bundle(args.bundle)
    fields = list(iter_test_fields(args.fields, max_fields=args.max_fields))
    field_ids = list(range(len(fields))) if args.field_ids is None else sorted(set(args.field_ids))
    if field_ids and not 0 <= field_ids[0] <= field_ids[-1] < len(fields):
        parser.error(f"--field-ids must be in [0, {len(fields)}); got {field_ids}")
    fields = [fields[k] for k in field_ids]
    bands = tuple(fields[0].bands)
    conditions = LsstConditions.from_surveycodex(bands=bands)
    # The PSF the fields were drawn with, wide enough for a wing to reach across a field.
    psf = psf_images(conditions, bands, 2 * max(fields[0].image.shape[1:]) + 1)
    errors = {name: [] for name in names}
    cosines = {name: [] for name in names}
    e1 = {name: [] for name in names}
    colours = {name: [] for name in names}
    signed = {name: [] for name in names}
    steps = {name: [] for name in names}
    log_priors = {name: [] for name in names}
    seconds = dict.fromkeys(names, 0.0)
    saved_data = {name: np.load(file) for name, file in saved.items()}
    for name, data in saved_data.items():
        if int(data["n_blends"]) < len(fields) or (field_ids and int(data["n_blends"]) <= field_ids[-1]):
            parser.error(f"{saved[name]} holds {int(data['n_blends'])} fits, fewer than the fields asked for")
    kappa = []
    # One untimed call first, so that tracing and compilation are not charged to the first ablation.
    warm = fields[0]
    if args.ablations:
        deblender.deblend(warm.image, warm.centers_xy,
                          variance=np.broadcast_to(np.asarray(warm.variance, np.float32)[:, None, None],
                                                   warm.image.shape),
                          settings=deblender.settings.replace(precision=args.precision) if args.precision
                          else deblender.settings)
    for field_id, field in zip(field_ids, fields):
        ref = reference_metrics(field.image, field.isolated, field.catalog, variance=field.variance,
                                conditions=conditions, bands=bands, centers_xy=field.centers_xy)
        kappa.append(ref.metrics["kappa"])
        sky = np.broadcast_to(np.asarray(field.variance, np.float32)[:, None, None], field.image.shape)
        for name in args.ablations:
            settings = deblender.settings
            if args.precision:
                settings = settings.replace(precision=args.precision)
            variance = sky.copy()
            for part in name.split("+"):
                settings, variance = _apply(part, settings, variance, sky, field)
            start = time.perf_counter()
            image = field.image
            parts = name.split("+")
            if "twopass" in parts:
                image = image - _outer_light(deblender, image, field.centers_xy, variance, settings, psf)
            if "neighbours-fixed" in parts:
                result = _neighbours_fixed(deblender, image, field.centers_xy, variance, settings, psf)
            elif any(part.startswith("refit-brighter") for part in parts):
                dmag = float(next(part for part in parts if part.startswith("refit-brighter"))[14:])
                result = _refit_beside_brighter(deblender, image, field.centers_xy, variance, settings, psf,
                                                dmag)
            elif "polish" in parts:
                result = _polish(deblender, image, field.centers_xy, variance, settings, psf)
            elif "alonestart" in parts:
                init, zoom = _alone_start(deblender, field, image, variance, settings, psf)
                result = deblender.deblend(image, field.centers_xy, variance=variance, settings=settings,
                                           psf=psf, zoom=zoom, init=init)
            else:
                result = deblender.deblend(image, field.centers_xy, variance=variance, settings=settings,
                                           psf=psf)
            seconds[name] += time.perf_counter() - start
            far_light, far_sources = result.far_light()
            metrics = model_metrics(ref, result.models.astype(np.float32), models_yx0=np.asarray(result.stamp_yx0),
                                    conditions=conditions, envelopes=far_light, envelope_sources=far_sources)
            errors[name].append(np.abs(metrics["flux_residual"]))
            signed[name].append(metrics["flux_residual"])
            cosines[name].append(metrics["cosine"])
            e1[name].append(metrics["e1_residual"])
            colours[name].append(metrics["colour_residual_true"])
            steps[name].append(int(np.max(result.n_iter)))
            log_priors[name].append(np.asarray(result.log_prior, np.float64))
        for name, data in saved_data.items():
            if name in args.ablations:
                continue
            key = f"{field_id}/"
            envelopes = data[key + "envelopes"] if key + "envelopes" in data else None
            metrics = model_metrics(ref, data[key + "models"].astype(np.float32),
                                    models_yx0=np.asarray(data[key + "stamp_yx0"]), conditions=conditions,
                                    envelopes=envelopes,
                                    envelope_sources=data[key + "envelope_sources"] if envelopes is not None
                                    else None)
            errors[name].append(np.abs(metrics["flux_residual"]))
            signed[name].append(metrics["flux_residual"])
            cosines[name].append(metrics["cosine"])
            e1[name].append(metrics["e1_residual"])
            colours[name].append(metrics["colour_residual_true"])
            steps[name].append(int(np.max(data[key + "n_iter"])))
            log_priors[name].append(np.full(len(data[key + "models"]), np.nan))
    kappa = np.concatenate(kappa)
    keep = kappa[:, bands.index("r")] <= 5
    out = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "bundle": args.bundle or "packaged default", "fields": args.fields.name, "n_fields": len(fields),
           "field_ids": None if args.field_ids is None else field_ids,
           "n_galaxies_kappa_le_5": int(keep.sum()), "machine": f"{os.cpu_count()} cores",
           "precision": args.precision or deblender.settings.precision, "ablations": {},
           "scored_results": {name: str(file) for name, file in saved.items()}}
    for name in names:
        err = np.concatenate(errors[name])[keep]
        out["ablations"][name] = {
            "mean_abs_flux_residual": {b: float(np.nanmean(err[:, i])) for i, b in enumerate(bands)},
            # The evaluation report's cut: each band's own kappa <= 5 (the r cut keeps u galaxies
            # whose u aperture is dominated by neighbours, which swamp the u mean).
            "mean_abs_flux_residual_own_kappa": {
                b: float(np.nanmean(np.concatenate(errors[name])[kappa[:, i] <= 5, i]))
                for i, b in enumerate(bands)},
            "median_abs_flux_residual_r": float(np.nanmedian(err[:, bands.index("r")])),
            "mean_cosine_r": float(np.nanmean(np.concatenate(cosines[name])[keep][:, bands.index("r")])),
            "std_e1_residual_r": float(np.nanstd(_band(np.concatenate(e1[name])[keep], bands.index("r")))),
            "std_colour_residual_gr": float(np.nanstd(np.concatenate(colours[name])[keep])),
            "mean_steps": float(np.mean(steps[name])), "seconds": round(seconds[name], 1)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    per_galaxy = {"kappa": kappa, "field_of_galaxy": np.concatenate(
        [np.full(len(e), k) for k, e in zip(field_ids, errors[names[0]])])}
    for name in names:
        per_galaxy[f"{name}/abs_flux_residual"] = np.concatenate(errors[name])
        per_galaxy[f"{name}/cosine"] = np.concatenate(cosines[name])
        per_galaxy[f"{name}/e1_residual"] = np.concatenate(e1[name])
        per_galaxy[f"{name}/log_prior"] = np.concatenate(log_priors[name])
        # Signed, so that a colour scatter can be traced to the galaxies and bands that make it.
        per_galaxy[f"{name}/colour_residual_gr"] = np.concatenate(colours[name])
        per_galaxy[f"{name}/flux_residual"] = np.concatenate(signed[name])
    npz = args.output.with_suffix(".npz")
    tmp = npz.with_name(npz.stem + ".tmp.npz")
    np.savez_compressed(tmp, bands=np.array(bands), **per_galaxy)
    os.replace(tmp, npz)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, args.output)
    print(markdown_table(out))
    return 0


def _outer_light(deblender, image, centers_xy, variance, settings, psf):
    """``(bands, H, W)`` every source's outskirts and wings from a first fit of ``image`` (``twopass``)."""
    import numpy as np

    from lsst.meas.madness.engine.geometry import paste_stamps, peaks_to_pixels
    from lsst.meas.madness.engine.wings import complete_outskirts, paint_wings, wing_profiles

    # The outer profile is drawn after the fit, so a fit without it is the same fit; its raw models
    # are what the profiles are measured on.
    first = deblender.deblend(image, centers_xy, variance=variance, settings=settings.replace(outskirts=False),
                              psf=psf)
    unit = np.asarray(first.psf, np.float64)
    profiles = wing_profiles(first.models, first.footprint_sizes, first.zoom, unit, winged=~first.enveloped)
    lifted = complete_outskirts(first.models, profiles, unit) - first.models
    return (paste_stamps(lifted.astype(np.float32), first.stamp_yx0, first.image_shape, dtype=np.float32)
            + paint_wings(profiles, peaks_to_pixels(first.peaks_xy), unit, first.image_shape))


def _alone_start(deblender, field, image, variance, settings, psf):
    """``(init, zoom)`` of ``alonestart``: each galaxy's latents and log flux factors fitted alone on
    its noiseless image plus the field's noise, at the zoom a default fit of ``image`` chose."""
    import numpy as np

    if settings.zoom_choice == "guess":  # the deblend's own choice, without its fit
        zoom = deblender.choose_zoom([dict(image=image, peaks_xy=field.centers_xy, variance=variance)],
                                     settings=settings)[0]
    else:  # chosen from the fit
        zoom = deblender.deblend(image, field.centers_xy, variance=variance, settings=settings, psf=psf).zoom
    noise = field.image - field.isolated.sum(axis=0)
    # No PSF: the wings are drawn after the fit and do not move its latents.
    alone = deblender.deblend_batch(
        [dict(image=(field.isolated[k] + noise).astype(np.float32), peaks_xy=field.centers_xy[k : k + 1],
              variance=variance, zoom=zoom[k : k + 1]) for k in range(len(field.centers_xy))],
        settings=settings)
    init = np.stack([np.concatenate([a.latents[0], np.log(a.amplitudes[0])]) for a in alone])
    return init, zoom


class _Refits:
    """The per-galaxy refits of ``neighbours-fixed`` as one blend's result (what the scoring reads)."""

    def __init__(self, fits, first):
        import numpy as np

        side = max(f.models.shape[-1] for f in fits)
        pad = [(side - f.models.shape[-1]) // 2 for f in fits]
        self.models = np.stack([np.pad(f.models[0], ((0, 0), (p, p), (p, p))) for f, p in zip(fits, pad)])
        self.stamp_yx0 = np.stack([np.asarray(f.stamp_yx0[0]) - p for f, p in zip(fits, pad)])
        self.n_iter = np.array([int(np.max(f.n_iter)) for f in fits]) + int(np.max(first.n_iter))
        self.log_prior = np.array([float(f.log_prior[0]) for f in fits])
        self._fits = fits

    def far_light(self):
        import numpy as np

        images, sources = [], []
        for k, fit in enumerate(self._fits):
            light, _ = fit.far_light()
            if light is not None:
                images.append(light.sum(axis=0))
                sources.append(k)
        if not images:
            return None, None
        return np.stack(images).astype(np.float32), np.array(sources, np.int64)


class _Hybrid:
    """The first fit with some sources' models replaced by their refits (one blend model)."""

    def __init__(self, first, refits: dict):
        import numpy as np

        self._first, self._refits = first, refits
        side = max([first.models.shape[-1]] + [f.models.shape[-1] for f in refits.values()])
        models, yx0 = [], []
        for k in range(first.n_sources):
            fit, row = (refits[k], 0) if k in refits else (first, k)
            m, o = fit.models[row], fit.stamp_yx0[row]
            p = (side - m.shape[-1]) // 2
            models.append(np.pad(m, ((0, 0), (p, p), (p, p))))
            yx0.append(np.asarray(o) - p)
        self.models, self.stamp_yx0 = np.stack(models), np.stack(yx0)
        extra = max([int(np.max(f.n_iter)) for f in refits.values()], default=0)
        self.n_iter = np.asarray(first.n_iter) + extra
        self.log_prior = np.array([float(refits[k].log_prior[0]) if k in refits else float(first.log_prior[k])
                                   for k in range(first.n_sources)])

    def far_light(self):
        import numpy as np

        images, sources = [], []
        light, owners = self._first.far_light()
        if light is not None:
            for image, k in zip(light, owners):
                if int(k) not in self._refits:
                    images.append(image)
                    sources.append(int(k))
        for k, fit in self._refits.items():
            refit_light, _ = fit.far_light()
            if refit_light is not None:
                images.append(refit_light.sum(axis=0))
                sources.append(k)
        if not images:
            return None, None
        return np.stack(images).astype(np.float32), np.array(sources, np.int64)


def _refit_beside_brighter(deblender, image, centers_xy, variance, settings, psf, dmag: float):
    """``refit-brighter<DMAG>``: after a first fit, each source whose nearest source (peak distance)
    has a model more than ``dmag`` magnitudes brighter (band sum) is fitted again alone on the
    image minus every other source's model, at its zoom and without envelopes; its refit replaces
    its model in the blend."""
    import numpy as np

    first = deblender.deblend(image, centers_xy, variance=variance, settings=settings, psf=psf)
    flux = np.clip(first.models, 0.0, None).sum(axis=(1, 2, 3))
    peaks = np.asarray(first.peaks_xy, np.float64)
    distance = np.hypot(*(peaks[:, None, :] - peaks[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    nearest = np.argmin(distance, axis=1) if len(peaks) > 1 else np.zeros(len(peaks), int)
    chosen = [k for k in range(first.n_sources)
              if len(peaks) > 1 and flux[nearest[k]] > 10 ** (0.4 * dmag) * max(flux[k], 1e-30)]
    if not chosen:
        return first
    # A faint galaxy's refit gets no envelope: in a bright galaxy's light it would take what
    # that galaxy's envelope left.
    fits = _refit_alone(deblender, image, centers_xy, variance, settings.replace(fit_envelopes=False), psf,
                        first, chosen)
    print(f"refit-brighter{dmag:g}: {len(chosen)} of {first.n_sources} sources refitted", flush=True)
    return _Hybrid(first, dict(zip(chosen, fits)))


def _refits_without_neighbours(deblender, image, centers_xy, variance, settings, psf):
    """A first fit of ``image`` and each of its sources fitted again alone on ``image`` minus its
    neighbours' models from that fit, at the zoom the first fit chose: ``(first, fits)``."""
    first = deblender.deblend(image, centers_xy, variance=variance, settings=settings, psf=psf)
    return first, _refit_alone(deblender, image, centers_xy, variance, settings, psf, first,
                               range(first.n_sources))


def _refit_alone(deblender, image, centers_xy, variance, settings, psf, first, indices):
    """Sources ``indices`` each fitted again alone on ``image`` minus every other source's model
    from ``first``, at the zoom ``first`` chose (one batch)."""
    import numpy as np

    others = first.model_image()
    return deblender.deblend_batch(
        [dict(image=(image - others + first.source_image(k)).astype(np.float32), peaks_xy=centers_xy[k : k + 1],
              variance=variance, zoom=first.zoom[k : k + 1], psf=psf) for k in indices],
        settings=settings)


def _neighbours_fixed(deblender, image, centers_xy, variance, settings, psf):
    """``neighbours-fixed``: each source fitted again alone on ``image`` minus its neighbours'
    models from a first fit, at the zoom the first fit chose."""
    first, fits = _refits_without_neighbours(deblender, image, centers_xy, variance, settings, psf)
    return _Refits(fits, first)


def _polish(deblender, image, centers_xy, variance, settings, psf):
    """``polish``: the joint fit again from each source's refit on ``image`` minus its neighbours'
    first-fit models; the joint fit of the lower objective."""
    import numpy as np

    first, fits = _refits_without_neighbours(deblender, image, centers_xy, variance, settings, psf)
    init = np.stack([np.concatenate([f.latents[0], np.log(f.amplitudes[0])]) for f in fits])
    second = deblender.deblend(image, centers_xy, variance=variance, settings=settings, psf=psf,
                               zoom=first.zoom, init=init)
    print(f"polish: objective {first.objective_final:.6g} -> {second.objective_final:.6g}, steps "
          f"{int(np.max(first.n_iter))} + {int(np.max(second.n_iter))}", flush=True)
    return second if second.objective_final < first.objective_final else first


def _apply(name: str, settings, variance, sky, field):
    """The settings and weights of one ablation ``name`` (not joined), applied to ``settings``."""
    import numpy as np

    if name == "paper":
        settings = settings.replace(fit_amplitudes=False)
    elif name == "forced200":
        settings = settings.replace(min_iter=200, max_iter=200)
    elif name == "variance-image":
        variance = (sky + np.clip(field.image, 0, None)).astype(np.float32)
    elif name == "variance-truth":
        variance = (sky + np.clip(field.isolated.sum(axis=0), 0, None)).astype(np.float32)
    elif name in ("max100", "max60"):
        settings = settings.replace(max_iter=int(name[3:]))
    elif name == "zoom1":
        settings = settings.replace(max_zoom=1)
    elif name in ("zoom-guess", "zoom-fit"):
        settings = settings.replace(max_zoom=3, zoom_choice=name[5:])
    elif name.startswith("zoomout"):
        settings = settings.replace(zoom_outside_threshold=float(name[7:]))
    elif name.startswith("zoomedge"):
        settings = settings.replace(zoom_choice="fit", zoom_edge_threshold=float(name[8:]))
    elif name == "noenvelope":
        settings = settings.replace(fit_envelopes=False)
    elif name == "nowings":
        settings = settings.replace(psf_wings=False)
    elif name == "nooutskirts":
        settings = settings.replace(outskirts=False)
    elif name == "envelope":
        settings = settings.replace(fit_envelopes=True)
    elif name.startswith("envh"):
        settings = settings.replace(envelope_harmonics=int(name[4:]))
    elif name.startswith("refit") and not name.startswith("refit-"):
        warm = name.endswith("warm")
        settings = settings.replace(refit_beside_brighter=float(name[5:].removesuffix("warm")),
                                    refit_start="fit" if warm else "guess")
    elif name.startswith("envelope"):
        settings = settings.replace(fit_envelopes=True, envelope_edge_sigma=float(name[8:]))
    elif name.startswith("prior"):
        settings = settings.replace(prior_weight=float(name[5:]))
    elif name.startswith("sym"):
        settings = settings.replace(symmetry_weight=float(name[3:]))
    elif name.startswith("min"):
        settings = settings.replace(min_iter=int(name[3:]))
    elif name.startswith("rtol"):
        settings = settings.replace(rtol=float(name[4:]))
    elif name.startswith("atol"):
        settings = settings.replace(stop_atol=float(name[4:]))
    elif name.startswith("sfloor"):
        settings = settings.replace(stop_floor=float(name[6:]))
    elif name == "lbfgs":
        settings = settings.replace(optimizer="lbfgs")
    elif name.startswith("lbfgs-after"):
        settings = settings.replace(optimizer="lbfgs", lbfgs_after=int(name[11:]))
    elif name == "lbfgs-scalar":
        settings = settings.replace(optimizer="lbfgs", lbfgs_diagonal=False)
    elif name.startswith("lr"):
        settings = settings.replace(learning_rate=float(name[2:]))
    elif name.startswith("start2-"):
        settings = settings.replace(second_start_rate=float(name[7:]))
    elif name.startswith("decay"):
        settings = settings.replace(lr_decay=float(name[5:]))
    elif name.startswith("freeze"):
        settings = settings.replace(freeze_drift=float(name[6:]))
    elif name.startswith("ampstep"):
        settings = settings.replace(fit_amplitudes=True, amplitude_step_scale=float(name[7:]))
    elif name.startswith("amp"):
        settings = settings.replace(fit_amplitudes=True, amplitude_sigma=float(name[3:]))
    return settings, variance


def _band(values, index):
    """Column ``index`` of a per-band metric, or the metric itself when it has one value per galaxy."""
    return values[:, index] if values.ndim == 2 else values


def markdown_table(result: dict) -> str:
    """One row per ablation: mean abs(dF/F) per band, the r median, steps and time."""
    bands = list(next(iter(result["ablations"].values()))["mean_abs_flux_residual"])
    lines = ["| ablation | " + " | ".join(f"mean abs(dF/F) {b}" for b in bands)
             + " | median abs(dF/F) r | mean cosine r | std e1 residual r | std dC (g-r) "
             "| steps (mean of blends) | seconds |",
             "| " + " | ".join(["---"] * (len(bands) + 7)) + " |"]
    for name, entry in result["ablations"].items():
        lines.append(f"| {name} | " + " | ".join(f"{entry['mean_abs_flux_residual'][b]:.4f}" for b in bands)
                     + f" | {entry['median_abs_flux_residual_r']:.4f} | {entry.get('mean_cosine_r', float('nan')):.4f}"
                     f" | {entry.get('std_e1_residual_r', float('nan')):.4f}"
                     f" | {entry.get('std_colour_residual_gr', float('nan')):.4f} | {entry['mean_steps']:.0f} | "
                     f"{entry['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
