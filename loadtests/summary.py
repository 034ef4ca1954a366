"""From Locust's records and /metrics scrapes to summary.json: per model x variant x run."""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import prom, workload
from service.manifest import ModelManifest

PERCENTILES = (50, 95, 99)
ALONE = "alone"
MIXED = "mixed"
BASELINE = "fp32"
REQUEST_HISTOGRAM = "edge_request_duration_seconds"
COMPUTE_HISTOGRAM = "edge_inference_compute_duration_seconds"
QUEUE_HISTOGRAM = "edge_inference_queue_duration_seconds"

# Ratio keys: (name in the ratios table, path into a result row).
RATIO_FIELDS: dict[str, tuple[str, ...]] = {
    "requests_per_s": ("requests_per_s",),
    "client_p50": ("client_ms", "p50"),
    "client_p95": ("client_ms", "p95"),
    "client_p99": ("client_ms", "p99"),
    "server_p50": ("server_ms", "p50"),
    "server_p95": ("server_ms", "p95"),
    "server_p99": ("server_ms", "p99"),
    "compute_p50": ("server_compute_ms", "p50"),
    "cpu_seconds_per_request": ("cpu_seconds_per_request",),
    "run_per_row": ("run_ms_per_row",),
    "variant_memory_warm": ("variant_memory_bytes", "warm"),
    "variant_memory_loaded": ("variant_memory_bytes", "loaded"),
}
# What each round of the alone runs reports on its own, for the paired ratios the report's
# reading rests on (interleaved rounds: the machine's drift falls on both variants alike).
ROUND_FIELDS = (
    "requests_per_s", "cpu_seconds_per_request", "server_p50", "client_p50", "run_per_row",
)  # fmt: skip


@dataclass
class RunRecord:
    """What one Locust run left behind: its files and the /metrics scrapes around it."""

    model: str
    label: str
    variants: list[str]
    directory: Path
    started: float
    finished: float
    exit_code: int
    before: prom.Snapshot
    after: prom.Snapshot
    polls: list[prom.Snapshot]
    locust_cpu_seconds: float | None = None
    """CPU time (user + system) of the Locust process over the run, from its rusage."""
    round: int | None = None
    """Which round of the interleaved alone runs (1, 2, ...); None for the mixed run."""

    @property
    def kind(self) -> str:
        return MIXED if len(self.variants) > 1 else ALONE


def percentiles_ms(times: list[float]) -> dict[str, float | None]:
    if not times:
        empty: dict[str, float | None] = {f"p{p}": None for p in PERCENTILES}
        return empty | {"mean": None}
    values = np.asarray(times, dtype=np.float64)
    out: dict[str, float | None] = {
        f"p{p}": round(float(np.percentile(values, p)), 4) for p in PERCENTILES
    }
    out["mean"] = round(float(values.mean()), 4)
    return out


def server_percentiles_ms(
    records: list[RunRecord], histogram: str, model: str, variant: str
) -> dict[str, float | None]:
    """Percentiles of one server histogram over the runs, from summed bucket deltas, in ms."""
    labels = {"model": model, "version": variant}
    summed: dict[float, float] = defaultdict(float)
    for record in records:
        for bound, count in prom.bucket_delta(
            record.before.buckets(histogram, **labels), record.after.buckets(histogram, **labels)
        ):
            summed[bound] += count
    delta = sorted(summed.items())
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        value = prom.histogram_quantile(p / 100, delta)
        out[f"p{p}"] = None if value is None else round(value * 1000, 4)
    count = _delta(records, f"{histogram}_count", **labels)
    total = _delta(records, f"{histogram}_sum", **labels)
    out["mean"] = round(total / count * 1000, 4) if count else None
    return out


