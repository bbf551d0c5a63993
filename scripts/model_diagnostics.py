"""Where a model's error lives: the decoder's reach, the VAE-deblender alone, MAP in blends.

Usage::

    python scripts/model_diagnostics.py --bundle BUNDLE --fields VALIDATION_FIELDS \
        --output diagnostics.json [--max-fields 20] [--label NAME]

On the same validation TestFields (a seed never used to report results):

1. **reach** -- every galaxy fitted alone on its noiseless image with 200 MAP steps
   (`lsst.meas.madness.evaluation.decoder_reach`): what the decoder can draw at all;
2. **VAE-deblender** -- the initialisation alone, in the blended fields;
3. **MADNESS** -- MAP in the blended fields (the engine's defaults);

and no deblending, for scale. Per band: median |dF/F| and mean cosine (reach), mean and median
|dF/F| (kappa <= 5) and mean cosine (fields). Writes the JSON and prints a Markdown table;
``scripts/ship_model.py --diagnostics`` puts it in the model card.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="model bundle (default: the packaged one)")
    parser.add_argument("--fields", required=True, type=Path, help="validation TestFields dataset directory")
    parser.add_argument("--max-fields", type=int, default=20)
    parser.add_argument("--output", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--label", default=None, help="name of the model in the table")
    args = parser.parse_args(argv)

    from lsst.meas.madness import MadnessDeblender
    from lsst.meas.madness.evaluation import decoder_reach, iter_test_fields, run_evaluation, summarize

    start = time.perf_counter()
    deblender = MadnessDeblender.from_bundle(args.bundle)
    fields = list(iter_test_fields(args.fields, max_fields=args.max_fields))
    reach = decoder_reach(deblender, fields).summary()
    reach_seconds = time.perf_counter() - start
    result = run_evaluation(fields, ["blended", "vae_deblender", "madness"], bundle=args.bundle, progress=False,
                            n_fields=len(fields))
    summary = summarize(result)
    bands = list(result.bands)
    out = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "bundle": args.bundle or "packaged default",
        "label": args.label or (Path(args.bundle).name if args.bundle else "packaged default"),
        "fields": args.fields.name,
        "n_fields": len(fields),
        "bands": bands,
        "reach": reach,
        "reach_seconds": round(reach_seconds, 1),
        "methods": {name: {"bands": entry.get("bands"), "resources": entry.get("resources")}
                    for name, entry in summary["methods"].items()},
        "machine": f"{os.cpu_count()} cores",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, args.output)
    print(markdown_table(out))
    return 0


def _fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(diag: dict) -> str:
    """The diagnostics as a Markdown table, one row per band."""
    rows = ["| band | reach median abs(dF/F) | reach mean cosine | VAE-deblender mean abs(dF/F) | "
            "MADNESS mean abs(dF/F) | MADNESS median abs(dF/F) | MADNESS mean cosine | no deblending mean abs(dF/F) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    reach, methods = diag["reach"], diag["methods"]

    def band(method, b, key):
        entry = (methods.get(method) or {}).get("bands") or {}
        return (entry.get(b) or {}).get(key)

    for b in diag["bands"]:
        rows.append(f"| {b} | {_fmt(reach.get(f'flux_error_median_{b}'))} | {_fmt(reach.get(f'cosine_mean_{b}'))} | "
                    f"{_fmt(band('vae_deblender', b, 'mean_abs_flux_residual'))} | "
                    f"{_fmt(band('madness', b, 'mean_abs_flux_residual'))} | "
                    f"{_fmt(band('madness', b, 'median_abs_flux_residual'))} | "
                    f"{_fmt(band('madness', b, 'mean_cosine'))} | "
                    f"{_fmt(band('blended', b, 'mean_abs_flux_residual'))} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
