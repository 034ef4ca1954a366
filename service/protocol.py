"""Open Inference Protocol v2 codec: JSON tensors and the binary tensor data extension."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from service import json_tensors
from service.bounds import DEFAULT_LIMITS, Limits, check_cast, check_json_values, element_count
from service.classification import class_counts
from service.errors import BadRequest

HEADER_LENGTH = "Inference-Header-Content-Length"

Body = list[bytes | memoryview]
"""A response body as the pieces it is written in: large binary tensors go out without a copy."""

JOIN_BELOW_BYTES = 64 * 1024
"""Binary outputs smaller than this are copied behind the header, into one piece.

Each piece is one more message through the app's layers: ~10 us of the event loop (digits at one
client: 0.312 -> 0.322 ms of loop CPU per answer), what copying ~100 KB costs.
"""

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype name of a numpy array."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    return _DATATYPE_OF[array.dtype]


# --- wire schemas (also what /docs shows) -------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Wire):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(_Wire):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Wire):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 1, 8, 8],
                            "datatype": "FP32",
                            "data": [0.0] * 64,
                        }
                    ],
                }
            ]
        },
    )


class ResponseOutput(_Wire):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(_Wire):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


# --- decoding --------------------------------------------------------------------------------
# Hand-checked against the schemas above: pydantic validation of every tensor value cost more
# than the whole digits inference (bench/README.md); the wire rules stay the same.

_REQUEST_KEYS = frozenset(InferenceRequest.model_fields)
_INPUT_KEYS = frozenset(RequestInput.model_fields)
_OUTPUT_KEYS = frozenset(RequestOutput.model_fields)


@dataclass(frozen=True)
class DecodedRequest:
    """A request with its tensors as numpy arrays and the output encoding it asked for."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    binary_outputs: dict[str, bool]
    binary_default: bool
    class_counts: dict[str, int] = field(default_factory=dict)
    """Outputs asked for as top-k classes (Triton's classification extension)."""

    def wants_binary(self, output: str) -> bool:
        """Per-output binary_data wins over the request's binary_data_output."""
        return self.binary_outputs.get(output, self.binary_default)


@dataclass(frozen=True)
class _Tensor:
    """One checked entry of `inputs`."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any]
    data: Any


def split_body(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    """Separate the JSON header from the binary tensor data that follows it (no copies)."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    try:
        length = int(header_length)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if not 0 < length <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} {length} does not fit a {len(body)}-byte body")
    return view[:length], view[length:]


def decode_request(
    body: bytes, header_length: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> DecodedRequest:
    """Parse a v2 infer body (JSON, or JSON header + binary tensors) into numpy arrays."""
    header, binary = split_body(body, header_length)
    if binary and len(header) <= CACHED_HEADER_BYTES:
        request_id, params, tensors, outputs = _parsed_header(bytes(header), limits)
    else:
        request_id, params, tensors, outputs = _parse_header(header, limits)
    offset = 0
    inputs: dict[str, np.ndarray] = {}
    for tensor in tensors:
        if tensor.name in inputs:
            raise BadRequest(f"input '{tensor.name}' is given twice")
        size = tensor.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"input '{tensor.name}': binary_data_size must be an integer")
            if offset + size > len(binary):
                raise BadRequest(
                    f"input '{tensor.name}': binary_data_size {size} runs past the "
                    f"{len(binary)} bytes of binary data"
                )
            inputs[tensor.name] = _from_binary(tensor, binary[offset : offset + size], limits)
            offset += size
        else:
            inputs[tensor.name] = _from_json(tensor, limits)
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input")

    binary_outputs = {
        name: _flag(out_params["binary_data"], f"outputs '{name}' parameters.binary_data")
        for name, out_params in outputs or []
        if "binary_data" in out_params
    }
    return DecodedRequest(
        id=request_id,
        inputs=inputs,
        outputs=[name for name, _ in outputs] if outputs else None,
        binary_outputs=binary_outputs,
        binary_default=_flag(
            params.get("binary_data_output", False), "parameters.binary_data_output"
        ),
        class_counts=class_counts(outputs) if outputs else {},
    )


_Header = tuple[str | None, dict[str, Any], list[_Tensor], list[tuple[str, dict[str, Any]]] | None]


def _parse_header(header: bytes | memoryview, limits: Limits) -> _Header:
    check_json_values(header, limits)  # before orjson turns every value into a Python object
    try:
        request = json_tensors.loads(header)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed inference request: invalid JSON ({exc.msg})") from None
    return _check_request(request)


