"""Request body limits as pure ASGI middleware: 413 past the size, 408 past the time to send it.

Its deadline sweep (Deadlines) also times request heads out (service.http).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Generic, Protocol, TypeVar

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, error_response

# Sentences are parsed into Python strings before any handler runs: their body gets a cap
# from EDGE_MAX_SENTENCES x EDGE_MAX_SENTENCE_CHARS, so a list of many tiny strings cannot
# make the server hold several times the general body limit as objects.
EMBED_PATH = re.compile(r"^/tasks/[^/]+/embed$")


class OnLoop(Protocol):
    """What a deadline is kept for: it knows the event loop it lives on."""

    def get_loop(self) -> asyncio.AbstractEventLoop: ...


K = TypeVar("K", bound=OnLoop)


class Deadlines(Generic[K]):
    """Things due by a deadline, found by one sweep every `interval` s on their event loop.

    asyncio.timeout arms and cancels a loop timer per receive: 8.0-8.7 us on uvloop against
    1.2 us for this (interleaved, one process), about 3% of a digits request's time in the
    service. One sweep serves every waiting thing instead; an expiry comes up to `interval`
    late. Request bodies (BodyDeadlines) and request heads (service.http) keep theirs here.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.interval = min(1.0, timeout / 4)
        self._waiting: dict[K, float] = {}
        self._sweep_on: asyncio.AbstractEventLoop | None = None
        """The loop a sweep is scheduled on (None: none is)."""

    def watch(self, key: K, deadline: float, loop: asyncio.AbstractEventLoop) -> None:
        """Expire `key` once `loop`'s clock passes `deadline`, unless it is forgotten first."""
        self._waiting[key] = deadline
        if self._sweep_on is not loop:
            self._arm(loop)

    def forget(self, key: K) -> None:
        """`key` made it in time, or is gone: no expiry for it."""
        self._waiting.pop(key, None)

    def expire(self, key: K) -> None:
        """Act on `key`, past its deadline and no longer watched (each kind says how)."""
        raise NotImplementedError

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep_on = loop
        loop.call_later(self.interval, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for key, deadline in list(self._waiting.items()):
            if deadline <= now and key.get_loop() is loop and key in self._waiting:
                del self._waiting[key]
                self.expire(key)
        if any(key.get_loop() is loop for key in self._waiting):
            loop.call_later(self.interval, self._sweep, loop)
        elif self._sweep_on is loop:
            self._sweep_on = None


class BodyDeadlines(Deadlines[asyncio.Task[Any]]):
    """Requests waiting for body bytes past `timeout`: their receive raises TimeoutError."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self._expired: set[asyncio.Task[Any]] = set()

    async def receive(self, receive: Receive, deadline: float) -> Message:
        """`await receive()`, raising TimeoutError once the loop's clock passes `deadline`."""
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        self._waiting[task] = deadline  # watch(), inlined: this runs for every request body
        if self._sweep_on is not loop:
            self._arm(loop)
        try:
            return await receive()
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            task.uncancel()
            raise TimeoutError from None
        finally:
            self._waiting.pop(task, None)
            self._expired.discard(task)

    def expire(self, key: asyncio.Task[Any]) -> None:
        # A task is watched only while it is suspended in receive(), so the cancel lands there.
        self._expired.add(key)
        key.cancel()


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
