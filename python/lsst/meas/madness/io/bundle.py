"""The model bundle: one directory holding a trained MADNESS model and what it was trained for.

Layout (schema 1.0.0)::

    <bundle>/
        bundle.json                       metadata, architectures, sha256 of every weight file
        decoder.weights.000.npz           weights, one or more shards of < 15 MB each
        flow.weights.000.npz
        deblender_encoder.weights.000.npz
        encoder.weights.000.npz           optional: the VAE's own encoder (training, figures)

A bundle may also *share* networks with another bundle (``ModelBundle.save(share_with=...)``):
a network whose stored weights are identical to the other bundle's is not written again; its
file entries name that bundle (``"shared_from"``: ``"packaged:<name>"`` for a bundle shipped
with the package, or a path relative to the bundle directory) and keep the sha256 of the
file there, so loading still verifies every byte and refuses a shared file that has changed.
This keeps a decoder-only continuation (``madness train --freeze-encoder``) a few MB instead of
the whole model, small enough to commit while it trains across sessions.

Weights are stored as ``float16`` by default (halving the shipped size; the decoded stamps change
by far less than the pixel noise -- see ``doc/bundle.md`` and ``tests/test_bundle.py``) or
``float32``. Loading checks the schema version, that every file is present with the recorded
size and sha256, that each network's weights match its architecture, and that the metadata
agree with each other; anything else raises `MadnessBundleError` with the reason. Writing is
atomic: a bundle appears complete or not at all.
"""

from __future__ import annotations

__all__ = [
    "BundleMetadata",
    "ModelBundle",
    "BUNDLE_SCHEMA_VERSION",
    "default_bundle_path",
    "packaged_bundle_path",
]

import dataclasses
import datetime
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..errors import MadnessBundleError
from ..networks import Decoder, Encoder, MaskedAutoregressiveFlow

BUNDLE_SCHEMA_VERSION = "1.0.0"
METADATA_FILE = "bundle.json"
REQUIRED_NETWORKS = ("decoder", "flow", "deblender_encoder")
OPTIONAL_NETWORKS = ("encoder",)
MAX_SHARD_BYTES = 15 * 2**20
_NETWORK_CLASSES = {
    "decoder": Decoder,
    "flow": MaskedAutoregressiveFlow,
    "deblender_encoder": Encoder,
    "encoder": Encoder,
}


PACKAGED_PREFIX = "packaged:"


