"""`python -m service` as a child process on a loopback port: start, wait for health, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class ServiceProcess:
    """A service at `url`: started here (process, log) or already running elsewhere."""

    url: str
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def host_port(self) -> str:
        """host:port, as tritonclient and Prometheus targets want it."""
        return self.url.removeprefix("http://")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS from /proc; 0 where it cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(
    repository: Path,
    log: Path,
    *,
    log_level: str = "info",
    env: Mapping[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> ServiceProcess:
    """Start the service as users do, on a free loopback port; output goes to `log`."""
    port = free_port()
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
             "--repository", str(repository), "--log-level", log_level],
            env={**os.environ, **(env or {})},
            stdout=handle,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )  # fmt: skip
    return ServiceProcess(f"http://127.0.0.1:{port}", process, log)


def wait_for(
    service: ServiceProcess, health: str = "ready", timeout: float = 60.0, interval: float = 0.1
) -> None:
    """Poll /v2/health/{health} ("ready" or "live") until 200; fail early if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process is not None and service.process.poll() is not None:
            raise RuntimeError(f"the service exited during start-up:\n{_tail(service)}")
        try:
            if httpx.get(f"{service.url}/v2/health/{health}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(interval)
    raise RuntimeError(f"the service was not {health} within {timeout:.0f} s:\n{_tail(service)}")


def stop_service(service: ServiceProcess) -> int | None:
    """SIGTERM, as an orchestrator sends it; the exit code (None if not started here)."""
    if service.process is None:
        return None
    service.process.send_signal(signal.SIGTERM)
    try:
        return service.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.process.kill()
        return service.process.wait()


def _tail(service: ServiceProcess) -> str:
    return service.log.read_text()[-4000:] if service.log and service.log.exists() else ""
