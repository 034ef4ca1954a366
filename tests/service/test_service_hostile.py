"""Hostile input over real sockets: every class gets the 4xx that names its limit, none a 500.

One server of its own (a few limits lowered so the digits model can reach them, a short body
timeout), hit with each class in turn; afterwards it is alive, answers a real request, and its
RSS has not grown by more than a bounded amount. The table of classes, statuses and RSS is
printed (pytest -s) and written to hostile.json beside the server log.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from loadtests.process import rss_bytes

HEADER = "Inference-Header-Content-Length"
INFER = "/v2/models/digits/versions/fp32/infer"
COMPARE = "/v2/models/digits/compare"
OUTPUT_CAP = 100  # EDGE_MAX_JSON_OUTPUT_VALUES for this server: 11 rows of 10 logits pass it
BODY_TIMEOUT = 2.0
# Generous: the interpreter's allocator keeps some arenas after a burst of large bodies.
RSS_GROWTH_LIMIT = 100 * 1024 * 1024


@pytest.fixture(scope="module")
def hostile_server(
    model_repository: Path, servers: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    server = servers.start_server(
        model_repository,
        log,
        EDGE_MAX_JSON_OUTPUT_VALUES=str(OUTPUT_CAP),
        EDGE_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
    )
    yield server
    servers.stop_server(server)


def tensor_json(shape: list[int], data: Any, datatype: str = "FP32") -> bytes:
    return json.dumps(
        {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]}
    ).encode()


def binary(
    shape: list[int], raw: bytes, datatype: str = "FP32", **fields: Any
) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape,
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            **fields,
        }
    ).encode()
    return header + raw, {HEADER: str(len(header)), "content-type": "application/octet-stream"}


def png_header_bomb(width: int, height: int) -> bytes:
    """A small, valid PNG that declares width x height grey pixels (one zlib stream of zeros)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\0" * (width + 1)  # filter byte + pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def nested_bytes(depth: int) -> bytes:
    """A BYTES tensor whose data nests `depth` lists deep (the JSON parser allows ~1000)."""
    data = "[" * depth + '"x"' + "]" * depth
    return (
        '{"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ' + data + "}]}"
    ).encode()


def image_bytes(fmt: str, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (255, 255, 255)).save(buffer, format=fmt)
    return buffer.getvalue()


