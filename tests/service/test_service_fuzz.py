"""Fuzzing: schemathesis against the live /openapi.json, hypothesis against the v2 codec.

The HTTP fuzz runs every documented operation (with the real model and version names, so
bodies reach the decoder and the model, and with random ones) in schemathesis' positive and
negative modes against one real server; no answer may be a 5xx, the server must be alive
afterwards, and its RSS must stay bounded. The repository's load/unload operations are left
out: they change what the server serves (an unloaded model's 503 is correct, not a fault);
tests/service/test_service_repository.py covers them. Budget: EXAMPLES per operation and mode
(about a minute here).
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from loadtests.process import rss_bytes
from service.bounds import Limits
from service.errors import ServiceError
from service.protocol import DATATYPES, decode_request

EXAMPLES = 40
RSS_GROWTH_LIMIT = 100 * 1024 * 1024
SKIPPED = {"/v2/repository/models/{model}/load", "/v2/repository/models/{model}/unload"}
# Real names (so requests get past routing into decoding and inference) and made-up ones.
PATH_VALUES = [
    {"model": "digits", "version": "fp32"},
    {"model": "digits", "version": "int8"},
    {"model": "digits", "version": "fp16"},
    {"model": "minilm", "version": "int8"},
]


@pytest.fixture(scope="module")
def fuzz_server(
    model_repository: Path, servers: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    server = servers.start_server(model_repository, log, EDGE_LOG_LEVEL="warning")
    yield server
    servers.stop_server(server)


def test_schemathesis_finds_no_server_error(fuzz_server: Any) -> None:
    """Every operation, positive and negative data, real and made-up names: no 5xx at all."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    pid = fuzz_server.process.pid
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.path not in SKIPPED]
    assert len(operations) >= 15, [op.path for op in operations]
    started = time.monotonic()
    rss_before = rss_bytes(pid)
    for operation in operations:
        names = {p.name for p in operation.iter_parameters() if p.location == "path"}
        strategies = [
            operation.as_strategy(
                mode, path_parameters={k: v for k, v in values.items() if k in names}
            )
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
            for values in PATH_VALUES
        ]

        @settings(
            max_examples=EXAMPLES * 2,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=st.one_of(strategies))
        def run(case: Any) -> None:
            response = case.call(base_url=fuzz_server.url, timeout=30)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.text[:200]}")

        run()
    rss_after = rss_bytes(pid)
    elapsed = time.monotonic() - started
    cases = sum(statuses.values())
    print(
        f"\nschemathesis: {len(operations)} operations, {cases} cases in {elapsed:.0f} s, "
        f"statuses {dict(sorted(statuses.items()))}, server errors {len(failures)}, "
        f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MB"
    )
    assert not failures, failures[:10]
    assert httpx.get(f"{fuzz_server.url}/v2/health/live").status_code == 200
    assert fuzz_server.process.poll() is None
    assert rss_after - rss_before < RSS_GROWTH_LIMIT
    assert "Traceback" not in fuzz_server.log.read_text()


# --- the codec itself, in-process -------------------------------------------------------------

NUMERIC = [name for name in DATATYPES if name != "BYTES"]
SMALL = Limits(max_rank=4, max_elements=4096, max_tensor_bytes=65536, max_json_values=65536)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)
shapes = st.lists(st.one_of(st.integers(-2, 6), st.integers(2**31, 2**70), st.just(0)), max_size=70)
tensor_entries = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "x", ""]),
        "shape": shapes,
        "datatype": st.sampled_from([*DATATYPES, "FP33", ""]),
    },
    optional={
        "data": json_values,
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "other"]), st.integers(-5, 2**40) | json_values
        ),
    },
)
headers = st.fixed_dictionaries(
    {"inputs": st.lists(tensor_entries, max_size=3)},
    optional={
        "id": json_values,
        "parameters": st.dictionaries(st.text(max_size=20), json_values),
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.text(max_size=8)},
                optional={"parameters": st.dictionaries(st.text(max_size=20), json_values)},
            ),
            max_size=3,
        ),
    },
)
CODEC = settings(max_examples=400, deadline=None, database=None, phases=[Phase.generate])


def _decode_or_client_error(body: bytes, header_length: str | None) -> None:
    """The codec's whole contract on hostile input: a result, or a ServiceError below 500."""
    try:
        decode_request(body, header_length, SMALL)
    except ServiceError as exc:
        assert 400 <= exc.status_code < 500, exc.message


@CODEC
@given(header=headers, tail=st.binary(max_size=256), split=st.booleans())
def test_codec_random_requests_are_answered_or_refused_as_4xx(
    header: dict[str, Any], tail: bytes, split: bool
) -> None:
    """Random headers (huge, negative, 70-long shapes; any data) with random binary tails."""
    raw = json.dumps(header).encode()
    if split:
        _decode_or_client_error(raw + tail, str(len(raw)))
    else:
        _decode_or_client_error(raw, None)


@CODEC
@given(body=st.binary(max_size=512), header_length=st.none() | st.text(max_size=6))
def test_codec_random_bytes_are_refused_as_4xx(body: bytes, header_length: str | None) -> None:
    """Bytes that are not a request at all."""
    _decode_or_client_error(body, header_length)


@CODEC
@given(
    datatype=st.sampled_from(NUMERIC),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
    binary=st.booleans(),
)
def test_codec_round_trips_every_numeric_datatype(
    datatype: str, shape: list[int], seed: int, binary: bool
) -> None:
    """A tensor sent as JSON or binary decodes to the same values, dtype and shape."""
    dtype = DATATYPES[datatype]
    rng = np.random.default_rng(seed)
    if dtype.kind == "b":
        array = rng.integers(0, 2, shape).astype(dtype)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        array = rng.integers(max(info.min, -(2**31)), min(info.max, 2**31), shape).astype(dtype)
    else:
        array = rng.normal(0, 100, shape).astype(dtype)
    entry: dict[str, Any] = {"name": "x", "shape": shape, "datatype": datatype}
    if binary:
        raw = array.tobytes()
        entry["parameters"] = {"binary_data_size": len(raw)}
        head = json.dumps({"inputs": [entry]}).encode()
        decoded = decode_request(head + raw, str(len(head)), SMALL)
    else:
        entry["data"] = array.ravel().tolist()
        decoded = decode_request(json.dumps({"inputs": [entry]}).encode(), None, SMALL)
    got = decoded.inputs["x"]
    assert got.dtype == dtype and list(got.shape) == shape
    np.testing.assert_array_equal(got, array)


@CODEC
@given(elements=st.lists(st.binary(max_size=8), min_size=1, max_size=6))
def test_codec_bytes_tensors_round_trip(elements: list[bytes]) -> None:
    """BYTES elements, length-prefixed on the wire, come back as sent."""
    raw = b"".join(struct.pack("<I", len(item)) + item for item in elements)
    entry = {
        "name": "s",
        "shape": [len(elements)],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(raw)},
    }
    head = json.dumps({"inputs": [entry]}).encode()
    decoded = decode_request(head + raw, str(len(head)), SMALL)
    assert list(decoded.inputs["s"]) == elements
