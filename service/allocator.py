"""Giving freed heap back to the OS once a burst is over, without slowing the runs in it.

glibc keeps freed memory in its heaps (one per thread that allocated) so the next tensor of
the same size costs no page faults. That is what a busy server wants, but after a burst of
multi-megabyte tensors and JSON buffers the process keeps its peak RSS. Fixing glibc's mmap
and trim thresholds instead (what this module did before) returned the memory but cost every
OCR run its page faults: ~24 -> ~28 ms a run (bench/README.md). So the heaps are trimmed
(malloc_trim), in a worker thread, once a quiet period of IDLE_SECONDS has passed with nothing
in flight and no request finished: 0.5 to 1 s after the last request.
No effect (and no error) where the C library is not glibc.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable
from functools import cache

from service.memory import libc

# Quiet time after the last request before the heaps are trimmed.
IDLE_SECONDS = 0.5


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (musl, macOS)."""
    try:
        function = libc().malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim: Callable[[int], int] = function
    return trim


def trim_heaps() -> bool:
    """Return every heap's free pages to the OS; True if any memory was released."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


class IdleTrim:
    """Counts requests in flight (event loop only); trims the heaps when they stay at zero."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self.busy = 0
        self.trims = 0
        self._finished = 0
        self._finished_at_timer = 0
        self._timer: asyncio.TimerHandle | None = None
        self._trimming: asyncio.Future[bool] | None = None
        self._enabled = _malloc_trim() is not None

    def enter(self) -> None:
        """A request started: no trim while it is in flight."""
        self.busy += 1

    def leave(self) -> None:
        """Cheap on the hot path: with a timer pending (steady traffic) only counts."""
        self.busy -= 1
        self._finished += 1
        if self.busy or self._timer is not None or not self._enabled:
            return
        self._finished_at_timer = self._finished
        self._timer = asyncio.get_running_loop().call_later(self.idle_seconds, self._fire)

    def _fire(self) -> None:
        """Trim if no request ran since the timer was set; else wait one more quiet period."""
        loop = asyncio.get_running_loop()
        self._timer = None
        if self.busy or (self._trimming is not None and not self._trimming.done()):
            return  # busy: the next time it goes quiet schedules another trim
        if self._finished != self._finished_at_timer:
            self._finished_at_timer = self._finished
            self._timer = loop.call_later(self.idle_seconds, self._fire)
            return
        self._trimming = loop.run_in_executor(None, trim_heaps)
        self.trims += 1

    def cancel(self) -> None:
        """Drop a pending trim (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