def _delta(records: list[RunRecord], name: str, **labels: str) -> float:
    """A counter's growth over the runs, summed."""
    return sum(r.after.total(name, **labels) - r.before.total(name, **labels) for r in records)


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base rounded to 3 places; None when either is missing or base is not > 0."""
    if value is None or base is None or base <= 0:
        return None
    return round(value / base, 3)


def _dig(row: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = row
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def ratios(results: list[dict[str, Any]], baseline: str = BASELINE) -> list[dict[str, Any]]:
    """Each variant's figures over its model's baseline variant in the same kind of run.

    Alone runs compare with the baseline's alone runs, and round by round (round n of the
    variant against round n of the baseline, run next to it); the mixed run compares variants
    served side by side in one run. Memory ratios are the same in both.
    """
    index = {(r["model"], r["run"], r["variant"]): r for r in results}
    table = []
    for row in results:
        base = index.get((row["model"], row["run"], baseline))
        if base is None or row["variant"] == baseline:
            continue
        entry: dict[str, Any] = {
            "model": row["model"],
            "variant": row["variant"],
            "baseline": baseline,
            "run": row["run"],
        }
        for name, path in RATIO_FIELDS.items():
            entry[name] = ratio(_dig(row, path), _dig(base, path))
        if "rounds" in row and "rounds" in base:
            entry["rounds"] = [
                {name: ratio(mine[name], theirs[name]) for name in ROUND_FIELDS}
                for mine, theirs in zip(row["rounds"], base["rounds"], strict=False)
            ]
        table.append(entry)
    return table


def read_history(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def throughput_series(history: list[dict[str, str]], model: str) -> dict[str, list[list[float]]]:
    """Requests/s per variant over time, from Locust's full stats history.

    Uses differences of each name's cumulative request count between history rows, so each
    point is the rate in that interval (Locust's own Requests/s is a 10-s moving window).
    """
    counts: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    stamps = [float(row["Timestamp"]) for row in history if row.get("Timestamp")]
    for row in history:
        name = row.get("Name", "")
        if name == "Aggregated" or not name.startswith(f"{model}/"):
            continue
        variant = name.split(" ", 1)[0].split("/", 1)[1]
        counts[variant][float(row["Timestamp"])] += float(row["Total Request Count"] or 0)
    if not counts:
        return {}
    start = min(stamps)  # Locust's first row is written at the start, before any request
    out: dict[str, list[list[float]]] = {}
    for variant, series in counts.items():
        points = sorted({start: 0.0, **series}.items())
        out[variant] = [
            [round(t1 - start, 1), round((c1 - c0) / (t1 - t0), 2)]
            for (t0, c0), (t1, c1) in zip(points, points[1:], strict=False)
            if t1 > t0
        ]
    return out


def _kind(name: str) -> str:
    return name.split(" ", 1)[1] if " " in name else name


LOCUST_CPU_BOUND = 0.90
"""Locust (one process, one core) at or above this share of a core measures itself."""


def locust_cpu(record: RunRecord) -> dict[str, Any]:
    """Locust's CPU share of one core over the run; cpu_bound flags a run that measured it."""
    wall = record.finished - record.started
    if record.locust_cpu_seconds is None or wall <= 0:
        return {"cpu_seconds": None, "cpu_share": None, "cpu_bound": False}
    share = record.locust_cpu_seconds / wall
    return {
        "cpu_seconds": round(record.locust_cpu_seconds, 3),
        "cpu_share": round(share, 3),
        "cpu_bound": share >= LOCUST_CPU_BOUND,
    }


def _raw(record: RunRecord) -> dict[str, Any]:
    """The locustfile's record of every request of the run ({} if it wrote none)."""
    path = record.directory / "requests.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _measured_seconds(raw: dict[str, Any]) -> float:
    """From the test start to the last answer: the stop's wait for in-flight requests is idle."""
    end = float(raw.get("last_response") or raw.get("stopped", 0))
    return max(1e-9, end - float(raw.get("started", 0)))


def _rss_series(record: RunRecord) -> list[list[float]]:
    """[seconds into the run, process RSS] from every scrape of the run."""
    return [
        [round(s.at - record.started, 1), v]
        for s in [record.before, *record.polls, record.after]
        if (v := s.value("process_resident_memory_bytes")) is not None
    ]


def summarize_run(record: RunRecord) -> dict[str, Any]:
    """The run's own row: its status, the server's totals over it, its series and files."""
    raw = _raw(record)
    requests: dict[str, Any] = raw.get("requests", {})
    server_requests = _delta([record], "edge_requests_total", model=record.model)
    cpu = _delta([record], "process_cpu_seconds_total")
    rss_series = _rss_series(record)
    rss_values = [v for _, v in rss_series]
    error = None
    if not raw:
        error = f"Locust wrote no request record (exit code {record.exit_code}; see locust.log)"
    elif not requests:
        error = "Locust sent no requests (see locust.log)"
    cpu_per_request = cpu / server_requests if server_requests else None
    return {
        "locust": locust_cpu(record),
        "model": record.model,
        "run": record.label,
        "kind": record.kind,
        "round": record.round,
        "variants": record.variants,
        "started": datetime.fromtimestamp(record.started, UTC).isoformat(timespec="seconds"),
        "wall_s": round(record.finished - record.started, 2),
        "measured_s": round(_measured_seconds(raw), 2) if raw else None,
        "locust_exit_code": record.exit_code,
        "error": error,
        "server": {
            "requests": int(server_requests),
            "cpu_seconds": round(cpu, 4),
            "cpu_seconds_per_request": None
            if cpu_per_request is None
            else round(cpu_per_request, 7),
            "rss_bytes_start": rss_values[0] if rss_values else None,
            "rss_bytes_max": max(rss_values) if rss_values else None,
            "rss_bytes_end": rss_values[-1] if rss_values else None,
            "scrapes": len(record.polls) + 2,
        },
        "series": {
            "rss_bytes": rss_series,
            "requests_per_s": throughput_series(
                read_history(record.directory / "locust_stats_history.csv"), record.model
            ),
        },
        "files": {
            name: str(path.relative_to(record.directory.parent.parent))
            for name, path in {
                "locust_html": record.directory / "locust.html",
                "stats_csv": record.directory / "locust_stats.csv",
                "history_csv": record.directory / "locust_stats_history.csv",
                "failures_csv": record.directory / "locust_failures.csv",
                "locust_log": record.directory / "locust.log",
                "requests_json": record.directory / "requests.json",
            }.items()
            if path.exists()
        },
    }


def variant_row(
    records: list[RunRecord], variant: str, memory: dict[tuple[str, str], dict[str, float]]
) -> dict[str, Any]:
    """One variant's figures over runs of one kind (its rounds alone, or the mixed run)."""
    model, kind = records[0].model, records[0].kind
    per_kind: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"times_ms": [], "failures": 0, "wrong_answers": 0}
    )
    seconds = 0.0
    for record in records:
        raw = _raw(record)
        seconds += _measured_seconds(raw) if raw else 0.0
        for name, r in raw.get("requests", {}).items():
            if name.startswith(f"{model}/{variant} "):
                merged = per_kind[_kind(name)]
                merged["times_ms"] += r["times_ms"]
                merged["failures"] += r["failures"]
                merged["wrong_answers"] += r["wrong_answers"]
    times = [t for r in per_kind.values() for t in r["times_ms"]]
    failures = sum(r["failures"] for r in per_kind.values())
    served = _delta(records, "edge_requests_total", model=model, version=variant)
    answered = _delta(records, "edge_requests_total", model=model, version=variant, status="200")
    # The process's CPU cannot be split between variants served at once.
    cpu_per_request = None
    if kind == ALONE and (all_served := _delta(records, "edge_requests_total", model=model)):
        cpu_per_request = round(_delta(records, "process_cpu_seconds_total") / all_served, 7)
    rss = [v for record in records for _, v in _rss_series(record)]
    # ONNX Runtime's time per row: the runs' own time (a batch once) over the rows they ran.
    labels = {"model": model, "version": variant}
    rows_run = _delta(records, "edge_inference_batch_size_sum", **labels)
    run_seconds = _delta(records, "edge_inference_run_seconds_total", **labels)
    return {
        "model": model,
        "variant": variant,
        "run": kind,
        "requests": len(times),
        "failures": failures,
        "wrong_answers": sum(r["wrong_answers"] for r in per_kind.values()),
        "failure_rate": round(failures / len(times), 5) if times else None,
        "requests_per_s": round(len(times) / seconds, 2) if seconds else None,
        "client_ms": percentiles_ms(times),
        "server_ms": server_percentiles_ms(records, REQUEST_HISTOGRAM, model, variant),
        "server_compute_ms": server_percentiles_ms(records, COMPUTE_HISTOGRAM, model, variant),
        "server_queue_ms": server_percentiles_ms(records, QUEUE_HISTOGRAM, model, variant),
        "server_requests": int(served),
        "server_errors": int(served - answered),
        "cpu_seconds_per_request": cpu_per_request,
        "run_ms_per_row": round(run_seconds / rows_run * 1000, 5) if run_seconds else None,
        "rss_bytes_max": max(rss) if rss else None,
        "variant_memory_bytes": memory.get((model, variant), {}),
        "by_kind": {
            kind_name: {
                "requests": len(r["times_ms"]),
                "failures": r["failures"],
                "wrong_answers": r["wrong_answers"],
                "requests_per_s": round(len(r["times_ms"]) / seconds, 2) if seconds else None,
                "client_ms": percentiles_ms(r["times_ms"]),
            }
            for kind_name, r in sorted(per_kind.items())
        },
    }


