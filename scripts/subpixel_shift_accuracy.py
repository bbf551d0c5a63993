#!/usr/bin/env python
"""Accuracy of sub-pixel stamp shifts: the engine's Fourier and Lanczos-3 matrices vs none.

Each galaxy (GalSim profile convolved with a PSF, 0.2"/px, 45x45) is drawn centred on the stamp
centre, moved by each method to a sub-pixel offset (dx, dy), and compared with GalSim drawing
the same galaxy at that offset (the oracle). Reported per method over all galaxies and shifts:
relative flux error, residual ||shifted - oracle|| / ||oracle|| (L2), peak residual over the
oracle's peak, and |de| of the HSM adaptive-moment ellipticity.

Usage (single-threaded, a few seconds):
    OMP_NUM_THREADS=1 .venv/bin/python scripts/subpixel_shift_accuracy.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import galsim
import numpy as np

from lsst.meas.madness.engine.geometry import shift_stamps

SCALE = 0.2
SIZE = 45


def galaxies():
    psfs = {"Moffat(3.5, 0.7\")": galsim.Moffat(beta=3.5, fwhm=0.7),
            "Kolmogorov(0.7\")": galsim.Kolmogorov(fwhm=0.7)}
    profiles = {
        "Exponential(0.5\")": galsim.Exponential(half_light_radius=0.5).shear(e1=0.2, e2=-0.1),
        "Sersic(4, 0.8\")": galsim.Sersic(n=4, half_light_radius=0.8).shear(e1=-0.1, e2=0.25),
        "Exponential(0.2\")": galsim.Exponential(half_light_radius=0.2).shear(e1=0.3, e2=0.0),
    }
    for pname, prof in profiles.items():
        for qname, psf in psfs.items():
            yield f"{pname} x {qname}", galsim.Convolve(prof.withFlux(1e4), psf)


def draw(obj, dx=0.0, dy=0.0):
    return obj.drawImage(nx=SIZE, ny=SIZE, scale=SCALE, offset=(dx, dy)).array.astype(np.float64)


def fourier_shift(image, dy, dx):
    ky = np.fft.fftfreq(image.shape[0])[:, None]
    kx = np.fft.fftfreq(image.shape[1])[None, :]
    phase = np.exp(-2j * np.pi * (ky * dy + kx * dx))
    return np.fft.ifft2(np.fft.fft2(image) * phase).real


def ellipticity(image):
    res = galsim.hsm.FindAdaptiveMom(galsim.Image(image, scale=SCALE), strict=False)
    if res.moments_status != 0:
        return np.array([np.nan, np.nan])
    return np.array([res.observed_shape.e1, res.observed_shape.e2])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shifts", type=int, default=8, help="random shifts per galaxy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the summary here")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    methods = {
        "none (rounded pixel)": lambda img, dy, dx: img,
        "lanczos3 (matrix)": lambda img, dy, dx: shift_stamps(img[None, None], np.array([[dy, dx]]),
                                                             kernel="lanczos3")[0, 0],
        "fourier (matrix)": lambda img, dy, dx: shift_stamps(img[None, None], np.array([[dy, dx]]),
                                                            kernel="fourier")[0, 0],
        "np.fft shift": fourier_shift,
    }
    rows = {m: [] for m in methods}
    per_galaxy = {}
    for name, obj in galaxies():
        centred = draw(obj)
        for _ in range(args.shifts):
            dx, dy = rng.uniform(-0.5, 0.5, 2)
            oracle = draw(obj, dx, dy)
            e_oracle = ellipticity(oracle)
            for m, fn in methods.items():
                shifted = fn(centred, dy, dx)
                flux = shifted.sum() / oracle.sum() - 1.0
                resid = np.linalg.norm(shifted - oracle) / np.linalg.norm(oracle)
                peak = np.abs(shifted - oracle).max() / oracle.max()
                de = np.abs(ellipticity(shifted) - e_oracle).max()
                rows[m].append((abs(flux), resid, peak, de))
                per_galaxy.setdefault(name, {}).setdefault(m, []).append(resid)
    summary = {}
    print(f"{'method':22s} {'max|dF/F|':>10s} {'med resid':>10s} {'max resid':>10s} {'max peak':>10s} "
          f"{'max |de|':>10s}")
    for m, vals in rows.items():
        a = np.array(vals)
        summary[m] = dict(max_abs_flux_error=float(np.nanmax(a[:, 0])), median_residual=float(np.median(a[:, 1])),
                          max_residual=float(np.max(a[:, 1])), max_peak_residual=float(np.max(a[:, 2])),
                          max_abs_de=float(np.nanmax(a[:, 3])))
        s = summary[m]
        print(f"{m:22s} {s['max_abs_flux_error']:10.2e} {s['median_residual']:10.2e} {s['max_residual']:10.2e} "
              f"{s['max_peak_residual']:10.2e} {s['max_abs_de']:10.2e}")
    print("\nmedian residual per galaxy:")
    for name, d in per_galaxy.items():
        print(f"  {name:40s} " + "  ".join(f"{m}: {np.median(v):.1e}" for m, v in d.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(summary=summary, scale=SCALE, size=SIZE, shifts=args.shifts, seed=args.seed), f, indent=1)


if __name__ == "__main__":
    main()
