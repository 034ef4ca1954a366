"""SIGTERM, as Kubernetes, systemd and podman send it: drain, then exit 0."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import httpx


def test_sigterm_exits_zero_after_graceful_shutdown(
    model_repository: Path, servers: ModuleType, tmp_path: Path
) -> None:
    """uvicorn re-raises the signal after draining; the service turns that into exit code 0."""
    server = servers.start_server(model_repository, tmp_path / "server.log")
    response = httpx.post(
        f"{server.url}/v2/models/digits/infer",
        json={
            "inputs": [
                {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0] * 64}
            ]
        },
    )
    assert response.status_code == 200
    assert servers.stop_server(server) == 0
    assert "Application shutdown complete" in server.log.read_text()
