"""Outputs of ``madness evaluate``: per-galaxy measurements, the summary and the Markdown report.

* ``measurements.json`` — every galaxy of every method: one row per (method, galaxy) with the
  method-independent columns (field, centre, catalogue SNR, kappa, beta, ...) and the method's
  metrics; per-band values are lists in the order of ``bands``; NaN is written as ``null``,
  floats with 7 significant digits.
* ``summary.json`` — per method and band the paper's summary numbers (means with the
  kappa <= 5 cut), colour residuals, time and memory, absent methods with the reason, and the
  paper's own numbers (`PAPER_ANCHORS`).
* ``report.md`` — the same as tables, with the figures (`lsst.meas.madness.evaluation.figures`).
"""

from __future__ import annotations

__all__ = [
    "KAPPA_BLENDED",
    "KAPPA_MAX",
    "PAPER_ANCHORS",
    "SNR_BLEND_MIN",
    "read_measurements",
    "summarize",
    "write_evaluation",
    "write_measurements",
    "write_report",
]

import datetime
import json
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np

from .runner import MODEL_KEYS, EvaluationResult

SCHEMA = "meas_madness.evaluation/1"
KAPPA_MAX = 5.0
"""The paper's cut for its means: galaxies with contamination kappa <= 5 (section 4.2)."""
KAPPA_BLENDED = 0.01
"""Blended galaxies: kappa >= 0.01, at least 1% of the aperture flux from neighbours (fig. 10b)."""
SNR_BLEND_MIN = 5.0
"""Appendix D/E: galaxies with SNR_blend >= 5 in the band."""

PAPER_ANCHORS = {
    "source": "Biswas et al., MADNESS, section 4 (TestFields, r band, kappa_r <= 5)",
    "mean_abs_flux_residual": {"blended": 0.142, "vae_deblender": 0.039, "scarlet": 0.028, "madness": 0.020},
    "mean_cosine": {"vae_deblender": 0.987, "scarlet": 0.991, "madness": 0.994},
    "std_e1_residual": {"vae_deblender": 0.104, "scarlet": 0.084, "madness": 0.069},
    "std_e1_residual_kappa_ge_0.01": {"scarlet": 0.103, "madness": 0.087},
}
"""The paper's numbers (DESIGN.md "Anchors"); its scarlet is classic scarlet (appendix B)."""

_PAPER_COLUMN = {"blended": "blended", "vae_deblender": "vae_deblender", "madness": "madness",
                 "scarlet": "scarlet", "scarlet2": "scarlet", "scarlet_lite": "scarlet"}


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _mean(values) -> float | None:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return _finite(values.mean()) if len(values) else None


def _median(values) -> float | None:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return _finite(np.median(values)) if len(values) else None


def _std(values) -> float | None:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return _finite(values.std()) if len(values) > 1 else None


