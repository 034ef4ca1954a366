"""Readiness with a corrupt variant: strict (503, Triton's default) or degraded (200, listed)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from service.errors import BadRequest
from service.manifest import ModelManifest, file_sha256
from service.runtime import ModelRuntime, State

ONE_DIGIT = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 64}]
}


def manifest(repository: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((repository / "digits" / "model.json").read_text())
    return manifest


def broken_copy(source: Path, target: Path, variants: list[str]) -> Path:
    """A copy of the digits repository with bytes flipped in `variants` (sha256 then fails)."""
    shutil.copytree(source / "digits", target / "digits")
    for variant in variants:
        onnx_file = target / "digits" / manifest(source)["variants"][variant]["file"]
        data = bytearray(onnx_file.read_bytes())
        data[100:108] = bytes(b ^ 0xFF for b in data[100:108])
        onnx_file.write_bytes(bytes(data))
    return target


def settle(client: httpx.Client) -> dict[str, str]:
    """Wait until no variant is registered or loading; their final states."""
    deadline = time.monotonic() + 60
    while True:
        states: dict[str, str] = client.get("/v2/models").json()["models"][0]["versions"]
        if not {"registered", "loading"} & set(states.values()):
            return states
        assert time.monotonic() < deadline, states
        time.sleep(0.1)


def gauge(client: httpx.Client, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not exported")


def assert_path_free(text: str, root: Path) -> None:
    """Reasons name files relative to the model folder, never where the repository lives."""
    assert str(root) not in text and "/tmp" not in text, text
    assert "Protobuf" not in text and "ONNXRuntimeError" not in text, text


@pytest.fixture(scope="module")
def default_and_other(model_repository: Path) -> tuple[str, str]:
    """The default variant as model.json says (the build picks it by timing), and another."""
    info = manifest(model_repository)
    default = info["default_variant"]
    other = next(v for v in info["variants"] if v != default)
    return default, other


def start(
    servers: ModuleType, started: list[Any], root: Path, wait_for: str, **env: str
) -> httpx.Client:
    server = servers.start_server(root, root / "server.log", wait_for=wait_for, **env)
    started.append(server)
    return httpx.Client(base_url=server.url, timeout=10)


def test_strict_readiness_is_503_naming_the_failure(
    servers: ModuleType,
    started: list[Any],
    model_repository: Path,
    tmp_path: Path,
    default_and_other: tuple[str, str],
) -> None:
    """Default (strict): one corrupt variant keeps the server unready, and says why."""
    _, other = default_and_other
    root = broken_copy(model_repository, tmp_path, [other])
    with start(servers, started, root, "live") as client:
        assert settle(client)[other] == "failed"
        response = client.get("/v2/health/ready")
        assert response.status_code == 503
        assert list(response.json()) == ["error"]
        message = response.json()["error"]
        assert f"digits/{other} failed: sha256 mismatch for {other}/model.onnx" in message
        assert_path_free(message, root)
        assert gauge(client, "edge_variants_failed") == 1


def test_degraded_readiness_serves_what_loaded(
    servers: ModuleType,
    started: list[Any],
    model_repository: Path,
    tmp_path: Path,
    default_and_other: tuple[str, str],
) -> None:
    """EDGE_STRICT_READINESS=false: ready with the failure listed; the failed variant is 503."""
    default, other = default_and_other
    root = broken_copy(model_repository, tmp_path, [other])
    with start(servers, started, root, "ready", EDGE_STRICT_READINESS="false") as client:
        assert settle(client) == {default: "ready", other: "failed"}
        body = client.get("/v2/health/ready").json()
        assert body["ready"] is True
        (failure,) = body["failed"]
        assert (failure["model"], failure["version"]) == ("digits", other)
        assert failure["reason"].startswith(f"sha256 mismatch for {other}/model.onnx")
        assert_path_free(json.dumps(body), root)

        response = client.post(f"/v2/models/digits/versions/{other}/infer", json=ONE_DIGIT)
        assert response.status_code == 503
        assert f"version '{other}' is failed" in response.json()["error"]
        assert_path_free(response.text, root)
        for path in (f"/v2/models/digits/versions/{default}/infer", "/v2/models/digits/infer"):
            response = client.post(path, json=ONE_DIGIT)
            assert response.status_code == 200, response.text
            assert response.json()["model_version"] == default

        index = client.post("/v2/repository/index").json()
        reasons = {row["version"]: row["reason"] for row in index}
        assert reasons[default] == "" and "sha256" in reasons[other]
        assert_path_free(json.dumps(index), root)

        assert gauge(client, "edge_variants_failed") == 1
        assert gauge(client, "edge_variant_ready", model="digits", version=other) == 0
        assert gauge(client, "edge_variant_ready", model="digits", version=default) == 1

        triton = httpclient.InferenceServerClient(
            url=f"{client.base_url.host}:{client.base_url.port}"
        )
        try:
            assert triton.is_server_ready()
            assert triton.is_model_ready("digits", default)
            assert not triton.is_model_ready("digits", other)
        finally:
            triton.close()


def test_degraded_readiness_needs_one_variant_per_model(
    servers: ModuleType, started: list[Any], model_repository: Path, tmp_path: Path
) -> None:
    """A model with no working variant keeps even a degraded server unready."""
    variants = sorted(manifest(model_repository)["variants"])
    root = broken_copy(model_repository, tmp_path, variants)
    with start(servers, started, root, "live", EDGE_STRICT_READINESS="false") as client:
        assert set(settle(client).values()) == {"failed"}
        response = client.get("/v2/health/ready")
        assert response.status_code == 503
        message = response.json()["error"]
        for variant in variants:
            assert f"digits/{variant} failed: sha256 mismatch" in message
        assert gauge(client, "edge_variants_failed") == len(variants)


def test_healthy_server_reports_no_failures(live_server: Any) -> None:
    """Every variant loaded: ready, an empty failure list, and the gauge at 0."""
    with httpx.Client(base_url=live_server.url, timeout=10) as client:
        assert client.get("/v2/health/ready").json() == {"ready": True, "failed": []}
        assert gauge(client, "edge_variants_failed") == 0


# --- what reasons and input errors say (real ONNX Runtime, in this process) -------------------


def runtime_for(root: Path, variant: str) -> ModelRuntime:
    spec = manifest(root)["variants"][variant]
    path = root / "digits" / spec["file"]
    model = ModelManifest.read(root / "digits")
    return ModelRuntime("digits", variant, path, file_sha256(path), 1, model.inputs, model.outputs)


def test_unparseable_file_reason_has_no_path_or_parser_text(
    model_repository: Path, tmp_path: Path, default_and_other: tuple[str, str]
) -> None:
    """A file whose checksum matches but ORT cannot parse: a short reason; the log has ORT's."""
    default, _ = default_and_other
    shutil.copytree(model_repository / "digits", tmp_path / "digits")
    onnx_file = tmp_path / "digits" / manifest(tmp_path)["variants"][default]["file"]
    onnx_file.write_bytes(onnx_file.read_bytes()[:500])
    runtime = runtime_for(tmp_path, default)
    runtime.load({"input": np.zeros((1, 1, 8, 8), np.float32)}, 1)
    assert runtime.state is State.FAILED
    assert runtime.error == (
        f"ONNX Runtime could not open {default}/model.onnx (details in the server log)"
    )


def test_ort_input_complaint_keeps_the_useful_part(
    model_repository: Path, default_and_other: tuple[str, str]
) -> None:
    """ORT's shape complaint reaches the client without its error-code prefix or advice."""
    default, _ = default_and_other
    runtime = runtime_for(model_repository, default)
    runtime.load({"input": np.zeros((1, 1, 8, 8), np.float32)}, 1)
    assert runtime.ready
    with pytest.raises(BadRequest) as refused:
        runtime.predict({"input": np.zeros((1, 1, 9, 8), np.float32)})
    assert refused.value.message == (
        f"model 'digits' version '{default}' could not run on this input: Got invalid "
        "dimensions for input: input for the following indices index: 2 Got: 9 Expected: 8"
    )
