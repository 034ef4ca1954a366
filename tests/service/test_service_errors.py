"""Bad requests over real sockets: the right status, a JSON {"error": ...}, no internals, no 500."""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

HEADER = "Inference-Header-Content-Length"
INFER = "/v2/models/digits/versions/fp32/infer"
ZEROS = [0.0] * 64
LEAKS = re.compile(r"Traceback|File \"|object at 0x|\b[A-Z]\w*(Error|Exception)\b")


def tensor(**overrides: Any) -> dict[str, Any]:
    """A valid one-digit input tensor, with some fields replaced."""
    return {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": ZEROS, **overrides}


def body(*inputs: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **fields}).encode()


def binary_body(header: dict[str, Any], raw: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body: JSON header, then raw tensor bytes."""
    head = json.dumps(header).encode()
    return head + raw, {HEADER: str(len(head)), "content-type": "application/octet-stream"}


RAW = np.zeros((1, 1, 8, 8), np.float32).tobytes()
BIN_INPUT = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"}


def sized(size: object) -> dict[str, Any]:
    return {"inputs": [{**BIN_INPUT, "parameters": {"binary_data_size": size}}]}


def assert_error(response: httpx.Response, status: int) -> str:
    """Status as expected; body exactly {"error": text}; the text names no Python internals."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert list(payload) == ["error"] and isinstance(payload["error"], str), payload
    assert payload["error"].strip()
    assert not LEAKS.search(payload["error"]), payload["error"]
    message: str = payload["error"]
    return message


@pytest.fixture(scope="module")
def http(live_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=10) as client:
        yield client


BAD_JSON_BODIES = {
    "data-length-vs-shape": body(tensor(data=[0.0] * 63)),
    "data-longer-than-shape": body(tensor(data=[0.0] * 65)),
    "wrong-input-name": body(tensor(name="image")),
    "no-inputs": body(),
    "inputs-missing": json.dumps({"id": "1"}).encode(),
    "two-inputs-same-name": body(tensor(), tensor()),
    "extra-input": body(tensor(), tensor(name="mask")),
    "unknown-datatype": body(tensor(datatype="FP33")),
    "fp64-for-fp32-model": body(tensor(datatype="FP64")),
    "int-datatype-with-floats": body(tensor(datatype="INT32", data=[0.5] * 64)),
    "non-numeric-data": body(tensor(data=["a"] * 64)),
    "null-data": body(tensor(data=None)),
    "object-data": body(tensor(data={"a": 1})),
    "nested-ragged-data": body(tensor(shape=[2, 1, 8, 8], data=[ZEROS, [0.0] * 63])),
    "negative-shape": body(tensor(shape=[-1, 1, 8, 8])),
    "shape-wrong-rank": body(tensor(shape=[1, 8, 8])),
    "shape-wrong-dims": body(tensor(shape=[1, 1, 4, 16])),
    "shape-not-ints": body(tensor(shape=["a", 1, 8, 8])),
    "empty-batch": body(tensor(shape=[0, 1, 8, 8], data=[])),
    "batch-over-max": body(tensor(shape=[65, 1, 8, 8], data=[0.0] * 64 * 65)),
    "malformed-json": b'{"inputs": [',
    "not-an-object": b"[1, 2, 3]",
    "empty-body": b"",
    "unknown-field": body(tensor(), colour="red"),
    "unknown-output": body(tensor(), outputs=[{"name": "probabilities"}]),
}


@pytest.mark.parametrize("content", BAD_JSON_BODIES.values(), ids=BAD_JSON_BODIES.keys())
def test_bad_json_request_is_400(http: httpx.Client, content: bytes) -> None:
    """Inputs that cannot fit the model are the client's fault: 400 with a reason."""
    assert_error(
        http.post(INFER, content=content, headers={"content-type": "application/json"}), 400
    )


BAD_BINARY_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "header-length-not-int": (binary_body(sized(256), RAW)[0], {HEADER: "12abc"}),
    "header-length-negative": (binary_body(sized(256), RAW)[0], {HEADER: "-5"}),
    "header-length-over-body": (binary_body(sized(256), RAW)[0], {HEADER: "100000"}),
    "header-length-cuts-json": (binary_body(sized(256), RAW)[0], {HEADER: "10"}),
    "size-past-the-end": binary_body(sized(512), RAW),
    "leftover-bytes": binary_body(sized(256), RAW + b"\0" * 16),
    "bytes-wrong-for-shape": binary_body(sized(128), RAW[:128]),
    "size-not-int": binary_body(sized("256"), RAW),
    "size-negative": binary_body(sized(-1), RAW),
    "fp64-bytes": binary_body(
        {"inputs": [{**BIN_INPUT, "datatype": "FP64", "parameters": {"binary_data_size": 512}}]},
        np.zeros(64).tobytes(),
    ),
}


@pytest.mark.parametrize(
    ("content", "headers"), BAD_BINARY_BODIES.values(), ids=BAD_BINARY_BODIES.keys()
)
def test_bad_binary_request_is_400(
    http: httpx.Client, content: bytes, headers: dict[str, str]
) -> None:
    """The binary extension's lengths are checked against the body before any tensor is read."""
    assert_error(http.post(INFER, content=content, headers=headers), 400)


