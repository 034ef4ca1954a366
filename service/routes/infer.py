"""The v2 infer call as plain ASGI: the one hot path, without the framework's per-request layers.

FastAPI's routing, dependency solving and request objects cost more than a small model's whole
inference (bench/README.md has the profile). InferRoute answers POST .../infer itself and hands
every other request to the FastAPI app, which still documents the same route in /docs (its
handler calls the same infer_response). It sits inside the service's other layers (auth, body
limit, rejected-request counting; service.app.EdgeApp), so those apply to it unchanged.
"""

from __future__ import annotations

import asyncio
import re
import zlib

from starlette.types import Receive, Scope

from service.bounds import Limits, check_json_outputs
from service.classification import classify, labels_of
from service.connections import Connection, connection_of
from service.errors import BadRequest, PayloadTooLarge
from service.inference import Inference
from service.protocol import (
    HEADER_LENGTH,
    Body,
    DecodedRequest,
    decode_request,
    encode_response,
)
from service.registry import Registry
from service.routes.answer import Answer, PlainRoute, number_or_zero

INFER_PATH = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
# JSON bodies and JSON outputs above these sizes are parsed/written in a worker thread, so the
# event loop (health, metrics, other requests) never stalls behind a big tensor.
OFFLOAD_BODY_BYTES = 64 * 1024
OFFLOAD_OUTPUT_VALUES = 16 * 1024
_HEADER_LENGTH_KEY = HEADER_LENGTH.lower().encode("latin-1")  # ASGI gives header names lowered


async def infer_response(
    registry: Registry,
    inference: Inference,
    model: str,
    variant: str | None,
    body: bytes,
    header_length: str | None,
    encoding: str | None,
    connection: Connection | None = None,
) -> tuple[Body, dict[str, str]]:
    """One v2 infer call from body bytes to the response's pieces and headers."""
    runtime = registry.runtime(model, variant)
    limits = inference.limits
    async with inference.track(runtime), inference.admit(runtime, connection) as admitted:
        # Admitted before decoding: a request that cannot be served soon costs no decode.
        decoded = await decode_body(body, header_length, encoding, limits)
        outputs = await inference.run(runtime, decoded.inputs, decoded.outputs, admitted)
        if decoded.class_counts:
            outputs = classify(outputs, decoded.class_counts, labels_of(registry.entry(model)))
        check_json_outputs(outputs, decoded.wants_binary, limits)
        if any(
            array.size > OFFLOAD_OUTPUT_VALUES and not decoded.wants_binary(name)
            for name, array in outputs.items()
        ):
            return await asyncio.to_thread(
                encode_response, model, runtime.variant, decoded, outputs
            )
        return encode_response(model, runtime.variant, decoded, outputs)


async def decode_body(
    body: bytes,
    header_length: str | None,
    encoding: str | None,
    limits: Limits,
) -> DecodedRequest:
    """Decompress and decode; in a worker thread when there is much JSON or gzip to read."""
    identity = encoding is None or encoding.lower() == "identity"
    json_bytes = len(body) if header_length is None else number_or_zero(header_length)
    if identity and json_bytes <= OFFLOAD_BODY_BYTES:
        return decode_request(body, header_length, limits)

    def work() -> DecodedRequest:
        return decode_request(
            decompress(body, encoding, limits.max_request_bytes), header_length, limits
        )

    return await asyncio.to_thread(work)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """gzip/deflate bodies (tritonclient's request_compression_algorithm), bounded."""
    encoding = (encoding or "identity").lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r} (gzip, deflate)")
    decompressor = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error:
        raise BadRequest(f"body is not valid {encoding} data") from None
    if len(out) > limit or decompressor.unconsumed_tail:
        raise PayloadTooLarge(
            f"decompressed body is over the limit of {limit} bytes (EDGE_MAX_REQUEST_BYTES)"
        )
    return out


class InferRoute(PlainRoute):
    """ASGI middleware: POST /v2/models/{model}[/versions/{version}]/infer answered here."""

    path = INFER_PATH

    async def handle(self, scope: Scope, receive: Receive, match: re.Match[str]) -> Answer:
        body = await _read_body(receive)
        if body is None:
            return None
        header_length, encoding = body_headers(scope)
        content, headers = await infer_response(
            self.registry, self.inference, match["model"], match["version"], body,
            header_length, encoding, connection_of(scope),
        )  # fmt: skip
        return content, [(k.lower().encode("latin-1"), v.encode()) for k, v in headers.items()]


def body_headers(scope: Scope) -> tuple[str | None, str | None]:
    """The two headers an infer body is read by: its JSON header's length and its encoding."""
    header_length = encoding = None
    for name, value in scope["headers"]:
        if name == _HEADER_LENGTH_KEY:
            header_length = value.decode("latin-1")
        elif name == b"content-encoding":
            encoding = value.decode("latin-1")
    return header_length, encoding


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (None if the client disconnected first)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