def round_figures(record: RunRecord, variant: str) -> dict[str, Any]:
    """One alone round's own figures (ROUND_FIELDS), for the paired ratios."""
    row = variant_row([record], variant, {})
    return {"run": record.label} | {name: _dig(row, RATIO_FIELDS[name]) for name in ROUND_FIELDS}


def variant_memory(snapshot: prom.Snapshot) -> dict[tuple[str, str], dict[str, float]]:
    """edge_variant_memory_bytes by (model, version) and stage."""
    out: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for labels, value in snapshot.select("edge_variant_memory_bytes").items():
        lab = dict(labels)
        out[(lab["model"], lab["version"])][lab.get("stage", "value")] = value
    return dict(out)


def build_accuracy(repository: Path, loads: list[workload.Workload]) -> list[dict[str, Any]]:
    """The build's figures for the variants under test, from report.json (else model.json)."""
    wanted = {(w.model, v) for w in loads for v in w.variants}
    report = repository / "report.json"
    rows: list[dict[str, Any]] = []
    if report.exists():
        for row in json.loads(report.read_text()).get("models", []):
            if (row.get("model"), row.get("variant")) in wanted:
                rows.append(
                    {k: row.get(k) for k in
                     ("model", "variant", "default", "accuracy", "size_bytes", "latency_ms",
                      "gate")} | {"source": "report.json"}
                )  # fmt: skip
    found = {(r["model"], r["variant"]) for r in rows}
    for load in loads:
        missing = [v for v in load.variants if (load.model, v) not in found]
        if not missing:
            continue
        manifest = ModelManifest.read(repository / load.model)
        for name in missing:
            variant = manifest.variants[name]
            rows.append(
                {
                    "model": load.model,
                    "variant": name,
                    "default": name == manifest.default_variant,
                    "accuracy": variant.accuracy,
                    "size_bytes": variant.size_bytes,
                    "latency_ms": variant.latency_ms,
                    "gate": "pass" if variant.passed else "failed",
                    "source": "model.json",
                }
            )
    order = {(w.model, v): i for i, (w, v) in enumerate((w, v) for w in loads for v in w.variants)}
    return sorted(rows, key=lambda r: order[(r["model"], r["variant"])])


