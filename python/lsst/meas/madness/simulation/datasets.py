"""The paper's datasets (section 2): IsolatedSims, BlendedSims and TestFields, in shards.

`simulate_dataset` turns a CatSim-format catalogue (one split of it: training, validation or
test galaxies) into a dataset directory (`shards` describes the files). The run is

* deterministic: the layout of every shard (galaxies, positions) and the seed of its noise come
  from ``seed``, the kind and the split only, never from the number of workers;
* parallel: shards are independent and go to ``workers`` processes;
* resumable: finished shards are listed in the manifest as they complete; a rerun with the same
  request skips them, a rerun with another request refuses to mix the two.

Per-row catalogue columns added to the input catalogue's own:

``catalog_index``
    Row of the galaxy in the input catalogue.
``x_peak``, ``y_peak``
    0-based pixel position of the galaxy's centre in its stamp (isolated, blended) or field.
``not_drawn_<band>``
    BTK's flag for a galaxy it could not draw in that band.
``field_id``, ``n_in_field`` (blended, testfields)
    Dataset-wide index of the galaxy's field, galaxies in that field.
``blendedness_<band>`` (testfields)
    Eq. 16 on the noiseless images: ``1 - S.S / (S_b.S)`` with ``S`` the isolated galaxy and
    ``S_b`` the noiseless field.
``truth_flux_fraction_<band>`` (testfields)
    Flux of the isolated galaxy inside its stored ``truth`` window over its flux in the field.
"""

from __future__ import annotations

__all__ = [
    "BlendedSimsConfig",
    "DATASET_KINDS",
    "IsolatedSimsConfig",
    "TestFieldsConfig",
    "catalog_fingerprint",
    "simulate_dataset",
]

import concurrent.futures
import dataclasses
import hashlib
import logging
import multiprocessing
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..engine.geometry import crop_stamps, round_half_up
from ..errors import MadnessValueError
from .btk_draw import BlendPlan, draw_planned_blends
from .plans import plan_blended, plan_isolated, plan_test_fields
from .shards import MANIFEST_NAME, DatasetManifest, SimulatedDataset, write_shard

_log = logging.getLogger(__name__)

BANDS = ("u", "g", "r", "i", "z", "y")
REQUIRED_COLUMNS = ("ra", "dec", "redshift", *(f"{b}_ab" for b in BANDS), "fluxnorm_bulge", "fluxnorm_disk",
                    "fluxnorm_agn", "a_b", "b_b", "a_d", "b_d", "pa_bulge", "pa_disk")
# Plans per BTK call: BTK keeps float64 isolated images of every galaxy of a call in memory.
_DRAW_CHUNK = {"isolated": 250, "blended": 100, "testfields": 2}


@dataclasses.dataclass(frozen=True)
class IsolatedSimsConfig:
    """IsolatedSims: one galaxy at the centre of each ``stamp_size`` stamp.

    ``shard_size`` counts stamps; ``noise`` is BTK's ``add_noise``; ``subpixel`` moves centres
    off the central pixel centre by up to half a pixel.
    """

    stamp_size: int = 45
    shard_size: int = 2000
    noise: str = "all"
    subpixel: bool = False
    knots: float = 0.0
    kind = "isolated"


@dataclasses.dataclass(frozen=True)
class BlendedSimsConfig:
    """BlendedSims: fields of ``min_galaxies``-``max_galaxies`` galaxies whose centres lie in a
    ``box`` x ``box`` pixel box; one ``stamp_size`` stamp is cut around each galaxy.

    ``shard_size`` counts stamps (whole fields are never split across shards).
    """

    stamp_size: int = 45
    box: int = 20
    min_galaxies: int = 1
    max_galaxies: int = 3
    shard_size: int = 2000
    noise: str = "all"
    subpixel: bool = False
    knots: float = 0.0
    kind = "blended"

    @property
    def field_size(self) -> int:
        size = self.stamp_size + self.box
        return size + 1 if size % 2 == 0 else size


