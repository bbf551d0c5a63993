"""On-disk layout of simulated datasets: HDF5 shards plus a JSON manifest.

A dataset is a directory::

    manifest.json          what was asked (kind, split, seed, config, catalogue fingerprint),
                           what is done (one entry per finished shard), throughput
    shard-00000.h5 ...     the arrays and the per-galaxy catalogue of each shard

Every file is written to a temporary name and renamed into place, so a killed run leaves whole
shards and a manifest that lists only those; the next run with the same request resumes.

Shard content (float32 images in electrons per pixel, sky subtracted; bands in manifest order):

``isolated`` (IsolatedSims)
    ``images`` (n, bands, S, S) noisy stamps, ``truth`` (n, bands, S, S) the noiseless galaxy.
``blended`` (BlendedSims)
    ``images`` (n, bands, S, S) noisy stamps cut around each galaxy of a 1-3 galaxy field,
    ``truth`` (n, bands, S, S) the noiseless isolated central galaxy in the same window.
``testfields`` (TestFields)
    ``fields`` (f, bands, N, N) noisy fields, ``noiseless`` (f, bands, N, N) their noiseless sum
    (``fields - noiseless`` is the noise realisation), ``truth`` (g, bands, T, T) each galaxy's
    noiseless isolated image in a T x T window whose corner in the field is ``truth_yx0`` (g, 2).

``catalog/<column>`` holds one row per stamp (isolated, blended) or per galaxy (testfields): the
input catalogue's columns plus ``catalog_index`` (row in the input catalogue), ``x_peak``,
``y_peak`` (0-based pixel centre in the stamp or field) and kind-specific columns documented in
`lsst.meas.madness.simulation.datasets`.
"""

from __future__ import annotations

__all__ = ["DatasetManifest", "SimulatedDataset", "read_shard", "write_shard", "MANIFEST_NAME"]

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ..errors import MadnessValueError

MANIFEST_NAME = "manifest.json"
SCHEMA = "meas_madness.dataset/1"
KINDS = ("isolated", "blended", "testfields")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(path: Path, arrays: Mapping[str, np.ndarray], catalog: Mapping[str, np.ndarray],
                attrs: Mapping[str, object], compression: str | None = None) -> dict:
    """Write one shard atomically; return its manifest entry (file, bytes, sha256).

    ``compression`` is an h5py filter name (``"gzip"``, ``"lzf"``) or None; images of noisy
    float32 pixels barely compress, so the default is None.
    """
    import h5py

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    opts = {} if compression is None else {"compression": compression, "shuffle": True}
    with h5py.File(tmp, "w") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            chunks = (1,) + array.shape[1:] if array.ndim > 1 and array.shape[0] > 0 else None
            f.create_dataset(name, data=array, chunks=chunks, **opts)
        group = f.create_group("catalog")
        # HDF5 lists members alphabetically; keep the writer's column order.
        group.attrs["columns"] = ",".join(catalog)
        for name, column in catalog.items():
            column = np.asarray(column)
            if column.dtype.kind == "U":
                column = column.astype("S")
            group.create_dataset(name, data=column)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def read_shard(path: Path, names: tuple[str, ...] | None = None) -> tuple[dict, dict, dict]:
    """Read a shard: ``(arrays, catalog columns, attrs)``; ``names`` limits the arrays read."""
    import h5py

    with h5py.File(path, "r") as f:
        arrays = {k: f[k][()] for k in f.keys() if k != "catalog" and (names is None or k in names)}
        catalog = {}
        group = f["catalog"]
        order = group.attrs["columns"].split(",") if "columns" in group.attrs else list(group.keys())
        for k in order:
            column = f["catalog"][k][()]
            catalog[k] = column.astype("U") if column.dtype.kind == "S" else column
        attrs = dict(f.attrs)
    return arrays, catalog, attrs


