"""`python -m loadtests.soak`: hours-in-minutes traffic against one server, judged per window.

Starts the service on a repository (or drives a running one with --url and --pid), measures
the peak this generator reaches with the whole mix (closed loop), then sends the mix open-loop
at a fraction of it (default 70%) for the duration: every model and variant, v2 binary and
JSON, the task endpoint, compare, and a share of bad requests (each expected to get its 4xx).
Reports requests, errors (5xx apart), 503 sheds, p50/p99 per window and the server's RSS drift
(first vs last window) as soak.json and soak.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtests.process import ServiceProcess, rss_bytes, start_service, stop_service, wait_for
from loadtests.workload import (
    INFER_BINARY,
    INFER_JSON,
    Body,
    PreparedSample,
    Workload,
    load,
)

COMPARE = "compare"
BAD = "bad"
# Relative weights of the request kinds; BAD is a share of all requests.
KIND_WEIGHTS = {INFER_BINARY: 3, INFER_JSON: 1, "task": 2, COMPARE: 1}
BAD_SHARE = 0.05
MAX_OUTSTANDING = 256
"""Open-loop requests in flight at most; past it the generator is behind and says so."""


@dataclass(frozen=True)
class Call:
    """One request the soak may send, and what a correct answer is."""

    name: str
    kind: str
    url: str
    body: Body
    workload: Workload | None = None
    sample: PreparedSample | None = None
    expect: tuple[int, int] = (200, 200)
    """Inclusive status range a correct answer falls in (bad requests: 400-499)."""

    def judge(self, status: int, headers: Any, content: bytes) -> str:
        """'ok', 'shed' (503 + Retry-After), 'server_error' (any other 5xx) or 'error'."""
        if status == 503 and self.expect == (200, 200) and "retry-after" in headers:
            return "shed"
        if status >= 500:
            return "server_error"
        if not self.expect[0] <= status <= self.expect[1]:
            return "error"
        if self.kind in (INFER_BINARY, INFER_JSON, "task") and self.workload and self.sample:
            kind = self.kind if self.kind != "task" else str(self.workload.task_route)
            if self.workload.check(kind, self.sample, status, headers, content) is not None:
                return "error"
        return "ok"


def build_calls(workloads: list[Workload]) -> dict[str, list[Call]]:
    """Every (model, variant, kind, sample) request, grouped by kind, plus the bad ones."""
    calls: dict[str, list[Call]] = {kind: [] for kind in (*KIND_WEIGHTS, BAD)}
    for w in workloads:
        for sample in w.samples[:3]:
            for variant in w.variants:
                for kind in w.kinds():
                    group = kind if kind in (INFER_BINARY, INFER_JSON) else "task"
                    calls[group].append(
                        Call(
                            f"{w.model}/{variant}/{group}",
                            group,
                            w.url(variant, kind),
                            w.body(sample, kind),
                            w,
                            sample,
                        )
                    )
            calls[COMPARE].append(
                Call(
                    f"{w.model}/compare",
                    COMPARE,
                    f"/v2/models/{w.model}/compare",
                    sample.infer_json,
                )
            )
    first = workloads[0]
    json_header = {"Content-Type": "application/json"}
    overflow = {"inputs": [{"name": "x", "shape": [0, 2**63], "datatype": "FP32", "data": []}]}
    bad = [
        ("bad-json", f"/v2/models/{first.model}/infer", b"{not json", 400, 400),
        ("unknown-model", "/v2/models/no-such-model/infer", first.samples[0].infer_json.data,
         404, 404),
        ("overflowing-shape", f"/v2/models/{first.model}/infer", json.dumps(overflow).encode(),
         413, 413),
        ("empty-inputs", f"/v2/models/{first.model}/infer", b'{"inputs": []}', 400, 400),
        ("unknown-variant", f"/v2/models/{first.model}/versions/fp3/infer",
         first.samples[0].infer_json.data, 404, 404),
    ]  # fmt: skip
    for name, url, data, low, high in bad:
        calls[BAD].append(Call(name, BAD, url, Body(data, json_header), expect=(low, high)))
    return {kind: group for kind, group in calls.items() if group}


class Mix:
    """Random requests in the soak's proportions (seeded: runs are comparable)."""

    def __init__(self, calls: dict[str, list[Call]], seed: int = 12) -> None:
        self.calls = calls
        self.random = random.Random(seed)
        self.kinds = [k for k in KIND_WEIGHTS if k in calls]
        self.weights = [KIND_WEIGHTS[k] for k in self.kinds]

    def next(self) -> Call:
        if BAD in self.calls and self.random.random() < BAD_SHARE:
            return self.random.choice(self.calls[BAD])
        kind = self.random.choices(self.kinds, self.weights)[0]
        return self.random.choice(self.calls[kind])


