"""Footprints and heavy footprints as flat astropy tables that round-trip through the butler.

lsst.images has no Footprint, HeavyFootprint or peak types, and the butler's ``ArrowAstropy``
storage class (parquet) stores only fixed-shape columns, so a footprint of any size cannot be one
row. The pip-only I/O path therefore stores footprints in the long ("one row per span" or "one row
per pixel") form, keyed by the source ``id``, next to a catalog with one row per source:

Span table (footprints; ``{outputCoaddName}Coadd_madnessDet_spans``)
    One row per span, the same spans afw's ``SpanSet`` holds. A footprint is the union of the
    spans sharing its ``id``; rows are sorted by ``id``, then ``y``, then ``x0``.

    ======  =======  ===========================================================
    column  type     meaning
    ======  =======  ===========================================================
    id      int64    id of the source (catalog row) the span belongs to
    y       int32    row of the span, pixels in the tract frame
    x0      int32    first column of the span (inclusive), tract frame
    x1      int32    last column of the span (inclusive, as afw ``Span``)
    ======  =======  ===========================================================

Heavy-footprint table (``{outputCoaddName}Coadd_madnessDeblendedFlux``, one per band)
    One row per pixel of each footprint, with its value in that band. The pixels of one ``id``
    are its footprint (the same in every band); rows are sorted by ``id``, then ``y``, then ``x``,
    i.e. in span order.

    ======  =======  ===========================================================
    column  type     meaning
    ======  =======  ===========================================================
    id      int64    id of the source
    y       int32    pixel row, tract frame
    x       int32    pixel column, tract frame
    flux    float32  pixel value in the band, image units (the coadd's, e.g. nJy)
    ======  =======  ===========================================================

Both tables carry ``meta["madness_format"]`` (``"spans"`` or ``"heavy"``) and
``meta["madness_format_version"]``; readers check the columns, and the meta when present (the
butler drops ``table.meta`` on read unless asked with ``parameters={"strip_astropy_meta_yaml":
False}``; column descriptions and units always survive).

Coordinates: like afw, footprints live in the tract (parent image) pixel frame, ``x`` along
columns and ``y`` along rows; an lsst.images ``Box`` of the coadd gives the frame's offset
(``bbox.y.start``, ``bbox.x.start``). Boxes here are ``(y0, x0, y1, x1)`` with exclusive ends,
as in the engine.
"""

from __future__ import annotations

__all__ = [
    "FOOTPRINT_FORMAT_VERSION",
    "Footprint",
    "footprints_to_table",
    "footprints_from_table",
    "heavy_footprints_to_table",
    "heavy_footprints_from_table",
]

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
from astropy.table import Table

from ..errors import MadnessValueError

FOOTPRINT_FORMAT_VERSION = "1.0.0"

_SPAN_DOCS = {
    "id": "Id of the source (catalog row) the span belongs to.",
    "y": "Row of the span, pixels, tract frame.",
    "x0": "First column of the span (inclusive), pixels, tract frame.",
    "x1": "Last column of the span (inclusive, as afw Span), pixels, tract frame.",
}
_HEAVY_DOCS = {
    "id": "Id of the source the pixel belongs to.",
    "y": "Pixel row, tract frame.",
    "x": "Pixel column, tract frame.",
    "flux": "Pixel value of the source in this band, image units.",
}


