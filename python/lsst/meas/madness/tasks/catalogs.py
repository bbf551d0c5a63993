"""Column definitions of the tables the tasks write, and the source-id scheme.

Every table is an `astropy.table.Table` stored with the butler's ``ArrowAstropy`` storage class;
each column carries a ``description`` and, where it has one, a ``unit``. `make_table` builds an
empty-valued table of a given length from a list of `Column` specifications, with the fill
value of each column (``0``, ``False``, ``NaN``, ``""``), so the tasks fill only what they know.

Source ids
----------
A pip-only repository has no skymap dimension packer (``lsst.skymap``), so ids are made here:
``id = ((tract << 16 | patch) << 31) + n`` with ``n`` counting from 1 within the patch
(tract < 2**15, patch < 2**16, n < 2**31; always < 2**62). Parents and peaks of the detection
table take consecutive ``n``; a deblended child keeps its peak's id, so ids never collide and
``parent == 0`` marks a top-level source, as in afw.
"""

from __future__ import annotations

__all__ = [
    "Column",
    "make_table",
    "source_id_prefix",
    "DETECTION_COLUMNS",
    "deblend_columns",
    "object_columns",
]

import dataclasses
from collections.abc import Sequence

import numpy as np
from astropy.table import Table

from ..errors import MadnessRangeError


@dataclasses.dataclass(frozen=True)
class Column:
    """Specification of one table column.

    Parameters
    ----------
    name : `str`
        Column name.
    dtype : `str`
        numpy dtype (``"int64"``, ``"float32"``, ``"bool"``, ``"U32"``...).
    doc : `str`
        Description stored with the column.
    unit : `str`, optional
        Unit (``"pix"``, ``"ms"``); `None` for dimensionless or image units.
    shape : `tuple` [`int`, ...]
        Per-row shape of an array column (e.g. ``(16,)`` for latents); ``()`` for scalars.
    """

    name: str
    dtype: str
    doc: str
    unit: str | None = None
    shape: tuple[int, ...] = ()

    def fill_value(self):
        kind = np.dtype(self.dtype).kind
        if kind == "f":
            return np.nan
        if kind == "b":
            return False
        if kind in "US":
            return ""
        return 0


def make_table(columns: Sequence[Column], length: int) -> Table:
    """Table of ``length`` rows with ``columns`` set to their fill values."""
    table = Table()
    for col in columns:
        table[col.name] = np.full((length, *col.shape), col.fill_value(), dtype=col.dtype)
        table[col.name].description = col.doc
        if col.unit is not None:
            table[col.name].unit = col.unit
    return table


def source_id_prefix(tract: int, patch: int) -> int:
    """The id of the patch's source number 0 (see the module docstring).

    Examples
    --------
    >>> source_id_prefix(0, 0)
    0
    >>> source_id_prefix(1, 2) + 5 == ((1 << 16 | 2) << 31) + 5
    True
    """
    if not 0 <= tract < 2**15:
        raise MadnessRangeError(
            "tract id does not fit the 15 bits of the source-id scheme.", tract, 0, 2**15 - 1
        )
    if not 0 <= patch < 2**16:
        raise MadnessRangeError(
            "patch id does not fit the 16 bits of the source-id scheme.", patch, 0, 2**16 - 1
        )
    return (int(tract) << 16 | int(patch)) << 31


# --- detection table (MadnessDetectionTask) -------------------------------------------------------

DETECTION_COLUMNS = (
    Column("id", "int64", "Unique id of the parent footprint or the peak."),
    Column("parent", "int64", "0 for a parent footprint; for a peak, the id of its parent footprint."),
    Column("peak_x", "int32", "Peak column, tract frame (a parent: its brightest peak).", "pix"),
    Column("peak_y", "int32", "Peak row, tract frame (a parent: its brightest peak).", "pix"),
    Column(
        "peak_value",
        "float32",
        "Detection-image value at the peak (inverse-variance weighted mean of the bands).",
    ),
    Column("peak_significance", "float32", "peak_value divided by the detection image's noise at the peak."),
    Column("n_peaks", "int32", "Number of peaks in the footprint (parents; 0 for peaks)."),
    Column("footprint_area", "int32", "Pixels in the footprint (parents; 0 for peaks).", "pix"),
    Column("bbox_x0", "int32", "First column of the footprint's bounding box (parents).", "pix"),
    Column("bbox_y0", "int32", "First row of the footprint's bounding box (parents).", "pix"),
    Column("bbox_width", "int32", "Columns in the footprint's bounding box (parents).", "pix"),
    Column("bbox_height", "int32", "Rows in the footprint's bounding box (parents).", "pix"),
)


