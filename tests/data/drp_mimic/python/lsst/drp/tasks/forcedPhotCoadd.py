"""Stand-in for lsst.drp.tasks.forcedPhotCoadd (tests only): connections and config, no algorithm."""

from drp_mimic_standins import (
    ForcedPhotCoaddConfig,
    ForcedPhotCoaddConnections,
    ForcedPhotCoaddTask,
)  # noqa: F401
