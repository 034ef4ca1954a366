"""The benchmark run: floors, then interleaved load on the service and the minimal endpoint.

Servers are pinned to core 0 and the load generator to core 1 (of a 2-core box; with one core
everything shares it and the bench says so). For each model/variant, every (configuration,
concurrency) cell is run `rounds` times, configurations interleaved A B C A B C, so drift on a
shared machine hits each alike; a cell reports its median and its spread (max - min) / median.
"""

from __future__ import annotations

import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

import service as service_package
from bench.idle import wait_idle
from bench.load import LoadResult, run_overload, run_wrk, wrk_path
from bench.mlserver import mlserver_version, start_mlserver
from bench.payloads import Payload, binary_payload, json_payload, sample_feed
from loadtests.process import (
    ServiceProcess,
    free_port,
    rss_bytes,
    start_service,
    stop_service,
    wait_for,
)
from service.manifest import ModelManifest

SERVICE_BINARY, SERVICE_JSON, MINIMAL, UNBATCHED, MLSERVER = (
    "service binary", "service JSON", "minimal JSON", "service binary, batching off",
    "MLServer JSON",
)  # fmt: skip
# Cold starts timed (median reported): one start moves by +-0.4 s on these shared machines.
COLD_STARTS = 3
# Slow cells run longer (run_seconds): answers per connection wanted, within a cap.
REQUESTS_PER_CONNECTION = 8
MAX_RUN_SECONDS = 8.0
# The INT8/FP32 goal covers models whose FP32 floor is at least this (the "raw p50").
RATIO_FLOOR_MS = 1.0


@dataclass
class Plan:
    """What one bench run measures."""

    repository: Path
    variants: list[str]
    concurrency: list[int]
    rounds: int
    seconds: int
    overload_seconds: float
    quick: bool
    server_core: int | None
    load_core: int | None
    mlserver: str | None = None
    """The `mlserver` executable for the optional MLServer column (None: left out)."""

    @property
    def floor_window(self) -> float:
        """Seconds one floor measurement runs: half a load run, at least one."""
        return max(1.0, self.seconds / 2)


@dataclass
class Cell:
    """One (variant, configuration, concurrency) cell over its rounds."""

    variant: str
    config: str
    concurrency: int
    runs: list[LoadResult] = field(default_factory=list)
    rows_per_run: list[float] = field(default_factory=list)  # the service's, where counted

    def _spread(self, values: list[float]) -> float:
        middle = statistics.median(values)
        return (max(values) - min(values)) / middle if middle else 0.0

    def summary(self) -> dict[str, Any]:
        rates = [run.ok_per_second for run in self.runs]
        p50s = [run.p50_ms for run in self.runs]
        statuses: dict[str, int] = {}
        for run in self.runs:
            for status, count in run.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
        return {
            "variant": self.variant,
            "config": self.config,
            "concurrency": self.concurrency,
            "ok_per_second": statistics.median(rates),
            "ok_per_second_spread": self._spread(rates),
            "p50_ms": statistics.median(p50s),
            "p50_ms_spread": self._spread(p50s),
            "p99_ms": statistics.median(run.p99_ms for run in self.runs),
            "statuses": statuses,
            "errors": sum(run.errors for run in self.runs),
            "generator_cpu_max": max(run.generator_cpu for run in self.runs),
            "rounds": [asdict(run) for run in self.runs],
            "rows_per_run": self.rows_per_run,
        }


def high_concurrency(levels: Sequence[int]) -> int:
    """The concurrency the throughput goals are read at: 16 where benched, else the highest."""
    return 16 if 16 in levels else max(levels)


def plan_cores() -> tuple[int | None, int | None]:
    """(server core, load core): 0 and 1 where there are two cores to use."""
    cores = sorted(os.sched_getaffinity(0))
    return (cores[0], cores[1]) if len(cores) >= 2 else (None, None)


def _pin(core: int | None) -> Any:
    return (lambda: os.sched_setaffinity(0, {core})) if core is not None else None


