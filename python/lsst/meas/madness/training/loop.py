"""One training stage: epochs, learning-rate schedule, early stopping, checkpoints, logs.

Keras ``fit`` runs one epoch at a time over batches in an order drawn from
``SeedSequence([seed, stage, epoch])``; between epochs this loop sets the learning rate (and the
warm-up's alpha), evaluates on the validation set, logs, and writes a checkpoint atomically:
every model and optimiser variable (the latent sampler's seed state included), the epoch, the
early-stopping state and the history. A killed run restarts from the last finished epoch and,
because nothing random lives outside the checkpoint, ends where the uninterrupted run ends.
"""

from __future__ import annotations

__all__ = ["StageResult", "default_data_workers", "run_stage"]

import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from .config import StageSchedule

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class StageResult:
    """What a stage did: per-epoch history, best validation value and epoch, wall time.

    ``best_val_loss`` is the best value of the quantity the stage monitored (``monitor``: the
    validation loss unless the stage chose another validation number).
    """

    name: str
    history: list[dict]
    best_val_loss: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    seconds: float
    stopped_for_time: bool = False
    monitor: str = "val_loss"

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("history")
        return out


class _Batches(keras.utils.PyDataset):
    """Batches of ``x`` (and ``y``) in a given order, without copying the arrays.

    With ``augment``, batch ``i`` is ``augment(y[idx], rng)`` instead, with ``rng`` drawn from
    ``SeedSequence([*seed_key, i])``: new noise (and symmetries) every epoch, the same for a
    resumed run as for an uninterrupted one.

    With ``workers`` > 1, asking for batch ``i`` also starts batches ``i + 1 ... i + workers`` on
    a pool of threads (numpy's noise draws release the GIL), so they are ready when the step
    asks. Each batch is a function of its index alone, so the batches are the same for any number
    of workers. Keras's own ``PyDataset(workers=...)`` is not used: on JAX its enqueuer hands the
    epoch's first batch over last (Keras 3.15: ``fit`` takes one batch to look at the data first).
    """

    def __init__(self, x, y, batch_size: int, order: np.ndarray, augment=None, seed_key=(), workers: int = 1):
        super().__init__()
        self.x, self.y, self.batch_size, self.order = x, y, int(batch_size), order
        self.augment, self.seed_key = augment, tuple(int(k) for k in seed_key)
        # Not ``self.workers``: that name would make Keras run its own enqueuer.
        self.threads = int(workers)
        self._pool = None
        self._ahead: dict = {}

    def __len__(self):
        return math.ceil(len(self.order) / self.batch_size)

    def _make(self, i):
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        if self.augment is not None:
            return self.augment(self.y[idx], np.random.default_rng(np.random.SeedSequence([*self.seed_key, i])))
        return (self.x[idx],) if self.y is None else (self.x[idx], self.y[idx])

    def __getitem__(self, i):
        if self.threads <= 1:
            return self._make(i)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="madness-batches")
        for j in range(i, min(i + self.threads + 1, len(self))):
            if j not in self._ahead:
                self._ahead[j] = self._pool.submit(self._make, j)
        for j in [j for j in self._ahead if j < i]:  # skipped (never asked for): drop
            self._ahead.pop(j).cancel()
        return self._ahead.pop(i).result()

    def on_epoch_end(self):
        self.close()

    def close(self):
        """Stop the threads and drop the batches made ahead."""
        for future in self._ahead.values():
            future.cancel()
        self._ahead.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _values(variables) -> dict[str, np.ndarray]:
    return {f"{i:05d}": np.asarray(keras.ops.convert_to_numpy(v.value)) for i, v in enumerate(variables)}


def _assign(variables, arrays) -> None:
    if len(arrays) != len(variables):
        raise RuntimeError(f"Checkpoint holds {len(arrays)} arrays for {len(variables)} variables.")
    for i, v in enumerate(variables):
        value = arrays[f"{i:05d}"]
        if tuple(value.shape) != tuple(v.shape):
            raise RuntimeError(f"Checkpoint array {i} has shape {value.shape}, variable {v.path} {v.shape}.")
        v.assign(value)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _atomic_bytes(path, buffer.getvalue())


