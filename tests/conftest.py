"""Shared fixtures: one digits model repository and one real server process per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from build_models.__main__ import main as build_main
from loadtests.process import ServiceProcess, start_service, stop_service
from loadtests.process import wait_for as wait_for_health


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model repository holding `digits` (FP32 + static INT8), built like `make models`."""
    out = tmp_path_factory.mktemp("models")
    assert build_main(["--out", str(out), "--models", "digits"]) == 0
    return out


Server = ServiceProcess


def start_server(repository: Path, log: Path, wait_for: str = "ready", **env: str) -> Server:
    """Start the service as users do; wait until /v2/health/{wait_for} ("ready", "live") is 200."""
    server = start_service(repository, log, env=env)
    try:
        wait_for_health(server, wait_for, timeout=60.0)
    except RuntimeError:
        stop_service(server)
        raise
    return server


def stop_server(server: Server) -> int:
    """SIGTERM, as an orchestrator would; returns the exit code."""
    code = stop_service(server)
    assert code is not None
    return code


@pytest.fixture(scope="session")
def live_server(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One real server over the digits repository, shared by the integration tests."""
    server = start_server(model_repository, tmp_path_factory.mktemp("server") / "server.log")
    yield server
    stop_server(server)