def _jsonable(value, digits: int | None = None):
    """JSON-safe copy: numpy scalars and arrays to Python, NaN/inf to None, floats to ``digits``
    significant digits if given."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, digits) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), digits)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = _finite(value)
        return value if value is None or digits is None else float(f"{value:.{digits}g}")
    return value


def _write_json(path: Path, data, indent: int | None = 1, digits: int | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    separators = None if indent else (",", ":")
    tmp.write_text(json.dumps(_jsonable(data, digits), indent=indent, separators=separators, allow_nan=False))
    os.replace(tmp, path)


# --- measurements.json ------------------------------------------------------------------------


def write_measurements(result: EvaluationResult, path) -> Path:
    """Write every per-galaxy row (see the module docstring) to ``path``."""
    path = Path(path)
    gal = result.galaxies
    n = len(gal["field_id"])
    rows = []
    for name, metrics in result.metrics.items():
        for i in range(n):
            row = {"method": name}
            for key, values in gal.items():
                row[key] = values[i]
            for key, values in metrics.items():
                row[key] = values[i]
            rows.append(row)
    _write_json(path, {"schema": SCHEMA, "bands": list(result.bands), "methods": list(result.metrics),
                       "columns": {"galaxy": list(gal), "method": [k for k, _ in MODEL_KEYS]}, "rows": rows},
                indent=None, digits=7)
    return path


def read_measurements(path) -> tuple[tuple[str, ...], dict, dict]:
    """Read ``measurements.json`` back as arrays.

    Returns
    -------
    bands : `tuple` [`str`]
    galaxies : `dict` [`str`, `numpy.ndarray`]
        Method-independent columns of the first method's rows (the same for every method).
    metrics : `dict` [`str`, `dict` [`str`, `numpy.ndarray`]]
        Per method, its columns; ``null`` read as NaN.
    """
    data = json.loads(Path(path).read_text())
    bands = tuple(data["bands"])
    galaxy_keys, method_keys = data["columns"]["galaxy"], data["columns"]["method"]

    def column(rows, key):
        values = [r[key] for r in rows]
        if key.startswith("hsm_failed"):
            return np.asarray(values, bool)
        return np.asarray([[np.nan if v is None else v for v in x] if isinstance(x, list)
                           else (np.nan if x is None else x) for x in values], np.float64)

    by_method: dict[str, list] = {m: [] for m in data["methods"]}
    for row in data["rows"]:
        by_method[row["method"]].append(row)
    first = next(iter(by_method.values()), [])
    galaxies = {k: column(first, k) for k in galaxy_keys}
    metrics = {m: {k: column(rows, k) for k in method_keys} for m, rows in by_method.items()}
    return bands, galaxies, metrics


# --- summary.json -----------------------------------------------------------------------------


def _band_summary(gal: dict, metrics: dict, j: int) -> dict:
    kappa = gal["kappa"][:, j]
    cut = np.isfinite(kappa) & (kappa <= KAPPA_MAX)
    blended = cut & (kappa >= KAPPA_BLENDED)
    bright = gal["snr_blend"][:, j] >= SNR_BLEND_MIN
    abs_res = np.abs(metrics["flux_residual"][:, j])
    failed = metrics["hsm_failed"][:, j]
    return {
        "n": int(len(kappa)),
        "n_kappa_cut": int(cut.sum()),
        "n_blended": int(blended.sum()),
        "mean_abs_flux_residual": _mean(abs_res[cut]),
        "median_abs_flux_residual": _median(abs_res[cut]),
        "mean_abs_flux_residual_blended": _mean(abs_res[blended]),
        "mean_abs_flux_residual_snr_blend_ge_5": _mean(abs_res[cut & bright]),
        "mean_abs_flux_residual_all": _mean(abs_res),
        "mean_cosine": _mean(metrics["cosine"][cut, j]),
        "mean_ssim": _mean(metrics["ssim"][cut, j]),
        "std_e1_residual": _std(metrics["e1_residual"][cut, j]),
        "std_e2_residual": _std(metrics["e2_residual"][cut, j]),
        "std_e1_residual_blended": _std(metrics["e1_residual"][blended, j]),
        "hsm_failures": int(failed[cut].sum()),
    }


def _resources(record) -> dict:
    fields = [f for f in record.fields if f["error"] is None and f["seconds"] is not None]
    n_gal = sum(f["n_galaxies"] for f in fields)
    seconds = sum(f["seconds"] for f in fields)
    compile_s = [f["compile_seconds"] or 0.0 for f in fields]
    peaks = [f["peak_rss"] for f in fields if f["peak_rss"]]
    rises = [f["peak_rss"] - f["rss_before"] for f in fields
             if f["peak_rss"] and f["rss_before"] and f["memory_resettable"]]
    return {
        "n_fields": len(fields),
        "n_galaxies": n_gal,
        "total_seconds": _finite(seconds),
        "seconds_per_galaxy": _finite(seconds / n_gal) if n_gal else None,
        "seconds_per_field": _finite(seconds / len(fields)) if fields else None,
        "compile_seconds_per_field": _finite(np.mean(compile_s)) if fields else None,
        "setup_seconds": record.setup_seconds,
        "warmup_seconds": record.warmup_seconds,
        "peak_rss_mb": _finite(max(peaks) / 2**20) if peaks else None,
        "peak_increase_mb": _finite(max(rises) / 2**20) if rises else None,
        "failed_fields": sum(1 for f in record.fields if f["error"] is not None),
    }


def summarize(result: EvaluationResult) -> dict:
    """The summary (see the module docstring) of an `EvaluationResult`."""
    gal = result.galaxies
    methods = {}
    for name, record in result.methods.items():
        entry = {"label": record.label, "status": record.status, "reason": record.reason,
                 "config": record.config}
        if name in result.metrics:
            metrics = result.metrics[name]
            entry["bands"] = {b: _band_summary(gal, metrics, j) for j, b in enumerate(result.bands)}
            cut = np.ones(len(gal["field_id"]), bool)
            if "r" in result.bands:
                kappa_r = gal["kappa"][:, result.bands.index("r")]
                cut = np.isfinite(kappa_r) & (kappa_r <= KAPPA_MAX)
            entry["colour"] = {
                "mean_colour_residual_true": _mean(metrics["colour_residual_true"][cut]),
                "std_colour_residual_true": _std(metrics["colour_residual_true"][cut]),
                "mean_colour_residual_blend": _mean(metrics["colour_residual_blend"][cut]),
                "std_colour_residual_blend": _std(metrics["colour_residual_blend"][cut]),
            }
            entry["resources"] = None if name == "blended" else _resources(record)
            if name != "blended":
                entry["per_field"] = [
                    {"field_id": f["field_id"], "n_galaxies": f["n_galaxies"], "seconds": f["seconds"],
                     "compile_seconds": f["compile_seconds"],
                     "peak_rss_mb": None if not f["peak_rss"] else f["peak_rss"] / 2**20,
                     "rss_before_mb": None if not f["rss_before"] else f["rss_before"] / 2**20,
                     "error": f["error"], **{k: v for k, v in (f["info"] or {}).items()}}
                    for f in record.fields]
        methods[name] = entry
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run": {**result.info, "bands": list(result.bands), "machine": _machine()},
        "cuts": {"kappa_max": KAPPA_MAX, "kappa_blended_min": KAPPA_BLENDED, "snr_blend_min": SNR_BLEND_MIN,
                 "note": "per-band statistics cut on kappa of the same band; colours on kappa_r"},
        "methods": methods,
        "absent": {n: r.reason for n, r in result.methods.items() if r.status != "ok"},
        "paper": PAPER_ANCHORS,
    }


def _machine() -> dict:
    from .resources import cpu_count

    out = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
           "cpus": cpu_count(), "python": platform.python_version()}
    # The backend the MADNESS workers ran with (they inherit this environment); Keras itself is
    # not imported here, so that the parent stays light.
    keras = sys.modules.get("keras")
    out["keras_backend"] = keras.config.backend() if keras else os.environ.get("KERAS_BACKEND", "tensorflow")
    try:
        out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    return out


# --- report.md --------------------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _paper(metric: str, name: str) -> str:
    value = PAPER_ANCHORS[metric].get(_PAPER_COLUMN.get(name, ""))
    return "-" if value is None else f"{value:.3f}"


def _report_band(bands) -> str:
    return "r" if "r" in bands else bands[0]


def write_report(summary: dict, path, figures: dict[str, str] | None = None) -> Path:
    """Write the Markdown report of a `summarize` summary; ``figures`` maps titles to file names."""
    path = Path(path)
    run = summary["run"]
    bands = run["bands"]
    rb = _report_band(bands)
    ok = {n: m for n, m in summary["methods"].items() if m["status"] == "ok" or "bands" in m}
    lines = [
        "# MADNESS side-by-side evaluation",
        "",
        f"{run['n_fields']} fields, {run['n_galaxies']} galaxies ({run.get('fields', 'fields')}); "
        f"true centres given to every method; bands measured: {''.join(bands)}. "
        f"Model bundle: {run.get('bundle') or 'packaged default'}. Created {summary['created']}, "
        f"{run['machine']['cpus']} CPUs ({run['machine']['processor']}), Keras backend "
        f"{run['machine'].get('keras_backend', '?')}.",
        "",
    ]
    if summary["absent"]:
        lines += ["**Absent comparators** (not run, listed so that nothing is silently dropped):", ""]
        lines += [f"- `{n}`: {reason}" for n, reason in summary["absent"].items()]
        lines.append("")
    lines += [
        f"## Summary in the paper's form ({rb} band, kappa_{rb} <= {KAPPA_MAX:g})",
        "",
        "Ours beside the paper's (section 4; its scarlet is classic scarlet with appendix B's "
        "settings, shown beside every scarlet-family row).",
        "",
        "| method | n | mean abs(dF/F) | paper | mean cosine | paper | std e1 resid. | paper | std e2 resid. "
        "| mean SSIM | abs(dF/F), kappa >= 0.01 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in ok.items():
        s = m["bands"][rb]
        lines.append(f"| {m['label']} | {s['n_kappa_cut']} | {_fmt(s['mean_abs_flux_residual'])} | "
                     f"{_paper('mean_abs_flux_residual', name)} | {_fmt(s['mean_cosine'])} | "
                     f"{_paper('mean_cosine', name)} | {_fmt(s['std_e1_residual'])} | "
                     f"{_paper('std_e1_residual', name)} | {_fmt(s['std_e2_residual'])} | "
                     f"{_fmt(s['mean_ssim'])} | "
                     f"{_fmt(s['mean_abs_flux_residual_blended'])} |")
    lines += ["", "## Per band (kappa <= 5 in that band)", ""]
    for title, key in (("mean abs(dF/F)", "mean_abs_flux_residual"), ("mean cosine", "mean_cosine"),
                       ("mean SSIM", "mean_ssim"), ("std e1 residual", "std_e1_residual"),
                       ("mean abs(dF/F), SNR_blend >= 5", "mean_abs_flux_residual_snr_blend_ge_5")):
        lines += [f"**{title}**", "", "| method | " + " | ".join(bands) + " |",
                  "| --- |" + " --- |" * len(bands)]
        for name, m in ok.items():
            lines.append(f"| {m['label']} | " + " | ".join(_fmt(m["bands"][b][key]) for b in bands) + " |")
        lines.append("")
    if any("colour" in m for m in ok.values()):
        lines += ["## g-r colour residuals (kappa_r <= 5)", "",
                  "| method | mean dC^T | std dC^T | mean dC^B | std dC^B |",
                  "| --- | --- | --- | --- | --- |"]
        for name, m in ok.items():
            c = m["colour"]
            lines.append(f"| {m['label']} | {_fmt(c['mean_colour_residual_true'], 4)} | "
                         f"{_fmt(c['std_colour_residual_true'], 4)} | "
                         f"{_fmt(c['mean_colour_residual_blend'], 4)} | "
                         f"{_fmt(c['std_colour_residual_blend'], 4)} |")
        lines.append("")
    rerun = list(summary["run"].get("rerun") or [])
    lines += [
        "## Time and memory (same machine, same run)" if not rerun else "## Time and memory (same machine)",
        "",
    ]
    if rerun:
        lines += [
            f"The results of {', '.join(rerun)} come from a rerun (`--rerun`) after the others' run; the "
            "cores may have been loaded differently in the two runs, so compare times across them with care.",
            "",
        ]
    lines += [
        "| method | fields | galaxies | s / galaxy | s / field | compile s / field | warm-up s | setup s | "
        "peak RSS MB | peak increase MB | failed fields |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in ok.items():
        r = m.get("resources")
        if not r:
            lines.append(f"| {m['label']} | - | - | - | - | - | - | - | - | - | - |")
            continue
        lines.append(f"| {m['label']} | {r['n_fields']} | {r['n_galaxies']} | "
                     f"{_fmt(r['seconds_per_galaxy'], 4)} | "
                     f"{_fmt(r['seconds_per_field'], 2)} | {_fmt(r['compile_seconds_per_field'], 2)} | "
                     f"{_fmt(r['warmup_seconds'], 2)} | {_fmt(r['setup_seconds'], 1)} | "
                     f"{_fmt(r['peak_rss_mb'], 0)} | "
                     f"{_fmt(r['peak_increase_mb'], 0)} | {r['failed_fields']} |")
    lines += [
        "",
        "Each method runs in its own worker process, one field at a time, never while another method "
        "or the metrics run. *s / galaxy* is the wall time of the deblending calls (models as "
        "observed, PSF-convolved, for every galaxy) summed over fields, divided by the galaxies; "
        "*compile* is JIT compilation that scarlet2 pays for every new scene (timed by a one-step fit of "
        "the same scene, excluded from s / galaxy); *warm-up* is the untimed first call of each worker "
        "on the first field; *setup* is imports and model loading. *Peak RSS* is the resident-memory "
        "high-water mark of the method's worker during a field (interpreter, libraries and model "
        "included), *peak increase* its rise above the resident memory just before the call "
        "(Linux VmHWM, reset before each field).",
        "",
    ]
    lines += ["## Configuration", ""]
    for name, m in summary["methods"].items():
        config = m.get("config") or {}
        text = config.get("config", "") if isinstance(config, dict) else str(config)
        status = "" if m["status"] == "ok" else f" — **{m['status']}**: {m['reason']}"
        lines.append(f"- `{name}` ({m['label']}){status}" + (f": {text}" if text else ""))
    lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for title, file in figures.items():
            lines += [f"### {title}", "", f"![{title}]({file})", ""]
    path.write_text("\n".join(lines))
    return path



def write_evaluation(result: EvaluationResult, output, *, figures: bool = True) -> dict[str, Path]:
    """Write ``measurements.json``, ``summary.json``, the figures and ``report.md`` into ``output``.

    Returns
    -------
    paths : `dict` [`str`, `pathlib.Path`]
        ``measurements``, ``summary``, ``report`` and ``figures`` (the figure directory).
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = {"measurements": write_measurements(result, output / "measurements.json")}
    summary = summarize(result)
    drawn = {}
    if figures and result.metrics:
        from .figures import plot_all

        drawn = plot_all(result.bands, result.galaxies, result.metrics, output / "figures")
        paths["figures"] = output / "figures"
    summary["figures"] = {title: f"figures/{file}" for title, file in drawn.items()}
    paths["summary"] = output / "summary.json"
    _write_json(paths["summary"], summary)
    paths["report"] = write_report(summary, output / "report.md", summary["figures"])
    return paths