@dataclass
class Record:
    at: float
    seconds: float
    outcome: str
    call: str
    bad: bool


async def send(client: httpx.AsyncClient, call: Call, started: float, out: list[Record]) -> None:
    """One request; its outcome and latency recorded (a transport error counts as an error)."""
    begin = time.monotonic()
    try:
        response = await client.post(call.url, content=call.body.data, headers=call.body.headers)
        outcome = call.judge(response.status_code, response.headers, response.content)
    except httpx.HTTPError:
        outcome = "error"
    end = time.monotonic()
    out.append(Record(begin - started, end - begin, outcome, call.name, call.kind == BAD))


async def measure_peak(url: str, mix: Mix, seconds: float, workers: int) -> float:
    """Requests per second the mix reaches closed-loop with `workers` at once."""
    records: list[Record] = []
    started = time.monotonic()
    limits = httpx.Limits(max_connections=workers)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() - started < seconds:
                await send(client, mix.next(), started, records)

        await asyncio.gather(*(worker() for _ in range(workers)))
    return len(records) / max(time.monotonic() - started, 1e-9)


async def soak(url: str, mix: Mix, rate: float, seconds: float) -> tuple[list[Record], int]:
    """Open loop at `rate` req/s for `seconds`; the records and how often the generator lagged."""
    records: list[Record] = []
    behind = 0
    started = time.monotonic()
    limits = httpx.Limits(max_connections=MAX_OUTSTANDING)
    tasks: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        sent = 0
        while (now := time.monotonic() - started) < seconds:
            due = int(now * rate) - sent
            for _ in range(due):
                if len(tasks) >= MAX_OUTSTANDING:
                    behind += 1
                    continue
                task = asyncio.create_task(send(client, mix.next(), started, records))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            sent += due
            await asyncio.sleep(0.005)
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    return records, behind


async def sample_rss(pid: int | None, out: list[tuple[float, float]], stop: asyncio.Event) -> None:
    """The server's VmRSS once a second, in MB."""
    started = time.monotonic()
    while pid is not None and not stop.is_set():
        out.append((time.monotonic() - started, rss_mb(pid)))
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass


def rss_mb(pid: int) -> float:
    """VmRSS of a process in MB (0 where it cannot be read)."""
    return rss_bytes(pid) / (1024 * 1024)


def summarise(
    records: list[Record],
    rss: list[tuple[float, float]],
    seconds: float,
    window: float,
) -> dict[str, Any]:
    """Totals, per-window figures and the RSS drift from first to last window."""
    outcomes = Counter(r.outcome for r in records)
    windows = []
    count = max(1, round(seconds / window))
    for index in range(count):
        low, high = index * window, (index + 1) * window
        inside = [r for r in records if low <= r.at < high]
        good = np.array([r.seconds for r in inside if r.outcome == "ok"]) * 1000
        memory = [mb for at, mb in rss if low <= at < high]
        tally = Counter(r.outcome for r in inside)
        windows.append(
            {
                "start_s": round(low),
                "requests": len(inside),
                "ok": tally["ok"],
                "errors": tally["error"],
                "server_errors": tally["server_error"],
                "shed_503": tally["shed"],
                "p50_ms": round(float(np.percentile(good, 50)), 2) if good.size else None,
                "p99_ms": round(float(np.percentile(good, 99)), 2) if good.size else None,
                "rss_mb": round(float(np.mean(memory)), 1) if memory else None,
            }
        )
    first, last = windows[0]["rss_mb"], windows[-1]["rss_mb"]
    drift = None if not first or not last else round((last - first) / first * 100, 2)
    failures = Counter(r.call for r in records if r.outcome in ("error", "server_error"))
    return {
        "requests": len(records),
        "ok": outcomes["ok"],
        "errors": outcomes["error"],
        "server_errors": outcomes["server_error"],
        "shed_503": outcomes["shed"],
        "bad_requests": sum(r.bad for r in records),
        "bad_requests_answered_4xx": sum(r.bad and r.outcome == "ok" for r in records),
        "failing_calls": dict(failures.most_common(10)),
        "by_call": dict(Counter(r.call for r in records).most_common()),
        "window_seconds": window,
        "windows": windows,
        "rss_first_window_mb": first,
        "rss_last_window_mb": last,
        "rss_drift_percent": drift,
    }