@contextmanager
def peak_rss(pid: int) -> Iterator[dict[str, int]]:
    """Sample a process's RSS every 20 ms while the block runs; yields {'peak': bytes}."""
    found = {"peak": rss_bytes(pid)}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            found["peak"] = max(found["peak"], rss_bytes(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join()


def byte_compile_service() -> None:
    """Write the service's .pyc files first, as the image's pip install does.

    Where PYTHONDONTWRITEBYTECODE is set (these machines), every `python -m service` would
    otherwise compile its modules from source: ~0.1 s of each cold start that no image pays.
    """
    compileall.compile_dir(Path(service_package.__file__).parent, quiet=1)


def start_pinned_service(
    plan: Plan, log: Path, env: dict[str, str] | None = None
) -> tuple[ServiceProcess, float]:
    """`python -m service` with its shipped defaults, pinned; (process, seconds to ready)."""
    started = time.perf_counter()
    service = start_service(plan.repository, log, env=env, preexec=_pin(plan.server_core))
    wait_for(service, "ready", 60.0, interval=0.02)  # fine-grained: the wait is timed
    return service, time.perf_counter() - started


def run_seconds(plan: Plan, connections: int, floor_seconds: float) -> float:
    """Long enough for each connection to finish REQUESTS_PER_CONNECTION answers at the floor.

    2 s of OCR at 16 clients is ~40 answers of ~0.5 s each: a round's rate then moved by +-30%.
    """
    if plan.quick:
        return plan.seconds
    wanted = REQUESTS_PER_CONNECTION * connections * floor_seconds
    return min(max(float(plan.seconds), wanted), MAX_RUN_SECONDS)


def start_minimal(plan: Plan, model_file: Path, log: Path) -> ServiceProcess:
    """The single-file baseline on the same core, for one model file."""
    port = free_port()
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.minimal", str(model_file), "--port", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            preexec_fn=_pin(plan.server_core),
        )
    service = ServiceProcess(f"http://127.0.0.1:{port}", process, log)
    wait_for(service, "ready", 60.0, interval=0.02)
    return service


class Floor:
    """A warm session in its own process on the server's core, measured between load runs."""

    def __init__(self, plan: Plan, model_file: Path, feed: dict[str, np.ndarray]) -> None:
        self._sample = tempfile.NamedTemporaryFile(suffix=".npz")  # noqa: SIM115 - kept open
        np.savez(self._sample.name, **feed)  # type: ignore[arg-type]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.floor", str(model_file), self._sample.name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=_pin(plan.server_core),
        )  # fmt: skip
        self.runs: list[dict[str, float]] = []
        self.served_runs: list[dict[str, float]] = []  # at the batch the service ran

    def time(self, seconds: float, rows: int = 1) -> dict[str, float]:
        """One measurement of session.run on the sample stacked `rows` times, not kept."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(f"{seconds} {rows}\n")
        self._process.stdin.flush()
        result: dict[str, float] = json.loads(self._process.stdout.readline())
        return result

    def measure(
        self, seconds: float, rows: int = 1, connections: int | None = None
    ) -> dict[str, float]:
        """One measurement, kept for this variant's summary (with the round's clients, if any)."""
        result = self.time(seconds, rows)
        if connections is not None:
            result["connections"] = connections
        (self.runs if rows == 1 else self.served_runs).append(result)
        return result

    @property
    def served_rows(self) -> int:
        """The batch the service ran this variant at under load (1 where it never batched)."""
        served = self.served_runs
        return round(statistics.median(run["rows"] for run in served)) if served else 1

    def measure_served(self, seconds: float, rows_per_run: float) -> None:
        """The floor at the batch the service just ran: the raw rate its batching could reach."""
        rows = round(rows_per_run)
        if rows > 1:
            self.measure(seconds, rows)

    def summary(self) -> dict[str, Any]:
        p50s = [run["p50_ms"] for run in self.runs]
        middle = statistics.median(p50s)
        batch_1 = 1000.0 / middle if middle else 0.0
        summary = {
            "p50_ms": middle,
            "p50_ms_spread": (max(p50s) - min(p50s)) / middle if middle else 0.0,
            "per_second": batch_1,
            "rounds": self.runs,
        }
        # Rows per second at the batches the service ran under load (batch 1 where it never
        # batched): the raw rate a server doing the same runs could reach.
        served = self.served_runs
        if served:
            rows = statistics.median(run["rows"] for run in served)
            per_second = statistics.median(run["per_second"] for run in served)
        else:
            rows, per_second = 1, batch_1
        summary["served_batch"] = {"rows": rows, "per_second": per_second, "rounds": served}
        return summary

    def close(self) -> None:
        """End the floor process (idempotent)."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()
        self._process.wait(timeout=30)
        self._sample.close()


