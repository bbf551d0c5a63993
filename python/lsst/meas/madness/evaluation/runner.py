"""Run every method on the same fields and collect the section-4 metrics per galaxy.

Each deblender runs in its own worker process (``spawn``), started once and fed the fields one
at a time, so that its time and memory are its own: the parent measures the metrics between
calls, never while a worker is busy, so the methods never compete for the cores. Per field and
method the worker reports the wall time of the deblending proper and its resident-memory
high-water mark (`lsst.meas.madness.evaluation.resources`). Each worker deblends the first
field once, untimed, before timing anything (first-call costs: graph tracing, JIT, lazy
imports), and reports that warm-up time separately.

No deblending (``blended``) needs no worker: its numbers are the reference metrics measured
on the blended field.

A run given a ``checkpoint`` directory writes each finished field there (atomically) and, run
again with the same bands, bundle and fields, continues after the last finished field: a
100-field comparison of every peer takes hours on two cores and must survive an interruption.
Stored results are kept per method: a method added to the run, or named in ``rerun`` (its
stored results discarded first, e.g. after a change to MADNESS), is computed on every field
while the others' stored results are loaded.
"""

from __future__ import annotations

__all__ = ["EvaluationResult", "MethodRecord", "run_evaluation"]

import dataclasses
import io
import json
import logging
import multiprocessing
import os
import shutil
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import MadnessValueError
from .fields import TestField
from .methods import (LEGACY_PSF_SIZE, METHOD_NAMES, MODEL_METHOD_NAMES, PSF_SIZE, FieldInput, check_psf_size,
                      get_method, method_availability)
from .metrics import model_metrics, reference_metrics
from .resources import MemoryMeter

_log = logging.getLogger(__name__)

# Method-independent per-galaxy quantities kept from `reference_metrics`: (key, per band?).
REFERENCE_KEYS = (
    ("flux_isolated", True), ("flux_isolated_err", True), ("flux_blended", True), ("flux_blended_err", True),
    ("snr_blend", True), ("kappa", True), ("beta", True), ("colour_true", False), ("colour_isolated", False),
    ("e1_true", True), ("e2_true", True), ("hsm_failed_true", True),
)
# Per-method per-galaxy quantities from `model_metrics`.
MODEL_KEYS = (
    ("flux", True), ("flux_err", True), ("flux_residual", True), ("colour", False),
    ("colour_residual_true", False), ("colour_residual_blend", False), ("ssim", True), ("cosine", True),
    ("e1", True), ("e2", True), ("e1_residual", True), ("e2_residual", True), ("hsm_failed", True),
)
# Catalogue columns copied per galaxy when present.
CATALOG_KEYS = ("catalog_index", "galtileid", "redshift", "r_ab", "g_ab", "snr_r")


@dataclasses.dataclass
class MethodRecord:
    """What happened to one method in a run.

    Attributes
    ----------
    name, label : `str`
        Method name (``madness``) and display label.
    status : `str`
        ``"ok"``, ``"absent"`` (not installed, or its setup failed) or ``"failed"`` (its
        worker died).
    reason : `str` or `None`
        Why absent or failed.
    config : `dict`
        How the method was configured (`DeblendMethod.describe`).
    setup_seconds : `float` or `None`
        Imports and model loading in the worker.
    warmup_seconds : `float` or `None`
        The untimed first call.
    fields : `list` [`dict`]
        Per field: ``field_id``, ``n_galaxies``, ``seconds``, ``compile_seconds``,
        ``peak_rss`` and ``rss_before`` (bytes), ``memory_resettable``, ``error``, ``info``.
    """

    name: str
    label: str
    status: str
    reason: str | None = None
    config: dict = dataclasses.field(default_factory=dict)
    setup_seconds: float | None = None
    warmup_seconds: float | None = None
    fields: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class EvaluationResult:
    """Per-galaxy measurements of every method on the same fields.

    Attributes
    ----------
    bands : `tuple` [`str`]
        Bands measured (columns of the ``(N, bands)`` arrays).
    galaxies : `dict` [`str`, `numpy.ndarray`]
        Method-independent columns, ``(N,)`` or ``(N, bands)``: ``field_id``, ``galaxy``
        (index in its field), ``x``, ``y``, catalogue columns (`CATALOG_KEYS`) and the
        reference metrics (`REFERENCE_KEYS`).
    metrics : `dict` [`str`, `dict` [`str`, `numpy.ndarray`]]
        Per method that ran, its `MODEL_KEYS` columns (NaN where it failed on a field;
        morphology NaN for ``blended``).
    methods : `dict` [`str`, `MethodRecord`]
        Every requested method, ran or absent, in report order.
    info : `dict`
        Run description (fields, machine, backend, timings).
    """

    bands: tuple[str, ...]
    galaxies: dict
    metrics: dict
    methods: dict
    info: dict


