"""CoalescingTransport on a real socket pair and event loop: one turn's writes leave together,
and a lone answer leaves as soon as it is written."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvicorn
import uvloop
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from service.arrivals import ARRIVALS
from service.http import CoalescingHttpToolsProtocol, CoalescingTransport


async def _connected() -> tuple[asyncio.Transport, socket.socket]:
    """A real transport on one end of a socket pair; the other end stays a plain socket."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    return transport, peer


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_writes_of_one_loop_turn_leave_together_when_it_ends(
    run: Callable[[Coroutine[Any, Any, bytes]], bytes],
) -> None:
    async def scenario() -> bytes:
        transport, peer = await _connected()
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        coalescing.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        coalescing.write(b"{}")
        with pytest.raises(BlockingIOError):  # nothing sent before the turn ends
            peer.recv(1024)
        await asyncio.sleep(0.01)
        received = peer.recv(1024)
        transport.close()
        peer.close()
        return received

    assert run(scenario()) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"


def test_close_sends_what_is_pending_first() -> None:
    async def scenario() -> bytes:
        transport, peer = await _connected()
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        coalescing.write(b"last words")
        coalescing.close()
        await asyncio.sleep(0.01)
        received = peer.recv(1024)
        peer.close()
        return received

    assert asyncio.run(scenario()) == b"last words"


def _answer_then_look(others_inside: int) -> tuple[bytes | None, bytes]:
    """One request through the real protocol; the app writes its answer, then, before its call
    returns, looks at what the client has got. Returns that, and what the client got in the end.
    """
    ours, client = socket.socketpair()
    client.setblocking(False)
    seen: list[bytes | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        ARRIVALS.entered()  # as service.app.EdgeApp counts every request it serves
        try:
            await send(
                {"type": "http.response.start", "status": 200,
                 "headers": [(b"content-length", b"2")]}
            )  # fmt: skip
            await send({"type": "http.response.body", "body": b"{}"})
            try:
                seen.append(client.recv(1024))
            except BlockingIOError:
                seen.append(None)
        finally:
            ARRIVALS.left()

    async def scenario() -> bytes:
        config = uvicorn.Config(app, http=CoalescingHttpToolsProtocol, log_level="warning")
        config.load()
        loop = asyncio.get_running_loop()
        protocol = CoalescingHttpToolsProtocol(config, ServerState(), {}, _loop=loop)
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, ours)
        client.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        while not seen:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)  # the turn after the answer: anything pending has left
        rest = b""
        with contextlib.suppress(BlockingIOError):
            rest = client.recv(1024)
        transport.close()
        return (seen[0] or b"") + rest

    ARRIVALS.inside += others_inside
    try:
        got = uvloop.run(scenario())
    finally:
        ARRIVALS.inside -= others_inside
        client.close()
    return seen[0], got


def test_a_lone_answer_leaves_when_its_last_byte_is_written() -> None:
    """Nothing else in the app: the answer is sent before the app's call unwinds (digits at
    one client: p50 0.94x, bench/README.md), still as one send."""
    early, got = _answer_then_look(others_inside=0)
    assert early is not None and early.endswith(b"\r\n\r\n{}")
    assert got == early


def test_an_answer_among_others_waits_for_the_end_of_the_loop_turn() -> None:
    """Other requests inside: answers leave together when the turn ends, as before."""
    early, got = _answer_then_look(others_inside=1)
    assert early is None
    assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"\r\n\r\n{}")
