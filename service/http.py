"""uvicorn's httptools protocol, with the writes of one event-loop turn sent as one.

uvicorn writes a response's head and its body separately, so every answer cost two `send`
system calls and two TCP segments: under load on digits the two writes were 15% of the event
loop's time (py-spy, bench/README.md). Gathering what one turn of the loop writes and sending
it when the turn ends makes that one call, for a delay of microseconds. An answer that is
alone (no other request in the app or on its way, service.arrivals) leaves as soon as its last
byte is written instead: nothing would join it, and waiting for the turn's end kept its client
waiting while the request's task unwound (digits at one client, bench/README.md).

It also bounds a request's head (request line and headers), which uvicorn's httptools protocol
leaves unbounded in size and in time: past EDGE_MAX_HEADER_BYTES the request gets a 431, past
EDGE_HEADER_TIMEOUT_SECONDS a 408, and the connection closes. A 100 MB header value used to
stall the event loop for 6-7 s and add 160 MB of RSS; a header line every 5 s held a
connection open for good. A chunked body's trailer fields, parsed as headers are, are held to
the same size limit (a 100 MB trailer stalled health for 5-7 s). Malformed framing gets the
service's JSON 400 naming the fault, not uvicorn's plain-text "Invalid HTTP request received."
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Protocol, cast

from prometheus_client import Counter
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from service.arrivals import ARRIVALS
from service.body_limits import Deadlines
from service.connections import SCOPE_KEY, Connection

BODY_BUFFER_BYTES = 1024 * 1024
"""Unread request body uvicorn holds before it stops reading the socket (its default: 64 KiB).