# --- the worker process -----------------------------------------------------------------------


def _worker_main(conn, name: str, bands, conditions, bundle, precision: str = "float32",
                 map_settings: dict | None = None, psf_size: int = PSF_SIZE) -> None:
    """Entry point of a method's worker process (see the module docstring for the protocol)."""
    try:
        start = time.perf_counter()
        method = get_method(name)(bands, conditions, bundle, precision=precision, map_settings=map_settings,
                                  psf_size=psf_size)
        method.setup()
        conn.send(("ready", {"setup_seconds": time.perf_counter() - start, "config": method.describe(),
                             "rss": MemoryMeter.rss(), "pid": os.getpid()}))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which marks it absent
        conn.send(("setup_failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        conn.close()
        return
    meter = MemoryMeter()
    warmed = False
    while True:
        message = conn.recv()
        if message[0] == "stop":
            method.close()
            break
        field = message[1]
        try:
            warmup = None
            if not warmed:
                t0 = time.perf_counter()
                method.deblend(field)
                warmup = time.perf_counter() - t0
                warmed = True
            meter.start()
            output = method.deblend(field)
            sample = meter.stop()
            rss_before, peak_rss = sample.rss_before, sample.peak_rss
            if output.extra_peak_rss is not None:  # a helper process's memory counts too
                peak_rss += output.extra_peak_rss
                rss_before = None if rss_before is None or output.extra_rss_before is None \
                    else rss_before + output.extra_rss_before
            conn.send(("result", output, {"rss_before": rss_before, "peak_rss": peak_rss,
                                          "memory_resettable": sample.resettable, "warmup_seconds": warmup}))
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - one failed field is recorded, not fatal
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    conn.close()


class _Worker:
    """Parent-side handle of one method's worker process."""

    def __init__(self, name: str, bands, conditions, bundle, context, precision: str = "float32",
                 map_settings: dict | None = None, psf_size: int = PSF_SIZE):
        self.name = name
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, name, tuple(bands), conditions,
                                                                   None if bundle is None else str(bundle),
                                                                   precision, map_settings, psf_size),
                                       name=f"madness-evaluate-{name}", daemon=True)
        self.process.start()
        child.close()

    def ready(self) -> tuple:
        try:
            return self.conn.recv()
        except EOFError:
            code = self.process.exitcode
            return ("setup_failed", f"the worker process died during setup (exit code {code})", "")

    def deblend(self, field: FieldInput) -> tuple:
        try:
            self.conn.send(("field", field))
            return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.process.join(timeout=5)
            return ("died", f"the worker process died (exit code {self.process.exitcode})", "")

    def stop(self) -> None:
        try:
            self.conn.send(("stop",))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
        self.conn.close()


# --- collecting metrics -----------------------------------------------------------------------


class _Columns:
    """Per-galaxy columns appended field by field."""

    def __init__(self):
        self.parts: dict[str, list[np.ndarray]] = {}

    def add(self, key: str, values) -> None:
        self.parts.setdefault(key, []).append(np.asarray(values))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.parts.items()}


