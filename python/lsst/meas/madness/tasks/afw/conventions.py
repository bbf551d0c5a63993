"""The afw I/O path's conventions as plain data: no afw import here, so they are tested everywhere.

Three things are decided here and only applied in `lsst.meas.madness.tasks.afw.convert`:

* which pixels get zero weight, from an afw-style integer mask and its plane dictionary
  (`bad_pixels`, `coadd_from_arrays`);
* the afw schema fields of the deblended catalog (`afw_fields`): the columns of the pip-only
  catalog (`lsst.meas.madness.tasks.catalogs.deblend_columns`), minus those an afw record holds
  in its ``Footprint`` (area, bounding box) or its minimal schema (``id``, ``parent``), with
  afw field types (``I``, ``L``, ``F``, ``D``, ``Flag``, ``String``, ``ArrayF``);
* how a child footprint's values (span order, one row per band) are laid on the pixel grid that
  afw's ``SpanSet.flatten``/``makeHeavyFootprint`` read (`footprint_image`).
"""

from __future__ import annotations

__all__ = [
    "photocalib_scales",
    "AfwField",
    "AFW_SKIPPED_COLUMNS",
    "CHILD_EXTRA_FIELDS",
    "BAND_FIELDS",
    "PSEUDO_COLUMNS",
    "afw_fields",
    "data_coverage",
    "bad_pixels",
    "coadd_from_arrays",
    "footprint_image",
]

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from ...errors import MadnessUnitError, MadnessValueError
from ...units import ModelUnits, resolve_unit
from ..catalogs import deblend_columns
from ..coadds import MadnessMissingBandError, MultibandCoadd
from ..footprints import Footprint

# Columns of the pip-only catalog that an afw SourceRecord already holds elsewhere: the minimal
# schema (id, parent) and the Footprint (area and bounding box).
AFW_SKIPPED_COLUMNS = (
    "id",
    "parent",
    "footprint_area",
    "bbox_x0",
    "bbox_y0",
    "bbox_width",
    "bbox_height",
)

_AFW_TYPES = {"int32": "I", "int64": "L", "float32": "F", "float64": "D", "bool": "Flag"}


@dataclasses.dataclass(frozen=True)
class AfwField:
    """One field of an afw schema, as ``Schema.addField`` takes it.

    Attributes
    ----------
    name : `str`
        Field name.
    type : `str`
        afw type code: ``I``, ``L``, ``F``, ``D``, ``Flag``, ``String`` or ``ArrayF``.
    doc : `str`
        Field documentation.
    units : `str`
        afw unit string (``"pixel"``, ``"ms"``) or ``""``.
    size : `int`
        Length of ``String`` and ``ArrayF`` fields; 0 otherwise.
    """

    name: str
    type: str
    doc: str
    units: str = ""
    size: int = 0

    def add_to(self, schema):
        """Add the field to an afw ``Schema`` (or return the key of a compatible existing field).

        Parameters
        ----------
        schema : `lsst.afw.table.Schema`
            Schema to extend in place.

        Returns
        -------
        key : `lsst.afw.table.Key`
            The field's key.

        Raises
        ------
        MadnessValueError
            The schema already has a field of that name with another type.
        """
        if self.name in schema.getNames():
            item = schema.find(self.name)
            if item.field.getTypeString() != self.type:
                raise MadnessValueError(
                    f"Input schema already has {self.name!r} of type {item.field.getTypeString()!r}; "
                    f"MADNESS writes it as {self.type!r}."
                )
            return item.key
        kwargs = dict(type=self.type, doc=self.doc, units=self.units)
        if self.size:
            kwargs["size"] = self.size
        return schema.addField(self.name, **kwargs)


# Columns scarlet writes for children that set-primary logic and users look for; MADNESS fills
# them from its parent's row (meas_extensions_scarlet _addDeblendedSource does the same).
CHILD_EXTRA_FIELDS = (
    AfwField("deblend_parentNPeaks", "I", "deblend_nPeaks of this record's parent."),
    AfwField(
        "deblend_blendId",
        "L",
        "Id of the blend the child was deblended in (its parent record, the whole parent being one "
        "blend in MADNESS); 0 for parents.",
    ),
    AfwField("deblend_blendNChild", "I", "Children of the child's blend (its parent's deblend_nChild); 0 for parents."),
    AfwField("deblend_parentNChild", "I", "deblend_nChild of this record's parent."),
)

