"""The plain-ASGI routes' shared part: which requests they take, and how they answer them.

The routes that skip FastAPI (service.routes.infer, service.routes.uploads) still owe clients
the error shape and statuses FastAPI's handlers give (service.errors): one 200 or one
{"error": ...}, sent as a head and the body's pieces. That, and passing every other request on,
is written here once instead of in each route.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import client_view, is_modelled
from service.inference import Inference
from service.protocol import Body, dumps
from service.registry import Registry

log = logging.getLogger(__name__)

RawHeaders = list[tuple[bytes, bytes]]
JSON: RawHeaders = [(b"content-type", b"application/json")]

Answer = tuple[Body, RawHeaders] | None
"""A route's work done: the body and headers of its 200, or None when the client has gone."""


def number_or_zero(text: str) -> int:
    """A header's or query's digits as a number, else 0 (ASCII only: int() refuses "²",
    isdigit() does not)."""
    return int(text) if text.isascii() and text.isdigit() else 0


class PlainRoute:
    """ASGI middleware: a POST whose path matches `path` is answered by `handle`; others pass on."""

    path: re.Pattern[str]

    def __init__(self, app: ASGIApp, registry: Registry, inference: Inference) -> None:
        self.app = app
        self.registry = registry
        self.inference = inference

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = self.path.match(scope["path"])
            if match is not None:
                await answer(scope, send, self.handle(scope, receive, match))
                return
        await self.app(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, match: re.Match[str]) -> Answer:
        """The route's work for one matched request; errors raised here become the answer."""
        raise NotImplementedError


async def answer(scope: Scope, send: Send, work: Awaitable[Answer]) -> None:
    """Await the route's `work` and send its 200, or the error it raised as {"error": ...}."""
    extra: dict[str, str] | None = None
    try:
        result = await work
        if result is None:
            return  # the client went away; nothing to answer
        status = 200
        content, headers = result
    except Exception as exc:
        if not is_modelled(exc):
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
        status, message, extra = client_view(exc)
        content, headers = [dumps({"error": message})], JSON
    if extra:
        headers = [*headers, *((k.encode(), v.encode()) for k, v in extra.items())]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(sum(map(len, content))).encode())],
        }
    )
    for piece in content[:-1]:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": content[-1]})
