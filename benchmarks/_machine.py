"""Machine readings shared by the benchmarks (run them as scripts: this folder is then on sys.path)."""

from __future__ import annotations

import os
import time

__all__ = ["busy_cpus"]


def busy_cpus(interval: float = 0.5) -> float | None:
    """CPUs' worth of time other processes used over ``interval`` (from /proc/stat), before we start working."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    try:
        (t0, i0), _ = read(), time.sleep(interval)
        t1, i1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return (1 - (i1 - i0) / max(t1 - t0, 1)) * (os.cpu_count() or 1)
