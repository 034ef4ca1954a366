"""Shared fixtures: one digits model repository and one real server process per test session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from build_models.__main__ import main as build_main


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model repository holding `digits` (FP32 + static INT8), built like `make models`."""
    out = tmp_path_factory.mktemp("models")
    assert build_main(["--out", str(out), "--models", "digits"]) == 0
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A `python -m service` process listening on a loopback port."""

    url: str
    host_port: str
    process: subprocess.Popen[bytes]
    log: Path


def start_server(repository: Path, log: Path, wait_for: str = "ready", **env: str) -> Server:
    """Start the service as users do; wait until /v2/health/{wait_for} ("ready", "live") is 200."""
    port = free_port()
    environment = {**os.environ, "EDGE_MODEL_REPOSITORY": str(repository), **env}
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
        env=environment,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/v2/health/{wait_for}", timeout=1).status_code == 200:
                return Server(url, f"127.0.0.1:{port}", process, log)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(Server(url, f"127.0.0.1:{port}", process, log))
    raise RuntimeError(f"server not {wait_for} in 60 s:\n{log.read_text()}")


def stop_server(server: Server) -> int:
    """SIGTERM, as an orchestrator would; returns the exit code."""
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        return server.process.wait()


@pytest.fixture(scope="session")
def live_server(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One real server over the digits repository, shared by the integration tests."""
    server = start_server(model_repository, tmp_path_factory.mktemp("server") / "server.log")
    yield server
    stop_server(server)
