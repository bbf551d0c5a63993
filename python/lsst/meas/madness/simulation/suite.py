"""The whole set of section 2 in one call: catalogue -> SNR cut -> splits -> datasets.

Directory written by `simulate_suite` (and ``madness simulate datasets``)::

    catalog.fits            the CatSim-format catalogue after the SNR cut, with ``snr_r``,
                            ``split`` (which subset each galaxy belongs to) and ``catalog_row``
                            (its row here, carried into every dataset's catalogue)
    suite.json              the request, split sizes, per-dataset sizes and throughput
    isolated-train/ ...     one dataset directory per (kind, split), see `simulate_dataset`
    examples.png            a look at a few stamps of each dataset

Training and validation datasets are made from the ``train`` and ``validation`` galaxies (both
IsolatedSims and BlendedSims, as in the paper); TestFields from the ``test`` galaxies only.
"""

from __future__ import annotations

__all__ = ["DEFAULT_KINDS", "plot_examples", "simulate_suite"]

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import MadnessValueError
from .datasets import DATASET_KINDS, catalog_fingerprint, simulate_dataset
from .shards import SimulatedDataset

DEFAULT_KINDS = ("isolated", "blended", "testfields")
# The paper's split: of ~317k galaxies after the SNR cut, 200k (63%) for training and
# validation (75/25), the rest for test.
PAPER_FRACTIONS = {"train": 0.75 * 0.63, "validation": 0.25 * 0.63, "test": 0.37}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def simulate_suite(output, *, catalog=None, area_deg2: float | None = None, seed: int = 0,
                   min_snr: float = 10.0, fractions: dict | None = None,
                   kinds: Sequence[str] = DEFAULT_KINDS, n_train: int | None = None,
                   n_validation: int | None = None, n_test_fields: int | None = None,
                   n_train_blended: int | None = None, configs: dict | None = None, workers: int = 1,
                   progress: bool = True,
                   catalog_source: str = "") -> dict[str, SimulatedDataset]:
    """Make the paper's datasets from a catalogue (given, or generated with SkyPy).

    Parameters
    ----------
    output : `str` or `pathlib.Path`
        Directory of the suite (created; rerunning the same request resumes).
    catalog : `astropy.table.Table`, optional
        CatSim-format catalogue (before the SNR cut). Exclusive with ``area_deg2``.
    area_deg2 : `float`, optional
        Generate the catalogue with `generate_catsim_catalog` over this area instead.
    seed : `int`
        Seed of the catalogue generation, the split and every dataset.
    min_snr : `float`
        Cut on the appendix-A SNR in r (paper: 10).
    fractions : `dict`, optional
        ``{"train": f, "validation": f, "test": f}``; the paper's 47/16/37% by default.
    kinds : sequence of `str`
        Which datasets to make: ``isolated``, ``blended``, ``testfields``.
    n_train, n_validation : `int`, optional
        Caps on the stamps of each training / validation dataset (default: every galaxy).
    n_test_fields : `int`, optional
        TestFields to make (default: as many as the test galaxies fill).
    n_train_blended : `int`, optional
        Cap on the BlendedSims training stamps (default: ``n_train``). The VAE-deblender is one
        encoder trained for a few epochs; the VAE's decoder is what needs the paper's 150k
        galaxies, so a suite can hold fewer blends than isolated galaxies.
    configs : `dict`, optional
        Per-kind dataset configs (`IsolatedSimsConfig` etc.); the paper's by default.
    workers : `int`
        Worker processes for the drawing.
    progress : `bool`
        Progress bars.
    catalog_source : `str`
        Description of where ``catalog`` came from, for the record.

    Returns
    -------
    datasets : `dict` [`str`, `SimulatedDataset`]
        Keyed ``"<kind>-<split>"``.
    """
    from astropy.table import Table

    from .catalog import apply_snr_cut, split_catalog, validate_catsim_table

    unknown = [k for k in kinds if k not in DATASET_KINDS]
    if unknown:
        raise MadnessValueError(f"Unknown dataset kinds {unknown}; choose from {sorted(DATASET_KINDS)}.")
    if (catalog is None) == (area_deg2 is None):
        raise MadnessValueError("Give either a catalogue or an area to generate one over, not both.")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    configs = dict(configs or {})
    fractions = dict(PAPER_FRACTIONS if fractions is None else fractions)
    start = time.perf_counter()
    if catalog is None:
        from .skypy_catalog import generate_catsim_catalog

        catalog = generate_catsim_catalog(area_deg2, seed)
        catalog_source = f"generate_catsim_catalog(area_deg2={area_deg2}, seed={seed})"
    else:
        validate_catsim_table(catalog)
    n_input = len(catalog)
    cut = apply_snr_cut(catalog, min_snr)
    if len(cut) == 0:
        raise MadnessValueError(f"No galaxy of the catalogue passes SNR >= {min_snr} in r.")
    # Split row positions (the split depends only on the row count and the seed), then mark
    # each galaxy's subset in the saved catalogue.
    positions = split_catalog(Table({"row": np.arange(len(cut))}), fractions, seed=seed)
    split_column = np.empty(len(cut), dtype="U10")
    for name, part in positions.items():
        split_column[np.asarray(part["row"])] = name
    cut["split"] = split_column
    cut["catalog_row"] = np.arange(len(cut), dtype=np.int64)  # row in catalog.fits, across splits
    subsets = {name: cut[split_column == name] for name in positions}
    # The saved catalogue is what every dataset's catalog_index refers to, per split.
    catalog_path = output / "catalog.fits"
    tmp = output / "catalog.fits.tmp"
    cut.write(tmp, format="fits", overwrite=True)
    os.replace(tmp, catalog_path)

    caps = {"train": n_train, "validation": n_validation}
    datasets = {}
    summary = {"request": {"seed": seed, "min_snr": min_snr, "fractions": fractions, "kinds": list(kinds),
                           "n_train": n_train, "n_validation": n_validation, "n_test_fields": n_test_fields,
                           "n_train_blended": n_train_blended,
                           "area_deg2": area_deg2, "catalog_source": catalog_source},
               "catalog": {"n_input": n_input, "n_after_snr_cut": len(cut),
                           "fingerprint": catalog_fingerprint(cut),
                           "splits": {k: len(v) for k, v in subsets.items()}},
               "datasets": {}}
    for kind in kinds:
        splits = ["test"] if kind == "testfields" else ["train", "validation"]
        for split in splits:
            if split not in subsets or len(subsets[split]) == 0:
                raise MadnessValueError(f"The {split!r} split is empty; {kind} needs it (fractions {fractions}).")
            table = subsets[split]
            n = n_test_fields if kind == "testfields" else caps.get(split)
            if kind == "blended" and split == "train" and n_train_blended is not None:
                n = n_train_blended
            if n is not None and kind != "testfields":
                n = min(n, len(table))
            name = f"{kind}-{split}"
            data = simulate_dataset(kind, table, output / name, split=split, seed=seed, n=n,
                                    config=configs.get(kind), workers=workers, progress=progress,
                                    catalog_source=f"{catalog_path.name}[split == {split!r}]")
            datasets[name] = data
            info = data.manifest.info
            summary["datasets"][name] = {"items": len(data), "shards": len(data.manifest.shards),
                                         "bytes": info.get("bytes"),
                                         "bytes_per_10k_items": info.get("bytes_per_10k_items"),
                                         "last_run": info.get("last_run")}
    summary["seconds"] = round(time.perf_counter() - start, 2)
    # A suite made in several calls (e.g. the isolated galaxies first, the blends later) keeps
    # the record of the datasets an earlier call made from the same catalogue.
    previous = output / "suite.json"
    if previous.exists():
        old = json.loads(previous.read_text())
        if old.get("catalog", {}).get("fingerprint") == summary["catalog"]["fingerprint"]:
            summary["datasets"] = {**old.get("datasets", {}), **summary["datasets"]}
            summary["earlier_requests"] = old.get("earlier_requests", []) + [old["request"]]
    _write_json(output / "suite.json", summary)
    plot_examples(datasets, output / "examples.png")
    return datasets