class _TensorBoard:
    """Scalars to TensorBoard when TensorFlow is importable (it is not on the GPU machines)."""

    def __init__(self, logdir: Path):
        try:
            import tensorboard  # noqa: F401  (tf.summary needs it)
            import tensorflow as tf
        except ImportError:
            self._writer = None
            _log.info("TensorFlow/TensorBoard not installed: no TensorBoard logs (CSV logs are written).")
            return
        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(logdir))

    def write(self, step: int, values: dict) -> None:
        if self._writer is None:
            return
        with self._writer.as_default():
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self._tf.summary.scalar(key, value, step=step)
        self._writer.flush()


def default_data_workers() -> int:
    """Threads making training batches: 1 on CPUs, where the step takes the cores and the noise of
    a batch is a small part of it; up to 8 beside an accelerator, where one thread drawing a
    batch's noise takes ~5x the step (batch 1,024 on an H200, doc/benchmarks.md)."""
    from ..backend import has_accelerator

    return min(8, os.cpu_count() or 1) if has_accelerator() else 1


def run_stage(name: str, trainer: keras.Model, schedule: StageSchedule, x, y, x_val, y_val, *,
              directory: Path, seed: int, extra_metrics: Callable[[], dict] | None = None,
              on_epoch_start: Callable[[int], dict] | None = None, progress: bool = True,
              augment: Callable | None = None, time_budget_s: float | None = None,
              monitor: str = "val_loss", data_workers: int | None = None, first_epoch: int = 0,
              on_epoch_end: Callable[[StageResult], None] | None = None) -> StageResult:
    """Train ``trainer`` for one stage, resuming from ``directory`` if a checkpoint is there.

    Parameters
    ----------
    name : `str`
        Stage name (logs and the shuffle seed).
    trainer : `keras.Model`
        A model whose ``compute_loss`` is the stage's loss (`lsst.meas.madness.training.models`).
    schedule : `StageSchedule`
        Learning rate, clipping, epochs, patience, batch size.
    x, y, x_val, y_val : `numpy.ndarray`
        Training and validation inputs and targets (``y`` may be `None`).
    directory : `pathlib.Path`
        Run directory: ``checkpoints/<name>/`` and ``logs/<name>.csv`` are written there.
    seed : `int`
        Seed of the batch order.
    extra_metrics : callable, optional
        Called after each epoch; its dict of numbers is logged too (validation components).
    on_epoch_start : callable, optional
        Called with the epoch before it runs (e.g. to set alpha); its dict is logged.
    progress : `bool`
        A progress bar over epochs.
    augment : callable, optional
        ``augment(y_batch, rng) -> (x_batch, y_batch)`` makes each training batch from the
        targets (`lsst.meas.madness.training.augment.FreshNoise`); ``x`` is then unused.
    time_budget_s : `float`, optional
        Training seconds this stage may use in all (resumed runs included): an epoch that would
        end past it is not started, and the stage ends as if finished (``stopped_for_time``). A
        stage that stopped so, resumed with a budget that fits another epoch, continues.
    monitor : `str`
        The validation number (a key of an epoch's row: ``val_loss`` or one of
        ``extra_metrics``) whose lowest value picks the kept epoch and drives early stopping. A
        run resumed under another monitor than it started with re-scores its kept and its last
        weights under the new one (earlier epochs' weights are gone) and keeps the better.

    data_workers : `int`, optional
        Threads that make the training batches (``augment``'s noise draws) ahead of the step;
        `None`: `default_data_workers`. The batches and so the result are the same for any number.
    first_epoch : `int`
        Where a new stage (no checkpoint in ``directory``) starts its schedule: a run continued
        from another run's snapshot on a new machine takes up its learning-rate schedule at the
        epoch that run reached (the optimiser's moments start again). Ignored when resuming.
    on_epoch_end : callable, optional
        Called with the stage's `StageResult` so far after each epoch's checkpoint is written,
        while ``trainer`` holds that epoch's weights (e.g. to write a bundle snapshot).

    Returns
    -------
    result : `StageResult`
    """
    from tqdm.auto import tqdm

    directory = Path(directory)
    ckpt = directory / "checkpoints" / name
    ckpt.mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    csv_path = directory / "logs" / f"{name}.csv"
    board = _TensorBoard(directory / "logs" / "tensorboard" / name)
    stage_code = zlib.crc32(name.encode()) & 0x7FFFFFFF

    ema = {} if schedule.ema_momentum is None else {"use_ema": True, "ema_momentum": schedule.ema_momentum}
    optimizer = keras.optimizers.Adam(schedule.learning_rate, clipvalue=schedule.clip_value, **ema)
    # JAX runs Keras's train step op by op unless it is jitted (~0.3 s per step on an H200
    # whatever the batch, doc/benchmarks.md); TensorFlow keeps its graph without XLA, whose CPU
    # transposed convolutions are 10-20x slower (doc/training.md).
    trainer.compile(optimizer=optimizer, jit_compile=keras.config.backend() == "jax")
    # Build everything now so that checkpoints can be restored into existing variables.
    trainer(x[: min(2, len(x))], training=False)
    optimizer.build(trainer.trainable_variables)

    if not 0 <= first_epoch < schedule.max_epochs:
        raise ValueError(f"Stage {name}: first_epoch {first_epoch} is outside its {schedule.max_epochs} epochs.")
    state = {"epoch": int(first_epoch), "best_val_loss": math.inf, "best_epoch": -1, "wait": 0, "history": [],
             "done": False, "seconds": 0.0, "monitor": monitor}
    state_path = ckpt / "state.json"
    if state_path.exists():
        state = json.loads(state_path.read_text())
        with np.load(ckpt / "variables.npz") as arrays:
            _assign(trainer.variables, arrays)
        with np.load(ckpt / "optimizer.npz") as arrays:
            _assign(optimizer.variables, arrays)
        _log.info("Stage %s: resuming at epoch %d.", name, state["epoch"])
        if state.get("monitor", "val_loss") != monitor and state["history"]:
            _rescore(name, trainer, ckpt, state, monitor, lambda: _monitored(trainer, x_val, y_val, schedule,
                                                                          extra_metrics, monitor))
        if (state["done"] and state.get("stopped_for_time", False) and state["history"]
                and state["epoch"] < schedule.max_epochs
                and (time_budget_s is None
                     or state["seconds"] + state["history"][-1]["seconds"] <= time_budget_s)):
            # Stopped by an earlier, smaller budget, with epochs left: a larger budget continues it
            # from the last epoch's weights (loaded above).
            _log.info("Stage %s: continuing after its earlier time budget (%.0f s used).", name, state["seconds"])
            state.update(done=False, stopped_for_time=False)
        if state["done"]:
            if schedule.patience is not None:
                with np.load(ckpt / "best.npz") as arrays:
                    _assign(trainer.variables, arrays)
            return StageResult(name, state["history"], state["best_val_loss"], state["best_epoch"],
                               state["epoch"], state.get("stopped_early", False), state["seconds"],
                               state.get("stopped_for_time", False), monitor)

    workers = default_data_workers() if data_workers is None else int(data_workers)
    if workers < 1:
        raise ValueError(f"data_workers must be at least 1, not {data_workers}.")
    val_batches = _Batches(x_val, y_val, schedule.batch_size, np.arange(len(x_val)))
    bar = tqdm(total=schedule.max_epochs, initial=state["epoch"], desc=name, unit="epoch", disable=not progress)
    stopped_early = False
    try:
        for epoch in range(state["epoch"], schedule.max_epochs):
            if time_budget_s is not None and state["history"]:
                # The next epoch is assumed to take as long as the last one.
                if state["seconds"] + state["history"][-1]["seconds"] > time_budget_s:
                    _log.info("Stage %s: time budget of %.0f s reached after epoch %d.", name, time_budget_s,
                              epoch - 1)
                    state.update(done=True, stopped_for_time=True)
                    _atomic_bytes(state_path, json.dumps(state, indent=1).encode())
                    break
            start = time.perf_counter()
            lr = schedule.learning_rate_at(epoch)
            optimizer.learning_rate.assign(lr)
            row = {"epoch": epoch, "learning_rate": lr}
            if on_epoch_start is not None:
                row.update(on_epoch_start(epoch))
            order = np.random.default_rng(np.random.SeedSequence([seed, stage_code, epoch])).permutation(len(x))
            batches = _Batches(x, y, schedule.batch_size, order, augment, (seed, stage_code, epoch),
                               workers=workers)
            try:
                fit = trainer.fit(batches, epochs=1, shuffle=False, verbose=0)
            finally:
                batches.close()
            if ema and keras.config.backend() == "jax":
                # Keras ends an averaging epoch by assigning the averages to the weights, which
                # then share their buffers on JAX; the next jitted call (evaluate) donates the
                # weights' buffers, which would delete the averages under the optimizer.
                for variable in optimizer.variables:
                    variable.assign(keras.ops.copy(variable.value))
            row["loss"] = float(fit.history["loss"][-1])
            row["val_loss"] = float(trainer.evaluate(val_batches, verbose=0))
            if extra_metrics is not None:
                row.update(extra_metrics())
            row["seconds"] = round(time.perf_counter() - start, 2)
            state["seconds"] += row["seconds"]
            state["history"].append(row)
            if monitor not in row:
                raise KeyError(f"Stage {name}: monitored {monitor!r} is not among the epoch's numbers {sorted(row)}")
            improved = row[monitor] < state["best_val_loss"]
            if improved:
                state.update(best_val_loss=row[monitor], best_epoch=epoch, wait=0)
                _save_npz(ckpt / "best.npz", _values(trainer.variables))
            else:
                state["wait"] += 1
            state["epoch"] = epoch + 1
            stop = schedule.patience is not None and state["wait"] >= schedule.patience
            state["done"] = stop or state["epoch"] >= schedule.max_epochs
            stopped_early = stop
            state["stopped_early"] = stopped_early
            # variables first, state last: a kill in between redoes the epoch from the old state
            _save_npz(ckpt / "variables.npz", _values(trainer.variables))
            _save_npz(ckpt / "optimizer.npz", _values(optimizer.variables))
            _atomic_bytes(state_path, json.dumps(state, indent=1).encode())
            _write_csv(csv_path, state["history"])
            board.write(epoch, row)
            if on_epoch_end is not None:
                on_epoch_end(StageResult(name, state["history"], state["best_val_loss"], state["best_epoch"],
                                         state["epoch"], stopped_early, state["seconds"], False, monitor))
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4g}", val=f"{row['val_loss']:.4g}")
            if stop:
                _log.info("Stage %s: early stop after epoch %d (best %d).", name, epoch, state["best_epoch"])
                break
    finally:
        bar.close()
    # With early stopping keep the best epoch; without (the warm-up, whose loss changes with
    # alpha from epoch to epoch) keep the last.
    if schedule.patience is not None and (ckpt / "best.npz").exists():
        with np.load(ckpt / "best.npz") as arrays:
            _assign(trainer.variables, arrays)
    return StageResult(name, state["history"], state["best_val_loss"], state["best_epoch"], state["epoch"],
                       stopped_early, state["seconds"], state.get("stopped_for_time", False), monitor)