def _nan_metrics(n: int, nb: int) -> dict[str, np.ndarray]:
    out = {}
    for key, per_band in MODEL_KEYS:
        shape = (n, nb) if per_band else (n,)
        out[key] = np.ones(shape, bool) if key == "hsm_failed" else np.full(shape, np.nan)
    return out


def _blended_metrics(ref_metrics: dict, n: int, nb: int) -> dict[str, np.ndarray]:
    out = _nan_metrics(n, nb)
    out.update(flux=ref_metrics["flux_blended"], flux_err=ref_metrics["flux_blended_err"],
               flux_residual=ref_metrics["flux_residual_blended"], colour=ref_metrics["colour_blended"],
               colour_residual_true=ref_metrics["colour_residual_true_blended"],
               colour_residual_blend=ref_metrics["colour_residual_blend_blended"])
    return out


def run_evaluation(fields: Iterable[TestField], methods: Sequence[str] = METHOD_NAMES, *, bundle=None,
                   bands: Sequence[str] | None = None, conditions=None, progress: bool = True,
                   n_fields: int | None = None, info: dict | None = None, checkpoint=None,
                   restart: bool = False, rerun: Sequence[str] = (),
                   precision: str = "float32", map_settings: dict | None = None,
                   psf_size: int = PSF_SIZE) -> EvaluationResult:
    """Deblend ``fields`` with every method and measure each galaxy.

    Parameters
    ----------
    fields : iterable of `TestField`
        The fields (read lazily, one at a time).
    methods : sequence of `str`
        Methods to compare (`METHOD_NAMES`); the ones not installed here are recorded absent.
    bundle : path-like, optional
        MADNESS model bundle; the packaged default if `None`.
    bands : sequence of `str`, optional
        Bands to measure and report (default all bands of the fields). Every method still
        deblends all bands of the field (MADNESS's model needs all of them).
    conditions : `lsst.meas.madness.simulation.LsstConditions`, optional
        Survey conditions of the fields' bands (default SurveyCodex's).
    progress : `bool`
        Show a progress bar.
    n_fields : `int`, optional
        Number of fields, for the progress bar.
    info : `dict`, optional
        Extra run description stored in ``EvaluationResult.info``.
    checkpoint : path-like, optional
        Directory where every finished field is saved. If it holds fields of a run with the
        same bands, bundle and field source (``info["fields"]``), each method's stored results
        of a field are loaded instead of deblended again (methods without stored results run);
        a different run there raises `MadnessValueError` unless ``restart``.
    restart : `bool`
        Discard what ``checkpoint`` holds and start again.
    rerun : sequence of `str`
        Methods whose results stored in ``checkpoint`` are discarded before the run (each
        field's files rewritten atomically), so they are computed again while the other
        methods' results are kept. An interrupted rerun continues without ``rerun``.
    precision : `str`
        Compute precision of MADNESS's MAP steps (`MapSettings.precision`); part of the run's
        signature, so a checkpoint is never continued in another precision.
    map_settings : `dict`, optional
        Further `lsst.meas.madness.engine.MapSettings` fields for MADNESS (e.g.
        ``{"max_iter": 60}``; `MapSettings.parse_overrides` reads them from ``KEY=VALUE``
        strings); the engine's defaults otherwise. Part of the run's signature, as
        ``precision`` is (which is set by that argument, not here).
    psf_size : `int`
        Side (odd) of the PSF images every method is given (`methods.PSF_SIZE`): the same for
        all, so that no method knows more of the PSF; part of the run's signature (it changes
        every method's results). Capped at the widest odd side the first field holds (with a
        warning; ``info["psf_size"]`` holds the size used, ``info["psf_size_requested"]`` the
        one asked for when they differ).

    Returns
    -------
    result : `EvaluationResult`
    """
    from tqdm.auto import tqdm

    from ..simulation import LsstConditions

    methods = list(dict.fromkeys(methods))
    for name in methods:
        get_method(name)  # unknown names raise here
    map_settings = _check_map_settings(map_settings, precision)
    psf_size = check_psf_size(psf_size)
    methods = [m for m in METHOD_NAMES if m in methods]  # report order
    availability = method_availability(methods)
    records: dict[str, MethodRecord] = {}
    for name in methods:
        cls = get_method(name)
        status = "ok" if availability[name] is None else "absent"
        records[name] = MethodRecord(name=name, label=cls.label, status=status, reason=availability[name])
    for name, rec in records.items():
        if rec.status == "absent":
            _log.warning("Method %s is absent: %s", name, rec.reason)

    field_iter = iter(fields)
    try:
        first = next(field_iter)
    except StopIteration:
        raise MadnessValueError("No field to evaluate.") from None
    field_bands = tuple(first.bands)
    conditions = conditions or LsstConditions.from_surveycodex(bands=field_bands)
    bands = field_bands if bands is None else tuple(bands)
    unknown = [b for b in bands if b not in field_bands]
    if unknown:
        raise MadnessValueError(f"Bands {unknown} are not among the fields' bands {field_bands}.")
    band_index = [field_bands.index(b) for b in bands]
    # A PSF image wider than the field is more than any method can use, and scarlet2 cannot
    # convolve with one: every method gets the widest odd side the field holds instead.
    side = int(min(first.image.shape[1:]))
    widest = side if side % 2 else side - 1
    requested_psf_size = psf_size
    if psf_size > widest:
        _log.warning("PSF images of %d px are wider than the %dx%d fields: every method gets %d px",
                     psf_size, *first.image.shape[1:], widest)
        psf_size = widest

    store = None
    rerun = list(dict.fromkeys(rerun))
    for name in rerun:
        get_method(name)
    if checkpoint is not None:
        signature = {"bands": list(bands), "field_bands": list(field_bands),
                     "bundle": None if bundle is None else str(bundle), "fields": (info or {}).get("fields"),
                     "precision": precision, "map_settings": map_settings,
                     "bundle_fingerprint": _bundle_fingerprint(bundle), "psf_size": psf_size}
        store = _Checkpoint(checkpoint, signature, restart=restart, rerun=rerun)
    elif rerun:
        raise MadnessValueError("rerun needs a checkpoint directory holding an earlier run.")

    context = multiprocessing.get_context("spawn")
    workers: dict[str, _Worker] = {}
    started = time.perf_counter()
    for name, rec in records.items():
        if rec.status == "ok" and name != "blended":
            workers[name] = _Worker(name, field_bands, conditions, bundle, context, precision=precision,
                                    map_settings=map_settings, psf_size=psf_size)
    for name, worker in list(workers.items()):
        message = worker.ready()
        rec = records[name]
        if message[0] == "ready":
            rec.setup_seconds = message[1]["setup_seconds"]
            rec.config = message[1]["config"]
        else:
            rec.status, rec.reason = "absent", f"setup failed: {message[1]}"
            _log.warning("Method %s is absent: %s\n%s", name, message[1],
                         message[2] if len(message) > 2 else "")
            worker.stop()
            del workers[name]
    if "blended" in records:
        records["blended"].config = get_method("blended")(field_bands, conditions).describe()
        records["blended"].setup_seconds = 0.0

    galaxies = _Columns()
    per_method = {name: _Columns() for name, rec in records.items() if rec.status == "ok"}
    n_steps = None if n_fields is None else n_fields * max(len(per_method), 1)
    bar = tqdm(total=n_steps, desc="madness evaluate", unit="deblend", disable=not progress)
    n_done = 0
    n_resumed = 0
    try:
        for field in _chain(first, field_iter):
            saved = None if store is None else store.load(field.field_id, list(per_method))
            if saved is not None and len(saved[2]) == len(per_method):
                saved_galaxies, saved_metrics, saved_entries = saved
                for key, values in saved_galaxies.items():
                    galaxies.add(key, values)
                for name, columns in per_method.items():
                    for key, _ in MODEL_KEYS:
                        columns.add(key, saved_metrics[name][key])
                    records[name].fields.append(saved_entries[name])
                bar.update(len(per_method))
                n_done += 1
                n_resumed += 1
                continue
            field_galaxies = _Columns()
            field_metrics = {name: {} for name in per_method}
            field_entries = {}
            # Methods whose results this field already holds (the others run below).
            stored_metrics, stored_entries = ({}, {}) if saved is None else saved[1:]
            n = field.n_galaxies
            nb = len(bands)
            sel = np.asarray(band_index)
            ref = reference_metrics(field.image[sel], field.isolated[:, sel], field.catalog,
                                    variance=field.variance[sel], conditions=conditions, bands=bands,
                                    centers_xy=field.centers_xy)
            field_galaxies.add("field_id", np.full(n, field.field_id))
            field_galaxies.add("galaxy", np.arange(n))
            field_galaxies.add("x", ref.x)
            field_galaxies.add("y", ref.y)
            for key in CATALOG_KEYS:
                if key in field.catalog.colnames:
                    field_galaxies.add(key, np.asarray(field.catalog[key]))
            for key, _ in REFERENCE_KEYS:
                field_galaxies.add(key, ref.metrics[key])
            variance = np.broadcast_to(np.asarray(field.variance, np.float32)[:, None, None],
                                       field.image.shape).copy()
            field_input = FieldInput(field_id=field.field_id, image=field.image, variance=variance,
                                     centers_xy=field.centers_xy, bands=field_bands)
            for name, columns in per_method.items():
                rec = records[name]
                entry = {"field_id": int(field.field_id), "n_galaxies": int(n), "seconds": None,
                         "compile_seconds": None, "peak_rss": None, "rss_before": None,
                         "memory_resettable": None, "error": None, "info": {}}
                if name in stored_entries:
                    metrics, entry = stored_metrics[name], stored_entries[name]
                elif name == "blended":
                    metrics = _blended_metrics(ref.metrics, n, nb)
                    entry["seconds"] = 0.0
                elif name not in workers:  # its worker died earlier in the run
                    metrics = _nan_metrics(n, nb)
                    entry["error"] = rec.reason
                else:
                    message = workers[name].deblend(field_input)
                    if message[0] == "result":
                        output, memory = message[1], message[2]
                        models = output.models[:, sel]
                        envelopes = None if output.envelopes is None else output.envelopes[:, sel]
                        metrics = model_metrics(ref, models, models_yx0=output.models_yx0,
                                                conditions=conditions, envelopes=envelopes,
                                                envelope_sources=output.envelope_sources)
                        entry.update(seconds=output.seconds, compile_seconds=output.compile_seconds,
                                     peak_rss=memory["peak_rss"], rss_before=memory["rss_before"],
                                     memory_resettable=memory["memory_resettable"], info=output.info)
                        if memory["warmup_seconds"] is not None:
                            rec.warmup_seconds = memory["warmup_seconds"]
                    else:
                        metrics = _nan_metrics(n, nb)
                        entry["error"] = message[1]
                        _log.warning("Method %s failed on field %d: %s", name, field.field_id, message[1])
                        if message[0] == "died":
                            rec.status, rec.reason = "failed", message[1]
                            workers.pop(name).stop()
                for key, _ in MODEL_KEYS:
                    field_metrics[name][key] = np.asarray(metrics[key])
                field_entries[name] = entry
                bar.update(1)
            field_galaxies = field_galaxies.arrays()
            if store is not None:
                store.save(field.field_id, field_galaxies, field_metrics, field_entries)
            for key, values in field_galaxies.items():
                galaxies.add(key, values)
            for name, columns in per_method.items():
                for key, _ in MODEL_KEYS:
                    columns.add(key, field_metrics[name][key])
                records[name].fields.append(field_entries[name])
            n_done += 1
    finally:
        bar.close()
        for worker in workers.values():
            worker.stop()
    if n_done == 0:
        raise MadnessValueError("No field to evaluate.")
    run_info = dict(info or {})
    run_info.update(n_fields=n_done, n_galaxies=int(sum(len(v) for v in galaxies.parts["galaxy"])),
                    field_bands=list(field_bands), seconds=round(time.perf_counter() - started, 2))
    run_info["psf_size"] = psf_size
    if psf_size != requested_psf_size:
        run_info["psf_size_requested"] = requested_psf_size
    if n_resumed:
        run_info["resumed_fields"] = n_resumed
    if rerun:
        run_info["rerun"] = rerun
    return EvaluationResult(bands=bands, galaxies=galaxies.arrays(),
                            metrics={name: cols.arrays() for name, cols in per_method.items()},
                            methods=records, info=run_info)