@dataclasses.dataclass(frozen=True)
class TestFieldsConfig:
    """TestFields: ``field_size`` fields of ``min_galaxies``-``max_galaxies`` galaxies centred
    in the inner ``inner`` x ``inner`` pixels, no two centres in one pixel.

    Each galaxy's noiseless isolated image is kept in a ``truth_size`` window around it (the
    fraction of its flux inside is in the catalogue). ``shard_size`` counts fields. ``knots``
    (every kind) draws that fraction of each disc's flux as star-forming knots
    (`lsst.meas.madness.simulation.btk_draw.knotty_galaxy`): asymmetric galaxies.
    """

    field_size: int = 205
    inner: int = 150
    min_galaxies: int = 12
    max_galaxies: int = 20
    truth_size: int = 65
    shard_size: int = 25
    noise: str = "all"
    subpixel: bool = False
    knots: float = 0.0
    kind = "testfields"
    __test__ = False  # not a pytest test class, despite its name


DATASET_KINDS = {"isolated": IsolatedSimsConfig, "blended": BlendedSimsConfig, "testfields": TestFieldsConfig}


def catalog_fingerprint(table) -> str:
    """SHA-256 (16 hex digits) of a catalogue's column names and values."""
    digest = hashlib.sha256()
    for name in table.colnames:
        digest.update(name.encode())
        column = np.asarray(table[name])
        if column.dtype.kind in "OU":
            column = column.astype("S")
        digest.update(np.ascontiguousarray(column).tobytes())
    return digest.hexdigest()[:16]


def _check_catalog(table) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.colnames]
    if missing:
        raise MadnessValueError(f"The catalogue lacks the CatSim columns {missing} that BTK draws from.")
    if len(table) == 0:
        raise MadnessValueError("The catalogue is empty.")


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode()) & 0x7FFFFFFF


_KIND_CODE = {"isolated": 1, "blended": 2, "testfields": 3}


def _plan(kind: str, config, n_rows: int, n: int | None, rng: np.random.Generator) -> list[BlendPlan]:
    order = rng.permutation(n_rows)
    if kind == "isolated":
        return plan_isolated(order if n is None else order[:n])
    if kind == "blended":
        rows = order if n is None else order[:n]
        return plan_blended(rows, rng, min_galaxies=config.min_galaxies, max_galaxies=config.max_galaxies,
                             box=config.box, subpixel=config.subpixel)
    n_fields = n if n is not None else n_rows // ((config.min_galaxies + config.max_galaxies) // 2 + 1)
    if n_fields < 1:
        raise MadnessValueError(f"The test split ({n_rows} galaxies) is too small for one test field.")
    return plan_test_fields(order, n_fields, rng, min_galaxies=config.min_galaxies,
                            max_galaxies=config.max_galaxies, inner=config.inner, subpixel=config.subpixel)


def _shard_plans(kind: str, plans: list[BlendPlan], shard_size: int) -> list[list[BlendPlan]]:
    """Group plans into shards of about ``shard_size`` stamps (fields for testfields)."""
    if shard_size < 1:
        raise MadnessValueError(f"shard_size must be >= 1, got {shard_size}.")
    if kind == "testfields" or kind == "isolated":
        return [plans[i:i + shard_size] for i in range(0, len(plans), shard_size)]
    shards, current, count = [], [], 0
    for plan in plans:
        current.append(plan)
        count += len(plan)
        if count >= shard_size:
            shards.append(current)
            current, count = [], 0
    if current:
        shards.append(current)
    return shards


def _items(kind: str, plans: Sequence[BlendPlan]) -> int:
    return len(plans) if kind == "testfields" else sum(len(p) for p in plans)


