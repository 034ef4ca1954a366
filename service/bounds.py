"""Bounds on what one request may make the server hold, checked before anything is allocated.

Every check names its setting, so a client (or an operator reading the log) knows which limit
it hit. Sizes are computed from the declared shape with Python integers, stopping as soon as
a running product passes the limit: no overflow, and no numpy call ever sees a shape that was
not checked here first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.config import Settings
from service.errors import BadRequest, PayloadTooLarge

_DEFAULTS = Settings.model_fields


@dataclass(frozen=True)
class Limits:
    """The request bounds of one app (a frozen copy of its settings, hashable for caches)."""

    max_rank: int = int(_DEFAULTS["max_tensor_rank"].default)
    max_elements: int = int(_DEFAULTS["max_tensor_elements"].default)
    max_tensor_bytes: int = int(_DEFAULTS["max_tensor_bytes"].default)
    max_json_values: int = int(_DEFAULTS["max_json_values"].default)
    max_json_output_values: int = int(_DEFAULTS["max_json_output_values"].default)
    max_request_bytes: int = int(_DEFAULTS["max_request_bytes"].default)
    """Of the body as sent and, for a compressed one, of what it decompresses to."""

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        """The limits a Settings object asks for."""
        return cls(
            max_rank=settings.max_tensor_rank,
            max_elements=settings.max_tensor_elements,
            max_tensor_bytes=settings.max_tensor_bytes,
            max_json_values=settings.max_json_values,
            max_json_output_values=settings.max_json_output_values,
            max_request_bytes=settings.max_request_bytes,
        )


DEFAULT_LIMITS = Limits()


def element_count(name: str, shape: Sequence[int], itemsize: int, limits: Limits) -> int:
    """Elements a declared shape holds, or a 4xx naming the limit it passes (rank, size, bytes)."""
    if len(shape) > limits.max_rank:
        raise BadRequest(
            f"input '{name}': rank {len(shape)} is over the limit of {limits.max_rank} "
            "dimensions (EDGE_MAX_TENSOR_RANK)"
        )
    if any(dim < 0 for dim in shape):
        raise BadRequest(f"input '{name}': shape {list(shape)} has a negative dimension")
    count = 1
    for dim in shape:
        # Each dimension on its own too: [0, 10**20] holds no element, but numpy cannot shape it.
        if dim > limits.max_elements:
            raise _too_many(name, shape, limits)
        count *= dim
        if count > limits.max_elements:
            raise _too_many(name, shape, limits)
    if count * itemsize > limits.max_tensor_bytes:
        raise PayloadTooLarge(
            f"input '{name}': shape {list(shape)} needs {count * itemsize} bytes, over the limit "
            f"of {limits.max_tensor_bytes} (EDGE_MAX_TENSOR_BYTES)"
        )
    return count


def _too_many(name: str, shape: Sequence[int], limits: Limits) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"input '{name}': shape {list(shape)} is over the limit of {limits.max_elements} "
        "elements (EDGE_MAX_TENSOR_ELEMENTS)"
    )


def check_json_values(header: bytes | memoryview, limits: Limits) -> None:
    """Refuse a JSON body that would parse into too many Python objects, before parsing it.

    Every value after the first in an array follows a comma, and every array opens with a
    bracket: commas + brackets bound the number of values (strings with commas only make the
    estimate safer). bytes.count runs at memory speed, so this costs little next to parsing.
    """
    if len(header) <= limits.max_json_values:  # each value takes at least one byte
        return
    raw = header if isinstance(header, bytes) else header.tobytes()
    values = raw.count(b",") + raw.count(b"[")
    if values > limits.max_json_values:
        raise PayloadTooLarge(
            f"the JSON body holds about {values} values, over the limit of "
            f"{limits.max_json_values} (EDGE_MAX_JSON_VALUES); send large tensors as binary data"
        )


def check_cast(name: str, datatype: str, array: np.ndarray) -> None:
    """JSON numbers that overflow a float datatype (1e39 as FP32) are refused, not made inf."""
    if _has_non_finite(array):
        raise BadRequest(f"input '{name}': values out of range for {datatype}")


ASK_FOR_BINARY = "ask for them as binary data (parameters.binary_data_output: true)"


def check_json_outputs(
    outputs: Mapping[str, np.ndarray],
    wants_binary: Any,
    limits: Limits,
    remedy: str = ASK_FOR_BINARY,
) -> None:
    """Refuse to write more than max_json_output_values as JSON (binary outputs are not bounded)."""
    values = sum(array.size for name, array in outputs.items() if not wants_binary(name))
    if values > limits.max_json_output_values:
        raise BadRequest(
            f"the outputs hold {values} values, over the JSON limit of "
            f"{limits.max_json_output_values} (EDGE_MAX_JSON_OUTPUT_VALUES); {remedy}"
        )


def check_finite_inputs(inputs: Mapping[str, np.ndarray], why: str) -> None:
    """NaN or Inf in a float input: a 400 where they would make the result meaningless."""
    for name, array in inputs.items():
        if _has_non_finite(array):
            raise BadRequest(f"input '{name}' holds NaN or Inf values: {why}")


def _has_non_finite(array: np.ndarray) -> bool:
    """A float array holding NaN or Inf (False for other dtypes and empty arrays)."""
    return bool(array.dtype.kind == "f" and array.size and not np.isfinite(array).all())