# --- deblended catalog (MadnessDeblendTask) -----------------------------------------------------


def deblend_columns(bands: Sequence[str], latent_dim: int) -> list[Column]:
    """Columns of the deblended catalog: parents (``parent == 0``) and children."""
    cols = [
        Column("id", "int64", "Unique id; a child keeps the id of its peak in the detection table."),
        Column("parent", "int64", "Id of the parent for a child, 0 for a parent."),
        Column(
            "deblend_peakId", "int64", "Id of the detection peak a child was deblended from (0 for parents)."
        ),
        Column(
            "deblend_peak_center_x",
            "int32",
            "Column of the peak the source is centred on, tract frame.",
            "pix",
        ),
        Column(
            "deblend_peak_center_y", "int32", "Row of the peak the source is centred on, tract frame.", "pix"
        ),
        Column(
            "deblend_center_x",
            "float64",
            "Column of the centre the child's model is drawn at, tract frame: its peak position plus the "
            "position offset fitted with the latents (fitPositionOffsets, or residualPeakMaxOffset for a "
            "residual peak's source and, with residualPeakMoveNeighbours, the detected source nearest it; "
            "the peak itself otherwise). "
            "NaN for parents.",
            "pix",
        ),
        Column(
            "deblend_center_y",
            "float64",
            "Row of the centre the child's model is drawn at, tract frame (see deblend_center_x).",
            "pix",
        ),
        Column(
            "footprint_area",
            "int32",
            "Pixels in the source's footprint (a child: model support inside the parent).",
            "pix",
        ),
        Column("bbox_x0", "int32", "First column of the footprint's bounding box.", "pix"),
        Column("bbox_y0", "int32", "First row of the footprint's bounding box.", "pix"),
        Column("bbox_width", "int32", "Columns in the footprint's bounding box.", "pix"),
        Column("bbox_height", "int32", "Rows in the footprint's bounding box.", "pix"),
        Column(
            "deblend_residualPeak",
            "bool",
            "A child whose peak was found in the residual of a first deblend, not by the detection "
            "(doResidualPeaks); its deblend_peakId is 0.",
        ),
        Column(
            "deblend_nResidualPeaks",
            "int32",
            "Residual peaks of a parent kept after its refit (doResidualPeaks; 0 for children).",
        ),
        Column(
            "deblend_nResidualPeaksRejected",
            "int32",
            "Residual peaks of a parent tried and not kept: the refit lowered the objective by less than "
            "the penalty, or failed (doResidualPeaks; 0 for children).",
        ),
        Column(
            "deblend_residualPeaksLimited",
            "bool",
            "Part of the parent's footprint was not searched for residual peaks: the light of a source drawn "
            "zoomed or cut by its stamp lies there (residualPeakSkipLarge; False for children).",
        ),
        Column(
            "deblend_pairSplit",
            "bool",
            "A child of a source the fit split into a pair (doPairSplits): the member nearer the detected "
            "peak keeps its deblend_peakId, the other has 0.",
        ),
        Column(
            "deblend_nPairSplits",
            "int32",
            "Sources of a parent split into pairs and kept after the refit, 0 or 1 (doPairSplits; 0 for "
            "children).",
        ),
        Column(
            "deblend_nPairSplitsRejected",
            "int32",
            "Sources of a parent tried as pairs and not kept (doPairSplits; 0 for children).",
        ),
        Column(
            "deblend_nChild",
            "int32",
            "Number of children this source has (0 for children and undeblended parents).",
        ),
        Column(
            "deblend_nPeaks",
            "int32",
            "Number of peaks of the parent in the detection table, before any was dropped.",
        ),
        Column(
            "deblend_nNeighbors",
            "int32",
            "Peaks of other parents inside the blend's cutouts, fitted with it and then dropped.",
        ),
        Column(
            "deblend_droppedPeaks",
            "int32",
            "Peaks not deblended: off the image, outside the footprint, or sharing a pixel.",
        ),
        Column("deblend_skipped", "bool", "The parent was not deblended (see the specific deblend_* flag)."),
        Column("deblend_skipped_noPeaks", "bool", "The parent footprint has no usable peak; not deblended."),
        Column(
            "deblend_skipped_tooManyPeaks",
            "bool",
            "The parent has more peaks than maxNumberOfPeaks; not deblended.",
        ),
        Column(
            "deblend_skipped_parentTooBig",
            "bool",
            "The parent footprint covers more than maxFootprintArea pixels; not deblended.",
        ),
        Column(
            "deblend_skipped_isPseudo",
            "bool",
            "The parent is a pseudo source (a sky object: merge_peak_sky or sky_source); not deblended.",
        ),
        Column(
            "deblend_skipped_masked",
            "bool",
            "More of the parent footprint's pixels carry a mask plane of maskLimits than its limit; "
            "not deblended.",
        ),
        Column(
            "deblend_skipped_isolatedParent",
            "bool",
            "The parent has a single peak and processSingles is False; not deblended.",
        ),
        Column("deblend_failed", "bool", "Deblending raised an error (deblend_error names it); no children."),
        Column("deblend_error", "U48", "Class name of the error that made deblending fail."),
        Column(
            "deblend_incompleteData",
            "bool",
            "Parent: at least one band has no usable pixel in the footprint (all masked, non-finite or "
            "zero variance), so that band did not constrain the fit; its model there comes from the "
            "other bands through the decoder.",
        ),
        Column(
            "deblend_edge", "bool", "The child's model stamp crosses the image edge (cropped in the fit)."
        ),
        Column(
            "deblend_noData",
            "bool",
            "The child's stamp has no usable pixel: its model follows the prior only.",
        ),
        Column(
            "deblend_maskedFraction",
            "float32",
            "Fraction of the child's in-image stamp pixels with zero weight (masked, NaN, variance <= 0).",
        ),
        Column(
            "deblend_zoom",
            "int32",
            "Image pixels per decoder stamp pixel of the child's model: 1 as decoded, 2 or more for a galaxy "
            "bigger than the stamp drawn with larger pixels (maxZoom; doc/large-galaxies.md). 0 for parents.",
        ),
        Column(
            "deblend_extended",
            "bool",
            "The child's model was drawn with deblend_zoom > 1: its stamp covers more than the model's "
            "stamp size around its peak.",
        ),
        Column(
            "deblend_truncated",
            "bool",
            "The child's model still runs into the edge of its (zoomed) stamp: more than "
            "DeblendResult.TRUNCATED_EDGE_FRACTION (0.02) of its flux in the decoded stamp's outer 2 pixels, "
            "so the galaxy is probably cut off.",
        ),
        Column(
            "deblend_enveloped",
            "bool",
            "The child's light beyond its stamp was fitted as an envelope (fitEnvelopes; "
            "doc/large-galaxies.md): its footprint, pixels and model flux include it.",
        ),
        Column(
            "deblend_winged",
            "bool",
            "The child's model carries its wing beyond its stamp (psfWings, outskirts; doc/engine.md, "
            "'PSF wings', 'Outskirts'): its model flux includes deblend_wingFlux_<band>, and the wing "
            "takes its share of the parent's pixels.",
        ),
        Column(
            "deblend_refitAlone",
            "bool",
            "The child was fitted again alone beside a brighter neighbour, on the image minus the other "
            "models (refitBesideBrighter): its model is that refit's.",
        ),
        Column("deblend_iterations", "int32", "MAP iterations of the blend (its sources' refits included)."),
        Column(
            "deblend_chi2",
            "float32",
            "Reduced chi^2 of the blend residual, all bands: parent, over the fit region's good "
            "pixels; child, the mean of its deblend_chi2_<band> (about 1 for a good fit; scarlet's "
            "column of this name is divided by the number of bands as well).",
        ),
        Column("deblend_converged", "bool", "The blend's MAP optimisation stopped before maxIter."),
        Column("deblend_logPrior", "float32", "Flow log-density of the child's MAP latents."),
        Column(
            "deblend_latents",
            "float32",
            "MAP latent vector of the child (NaN for parents).",
            shape=(latent_dim,),
        ),
        Column(
            "deblend_modelFractionInFootprint",
            "float32",
            "Fraction of the child's model flux (all bands) inside its footprint; the rest was cut.",
        ),
        Column(
            "deblend_unassignedFluxFraction",
            "float32",
            "Parent: fraction of its observed flux (all bands, good pixels) given to no child.",
        ),
        Column(
            "deblend_runtime",
            "float32",
            "Parent: wall time of its deblend_batch call divided among its sources.",
            "ms",
        ),
    ]
    for band in bands:
        cols += [
            Column(
                f"deblend_chi2_{band}",
                "float32",
                f"Reduced chi^2 of the blend residual over the child's stamp, {band} band.",
            ),
            Column(
                f"deblend_fluxFactor_{band}",
                "float32",
                f"Fitted flux factor exp(a) of the child's decoded model, {band} band (MapSettings."
                "fit_amplitudes; 1 with the paper's MAP, NaN for parents).",
            ),
            Column(
                f"deblend_modelFlux_{band}",
                "float32",
                f"Sum of the child's full model, {band} band, image units: its stamp (and envelope) cropped "
                "to the image, plus its whole wing (deblend_wingFlux_<band>).",
            ),
            Column(
                f"deblend_wingFlux_{band}",
                "float32",
                f"Flux of the child's wing beyond its stamp (psfWings: the PSF's far profile, and with "
                f"outskirts the galaxy's own), {band} band, image units; 0 without one.",
            ),
            Column(
                f"deblend_flux_{band}",
                "float32",
                f"Sum of the source's heavy-footprint values, {band} band, image units.",
            ),
        ]
    return cols


