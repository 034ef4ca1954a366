"""Request body limits as pure ASGI middleware: 413 past the size, 408 past the time to send it."""

from __future__ import annotations

import asyncio
import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response

# Sentences are parsed into Python strings before any handler runs: their body gets a cap
# from EDGE_MAX_SENTENCES x EDGE_MAX_SENTENCE_CHARS, so a list of many tiny strings cannot
# make the server hold several times the general body limit as objects.
EMBED_PATH = re.compile(r"^/tasks/[^/]+/embed$")


class BodyLimit:
    """Reject bodies over `limit` bytes (declared or streamed) or slower than `timeout` seconds."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        timeout: float | None = None,
        embed_limit: int | None = None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout
        self.embed_limit = embed_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.limit, "EDGE_MAX_REQUEST_BYTES"
        if self.embed_limit is not None and EMBED_PATH.match(scope["path"]):
            limit = min(limit, self.embed_limit)
            setting = "EDGE_MAX_SENTENCES x EDGE_MAX_SENTENCE_CHARS"
        message_text = f"request body is over the limit of {limit} bytes ({setting})"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(413, message_text)(scope, receive, send)
            return
        seen = 0
        complete = False
        deadline: float | None = None
        loop = asyncio.get_running_loop()

        async def limited_receive() -> Message:
            nonlocal seen, complete, deadline
            if complete or self.timeout is None:
                message = await receive()  # the body is in: waiting for a disconnect is fine
            else:
                if deadline is None:
                    deadline = loop.time() + self.timeout
                try:
                    # asyncio.timeout, not wait_for: no task per receive on the hot path.
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise HTTPException(
                        408,
                        f"request body not received within {self.timeout:g} s "
                        "(EDGE_BODY_TIMEOUT_SECONDS)",
                    ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > limit:
                    # HTTPException, not PayloadTooLarge: FastAPI's form parsing re-raises
                    # HTTPException but turns any other error into 400 "error parsing the body".
                    raise HTTPException(413, message_text)
            return message

        await self.app(scope, limited_receive, send)
