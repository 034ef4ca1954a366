"""A user's `tensor` model (INT32 input, no pre/post-processing) served over v2 only."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

import build_models.__main__ as cli
from loadtests.workload import prepare
from service.manifest import MANIFEST_FILE, ModelManifest
from service.sessions import open_session
from tests.build_models.rigs import tensor_project

MODEL = "int32-counts"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The INT32 model built from .npz data, plus a copy whose model.json lies about its input."""
    root = tmp_path_factory.mktemp("tensor")
    out = root / "repo"
    config = tensor_project(root / "project", model="int32_counts")
    pair = tensor_project(root / "pair", model="pair")
    assert cli.main(["--config", str(config), "--config", str(pair), "--out", str(out)]) == 0
    shutil.copytree(out / MODEL, out / "lying-specs")
    manifest = json.loads((out / "lying-specs" / MANIFEST_FILE).read_text())
    manifest["name"] = "lying-specs"
    manifest["inputs"][0]["datatype"] = "FP32"
    (out / "lying-specs" / MANIFEST_FILE).write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def server(
    repository: Path, servers: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The lying model fails to load (so the server is never ready); the honest one serves."""
    log = tmp_path_factory.mktemp("log") / "server.log"
    process = servers.start_server(repository, log, wait_for="live")
    deadline = time.monotonic() + 60
    while httpx.get(f"{process.url}/v2/models/{MODEL}/versions/int8/ready").status_code != 200:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    yield process
    servers.stop_server(process)


def _counts() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 20, (5, 6)).astype(np.int32)


@pytest.mark.parametrize("version", ["fp32", "int8"])
@pytest.mark.parametrize("binary", [True, False])
def test_int32_input_through_tritonclient(
    server: Any, repository: Path, version: str, binary: bool
) -> None:
    """tritonclient sends INT32 counts; the answer is what ONNX Runtime gives on that file."""
    manifest = ModelManifest.read(repository / MODEL)
    counts = _counts()
    tensor = httpclient.InferInput("counts", list(counts.shape), "INT32")
    tensor.set_data_from_numpy(counts, binary_data=binary)
    output = httpclient.InferRequestedOutput("scores", binary_data=binary)
    client = httpclient.InferenceServerClient(server.host_port)
    result = client.infer(MODEL, [tensor], model_version=version, outputs=[output])
    expected = open_session(repository / MODEL / manifest.variants[version].file).run(
        None, {"counts": counts}
    )[0]
    np.testing.assert_allclose(result.as_numpy("scores"), expected, rtol=1e-5, atol=1e-5)


def test_wrong_datatype_is_a_400(server: Any) -> None:
    """FP32 sent to an INT32 input: a clear 400, not a 500."""
    body = {"inputs": [{"name": "counts", "shape": [1, 6], "datatype": "FP32", "data": [1.0] * 6}]}
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 400
    assert "INT32" in response.json()["error"]


def test_inputs_that_disagree_on_a_shared_dimension_are_a_400(server: Any) -> None:
    """a [1, 2] beside b [1, 3], where the graph names both L: the client's mistake, not a
    model failure (ONNX Runtime's broadcast error inside the graph would read as a 500)."""
    body = {
        "inputs": [
            {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
            {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
        ]
    }
    for version in ("fp32", "int8"):
        response = httpx.post(f"{server.url}/v2/models/pair/versions/{version}/infer", json=body)
        assert response.status_code == 400, response.text
        assert "dimension 'L'" in response.json()["error"]
    body["inputs"][1] = {"name": "b", "shape": [1, 2], "datatype": "FP32", "data": [3, 4]}
    answer = httpx.post(f"{server.url}/v2/models/pair/versions/fp32/infer", json=body).json()
    assert answer["outputs"][0]["data"] == [11.0]


def test_tensor_model_has_no_task_endpoint(server: Any) -> None:
    response = httpx.post(f"{server.url}/tasks/{MODEL}/classify", files={"image": ("a", b"x")})
    assert response.status_code == 404
    assert "tensor model" in response.json()["error"]


def test_specs_that_disagree_with_the_graph_fail_that_model(server: Any) -> None:
    """model.json is checked against the ONNX graph at load; the reason names the mismatch."""
    response = httpx.get(f"{server.url}/v2/models/lying-specs/versions/fp32/ready")
    assert response.status_code == 503
    error = response.json()["error"]
    assert "model.json does not match fp32/model.onnx" in error
    assert "input 'counts' is INT32, model.json says FP32" in error
    assert httpx.get(f"{server.url}/v2/models/{MODEL}/versions/int8/ready").status_code == 200


def test_load_test_workload_drives_the_tensor_model(server: Any, repository: Path) -> None:
    """The load tests send the .npz samples the build stored, binary and JSON, and get 200s."""
    workload = prepare(repository / MODEL)
    assert workload.variants == ["fp32", "int8"] and workload.samples
    sample = workload.samples[0]
    assert sample.task is None  # v2 only
    for body in (sample.infer_binary, sample.infer_json):
        response = httpx.post(
            f"{server.url}/v2/models/{MODEL}/infer", content=body.data, headers=body.headers
        )
        assert response.status_code == 200, response.text
