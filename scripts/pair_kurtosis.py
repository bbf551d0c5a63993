#!/usr/bin/env python
"""Excess kurtosis of a source's light along its major axis: single galaxies against close pairs.

The pair splits (`lsst.meas.madness.tasks.pair_split`) read two galaxies into the second moments of
a source's light; a flat single disc has the same second moments (doc/detection.md, "Stop 69").
The fourth moment along the major axis tells them apart in principle: two members ``d`` apart
make the profile flatter than one (for two equal Gaussians of width ``b`` the excess kurtosis is
``-2 t^4 / (1 + t^2)^2`` with ``t = d / 2b``), while an exponential or de Vaucouleurs profile is
peakier than a Gaussian. This script measures it on noiseless GalSim images convolved with a
Kolmogorov PSF of 0.8" FWHM at 0.2" pixels, weighted by the adaptive (HSM) elliptical Gaussian
of `lsst.meas.madness.tasks.pair_split.light_moments`, as the pair splits weigh the light. A
measurement on the images, not on the task: it tells whether the statistic is worth building into
the splits' decision.

Usage::

    python scripts/pair_kurtosis.py [--output doc/benchmark-results/pair-kurtosis.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import galsim
import numpy as np

SCALE = 0.2  # arcsec per pixel
SIZE = 65
PSF = galsim.Kolmogorov(fwhm=0.8)


def major_axis_kurtosis(image: np.ndarray) -> tuple[float, float]:
    """Excess kurtosis along the major axis of the light weighted as `light_moments` weighs it, and
    the light's distortion ``(a^2 - b^2) / (a^2 + b^2)``."""
    from lsst.meas.madness.tasks.pair_split import light_moments

    centre = ((image.shape[1] - 1) / 2, (image.shape[0] - 1) / 2)
    moments = light_moments(image, centre)
    if moments is None:
        return float("nan"), float("nan")
    distortion = (moments.major2 - moments.minor2) / (moments.major2 + moments.minor2)
    return moments.kurtosis, float(distortion)


def draw(profile) -> np.ndarray:
    return galsim.Convolve(profile, PSF).drawImage(nx=SIZE, ny=SIZE, scale=SCALE).array


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    rows = []
    for hlr in (0.3, 0.5, 1.0, 1.5):
        for e in (0.0, 0.4, 0.6):
            k, d = major_axis_kurtosis(draw(galsim.Exponential(half_light_radius=hlr).shear(e=e, beta=0 * galsim.degrees)))
            rows.append({"kind": "single exponential", "hlr_arcsec": hlr, "e": e, "kurtosis": k, "hsm_e": d})
    for hlr in (0.5, 1.0):
        bulge = galsim.DeVaucouleurs(half_light_radius=0.5 * hlr).withFlux(0.4)
        disc = galsim.Exponential(half_light_radius=hlr).shear(e=0.5, beta=0 * galsim.degrees).withFlux(0.6)
        k, d = major_axis_kurtosis(draw(bulge + disc))
        rows.append({"kind": "single bulge + disc (B/T 0.4, disc e 0.5)", "hlr_arcsec": hlr, "e": 0.5,
                     "kurtosis": k, "hsm_e": d})
    for hlr in (0.3, 0.5):
        for separation in (0.6, 0.8, 1.0):
            for ratio in (1.0, 0.4):
                first = galsim.Exponential(half_light_radius=hlr).shift(-separation / 2, 0)
                second = galsim.Exponential(half_light_radius=hlr).withFlux(ratio).shift(separation / 2, 0)
                k, d = major_axis_kurtosis(draw(first + second))
                rows.append({"kind": "pair of round exponentials", "hlr_arcsec": hlr, "separation_arcsec": separation,
                             "flux_ratio": ratio, "kurtosis": k, "hsm_e": d})
    print("| kind | member hlr (\") | e or separation (\"), flux ratio | excess kurtosis | HSM distortion |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        shape = (f"separation {r['separation_arcsec']}, ratio {r['flux_ratio']}" if "separation_arcsec" in r
                 else f"e {r['e']}")
        print(f"| {r['kind']} | {r['hlr_arcsec']} | {shape} | {r['kurtosis']:+.3f} | {r['hsm_e']:.2f} |")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"psf": "Kolmogorov FWHM 0.8 arcsec", "pixel_arcsec": SCALE, "size_px": SIZE,
                                   "galsim": galsim.__version__, "rows": rows}, indent=1) + "\n")
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