def _check_map_settings(map_settings, precision: str) -> dict:
    """``map_settings`` as a plain, key-sorted dict, checked against `MapSettings` before any
    worker starts (a bad field would otherwise fail in each worker's set-up)."""
    from ..engine import MapSettings

    overrides = dict(sorted(dict(map_settings or {}).items()))
    if "precision" in overrides:
        raise MadnessValueError("Give MADNESS's precision as `precision` (--precision), not as a map setting.")
    try:
        MapSettings(precision=precision, **overrides)
    except TypeError as exc:  # an unknown field
        raise MadnessValueError(f"Bad MapSettings override: {exc}.") from None
    return overrides


def _bundle_fingerprint(bundle) -> str:
    """sha256 of the bundle's ``bundle.json`` (which holds the sha256 of every weight file).

    The path alone does not name a model: the packaged default (``bundle=None``) changes when a
    new model is shipped, and a directory can be overwritten.
    """
    import hashlib

    from ..io.bundle import METADATA_FILE, default_bundle_path

    path = (default_bundle_path() if bundle is None else Path(bundle)) / METADATA_FILE
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"  # the MADNESS worker then reports the bundle's own error


class _Checkpoint:
    """Finished fields of one evaluation run, one ``.npz`` + ``.json`` pair per field.

    ``run.json`` holds the run's signature; a field counts as finished only once both of its
    files exist, and each is written to a temporary name and renamed, so an interruption
    never leaves a half-written field behind. The methods are not part of the signature: each
    field's files hold the results of the methods that ran on it.
    """

    # Signature keys that only the model methods (MODEL_METHOD_NAMES) depend on.
    MODEL_KEYS = ("bundle", "bundle_fingerprint", "precision", "map_settings")

    def __init__(self, directory, signature: dict, *, restart: bool = False, rerun: Sequence[str] = ()):
        self.directory = Path(directory)
        self.signature = json.loads(json.dumps(signature))
        run = self.directory / "run.json"
        if restart and self.directory.exists():
            shutil.rmtree(self.directory)
        if run.exists():
            stored = json.loads(run.read_text())
            stored.pop("methods", None)  # runs before per-method results recorded them here
            stored.setdefault("precision", "float32")  # runs before the precision was a choice
            stored.setdefault("map_settings", {})  # runs before the engine's settings were a choice
            # Runs before the fingerprint cannot say which model "the packaged default" was then.
            stored.setdefault("bundle_fingerprint", None)
            stored.setdefault("psf_size", LEGACY_PSF_SIZE)  # runs before the PSF's size was a choice
            differ = sorted(k for k in set(stored) | set(self.signature) if stored.get(k) != self.signature.get(k))
            # Another bundle or precision changes only the model methods' results: when all of
            # them are rerun, the peers' stored results stay valid (a new model beside the
            # same peers on the same fields, without running the peers again).
            new_model = bool(differ) and set(differ) <= set(self.MODEL_KEYS) \
                and set(MODEL_METHOD_NAMES) <= set(rerun)
            if differ and not new_model:
                hint = (f" (only {', '.join(differ)}: add --rerun {' '.join(MODEL_METHOD_NAMES)} to recompute the "
                        "model's methods and keep the others')" if set(differ) <= set(self.MODEL_KEYS) else "")
                raise MadnessValueError(
                    f"{self.directory} holds fields of another evaluation run (different {', '.join(differ)}){hint}; "
                    "use another output directory, or restart to discard them.")
            n = len(list(self.directory.glob("field-*.json")))
            if rerun:
                self.discard(rerun)
            if new_model:
                # Written after the discard: an interruption before it leaves the old signature
                # with the old results, and the same command starts again.
                _log.warning("Model changed (%s): the stored results of %s were discarded, the other methods' "
                             "are kept.", ", ".join(differ), ", ".join(MODEL_METHOD_NAMES))
                _atomic_write(run, json.dumps(self.signature, indent=1).encode())
            if n and rerun:
                _log.warning("Resuming: %d finished fields in %s; %s run again on them, the other methods' "
                             "stored results are loaded.", n, self.directory, ", ".join(rerun))
            elif n:
                _log.warning("Resuming: %d finished fields in %s are loaded, not deblended again.", n,
                             self.directory)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            _atomic_write(run, json.dumps(self.signature, indent=1).encode())

    def _paths(self, field_id: int) -> tuple[Path, Path]:
        stem = self.directory / f"field-{int(field_id):06d}"
        return stem.with_suffix(".npz"), stem.with_suffix(".json")

    def load(self, field_id: int, methods: list[str]):
        """``(galaxies, metrics, entries)`` of a finished field for those of ``methods`` it holds
        (possibly none), or `None` if the field was not saved."""
        arrays_path, entries_path = self._paths(field_id)
        if not (arrays_path.exists() and entries_path.exists()):
            return None
        entries = json.loads(entries_path.read_text())
        held = [name for name in methods if name in entries]
        with np.load(arrays_path, allow_pickle=False) as data:
            galaxies = {k[2:]: data[k] for k in data.files if k.startswith("g/")}
            metrics = {name: {key: data[f"m/{name}/{key}"] for key, _ in MODEL_KEYS} for name in held}
        return galaxies, metrics, {name: entries[name] for name in held}

    def discard(self, methods: Sequence[str]) -> int:
        """Remove ``methods``' results from every saved field (atomic rewrites); fields changed."""
        changed = 0
        for entries_path in sorted(self.directory.glob("field-*.json")):
            arrays_path = entries_path.with_suffix(".npz")
            entries = json.loads(entries_path.read_text())
            drop = [name for name in methods if name in entries]
            if not drop or not arrays_path.exists():
                continue
            with np.load(arrays_path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if not any(k.startswith(f"m/{name}/") for name in drop)}
            # Entries first: a field whose entries lack a method is recomputed for it even if
            # the interruption left its arrays in the old file.
            _atomic_write(entries_path, json.dumps({k: v for k, v in entries.items() if k not in drop},
                                                   default=_json_default).encode())
            _atomic_write(arrays_path, _npz_bytes(arrays))
            changed += 1
        if changed:
            _log.warning("Discarded the stored results of %s on %d fields.", ", ".join(methods), changed)
        return changed

    def save(self, field_id: int, galaxies: dict, metrics: dict, entries: dict) -> None:
        arrays_path, entries_path = self._paths(field_id)
        arrays = {f"g/{k}": v for k, v in galaxies.items()}
        arrays.update({f"m/{name}/{k}": v for name, cols in metrics.items() for k, v in cols.items()})
        _atomic_write(arrays_path, _npz_bytes(arrays))
        _atomic_write(entries_path, json.dumps(entries, default=_json_default).encode())


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _chain(first, rest):
    yield first
    yield from rest