# Filled per band, in the per-band catalogs only (NaN in the band-merged one). pipe_tasks
# MergeMeasurementsTask reads deblend_dataCoverage of every record to choose the reference band
# (scarlet fills it in MeasureMergedCoaddSourcesTask; we write it with the HeavyFootprints).
BAND_FIELDS = (
    AfwField(
        "deblend_dataCoverage",
        "F",
        "Fraction of the record's footprint pixels in this band that are not NO_DATA (1: complete).",
    ),
    AfwField("deblend_zeroFlux", "Flag", "Child whose deblended pixels in this band are all zero."),
    AfwField(
        "deblend_peak_instFlux",
        "D",
        "Child's deblended pixel value at its peak in this band (coadd image units).",
    ),
)

# Record or peak flags that mark a pseudo source (a sky object), as in scarlet's pseudoColumns:
# such a parent is not deblended (deblend_skipped_isPseudo).
PSEUDO_COLUMNS = ("merge_peak_sky", "sky_source")

_UNITS = {"pix": "pixel", "ms": "ms"}


def afw_fields(bands: Sequence[str], latent_dim: int) -> list[AfwField]:
    """afw fields of the deblended catalog, in the order of the pip-only columns.

    Parameters
    ----------
    bands : sequence of `str`
        The model's bands (per-band chi^2 and flux fields).
    latent_dim : `int`
        Length of the ``deblend_latents`` array field.

    Returns
    -------
    fields : `list` [`AfwField`]
        One per column of `deblend_columns` not in `AFW_SKIPPED_COLUMNS`, then
        `CHILD_EXTRA_FIELDS`.

    Examples
    --------
    >>> fields = {f.name: f for f in afw_fields("ugrizy", 16)}
    >>> fields["deblend_nChild"].type, fields["deblend_failed"].type
    ('I', 'Flag')
    >>> fields["deblend_latents"].type, fields["deblend_latents"].size
    ('ArrayF', 16)
    >>> fields["deblend_error"].type, fields["deblend_error"].size
    ('String', 48)
    >>> "id" in fields or "bbox_x0" in fields
    False
    """
    out = []
    for col in deblend_columns(bands, latent_dim):
        if col.name in AFW_SKIPPED_COLUMNS:
            continue
        units = _UNITS.get(col.unit or "", col.unit or "")
        kind = np.dtype(col.dtype).kind
        if col.shape:
            if col.dtype != "float32" or len(col.shape) != 1:
                raise MadnessValueError(f"No afw array type for column {col.name} {col.dtype}{col.shape}.")
            out.append(AfwField(col.name, "ArrayF", col.doc, units, int(col.shape[0])))
        elif kind == "U":
            out.append(AfwField(col.name, "String", col.doc, units, np.dtype(col.dtype).itemsize // 4))
        elif col.dtype in _AFW_TYPES:
            out.append(AfwField(col.name, _AFW_TYPES[col.dtype], col.doc, units))
        else:
            raise MadnessValueError(f"No afw type for column {col.name} of dtype {col.dtype}.")
    return out + list(CHILD_EXTRA_FIELDS) + list(BAND_FIELDS)


def data_coverage(
    footprint: Footprint, mask: np.ndarray, yx0: tuple[int, int], no_data_bit: int | None
) -> float:
    """Fraction of a footprint's pixels that have data (scarlet's ``calculateFootprintCoverage``).

    Parameters
    ----------
    footprint : `Footprint`
        The record's pixels, tract frame.
    mask : `numpy.ndarray`
        ``(H, W)`` integer mask of the band (afw layout).
    yx0 : `tuple` [`int`, `int`]
        Tract-frame ``(y, x)`` of ``mask[0, 0]``.
    no_data_bit : `int` or `None`
        Bit index of the ``NO_DATA`` plane; `None` when the mask has no such plane (coverage 1).

    Returns
    -------
    coverage : `float`
        ``1 - n(NO_DATA or off-image pixels) / area``; NaN for an empty footprint.

    Examples
    --------
    >>> fp = Footprint(np.array([[0, 0, 3]]))  # 4 pixels, row 0
    >>> data_coverage(fp, np.array([[0, 1 << 2, 0, 0]], np.int32), (0, 0), 2)
    0.75
    """
    if footprint.area == 0:
        return float("nan")
    ys, xs = footprint.pixels()
    ys, xs = ys - yx0[0], xs - yx0[1]
    on = (ys >= 0) & (ys < mask.shape[0]) & (xs >= 0) & (xs < mask.shape[1])
    if no_data_bit is None:
        return float(on.sum() / footprint.area)
    good = on.copy()
    good[on] = (mask[ys[on], xs[on]] & (1 << int(no_data_bit))) == 0
    return float(good.sum() / footprint.area)


def bad_pixels(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    plane_bits: Mapping[str, int],
    bad_planes: Sequence[str],
) -> np.ndarray:
    """Pixels with zero weight in one band.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        ``(H, W)`` image (image units) and variance (image units squared).
    mask : `numpy.ndarray`
        ``(H, W)`` integer mask, afw layout: bit ``plane_bits[name]`` set for plane ``name``.
    plane_bits : mapping [`str`, `int`]
        Bit index of each plane (afw ``Mask.getMaskPlaneDict()``).
    bad_planes : sequence of `str`
        Planes that make a pixel bad; names the mask lacks are ignored.

    Returns
    -------
    bad : `numpy.ndarray`
        ``(H, W)`` bool: in a bad plane, non-finite image or variance, or variance <= 0.

    Examples
    --------
    >>> img = np.array([[1.0, np.nan, 1.0, 1.0]])
    >>> var = np.array([[1.0, 1.0, 0.0, 1.0]])
    >>> msk = np.array([[0, 0, 0, 1 << 3]], dtype=np.int32)
    >>> bad_pixels(img, var, msk, {"BAD": 0, "SAT": 3}, ["SAT", "NO_DATA"]).tolist()
    [[False, True, True, True]]
    """
    image = np.asarray(image)
    variance = np.asarray(variance)
    bad = ~np.isfinite(image) | ~np.isfinite(variance) | ~(variance > 0)
    bits = 0
    for plane in bad_planes:
        if plane in plane_bits:
            bits |= 1 << int(plane_bits[plane])
    if bits:
        bad |= (np.asarray(mask).astype(np.int64) & bits) != 0
    return bad


def coadd_from_arrays(
    bands: Sequence[str],
    planes: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, Mapping[str, int]]],
    xy0: tuple[int, int],
    bad_planes: Sequence[str],
    unit: str | None = None,
    keep_planes: Sequence[str] = (),
) -> MultibandCoadd:
    """Stack per-band afw-style arrays into the `MultibandCoadd` the deblending core reads.

    Parameters
    ----------
    bands : sequence of `str`
        Bands to stack, in the model's order; each must be in ``planes``.
    planes : mapping [`str`, `tuple`]
        Per band ``(image, variance, mask, plane_bits)``: ``(H, W)`` arrays of one coadd and its
        mask-plane dictionary. Other bands are ignored.
    xy0 : `tuple` [`int`, `int`]
        Tract-frame ``(x, y)`` of pixel ``[0, 0]`` (afw ``getXY0()``); swapped to ``yx0`` here.
    bad_planes : sequence of `str`
        Mask planes with zero weight (see `bad_pixels`).
    unit : `str`, optional
        Image unit, e.g. ``"nJy"``.
    keep_planes : sequence of `str`
        Mask planes kept as `MultibandCoadd.planes` (for ``maskLimits``); one that no band's
        mask has is left out, and a band whose mask lacks it has it all False.

    Raises
    ------
    MadnessMissingBandError
        A band has no coadd.
    MadnessValueError
        The coadds' shapes differ.
    """
    bands = tuple(bands)
    missing = [b for b in bands if b not in planes]
    if missing:
        raise MadnessMissingBandError(
            f"No coadd for band(s) {missing}: the model needs {list(bands)} and the quantum has "
            f"{sorted(planes)}. Make coadds of every band, or use a model trained on these bands."
        )
    if not bands:
        raise MadnessValueError("No band to stack.")
    images, variances, bads = [], [], []
    shape = None
    for band in bands:
        image, variance, mask, plane_bits = planes[band]
        image = np.asarray(image, dtype=np.float32)
        if shape is None:
            shape = image.shape
        if image.shape != shape or np.shape(variance) != shape or np.shape(mask) != shape:
            raise MadnessValueError(
                f"Coadd arrays of band {band} have shapes {image.shape}, {np.shape(variance)}, "
                f"{np.shape(mask)}; expected {shape} (the first band's)."
            )
        images.append(image)
        variances.append(np.asarray(variance, dtype=np.float32))
        bads.append(bad_pixels(image, variance, mask, plane_bits, bad_planes))
    kept = {}
    for plane in keep_planes:
        if any(plane in planes[band][3] for band in bands):
            kept[plane] = np.stack(
                [
                    (np.asarray(planes[band][2]) & (1 << int(planes[band][3][plane]))) != 0
                    if plane in planes[band][3]
                    else np.zeros(shape, bool)
                    for band in bands
                ]
            )
    return MultibandCoadd(
        bands=bands,
        image=np.stack(images),
        variance=np.stack(variances),
        bad=np.stack(bads),
        yx0=(int(xy0[1]), int(xy0[0])),
        unit=unit,
        planes=kept,
    )