@dataclasses.dataclass(frozen=True)
class Footprint:
    """A set of pixels stored as spans (runs of pixels along a row), as afw's ``SpanSet``.

    Parameters
    ----------
    spans : `numpy.ndarray`
        ``(n, 3)`` int64 ``(y, x0, x1)`` rows, ``x1`` inclusive, sorted by ``y`` then ``x0``,
        non-overlapping; tract-frame pixels. Build footprints with `from_mask` rather than by
        hand.

    Examples
    --------
    >>> mask = np.array([[0, 1, 1], [1, 0, 1]], dtype=bool)
    >>> fp = Footprint.from_mask(mask, yx0=(10, 20))
    >>> fp.spans.tolist()
    [[10, 21, 22], [11, 20, 20], [11, 22, 22]]
    >>> fp.area, fp.bbox
    (4, (10, 20, 12, 23))
    >>> fp.contains(np.array([11, 11]), np.array([21, 22])).tolist()
    [False, True]
    """

    spans: np.ndarray

    def __post_init__(self) -> None:
        spans = np.asarray(self.spans, dtype=np.int64).reshape(-1, 3)
        if (spans[:, 2] < spans[:, 1]).any():
            raise MadnessValueError("Spans must have x1 >= x0 (x1 is inclusive).")
        object.__setattr__(self, "spans", spans)

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def from_mask(cls, mask: np.ndarray, yx0: tuple[int, int] = (0, 0)) -> Footprint:
        """Footprint of the `True` pixels of a ``(h, w)`` boolean mask whose first pixel is ``yx0``."""
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2:
            raise MadnessValueError(f"mask must be 2-d; got shape {mask.shape}.")
        padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
        padded[:, 1:-1] = mask
        diff = np.diff(padded, axis=1)
        starts_y, starts_x = np.nonzero(diff == 1)
        ends_y, ends_x = np.nonzero(diff == -1)
        # np.nonzero returns row-major order: starts and ends pair up run by run.
        spans = np.stack([starts_y + yx0[0], starts_x + yx0[1], ends_x - 1 + yx0[1]], axis=1)
        return cls(spans)

    @classmethod
    def from_pixels(cls, y: np.ndarray, x: np.ndarray) -> Footprint:
        """Footprint of a set of ``(y, x)`` pixels (duplicates allowed)."""
        y = np.asarray(y, dtype=np.int64)
        x = np.asarray(x, dtype=np.int64)
        if y.size == 0:
            return cls(np.zeros((0, 3), np.int64))
        y0, x0 = int(y.min()), int(x.min())
        mask = np.zeros((int(y.max()) - y0 + 1, int(x.max()) - x0 + 1), dtype=bool)
        mask[y - y0, x - x0] = True
        return cls.from_mask(mask, (y0, x0))

    # --- properties ------------------------------------------------------------------------

    @property
    def area(self) -> int:
        """Number of pixels."""
        return int((self.spans[:, 2] - self.spans[:, 1] + 1).sum())

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` bounding box, ends exclusive; all zeros when empty."""
        if len(self.spans) == 0:
            return (0, 0, 0, 0)
        return (
            int(self.spans[:, 0].min()),
            int(self.spans[:, 1].min()),
            int(self.spans[:, 0].max()) + 1,
            int(self.spans[:, 2].max()) + 1,
        )

    def pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """``(y, x)`` int64 arrays of every pixel, in span order."""
        lengths = self.spans[:, 2] - self.spans[:, 1] + 1
        y = np.repeat(self.spans[:, 0], lengths)
        starts = np.repeat(self.spans[:, 1], lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return y, starts + offsets

    def to_mask(self, bbox: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Boolean ``(y1 - y0, x1 - x0)`` mask of the footprint on ``bbox`` (its own by default).

        Pixels outside ``bbox`` are dropped.
        """
        y0, x0, y1, x1 = self.bbox if bbox is None else bbox
        mask = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
        y, x = self.pixels()
        keep = (y >= y0) & (y < y1) & (x >= x0) & (x < x1)
        mask[y[keep] - y0, x[keep] - x0] = True
        return mask

    def contains(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Whether each ``(y, x)`` pixel lies in the footprint (bool array)."""
        y = np.atleast_1d(np.asarray(y, dtype=np.int64))
        x = np.atleast_1d(np.asarray(x, dtype=np.int64))
        y0, x0, y1, x1 = self.bbox
        inside = (y >= y0) & (y < y1) & (x >= x0) & (x < x1)
        out = np.zeros(y.shape, dtype=bool)
        if inside.any():
            out[inside] = self.to_mask()[y[inside] - y0, x[inside] - x0]
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Footprint):
            return NotImplemented
        return np.array_equal(self.spans, other.spans)

    def __hash__(self) -> int:
        return hash(self.spans.tobytes())


def _group_rows(ids: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
    """Yield ``(id, row indices)`` for each distinct id, rows in table order."""
    order = np.argsort(ids, kind="stable")
    unique, starts = np.unique(ids[order], return_index=True)
    for k, source_id in enumerate(unique):
        stop = starts[k + 1] if k + 1 < len(starts) else len(order)
        yield int(source_id), order[starts[k] : stop]


_REQUIRED = {"spans": ("id", "y", "x0", "x1"), "heavy": ("id", "y", "x", "flux")}


def _check_format(table: Table, expected: str) -> None:
    missing = [c for c in _REQUIRED[expected] if c not in table.colnames]
    fmt = table.meta.get("madness_format")
    if missing or fmt not in (None, expected):
        raise MadnessValueError(
            f"Table is not a MADNESS {expected!r} table (missing columns {missing}, "
            f"meta madness_format={fmt!r})."
        )
    # The butler strips table.meta on read by default (ArrowAstropy ``strip_astropy_meta_yaml``);
    # the version is checked when it is there.
    version = table.meta.get("madness_format_version")
    if version is not None and str(version).split(".")[0] != FOOTPRINT_FORMAT_VERSION.split(".")[0]:
        raise MadnessValueError(
            f"{expected!r} table has format version {version!r}; this code reads {FOOTPRINT_FORMAT_VERSION}."
        )


def footprints_to_table(footprints: Mapping[int, Footprint]) -> Table:
    """One-row-per-span table of ``{id: Footprint}`` (see the module docstring)."""
    ids = sorted(footprints)
    counts = [len(footprints[i].spans) for i in ids]
    spans = np.concatenate([footprints[i].spans for i in ids]) if ids else np.zeros((0, 3), np.int64)
    table = Table(
        {
            "id": np.repeat(np.asarray(ids, dtype=np.int64), counts),
            "y": spans[:, 0].astype(np.int32),
            "x0": spans[:, 1].astype(np.int32),
            "x1": spans[:, 2].astype(np.int32),
        }
    )
    for name, doc in _SPAN_DOCS.items():
        table[name].description = doc
    table["y"].unit = table["x0"].unit = table["x1"].unit = "pix"
    table.meta["madness_format"] = "spans"
    table.meta["madness_format_version"] = FOOTPRINT_FORMAT_VERSION
    return table


def footprints_from_table(table: Table) -> dict[int, Footprint]:
    """``{id: Footprint}`` from a span table written by `footprints_to_table`."""
    _check_format(table, "spans")
    ids = np.asarray(table["id"], dtype=np.int64)
    spans = np.stack([np.asarray(table[c], dtype=np.int64) for c in ("y", "x0", "x1")], axis=1)
    out = {}
    for source_id, rows in _group_rows(ids):
        s = spans[rows]
        out[source_id] = Footprint(s[np.lexsort((s[:, 1], s[:, 0]))])
    return out


def heavy_footprints_to_table(
    footprints: Mapping[int, Footprint], values: Mapping[int, np.ndarray], band: str | None = None
) -> Table:
    """One-row-per-pixel heavy-footprint table of one band.

    Parameters
    ----------
    footprints : mapping [`int`, `Footprint`]
        Footprint of each source id.
    values : mapping [`int`, `numpy.ndarray`]
        ``(area,)`` pixel values of each source in this band, in the order of
        `Footprint.pixels`, image units.
    band : `str`, optional
        Band name, recorded in ``meta["band"]``.
    """
    ids = sorted(footprints)
    ys, xs, fluxes, counts = [], [], [], []
    for i in ids:
        y, x = footprints[i].pixels()
        v = np.asarray(values[i], dtype=np.float32).ravel()
        if v.shape != y.shape:
            raise MadnessValueError(f"Source {i}: {v.size} values for a footprint of {y.size} pixels.")
        ys.append(y)
        xs.append(x)
        fluxes.append(v)
        counts.append(y.size)

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    table = Table(
        {
            "id": np.repeat(np.asarray(ids, dtype=np.int64), counts),
            "y": cat(ys, np.int32),
            "x": cat(xs, np.int32),
            "flux": cat(fluxes, np.float32),
        }
    )
    for name, doc in _HEAVY_DOCS.items():
        table[name].description = doc
    table["y"].unit = table["x"].unit = "pix"
    table.meta["madness_format"] = "heavy"
    table.meta["madness_format_version"] = FOOTPRINT_FORMAT_VERSION
    if band is not None:
        table.meta["band"] = band
    return table


def heavy_footprints_from_table(table: Table) -> dict[int, tuple[Footprint, np.ndarray]]:
    """``{id: (Footprint, values)}`` from a heavy-footprint table; values in span order."""
    _check_format(table, "heavy")
    ids = np.asarray(table["id"], dtype=np.int64)
    y = np.asarray(table["y"], dtype=np.int64)
    x = np.asarray(table["x"], dtype=np.int64)
    flux = np.asarray(table["flux"], dtype=np.float32)
    out = {}
    for source_id, rows in _group_rows(ids):
        order = rows[np.lexsort((x[rows], y[rows]))]
        fp = Footprint.from_pixels(y[order], x[order])
        if fp.area != len(order):
            raise MadnessValueError(f"Source {source_id} has duplicate pixels in the heavy-footprint table.")
        out[source_id] = (fp, flux[order])
    return out
