"""Stand-in for lsst.pipe.tasks.multiBand (tests only): connections and config, no algorithm."""

from drp_mimic_standins import (  # noqa: F401
    DetectCoaddSourcesTask,
    MeasureMergedCoaddSourcesConfig,
    MeasureMergedCoaddSourcesConnections,
    MeasureMergedCoaddSourcesTask,
)