CACHED_HEADER_BYTES = 4096
"""Binary requests' JSON headers up to this size are parsed once and cached: a client's header
repeats from call to call (tritonclient's is ~200 bytes). Larger ones are parsed each time, so
the cache (256 entries) never holds more than ~1 MB, whatever clients send."""

MAX_TENSORS = 256
"""Most inputs or outputs one request may list: refused before any is decoded (no model here
takes more, and a quarter-million tiny inputs cost seconds of CPU to decode and reject)."""


@lru_cache(maxsize=256)
def _parsed_header(header: bytes, limits: Limits) -> _Header:
    """Binary requests' small JSON headers, parsed and checked once (read-only once cached)."""
    return _parse_header(header, limits)


def _flag(value: Any, where: str) -> bool:
    """A JSON true/false: the string "false" would otherwise read as true."""
    if not isinstance(value, bool):
        raise _malformed(where, f"must be true or false, not {value!r:.40}")
    return value


def _malformed(where: str, problem: str) -> BadRequest:
    return BadRequest(f"malformed inference request: {where}: {problem}")


def _object(value: Any, where: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(where or "body", "must be a JSON object")
    extra = sorted(set(value) - allowed)
    if extra:
        raise _malformed(f"{where}.{extra[0]}" if where else extra[0], "unknown field")
    return value


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _malformed(where, "must be an object")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _malformed(where, "must be a string")
    return value


def _check_request(request: Any) -> _Header:
    """The InferenceRequest schema's rules, checked by hand: (id, parameters, inputs, outputs)."""
    body = _object(request, "", _REQUEST_KEYS)
    request_id = body.get("id")
    if request_id is not None:
        _string(request_id, "id")
    params = _parameters(body.get("parameters"), "parameters")
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _malformed("inputs", "must be a list of at least one tensor")
    if len(raw_inputs) > MAX_TENSORS:
        raise _malformed("inputs", f"{len(raw_inputs)} tensors; at most {MAX_TENSORS}")
    tensors = []
    for index, item in enumerate(raw_inputs):
        where = f"inputs.{index}"
        entry = _object(item, where, _INPUT_KEYS)
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(dim, int) and not isinstance(dim, bool) for dim in shape
        ):
            raise _malformed(f"{where}.shape", "must be a list of integers")
        tensors.append(
            _Tensor(
                name=_string(entry.get("name"), f"{where}.name"),
                shape=shape,
                datatype=_string(entry.get("datatype"), f"{where}.datatype"),
                parameters=_parameters(entry.get("parameters"), f"{where}.parameters"),
                data=entry.get("data"),
            )
        )
    raw_outputs = body.get("outputs")
    if raw_outputs is None:
        return request_id, params, tensors, None
    if not isinstance(raw_outputs, list):
        raise _malformed("outputs", "must be a list")
    if len(raw_outputs) > MAX_TENSORS:
        raise _malformed("outputs", f"{len(raw_outputs)} outputs; at most {MAX_TENSORS}")
    outputs = []
    for index, item in enumerate(raw_outputs):
        entry = _object(item, f"outputs.{index}", _OUTPUT_KEYS)
        outputs.append(
            (
                _string(entry.get("name"), f"outputs.{index}.name"),
                _parameters(entry.get("parameters"), f"outputs.{index}.parameters"),
            )
        )
    return request_id, params, tensors, outputs


def _dtype(tensor: _Tensor) -> np.dtype[Any]:
    try:
        return DATATYPES[tensor.datatype]
    except KeyError:
        raise BadRequest(
            f"input '{tensor.name}': unsupported datatype {tensor.datatype!r} "
            f"(one of {', '.join(DATATYPES)})"
        ) from None


def _element_count(tensor: _Tensor, dtype: np.dtype[Any], limits: Limits) -> int:
    """Checked against rank, element and byte limits before any array exists (BYTES: count only)."""
    itemsize = 0 if tensor.datatype == "BYTES" else dtype.itemsize
    return element_count(tensor.name, tensor.shape, itemsize, limits)


