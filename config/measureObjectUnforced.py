# Coadd measurement of MADNESS outputs for the `measureObjectUnforced` label of a DRP pipeline
# (config of lsst.meas.madness.tasks.afw.measurement.MadnessMeasureMergedCoaddSourcesTask).
# The connection names are set in pipelines/DRP-madness.yaml.

# MADNESS writes each child's HeavyFootprint per band; there are no scarlet models to rebuild
# them from (the task's config refuses True).
config.doAddFootprints = False
# Keep the children's heavy footprints in the output: measureObjectForced reads them from it
# (footprintDatasetName = None, config/measureObjectForced.py).
config.doStripFootprints = False
