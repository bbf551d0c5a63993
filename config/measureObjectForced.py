# Forced coadd photometry on MADNESS footprints, for the `measureObjectForced` label
# (config of lsst.drp.tasks.forcedPhotCoadd.ForcedPhotCoaddTask).

# Take each source's (heavy) footprint from the in-band unforced measurement catalog
# (refCatInBand), which keeps MADNESS's children's heavy footprints
# (config/measureObjectUnforced.py: doStripFootprints = False). The default,
# "LsstScarletModelData", needs scarlet's models, which MADNESS does not write.
# ("DeblendedFlux" would read MADNESS's per-band catalog directly, but ForcedPhotCoaddTask's
# runQuantum pops the input as "footprintCatIndBand" while the connection is
# "footprintCatInBand" (lsst/drp_tasks dc28b94, forcedPhotCoadd.py line 243), so that choice fails at run time.)
config.footprintDatasetName = None