# --- object table (MadnessMeasurementTask) ---------------------------------------------------------


def object_columns(bands: Sequence[str]) -> list[Column]:
    """Columns of the measured object table."""
    cols = [
        Column("id", "int64", "Source id (as in the deblended catalog)."),
        Column("parent", "int64", "Parent id, 0 for a parent."),
        Column("deblend_nChild", "int32", "Children of the source (copied from the deblended catalog)."),
        Column("deblend_skipped", "bool", "Copied from the deblended catalog."),
        Column("deblend_failed", "bool", "Copied from the deblended catalog."),
        Column(
            "detect_isPrimary",
            "bool",
            "True if the source has no children (a child, or a parent with no children) and its centroid "
            "is in the inner region of the coadd patch and of the coadd tract (detect_isPatchInner and "
            "detect_isTractInner), as Rubin's SetPrimaryFlagsTask sets it: each object once across "
            "overlapping patches.",
        ),
        Column(
            "detect_isPatchInner",
            "bool",
            "True if the source's centroid is in the inner region of the coadd patch (one pixel further in "
            "when centroid_flag is set).",
        ),
        Column("detect_isTractInner", "bool", "True if the source's centroid is in the inner region of the coadd tract."),
        Column(
            "x",
            "float64",
            "First-moment centroid column of the band-summed heavy footprint, tract frame.",
            "pix",
        ),
        Column(
            "y",
            "float64",
            "First-moment centroid row of the band-summed heavy footprint, tract frame.",
            "pix",
        ),
        Column("shape_a", "float32", "Semi-major axis (second moments) of the band-summed source.", "pix"),
        Column("shape_b", "float32", "Semi-minor axis (second moments) of the band-summed source.", "pix"),
        Column(
            "shape_theta", "float32", "Position angle of the major axis, counter-clockwise from +x.", "rad"
        ),
        Column(
            "kron_radius",
            "float32",
            "Kron radius (units of shape_a/shape_b) from sep on the band-summed source.",
        ),
        Column(
            "ap_radius_flag",
            "bool",
            "Kron radius unusable; a circular aperture of minApertureRadius was used.",
        ),
        Column("centroid_flag", "bool", "No positive flux in the footprint: no centroid or moments."),
    ]
    for band in bands:
        cols += [
            Column(
                f"{band}_apFlux", "float64", f"sep elliptical (Kron) aperture flux, {band} band, image units."
            ),
            Column(
                f"{band}_apFluxErr",
                "float64",
                f"Error of {band}_apFlux from the coadd variance, image units.",
            ),
            Column(
                f"{band}_apFlux_flag",
                "bool",
                f"sep flagged the {band} aperture (truncated or masked pixels).",
            ),
            Column(
                f"{band}_hsm_g1",
                "float32",
                f"GalSim HSM adaptive-moment shear g1 (observed, PSF included), {band} band.",
            ),
            Column(f"{band}_hsm_g2", "float32", f"GalSim HSM adaptive-moment shear g2, {band} band."),
            Column(
                f"{band}_hsm_sigma", "float32", f"GalSim HSM adaptive-moment size sigma, {band} band.", "pix"
            ),
            Column(f"{band}_hsm_flag", "bool", f"GalSim HSM adaptive moments failed, {band} band."),
        ]
    return cols
