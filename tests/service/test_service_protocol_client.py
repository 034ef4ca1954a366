"""Triton's own HTTP client against the real server: the Open Inference Protocol as users see it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tritonclient.http as httpclient

from service.protocol import (
    DATATYPES,
    HEADER_LENGTH,
    JOIN_BELOW_BYTES,
    DecodedRequest,
    encode_response,
)
from service.routes.v2 import _TRITON_TYPES

MODEL = "digits"
VARIANTS = ("fp32", "int8")
Reference = Callable[[str, np.ndarray], np.ndarray]


def infer(
    triton: httpclient.InferenceServerClient,
    x: np.ndarray,
    version: str = "",
    binary: bool = True,
    **kwargs: object,
) -> httpclient.InferResult:
    """One infer call with the input and the logits output encoded as binary or JSON tensors."""
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    output = httpclient.InferRequestedOutput("logits", binary_data=binary)
    return triton.infer(MODEL, [tensor], model_version=version, outputs=[output], **kwargs)


def test_server_live_ready_and_metadata(client: httpclient.InferenceServerClient) -> None:
    """The health calls and the extensions list are what Triton clients probe first."""
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] and metadata["version"]
    assert {
        "binary_tensor_data",
        "classification",
        "model_configuration",
        "statistics",
        "model_repository",
    } <= set(metadata["extensions"])


@pytest.mark.parametrize("version", ["", *VARIANTS])
def test_model_metadata_and_ready(client: httpclient.InferenceServerClient, version: str) -> None:
    """Each variant is a model version; no version means the model's default one."""
    assert client.is_model_ready(MODEL, version)
    metadata = client.get_model_metadata(MODEL, version)
    assert metadata["name"] == MODEL
    assert set(VARIANTS) <= set(metadata["versions"])
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]


def test_model_config(client: httpclient.InferenceServerClient) -> None:
    """The config extension in Triton's shape: batch axis implied by max_batch_size, TYPE_*."""
    config = client.get_model_config(MODEL)
    assert config["name"] == MODEL
    assert config["max_batch_size"] >= 8
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]


def test_model_config_names_every_datatype_the_protocol_accepts() -> None:
    """/config writes Triton's TYPE_* for each v2 datatype (BYTES is TYPE_STRING), none raw."""
    assert set(_TRITON_TYPES) == set(DATATYPES)
    assert _TRITON_TYPES["BYTES"] == "TYPE_STRING"
    for datatype in ("BOOL", "FP32", "INT8", "INT16", "UINT16", "UINT32", "UINT64"):
        assert _TRITON_TYPES[datatype] == f"TYPE_{datatype}"


def test_repository_index(client: httpclient.InferenceServerClient) -> None:
    """Every (model, version) is listed as READY."""
    index = client.get_model_repository_index()
    assert {(row["name"], row["version"], row["state"]) for row in index} == {
        (MODEL, variant, "READY") for variant in VARIANTS
    }


@pytest.mark.parametrize("version", VARIANTS)
def test_statistics_count_inferences(
    client: httpclient.InferenceServerClient, held_out: tuple[np.ndarray, np.ndarray], version: str
) -> None:
    """perf_analyzer reads these counters; one batch-of-3 infer adds 1 execution, 3 inferences."""

    def counts() -> tuple[int, int]:
        (stats,) = client.get_inference_statistics(MODEL, version)["model_stats"]
        assert (stats["name"], stats["version"]) == (MODEL, version)
        return stats["execution_count"], stats["inference_count"]

    before = counts()
    infer(client, held_out[0][:3], version)
    assert counts() == (before[0] + 1, before[1] + 3)
    every = client.get_inference_statistics()["model_stats"]
    assert {(s["name"], s["version"]) for s in every} == {(MODEL, v) for v in VARIANTS}


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("version", VARIANTS)
def test_infer_matches_onnxruntime(
    client: httpclient.InferenceServerClient,
    held_out: tuple[np.ndarray, np.ndarray],
    reference: Reference,
    version: str,
    binary: bool,
    batch: int,
) -> None:
    """Over the wire or in-process, the same file gives the same logits."""
    x = held_out[0][10 : 10 + batch]
    result = infer(client, x, version, binary=binary)
    response = result.get_response()
    assert (response["model_name"], response["model_version"]) == (MODEL, version)
    (output,) = response["outputs"]
    assert ("binary_data_size" in (output.get("parameters") or {})) is binary
    logits = result.as_numpy("logits")
    assert logits is not None and logits.shape == (batch, 10)
    np.testing.assert_allclose(logits, reference(version, x), rtol=1e-5, atol=1e-5)


def test_default_version(
    client: httpclient.InferenceServerClient, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    """No version in the URL runs the default variant named in the model metadata."""
    default = client.get_model_metadata(MODEL)["parameters"]["default_version"]
    response = infer(client, held_out[0][:1]).get_response()
    assert response["model_version"] == default


def test_request_id_is_echoed(
    client: httpclient.InferenceServerClient, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    """Clients match responses to requests by id."""
    result = infer(client, held_out[0][:1], "int8", request_id="req-42")
    assert result.get_response()["id"] == "req-42"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_outputs_selection(
    client: httpclient.InferenceServerClient,
    held_out: tuple[np.ndarray, np.ndarray],
    binary: bool,
) -> None:
    """Asking for no outputs returns every output; asking for one returns just that one."""
    tensor = httpclient.InferInput("input", [2, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(held_out[0][:2], binary_data=binary)
    everything = client.infer(MODEL, [tensor], model_version="fp32")
    assert [o["name"] for o in everything.get_response()["outputs"]] == ["logits"]
    chosen = client.infer(
        MODEL,
        [tensor],
        model_version="fp32",
        outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary)],
    )
    np.testing.assert_array_equal(chosen.as_numpy("logits"), everything.as_numpy("logits"))


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_request_compression(
    client: httpclient.InferenceServerClient,
    held_out: tuple[np.ndarray, np.ndarray],
    reference: Reference,
    algorithm: str,
    binary: bool,
) -> None:
    """tritonclient's request_compression_algorithm is decoded before the tensors are read."""
    x = held_out[0][:4]
    result = infer(client, x, "fp32", binary=binary, request_compression_algorithm=algorithm)
    np.testing.assert_allclose(
        result.as_numpy("logits"), reference("fp32", x), rtol=1e-5, atol=1e-5
    )


def test_large_binary_outputs_leave_as_views_of_the_tensor() -> None:
    """A large answer's pieces are the JSON header and the tensor's own bytes: no copy to send."""
    logits = np.arange(JOIN_BELOW_BYTES // 4, dtype=np.float32).reshape(-1, 16)
    request = DecodedRequest(None, {}, None, binary_outputs={}, binary_default=True)
    pieces, headers = encode_response(MODEL, "int8", request, {"logits": logits})
    header, tensor = pieces
    assert headers[HEADER_LENGTH] == str(len(header))
    assert np.shares_memory(np.frombuffer(tensor, np.uint8), logits)
    assert bytes(tensor) == logits.tobytes()


def test_small_binary_outputs_are_joined_behind_the_header() -> None:
    """A small answer is one piece: a second message would cost more than the copy."""
    logits = np.arange(12, dtype=np.float32).reshape(3, 4)
    request = DecodedRequest(None, {}, None, binary_outputs={}, binary_default=True)
    (body,), headers = encode_response(MODEL, "int8", request, {"logits": logits})
    length = int(headers[HEADER_LENGTH])
    assert body[length:] == logits.tobytes()