At most this much waits per connection ahead of the app, which reads every body as it comes
anyway (EDGE_MAX_REQUEST_BYTES bounds what it keeps). At 64 KiB, each socket read of a large
body paused and resumed the socket (two epoll calls and a wake-up per read). OCR's 0.9 MB JSON
requests at 16 clients, interleaved with the minimal endpoint (6 rounds): 24.9 -> 26.3 req/s.
"""
httptools_impl.HIGH_WATER_LIMIT = BODY_BUFFER_BYTES  # read by on_body at call time

MAX_HEAD_BYTES = 64 * 1024
"""Request line + headers allowed when nothing else is set (EDGE_MAX_HEADER_BYTES's default)."""

HEAD_TIMEOUT_SECONDS = 10.0
"""Time to send them when nothing else is set (EDGE_HEADER_TIMEOUT_SECONDS's default)."""

UNTIMED = -1.0
"""head_since while a chunked body's trailer is counted: no head deadline is armed for it."""

LINGER_SECONDS = 2.0
"""How long a refused connection is still read, and what arrives dropped, before it closes.

Closing a socket with unread input sends a reset, which can reach a client still writing its
oversized head before it reads the 431 (nginx's lingering close exists for this). Two seconds
let a client on a LAN finish writing and read the answer; nothing read is kept.
"""


class Overdue(Protocol):
    """What a head deadline is kept for: a connection reading a head, or one lingering."""

    def get_loop(self) -> asyncio.AbstractEventLoop: ...

    def overdue(self) -> None: ...


class HeadDeadlines(Deadlines[Overdue]):
    """Connections whose head is late (or whose linger is over): the bodies' sweep, reused."""

    def expire(self, key: Overdue) -> None:
        key.overdue()


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
    clients that have left. And it bounds each request's head in bytes and in time, and a
    chunked body's trailer in bytes; what it refuses, and framing the parser refuses, gets a
    JSON error once the answers owed before it are sent.

    Per request, the head checks cost a byte count and three attribute writes in three
    callbacks (0.55 us in-process): a head that comes whole in one read is never put under a
    deadline (a fresh connection is, once) and no timer is armed per request. The trailer
    count adds a call per body read and two attribute accesses per request.
    """

    max_head_bytes = MAX_HEAD_BYTES
    """Request line + headers allowed; the parser never sees more (one read more at most)."""
    head_deadlines = HeadDeadlines(HEAD_TIMEOUT_SECONDS)
    """Heads in progress across reads, and refused connections lingering (one per server)."""
    refused: Counter | None = None
    """Refusals by status (edge_refused_requests_total), where the app's metrics are given."""

    head_bytes: int | None
    """Bytes read of the head in progress (0: none yet); None while a body or an answer is."""
    refusal: bytes | None = None
    """A refusal's answer waiting for the answer owed before it (b"": only the close waits)."""
    head_since: float | None
    """When the head in progress started being watched (None: it is not watched; UNTIMED: the
    bytes counted are a chunked body's trailer, which the body's deadline times)."""

    @classmethod
    def limited(
        cls, max_head_bytes: int, head_timeout: float, refused: Counter
    ) -> type[CoalescingHttpToolsProtocol]:
        """This protocol with the service's head limits (EDGE_MAX_HEADER_BYTES and
        EDGE_HEADER_TIMEOUT_SECONDS) and refusal counter, for `uvicorn.Config(http=...)`."""
        limits = {
            "max_head_bytes": max_head_bytes,
            "head_deadlines": HeadDeadlines(head_timeout),
            "refused": refused,
        }
        return cast(type[CoalescingHttpToolsProtocol], type(cls.__name__, (cls,), limits))

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the connection lives on (as the deadline sweep asks)."""
        return self.loop

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.connection = Connection()
        self.head_bytes = 0
        # A connection that has sent nothing yet is timed too (uvicorn's keep-alive timeout
        # only starts after a first answer).
        self.head_since = self.loop.time()
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self.head_deadlines.watch(self, self.head_since + self.head_deadlines.timeout, self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.disconnected = True
        self.head_deadlines.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # HttpToolsProtocol.x(self), not super().x(), in the three per-request callbacks: each
        # super() cost ~0.2 us here (1.2 -> 0.55 us per request for the head checks, in-process).
        head = self.head_bytes
        if head is None:  # a body, or bytes while the answer is under way: uvicorn's as before
            HttpToolsProtocol.data_received(self, data)
            return
        head += len(data)
        if head > self.max_head_bytes:
            self._receive_long_head(data)
            return
        self.head_bytes = head
        HttpToolsProtocol.data_received(self, data)
        if self.head_bytes and self.head_since is None:
            # A kept-alive connection's next head came in part: its time starts now.
            self.head_since = now = self.loop.time()
            self.head_deadlines.watch(self, now + self.head_deadlines.timeout, self.loop)

    def _receive_long_head(self, data: bytes) -> None:
        """Parse a head only up to the limit: a body in the same read goes on as usual."""
        room = self.max_head_bytes - (self.head_bytes or 0)
        self.head_bytes = self.max_head_bytes  # on_headers_complete changes it if the head ends
        if room:
            super().data_received(data[:room])
        if self.head_bytes == self.max_head_bytes:
            what = "trailer fields" if self.head_since == UNTIMED else "request line and headers"
            self._refuse(
                431,
                f"{what} are over the limit of {self.max_head_bytes} bytes (EDGE_MAX_HEADER_BYTES)",
            )
        elif self.transport.get_protocol() is self and not self.transport.is_closing():
            self.data_received(data[room:])

    def on_headers_complete(self) -> None:
        self.head_bytes = None
        if self.head_since is not None:
            self.head_since = None
            self.head_deadlines.forget(self)
        HttpToolsProtocol.on_headers_complete(self)

    def on_chunk_header(self) -> None:
        # A chunk-size line was parsed. Its data comes next (on_body stops the count), or, after
        # the last chunk, trailer fields, which httptools gathers as it gathers headers: they
        # are counted as a head is, and timed by the body's deadline (EDGE_BODY_TIMEOUT_SECONDS).
        self.head_bytes = 0
        self.head_since = UNTIMED

    def on_body(self, body: bytes) -> None:
        self.head_bytes = None
        HttpToolsProtocol.on_body(self, body)

    def on_message_complete(self) -> None:
        self.head_bytes = 0  # what comes next is the next request's head
        self.head_since = None
        HttpToolsProtocol.on_message_complete(self)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to framing httptools cannot parse, as the service's JSON error.

        uvicorn calls it while handling the parser's error, which names the fault."""
        fault = sys.exc_info()[1]
        detail = f": {fault}" if fault is not None and str(fault) else ""
        self._refuse(400, f"malformed HTTP request{detail}")

    def overdue(self) -> None:
        """The head in progress missed its deadline: 408, or a plain close if nothing came."""
        self.head_since = None
        if self.head_bytes:
            self._refuse(
                408,
                "request line and headers not received within "
                f"{self.head_deadlines.timeout:g} s (EDGE_HEADER_TIMEOUT_SECONDS)",
            )
        elif not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with a JSON error and close; read and drop the input meanwhile.

        The refusal never goes ahead of the answers owed to earlier requests on the connection,
        running or queued (HTTP/1.1 answers in order): it waits for the last of them."""
        transport = self.transport
        self.head_deadlines.forget(self)
        self.head_bytes = None  # nothing more is parsed or timed on this connection
        if transport.is_closing():
            return
        self.logger.info("%s - %s", ":".join(map(str, self.client or ())), message)
        if self.refused is not None:
            self.refused.labels(str(status)).inc()
        answer = self._error_answer(status, message)
        cycle = self.cycle
        owed = bool(self.pipeline)  # requests queued: one before them is running
        if cycle is not None and cycle.more_body:  # the refused bytes are its own body's framing
            if cycle.response_started:
                answer = b""  # its answer is begun or sent: the refusal answers nothing
            else:
                cycle.disconnected = True  # its app stops reading the body and answers nothing
                cycle.message_event.set()
                if owed and self.pipeline[0][0] is cycle:
                    self.pipeline.popleft()  # queued (the newest is on the left): never run
        owed = owed or (
            cycle is not None and not cycle.response_complete and not cycle.disconnected
        )
        transport.set_protocol(Lingering(self))
        if owed:
            self.refusal = answer  # on_response_complete sends it after the last answer owed
        else:
            self._end(answer)

    def _error_answer(self, status: int, message: str) -> bytes:
        """A whole HTTP answer: `status`, the service's JSON error, and the connection closing."""
        body = json.dumps({"error": message}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        return b"".join(head) + body

    def _end(self, answer: bytes) -> None:
        """Send `answer` (none if empty) and end the output; close after LINGER_SECONDS."""
        self.refusal = None
        transport = cast(CoalescingTransport, self.transport)
        if transport.is_closing():
            return
        if answer:
            transport.write(answer)
        transport.flush()
        if transport.can_write_eof():
            transport.write_eof()  # the client sees the answer end; its writes are still read
        lingering = transport.get_protocol()
        self.head_deadlines.watch(lingering, self.loop.time() + LINGER_SECONDS, self.loop)

    def on_response_complete(self) -> None:
        # The answer's last bytes are written. Alone, it leaves now: the rest of the request's
        # work (the app's layers unwinding, the task ending) then overlaps the client's turn.
        if ARRIVALS.alone:
            self.transport.flush()  # type: ignore[attr-defined]
        if self.refusal is None:
            super().on_response_complete()
            return
        last = not self.pipeline  # else the next queued request starts now
        super().on_response_complete()
        if last:
            self._end(self.refusal)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        cycle.scope["extensions"] = {SCOPE_KEY: {"connection": self.connection}}
        super()._start_asgi_task(cycle, app)
        ARRIVALS.started()


class Lingering(asyncio.Protocol):
    """A refused connection's last moments: what the client still sends is read and dropped."""

    def __init__(self, owner: CoalescingHttpToolsProtocol) -> None:
        self.owner = owner

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the connection lives on (as the deadline sweep asks)."""
        return self.owner.loop

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        # The client is done writing. With the answers sent, the transport closes; while a
        # refusal waits for an earlier answer, it stays open to send both.
        return self.owner.refusal is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.head_deadlines.forget(self)
        self.owner.connection_lost(exc)

    def overdue(self) -> None:
        """LINGER_SECONDS are over: close, whatever the client is still sending."""
        self.owner.transport.close()