@dataclasses.dataclass
class DatasetManifest:
    """What a dataset directory holds and how it was made.

    ``request`` identifies the dataset (kind, split, seed, config, catalogue fingerprint,
    bands, code schema); a run that finds a manifest with another request refuses to mix them.
    """

    request: dict
    n_shards: int
    n_items: int
    shards: list = dataclasses.field(default_factory=list)
    info: dict = dataclasses.field(default_factory=dict)
    schema: str = SCHEMA

    @property
    def kind(self) -> str:
        return self.request["kind"]

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.request["bands"])

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.n_shards

    @property
    def request_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.request, sort_keys=True).encode()).hexdigest()[:16]

    def done_indices(self) -> set[int]:
        return {int(s["index"]) for s in self.shards}

    def add_shard(self, entry: dict) -> None:
        self.shards = sorted([s for s in self.shards if s["index"] != entry["index"]] + [entry],
                             key=lambda s: s["index"])

    def to_dict(self) -> dict:
        return {"schema": self.schema, "request": self.request, "request_hash": self.request_hash,
                "n_shards": self.n_shards, "n_items": self.n_items, "complete": self.complete,
                "shards": self.shards, "info": self.info}

    def save(self, directory: Path) -> None:
        _atomic_write_bytes(Path(directory) / MANIFEST_NAME,
                            (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode())

    @classmethod
    def load(cls, directory: Path) -> "DatasetManifest":
        path = Path(directory) / MANIFEST_NAME
        if not path.exists():
            raise MadnessValueError(f"{directory} is not a simulated dataset: no {MANIFEST_NAME}.")
        data = json.loads(path.read_text())
        if data.get("schema") != SCHEMA:
            raise MadnessValueError(f"{path}: dataset schema {data.get('schema')!r}; this code reads {SCHEMA!r}.")
        return cls(request=data["request"], n_shards=data["n_shards"], n_items=data["n_items"],
                   shards=data.get("shards", []), info=data.get("info", {}))


class SimulatedDataset:
    """Read access to a dataset directory written by `simulate_dataset`.

    Parameters
    ----------
    directory : `str` or `pathlib.Path`
        The dataset directory.
    verify : `bool`
        Check each shard's size and SHA-256 against the manifest when it is read.

    Examples
    --------
    >>> data = SimulatedDataset("sims/isolated-train")  # doctest: +SKIP
    >>> images, truth = data.load("images", "truth")  # doctest: +SKIP
    """

    def __init__(self, directory, verify: bool = False):
        self.directory = Path(directory)
        self.manifest = DatasetManifest.load(self.directory)
        self.verify = verify

    def __len__(self) -> int:
        return sum(int(s["n_items"]) for s in self.manifest.shards)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"SimulatedDataset({str(self.directory)!r}, kind={m.kind!r}, split={m.request['split']!r}, "
                f"items={len(self)}/{m.n_items}, shards={len(m.shards)}/{m.n_shards})")

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def bands(self) -> tuple[str, ...]:
        return self.manifest.bands

    def shard_paths(self) -> list[Path]:
        return [self.directory / s["file"] for s in self.manifest.shards]

    def _check(self, entry: dict) -> Path:
        path = self.directory / entry["file"]
        if not path.exists():
            raise MadnessValueError(f"Shard {path} listed in the manifest is missing.")
        if path.stat().st_size != entry["bytes"] or (self.verify and file_sha256(path) != entry["sha256"]):
            raise MadnessValueError(f"Shard {path} does not match its manifest entry (size or checksum).")
        return path

    def iter_shards(self, *names: str) -> Iterator[tuple[dict, dict]]:
        """Yield ``(arrays, catalog)`` per shard, in order; ``names`` limits the arrays read."""
        for entry in self.manifest.shards:
            arrays, catalog, _ = read_shard(self._check(entry), names or None)
            yield arrays, catalog

    def load(self, *names: str):
        """Concatenate arrays ``names`` over all shards (one array per name, in that order)."""
        if not names:
            raise MadnessValueError("Name the arrays to load, e.g. load('images', 'truth').")
        parts = {n: [] for n in names}
        for arrays, _ in self.iter_shards(*names):
            for n in names:
                if n not in arrays:
                    raise MadnessValueError(f"A {self.kind} dataset has no array {n!r}; it has {sorted(arrays)}.")
                parts[n].append(arrays[n])
        out = tuple(np.concatenate(parts[n]) for n in names)
        return out[0] if len(out) == 1 else out

    def catalog(self):
        """The per-row catalogue of all shards as an `astropy.table.Table`."""
        from astropy.table import Table, vstack

        tables = [Table(catalog) for _, catalog in self.iter_shards("__none__")]
        return vstack(tables) if tables else Table()