def _catalog_rows(table, rows: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for name in table.colnames:
        column = np.asarray(table[name])[rows]
        if column.dtype.kind == "O":
            column = column.astype("U")
        out[name] = column
    return out


def _cut(images: np.ndarray, cy: int, cx: int, size: int) -> np.ndarray:
    """``size`` x ``size`` window of ``(bands, H, W)`` images centred on pixel (cy, cx), zero-padded."""
    return crop_stamps(images, np.array([[cy - size // 2, cx - size // 2]]), size)[0]


def _shard_table(catalog, plans: list[BlendPlan]) -> tuple[object, list[BlendPlan], np.ndarray]:
    """The catalogue rows one shard uses, and its plans re-indexed into them (less to pickle)."""
    used = np.unique(np.concatenate([np.asarray(p.rows) for p in plans]))
    local = [BlendPlan(np.searchsorted(used, p.rows), p.dx, p.dy) for p in plans]
    return catalog[used], local, used


def _make_shard(kind: str, index: int, table, plans: list[BlendPlan], catalog_index: np.ndarray, config,
                seed: int, first_field: int, directory: str, bands: tuple[str, ...],
                compression: str | None) -> dict:
    """Draw and write one shard (runs in a worker process).

    ``table`` holds the rows the shard uses; ``catalog_index`` maps them to the input catalogue.
    """
    start = time.perf_counter()
    size = config.stamp_size if kind == "isolated" else config.field_size
    centre = (size - 1) // 2
    chunk = _DRAW_CHUNK[kind]
    seeds = np.random.SeedSequence(seed).generate_state(len(plans) // chunk + 1)
    images, truth, noiseless, truth_yx0 = [], [], [], []
    columns: dict[str, list] = {}

    def add(name, values):
        columns.setdefault(name, []).append(np.asarray(values))

    for c, i0 in enumerate(range(0, len(plans), chunk)):
        part = plans[i0:i0 + chunk]
        blends, isolated, catalogs = draw_planned_blends(table, part, size, int(seeds[c]), noise=config.noise,
                                                         knots=config.knots)
        for j, (plan, cat) in enumerate(zip(part, catalogs)):
            n = len(plan)
            x = centre + np.asarray(plan.dx, dtype=np.float64)
            y = centre + np.asarray(plan.dy, dtype=np.float64)
            not_drawn = {b: np.asarray(cat[f"not_drawn_{b}"]).astype(bool) for b in bands}
            rows = {"catalog_index": catalog_index[np.asarray(plan.rows)]}
            rows.update(_catalog_rows(table, np.asarray(plan.rows)))
            field_id = first_field + i0 + j
            if kind == "isolated":
                images.append(blends[j:j + 1])
                truth.append(isolated[j:j + 1, 0])
                for name, col in rows.items():
                    add(name, col)
                add("x_peak", x)
                add("y_peak", y)
            elif kind == "blended":
                stamp = config.stamp_size
                half = stamp // 2
                for k in range(n):
                    cy, cx = int(round_half_up(y[k])), int(round_half_up(x[k]))
                    images.append(_cut(blends[j], cy, cx, stamp)[None])
                    truth.append(_cut(isolated[j, k], cy, cx, stamp)[None])
                    for name, col in rows.items():
                        add(name, col[k:k + 1])
                    add("x_peak", [half + x[k] - cx])
                    add("y_peak", [half + y[k] - cy])
                    add("field_id", [field_id])
                    add("n_in_field", [n])
                    for b in bands:
                        add(f"not_drawn_{b}", not_drawn[b][k:k + 1])
                continue
            else:  # testfields
                images.append(blends[j:j + 1])
                field_truth = isolated[j, :n]
                noiseless_field = field_truth.sum(axis=0)
                noiseless.append(noiseless_field[None])
                ts = config.truth_size
                total = field_truth.sum(axis=(-2, -1))  # (n, bands)
                s_dot_s = np.einsum("kbyx,kbyx->kb", field_truth, field_truth, dtype=np.float64)
                sb_dot_s = np.einsum("byx,kbyx->kb", noiseless_field, field_truth, dtype=np.float64)
                with np.errstate(divide="ignore", invalid="ignore"):
                    blendedness = np.where(s_dot_s > 0, 1.0 - s_dot_s / sb_dot_s, np.nan)
                windows = []
                for k in range(n):
                    cy, cx = int(round_half_up(y[k])), int(round_half_up(x[k]))
                    windows.append(_cut(field_truth[k], cy, cx, ts))
                    truth_yx0.append((cy - ts // 2, cx - ts // 2))
                windows = np.stack(windows)
                truth.append(windows)
                with np.errstate(divide="ignore", invalid="ignore"):
                    fraction = np.where(total > 0, windows.sum(axis=(-2, -1)) / total, np.nan)
                for name, col in rows.items():
                    add(name, col)
                add("x_peak", x)
                add("y_peak", y)
                add("field_id", np.full(n, field_id))
                add("n_in_field", np.full(n, n))
                for bi, b in enumerate(bands):
                    add(f"blendedness_{b}", blendedness[:, bi])
                    add(f"truth_flux_fraction_{b}", fraction[:, bi])
            for b in bands:
                add(f"not_drawn_{b}", not_drawn[b])
    arrays = {"images" if kind != "testfields" else "fields": np.concatenate(images).astype(np.float32),
              "truth": np.concatenate(truth).astype(np.float32)}
    if kind == "testfields":
        arrays["noiseless"] = np.concatenate(noiseless).astype(np.float32)
        arrays["truth_yx0"] = np.asarray(truth_yx0, dtype=np.int32).reshape(-1, 2)
    catalog = {name: np.concatenate(parts) for name, parts in columns.items()}
    attrs = {"kind": kind, "index": index, "seed": seed, "bands": ",".join(bands)}
    entry = write_shard(Path(directory) / f"shard-{index:05d}.h5", arrays, catalog, attrs, compression)
    n_galaxies = int(sum(len(p) for p in plans))
    entry.update(index=index, n_items=_items(kind, plans), n_galaxies=n_galaxies,
                 seconds=round(time.perf_counter() - start, 3))
    return entry


def simulate_dataset(kind: str, catalog, output, *, split: str = "train", seed: int = 0, n: int | None = None,
                     config=None, workers: int = 1, progress: bool = True, compression: str | None = None,
                     catalog_source: str = "", overwrite: bool = False) -> SimulatedDataset:
    """Simulate one of the paper's datasets from a catalogue split, resumably, in shards.

    Parameters
    ----------
    kind : `str`
        ``"isolated"`` (IsolatedSims), ``"blended"`` (BlendedSims) or ``"testfields"``.
    catalog : `astropy.table.Table`
        CatSim-format galaxies of one split (after the SNR cut); each galaxy is used once.
    output : `str` or `pathlib.Path`
        Dataset directory (created; resumed if it holds the same request).
    split : `str`
        Name of the split (recorded, and part of the seed so splits never share noise).
    seed : `int`
        Seed of the layout and of the noise.
    n : `int`, optional
        Stamps (isolated: galaxies; blended: galaxies, i.e. stamps) or fields (testfields) to
        make; default every galaxy of ``catalog`` (testfields: as many fields as it fills).
    config : dataclass, optional
        `IsolatedSimsConfig`, `BlendedSimsConfig` or `TestFieldsConfig`; the paper's by default.
    workers : `int`
        Worker processes (each draws whole shards).
    progress : `bool`
        Show a progress bar.
    compression : `str`, optional
        h5py compression filter for the arrays.
    catalog_source : `str`
        Where the catalogue came from (recorded in the manifest).
    overwrite : `bool`
        Replace a dataset made with another request instead of refusing.

    Returns
    -------
    dataset : `SimulatedDataset`
    """
    if kind not in DATASET_KINDS:
        raise MadnessValueError(f"Unknown dataset kind {kind!r}; choose one of {sorted(DATASET_KINDS)}.")
    config = DATASET_KINDS[kind]() if config is None else config
    if not isinstance(config, DATASET_KINDS[kind]):
        raise MadnessValueError(f"A {kind} dataset needs a {DATASET_KINDS[kind].__name__}, got {type(config).__name__}.")
    if workers < 1:
        raise MadnessValueError(f"workers must be >= 1, got {workers}.")
    _check_catalog(catalog)
    if n is not None and n < 1:
        raise MadnessValueError(f"n must be >= 1, got {n}.")
    if kind != "testfields" and n is not None and n > len(catalog):
        raise MadnessValueError(f"{n} {kind} stamps need {n} galaxies; the catalogue has {len(catalog)}.")
    output = Path(output)

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _KIND_CODE[kind], _split_code(split)]))
    plans = _plan(kind, config, len(catalog), n, rng)
    shards = _shard_plans(kind, plans, config.shard_size)
    shard_seeds = [int(s) for s in np.random.SeedSequence([int(seed), _KIND_CODE[kind], _split_code(split), 1])
                   .generate_state(len(shards))]
    first_field = np.concatenate([[0], np.cumsum([len(s) for s in shards])[:-1]]).astype(int)
    from .conditions import LsstConditions

    conditions = LsstConditions.from_surveycodex()
    request = {
        "kind": kind, "split": split, "seed": int(seed), "n": n, "config": dataclasses.asdict(config),
        "catalog": {"fingerprint": catalog_fingerprint(catalog), "n_rows": len(catalog), "source": catalog_source},
        "bands": list(BANDS), "compression": compression,
    }
    manifest = DatasetManifest(request=request, n_shards=len(shards), n_items=_items(kind, plans))
    if (output / MANIFEST_NAME).exists():
        existing = DatasetManifest.load(output)
        if existing.request_hash == manifest.request_hash:
            manifest = existing
            _log.info("Resuming %s: %d of %d shards done.", output, len(manifest.shards), manifest.n_shards)
        elif not overwrite:
            raise MadnessValueError(f"{output} holds another dataset (request {existing.request_hash}, this one "
                                    f"{manifest.request_hash}); choose another directory or overwrite.")
        else:
            for path in output.glob("shard-*.h5*"):
                path.unlink()
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.glob("*.tmp"):
        stale.unlink()
    manifest.info.update(conditions=conditions.as_dict(), pixel_scale=conditions.pixel_scale,
                         sky_level={b: conditions.sky_level(b) for b in BANDS})
    try:
        from ..version import __version__
    except ImportError:  # pragma: no cover - source tree without setuptools_scm
        __version__ = "unknown"
    manifest.info["code_version"] = __version__
    manifest.save(output)

    todo = [i for i in range(len(shards)) if i not in manifest.done_indices()]
    args = [(kind, i, *_shard_table(catalog, shards[i]), config, shard_seeds[i], int(first_field[i]),
             str(output), BANDS, compression) for i in todo]
    from tqdm.auto import tqdm

    bar = tqdm(total=manifest.n_items, initial=sum(s["n_items"] for s in manifest.shards),
               desc=f"{kind}/{split}", unit="field" if kind == "testfields" else "stamp", disable=not progress)
    start = time.perf_counter()
    made = 0

    def finish(entry):
        nonlocal made
        manifest.add_shard(entry)
        made += entry["n_items"]
        elapsed = time.perf_counter() - start
        manifest.info["last_run"] = {"workers": workers, "items": made, "seconds": round(elapsed, 2),
                                     "items_per_second": round(made / elapsed, 3) if elapsed > 0 else None}
        total_bytes = sum(s["bytes"] for s in manifest.shards)
        total_items = sum(s["n_items"] for s in manifest.shards)
        manifest.info["bytes"] = total_bytes
        manifest.info["bytes_per_10k_items"] = int(total_bytes / total_items * 1e4) if total_items else None
        manifest.save(output)
        bar.update(entry["n_items"])

    try:
        if workers == 1 or len(args) <= 1:
            for a in args:
                finish(_make_shard(*a))
        else:
            # spawn: workers must not inherit a parent's Keras/TensorFlow state
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = [pool.submit(_make_shard, *a) for a in args]
                for future in concurrent.futures.as_completed(futures):
                    finish(future.result())
    finally:
        bar.close()
    return SimulatedDataset(output)
