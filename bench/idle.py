"""Wait for a server to finish the work a load run left it, before the next measurement.

When wrk stops, a server may still hold requests it accepted: the minimal endpoint runs every
one of them for clients that have gone (OCR at 64 clients: 2.1 s of its core after wrk ended;
at 16: 0.6 s). Each measurement on that core (the next floor, the next server's run) would
otherwise share it with that backlog.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
WINDOW = 0.2
"""Seconds per look: a server is idle once one window costs it at most IDLE_SHARE of a core."""
IDLE_SHARE = 0.1
LONGEST = 30.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU a process has used (0 where it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_idle(pid: int) -> float:
    """Seconds until the process was idle for a whole window (at most LONGEST)."""
    started = time.perf_counter()
    used = cpu_seconds(pid)
    while time.perf_counter() - started < LONGEST:
        time.sleep(WINDOW)
        now = cpu_seconds(pid)
        if now - used <= WINDOW * IDLE_SHARE:
            return time.perf_counter() - started - WINDOW
        used = now
    return LONGEST