def paired_floors(
    reference: Floor,
    floor: Floor,
    rounds: int,
    seconds: float,
    serve: Callable[[Floor], float] | None = None,
) -> dict[str, Any]:
    """A variant's raw rate over its reference's, each at its served batch, measured A B B A.

    Each variant's own floor is measured between its own cells, minutes from the other's, and
    the machine's pace moved in between (MiniLM INT8 at 8 rows ran at 18-19 or at 24-25 ms,
    round by round): a ratio of those two medians moved with it. Measured side by side, in
    one phase, the pace is shared. With `serve` (the service's rate for a floor's variant),
    each round then runs the service on both variants in the same order, so the served ratio
    is paired with that round's raw one as well.
    """
    ratios: list[float] = []
    served: list[float] = []
    for index in range(rounds):
        order = [reference, floor] if index % 2 == 0 else [floor, reference]
        rates = {id(f): f.time(seconds, f.served_rows)["per_second"] for f in order}
        ratios.append(rates[id(floor)] / rates[id(reference)])
        if serve is not None:
            answers = {id(f): serve(f) for f in order}
            top, bottom = answers[id(floor)], answers[id(reference)]
            served.append(top / bottom if bottom else 0.0)  # FP32 answered nothing: a miss
    pair = {
        "rows": floor.served_rows,
        "reference_rows": reference.served_rows,
        "ratio": statistics.median(ratios),
        "ratios": ratios,
    }
    return pair | ({"served": served} if serve is not None else {})


