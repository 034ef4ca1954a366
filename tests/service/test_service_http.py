"""CoalescingTransport on a real socket pair and event loop: one turn's writes leave together."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from service.http import CoalescingTransport


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
