"""afw objects <-> the numpy structures of the deblending core, at one edge.

Needs ``lsst.afw`` (imported when this module is). The (x, y) order of afw (``Span``, ``Point2I``,
``getXY0``) is swapped to the core's (y, x) here and nowhere else.

* coadds: per-band ``ExposureF`` -> `MultibandCoadd` (`coadd_from_exposures`): image, variance,
  and zero weight for the ``badMask`` planes, non-finite pixels and variance <= 0;
* parents: afw ``SourceRecord`` footprints and their ``PeakCatalog`` -> `ParentFootprint`
  (`parents_from_catalog`), with patch-unique integer keys for the peaks (afw peak ids are only
  unique within a footprint);
* children: a `Footprint` -> afw ``Footprint`` with exactly the child's peak
  (`child_footprint`), and its values in one band -> ``HeavyFootprintF`` whose mask and variance
  are the coadd's (`heavy_footprint`).
"""

from __future__ import annotations

__all__ = [
    "coadd_from_exposures",
    "footprint_from_afw",
    "spanset_from_footprint",
    "parents_from_catalog",
    "child_footprint",
    "footprint_data_coverage",
    "heavy_footprint",
]

from collections.abc import Mapping, Sequence

import numpy as np

import lsst.afw.detection as afwDet
import lsst.afw.geom as afwGeom
import lsst.afw.image as afwImage
import lsst.geom

from ...errors import MadnessValueError
from ..blends import ParentFootprint
from ..coadds import MultibandCoadd
from ..footprints import Footprint
from .conventions import PSEUDO_COLUMNS, coadd_from_arrays, data_coverage, footprint_image


def coadd_from_exposures(
    exposures: Mapping[str, afwImage.ExposureF],
    bands: Sequence[str],
    bad_planes: Sequence[str],
    keep_planes: Sequence[str] = (),
) -> MultibandCoadd:
    """Stack per-band afw exposures for the deblending core.

    Parameters
    ----------
    exposures : mapping [`str`, `lsst.afw.image.ExposureF`]
        Coadd of each band (other bands are ignored).
    bands : sequence of `str`
        The model's bands, in its order.
    bad_planes : sequence of `str`
        Mask planes with zero weight; planes the masks lack are ignored.
    keep_planes : sequence of `str`
        Mask planes kept as `MultibandCoadd.planes` (``maskLimits``).

    Raises
    ------
    MadnessMissingBandError
        A band has no exposure.
    MadnessValueError
        The exposures' bounding boxes differ.
    """
    present = [b for b in bands if b in exposures]
    boxes = {b: exposures[b].getBBox() for b in present}
    if present and any(box != boxes[present[0]] for box in boxes.values()):
        raise MadnessValueError(f"Coadd bounding boxes differ: {boxes}.")
    planes = {
        b: (
            exposures[b].image.array,
            exposures[b].variance.array,
            exposures[b].mask.array,
            exposures[b].mask.getMaskPlaneDict(),
        )
        for b in present
    }
    xy0 = (boxes[present[0]].getMinX(), boxes[present[0]].getMinY()) if present else (0, 0)
    return coadd_from_arrays(bands, planes, xy0, bad_planes, keep_planes=keep_planes)


def footprint_from_afw(footprint: afwDet.Footprint) -> Footprint:
    """The spans of an afw ``Footprint`` as a `Footprint` (tract frame)."""
    spans = np.array(
        [(s.getY(), s.getX0(), s.getX1()) for s in footprint.getSpans()], dtype=np.int64
    ).reshape(-1, 3)
    if len(spans):
        spans = spans[np.lexsort((spans[:, 1], spans[:, 0]))]
    return Footprint(spans)


def spanset_from_footprint(footprint: Footprint) -> afwGeom.SpanSet:
    """The afw ``SpanSet`` of a `Footprint`."""
    return afwGeom.SpanSet([afwGeom.Span(int(y), int(x0), int(x1)) for y, x0, x1 in footprint.spans])