def rows_and_runs(url: str, model: str, variant: str) -> tuple[float, float]:
    """Rows and session.run calls the service has counted for a variant, from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    found = {"sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name != "edge_inference_batch_size":
            continue
        for sample in family.samples:
            kind = sample.name.rpartition("_")[2]
            if kind in found and sample.labels == {"model": model, "version": variant}:
                found[kind] = sample.value
    return found["sum"], found["count"]


def batching_of(url: str, model: str, variant: str) -> bool:
    """Whether the service batches this variant (Triton's dynamic_batching in its config)."""
    config = httpx.get(f"{url}/v2/models/{model}/versions/{variant}/config", timeout=5).json()
    return "dynamic_batching" in config


def run(plan: Plan, workdir: Path, say: Any = print) -> dict[str, Any]:
    """Everything the report needs, as one JSON-ready dict."""
    if wrk_path() is None:
        raise RuntimeError(
            "wrk is not installed: `apt-get install wrk` (make bench does it as root)"
        )
    affinity = os.sched_getaffinity(0)
    if plan.load_core is not None:
        os.sched_setaffinity(0, {plan.load_core})  # this process generates load too (overload)
    try:
        return _run(plan, workdir, say)
    finally:
        os.sched_setaffinity(0, affinity)


def _run(plan: Plan, workdir: Path, say: Any) -> dict[str, Any]:
    load_before = os.getloadavg()
    byte_compile_service()
    cold_starts: list[float] = []
    for attempt in range(COLD_STARTS):  # the last one stays up for the runs
        service, seconds = start_pinned_service(plan, workdir / f"service-{attempt}.log")
        cold_starts.append(seconds)
        if attempt + 1 < COLD_STARTS:
            stop_service(service)
    cold_start = statistics.median(cold_starts)
    say(f"service ready in {' / '.join(f'{s:.2f}' for s in cold_starts)} s (cold starts)")
    unbatched: ServiceProcess | None = None
    cells: list[Cell] = []
    floors: dict[str, Any] = {}
    open_floors: dict[str, Floor] = {}  # kept until the model's last variant: paired_floors
    memory: dict[str, Any] = {}
    batching: dict[str, bool] = {}
    helpers: list[Floor | ServiceProcess] = []
    try:
        for index, name in enumerate(plan.variants):
            model, variant = name.split("/")
            manifest = ModelManifest.read(plan.repository / model)
            model_file = plan.repository / model / manifest.variants[variant].file
            feed = sample_feed(plan.repository, model)
            floor = Floor(plan, model_file, feed)
            helpers.append(floor)
            batching[name] = batching_of(service.url, model, variant)
            first = floor.measure(1.0)["p50_ms"]
            say(f"{name}: floor p50 {first:.3f} ms, batching {batching[name]}")
            if batching[name] and unbatched is None:
                unbatched, _ = start_pinned_service(
                    plan, workdir / "service-unbatched.log", env={"EDGE_BATCHING": "off"}
                )
            minimal = start_minimal(plan, model_file, workdir / f"minimal-{model}-{variant}.log")
            helpers.append(minimal)
            mlserver = None
            if plan.mlserver is not None:
                mlserver = start_mlserver(
                    plan.mlserver, workdir / f"mlserver-{model}-{variant}", model, model_file,
                    workdir / f"mlserver-{model}-{variant}.log", _pin(plan.server_core),
                )  # fmt: skip
                helpers.append(mlserver)
            path = f"/v2/models/{model}/versions/{variant}/infer"
            binary, as_json = binary_payload(feed), json_payload(feed)  # encoded once, sent by all
            targets: list[tuple[str, str, Payload, int]] = [
                (SERVICE_BINARY, service.url + path, binary, _pid(service)),
                (SERVICE_JSON, service.url + path, as_json, _pid(service)),
                (MINIMAL, f"{minimal.url}/v2/models/{model}/infer", as_json, _pid(minimal)),
            ]
            if batching[name] and unbatched is not None:
                targets.append((UNBATCHED, unbatched.url + path, binary, _pid(unbatched)))
            if mlserver is not None:
                targets.append(
                    (MLSERVER, f"{mlserver.url}/v2/models/{model}/infer", as_json, _pid(mlserver))
                )
            rest = {"service": rss_bytes(_pid(service)), "minimal": rss_bytes(_pid(minimal))}
            with peak_rss(_pid(service)) as service_peak, peak_rss(_pid(minimal)) as min_peak:
                for connections in plan.concurrency:
                    row = {cfg: Cell(name, cfg, connections) for cfg, _, _, _ in targets}
                    seconds = run_seconds(plan, connections, first / 1000)
                    counted = connections == high_concurrency(plan.concurrency)
                    for _ in range(plan.rounds):
                        floor.measure(plan.floor_window, connections=connections)
                        for cfg, url, payload, pid in targets:
                            counting = counted and cfg == SERVICE_BINARY
                            if counting:
                                before = rows_and_runs(service.url, model, variant)
                            load = run_wrk(url, payload, connections, seconds, plan.load_core)
                            if counting:
                                after = rows_and_runs(service.url, model, variant)
                                rows, runs = after[0] - before[0], after[1] - before[1]
                                row[cfg].rows_per_run.append(rows / runs if runs else 1.0)
                            load.extra["busy_after_seconds"] = wait_idle(pid)
                            row[cfg].runs.append(load)
                        if counted:
                            served = row[SERVICE_BINARY].rows_per_run[-1]
                            floor.measure_served(plan.floor_window, served)
                    cells.extend(row.values())
                    say(_progress(name, connections, row))
            time.sleep(2.0)  # let the arena and the allocator give memory back
            memory[name] = {
                "service_rest": rest["service"],
                "service_peak": service_peak["peak"],
                "service_after": rss_bytes(_pid(service)),
                "minimal_rest": rest["minimal"],
                "minimal_peak": min_peak["peak"],
                "minimal_after": rss_bytes(_pid(minimal)),
            }
            stop_service(minimal)
            if mlserver is not None:
                stop_service(mlserver)
            floors[name] = floor.summary()
            open_floors[name] = floor
            if all(v.split("/")[0] != model for v in plan.variants[index + 1 :]):
                floors.update(_pair_with_fp32(plan, model, open_floors, floors, service))
                for done in [v for v in open_floors if v.startswith(f"{model}/")]:
                    open_floors.pop(done).close()
        overload = run_overload_pair(plan, service)
    finally:  # every process this run started ends with it, also when a run fails
        stop_service(service)
        if unbatched is not None:
            stop_service(unbatched)
        for helper in helpers:
            if isinstance(helper, Floor):
                helper.close()
            elif helper.process is not None and helper.process.poll() is None:
                stop_service(helper)
    return {
        "meta": _meta(plan, load_before),
        "cold_start_seconds": cold_start,
        "cold_start_runs": cold_starts,
        "floors": floors,
        "batching": batching,
        "cells": [cell.summary() for cell in cells],
        "memory": memory,
        "overload": overload,
    }


def _pair_with_fp32(
    plan: Plan,
    model: str,
    open_floors: dict[str, Floor],
    floors: dict[str, Any],
    service: ServiceProcess,
) -> dict[str, Any]:
    """Each INT8 variant's floor summary with its ratios to FP32, raw and served, paired.

    The goal sets the service's INT8/FP32 throughput ratio against ONNX Runtime's: both are
    measured round by round beside each other (the floors, then the service over binary at
    the goals' concurrency on the same two variants), not from cells minutes apart.
    """
    reference = open_floors.get(f"{model}/fp32")
    if reference is None or floors[f"{model}/fp32"]["p50_ms"] < RATIO_FLOOR_MS:
        return {}
    connections = high_concurrency(plan.concurrency)
    seconds = run_seconds(plan, connections, floors[f"{model}/fp32"]["p50_ms"] / 1000)
    payload = binary_payload(sample_feed(plan.repository, model))
    variants = {id(floor): name.split("/")[1] for name, floor in open_floors.items()}

    def serve(floor: Floor) -> float:
        path = f"/v2/models/{model}/versions/{variants[id(floor)]}/infer"
        load = run_wrk(service.url + path, payload, connections, seconds, plan.load_core)
        wait_idle(_pid(service))
        return load.ok_per_second

    return {
        name: floors[name]
        | {"paired": paired_floors(reference, floor, plan.rounds, plan.floor_window, serve)}
        for name, floor in open_floors.items()
        if name.startswith(f"{model}/int8")
    }


def run_overload_pair(plan: Plan, service: ServiceProcess) -> dict[str, Any]:
    """The heaviest variant benched at 2 and at 64 clients that never back off."""
    preferred = [v for v in ("ocr/int8", "minilm/int8-dynamic") if v in plan.variants]
    name = preferred[0] if preferred else plan.variants[-1]
    model, variant = name.split("/")
    payload = binary_payload(sample_feed(plan.repository, model))
    path = f"/v2/models/{model}/versions/{variant}/infer"
    results = {}
    for clients in (2, 64):
        time.sleep(2.0)  # what the last run left parked or queued is answered first
        load = run_overload(service.url, path, payload, clients, plan.overload_seconds)
        results[str(clients)] = asdict(load)
    return {"variant": name, "results": results}


def _pid(service: ServiceProcess) -> int:
    assert service.process is not None
    return service.process.pid


def _progress(name: str, connections: int, row: dict[str, Cell]) -> str:
    parts = [
        f"{cfg} {statistics.median(r.ok_per_second for r in cell.runs):.0f}/s"
        for cfg, cell in row.items()
    ]
    return f"{name} c={connections}: " + ", ".join(parts)


def _meta(plan: Plan, load_before: tuple[float, float, float]) -> dict[str, Any]:
    import platform
    from importlib.metadata import version

    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": plan.quick,
        "rounds": plan.rounds,
        "seconds_per_run": plan.seconds,
        "concurrency": plan.concurrency,
        "server_core": plan.server_core,
        "load_core": plan.load_core,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "python": platform.python_version(),
        "versions": {
            pkg: version(pkg)
            for pkg in ("onnxruntime", "uvicorn", "fastapi", "uvloop", "httptools", "orjson")
        }
        | ({"mlserver": mlserver_version(plan.mlserver)} if plan.mlserver else {}),
    }
