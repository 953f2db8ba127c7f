"""Peak resident memory of the current process, for the benchmark scripts."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """Return this process's peak resident set size in MB.

    Linux keeps ``ru_maxrss`` across exec, so a spawned child reports its parent's peak when
    that is higher (a parent that generated a 5M-customer sample made every stage "peak" at
    13.5 GB). ``VmHWM`` starts again at exec: read it where it exists.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
