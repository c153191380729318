"""How much CPU other processes used while a measurement ran (for honest benchmarks).

On a shared 2-core box one busy neighbour can slow a 2-thread OpenMP run several
times over, so benchmarks report this next to their timings.
"""

from __future__ import annotations

import os
import time


class OtherLoad:
    """CPU cores that *other* processes (and hypervisor steal) used while a measurement ran.

    This process and its live children (e.g. a model server it started) do not count.

    On a shared 2-core box one busy neighbour can slow a 2-thread OpenMP run several
    times over, so the table reports this next to the timings (Linux only, else None).
    """

    def __enter__(self):
        self.cores, self._start = None, _cpu_counters()
        return self

    def __exit__(self, *exc):
        end = _cpu_counters()
        if self._start and end:
            (busy0, own0, wall0), (busy1, own1, wall1) = self._start, end
            self.cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
        return False


def _cpu_counters() -> tuple[float, float, float] | None:
    """(machine busy CPU-seconds incl. steal, this process's CPU-seconds, wall seconds)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return busy, t.user + t.system + _descendants_cpu(), time.perf_counter()


def _descendants_cpu() -> float:
    """CPU-seconds of this process's live children (a server it started is part of the measurement)."""
    try:
        import psutil
    except ImportError:
        return 0.0
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total