@pytest.mark.parametrize(
    ("encoding", "content"),
    [("br", body(tensor())), ("gzip", b"not gzip at all"), ("deflate", b"\x00\x01\x02")],
)
def test_bad_content_encoding_is_400(http: httpx.Client, encoding: str, content: bytes) -> None:
    """Unknown or corrupt compression is a bad request, not a crash."""
    response = http.post(INFER, content=content, headers={"content-encoding": encoding})
    assert_error(response, 400)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/models/nope/infer"),
        ("POST", "/v2/models/nope/versions/fp32/infer"),
        ("POST", "/v2/models/digits/versions/fp16/infer"),
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/digits/versions/fp16"),
        ("GET", "/v2/models/nope/ready"),
        ("GET", "/v2/models/digits/versions/fp16/ready"),
        ("GET", "/v2/models/digits/versions/fp16/config"),
        ("GET", "/v2/models/digits/versions/fp16/stats"),
        ("POST", "/v2/models/nope/compare"),
        ("POST", "/tasks/nope/classify"),
        ("POST", "/tasks/digits/recognize"),
        ("POST", "/tasks/digits/embed"),
        ("GET", "/no/such/route"),
    ],
)
def test_unknown_model_version_or_task_is_404(http: httpx.Client, method: str, path: str) -> None:
    """Unknown models, versions, and task endpoints of another task all say 404."""
    files = {"image": ("x.png", png_bytes())} if path.endswith(("classify", "recognize")) else None
    content = body(tensor()) if path.startswith("/v2") and method == "POST" else None
    json_body = {"sentences": ["hello"]} if path.endswith("embed") else None
    response = http.request(method, path, content=content, files=files, json=json_body)
    assert_error(response, 404)


def png_bytes(size: int = 8, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), 255).save(buffer, format=format)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("upload", "status"),
    [(b"definitely not an image", 415), (png_bytes()[:40], 400), (b"", 400)],
    ids=["garbage", "truncated-png", "empty"],
)
def test_undecodable_image_is_4xx(http: httpx.Client, upload: bytes, status: int) -> None:
    """Not a PNG/JPEG at all: 415; a broken or empty PNG: 400. Both the client's fault."""
    response = http.post("/tasks/digits/classify", files={"image": ("x.png", upload)})
    assert_error(response, status)


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("/tasks/digits/classify", {"files": {"picture": ("x.png", png_bytes())}}),
        ("/tasks/digits/classify", {}),
        ("/tasks/digits/classify", {"data": {"image": "not a file"}}),
        ("/tasks/digits/classify?top_k=0", {"files": {"image": ("x.png", png_bytes())}}),
        ("/tasks/digits/classify?top_k=101", {"files": {"image": ("x.png", png_bytes())}}),
        ("/tasks/digits/classify?top_k=three", {"files": {"image": ("x.png", png_bytes())}}),
    ],
    ids=["wrong-field", "no-body", "text-field", "top-k-zero", "top-k-over", "top-k-word"],
)
def test_task_validation_is_422(http: httpx.Client, path: str, kwargs: dict[str, Any]) -> None:
    """The task calls' own validation says 422, as FastAPI's does, in the same error shape."""
    assert_error(http.post(path, **kwargs), 422)


def test_broken_multipart_is_400(http: httpx.Client) -> None:
    """A multipart body without a boundary cannot be parsed: the client's fault."""
    response = http.post(
        "/tasks/digits/classify", content=b"x", headers={"content-type": "multipart/form-data"}
    )
    assert "boundary" in assert_error(response, 400)


def test_recognize_ignores_top_k(http: httpx.Client) -> None:
    """top_k belongs to classify; on another task's call it is not validated (FastAPI's way)."""
    response = http.post("/tasks/digits/recognize?top_k=x", files={"image": png_bytes()})
    assert "no 'recognize' task" in assert_error(response, 404)


def test_wrong_method_is_405(http: httpx.Client) -> None:
    """GET on an infer route is not a server error either."""
    assert_error(http.get(INFER), 405)


def test_server_survives_bad_requests(
    http: httpx.Client,
    live_server: Any,
    held_out: tuple[np.ndarray, np.ndarray],
    reference: Callable[[str, np.ndarray], np.ndarray],
) -> None:
    """After every bad request above the process is up, answers correctly, and logged no crash."""
    assert live_server.process.poll() is None
    x = held_out[0][:2]
    response = http.post(
        INFER, json={"inputs": [tensor(shape=[2, 1, 8, 8], data=x.ravel().tolist())]}
    )
    assert response.status_code == 200, response.text
    logits = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(2, 10)
    np.testing.assert_allclose(logits, reference("fp32", x), rtol=1e-5, atol=1e-5)
    assert "Traceback" not in live_server.log.read_text()


# --- 413: a second server with a 2 KiB body limit ----------------------------------------------


