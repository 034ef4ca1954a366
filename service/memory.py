"""Process and container memory readings (Linux /proc and cgroup files; absent where not there)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_PAGE = 4096
try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
    pass

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 reports "no limit" as a huge page-rounded number (2**63 - 4096 on x86_64).
_V1_UNLIMITED = 2**62


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
        return int(fields[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


@cache
def libc() -> ctypes.CDLL:
    """The process's C library, opened once (OSError where it cannot be found)."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


@cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    """glibc >= 2.33's mallinfo2, or None (musl, macOS, old glibc)."""
    try:
        function = libc().mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    mallinfo2: Callable[[], _MallInfo2] = function
    return mallinfo2


def heap_bytes() -> int | None:
    """Bytes allocated with malloc and still in use, over all arenas (None without glibc).

    Unlike RSS, this does not depend on what was freed before (freed heap that a later
    allocation reuses does not show up as RSS growth) nor on shared-library pages faulted in.
    """
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return None
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


@dataclass(frozen=True)
class CgroupMemory:
    """The memory cgroup this process is charged to; None where the kernel has no such file."""

    version: int
    usage_bytes: int
    """memory.current (v2) / memory.usage_in_bytes (v1): includes page cache."""
    limit_bytes: int | None
    """memory.max / memory.limit_in_bytes; None when there is no limit ('max')."""
    peak_bytes: int | None
    """memory.peak (v2, kernel >= 5.19) / memory.max_usage_in_bytes (v1)."""
    working_set_bytes: int | None
    """usage minus inactive file cache: what the OOM killer cannot reclaim (as cAdvisor)."""


def cgroup_memory(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> CgroupMemory | None:
    """Read the process's memory cgroup (v2 first, then v1); None outside any readable cgroup.

    In a container with its own cgroup namespace the cgroup is the mount's root; on a host (or
    with the host namespace) it is the path in /proc/self/cgroup, so that path is tried first.
    """
    v2_path, v1_path = _own_cgroup_paths(proc_cgroup)
    for directory in _candidates(root, v2_path):
        usage = _read_int(directory / "memory.current")
        if usage is not None:
            return CgroupMemory(
                version=2,
                usage_bytes=usage,
                limit_bytes=_read_int(directory / "memory.max"),  # "max" reads as None
                peak_bytes=_read_int(directory / "memory.peak"),
                working_set_bytes=_working_set(usage, directory / "memory.stat", "inactive_file"),
            )
    for directory in _candidates(root / "memory", v1_path):
        usage = _read_int(directory / "memory.usage_in_bytes")
        if usage is not None:
            limit = _read_int(directory / "memory.limit_in_bytes")
            return CgroupMemory(
                version=1,
                usage_bytes=usage,
                limit_bytes=limit if limit is not None and limit < _V1_UNLIMITED else None,
                peak_bytes=_read_int(directory / "memory.max_usage_in_bytes"),
                working_set_bytes=_working_set(
                    usage, directory / "memory.stat", "total_inactive_file"
                ),
            )
    return None


def _own_cgroup_paths(proc_cgroup: Path) -> tuple[str, str]:
    """(v2 path, v1 memory path) from /proc/self/cgroup, "/" where not listed."""
    v2, v1 = "/", "/"
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path or "/"
        elif "memory" in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _candidates(mount: Path, own: str) -> list[Path]:
    nested = mount / own.lstrip("/")
    return [nested, mount] if nested != mount else [mount]


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _working_set(usage: int, stat: Path, key: str) -> int | None:
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return max(usage - int(value), 0)
    except (OSError, ValueError):
        return None
    return None