def _from_binary(tensor: _Tensor, raw: memoryview, limits: Limits) -> np.ndarray:
    dtype = _dtype(tensor)
    count = _element_count(tensor, dtype, limits)
    if tensor.datatype == "BYTES":
        elements = _unpack_bytes(tensor.name, raw, count)
        if len(elements) != count:
            raise BadRequest(
                f"input '{tensor.name}': {len(elements)} BYTES elements for shape {tensor.shape}"
            )
        return np.array(elements, dtype=object).reshape(tensor.shape)
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(
            f"input '{tensor.name}': {len(raw)} bytes of binary data, but shape {tensor.shape} "
            f"x {tensor.datatype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)


def _unpack_bytes(name: str, raw: memoryview, count: int) -> list[bytes]:
    """BYTES elements on the wire: a 4-byte little-endian length, then the bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if len(elements) == count:  # more than the shape holds: stop before building them all
            raise BadRequest(f"input '{name}': more BYTES elements than its shape holds")
        if offset + 4 > len(raw):
            raise BadRequest(f"input '{name}': truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequest(f"input '{name}': BYTES element runs past the binary data")
        elements.append(bytes(raw[offset : offset + length]))
        offset += length
    return elements


def _from_json(tensor: _Tensor, limits: Limits) -> np.ndarray:
    dtype = _dtype(tensor)
    count = _element_count(tensor, dtype, limits)
    if tensor.data is None:
        raise BadRequest(f"input '{tensor.name}' has neither data nor binary_data_size")
    if tensor.datatype == "BYTES":
        flat = list(_flatten(tensor.data))
        if not all(isinstance(item, str) for item in flat):
            raise BadRequest(f"input '{tensor.name}': BYTES data must be strings")
        array = np.array([item.encode() for item in flat], dtype=object)
    else:
        try:  # large bodies' data are arrays already (service.json_tensors)
            array = np.asarray(tensor.data)
        except ValueError:
            raise BadRequest(f"input '{tensor.name}': data is not a regular nested list") from None
        array = _cast(tensor, array, dtype)
    if array.size != count:
        raise BadRequest(
            f"input '{tensor.name}': {array.size} values for shape {tensor.shape} ({count})"
        )
    return array.reshape(tensor.shape)


def _flatten(data: Any) -> Any:
    """Leaves of nested lists, depth-first, without recursion (JSON may nest ~1000 deep)."""
    stack = [iter((data,))]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def _cast(tensor: _Tensor, array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """Numbers to the declared datatype; never strings, fractions into ints, or overflow."""
    if array.size == 0:
        return array.astype(dtype)
    kind = array.dtype.kind
    if kind not in "biuf" or (dtype.kind == "b" and kind != "b"):
        raise BadRequest(f"input '{tensor.name}': data does not hold {tensor.datatype} values")
    if dtype.kind in "iu":
        if kind == "f":
            raise BadRequest(f"input '{tensor.name}': {tensor.datatype} data must be integers")
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise BadRequest(f"input '{tensor.name}': values out of range for {tensor.datatype}")
    out = array.astype(dtype)
    check_cast(tensor.name, tensor.datatype, out)
    return out


# --- encoding --------------------------------------------------------------------------------


def encode_response(
    model: str,
    variant: str,
    request: DecodedRequest,
    outputs: dict[str, np.ndarray],
) -> tuple[Body, dict[str, str]]:
    """The response body and headers; binary outputs go after the JSON header.

    Large outputs stay views of their tensors: joining them cost a copy on the event loop (OCR's
    1 MB answer: 8% of the loop's time at one client, bench/README.md), and the transport sends
    the pieces in one call. Small ones are joined (JOIN_BELOW_BYTES).
    """
    entries: list[dict[str, Any]] = []
    chunks: list[Any] = []
    for name, array in outputs.items():
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": datatype_of(array),
        }
        if request.wants_binary(name):
            raw = _pack(array)
            entry["parameters"] = {"binary_data_size": raw.nbytes}
            chunks.append(raw)
        else:
            entry["data"] = _json_values(array)
        entries.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": variant, "outputs": entries}
    if request.id is not None:
        body["id"] = request.id
    header = dumps(body)
    if not chunks:
        return [header], {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    if sum(map(len, chunks)) < JOIN_BELOW_BYTES:
        return [b"".join([header, *chunks])], headers
    return [header, *chunks], headers


def dumps(payload: Any) -> bytes:
    """JSON bytes; numpy arrays are written by orjson directly (no Python float objects)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def json_data(array: np.ndarray) -> list[Any]:
    """A tensor's flattened row-major values as JSON-ready Python objects."""
    if array.dtype.kind in "OSU":
        return [_text(item) for item in array.ravel()]
    values: list[Any] = array.ravel().tolist()
    return values


def _json_values(array: np.ndarray) -> Any:
    """What dumps() writes as the flat data list: the array itself where orjson can."""
    if array.dtype.kind in "biuf":
        return np.ascontiguousarray(array).reshape(-1)
    return json_data(array)


def _text(item: Any) -> str:
    return item.decode(errors="replace") if isinstance(item, bytes) else str(item)


def _pack(array: np.ndarray) -> memoryview:
    """The tensor's bytes on the wire, without a copy where the array is contiguous already."""
    if array.dtype.kind in "OSU":
        parts = []
        for item in array.ravel():
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(raw)) + raw)
        return memoryview(b"".join(parts))
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
