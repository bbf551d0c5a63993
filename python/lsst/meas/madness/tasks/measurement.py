"""``MadnessMeasurementTask``: aperture photometry and adaptive moments of deblended sources.

The pip-only stand-in for ``MeasureMergedCoaddSourcesTask``. Each source (parent or child of the
deblended catalog) is measured on its own heavy footprint, with every other source removed
(zero outside its footprint, as meas_base's noise replacer sees a source, without the added
noise):

- a first- and second-moment ellipse of the band-summed source (positive pixels);
- sep's Kron radius in that ellipse, then the flux in the ellipse scaled by ``kronFactor`` times
  the Kron radius, the same aperture in every band so colours are consistent (a circle of
  ``minApertureRadius`` pixels when the Kron radius is unusable), with errors from the coadd
  variance of the footprint's pixels;
- GalSim HSM adaptive moments (``FindAdaptiveMom``) per band: observed shear ``g1, g2`` and size
  ``sigma`` (PSF included).
"""

from __future__ import annotations

__all__ = [
    "MadnessMeasurementConnections",
    "MadnessMeasurementConfig",
    "MadnessMeasurementTask",
    "measure_sources",
    "set_primary_flags",
]

import numpy as np
from astropy.table import Table

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.utils.timer import timeMethod

from ..skymap import SKYMAP_DATASET, SimSkyMap, is_patch_inner
from .catalogs import make_table, object_columns
from .coadds import DEFAULT_BAD_MASK_PLANES, MultibandCoadd
from .footprints import heavy_footprints_from_table

_TEMPLATES = {"inputCoaddName": "deep", "outputCoaddName": "deep"}


