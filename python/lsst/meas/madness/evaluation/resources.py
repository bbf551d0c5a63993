"""Wall time and peak memory of a deblender call, measured the same way for every method.

Each method runs in its own worker process (see `lsst.meas.madness.evaluation.runner`), so
the memory numbers belong to that method alone: its interpreter, libraries, model and the
arrays of the call, with nothing of the other methods'. On Linux the resident-set high-water
mark (``VmHWM``) can be reset (``/proc/self/clear_refs``, value 5), so it is reset just before
each field and read just after: ``peak_rss`` is the largest resident memory the process held
during that call, and ``peak_rss - rss_before`` what the call added on top of what was
already resident. Elsewhere ``getrusage``'s ``ru_maxrss`` (never reset) stands in for the
peak and the increase is not available.
"""

from __future__ import annotations

__all__ = ["MemoryMeter", "MemorySample", "cpu_count"]

import dataclasses
import os
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclasses.dataclass(frozen=True)
class MemorySample:
    """Memory of one measured call, bytes.

    Attributes
    ----------
    rss_before : `int` or `None`
        Resident set size just before the call.
    peak_rss : `int`
        Resident high-water mark during the call (whole process).
    resettable : `bool`
        Whether the high-water mark was reset before the call (Linux); if not, ``peak_rss``
        is the process's peak since it started.
    """

    rss_before: int | None
    peak_rss: int
    resettable: bool

    @property
    def increase(self) -> int | None:
        """Peak resident memory added by the call, bytes (`None` if not measurable)."""
        if not self.resettable or self.rss_before is None:
            return None
        return max(self.peak_rss - self.rss_before, 0)


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class MemoryMeter:
    """Resident-memory high-water mark of this process around a call.

    Examples
    --------
    >>> meter = MemoryMeter()
    >>> meter.start()
    >>> data = bytearray(50_000_000)
    >>> sample = meter.stop()
    >>> sample.peak_rss >= sample.rss_before if sample.resettable else True
    True
    """

    def __init__(self):
        self._before: int | None = None
        self._resettable = False

    @staticmethod
    def rss() -> int | None:
        """Current resident set size, bytes (`None` where /proc is absent)."""
        kib = _status_kib("VmRSS")
        return None if kib is None else kib * 1024

    def start(self) -> None:
        """Reset the high-water mark (where possible) and note the current RSS."""
        self._resettable = False
        try:
            with open(_CLEAR_REFS, "w") as f:
                f.write("5")
            self._resettable = _status_kib("VmHWM") is not None
        except OSError:
            pass
        self._before = self.rss()

    def stop(self) -> MemorySample:
        """The sample since `start`."""
        peak = None
        if self._resettable:
            kib = _status_kib("VmHWM")
            peak = None if kib is None else kib * 1024
        if peak is None:
            import resource

            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = maxrss if sys.platform == "darwin" else maxrss * 1024
            return MemorySample(rss_before=self._before, peak_rss=int(peak), resettable=False)
        return MemorySample(rss_before=self._before, peak_rss=int(peak), resettable=True)


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
