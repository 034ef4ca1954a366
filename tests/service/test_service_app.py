"""The app factory in-process: settings from the environment, startup failures, the OpenAPI docs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.arrivals import ARRIVALS
from service.config import Settings

ONE_DIGIT = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                         "data": [0.0] * 64}]}  # fmt: skip


def wait_ready(client: TestClient) -> None:
    """Models load in a background thread after startup; poll readiness like an orchestrator."""
    deadline = time.monotonic() + 30
    while client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "not ready in 30 s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def openapi(model_repository: Path) -> dict[str, object]:
    """The schema the running app serves, read once."""
    with TestClient(create_app(Settings(model_repository=model_repository))) as client:
        assert client.get("/docs").status_code == 200
        schema: dict[str, object] = client.get("/openapi.json").json()
    return schema


def test_variants_from_env_loads_only_those(
    monkeypatch: pytest.MonkeyPatch, model_repository: Path
) -> None:
    """EDGE_VARIANTS=fp32 serves only fp32; int8 is unknown and fp32 becomes the default."""
    monkeypatch.setenv("EDGE_VARIANTS", "fp32")
    with TestClient(create_app(Settings(model_repository=model_repository))) as client:
        wait_ready(client)
        (model,) = client.get("/v2/models").json()["models"]
        assert model["versions"] == {"fp32": "ready"}
        assert model["default_version"] == "fp32"
        response = client.post("/v2/models/digits/versions/int8/infer", json=ONE_DIGIT)
        assert response.status_code == 404
        assert client.post("/v2/models/digits/infer", json=ONE_DIGIT).json()["model_version"] == (
            "fp32"
        )


@pytest.mark.parametrize("default", ["fp32", "int8"])
def test_default_variant_from_env(
    monkeypatch: pytest.MonkeyPatch, model_repository: Path, default: str
) -> None:
    """EDGE_DEFAULT_VARIANT picks the version used when a request names none."""
    monkeypatch.setenv("EDGE_DEFAULT_VARIANT", default)
    with TestClient(create_app(Settings(model_repository=model_repository))) as client:
        wait_ready(client)
        assert client.get("/v2/models/digits").json()["parameters"]["default_version"] == default
        assert client.post("/v2/models/digits/infer", json=ONE_DIGIT).json()["model_version"] == (
            default
        )


def test_empty_repository_fails_startup_clearly(tmp_path: Path) -> None:
    """Nothing to serve is a startup error that says where it looked and how to build models."""
    with (
        pytest.raises(RuntimeError, match="no models in repository .* build_models"),
        TestClient(create_app(Settings(model_repository=tmp_path))),
    ):
        pass


def test_empty_repository_exits_the_process(tmp_path: Path) -> None:
    """`python -m service` on an empty folder exits 3 with the same message and no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "service", "--repository", str(tmp_path), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert "no models in repository" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


ROUTES = {
    "/v2/models/{model}/infer": "post",
    "/v2/models/{model}/versions/{version}/infer": "post",
    "/v2/models/{model}/compare": "post",
    "/tasks/{model}/classify": "post",
    "/tasks/{model}/recognize": "post",
    "/tasks/{model}/embed": "post",
    "/v2/models/{model}/versions/{version}/config": "get",
    "/v2/models/{model}/versions/{version}/stats": "get",
}


@pytest.mark.parametrize(("path", "method"), ROUTES.items())
def test_openapi_lists_routes(openapi: dict[str, object], path: str, method: str) -> None:
    """/docs is where a client author starts; every public route is there with a summary."""
    paths = openapi["paths"]
    assert isinstance(paths, dict) and path in paths
    assert paths[path][method]["summary"]


@pytest.mark.parametrize(
    "path",
    ["/v2/models/{model}/versions/{version}/infer", "/v2/models/{model}/compare"],
)
def test_openapi_infer_bodies_have_examples(openapi: dict[str, object], path: str) -> None:
    """The infer and compare bodies show a ready-to-send JSON example and the binary form."""
    paths = openapi["paths"]
    assert isinstance(paths, dict)
    content = paths[path]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "application/octet-stream"}
    (example,) = content["application/json"]["schema"]["examples"]
    assert example["inputs"][0]["name"] == "input"


def test_openapi_task_bodies_are_documented(openapi: dict[str, object]) -> None:
    """classify takes a multipart image upload; embed shows example sentences."""
    paths = openapi["paths"]
    assert isinstance(paths, dict)
    classify = paths["/tasks/{model}/classify"]["post"]
    assert "multipart/form-data" in classify["requestBody"]["content"]
    assert {p["name"] for p in classify["parameters"]} >= {"model", "precision", "top_k"}
    components = openapi["components"]
    assert isinstance(components, dict)
    embed = components["schemas"]["EmbedRequest"]["properties"]["sentences"]
    assert embed["examples"]


def test_requests_are_counted_in_and_out_of_the_app(model_repository: Path) -> None:
    """service.arrivals counts the HTTP requests inside the app (the lifespan is not one), so
    the protocol knows when an answer is alone: none stay counted, whatever their answer."""
    before = ARRIVALS.inside
    with TestClient(create_app(Settings(model_repository=model_repository))) as client:
        wait_ready(client)
        assert ARRIVALS.inside == before
        assert client.get("/v2/health/live").status_code == 200
        assert client.post("/v2/models/digits/infer", json=ONE_DIGIT).status_code == 200
        assert client.post("/v2/models/nope/infer", json=ONE_DIGIT).status_code == 404
        assert client.post("/v2/models/digits/infer", content=b"{").status_code == 400
        assert ARRIVALS.inside == before
