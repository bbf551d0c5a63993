#!/usr/bin/env python
"""The decoder's reach on a simulated dataset's noiseless stamps: training against validation.

Fits the first ``--n`` noiseless stamps (``truth``) of each dataset alone (200 MAP steps,
`lsst.meas.madness.evaluation.reach.stamp_reach`) and prints the r-band flux error and cosine:
the same numbers on training and validation stamps mean the decoder underfits rather than
failing to generalise (doc/error-budget.md). ``--prior-weight 0`` and ``--variance-scale 0.01``
ask whether the prior or the noise level is what stops it.

Example::

    python scripts/reach_stamps.py --data sims/sims-v2 --datasets isolated-train isolated-validation \\
        --n 120 --output reach-stamps.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="suite directory of `madness simulate datasets`")
    parser.add_argument("--datasets", nargs="+", default=["isolated-train", "isolated-validation"])
    parser.add_argument("--n", type=int, default=120, help="stamps per dataset (from its first shards)")
    parser.add_argument("--bundle", default=None, help="model bundle (default: the packaged one)")
    parser.add_argument("--prior-weight", type=float, default=1.0)
    parser.add_argument("--variance-scale", type=float, default=1.0,
                        help="fit weights are this times the sky variance (0.01: 100x the signal-to-noise)")
    parser.add_argument("--snr-split", type=float, default=50.0,
                        help="also report the r median below and above this SNR_r (the catalogue's snr_r)")
    parser.add_argument("--amplitude-sigma", type=float, default=None,
                        help="prior width in log flux of the flux factor fitted per band (MapSettings.amplitude_sigma; "
                             "default: the engine's)")
    parser.add_argument("--no-amplitudes", action="store_true",
                        help="the paper's MAP: no flux factors (MapSettings.fit_amplitudes=False)")
    parser.add_argument("--output", default=None, help="JSON file for the per-dataset summaries")
    args = parser.parse_args(argv)

    from lsst.meas.madness import MadnessDeblender
    from lsst.meas.madness.evaluation.reach import stamp_reach
    from lsst.meas.madness.simulation import LsstConditions, SimulatedDataset

    deblender = MadnessDeblender.from_bundle(args.bundle) if args.bundle else MadnessDeblender.from_bundle()
    bands = tuple(deblender.bands)
    sky = np.array([LsstConditions.from_surveycodex(bands=bands).sky_level(b) for b in bands])
    settings = deblender.settings.replace(prior_weight=args.prior_weight)
    if args.amplitude_sigma is not None:
        settings = settings.replace(amplitude_sigma=args.amplitude_sigma)
    settings = settings.replace(fit_amplitudes=not args.no_amplitudes)
    r = bands.index("r") if "r" in bands else 0
    out = {"bundle": args.bundle or "packaged default", "prior_weight": args.prior_weight,
           "variance_scale": args.variance_scale, "fit_amplitudes": settings.fit_amplitudes,
           "amplitude_sigma": settings.amplitude_sigma, "datasets": {}}
    for name in args.datasets:
        dataset = SimulatedDataset(Path(args.data) / name)
        parts, snr, have = [], [], 0
        for arrays, catalog in dataset.iter_shards("truth"):
            take = args.n - have
            parts.append(arrays["truth"][:take])
            snr.append(np.asarray(catalog["snr_r"])[:take] if "snr_r" in catalog else np.full(len(parts[-1]), np.nan))
            have += len(parts[-1])
            if have >= args.n:
                break
        stamps = np.concatenate(parts).astype(np.float32)
        snr = np.concatenate(snr)
        result = stamp_reach(deblender, stamps, args.variance_scale * sky, settings=settings)
        summary = result.summary()
        error = result.flux_error[:, r]
        bright = snr >= args.snr_split
        for label, sel in ((f"snr_below_{args.snr_split:g}", ~bright & np.isfinite(snr)),
                           (f"snr_above_{args.snr_split:g}", bright)):
            summary[f"flux_error_median_{bands[r]}_{label}"] = float(np.nanmedian(error[sel])) if sel.any() else None
            summary[f"n_{label}"] = int(sel.sum())
        out["datasets"][name] = summary
        prefix = f"flux_error_median_{bands[r]}_"
        split = ", ".join(f"{key[len(prefix):]} {value:.4f} (n={summary['n_' + key[len(prefix):]]})"
                          for key, value in summary.items()
                          if key.startswith(prefix + "snr") and value is not None)
        print(f"{name}: {summary['n_galaxies']} stamps, r median abs(dF/F) "
              f"{summary[f'flux_error_median_{bands[r]}']:.4f} ({split}), "
              f"mean cosine {summary[f'cosine_mean_{bands[r]}']:.4f}", flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
