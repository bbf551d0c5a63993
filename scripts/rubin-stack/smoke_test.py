"""Smoke test of a Rubin stack built by scripts/build-rubin-stack.sh.

    source PREFIX/env.sh && .venv/bin/python scripts/rubin-stack/smoke_test.py [--meas-base]

Imports afw's image/table/detection modules, builds an ExposureF with a
PhotoCalib, a SourceCatalog parent with two peaks and a HeavyFootprint child,
and round-trips both through FITS. With --meas-base (or when lsst.meas.base
imports) it also measures a two-source TestDataset blend with
SingleFrameMeasurementTask. Prints one line per check; exits non-zero on the
first failure.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time


def check_afw() -> None:
    t0 = time.time()
    import lsst.afw.detection as afwDet
    import lsst.afw.geom as afwGeom
    import lsst.afw.image as afwImage
    import lsst.afw.table as afwTable
    import lsst.geom as geom
    import numpy as np

    print(f"import lsst.afw.image/table/detection: ok ({time.time() - t0:.1f} s)", flush=True)

    bbox = geom.Box2I(geom.Point2I(10, 20), geom.Extent2I(40, 30))
    exp = afwImage.ExposureF(bbox)
    exp.image.array[:] = np.random.default_rng(1).normal(0.0, 1.0, exp.image.array.shape)
    exp.variance.array[:] = 1.0
    exp.setPhotoCalib(afwImage.PhotoCalib(2.0))
    assert exp.photoCalib.instFluxToNanojansky(3.0) == 6.0

    schema = afwTable.SourceTable.makeMinimalSchema()
    cat = afwTable.SourceCatalog(schema)
    parent = cat.addNew()
    spans = afwGeom.SpanSet(bbox)
    fp = afwDet.Footprint(spans, bbox)
    fp.addPeak(20, 30, 10.0)
    fp.addPeak(35, 40, 8.0)
    parent.setFootprint(fp)
    child = cat.addNew()
    child.setParent(parent.getId())
    cfp = afwDet.Footprint(afwGeom.SpanSet(geom.Box2I(geom.Point2I(15, 25), geom.Extent2I(10, 10))), bbox)
    cfp.addPeak(20, 30, 10.0)
    heavy = afwDet.makeHeavyFootprint(cfp, exp.maskedImage)
    child.setFootprint(heavy)
    assert child.getFootprint().isHeavy()

    with tempfile.TemporaryDirectory() as tmp:
        exp.writeFits(os.path.join(tmp, "exp.fits"))
        back = afwImage.ExposureF(os.path.join(tmp, "exp.fits"))
        assert np.array_equal(back.image.array, exp.image.array)
        assert back.photoCalib.getCalibrationMean() == 2.0
        cat.writeFits(os.path.join(tmp, "cat.fits"))
        cat2 = afwTable.SourceCatalog.readFits(os.path.join(tmp, "cat.fits"))
        assert len(cat2) == 2 and cat2[1].getParent() == cat2[0].getId()
        assert len(cat2[0].getFootprint().getPeaks()) == 2
        assert cat2[1].getFootprint().isHeavy()
    print("ExposureF/PhotoCalib/SourceCatalog/Footprint/HeavyFootprint FITS round trip: ok", flush=True)


def check_meas_base() -> None:
    t0 = time.time()
    import lsst.geom as geom
    import lsst.meas.base as measBase
    import lsst.meas.base.tests as mbTests

    print(f"import lsst.meas.base: ok ({time.time() - t0:.1f} s)", flush=True)
    bbox = geom.Box2I(geom.Point2I(0, 0), geom.Extent2I(100, 100))
    ds = mbTests.TestDataset(bbox)
    with ds.addBlend() as family:
        family.addChild(instFlux=1e5, centroid=geom.Point2D(45, 50))
        family.addChild(instFlux=8e4, centroid=geom.Point2D(55, 52))
    config = measBase.SingleFrameMeasurementConfig()
    config.plugins.names = ["base_SdssCentroid", "base_PsfFlux", "base_SdssShape"]
    config.slots.centroid = "base_SdssCentroid"
    config.slots.shape = "base_SdssShape"
    config.slots.psfFlux = "base_PsfFlux"
    for slot in ("apFlux", "gaussianFlux", "modelFlux", "calibFlux", "psfShape"):
        setattr(config.slots, slot, None)
    schema = mbTests.TestDataset.makeMinimalSchema()
    task = measBase.SingleFrameMeasurementTask(schema=schema, config=config)
    exposure, catalog = ds.realize(10.0, task.schema, randomSeed=0)
    task.run(catalog, exposure)
    fluxes = [round(r.get("base_PsfFlux_instFlux")) for r in catalog if r.getParent() != 0]
    print(f"SingleFrameMeasurementTask on a TestDataset blend (noise replacer on): ok, child PSF fluxes {fluxes}")


def main() -> int:
    check_afw()
    if "--meas-base" in sys.argv:
        check_meas_base()
    return 0


if __name__ == "__main__":
    sys.exit(main())