def _monitored(trainer, x_val, y_val, schedule: StageSchedule, extra_metrics, monitor: str) -> float:
    """The monitored validation number of ``trainer``'s current weights."""
    if monitor == "val_loss":
        return float(trainer.evaluate(_Batches(x_val, y_val, schedule.batch_size, np.arange(len(x_val))), verbose=0))
    return float(extra_metrics()[monitor])


def _rescore(name: str, trainer, ckpt: Path, state: dict, monitor: str, score: Callable[[], float]) -> None:
    """Move a resumed stage's state to another monitor: score its kept (``best.npz``) and its last
    weights under ``monitor``, keep the better as ``best.npz``, and leave the last loaded."""
    old = state.get("monitor", "val_loss")
    last_values = _values(trainer.variables)
    scores = {state["epoch"] - 1: score()}
    if (ckpt / "best.npz").exists() and state["best_epoch"] not in scores:
        with np.load(ckpt / "best.npz") as arrays:
            _assign(trainer.variables, arrays)
        scores[state["best_epoch"]] = score()
        _assign(trainer.variables, last_values)
    # The lowest score; on a tie the epoch kept so far.
    best_epoch = min(scores, key=lambda e: (scores[e], e != state["best_epoch"]))
    best = scores[best_epoch]
    if best_epoch == state["epoch"] - 1:
        _save_npz(ckpt / "best.npz", last_values)
    _log.warning("Stage %s: resumed with monitor %r instead of %r; %s; kept epoch %d.", name, monitor, old,
                 ", ".join(f"epoch {e}: {v:.6g}" for e, v in sorted(scores.items())), best_epoch)
    state.update(monitor=monitor, best_val_loss=best, best_epoch=best_epoch, wait=state["epoch"] - 1 - best_epoch)
    _atomic_bytes(ckpt / "state.json", json.dumps(state, indent=1).encode())


def _write_csv(path: Path, history: list[dict]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    _atomic_bytes(path, buffer.getvalue().encode())