def parents_from_catalog(catalog) -> tuple[list[ParentFootprint], dict[int, tuple[object, object]]]:
    """Parents (records with ``parent == 0``) and their peaks, for the deblending core.

    Parameters
    ----------
    catalog : `lsst.afw.table.SourceCatalog`
        Merged detections with Footprints and peaks.

    Returns
    -------
    parents : `list` [`ParentFootprint`]
        One per parent record, in catalog order; ``peak_ids`` are patch-unique keys (1, 2, ...).
    peaks : `dict` [`int`, `tuple`]
        Key -> ``(parent SourceRecord, PeakRecord)``.
    """
    parents, peaks = [], {}
    key = 0
    # Sky objects, as scarlet's pseudoColumns: a flag of the record or of its first peak.
    pseudoFields = [name for name in PSEUDO_COLUMNS if name in catalog.schema.getNames()]
    for record in catalog:
        if record.getParent() != 0:
            continue
        fp = record.getFootprint()
        if fp is None:
            spans, peak_records = Footprint(np.zeros((0, 3), np.int64)), []
        else:
            spans, peak_records = footprint_from_afw(fp), list(fp.getPeaks())
        keys = np.arange(key + 1, key + 1 + len(peak_records), dtype=np.int64)
        key += len(peak_records)
        # The float peak position (afw f_x, f_y): the engine keeps its offset from the pixel centre.
        xy = np.array([(p.getFx(), p.getFy()) for p in peak_records], dtype=np.float64).reshape(-1, 2)
        for k, peak in zip(keys, peak_records):
            peaks[int(k)] = (record, peak)
        pseudo = any(record.get(name) for name in pseudoFields) or any(
            name in peak_records[0].schema.getNames() and peak_records[0].get(name)
            for name in PSEUDO_COLUMNS
            if peak_records
        )
        parents.append(ParentFootprint(int(record.getId()), spans, keys, xy, pseudo=bool(pseudo)))
    return parents, peaks


def footprint_data_coverage(footprint: afwDet.Footprint, exposure) -> float:
    """`data_coverage` of an afw ``Footprint`` on one band's exposure (NaN when empty)."""
    mask = exposure.mask
    planes = mask.getMaskPlaneDict()
    xy0 = exposure.getXY0()
    return data_coverage(footprint_from_afw(footprint), mask.array, (xy0.getY(), xy0.getX()),
                         planes.get("NO_DATA"))


def child_footprint(footprint: Footprint, peak, peak_schema) -> afwDet.Footprint:
    """An afw ``Footprint`` of a child's pixels holding exactly its peak.

    Parameters
    ----------
    footprint : `Footprint`
        The child's pixels (inside its parent's).
    peak : `lsst.afw.detection.PeakRecord`
        The parent's peak the child was deblended from (all its fields are copied).
    peak_schema : `lsst.afw.table.Schema`
        Schema of ``peak``'s catalog.
    """
    out = afwDet.Footprint(spanset_from_footprint(footprint), peak_schema)
    out.getPeaks().addNew().assign(peak)
    return out


def heavy_footprint(
    afw_footprint: afwDet.Footprint, footprint: Footprint, values: np.ndarray, exposure: afwImage.ExposureF
) -> afwDet.HeavyFootprintF:
    """A ``HeavyFootprintF`` of one band: the child's values, the coadd's mask and variance.

    Parameters
    ----------
    afw_footprint : `lsst.afw.detection.Footprint`
        The child's footprint (`child_footprint`), same pixels as ``footprint``.
    footprint : `Footprint`
        The child's pixels.
    values : `numpy.ndarray`
        ``(area,)`` pixel values of the band in span order, image units.
    exposure : `lsst.afw.image.ExposureF`
        The band's coadd (mask and variance of the pixels).
    """
    image, (x0, y0) = footprint_image(footprint, values)
    h, w = image.shape
    bbox = lsst.geom.Box2I(lsst.geom.Point2I(x0, y0), lsst.geom.Extent2I(w, h))
    masked = afwImage.MaskedImageF(exposure.maskedImage, bbox, afwImage.PARENT, True)
    masked.image.array[:, :] = image
    return afwDet.makeHeavyFootprint(afw_footprint, masked)
