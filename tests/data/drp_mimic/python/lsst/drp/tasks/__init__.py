"""Stand-in for lsst.drp.tasks (tests only; see drp_mimic_standins)."""
