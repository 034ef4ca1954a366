"""Request heads and framing bounded, over real sockets to a real server (service.http).

uvicorn's httptools protocol parsed a head of any size for any time: a 100 MB header value
stalled /v2/health/live for 6-7 s and added 160 MB of RSS, and a header line every 5 s kept a
connection open for good. Now a head over EDGE_MAX_HEADER_BYTES gets 431, one slower than
EDGE_HEADER_TIMEOUT_SECONDS gets 408, both as JSON, and the connection closes. A chunked
body's trailer is held to the same limit (a 100 MB one stalled health for 5-7 s), framing the
parser refuses gets a JSON 400 (it was uvicorn's plain text), and no refusal goes ahead of an
answer owed to a request before it on the connection.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from loadtests.process import rss_bytes
from service.config import Settings
from service.http import HEAD_TIMEOUT_SECONDS, MAX_HEAD_BYTES

HEAD_LIMIT = 32 * 1024  # EDGE_MAX_HEADER_BYTES for this module's server (not the default)
HEAD_TIMEOUT = 1.0  # EDGE_HEADER_TIMEOUT_SECONDS: its sweep runs every 0.25 s
LATE = HEAD_TIMEOUT + 1.5  # a deadline's answer comes by then (sweep interval plus slack)
BIG_HEADER_BYTES = 100 * 1024 * 1024  # the probe's header value
RSS_GROWTH_LIMIT = 16 * 1024 * 1024  # before the fix: +160 MB for one 100 MB header
HEALTH_LIMIT_SECONDS = 0.5  # before the fix: 6-7 s while one 100 MB header streamed
INFER = "/v2/models/digits/versions/fp32/infer"
BIG_HEAD_OPENING = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: "  # then the value


@pytest.fixture(scope="module")
def server(
    model_repository: Path, servers: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    log = tmp_path_factory.mktemp("header-limits") / "server.log"
    started = servers.start_server(
        model_repository,
        log,
        EDGE_MAX_HEADER_BYTES=str(HEAD_LIMIT),
        EDGE_HEADER_TIMEOUT_SECONDS=str(HEAD_TIMEOUT),
    )
    yield started
    servers.stop_server(started)


def connect(server: Any, timeout: float = 10.0) -> socket.socket:
    host, port = server.host_port.split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_reply(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a content-length: status, headers (lower-case), body.

    Reads exactly that answer's bytes, so a pipelined answer behind it stays on the socket."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, f"connection closed before an answer: {head!r}"
        head += byte
    lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    body = b""
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(int(headers["content-length"]) - len(body))
        assert chunk, "connection closed inside an answer"
        body += chunk
    return int(lines[0].split(" ", 2)[1]), headers, body


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes the connection (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def stream_big_header(
    sock: socket.socket,
    stop: threading.Event | None = None,
    opening: bytes = BIG_HEAD_OPENING,
) -> int:
    """`opening`, then one header value running to BIG_HEADER_BYTES; the bytes the server took."""
    sent = 0
    chunk = b"a" * (1024 * 1024)
    try:
        sock.sendall(opening)
        while sent < BIG_HEADER_BYTES and not (stop and stop.is_set()):
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # the server closed it: what a client streaming on may see
        pass
    return sent


def digits_json(images: np.ndarray, padding: int = 0) -> bytes:
    """A JSON infer body for one digits image, padded with `padding` spaces (still valid)."""
    payload = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                           "data": images[:1].ravel().tolist()}]}  # fmt: skip
    return json.dumps(payload).encode() + b" " * padding


def infer_request(body: bytes) -> bytes:
    """A whole POST of `body` to digits' fp32 infer, with its Content-Length."""
    return (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def chunked_head(path: str = INFER) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_settings_default_to_the_protocols_own_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings.model_fields
    assert defaults["max_header_bytes"].default == MAX_HEAD_BYTES == 64 * 1024
    assert defaults["header_timeout_seconds"].default == HEAD_TIMEOUT_SECONDS
    monkeypatch.setenv("EDGE_MAX_HEADER_BYTES", "512")  # below what any real client sends
    with pytest.raises(ValidationError):
        Settings()


def answer_to_a_big_header(
    server: Any, opening: bytes
) -> tuple[int, dict[str, str], bytes, float, tuple[int, int]]:
    """`opening` then a header value streamed to BIG_HEADER_BYTES (stream_big_header): the
    answer, the seconds it took, and the server's RSS before and after; the close is checked."""
    pid = server.process.pid
    rss_before = rss_bytes(pid)
    with connect(server) as sock:
        started = time.perf_counter()
        sender = threading.Thread(target=stream_big_header, args=(sock, None, opening))
        sender.start()
        status, headers, body = read_reply(sock)
        answered = time.perf_counter() - started
        sender.join(timeout=30)
        assert closed_within(sock, 10)
    return status, headers, body, answered, (rss_before, rss_bytes(pid))


def test_a_100_mb_header_gets_431_at_once_and_the_server_keeps_none_of_it(server: Any) -> None:
    status, headers, body, answered, (rss_before, rss_after) = answer_to_a_big_header(
        server, BIG_HEAD_OPENING
    )
    assert status == 431 and answered < 1.0, answered
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert "EDGE_MAX_HEADER_BYTES" in json.loads(body)["error"]
    assert rss_after - rss_before < RSS_GROWTH_LIMIT, (rss_before, rss_after)


def test_a_head_one_byte_over_the_limit_gets_431_and_one_at_it_passes(server: Any) -> None:
    def head_of(size: int) -> bytes:
        start = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Pad: "
        return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"

    for size, expected in ((HEAD_LIMIT, 200), (HEAD_LIMIT + 1, 431)):
        with connect(server) as sock:
            sock.sendall(head_of(size))
            status, _, _ = read_reply(sock)
        assert status == expected, size


def test_health_and_metrics_answer_while_big_heads_stream(server: Any) -> None:
    stop = threading.Event()
    streamed: list[int] = []

    def attacker() -> None:
        while not stop.is_set():
            with connect(server) as sock:
                streamed.append(stream_big_header(sock, stop))

    attackers = [threading.Thread(target=attacker) for _ in range(4)]
    for thread in attackers:
        thread.start()
    slowest = 0.0
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                for path in ("/v2/health/live", "/metrics"):
                    started = time.perf_counter()
                    assert http.get(path).status_code == 200
                    slowest = max(slowest, time.perf_counter() - started)
                time.sleep(0.02)
    finally:
        stop.set()
        for thread in attackers:
            thread.join(timeout=30)
    assert streamed, "no big header was sent"
    assert slowest < HEALTH_LIMIT_SECONDS, slowest


def test_a_slow_head_gets_408_when_its_time_is_up(server: Any) -> None:
    """One header line every 0.2 s: each keeps the connection busy, none resets the clock."""
    with connect(server) as sock:
        started = time.perf_counter()
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        sock.settimeout(0.2)
        reply = b""
        while b"\r\n\r\n" not in reply:
            try:
                reply += sock.recv(65536)
            except TimeoutError:
                sock.sendall(b"X-Slow: 1\r\n")
        waited = time.perf_counter() - started
        sock.settimeout(10)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), reply
        assert HEAD_TIMEOUT * 0.9 < waited < LATE, waited
        if not body.endswith(b"}"):
            body += sock.recv(65536)
        assert "EDGE_HEADER_TIMEOUT_SECONDS" in json.loads(body)["error"]
        assert closed_within(sock, 5)


