"""Load generators: wrk for throughput and latency, a small asyncio client for overload runs.

wrk (C, one thread) drives the throughput grid; its CPU share of its core is measured on every
run to show it is not the bottleneck. The overload run needs per-request status *and* latency
(p99 of the 200s alone, 503s apart) and a liveness probe beside the load, which wrk cannot
report, so a short asyncio client does that one.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.payloads import Payload

WRK_SCRIPT = Path(__file__).with_name("wrk.lua")


@dataclass
class LoadResult:
    """One load run: answers by status, rate of 200s, latency percentiles in ms."""

    requests: int
    ok: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    statuses: dict[str, int]
    errors: int
    generator_cpu: float
    """Share of one core the load generator used (1.0: it was the bottleneck)."""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ok_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    url: str, payload: Payload, connections: int, seconds: float, core: int | None
) -> LoadResult:
    """One wrk run (one thread) with a fixed body; the generator pinned to `core`."""
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk, or `make bench` as root)")
    with tempfile.NamedTemporaryFile(suffix=".body") as body:
        body.write(payload.body)
        body.flush()
        env = {
            **os.environ,
            "BENCH_BODY": body.name,
            "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in payload.headers.items()),
        }
        command = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout",
                   "10s",
                   "-s", str(WRK_SCRIPT), url]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None,
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    summary = json.loads(line.removeprefix("BENCH "))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    statuses = {str(k): int(v) for k, v in summary["statuses"].items()}
    errors = sum(v for k, v in summary["errors"].items() if k != "status")
    return LoadResult(
        requests=int(summary["requests"]),
        ok=statuses.get("200", 0),
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p90_ms=summary["p90_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        statuses=statuses,
        errors=errors,
        generator_cpu=cpu / wall if wall else 0.0,
    )


# --- asyncio client: status and latency per request, plus a liveness probe ----------------------


def _request_bytes(host: str, path: str, payload: Payload) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(payload.body)}"]
    head += [f"{k}: {v}" for k, v in payload.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload.body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Send one request, read one response; its status."""
    writer.write(request)
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    await reader.readexactly(length)
    return status


async def _overload(
    host: str, port: int, path: str, payload: Payload, connections: int, seconds: float
) -> tuple[list[tuple[int, float]], list[float], int]:
    request = _request_bytes(f"{host}:{port}", path, payload)
    probe = f"GET /v2/health/live HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    deadline = time.perf_counter() + seconds
    answers: list[tuple[int, float]] = []
    probes: list[float] = []
    failures = 0

    async def client() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    status = await _exchange(reader, writer, request)
                except (ConnectionError, asyncio.IncompleteReadError):
                    failures += 1
                    return
                answers.append((status, time.perf_counter() - started))
        finally:
            writer.close()

    async def prober() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await _exchange(reader, writer, probe)
                probes.append(time.perf_counter() - started)
                await asyncio.sleep(0.1)
        finally:
            writer.close()

    await asyncio.gather(prober(), *(client() for _ in range(connections)))
    return answers, probes, failures


def run_overload(
    url: str, path: str, payload: Payload, connections: int, seconds: float
) -> LoadResult:
    """`connections` clients that never back off, and a liveness probe every 100 ms."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    cpu_before, started = time.process_time(), time.perf_counter()
    answers, probes, failures = asyncio.run(
        _overload(host, int(port), path, payload, connections, seconds)
    )
    wall = time.perf_counter() - started
    statuses: dict[str, int] = {}
    for status, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = sorted(latency for status, latency in answers if status == 200)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(len(values) * q))] * 1000 if values else 0.0

    return LoadResult(
        requests=len(answers),
        ok=len(ok),
        seconds=wall,
        p50_ms=pct(ok, 0.5),
        p90_ms=pct(ok, 0.9),
        p99_ms=pct(ok, 0.99),
        statuses=statuses,
        errors=failures,
        generator_cpu=(time.process_time() - cpu_before) / wall if wall else 0.0,
        extra={
            "live_max_ms": max(probes) * 1000 if probes else float("nan"),
            "live_probes": float(len(probes)),
            "rejected_p50_ms": pct(sorted(t for s, t in answers if s == 503), 0.5),
        },
    )
