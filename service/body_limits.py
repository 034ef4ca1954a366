"""Request body limits as pure ASGI middleware: 413 past the size, 408 past the time to send it."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, error_response

# Sentences are parsed into Python strings before any handler runs: their body gets a cap
# from EDGE_MAX_SENTENCES x EDGE_MAX_SENTENCE_CHARS, so a list of many tiny strings cannot
# make the server hold several times the general body limit as objects.
EMBED_PATH = re.compile(r"^/tasks/[^/]+/embed$")


class BodyDeadlines:
    """Requests waiting for body bytes past `timeout`, found by one sweep every `interval` s.

    asyncio.timeout arms and cancels a loop timer per receive: 8.0-8.7 us on uvloop against
    1.2 us for this (interleaved, one process), about 3% of a digits request's time in the
    service. One sweep serves every waiting request instead; a 408 comes up to `interval` late.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.interval = min(1.0, timeout / 4)
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweep_on: asyncio.AbstractEventLoop | None = None
        """The loop a sweep is scheduled on (None: none is)."""

    async def receive(self, receive: Receive, deadline: float) -> Message:
        """`await receive()`, raising TimeoutError once the loop's clock passes `deadline`."""
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        self._waiting[task] = deadline
        if self._sweep_on is not loop:
            self._sweep_on = loop
            loop.call_later(self.interval, self._sweep, loop)
        try:
            return await receive()
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            task.uncancel()
            raise TimeoutError from None
        finally:
            del self._waiting[task]
            self._expired.discard(task)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        # A task is listed only while it is suspended in receive(), so the cancel lands there.
        now = loop.time()
        for task, deadline in list(self._waiting.items()):
            if deadline <= now and task.get_loop() is loop and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        if any(task.get_loop() is loop for task in self._waiting):
            loop.call_later(self.interval, self._sweep, loop)
        elif self._sweep_on is loop:
            self._sweep_on = None


class BodyLimit:
    """Reject bodies over `limit` bytes (declared or streamed) or slower than `timeout` seconds."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        timeout: float,
        embed_limit: int | None = None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.embed_limit = embed_limit
        self._deadlines = BodyDeadlines(timeout)

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
            await error_response(PayloadTooLarge(message_text))(scope, receive, send)
            return
        seen = 0
        complete = False
        deadline: float | None = None
        loop = asyncio.get_running_loop()

        async def limited_receive() -> Message:
            nonlocal seen, complete, deadline
            deadlines = self._deadlines
            if complete:
                message = await receive()  # the body is in: waiting for a disconnect is fine
            else:
                if deadline is None:
                    deadline = loop.time() + deadlines.timeout
                try:
                    message = await deadlines.receive(receive, deadline)
                except TimeoutError:
                    raise HTTPException(
                        408,
                        f"request body not received within {deadlines.timeout:g} s "
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