def to_markdown(report: dict[str, Any]) -> str:
    """The soak summary and its per-window table."""
    lines = [
        "# Soak",
        "",
        f"{report['duration_s']} s of mixed traffic at {report['rate_rps']:.0f} req/s "
        f"({report['fraction'] * 100:.0f}% of the {report['peak_rps']:.0f} req/s this generator "
        f"reached closed-loop with the same mix), models {', '.join(report['models'])}.",
        "",
        f"- requests: {report['requests']}, ok: {report['ok']}, errors: {report['errors']}, "
        f"**server errors (5xx): {report['server_errors']}**, shed (503): {report['shed_503']}",
        f"- bad requests: {report['bad_requests']}, answered with their 4xx: "
        f"{report['bad_requests_answered_4xx']}",
        f"- RSS: first window {report['rss_first_window_mb']} MB, last window "
        f"{report['rss_last_window_mb']} MB, **drift {report['rss_drift_percent']}%**",
        f"- generator behind (requests not sent at their time): {report['generator_behind']}",
        "",
        "| window start (s) | requests | ok | errors | 5xx | 503 | p50 ms | p99 ms | RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w in report["windows"]:
        lines.append(
            f"| {w['start_s']} | {w['requests']} | {w['ok']} | {w['errors']} | "
            f"{w['server_errors']} | {w['shed_503']} | {w['p50_ms']} | {w['p99_ms']} | "
            f"{w['rss_mb']} |"
        )
    if report["failing_calls"]:
        lines += ["", f"Failing calls: {report['failing_calls']}"]
    return "\n".join(lines) + "\n"


def run(
    repository: Path,
    out: Path,
    duration: float,
    fraction: float = 0.7,
    url: str | None = None,
    pid: int | None = None,
    models: list[str] | None = None,
    peak_workers: int = 16,
) -> dict[str, Any]:
    """Start (or use) a server, measure the peak, soak at `fraction` of it, write the reports."""
    out.mkdir(parents=True, exist_ok=True)
    workloads = load(repository, models)
    mix = Mix(build_calls(workloads))
    server: ServiceProcess | None = None
    if url is None:
        server = start_service(repository, out / "server.log", env={"EDGE_LOG_LEVEL": "warning"})
        wait_for(server, "ready", timeout=120)
        url = server.url
        pid = server.process.pid if server.process else None
    try:
        peak_seconds = min(15.0, max(5.0, duration / 10))
        peak = asyncio.run(measure_peak(url, mix, peak_seconds, peak_workers))
        rate = peak * fraction
        rss: list[tuple[float, float]] = []

        async def soak_with_rss() -> tuple[list[Record], int]:
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(pid, rss, stop))
            try:
                return await soak(url, mix, rate, duration)
            finally:
                stop.set()
                await sampler

        records, behind = asyncio.run(soak_with_rss())
        alive = httpx.get(f"{url}/v2/health/live", timeout=5).status_code == 200
    finally:
        exit_code = stop_service(server) if server is not None else None
    window = 60.0 if duration >= 180 else duration / 6
    report = {
        "duration_s": duration,
        "models": [w.model for w in workloads],
        "variants": {w.model: w.variants for w in workloads},
        "fraction": fraction,
        "peak_rps": round(peak, 1),
        "rate_rps": round(rate, 1),
        "generator_behind": behind,
        "server_alive_after": alive,
        "server_exit_code": exit_code,
        **summarise(records, rss, duration, window),
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    (out / "soak.md").write_text(to_markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadtests.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("loadtests/reports/soak"))
    parser.add_argument("--duration", type=float, default=300.0, help="seconds (SOAK_DURATION)")
    parser.add_argument("--fraction", type=float, default=0.7, help="share of the measured peak")
    parser.add_argument("--url", help="drive a running server instead of starting one")
    parser.add_argument("--pid", type=int, help="its process id, for RSS (with --url)")
    parser.add_argument("--models", help="comma-separated models (default: all)")
    args = parser.parse_args(argv)
    models = [m for m in (args.models or "").split(",") if m] or None
    report = run(
        args.repository, args.out, args.duration, args.fraction, args.url, args.pid, models
    )
    print(to_markdown(report))
    print(f"reports: {args.out / 'soak.json'}, {args.out / 'soak.md'}")
    return 0 if report["server_errors"] == 0 and report["server_alive_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