def packaged_bundle_path(name: str) -> Path:
    """Where the packaged bundle ``name`` (e.g. ``"lsst-default"``) lives in the installed package."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise MadnessBundleError(f"{name!r} is not the name of a packaged bundle.")
    return Path(__file__).resolve().parent.parent / "data" / "bundles" / name


def default_bundle_path() -> Path:
    """Where the packaged default LSST bundle lives inside the installed package."""
    return packaged_bundle_path("lsst-default")


def _shared_directory(bundle_dir: Path, shared_from: str) -> Path:
    """The directory a shared file entry points to (see the module docstring)."""
    if shared_from.startswith(PACKAGED_PREFIX):
        return packaged_bundle_path(shared_from[len(PACKAGED_PREFIX):])
    if Path(shared_from).is_absolute():
        raise MadnessBundleError(
            f"Shared bundle {shared_from!r} is an absolute path: a bundle must stay valid when moved."
        )
    # Lexically, so that a bundle being written (whose directory does not exist yet) resolves too.
    return Path(os.path.normpath(bundle_dir / shared_from))


def _code_version() -> str:
    try:
        from ..version import __version__

        return __version__
    except ImportError:
        return "unknown"


@dataclasses.dataclass(frozen=True)
class BundleMetadata:
    """What a bundle's weights expect of the data and how they were made.

    Parameters
    ----------
    bands : `tuple` [`str`, ...]
        Band of each network channel, in order (``("u", "g", "r", "i", "z", "y")``).
    stamp_size : `int`
        Side of the network stamps in pixels.
    pixel_scale : `float`
        Pixel scale the networks were trained at, arcsec per pixel.
    normalization : `float`
        Flux units per network unit (`lsst.meas.madness.networks.LinearNormalization`).
    latent_dim : `int`
        Latent dimension.
    trained : `bool`
        `False` for untrained (random) weights -- tests and benchmarks only. Loading such a
        bundle for science requires ``allow_untrained=True``.
    survey : `str`
        Survey the conditions come from (``"LSST"``).
    conditions : `dict`
        Observing conditions per band (PSF FWHM in arcsec, sky brightness in mag/arcsec^2,
        zero point, exposure time in s, ...).
    description : `str`
        Free text.
    training : `dict`
        Training configuration (preset, dataset sizes, epochs, wall time, machine).
    metrics : `dict`
        Validation metrics.
    code_version : `str`
        meas_madness version that wrote the bundle.
    created : `str`
        ISO-8601 UTC time of writing.
    weights_dtype : `str`
        ``"float16"`` or ``"float32"``: storage type of the weight files.
    schema_version : `str`
        Bundle layout version.
    """

    bands: tuple[str, ...]
    stamp_size: int
    pixel_scale: float
    normalization: float
    latent_dim: int
    trained: bool
    survey: str = "LSST"
    conditions: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    training: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    code_version: str = dataclasses.field(default_factory=_code_version)
    created: str = dataclasses.field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    )
    weights_dtype: str = "float16"
    schema_version: str = BUNDLE_SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", tuple(str(b) for b in self.bands))
        if self.weights_dtype not in ("float16", "float32"):
            raise MadnessBundleError(f"weights_dtype must be float16 or float32, not {self.weights_dtype!r}.")
        if len(set(self.bands)) != len(self.bands) or not self.bands:
            raise MadnessBundleError(f"Bundle bands must be distinct and non-empty: {self.bands}.")

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["bands"] = list(self.bands)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BundleMetadata":
        version = data.get("schema_version")
        if version != BUNDLE_SCHEMA_VERSION:
            raise MadnessBundleError(
                f"Bundle schema version {version!r} is not supported by this meas_madness "
                f"({BUNDLE_SCHEMA_VERSION}); upgrade meas_madness or re-export the bundle."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise MadnessBundleError(f"Unknown bundle metadata fields {sorted(unknown)}.")
        try:
            return cls(**data)
        except TypeError as exc:
            raise MadnessBundleError(f"Incomplete bundle metadata: {exc}") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weight_arrays(model: keras.Model, dtype: str) -> list[tuple[str, np.ndarray]]:
    return [
        (f"{i:04d}|{v.path}", np.asarray(keras.ops.convert_to_numpy(v.value)).astype(dtype))
        for i, v in enumerate(model.weights)
    ]


def _write_shards(directory: Path, network: str, arrays: list[tuple[str, np.ndarray]]) -> list[str]:
    shards: list[list[tuple[str, np.ndarray]]] = [[]]
    size = 0
    for key, array in arrays:
        if shards[-1] and size + array.nbytes > MAX_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((key, array))
        size += array.nbytes
    names = []
    for k, shard in enumerate(shards):
        name = f"{network}.weights.{k:03d}.npz"
        buffer = io.BytesIO()
        np.savez(buffer, **dict(shard))
        (directory / name).write_bytes(buffer.getvalue())
        names.append(name)
    return names


class ModelBundle:
    """A trained MADNESS model: decoder, flow prior, VAE-deblender encoder, and metadata.

    Parameters
    ----------
    metadata : `BundleMetadata`
        What the weights expect and how they were made.
    decoder : `lsst.meas.madness.networks.Decoder`
        VAE decoder.
    flow : `lsst.meas.madness.networks.MaskedAutoregressiveFlow`
        Latent prior.
    deblender_encoder : `lsst.meas.madness.networks.Encoder`
        Encoder retrained on blends, used to initialise the MAP latents.
    encoder : `lsst.meas.madness.networks.Encoder`, optional
        The VAE's encoder on isolated galaxies (not needed to deblend).
    """

    def __init__(
        self,
        metadata: BundleMetadata,
        decoder: Decoder,
        flow: MaskedAutoregressiveFlow,
        deblender_encoder: Encoder,
        encoder: Encoder | None = None,
    ):
        self.metadata = metadata
        self.decoder = decoder
        self.flow = flow
        self.deblender_encoder = deblender_encoder
        self.encoder = encoder
        self._check_consistency()

    @property
    def networks(self) -> dict[str, keras.Model]:
        """The networks present, by bundle name."""
        nets = {"decoder": self.decoder, "flow": self.flow, "deblender_encoder": self.deblender_encoder}
        if self.encoder is not None:
            nets["encoder"] = self.encoder
        return nets

    def _check_consistency(self) -> None:
        meta = self.metadata
        for name, net in self.networks.items():
            if net.latent_dim != meta.latent_dim:
                raise MadnessBundleError(
                    f"{name} has latent_dim {net.latent_dim}, metadata says {meta.latent_dim}."
                )
            if name != "flow":
                if net.num_bands != len(meta.bands):
                    raise MadnessBundleError(
                        f"{name} has {net.num_bands} bands, metadata lists {len(meta.bands)}: {meta.bands}."
                    )
                if net.stamp_size != meta.stamp_size:
                    raise MadnessBundleError(
                        f"{name} works on {net.stamp_size}px stamps, metadata says {meta.stamp_size}."
                    )

    # --- writing ---------------------------------------------------------------------------

    def save(
        self, path: str | os.PathLike, *, overwrite: bool = False, share_with: str | None = None
    ) -> Path:
        """Write the bundle to directory ``path`` atomically.

        Parameters
        ----------
        path : path-like
            Target directory; must not exist unless ``overwrite``.
        overwrite : `bool`
            Replace an existing bundle.
        share_with : `str`, optional
            Another bundle, ``"packaged:<name>"`` or a path relative to ``path``: each network
            whose architecture and stored weights (in this bundle's ``weights_dtype``) are
            identical to that bundle's is not written but referred to by sha256; the others are
            written as usual. The written bundle then loads only while that bundle is present
            and unchanged.

        Returns
        -------
        path : `pathlib.Path`
            The written directory.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise MadnessBundleError(f"{path} exists; pass overwrite=True to replace it.")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            files: dict[str, dict] = {}
            architectures = {}
            shared = _SharedBundle(path, share_with) if share_with is not None else None
            for name, net in self.networks.items():
                self._ensure_built(net)
                architectures[name] = {"class": type(net).__name__, "config": net.get_config()}
                arrays = _weight_arrays(net, self.metadata.weights_dtype)
                entries = shared.entries(name, architectures[name], arrays) if shared is not None else None
                if entries is not None:
                    files.update(entries)
                    continue
                for fname in _write_shards(tmp, name, arrays):
                    files[fname] = {
                        "network": name,
                        "bytes": (tmp / fname).stat().st_size,
                        "sha256": _sha256(tmp / fname),
                    }
            document = {
                "metadata": self.metadata.as_dict(),
                "architectures": architectures,
                "files": files,
            }
            (tmp / METADATA_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
            if path.exists():
                backup = path.with_name(f".{path.name}.old")
                shutil.rmtree(backup, ignore_errors=True)
                path.rename(backup)
                tmp.rename(path)
                shutil.rmtree(backup, ignore_errors=True)
            else:
                tmp.rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    @staticmethod
    def _ensure_built(net: keras.Model) -> None:
        if isinstance(net, MaskedAutoregressiveFlow) and not net.built:
            net.build()

    # --- reading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "ModelBundle":
        """Read and verify a bundle directory.

        Parameters
        ----------
        path : path-like, optional
            Bundle directory; `None` for the packaged default LSST bundle.

        Raises
        ------
        MadnessBundleError
            Missing directory or file, size or checksum mismatch (truncated or tampered),
            unknown schema version, weights that do not fit the architecture, inconsistent
            metadata.
        """
        if path is None:
            path = default_bundle_path()
            if not (path / METADATA_FILE).exists():
                raise MadnessBundleError(
                    "No packaged default bundle is installed yet (it comes with the training work). "
                    "Pass the path of a bundle written by ModelBundle.save or `madness train`."
                )
        path = Path(path)
        meta_file = path / METADATA_FILE
        if not meta_file.is_file():
            raise MadnessBundleError(f"{path} is not a model bundle: {METADATA_FILE} is missing.")
        try:
            document = json.loads(meta_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MadnessBundleError(f"Cannot read {meta_file}: {exc}") from exc
        metadata = BundleMetadata.from_dict(document.get("metadata", {}))
        files = document.get("files", {})
        architectures = document.get("architectures", {})
        for name in REQUIRED_NETWORKS:
            if name not in architectures:
                raise MadnessBundleError(f"Bundle {path} lacks the required network {name!r}.")

        locations = {}
        for fname, info in files.items():
            fpath = cls._file_location(path, fname, info)
            size = fpath.stat().st_size
            if size != info["bytes"]:
                raise MadnessBundleError(
                    f"Bundle file {fpath} has {size} bytes, {info['bytes']} recorded: truncated or replaced."
                    + cls._shared_hint(info)
                )
            if _sha256(fpath) != info["sha256"]:
                raise MadnessBundleError(
                    f"Bundle file {fpath} fails its sha256 check: it was modified." + cls._shared_hint(info)
                )
            locations[fname] = fpath

        networks = {}
        for name, arch in architectures.items():
            net_cls = _NETWORK_CLASSES.get(name)
            if net_cls is None or arch.get("class") != net_cls.__name__:
                raise MadnessBundleError(f"Unknown network {name!r} of class {arch.get('class')!r} in {path}.")
            net = net_cls.from_config(arch["config"])
            cls._ensure_built(net)
            arrays: dict[str, np.ndarray] = {}
            for fname in sorted(f for f, info in files.items() if info["network"] == name):
                with np.load(locations[fname]) as shard:
                    arrays.update({k: shard[k] for k in shard.files})
            cls._assign(net, arrays, name)
            networks[name] = net
        return cls(metadata, **networks)

    @staticmethod
    def _file_location(path: Path, fname: str, info: Mapping[str, Any]) -> Path:
        shared_from = info.get("shared_from")
        if shared_from is None:
            fpath = path / fname
            if not fpath.is_file():
                raise MadnessBundleError(f"Bundle file {fpath} is missing.")
            return fpath
        fpath = _shared_directory(path, shared_from) / info.get("file", fname)
        if not fpath.is_file():
            raise MadnessBundleError(
                f"Bundle {path} shares {info['network']!r} with {shared_from!r}, but {fpath} is missing."
            )
        return fpath

    @staticmethod
    def _shared_hint(info: Mapping[str, Any]) -> str:
        if info.get("shared_from") is None:
            return ""
        return (
            f" The file is shared with {info['shared_from']!r}, which changed since this bundle was "
            "written: load this bundle with the other one as it was (e.g. the package version that "
            "wrote it), or save a full copy (ModelBundle.save without share_with) while both match."
        )

    @staticmethod
    def _assign(net: keras.Model, arrays: dict[str, np.ndarray], name: str) -> None:
        weights = net.weights
        if len(arrays) != len(weights):
            raise MadnessBundleError(
                f"{name}: {len(arrays)} stored arrays for {len(weights)} weights of the architecture."
            )
        by_index = {int(k.split("|", 1)[0]): v for k, v in arrays.items()}
        for i, variable in enumerate(weights):
            if i not in by_index:
                raise MadnessBundleError(f"{name}: weight {i} ({variable.path}) is missing.")
            value = by_index[i]
            if tuple(value.shape) != tuple(variable.shape):
                raise MadnessBundleError(
                    f"{name}: weight {variable.path} has shape {value.shape}, "
                    f"the architecture needs {tuple(variable.shape)}."
                )
            variable.assign(value.astype(variable.dtype))


class _SharedBundle:
    """The bundle a new bundle shares identical networks with (`ModelBundle.save`)."""

    def __init__(self, target: Path, share_with: str):
        self.share_with = share_with
        self.directory = _shared_directory(target, share_with)
        meta_file = self.directory / METADATA_FILE
        if not meta_file.is_file():
            raise MadnessBundleError(f"Cannot share with {share_with!r}: {meta_file} is missing.")
        document = json.loads(meta_file.read_text())
        self.architectures = document.get("architectures", {})
        self.files = document.get("files", {})

    def entries(self, network: str, architecture: Mapping[str, Any],
                arrays: list[tuple[str, np.ndarray]]) -> dict[str, dict] | None:
        """File entries referring to the shared bundle, or `None` where the network differs."""
        if self.architectures.get(network) != json.loads(json.dumps(architecture)):
            return None
        names = sorted(f for f, info in self.files.items() if info["network"] == network)
        stored: dict[str, np.ndarray] = {}
        for fname in names:
            info = self.files[fname]
            if info.get("shared_from") is not None:
                return None  # no chains: a bundle refers only to files that are really there
            with np.load(self.directory / fname) as shard:
                stored.update({k: shard[k] for k in shard.files})
        if set(stored) != {key for key, _ in arrays}:
            return None
        for key, array in arrays:
            if stored[key].dtype != array.dtype or not np.array_equal(stored[key], array):
                return None
        return {
            fname: {
                "network": network,
                "bytes": self.files[fname]["bytes"],
                "sha256": self.files[fname]["sha256"],
                "shared_from": self.share_with,
                "file": fname,
            }
            for fname in names
        }
