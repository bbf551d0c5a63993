#!/usr/bin/env python
"""Accuracy of sub-pixel stamp shifts: the engine's Fourier and Lanczos-3 matrices vs none.

Each galaxy (GalSim profile convolved with a PSF, 0.2"/px, 45x45) is drawn centred on the stamp
centre, moved by each method to a sub-pixel offset (dx, dy), and compared with GalSim drawing
the same galaxy at that offset (the oracle). Reported per method over all galaxies and shifts:
relative flux error, residual ||shifted - oracle|| / ||oracle|| (L2), peak residual over the
oracle's peak, and |de| of the HSM adaptive-moment ellipticity.

With ``--decoded`` it also shifts the packaged model's reconstructions of the same galaxies
(decoder output is not band-limited: ReLU kinks, a faint border) and reports the negative
ringing of each kernel; with ``--map`` it deblends 6 GalSim galaxies (packaged model, 150 MAP
steps) centred, at a sub-pixel position with the shift, and at the rounded peak, per kernel,
and reports chi2 and r-band |dF/F| (equivariance: the shifted fit should equal the centred one).

Usage (single-threaded; seconds, ``--decoded`` ~20 s, ``--map`` ~2 min):
    TF_NUM_INTRAOP_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python scripts/subpixel_shift_accuracy.py \
        [--decoded] [--map] [--json out.json]
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
    parser.add_argument("--decoded", action="store_true", help="ringing on decoded stamps (packaged model)")
    parser.add_argument("--map", action="store_true", help="MAP fits per kernel (packaged model)")
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
        summary[m] = dict(max_abs_flux_error=float(np.nanmax(a[:, 0])),
                          median_residual=float(np.median(a[:, 1])),
                          max_residual=float(np.max(a[:, 1])), max_peak_residual=float(np.max(a[:, 2])),
                          max_abs_de=float(np.nanmax(a[:, 3])))
        s = summary[m]
        print(f"{m:22s} {s['max_abs_flux_error']:10.2e} {s['median_residual']:10.2e} "
              f"{s['max_residual']:10.2e} "
              f"{s['max_peak_residual']:10.2e} {s['max_abs_de']:10.2e}")
    print("\nmedian residual per galaxy:")
    for name, d in per_galaxy.items():
        print(f"  {name:40s} " + "  ".join(f"{m}: {np.median(v):.1e}" for m, v in d.items()))
    extra = {}
    if args.decoded:
        extra["decoded"] = decoded_ringing(args.seed)
    if args.map:
        extra["map"] = map_fits(args.seed)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(summary=summary, scale=SCALE, size=SIZE, shifts=args.shifts, seed=args.seed,
                           **extra),
                      f, indent=1)


SED = np.array([0.3, 0.7, 1.0, 1.2, 1.3, 1.3])


def _random_galaxies(rng, n, hlr=(0.2, 1.0), log_flux=(3.5, 5.0)):
    out = []
    for _ in range(n):
        gal = galsim.Exponential(half_light_radius=rng.uniform(*hlr), flux=10 ** rng.uniform(*log_flux))
        gal = gal.shear(e1=rng.uniform(-0.3, 0.3), e2=rng.uniform(-0.3, 0.3))
        out.append(galsim.Convolve(gal, galsim.Kolmogorov(fwhm=0.7)))
    return out


def decoded_ringing(seed, n=20):
    from lsst.meas.madness import MadnessDeblender

    deblender = MadnessDeblender.from_bundle(None)
    rng = np.random.default_rng(seed)
    stamps = np.array([SED[:, None, None] * draw(g)[None] for g in _random_galaxies(rng, n)], np.float32)
    decoded = deblender.decode(deblender.initial_latents(deblender.normalization.normalize(stamps)))
    shifts = rng.uniform(-0.5, 0.5, (n, 2))
    total = decoded.sum(axis=(1, 2, 3))
    border = (total - decoded[:, :, 2:-2, 2:-2].sum(axis=(1, 2, 3))) / total
    print(f"\ndecoded stamps ({n} GalSim galaxies reconstructed by the packaged model): "
          f"median flux fraction in "
          f"the 2-pixel border {np.median(border):.1e}")
    out = {}
    for name, src in (("GalSim", stamps), ("decoded", decoded)):
        for kernel in ("fourier", "lanczos3"):
            shifted = shift_stamps(src, shifts, kernel=kernel)
            neg = np.clip(-shifted.min(axis=(1, 2, 3)), 0, None) / src.max(axis=(1, 2, 3))
            neg_flux = np.clip(-shifted, 0, None).sum(axis=(1, 2, 3)) / src.sum(axis=(1, 2, 3))
            out[f"{name} {kernel}"] = dict(median_min_over_peak=float(np.median(neg)),
                                           max_min_over_peak=float(neg.max()),
                                           median_negative_flux=float(np.median(neg_flux)),
                                           max_negative_flux=float(neg_flux.max()))
            print(f"  {name:8s} {kernel:9s} most negative pixel / peak: median {np.median(neg):.1e} "
                  f"max {neg.max():.1e}; "
                  f"negative flux / flux: median {np.median(neg_flux):.1e} max {neg_flux.max():.1e}")
    return out


def map_fits(seed, n=6, size=61):
    import functools

    import lsst.meas.madness.engine.deblender as engine_deblender
    import lsst.meas.madness.engine.observation as engine_observation
    from lsst.meas.madness import MadnessDeblender, MapSettings
    from lsst.meas.madness.engine import geometry

    deblender = MadnessDeblender.from_bundle(None)
    rng = np.random.default_rng(seed + 1)
    sky = np.array([60.0, 110.0, 280.0, 400.0, 550.0, 600.0]) * 3
    var = np.broadcast_to(sky[:, None, None], (6, size, size)).astype(np.float32)
    settings = MapSettings(max_iter=150, min_iter=150)
    gals = _random_galaxies(rng, n, hlr=(0.25, 0.8), log_flux=(4.0, 5.0))
    shifts = rng.uniform(-0.5, 0.5, (n, 2))
    c = size // 2

    def image(obj, x, y):
        arr = obj.drawImage(nx=size, ny=size, scale=SCALE, offset=(x - c, y - c)).array
        return (SED[:, None, None] * arr[None]).astype(np.float32)

    out = {}
    print(f"\nMAP fits of {n} noiseless GalSim galaxies (packaged model, 150 steps): "
          "median chi2 and mean r-band |dF/F|")
    for kernel in ("fourier", "lanczos3"):
        engine_deblender.placement_matrices = functools.partial(geometry.placement_matrices, kernel=kernel)
        engine_deblender.shift_stamps = functools.partial(geometry.shift_stamps, kernel=kernel)
        engine_observation.shift_stamps = functools.partial(geometry.shift_stamps, kernel=kernel)
        rows = []
        for obj, (dx, dy) in zip(gals, shifts):
            centred, moved = image(obj, c, c), image(obj, c + dx, c + dy)
            fit = functools.partial(deblender.deblend, variance=var, settings=settings)
            fits = [(centred, fit(centred, np.array([[c, c]], float))),
                    (moved, fit(moved, np.array([[c + dx, c + dy]]))),
                    (moved, fit(moved, np.array([[c, c]], float)))]
            rows.append([float(((img - r.model_image()) ** 2 / var).sum()) for img, r in fits]
                        + [float(r.model_image()[2].sum() / img[2].sum() - 1) for img, r in fits])
        a = np.array(rows)
        out[kernel] = dict(median_chi2=np.median(a[:, :3], axis=0).tolist(),
                           mean_abs_dF=np.abs(a[:, 3:]).mean(axis=0).tolist())
        print(f"  {kernel:9s} chi2 centred {np.median(a[:, 0]):.1f}, shifted {np.median(a[:, 1]):.1f}, "
              f"rounded {np.median(a[:, 2]):.1f}; |dF/F| centred {np.abs(a[:, 3]).mean():.4f}, "
              f"shifted {np.abs(a[:, 4]).mean():.4f}, rounded {np.abs(a[:, 5]).mean():.4f}")
    engine_deblender.placement_matrices = geometry.placement_matrices
    engine_deblender.shift_stamps = geometry.shift_stamps
    engine_observation.shift_stamps = geometry.shift_stamps
    return out


if __name__ == "__main__":
    main()
