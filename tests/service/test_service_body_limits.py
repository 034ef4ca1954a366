"""The body limit's deadline, in-process on both event loops the service may run on.

A slow-body client over real sockets is in test_service_hostile.py; these pin down the
deadline sweep itself: it times out only bodies that do not come, and leaves other
cancellations alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from service.body_limits import BodyLimit

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}
SCOPE: Scope = {"type": "http", "path": "/v2/models/digits/infer", "headers": []}


async def read_body(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that reads one body message (and keeps it in the scope for the test)."""
    scope["message"] = await receive()


async def never() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


@pytest.mark.parametrize("loop", RUNNERS)
def test_a_body_that_never_comes_gets_408(loop: str) -> None:
    async def main() -> int:
        limit = BodyLimit(read_body, limit=1024, timeout=0.2)
        with pytest.raises(HTTPException) as raised:
            await asyncio.wait_for(limit(dict(SCOPE), never, _no_send), timeout=30)
        return raised.value.status_code

    assert RUNNERS[loop](main()) == 408


@pytest.mark.parametrize("loop", RUNNERS)
def test_bodies_that_arrive_pass_while_a_stalled_one_times_out(loop: str) -> None:
    async def main() -> tuple[list[Message], BaseException | None]:
        limit = BodyLimit(read_body, limit=1024, timeout=0.2)
        stalled = asyncio.ensure_future(limit(dict(SCOPE), never, _no_send))
        delivered = []
        for index in range(5):  # across several sweeps
            scope = dict(SCOPE)
            await limit(scope, _body(b"x" * index), _no_send)
            delivered.append(scope["message"])
            await asyncio.sleep(0.05)
        await asyncio.wait([stalled], timeout=30)
        return delivered, stalled.exception()

    delivered, error = RUNNERS[loop](main())
    assert [message["body"] for message in delivered] == [b"x" * i for i in range(5)]
    assert isinstance(error, HTTPException) and error.status_code == 408


@pytest.mark.parametrize("loop", RUNNERS)
def test_a_cancel_from_elsewhere_stays_a_cancel(loop: str) -> None:
    """Server shutdown cancels a request waiting for its body: that is not the client's 408."""

    async def main() -> bool:
        limit = BodyLimit(read_body, limit=1024, timeout=30)
        waiting = asyncio.ensure_future(limit(dict(SCOPE), never, _no_send))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.wait([waiting])
        return waiting.cancelled()

    assert RUNNERS[loop](main())


def _body(data: bytes) -> Receive:
    async def receive() -> Message:
        return {"type": "http.request", "body": data, "more_body": False}

    return receive


async def _no_send(message: Message) -> None:
    raise AssertionError(f"nothing is sent here, got {message['type']}")