def test_a_connection_that_sends_nothing_is_closed_quietly(server: Any) -> None:
    with connect(server) as sock:
        started = time.perf_counter()
        sock.settimeout(LATE + 5)
        assert sock.recv(65536) == b""  # closed, no answer to a request nobody made
        assert HEAD_TIMEOUT * 0.9 < time.perf_counter() - started < LATE


def test_a_kept_alive_connections_next_head_has_its_own_deadline(server: Any) -> None:
    with connect(server) as sock:
        for _ in range(2):  # each answered head forgets its deadline
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_reply(sock)[0] == 200
            time.sleep(HEAD_TIMEOUT * 0.75)
        started = time.perf_counter()
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # and no end
        status, _, _ = read_reply(sock)
        assert status == 408 and time.perf_counter() - started < LATE


def test_typical_requests_still_pass(server: Any, held_out: tuple[np.ndarray, np.ndarray]) -> None:
    """tritonclient with extra headers; a body far larger than the head limit in the same
    write as its head; two requests pipelined in one write."""
    images, _ = held_out
    triton = httpclient.InferenceServerClient(url=server.host_port)
    try:
        tensor = httpclient.InferInput("input", [4, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(images[:4], binary_data=True)
        headers = {"Authorization": "Bearer " + "t" * 2048, "X-Request-Id": "abc-123"}
        result = triton.infer("digits", [tensor], model_version="fp32", headers=headers)
        assert result.as_numpy("logits").shape == (4, 10)
    finally:
        triton.close()

    request = infer_request(digits_json(images, padding=HEAD_LIMIT * 6))
    health = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(request + health)
        status, _, answer = read_reply(sock)
        assert status == 200, answer
        assert json.loads(answer)["outputs"][0]["shape"] == [1, 10]
        assert read_reply(sock)[0] == 200


def test_a_100_mb_trailer_gets_431_and_the_server_keeps_none_of_it(
    server: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    """A whole chunked body, then a trailer field whose value never ends."""
    opening = chunked_head() + chunk(digits_json(held_out[0])) + b"0\r\nX-Big: "
    status, headers, body, answered, (rss_before, rss_after) = answer_to_a_big_header(
        server, opening
    )
    assert status == 431 and answered < 1.0, (status, answered)
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert "trailer fields" in error and "EDGE_MAX_HEADER_BYTES" in error, error
    assert rss_after - rss_before < RSS_GROWTH_LIMIT, (rss_before, rss_after)


def test_chunks_larger_than_the_head_limit_and_a_small_trailer_pass(
    server: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    """Chunk data is body, not head, however many reads it spans; the connection then serves
    its next request."""
    body = digits_json(held_out[0], padding=HEAD_LIMIT * 4)
    half = len(body) // 2
    with connect(server) as sock:
        sock.sendall(chunked_head() + chunk(body[:half])[: HEAD_LIMIT * 2])
        time.sleep(0.1)  # the chunk's data arrives over several reads
        sock.sendall(chunk(body[:half])[HEAD_LIMIT * 2 :])
        time.sleep(0.1)
        sock.sendall(chunk(body[half:]) + b"0\r\nX-Checksum: 1234\r\n\r\n")
        status, _, answer = read_reply(sock)
        assert status == 200, answer
        assert json.loads(answer)["outputs"][0]["shape"] == [1, 10]
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(sock)[0] == 200


MALFORMED = {
    "content-length": b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n" % INFER.encode(),
    "both lengths": (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" % INFER.encode()
    ),
    "header name": b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
    "chunk size": chunked_head() + b'7\r\n{"input\r\nzz\r\n',
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_framing_gets_a_json_400_naming_the_fault(server: Any, case: str) -> None:
    with connect(server) as sock:
        sock.sendall(MALFORMED[case])
        status, headers, body = read_reply(sock)
        assert status == 400, body
        assert headers["content-type"] == "application/json"
        error = json.loads(body)["error"]
        assert error.startswith("malformed HTTP request: "), error
        assert closed_within(sock, 5)
    assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("refused", "status"),
    [
        (MALFORMED["header name"], 400),
        # Past the limit by more than a socket read (256 KiB): behind other requests in one
        # read, a head is counted from the read after the one it starts in.
        (b"GET /v2/health/live HTTP/1.1\r\nX-Pad: " + b"p" * 2**19 + b"\r\n\r\n", 431),
    ],
)
def test_a_refusal_waits_for_the_answer_owed_before_it(
    server: Any, held_out: tuple[np.ndarray, np.ndarray], refused: bytes, status: int
) -> None:
    """Good requests and a refused one pipelined in one write: the good ones are answered
    first, in order (the first used to be dropped, or answered by the refusal), then the
    refusal, then the close."""
    good = infer_request(digits_json(held_out[0]))
    health = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    for queued in ((), (health,)):
        with connect(server) as sock:
            sock.sendall(b"".join((good, *queued, refused)))
            first, _, answer = read_reply(sock)
            assert first == 200 and json.loads(answer)["outputs"][0]["shape"] == [1, 10]
            for _ in queued:
                assert read_reply(sock)[0] == 200
            last, _, answer = read_reply(sock)
            assert last == status and "error" in json.loads(answer), answer
            assert closed_within(sock, 5)


def refusals(server: Any) -> dict[str, float]:
    """edge_refused_requests_total by status, from the server's /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "edge_refused_requests_total"
    }


def test_refusals_are_counted_by_status(server: Any) -> None:
    """Refused before the app saw them, so only the HTTP layer can count them."""
    before = refusals(server)
    for refused in (MALFORMED["header name"], b"GET / HTTP/1.1\r\nX-Pad: " + b"p" * HEAD_LIMIT):
        with connect(server) as sock:
            sock.sendall(refused)
            read_reply(sock)
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")  # and no end: 408
        read_reply(sock)
    after = refusals(server)
    assert {status: after[status] - before[status] for status in after} == {
        "400": 1,
        "408": 1,
        "431": 1,
    }