def footprint_image(footprint: Footprint, values: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Lay one band of a heavy footprint's values on its bounding box.

    Parameters
    ----------
    footprint : `Footprint`
        The footprint (tract frame).
    values : `numpy.ndarray`
        ``(area,)`` pixel values in span order (as `split_blend` and the heavy-footprint table
        give them).

    Returns
    -------
    image : `numpy.ndarray`
        ``(h, w)`` float32 image of the bounding box, 0 outside the footprint.
    xy0 : `tuple` [`int`, `int`]
        Tract-frame ``(x, y)`` of ``image[0, 0]`` (afw order, for ``SpanSet.flatten``).

    Examples
    --------
    >>> fp = Footprint.from_mask(np.array([[1, 0], [1, 1]], bool), yx0=(5, 7))
    >>> img, xy0 = footprint_image(fp, np.array([1.0, 2.0, 3.0]))
    >>> img.tolist(), xy0
    ([[1.0, 0.0], [2.0, 3.0]], (7, 5))
    """
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if values.size != footprint.area:
        raise MadnessValueError(f"{values.size} values for a footprint of {footprint.area} pixels.")
    y0, x0, _, _ = footprint.bbox
    mask = footprint.to_mask()
    image = np.zeros(mask.shape, dtype=np.float32)
    # Footprint pixels in span order are the mask's True pixels in row-major order.
    image[mask] = values
    return image, (x0, y0)


def photocalib_scales(
    photo_calibs: Mapping[str, object],
    bands: Sequence[str],
    units: ModelUnits,
    fallback_unit: str | None = None,
) -> np.ndarray:
    """Model units per coadd pixel value, per band, from the coadds' afw ``PhotoCalib``.

    A ``PhotoCalib`` turns an instrumental flux into nJy (``instFluxToNanojansky``); a
    spatially constant one is its ``getCalibrationMean()`` nJy per pixel unit (Rubin's coadds are
    in nJy, so theirs is 1). The model units per nJy come from the bundle
    (`lsst.meas.madness.units.ModelUnits.electrons_per_nanojansky`).

    Parameters
    ----------
    photo_calibs : mapping [`str`, `lsst.afw.image.PhotoCalib` or `None`]
        Each band's ``exposure.getPhotoCalib()``.
    bands : sequence of `str`
        The model's bands, in its order; each must be in ``photo_calibs``.
    units : `lsst.meas.madness.units.ModelUnits`
        The model's units.
    fallback_unit : `str`, optional
        Unit of a coadd without a ``PhotoCalib`` (the task's ``inputUnit``); `None` makes a
        missing ``PhotoCalib`` an error.

    Returns
    -------
    scale : `numpy.ndarray`
        ``(bands,)`` float64: multiply a band's pixels by it to get model units.

    Raises
    ------
    MadnessUnitError
        A band without ``PhotoCalib`` and no ``fallback_unit``, a spatially varying
        ``PhotoCalib`` (not supported: the conversion is one factor per band), a calibration
        mean that is not finite and positive, or a band the model's units do not cover.
    """
    per_nanojansky = units.electrons_per_nanojansky
    out = np.zeros(len(bands))
    for b, band in enumerate(bands):
        (index,) = units.band_indices([band])
        calib = photo_calibs.get(band)
        if calib is None:
            unit = resolve_unit(None, fallback_unit, what=f"The {band} coadd (it has no PhotoCalib)")
            out[b] = units.scale(unit, [band])[0]
            continue
        if not calib._isConstant:
            raise MadnessUnitError(
                f"The {band} coadd's PhotoCalib varies across the image; MADNESS converts each band by "
                "one factor. Calibrate the coadd to nJy first (PhotoCalib.calibrateImage)."
            )
        mean = float(calib.getCalibrationMean())
        if not (np.isfinite(mean) and mean > 0):
            raise MadnessUnitError(
                f"The {band} coadd's PhotoCalib has calibration mean {mean} nJy per count."
            )
        out[b] = mean * per_nanojansky[index]
    return out
