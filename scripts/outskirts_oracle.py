"""Oracle: how much of MADNESS's flux error is the light of each galaxy far from its centre.

Usage::

    python scripts/outskirts_oracle.py FIELDS_DIR N_FIELDS OUT.json [--psf-size 201]

MADNESS (packaged model, engine defaults, the fields' PSF at ``--psf-size``) deblends the first
``N_FIELDS`` TestFields; then each galaxy's model is replaced by its true isolated image
(a) beyond its decoded stamp's box (zoom-aware; its PSF wing or envelope replaced as well), (a')
the same for the ordinary sources only (no envelope, zoom 1: their PSF wing replaced), and (b)
beyond radii of 16, 12 and 8 px from its pixel, and every variant is scored with the paper's
metrics. Prints and writes the r-band mean and median abs(dF/F) (kappa_r <= 5) per variant.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from lsst.meas.madness.evaluation import iter_test_fields
from lsst.meas.madness.evaluation.methods import get_method, psf_images
from lsst.meas.madness.evaluation.metrics import model_metrics, reference_metrics
from lsst.meas.madness.evaluation.stamps import paint_stamps
from lsst.meas.madness.simulation import LsstConditions

VARIANTS = ("plain", "beyond the stamp", "beyond the stamp, ordinary sources", "beyond 16 px", "beyond 12 px",
            "beyond 8 px")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fields")
    parser.add_argument("n_fields", type=int)
    parser.add_argument("output")
    parser.add_argument("--psf-size", type=int, default=201)
    args = parser.parse_args()
    fields = list(iter_test_fields(args.fields, max_fields=args.n_fields))
    bands = tuple(fields[0].bands)
    r = bands.index("r")
    cond = LsstConditions.from_surveycodex(bands=bands)
    method = get_method("madness")(bands, cond, None, psf_size=args.psf_size)
    method.setup()
    errors = {v: [] for v in VARIANTS}
    kappa = []
    for field in fields:
        ref = reference_metrics(field.image, field.isolated, field.catalog, variance=field.variance,
                                conditions=cond, bands=bands, centers_xy=field.centers_xy)
        # As MadnessMethod runs it, keeping the result for its envelope and zoom flags.
        variance = np.broadcast_to(np.asarray(field.variance, np.float32)[:, None, None], field.image.shape)
        result = method.deblender.deblend(field.image, field.centers_xy, variance=variance.copy(),
                                          psf=psf_images(cond, bands, args.psf_size))
        ordinary = ~np.asarray(result.enveloped) & (np.asarray(result.zoom) == 1)
        height, width = field.image.shape[1:]
        stamps = paint_stamps(result.models, np.asarray(result.stamp_yx0), (height, width)).astype(np.float64)
        full = stamps.copy()
        far, sources = result.far_light()  # envelopes and PSF wings
        if far is not None:
            for image, source in zip(far, sources):
                full[source] += image
        truth = np.asarray(field.isolated, np.float64)
        y, x = np.mgrid[:height, :width]
        pixels = np.floor(field.centers_xy + 0.5).astype(int)
        for variant in VARIANTS:
            models = full.copy()
            for i in range(len(pixels)):
                if variant == "plain":
                    break
                if variant.startswith("beyond the stamp"):
                    if variant.endswith("ordinary sources") and not ordinary[i]:
                        continue
                    ys, xs = np.nonzero(np.abs(stamps[i]).sum(axis=0) > 0)
                    far = np.ones((height, width), bool)
                    far[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = False
                else:
                    radius = float(variant.split()[1])
                    far = np.hypot(x - pixels[i, 0], y - pixels[i, 1]) > radius
                models[i][:, far] = truth[i][:, far]
            metrics = model_metrics(ref, models.astype(np.float32), models_yx0=None, conditions=cond)
            errors[variant].append(np.abs(metrics["flux_residual"][:, r]))
        kappa.append(ref.metrics["kappa"][:, r])
    method.close()
    keep = np.concatenate(kappa) <= 5
    result = {"fields": args.fields, "n_fields": len(fields), "psf_size": args.psf_size, "variants": {}}
    for variant in VARIANTS:
        e = np.concatenate(errors[variant])[keep]
        result["variants"][variant] = {"r_mean": float(np.nanmean(e)), "r_median": float(np.nanmedian(e))}
        print(f"{variant}: r mean {np.nanmean(e):.4f}, median {np.nanmedian(e):.4f}", flush=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
