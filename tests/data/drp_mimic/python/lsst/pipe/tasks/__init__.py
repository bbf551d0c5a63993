"""Stand-in for lsst.pipe.tasks (tests only; see drp_mimic_standins)."""