def _asinh_rgb(image: np.ndarray, bands=(3, 2, 1)) -> np.ndarray:
    """i, r, g as RGB with an asinh stretch (Lupton et al. style), for display only."""
    rgb = np.stack([image[b] for b in bands], axis=-1).astype(np.float64)
    scale = max(np.percentile(np.abs(rgb), 99.5), 1e-9)
    return np.clip(np.arcsinh(rgb / (0.1 * scale)) / np.arcsinh(10.0), 0, 1)


def plot_examples(datasets: dict[str, SimulatedDataset], path, n: int = 4) -> Path | None:
    """Figure of a few noisy stamps and their truths per dataset (paper fig. 2 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for name, data in datasets.items():
        if len(data) == 0:
            continue
        arrays, catalog = next(data.iter_shards())
        if data.kind == "testfields":
            rows.append((name, [arrays["fields"][0], arrays["noiseless"][0]], ["noisy field", "noiseless"],
                         (catalog["x_peak"][catalog["field_id"] == catalog["field_id"][0]],
                          catalog["y_peak"][catalog["field_id"] == catalog["field_id"][0]])))
        else:
            k = min(n, len(arrays["images"]))
            pics, titles = [], []
            for i in range(k):
                pics += [arrays["images"][i], arrays["truth"][i]]
                titles += [f"#{i} noisy", f"#{i} truth"]
            rows.append((name, pics, titles, None))
    if not rows:
        return None
    ncol = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.8 * ncol, 1.9 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (name, pics, titles, peaks) in enumerate(rows):
        for c, (pic, title) in enumerate(zip(pics, titles)):
            axes[r, c].imshow(_asinh_rgb(pic), origin="lower")
            axes[r, c].set_title(title, fontsize=7)
            if peaks is not None:
                axes[r, c].plot(peaks[0], peaks[1], "x", color="red", ms=3)
        axes[r, 0].text(-0.1, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, ha="right",
                        va="center", fontsize=8)
    fig.suptitle("Simulated LSST 10-year ugrizy data (i, r, g as RGB)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
