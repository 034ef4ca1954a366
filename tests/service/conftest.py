"""Fixtures for the service tests: the held-out digits and ONNX Runtime run in-process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from build_models.plugins.digits import HeldOut, held_out
from service.sessions import open_session

VARIANTS = ("fp32", "int8")

Reference = Callable[[str, np.ndarray], np.ndarray]


@pytest.fixture(scope="session")
def digits() -> HeldOut:
    """load_digits with the build's fixed split; `digits.test` is the held-out set."""
    return held_out()


@pytest.fixture(scope="session", name="held_out")
def held_out_arrays(digits: HeldOut) -> tuple[np.ndarray, np.ndarray]:
    """Held-out images as the model takes them (N,1,8,8 FP32, ink 0..16) and their labels."""
    return digits.images[digits.test], digits.labels[digits.test]


@pytest.fixture(scope="session")
def reference(model_repository: Path) -> Reference:
    """ONNX Runtime in this process on the very file the server loaded: the expected logits."""

    @cache
    def session(variant: str) -> ort.InferenceSession:
        return open_session(model_repository / "digits" / variant / "model.onnx")

    def run(variant: str, x: np.ndarray) -> np.ndarray:
        logits: np.ndarray = session(variant).run(["logits"], {"input": x})[0]
        return logits

    return run


@pytest.fixture(scope="session")
def servers(pytestconfig: pytest.Config) -> ModuleType:
    """tests/conftest.py itself (start_server, stop_server): every conftest is module "conftest"."""
    module = pytestconfig.pluginmanager.get_plugin(str(Path(__file__).parents[1] / "conftest.py"))
    assert isinstance(module, ModuleType)
    return module


@pytest.fixture(scope="module")
def started(servers: ModuleType) -> Iterator[list[Any]]:
    """Servers started by this module, stopped (by PID, SIGTERM) at its end."""
    running: list[Any] = []
    yield running
    for server in running:
        assert servers.stop_server(server) == 0


@pytest.fixture(scope="module")
def client(live_server: Any) -> Iterator[httpclient.InferenceServerClient]:
    """tritonclient.http, unchanged, pointed at this module's live server."""
    triton = httpclient.InferenceServerClient(url=live_server.host_port)
    yield triton
    triton.close()