class MadnessMeasurementConnections(
    pipeBase.PipelineTaskConnections,
    dimensions=("tract", "patch", "skymap"),
    defaultTemplates=_TEMPLATES,
):
    coadds = cT.Input(
        doc="Per-band coadds: variance and mask of each footprint pixel.",
        name="{inputCoaddName}Coadd_calexp",
        storageClass="MaskedImageV2",
        dimensions=("tract", "patch", "band", "skymap"),
        multiple=True,
    )
    deblendedCatalog = cT.Input(
        doc="Deblended catalog (MadnessDeblendTask).",
        name="{inputCoaddName}Coadd_madnessDeblendedCatalog",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
    )
    deblendedFlux = cT.Input(
        doc="Heavy footprints, one table per band (MadnessDeblendTask).",
        name="{inputCoaddName}Coadd_madnessDeblendedFlux",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "band", "skymap"),
        multiple=True,
    )
    skyMap = cT.Input(
        doc="Geometry of the skymap's tracts and patches (lsst.meas.madness.skymap.SimSkyMap.to_dict): "
        "the inner patch and tract regions that detect_isPrimary needs. The pip-only counterpart of "
        "Rubin's skyMap dataset (lsst.skymap needs afw).",
        name=SKYMAP_DATASET,
        storageClass="StructuredDataDict",
        dimensions=("skymap",),
    )
    objectTable = cT.Output(
        doc="Per-band aperture fluxes and HSM shapes of every source.",
        name="{outputCoaddName}Coadd_madnessObj",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config is not None and not config.useSkyMap:
            del self.skyMap


class MadnessMeasurementConfig(
    pipeBase.PipelineTaskConfig, pipelineConnections=MadnessMeasurementConnections
):
    """Configuration of `MadnessMeasurementTask`."""

    kronFactor = pexConfig.Field[float](
        default=2.5, doc="Aperture = this many Kron radii (in units of the moments ellipse)."
    )
    kronMaxRadius = pexConfig.Field[float](
        default=6.0, doc="Ellipse (in units of a, b) within which sep computes the Kron radius."
    )
    minApertureRadius = pexConfig.Field[float](
        default=3.5, doc="Radius (pixels) of the circular aperture used when the Kron radius is unusable."
    )
    cutoutPadding = pexConfig.Field[int](
        default=8, doc="Zero pixels added around a footprint's box for the apertures and HSM (pixels)."
    )
    badMask = pexConfig.ListField[str](
        default=list(DEFAULT_BAD_MASK_PLANES),
        doc="Mask planes whose pixels are excluded (sep mask, HSM badpix).",
    )
    doHsm = pexConfig.Field[bool](default=True, doc="Measure GalSim HSM adaptive moments.")

    # Primary flags
    useSkyMap = pexConfig.Field[bool](
        default=True,
        doc="Read the skymap (connection skyMap) and set detect_isPatchInner and detect_isTractInner from "
        "its inner patch and tract regions, so that detect_isPrimary holds each object in one patch only, "
        "as Rubin's SetPrimaryFlagsTask does. False: every source counts as inner (a repository of "
        "one patch without a skymap dataset; overlapping patches then count their overlaps twice).",
    )


def _ellipse(image: np.ndarray) -> tuple[float, float, float, float, float] | None:
    """``(x, y, a, b, theta)`` from the first and second moments of the positive pixels."""
    w = np.clip(image, 0.0, None)
    total = w.sum()
    if not total > 0:
        return None
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    x = (w * xx).sum() / total
    y = (w * yy).sum() / total
    ixx = (w * (xx - x) ** 2).sum() / total
    iyy = (w * (yy - y) ** 2).sum() / total
    ixy = (w * (xx - x) * (yy - y)).sum() / total
    # Floor as SExtractor does, so that single-pixel sources keep a finite ellipse.
    ixx, iyy = ixx + 1.0 / 12, iyy + 1.0 / 12
    half_sum = 0.5 * (ixx + iyy)
    root = np.sqrt((0.5 * (ixx - iyy)) ** 2 + ixy**2)
    a = np.sqrt(half_sum + root)
    b = np.sqrt(max(half_sum - root, 1e-6))
    theta = 0.5 * np.arctan2(2 * ixy, ixx - iyy)
    return float(x), float(y), float(a), float(b), float(theta)


def measure_sources(
    catalog: Table,
    heavy: dict[str, dict[int, tuple]],
    coadd: MultibandCoadd,
    config: MadnessMeasurementConfig,
) -> Table:
    """Measure every source of ``catalog`` on its heavy footprints.

    Parameters
    ----------
    catalog : `astropy.table.Table`
        Deblended catalog.
    heavy : `dict` [`str`, `dict` [`int`, `tuple`]]
        Per band, ``{id: (Footprint, values)}`` (`heavy_footprints_from_table`).
    coadd : `MultibandCoadd`
        Coadds of the same bands as ``heavy`` (variance, bad pixels).
    config : `MadnessMeasurementConfig`
        Aperture and HSM settings.

    Returns
    -------
    objects : `astropy.table.Table`
        One row per catalog row (`object_columns`).
    """
    import galsim
    import sep

    bands = coadd.bands
    out = make_table(object_columns(bands), len(catalog))
    for name in ("id", "parent", "deblend_nChild", "deblend_skipped", "deblend_failed"):
        out[name] = np.asarray(catalog[name])
    cy0, cx0, cy1, cx1 = coadd.bbox
    pad = config.cutoutPadding
    for row, source_id in enumerate(np.asarray(catalog["id"], dtype=np.int64)):
        entry = heavy[bands[0]].get(int(source_id))
        if entry is None or entry[0].area == 0:
            out["centroid_flag"][row] = True
            continue
        fp = entry[0]
        fy0, fx0, fy1, fx1 = fp.bbox
        y0, x0 = max(fy0 - pad, cy0), max(fx0 - pad, cx0)
        y1, x1 = min(fy1 + pad, cy1), min(fx1 + pad, cx1)
        shape = (y1 - y0, x1 - x0)
        py, px = fp.pixels()
        iy, ix = py - y0, px - x0
        sl = (slice(y0 - cy0, y1 - cy0), slice(x0 - cx0, x1 - cx0))
        images = np.zeros((len(bands), *shape), np.float64)
        variances = np.zeros((len(bands), *shape), np.float64)
        bads = np.zeros((len(bands), *shape), bool)
        for b, band in enumerate(bands):
            values = np.asarray(heavy[band][int(source_id)][1], dtype=np.float64)
            bad = coadd.bad[b][sl][iy, ix] | ~np.isfinite(values)
            images[b, iy, ix] = np.where(bad, 0.0, values)
            variances[b, iy, ix] = np.where(bad, 0.0, coadd.variance[b][sl][iy, ix])
            bads[b, iy, ix] = bad
        summed = images.sum(axis=0)
        ellipse = _ellipse(summed)
        if ellipse is None:
            out["centroid_flag"][row] = True
            x, y, a, b_axis, theta = (
                float(catalog["deblend_peak_center_x"][row] - x0),
                float(catalog["deblend_peak_center_y"][row] - y0),
                1.0,
                1.0,
                0.0,
            )
        else:
            x, y, a, b_axis, theta = ellipse
        out["x"][row], out["y"][row] = x + x0, y + y0
        out["shape_a"][row], out["shape_b"][row], out["shape_theta"][row] = a, b_axis, theta

        summed_c = np.ascontiguousarray(summed)
        any_bad = np.ascontiguousarray(bads.any(axis=0))
        kron, kflag = sep.kron_radius(
            summed_c, [x], [y], [a], [b_axis], [theta], config.kronMaxRadius, mask=any_bad
        )
        kron = float(kron[0])
        circular = (
            ellipse is None
            or not np.isfinite(kron)
            or kron <= 0
            or (config.kronFactor * kron * np.sqrt(a * b_axis) < config.minApertureRadius)
        )
        out["kron_radius"][row] = kron
        out["ap_radius_flag"][row] = bool(circular)
        for b, band in enumerate(bands):
            data = np.ascontiguousarray(images[b])
            err = np.ascontiguousarray(np.sqrt(variances[b]))
            mask = np.ascontiguousarray(bads[b])
            if circular:
                flux, ferr, flag = sep.sum_circle(
                    data, [x], [y], config.minApertureRadius, err=err, mask=mask
                )
            else:
                flux, ferr, flag = sep.sum_ellipse(
                    data, [x], [y], [a], [b_axis], [theta], config.kronFactor * kron, err=err, mask=mask
                )
            out[f"{band}_apFlux"][row] = flux[0]
            out[f"{band}_apFluxErr"][row] = ferr[0]
            out[f"{band}_apFlux_flag"][row] = bool(flag[0])
            if config.doHsm:
                result = galsim.hsm.FindAdaptiveMom(
                    galsim.Image(data),
                    badpix=galsim.Image(mask.astype(np.int32)),
                    guess_centroid=galsim.PositionD(x + 1.0, y + 1.0),
                    strict=False,
                )
                if result.moments_status == 0:
                    out[f"{band}_hsm_g1"][row] = result.observed_shape.g1
                    out[f"{band}_hsm_g2"][row] = result.observed_shape.g2
                    out[f"{band}_hsm_sigma"][row] = result.moments_sigma
                else:
                    out[f"{band}_hsm_flag"][row] = True
    out.meta["bands"] = list(bands)
    return out


def set_primary_flags(objects: Table, skymap: SimSkyMap | None = None, patch: int | None = None) -> None:
    """Set ``detect_isPatchInner``, ``detect_isTractInner`` and ``detect_isPrimary`` in place.

    As Rubin's ``SetPrimaryFlagsTask`` does for coadds (meas_algorithms setPrimaryFlags.py): a
    source is primary when it is a leaf of the blend tree (a child, or a parent with no
    children) and its centroid (``x``, ``y``; with ``centroid_flag`` one pixel further in) lies
    in the inner region of the patch (`lsst.meas.madness.skymap.is_patch_inner`) and of the
    tract (`lsst.meas.madness.skymap.SimSkyMap.is_tract_inner`).

    Parameters
    ----------
    objects : `astropy.table.Table`
        Object table (`object_columns`) with ``parent``, ``deblend_nChild``, ``x``, ``y`` and
        ``centroid_flag`` filled.
    skymap : `lsst.meas.madness.skymap.SimSkyMap`, optional
        The skymap; `None`: every source counts as patch- and tract-inner.
    patch : `int`, optional
        Id of the patch the objects were measured in (required with ``skymap``).
    """
    leaf = (np.asarray(objects["parent"]) != 0) | (np.asarray(objects["deblend_nChild"]) == 0)
    if skymap is None:
        patch_inner = tract_inner = np.ones(len(objects), bool)
    else:
        if patch is None:
            raise ValueError("set_primary_flags: a skymap needs the patch id.")
        x, y = np.asarray(objects["x"], np.float64), np.asarray(objects["y"], np.float64)
        patch_inner = is_patch_inner(x, y, skymap.patch_inner_bbox(patch), objects["centroid_flag"])
        tract_inner = skymap.is_tract_inner(x, y)
    objects["detect_isPatchInner"] = patch_inner
    objects["detect_isTractInner"] = tract_inner
    objects["detect_isPrimary"] = leaf & patch_inner & tract_inner


class MadnessMeasurementTask(pipeBase.PipelineTask):
    """Measure sep Kron-aperture fluxes and GalSim HSM shapes of deblended sources, per band."""

    ConfigClass = MadnessMeasurementConfig
    _DefaultName = "madnessMeasurement"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        coadds = {ref.dataId["band"]: c for ref, c in zip(inputRefs.coadds, butlerQC.get(inputRefs.coadds))}
        fluxes = {
            ref.dataId["band"]: t
            for ref, t in zip(inputRefs.deblendedFlux, butlerQC.get(inputRefs.deblendedFlux))
        }
        catalog = butlerQC.get(inputRefs.deblendedCatalog)
        skyMap = patch = None
        if self.config.useSkyMap:
            skyMap = SimSkyMap.from_dict(butlerQC.get(inputRefs.skyMap))
            patch = int(butlerQC.quantum.dataId["patch"])
        outputs = self.run(coadds=coadds, deblendedCatalog=catalog, deblendedFlux=fluxes, skyMap=skyMap,
                           patch=patch)
        butlerQC.put(outputs, outputRefs)

    @timeMethod
    def run(self, coadds, deblendedCatalog: Table, deblendedFlux: dict[str, Table],
            skyMap: SimSkyMap | None = None, patch: int | None = None) -> pipeBase.Struct:
        """Measure every source of the deblended catalog.

        Parameters
        ----------
        coadds : `dict` [`str`, `lsst.images.MaskedImage`]
            Coadd of each band.
        deblendedCatalog : `astropy.table.Table`
            Parents and children.
        deblendedFlux : `dict` [`str`, `astropy.table.Table`]
            Heavy-footprint table of each band; the bands measured are those of the catalog
            (``deblend_flux_<band>`` columns) that have a table and a coadd.
        skyMap : `lsst.meas.madness.skymap.SimSkyMap`, optional
            Skymap whose inner patch and tract regions decide ``detect_isPrimary``
            (`set_primary_flags`); `None`: every leaf is primary.
        patch : `int`, optional
            Id of the patch measured (required with ``skyMap``).

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``objectTable``.
        """
        # Bands in the model's order, read from the catalog's deblend_flux_<band> columns (the
        # butler drops table.meta on read).
        catalog_bands = [
            c.removeprefix("deblend_flux_")
            for c in deblendedCatalog.colnames
            if c.startswith("deblend_flux_")
        ]
        bands = [b for b in catalog_bands if b in deblendedFlux and b in coadds]
        coadd = MultibandCoadd.from_masked_images(coadds, bands=bands, bad_mask_planes=self.config.badMask)
        heavy = {band: heavy_footprints_from_table(deblendedFlux[band]) for band in bands}
        self.log.info("Measuring %d sources in bands %s", len(deblendedCatalog), bands)
        objects = measure_sources(deblendedCatalog, heavy, coadd, self.config)
        set_primary_flags(objects, skyMap, patch)
        self.metadata["n_primary"] = int(objects["detect_isPrimary"].sum())
        self.metadata["n_sources"] = len(objects)
        self.metadata["n_hsm_failed"] = int(sum(objects[f"{b}_hsm_flag"].sum() for b in bands))
        return pipeBase.Struct(objectTable=objects)