def machine_info() -> dict[str, Any]:
    """What the report says about the machine (call before pinning changes the CPU set)."""
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": memory,
        "python": sys.version.split()[0],
        "onnxruntime": version("onnxruntime"),
        "locust": version("locust"),
        "fastapi": version("fastapi"),
        "uvicorn": version("uvicorn"),
    }


def build_summary(
    *,
    opts: dict[str, Any],
    service_url: str,
    external: bool,
    pinning: str,
    loads: list[workload.Workload],
    runs: list[RunRecord],
    warmup: dict[str, Any],
    load_average: tuple[Any, Any],
    machine: dict[str, Any],
    server_exit_code: int | None,
) -> dict[str, Any]:
    """Everything the reports show, as one JSON-ready dict."""
    run_rows = [summarize_run(record) for record in runs]
    groups: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for record in runs:  # in run order: a variant's rounds alone, then the mixed run
        for variant in record.variants:
            groups[(record.model, record.kind, variant)].append(record)
    results: list[dict[str, Any]] = []
    for (_, kind, variant), records in groups.items():
        row = variant_row(records, variant, variant_memory(records[-1].after))
        if kind == ALONE:
            row["rounds"] = [round_figures(record, variant) for record in records]
        results.append(row)
    repository = Path(opts["repository"])
    before, after = load_average
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool": "python -m loadtests",
        "service": {"url": service_url, "external": external, "exit_code": server_exit_code},
        "machine": machine
        | {
            "load_average_before": list(before) if before else None,
            "load_average_after": list(after) if after else None,
        },
        "pinning": pinning,
        "settings": {
            "repository": str(repository),
            "models": [w.model for w in loads],
            "variants": {w.model: w.variants for w in loads},
            "users": opts["users"],
            "spawn_rate": opts["spawn_rate"],
            "duration_s": opts["duration"],
            "rounds": opts["rounds"],
            "warmup_requests_per_kind": opts["warmup"],
            "weights": dict(workload.WEIGHTS),
            "think_time_s": 0,
            "samples": {w.model: len(w.samples) for w in loads},
            "kinds": {w.model: w.kinds() for w in loads},
        },
        "warmup": warmup,
        "runs": run_rows,
        "results": results,
        "ratios": ratios(results),
        "accuracy": build_accuracy(repository, loads),
    }
