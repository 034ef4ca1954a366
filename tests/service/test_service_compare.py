"""The compare call: one input through every variant, with latencies and agreement."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from service.agreement import agreement
from service.manifest import Task

VARIANTS = ("fp32", "int8")
BATCH = 16


@pytest.fixture(scope="module")
def http(live_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=10) as client:
        yield client


def request_body(x: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    """The same v2 request as JSON tensors or with the binary tensor extension."""
    tensor: dict[str, Any] = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    if not binary:
        return json.dumps(
            {"id": "cmp-1", "inputs": [{**tensor, "data": x.ravel().tolist()}]}
        ).encode(), {}
    raw = x.astype(np.float32).tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps({"id": "cmp-1", "inputs": [tensor]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def logits_of(outputs: list[dict[str, Any]]) -> np.ndarray:
    (output,) = outputs
    assert output["name"] == "logits"
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


@pytest.fixture(scope="module", params=[False, True], ids=["json", "binary"])
def compared(
    request: pytest.FixtureRequest, http: httpx.Client, held_out: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, dict[str, Any]]:
    x = held_out[0][:BATCH]
    content, headers = request_body(x, binary=request.param)
    response = http.post("/v2/models/digits/compare", content=content, headers=headers)
    assert response.status_code == 200, response.text
    return x, response.json()


def test_every_version_with_latency(compared: tuple[np.ndarray, dict[str, Any]]) -> None:
    """Both precisions ran, each timed; the id is echoed and fp32 is the reference."""
    _, result = compared
    assert (result["model_name"], result["id"], result["reference"]) == ("digits", "cmp-1", "fp32")
    assert set(result["versions"]) == set(VARIANTS)
    for version in result["versions"].values():
        assert version["latency_ms"] > 0
        assert logits_of(version["outputs"]).shape == (BATCH, 10)


@pytest.mark.parametrize("version", VARIANTS)
def test_outputs_equal_the_infer_endpoint(
    http: httpx.Client, compared: tuple[np.ndarray, dict[str, Any]], version: str
) -> None:
    """compare runs the same sessions as infer, so the numbers are the same."""
    x, result = compared
    content, _ = request_body(x, binary=False)
    response = http.post(f"/v2/models/digits/versions/{version}/infer", content=content)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(
        logits_of(result["versions"][version]["outputs"]),
        logits_of(response.json()["outputs"]),
        rtol=1e-6,
        atol=1e-6,
    )


def test_agreement_is_computed_from_the_outputs(
    compared: tuple[np.ndarray, dict[str, Any]],
) -> None:
    """top1_agreement and max_abs_diff describe int8 against fp32, as the figures say."""
    _, result = compared
    fp32 = logits_of(result["versions"]["fp32"]["outputs"])
    int8 = logits_of(result["versions"]["int8"]["outputs"])
    assert set(result["agreement"]) == {"int8"}
    figures = result["agreement"]["int8"]["logits"]
    assert figures["max_abs_diff"] == pytest.approx(float(np.max(np.abs(int8 - fp32))), rel=1e-4)
    assert figures["top1_agreement"] == pytest.approx(
        float(np.mean(int8.argmax(-1) == fp32.argmax(-1)))
    )
    assert figures["top1_agreement"] >= 0.9


@pytest.mark.parametrize(
    ("task", "shape", "measures"),
    [
        ("image-classification", (2, 10), {"max_abs_diff", "top1_agreement"}),
        ("tensor", (2, 3), {"max_abs_diff", "top1_agreement"}),
        ("tensor", (2, 1), {"max_abs_diff"}),  # a regressor: no argmax to agree on
        ("tensor", (2,), {"max_abs_diff"}),
        ("text-embedding", (2, 4), {"max_abs_diff", "cosine_mean", "cosine_min"}),
    ],
)  # fmt: skip
def test_agreement_measures_what_the_output_means(
    task: Task, shape: tuple[int, ...], measures: set[str]
) -> None:
    """Top-1 agreement of one value per row would always read 1.0, however far INT8 strays."""
    reference = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    figures = agreement(task, {"y": reference + 0.5}, {"y": reference})
    assert set(figures["y"]) == measures
    assert figures["y"]["max_abs_diff"] == 0.5