@contextmanager
def part_of_a_body(url: str, path: str, timeout: float) -> Iterator[socket.socket]:
    """A connection that sent headers promising 1000 bytes, and 10 of them."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            'Content-Length: 1000\r\n\r\n{"inputs":'.encode()
        )
        yield sock


def slow_body(url: str) -> int:
    """Part of a body, then silence: the status the server answers."""
    with part_of_a_body(url, INFER, BODY_TIMEOUT * 5) as sock:
        reply = sock.recv(4096).decode("latin-1")
    return int(reply.split(" ", 2)[1])


def hang_up_mid_body(url: str, path: str) -> None:
    """Part of a body, then the connection closed."""
    with part_of_a_body(url, path, 5):
        time.sleep(0.2)


Case = Callable[[httpx.Client], httpx.Response]
NAN = np.full((1, 1, 8, 8), np.nan, np.float32).tobytes()


def post(path: str, content: bytes, headers: dict[str, str] | None = None) -> Case:
    return lambda http: http.post(path, content=content, headers=headers)


def post_binary(path: str, pair: tuple[bytes, dict[str, str]]) -> Case:
    return lambda http: http.post(path, content=pair[0], headers=pair[1])


def upload(path: str, data: bytes) -> Case:
    return lambda http: http.post(path, files={"image": ("x", data)})


def embed(sentences: list[str]) -> Case:
    return lambda http: http.post("/tasks/digits/embed", json={"sentences": sentences})


def big_failing_headers(count: int, values: int) -> Case:
    """Binary requests whose JSON headers are megabytes, each different, each refused."""

    def send(http: httpx.Client) -> httpx.Response:
        raw = np.zeros((1, 1, 8, 8), np.float32).tobytes()
        for index in range(count):
            extra = {"name": "extra", "shape": [values], "datatype": "FP32",
                     "data": [index] * values}  # fmt: skip
            header = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 1, 8, 8],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": len(raw)},
                        },
                        extra,
                    ]
                }  # fmt: skip
            ).encode()
            response = http.post(INFER, content=header + raw, headers={HEADER: str(len(header))})
        return response

    return send


def many_inputs(count: int) -> bytes:
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}
    return json.dumps({"inputs": [tensor] * count}).encode()


# (class, request, expected status, words the error must contain)
CASES: list[tuple[str, Case, int, str]] = [
    ("superscript-header-length",  # latin-1 0xb2 is "²", a digit to str.isdigit
     lambda http: http.post(INFER, content=b"{}", headers={HEADER: b"\xb2"}), 400, HEADER),
    ("superscript-top-k", lambda http: http.post(
        "/tasks/digits/classify", params={"top_k": "\u00b2"},
        files={"image": ("x", image_bytes("PNG"))}), 422, "top_k"),
    ("string-false-binary-flag", post_binary(INFER, binary(
        [1, 1, 8, 8], b"\0" * 256, parameters={"binary_data_output": "false"})), 400,
     "must be true or false"),
    ("300-inputs", post(INFER, many_inputs(300)), 400, "at most 256"),
    ("lone-surrogate-sentence", post("/tasks/digits/embed", b'{"sentences": ["ok \\ud800"]}',
                                     {"content-type": "application/json"}), 400,
     "not Unicode text"),
    ("8-failing-1.5M-value-headers", big_failing_headers(8, 1_500_000), 400, "unknown"),
    ("json-shape-overflows-int64", post(INFER, tensor_json([0, 2**63], [])), 413,
     "EDGE_MAX_TENSOR_ELEMENTS"),
    ("json-shape-huge-elements", post(INFER, tensor_json([2**31, 2**31, 8, 8], [])), 413,
     "EDGE_MAX_TENSOR_ELEMENTS"),
    ("binary-shape-overflows", post_binary(INFER, binary([0, 2**62, 4], b"")), 413,
     "EDGE_MAX_TENSOR_ELEMENTS"),
    ("binary-shape-product-overflows", post_binary(INFER, binary([2**32, 2**32], b"")), 413,
     "EDGE_MAX_TENSOR_ELEMENTS"),
    ("json-rank-70", post(INFER, tensor_json([1] * 70, [0.0])), 400, "EDGE_MAX_TENSOR_RANK"),
    ("binary-rank-70", post_binary(INFER, binary([1] * 70, b"\0" * 4)), 400,
     "EDGE_MAX_TENSOR_RANK"),
    ("json-3M-values", post(INFER, tensor_json([1, 1, 8, 8], [0] * 3_000_000)), 413,
     "EDGE_MAX_JSON_VALUES"),
    ("json-2M-empty-lists", post(INFER, tensor_json([1, 1, 8, 8], [[]] * 2_500_000)), 413,
     "EDGE_MAX_JSON_VALUES"),
    ("json-bytes-nested-900-deep", post(INFER, nested_bytes(900)), 400, "input"),
    ("binary-bytes-more-elements-than-shape",
     post_binary(INFER, binary([1], struct.pack("<I", 0) * 100_000, "BYTES")), 400, "BYTES"),
    ("json-fp32-overflow-1e39", post(INFER, tensor_json([1, 1, 8, 8], [1e39] * 64)), 400,
     "out of range for FP32"),
    ("binary-nan-to-compare", post_binary(COMPARE, binary([1, 1, 8, 8], NAN)), 400, "NaN"),
    ("json-outputs-over-cap", post(INFER, tensor_json([11, 1, 8, 8], [0.0] * 11 * 64)), 400,
     "EDGE_MAX_JSON_OUTPUT_VALUES"),
    ("gzip-bomb", post(INFER, gzip.compress(b"\0" * (64 * 1024 * 1024)),
                       {"content-encoding": "gzip", "content-type": "application/json"}), 413,
     "decompressed"),
    ("body-over-limit", post(INFER, b"\0" * (17 * 1024 * 1024)), 413, "EDGE_MAX_REQUEST_BYTES"),
    ("png-100-megapixels", upload("/tasks/digits/classify", png_header_bomb(10_000, 10_000)),
     413, "EDGE_MAX_IMAGE_PIXELS"),
    ("png-20-megapixels", upload("/tasks/digits/classify", png_header_bomb(5_000, 4_000)), 413,
     "EDGE_MAX_IMAGE_PIXELS"),
    ("gif-upload", upload("/tasks/digits/classify", image_bytes("GIF")), 415, "PNG or JPEG"),
    ("bmp-upload", upload("/tasks/digits/classify", image_bytes("BMP")), 415, "PNG or JPEG"),
    ("100k-sentences", embed(["a b"] * 100_000), 413, "EDGE_MAX_SENTENCES"),
    ("50k-char-sentence", embed(["x" * 50_000]), 413, "EDGE_MAX_SENTENCE_CHARS"),
    ("embed-body-over-cap", embed(["x" * 9_000] * 500), 413, "EDGE_MAX_SENTENCES"),
]  # fmt: skip


def test_hostile_inputs_get_4xx_naming_the_limit_and_leave_the_server_whole(
    hostile_server: Any,
) -> None:
    """Each class: its status and limit; after all: alive, serving, RSS growth bounded."""
    pid = hostile_server.process.pid
    table: list[dict[str, Any]] = []
    with httpx.Client(base_url=hostile_server.url, timeout=60) as http:
        ok = http.post(INFER, content=tensor_json([1, 1, 8, 8], [0.0] * 64))
        assert ok.status_code == 200
        rss_before = rss_bytes(pid)
        for name, case, expected, words in CASES:
            response = case(http)
            table.append({"class": name, "status": response.status_code, "expected": expected})
            assert response.status_code == expected, (name, response.text[:300])
            assert words in response.json()["error"], (name, response.text[:300])
        started = time.monotonic()
        status = slow_body(hostile_server.url)
        waited = time.monotonic() - started
        table.append({"class": "slow-body-sender", "status": status, "expected": 408})
        assert status == 408 and waited < BODY_TIMEOUT * 4
        # Hanging up mid-body on the framework's routes: a 499 in the metrics, no traceback.
        for path in (COMPARE, "/v2/repository/index", "/v2/repository/models/digits/load"):
            hang_up_mid_body(hostile_server.url, path)

        # NaN through infer is not a client error: the answer is valid JSON (null for NaN).
        body, headers = binary([1, 1, 8, 8], NAN)
        nan = http.post(INFER, content=body, headers=headers)
        table.append({"class": "binary-nan-to-infer", "status": nan.status_code, "expected": 200})
        assert nan.status_code == 200
        assert all(value is None for value in nan.json()["outputs"][0]["data"])
        # The same batch that was over the JSON cap comes back whole as binary data.
        body, headers = binary(
            [11, 1, 8, 8],
            np.zeros((11, 1, 8, 8), np.float32).tobytes(),
            parameters={"binary_data_output": True},
        )
        as_binary = http.post(INFER, content=body, headers=headers)
        table.append(
            {"class": "outputs-over-cap-as-binary", "status": as_binary.status_code,
             "expected": 200}
        )  # fmt: skip
        assert as_binary.status_code == 200

        rss_after = rss_bytes(pid)
        assert http.get("/v2/health/live").status_code == 200
        again = http.post(INFER, content=tensor_json([1, 1, 8, 8], [0.0] * 64))
        assert again.status_code == 200
    log = hostile_server.log.read_text()
    assert "Traceback" not in log and "internal server error" not in log
    report = {
        "classes": table,
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_after_mb": round(rss_after / 2**20, 1),
    }
    (hostile_server.log.parent / "hostile.json").write_text(json.dumps(report, indent=2))
    print("\nhostile input classes:")
    for row in table:
        print(f"  {row['class']:<40} {row['status']}")
    print(f"server RSS before {report['rss_before_mb']} MB, after {report['rss_after_mb']} MB")
    assert rss_after - rss_before < RSS_GROWTH_LIMIT, report


def broken_batch_model(path: Path) -> None:
    """digits' interface, but a graph that only runs at batch 1 or 4 (an Add against 4 rows).

    Load, warm-up and the batch probe (1 and 4 rows) pass; batch 2, which the spec allows,
    makes ONNX Runtime fail inside a kernel: the model's fault, not the client's.
    """
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "shape"], ["flat"]),
            helper.make_node("Add", ["flat", "four"], ["sum"]),
            helper.make_node("MatMul", ["sum", "w"], ["logits"]),
        ],
        "broken",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [
            numpy_helper.from_array(np.array([-1, 64], np.int64), "shape"),
            numpy_helper.from_array(np.zeros((4, 64), np.float32), "four"),
            numpy_helper.from_array(np.ones((64, 10), np.float32), "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_model_failure_is_a_5xx_counted_for_alerts(
    model_repository: Path, servers: ModuleType, tmp_path: Path
) -> None:
    """ORT failing on an input the spec accepts: 500 (path-free), in edge_requests_total."""
    repository = tmp_path / "repo"
    shutil.copytree(model_repository / "digits", repository / "digits")
    onnx_file = repository / "digits" / "fp32" / "model.onnx"
    broken_batch_model(onnx_file)
    manifest_file = repository / "digits" / "model.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["variants"]["fp32"]["sha256"] = hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    manifest_file.write_text(json.dumps(manifest))
    server = servers.start_server(repository, tmp_path / "server.log", EDGE_BATCHING="off")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            two = tensor_json([2, 1, 8, 8], [0.0] * 128)
            failed = http.post(INFER, content=two)
            assert failed.status_code == 500, failed.text
            assert "failed to run" in failed.json()["error"]
            assert "/" not in failed.json()["error"].split("'")[-1]  # no ORT source paths
            client_fault = http.post(INFER, content=tensor_json([1, 1, 8, 9], [0.0] * 72))
            assert client_fault.status_code == 400
            assert http.post(INFER, content=tensor_json([1, 1, 8, 8], [0.0] * 64)).is_success
            statuses = {
                sample.labels["status"]: sample.value
                for family in text_string_to_metric_families(http.get("/metrics").text)
                for sample in family.samples
                if sample.name == "edge_requests_total"
                and sample.labels.get("model") == "digits"
                and sample.labels.get("version") == "fp32"
            }
        assert statuses.get("500") == 1 and statuses.get("400") == 1, statuses
    finally:
        assert servers.stop_server(server) == 0
