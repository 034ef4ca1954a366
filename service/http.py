"""uvicorn's httptools protocol, with the writes of one event-loop turn sent as one.

uvicorn writes a response's head and its body separately, so every answer cost two `send`
system calls and two TCP segments: under load on digits the two writes were 15% of the event
loop's time (py-spy, bench/README.md). Gathering what one turn of the loop writes and sending
it when the turn ends makes that one call, for a delay of microseconds. An answer that is
alone (no other request in the app or on its way, service.arrivals) leaves as soon as its last
byte is written instead: nothing would join it, and waiting for the turn's end kept its client
waiting while the request's task unwound (digits at one client, bench/README.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.arrivals import ARRIVALS
from service.connections import SCOPE_KEY, Connection

BODY_BUFFER_BYTES = 1024 * 1024
"""Unread request body uvicorn holds before it stops reading the socket (its default: 64 KiB).

At most this much waits per connection ahead of the app, which reads every body as it comes
anyway (EDGE_MAX_REQUEST_BYTES bounds what it keeps). At 64 KiB, each socket read of a large
body paused and resumed the socket (two epoll calls and a wake-up per read). OCR's 0.9 MB JSON
requests at 16 clients, interleaved with the minimal endpoint (6 rounds): 24.9 -> 26.3 req/s.
"""
httptools_impl.HIGH_WATER_LIMIT = BODY_BUFFER_BYTES  # read by on_body at call time


class CoalescingTransport:
    """A transport whose writes leave together at the end of the current loop turn."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        """Hand what is pending to the real transport (one send where the socket takes it)."""
        pending, self._pending = self._pending, []
        if not pending or self._transport.is_closing():
            return
        if len(pending) == 1:
            self._transport.write(pending[0])
        else:
            self._transport.writelines(pending)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a CoalescingTransport (`uvicorn.Config(http=...)`).

    It also counts the request tasks it starts (service.arrivals), which the app counts off as
    it enters them: the lanes batch tiny requests only when others are on their way, and an
    answer leaves at its last write when no other request is in the app. And it
    gives each request its connection (service.connections): lanes skip the requests of
    clients that have left.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.connection = Connection()
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.disconnected = True
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        # The answer's last bytes are written. Alone, it leaves now: the rest of the request's
        # work (the app's layers unwinding, the task ending) then overlaps the client's turn.
        if ARRIVALS.alone:
            self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        cycle.scope["extensions"] = {SCOPE_KEY: {"connection": self.connection}}
        super()._start_asgi_task(cycle, app)
        ARRIVALS.started()
