"""Upper bound of a model of the light beyond the stamps: MADNESS with that light removed.

Usage::

    python scripts/far_light_oracle.py VALIDATION_FIELDS

Deblends each TestField (packaged model, engine defaults, true centres) twice: as it is, and
with every galaxy's light beyond its 45-px stamp (from the complete truth, `iter_test_fields`)
subtracted from the image, and prints the r mean / median abs(dF/F) (kappa_r <= 5, against the
reference flux of the unchanged field) and mean cosine of each. The second is what a perfect
model of that light, fitted with the galaxies, would give at most (the galaxy's own light
beyond its stamp in its aperture is not added back: the largest galaxies' errors are slightly
off). Prints per field as it goes.
"""
import sys
import numpy as np
from lsst.meas.madness import MadnessDeblender
from lsst.meas.madness.evaluation import iter_test_fields
from lsst.meas.madness.evaluation.metrics import model_metrics, reference_metrics
from lsst.meas.madness.simulation import LsstConditions
from lsst.meas.madness.engine.geometry import crop_stamps, stamp_origins_xy
from lsst.meas.madness.evaluation.stamps import paint_stamps
deb = MadnessDeblender.from_bundle()
base, orac, kap, cb, co = [], [], [], [], []
for field in iter_test_fields(sys.argv[1]):
    bands = tuple(field.bands); cond = LsstConditions.from_surveycodex(bands=bands)
    ref = reference_metrics(field.image, field.isolated, field.catalog, variance=field.variance,
                            conditions=cond, bands=bands, centers_xy=field.centers_xy)
    F = ref.metrics["flux_isolated"][:, 2]; kap.append(ref.metrics["kappa"][:, 2])
    sky = np.broadcast_to(np.asarray(field.variance, np.float32)[:, None, None], field.image.shape)
    yx0 = stamp_origins_xy(field.centers_xy, 45)
    inside = paint_stamps(crop_stamps(field.isolated, yx0, 45), yx0, field.image.shape[1:])
    U = (field.isolated - inside).sum(axis=0)
    for img, acc, cacc in ((field.image, base, cb), ((field.image - U).astype(np.float32), orac, co)):
        res = deb.deblend(img, field.centers_xy, variance=sky)
        r2 = ref if img is field.image else reference_metrics(
            img, field.isolated, field.catalog, variance=field.variance, conditions=cond, bands=bands,
            centers_xy=field.centers_xy)
        m = model_metrics(r2, res.models.astype(np.float32), models_yx0=np.asarray(res.stamp_yx0),
                          conditions=cond)
        acc.append(np.abs(m["flux"][:, 2] / F - 1)); cacc.append(m["cosine"][:, 2])
    k = kap[-1] <= 5
    print(field.field_id, "base %.4f oracle %.4f" % (base[-1][k].mean(), orac[-1][k].mean()), flush=True)
k = np.concatenate(kap) <= 5
for name, a, c in (("base", base, cb), ("no light beyond stamps", orac, co)):
    a = np.concatenate(a)[k]; c = np.concatenate(c)[k]
    print(name, "r mean %.4f median %.4f cosine %.4f" % (a.mean(), np.median(a), np.nanmean(c)))
