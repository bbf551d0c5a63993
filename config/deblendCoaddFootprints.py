# MADNESS in place of scarlet for the `deblendCoaddFootprints` label of a DRP pipeline
# (config of lsst.meas.madness.tasks.afw.MadnessDeblendAfwTask; pipelines/DRP-madness.yaml).
# Connection names, useCellCoadds and idGenerator are set in the pipeline, as DRP sets them.

# The model: None = the packaged default LSST bundle. For another bundle give its directory,
# e.g. -c deblendCoaddFootprints:bundlePath=/path/to/bundle on the pipetask command line.
config.bundlePath = None
# The model's bands, in its order (checked against the bundle). Each needs a coadd in the
# patch: a patch missing one fails with MadnessMissingBandError (not retried).
config.bands = ["u", "g", "r", "i", "z", "y"]

# Size restrictions, as scarlet's in DRP: bigger blends are flagged and left to the parent.
config.maxNumberOfPeaks = 50
config.maxFootprintArea = 250_000
# A failing blend is flagged (deblend_failed, deblend_error) and the patch goes on.
config.catchFailures = True
# Single-peak parents are not modelled, as scarlet leaves them in DRP: they stay one record
# (parent 0, deblend_skipped_isolatedParent), measured on the image, so SetPrimaryFlagsTask
# marks them detect_isIsolated and not detect_fromBlend, as downstream selections expect.
# True would give every object MADNESS latents and a model, at the cost of that meaning.
config.processSingles = False
# Pixels with zero weight in the fit (coadd mask planes; NaN/inf and variance <= 0 always).
config.badMask = ["BAD", "CR", "NO_DATA", "SAT", "SUSPECT"]
# Children's heavy footprints share the observed flux in proportion to the models (as scarlet).
config.conserveFlux = True
