"""Large JSON bodies: the array path reads exactly what orjson reads, or leaves it to orjson."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import json_tensors
from service.protocol import decode_request

PAD = b" " * (json_tensors.LARGE_BODY_BYTES + 1)
NUMBERS = st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
DATA = st.recursive(
    NUMBERS | st.booleans() | st.none() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)
INPUTS = st.lists(
    st.fixed_dictionaries(
        {"name": st.just("x"), "shape": st.just([1])},
        optional={
            "datatype": st.sampled_from(["FP32", "FP64", "INT64", "UINT8", "BOOL", "BYTES", 7]),
            "data": DATA | st.lists(NUMBERS, max_size=20),
            "parameters": st.dictionaries(st.text(max_size=4), NUMBERS, max_size=2),
        },
    ),
    max_size=3,
)


def large(request: Any) -> bytes:
    """The request's JSON with whitespace after it, so it takes the large-body path."""
    return json.dumps(request).encode() + PAD  # json: integers past 64 bits too


def same(fast: Any, reference: Any) -> bool:
    """Equal, where an array from the fast path stands for orjson's flat list of numbers."""
    if isinstance(fast, np.ndarray):
        return (
            isinstance(reference, list)
            and fast.shape == (len(reference),)
            and all(not isinstance(v, (bool, list)) for v in reference)
            and np.array_equal(fast, np.asarray(reference, dtype=fast.dtype))
        )
    if isinstance(fast, dict):
        return (
            isinstance(reference, dict)
            and fast.keys() == reference.keys()
            and all(same(fast[k], reference[k]) for k in fast)
        )
    if isinstance(fast, list):
        return (
            isinstance(reference, list)
            and len(fast) == len(reference)
            and all(same(a, b) for a, b in zip(fast, reference, strict=True))
        )
    return bool(type(fast) is type(reference) and fast == reference)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=INPUTS, request_id=st.none() | st.text(max_size=4))
def test_large_bodies_parse_as_orjson_parses_them(inputs: list[Any], request_id: Any) -> None:
    """Any request, padded past the threshold: the same values orjson gives, arrays or lists."""
    request: dict[str, Any] = {"inputs": inputs}
    if request_id is not None:
        request["id"] = request_id
    body = large(request)
    assert same(json_tensors.loads(body), orjson.loads(body))


@pytest.mark.parametrize(
    ("datatype", "data", "dtype"),
    [
        ("FP32", [0.5, -1.25, 3, 1e30], np.float64),
        ("INT64", [1, -2, 2**62], np.int64),
        ("UINT8", [0, 255], np.uint64),
    ],
)
def test_flat_numbers_become_arrays(datatype: str, data: list[Any], dtype: type) -> None:
    """The case the path exists for: a flat list of numbers under a numeric datatype."""
    parsed = json_tensors.loads(large({"inputs": [{"datatype": datatype, "data": data}]}))
    array = parsed["inputs"][0]["data"]
    assert isinstance(array, np.ndarray) and array.dtype == dtype
    assert array.tolist() == data


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("INT64", [1, 2.5]),  # a fraction under an integer type: the codec's error, not a cast
        ("INT64", [2**64]),  # past 64 bits
        ("FP32", [[1, 2], [3]]),  # nested (ragged)
        ("FP32", [[0]]),  # nested, as many values as its own length: found by hypothesis
        ("FP32", [[1], [2]]),
        ("FP32", [1, [2]]),
        ("FP32", [[1, 2], []]),
        ("FP32", [1, True]),
        ("BOOL", [True, False]),
        ("BYTES", ["a"]),
    ],
)
def test_anything_else_is_left_to_orjson(datatype: str, data: list[Any]) -> None:
    body = large({"inputs": [{"datatype": datatype, "data": data}]})
    assert json_tensors.loads(body) == orjson.loads(body)


@pytest.mark.parametrize(
    "text",
    [
        b'{"inputs": [{"datatype": "FP32", "data": [1]}], "inputs": []}',
        b'{"inputs": [{"datatype": "FP32", "data": [1], "data": [2]}]}',
    ],
)
def test_repeated_keys_keep_the_last_as_orjson_does(text: bytes) -> None:
    assert json_tensors.loads(text + PAD) == orjson.loads(text + PAD)


def test_invalid_json_raises_orjsons_error() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        json_tensors.loads(b'{"inputs": [1, 2,' + PAD)


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT32", "INT64", "UINT8", "UINT64"])
def test_decoded_tensors_are_the_same_either_way(datatype: str) -> None:
    """decode_request gives the same array from a small body and from a padded large one."""
    values = [0, 1, 2, 3, 250, 7] if datatype.startswith("U") else [0.5, -1, 3.25, 1e-7, 7, 2]
    if datatype.startswith("INT"):
        values = [0, -1, 3, 100, 7, 2]
    request = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": datatype, "data": values}]}
    small = decode_request(orjson.dumps(request)).inputs["x"]
    big = decode_request(large(request)).inputs["x"]
    assert big.dtype == small.dtype and big.shape == small.shape == (2, 3)
    assert np.array_equal(big, small)
