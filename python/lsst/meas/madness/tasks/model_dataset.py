"""MADNESS model bundles as butler datasets (the ``model`` prerequisite input of the deblender).

A bundle (`lsst.meas.madness.ModelBundle`, a directory: ``bundle.json`` and npz shards, see
``doc/bundle.md``) is stored as one zip file of that directory's files, with storage class
``MadnessModelBundle`` and dimensions ``()``, as meas_transiNet stores its model packages
(``NNModelPackagePayload``, a zip, read by a `~lsst.daf.butler.FormatterV2`). Reading unpacks
the zip to a temporary directory and loads it with `ModelBundle.load`, which checks every file's
size and sha256 against ``bundle.json``; so a damaged file in the datastore is refused.

Where the definitions come from:

- the storage class is registered with `lsst.daf.butler.StorageClassFactory` when this module
  is imported (`register_model_storage_class`), which ``import lsst.meas.madness.tasks`` and so
  every pipetask run of `MadnessDeblendTask` does;
- `put_model` ingests the zip naming `ModelBundleFormatter` explicitly, so any repository takes
  a model without configuration (the datastore records the formatter of each file, which is
  what reads it back);
- ``data/butler/madness_model.yaml`` (`model_butler_config`) holds both for a repository config
  (``Butler.makeRepo(root, config=model_butler_config())``): then `butler.put` works too and
  processes that never import this package know the storage class.
"""

from __future__ import annotations

__all__ = [
    "MODEL_DATASET_TYPE",
    "MODEL_STORAGE_CLASS",
    "ModelBundleFormatter",
    "model_butler_config",
    "model_butler_config_path",
    "put_model",
    "read_bundle_zip",
    "register_model_storage_class",
    "write_bundle_zip",
]

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from lsst.daf.butler import FormatterV2, StorageClass, StorageClassFactory
from lsst.resources import ResourcePath

from ..errors import MadnessBundleError
from ..io.bundle import METADATA_FILE, ModelBundle

MODEL_STORAGE_CLASS = "MadnessModelBundle"
MODEL_DATASET_TYPE = "madnessModel"
_PYTYPE = "lsst.meas.madness.io.bundle.ModelBundle"


def model_butler_config_path() -> Path:
    """Path of the packaged butler config (storage class and formatter of model bundles)."""
    return Path(__file__).resolve().parent.parent / "data" / "butler" / "madness_model.yaml"


def model_butler_config():
    """The packaged butler config as a `lsst.daf.butler.Config`, to seed a new repository."""
    from lsst.daf.butler import Config

    return Config(str(model_butler_config_path()))


def register_model_storage_class() -> StorageClass:
    """Define storage class ``MadnessModelBundle`` in this process (idempotent)."""
    factory = StorageClassFactory()
    try:
        return factory.getStorageClass(MODEL_STORAGE_CLASS)
    except KeyError:
        # Built as a config definition is (StorageClassFactory.addFromConfig), so that a repository
        # config holding data/butler/madness_model.yaml defines the same storage class.
        storage_class = StorageClass(
            name=MODEL_STORAGE_CLASS,
            pytype=_PYTYPE,
            components={},
            derivedComponents={},
            parameters=set(),
            delegate=None,
            converters={},
        )
        factory.registerStorageClass(storage_class)
        return storage_class


def write_bundle_zip(bundle: ModelBundle | str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write a bundle as one zip file of its directory's files.

    Parameters
    ----------
    bundle : `ModelBundle` or path-like
        An in-memory bundle (saved to a temporary directory first) or a bundle directory, whose
        files go in byte for byte (it is verified with `ModelBundle.load` first).
    path : path-like
        The zip file to write.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="madness-bundle-") as tmp:
        if isinstance(bundle, ModelBundle):
            directory = bundle.save(Path(tmp) / "bundle")
        else:
            directory = Path(bundle)
            ModelBundle.load(directory)  # refuse a damaged bundle before it is stored
        names = sorted(p.name for p in directory.iterdir() if p.is_file())
        if METADATA_FILE not in names:
            raise MadnessBundleError(f"{directory} is not a model bundle: {METADATA_FILE} is missing.")
        # Stored, not deflated: npz weights barely compress and the members stay the bundle's bytes.
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            for name in names:
                archive.write(directory / name, arcname=name)
    return path


def read_bundle_zip(path: str | os.PathLike) -> ModelBundle:
    """Load a bundle from a zip written by `write_bundle_zip` (sizes and sha256 checked)."""
    try:
        with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory(prefix="madness-bundle-") as tmp:
            for info in archive.infolist():
                name = info.filename
                if info.is_dir() or "/" in name or "\\" in name or name in ("", ".", ".."):
                    raise MadnessBundleError(f"Unexpected member {name!r} in model bundle zip {path}.")
                # Member CRCs are checked as they are read.
                (Path(tmp) / name).write_bytes(archive.read(info))
            return ModelBundle.load(tmp)
    except zipfile.BadZipFile as exc:
        raise MadnessBundleError(f"{path} is not a readable model bundle zip: {exc}") from exc


class ModelBundleFormatter(FormatterV2):
    """Read and write `ModelBundle` datasets as zip files (storage class ``MadnessModelBundle``)."""

    default_extension = ".zip"
    supported_extensions = frozenset({".zip"})
    can_read_from_local_file = True

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        return read_bundle_zip(path)

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        if not isinstance(in_memory_dataset, ModelBundle):
            raise TypeError(f"Expected a ModelBundle, got {type(in_memory_dataset).__name__}.")
        write_bundle_zip(in_memory_dataset, uri.ospath)


def put_model(
    butler,
    bundle: ModelBundle | str | os.PathLike,
    collection: str,
    name: str = MODEL_DATASET_TYPE,
):
    """Store a model bundle in a butler repository as dataset ``name`` (dimensions ``()``).

    The dataset type is registered if needed and ``collection`` is created as a RUN collection.
    The bundle is verified, zipped and ingested (copied) with `ModelBundleFormatter`, so the
    repository needs no formatter configuration.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        A writeable butler.
    bundle : `ModelBundle` or path-like
        The bundle, or its directory.
    collection : `str`
        RUN collection to hold it (one model per collection and dataset type: a dataset with no
        dimensions is unique in its run). Runs of the deblender then take ``-i <collection>``.
    name : `str`
        Dataset type name; the deblender's ``connections.modelName`` (default ``madnessModel``).

    Returns
    -------
    ref : `lsst.daf.butler.DatasetRef`
        The stored dataset.
    """
    from lsst.daf.butler import DatasetRef, DatasetType, FileDataset

    register_model_storage_class()
    dataset_type = DatasetType(name, (), MODEL_STORAGE_CLASS, universe=butler.dimensions)
    butler.registry.registerDatasetType(dataset_type)
    butler.registry.registerRun(collection)
    ref = DatasetRef(dataset_type, {}, run=collection)
    with tempfile.TemporaryDirectory(prefix="madness-bundle-") as tmp:
        archive = write_bundle_zip(bundle, Path(tmp) / f"{name}.zip")
        dataset = FileDataset(path=str(archive), refs=[ref], formatter=ModelBundleFormatter)
        butler.ingest(dataset, transfer="copy")
    return ref


register_model_storage_class()
