"""Triton's classification extension through tritonclient: class_count gives top-k labels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

Reference = Callable[[str, np.ndarray], np.ndarray]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_class_count_three_for_digits(
    client: httpclient.InferenceServerClient,
    held_out: tuple[np.ndarray, np.ndarray],
    reference: Reference,
    binary: bool,
) -> None:
    """Each row: the three largest logits as "score:index:label", largest first (Triton's form)."""
    x, labels = held_out[0][:4], held_out[1][:4]
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3)
    result = client.infer("digits", [tensor], model_version="fp32", outputs=[wanted])
    top = result.as_numpy("logits")
    assert top is not None and top.shape == (4, 3)
    assert result.get_output("logits")["datatype"] == "BYTES"
    print(f"\nclass_count=3 ({'binary' if binary else 'JSON'}):\n{top}")
    logits = reference("fp32", x)
    for row, expected, label in zip(top, logits, labels, strict=True):
        # tritonclient gives BYTES as bytes from binary data and as str from JSON (as Triton's).
        entries = [(item.decode() if isinstance(item, bytes) else item).split(":") for item in row]
        indices = [int(index) for _, index, _ in entries]
        assert indices == list(np.argsort(-expected)[:3])
        assert [name for _, _, name in entries] == [str(i) for i in indices]  # digits' labels
        np.testing.assert_allclose([float(s) for s, _, _ in entries], expected[indices], atol=1e-4)
        assert indices[0] == label


def test_class_count_must_be_a_number(live_server: Any) -> None:
    """A bad class_count is the client's mistake: 400 with the reason, never a 500."""
    body = {
        "inputs": [
            {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
        ],
        "outputs": [{"name": "logits", "parameters": {"classification": "three"}}],
    }
    response = httpx.post(f"{live_server.url}/v2/models/digits/infer", json=body)
    assert response.status_code == 400
    assert "class_count" in response.json()["error"]