@pytest.fixture(scope="module")
def small_server(
    servers: ModuleType, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    log = tmp_path_factory.mktemp("small") / "server.log"
    server = servers.start_server(model_repository, log, EDGE_MAX_REQUEST_BYTES="2048")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client
    servers.stop_server(server)


def chunks(first: bytes, total: int = 8192, size: int = 512) -> Iterator[bytes]:
    """A streamed body with no Content-Length (httpx sends it chunked)."""
    yield first
    for _ in range(total // size):
        yield b" " * size


MULTIPART_START = b'--xx\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'


@pytest.mark.parametrize("path", [INFER, "/v2/models/digits/compare", "/tasks/digits/classify"])
def test_body_over_limit_is_413(small_server: httpx.Client, path: str) -> None:
    """A declared Content-Length over EDGE_MAX_REQUEST_BYTES is refused before reading."""
    assert_error(small_server.post(path, content=b" " * 4096), 413)


@pytest.mark.parametrize(
    ("path", "content_type", "first"),
    [
        (INFER, "application/json", b'{"inputs": [], "padding": "'),
        ("/tasks/digits/classify", "multipart/form-data; boundary=xx", MULTIPART_START),
    ],
    ids=["infer", "classify"],
)
def test_streamed_body_over_limit_is_413(
    small_server: httpx.Client, path: str, content_type: str, first: bytes
) -> None:
    """A chunked body is counted as it arrives and cut off at the limit."""
    response = small_server.post(
        path, content=chunks(first), headers={"content-type": content_type}
    )
    assert_error(response, 413)


def test_gzip_bomb_is_413(small_server: httpx.Client) -> None:
    """The limit applies to the decompressed body too."""
    content = gzip.compress(body(tensor(data=[0.0] * 64), padding=" " * 100_000))
    assert len(content) < 2048
    response = small_server.post(INFER, content=content, headers={"content-encoding": "gzip"})
    assert_error(response, 413)


def test_small_server_still_serves_small_bodies(small_server: httpx.Client) -> None:
    """The limit only bites above the limit."""
    assert small_server.post(INFER, content=body(tensor())).status_code == 200


# --- 503: a repository whose int8 file is corrupt -------------------------------------------


@pytest.fixture(scope="module")
def broken_server(
    servers: ModuleType, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """int8/model.onnx has flipped bytes, so its sha256 check fails; fp32 is intact."""
    root = tmp_path_factory.mktemp("broken")
    shutil.copytree(model_repository / "digits", root / "digits")
    onnx_file = root / "digits" / "int8" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[100:108] = bytes(b ^ 0xFF for b in data[100:108])
    onnx_file.write_bytes(bytes(data))
    server = servers.start_server(root, root / "server.log", wait_for="live")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        deadline = time.monotonic() + 30
        while client.get("/v2/models").json()["models"][0]["versions"] != {
            "fp32": "ready",
            "int8": "failed",
        }:
            assert time.monotonic() < deadline, "variants did not settle"
            time.sleep(0.1)
        yield client
    servers.stop_server(server)


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/v2/health/ready", {}),
        ("GET", "/v2/models/digits/versions/int8/ready", {}),
        ("POST", "/v2/models/digits/versions/int8/infer", {"content": body(tensor())}),
        ("POST", "/v2/models/digits/compare", {"content": body(tensor())}),
        ("POST", "/tasks/digits/classify?precision=int8", {"files": {"image": png_bytes()}}),
    ],
)
def test_failed_variant_is_503(
    broken_server: httpx.Client, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    """Not ready is 503 with the reason, so an operator sees why from the response."""
    message = assert_error(broken_server.request(method, path, **kwargs), 503)
    assert "int8" in message


def test_default_version_is_a_variant_that_loaded(broken_server: httpx.Client) -> None:
    """The default is chosen on the box among the variants that loaded: int8 broken, fp32."""
    response = broken_server.get("/v2/models/digits/ready")
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "fp32"
    reason = broken_server.get("/v2/models/digits").json()["parameters"]["default_reason"]
    assert reason.startswith("fp32 is the default"), reason


def test_failed_variant_reason_names_the_checksum(broken_server: httpx.Client) -> None:
    """The reason says what is wrong with the file."""
    message = assert_error(broken_server.get("/v2/models/digits/versions/int8/ready"), 503)
    assert "sha256" in message
    index = broken_server.post("/v2/repository/index").json()
    # Triton's states: a variant that failed to load is UNAVAILABLE, with the reason.
    states = {row["version"]: (row["state"], row["reason"][:15]) for row in index}
    assert states == {"fp32": ("READY", ""), "int8": ("UNAVAILABLE", "sha256 mismatch")}


def test_intact_variant_still_serves(broken_server: httpx.Client) -> None:
    """One broken file does not take the other variant down."""
    assert broken_server.get("/v2/health/live").status_code == 200
    assert broken_server.get("/v2/models/digits/versions/fp32/ready").status_code == 200
    response = broken_server.post(INFER, content=body(tensor()))
    assert response.status_code == 200, response.text
    response = broken_server.post(
        "/tasks/digits/classify?precision=fp32", files={"image": png_bytes()}
    )
    assert response.status_code == 200, response.text
