"""Prometheus metrics, declared once per app on its own CollectorRegistry.

Every inference metric carries `model` and `version` (the variant: fp32, int8, ...), and those
labels only ever come from the model registry's own (model, variant) pairs: a route resolves
the runtime first and labels after, so a client's unknown model name never becomes a series.
Inference requests answered with an error before a variant was resolved (unknown model 404,
body too large 413, validation 422, not ready 503) are counted by status alone, and so are
requests the HTTP layer refuses before the app sees them (service.http: 400, 408, 431).

Buckets. Latency, queue and compute histograms share one set of 22 buckets, in seconds, from
50 µs to 10 s: steps of about x1.5-x2.5 below 2.5 ms, where the small INT8 models live (the
digits CNN answers in ~0.1 ms and its FP32/INT8 difference is of that order), coarser above
up to the 10 s of a cold OCR batch on a slow box. histogram_quantile interpolates inside a
bucket, so a quantile is good to about one bucket step; alert thresholds should sit on a
bucket boundary. Sharing the buckets makes queue and compute time comparable on one panel.
Cost: 22 buckets x 3 histograms per variant, about 300 series for two models with two
variants each. Batch sizes use powers of two up to 128 (the default batch limit is 64).
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.memory import cgroup_memory, peak_rss_bytes

if TYPE_CHECKING:
    from service.registry import Registry
    from service.runtime import ModelRuntime

# Seconds. Fine steps from 50 µs (a 0.1 ms INT8 CNN) up to 10 s (a cold OCR batch).
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075,
    0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LABELS = ("model", "version")
# Outcomes that exist from the first scrape, so rate() and error ratios start at zero.
RESOLVED_STATUSES = ("200", "400", "499", "500", "503")
REJECTED_STATUSES = ("400", "404", "413", "422", "503")
REFUSED_STATUSES = ("400", "408", "431")
# POSTs here are inference requests (v2 infer/compare and the task endpoints).
INFERENCE_PREFIXES = ("/v2/models/", "/tasks/")
# CPU features that decide which ONNX Runtime kernels run (INT8 speed-ups in particular).
X86_FEATURES = {
    "avx2": "avx2",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "amx_int8": "amx",
}
ARM_FEATURES = {"asimd": "asimd", "asimddp": "asimddp", "i8mm": "i8mm", "sve": "sve"}


class Metrics:
    """Every metric the service exports; labels come only from loaded (model, version) pairs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.request_seconds = Histogram(
            "edge_request_duration_seconds",
            "Inference request latency inside the service, decode to encode "
            "(errors after the variant was resolved included).",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "edge_inference_queue_duration_seconds",
            "Time from a request's arrival at its lane's admission gate to the start of its "
            "run (on a worker thread, or on the event loop for a tiny request run inline).",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute_seconds = Histogram(
            "edge_inference_compute_duration_seconds",
            "Time inside ONNX Runtime session.run.",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "edge_requests",
            "Inference requests for a resolved (model, version) by outcome (HTTP status code).",
            (*LABELS, "status"),
            registry=registry,
        )
        self.rejected = Counter(
            "edge_rejected_requests",
            "Inference requests answered with an error before a (model, version) was resolved "
            "(unknown model 404, body too large 413, validation 422, not ready 503); "
            "by status only, so client-supplied names never become labels.",
            ("status",),
            registry=registry,
        )
        self.refused = Counter(
            "edge_refused_requests",
            "Requests the HTTP layer refused before the app saw them, on any route: framing it "
            "cannot parse 400, request line and headers too slow 408, or too large (or a "
            "chunked trailer) 431. A request refused in its own body framing also ends in the "
            "app as a 499.",
            ("status",),
            registry=registry,
        )
        self.batch_size = Histogram(
            "edge_inference_batch_size",
            "Rows (first tensor axis) per session.run call.",
            LABELS,
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.run_seconds = Counter(
            "edge_inference_run_seconds",
            "Time inside session.run, each run counted once however many requests it served: "
            "its rate is how busy the variant keeps ONNX Runtime, and over "
            "edge_inference_batch_size_sum it is the time a row costs.",
            LABELS,
            registry=registry,
        )
        build = Gauge(
            "edge_build_info",
            "Always 1: service, ONNX Runtime and Python versions, machine, and the CPU "
            "features ONNX Runtime can use (sorted, comma-joined).",
            ("version", "onnxruntime", "python", "machine", "cpu_features"),
            registry=registry,
        )
        build.labels(*build_info().values()).set(1)
        self._bound: dict[tuple[str, str], VariantMetrics] = {}
        for status in REJECTED_STATUSES:
            self.rejected.labels(status)
        for status in REFUSED_STATUSES:
            self.refused.labels(status)

    def variant(self, model: str, variant: str) -> VariantMetrics:
        """The variant's label children, bound once: no label lookup per observation."""
        bound = self._bound.get((model, variant))
        if bound is None:
            labels = (model, variant)
            bound = VariantMetrics(
                request_seconds=self.request_seconds.labels(*labels),
                queue_seconds=self.queue_seconds.labels(*labels),
                compute_seconds=self.compute_seconds.labels(*labels),
                batch_size=self.batch_size.labels(*labels),
                run_seconds=self.run_seconds.labels(*labels),
                requests={s: self.requests.labels(*labels, s) for s in RESOLVED_STATUSES},
                requests_family=self.requests,
                labels=labels,
            )
            self._bound[(model, variant)] = bound
        return bound

    def register_variants(self, registry: Registry, in_flight: Mapping[ModelRuntime, int]) -> None:
        """Pre-create label sets so every variant shows zeros before its first request.

        `in_flight` is the inference path's own count of requests per runtime, read at scrape
        time: a gauge beside it would cost every request two more locked updates.
        """
        for runtime in registry.all_runtimes():
            labels = (runtime.model, runtime.variant)
            for metric in (self.request_seconds, self.queue_seconds, self.compute_seconds):
                metric.labels(*labels)
            self.batch_size.labels(*labels)
            self.run_seconds.labels(*labels)
            for status in RESOLVED_STATUSES:
                self.requests.labels(*labels, status)
        self.registry.register(VariantCollector(registry, in_flight))


@dataclass
class VariantMetrics:
    """One variant's metric children, resolved once per variant instead of per request."""

    request_seconds: Histogram
    queue_seconds: Histogram
    compute_seconds: Histogram
    batch_size: Histogram
    run_seconds: Counter
    requests: dict[str, Counter]
    requests_family: Counter
    labels: tuple[str, str]

    def observe_run(self, rows: int, seconds: float) -> None:
        """One session.run call: its rows and its time, once however many requests it served."""
        self.batch_size.observe(rows)
        self.run_seconds.inc(seconds)

    def count(self, status: str) -> None:
        """One finished request by status (the usual ones pre-bound, others looked up)."""
        child = self.requests.get(status)
        if child is None:
            child = self.requests[status] = self.requests_family.labels(*self.labels, status)
        child.inc()


class VariantCollector(Collector):
    """Per-variant facts measured at load time, and requests in flight, read at scrape time."""

    def __init__(self, registry: Registry, in_flight: Mapping[ModelRuntime, int]) -> None:
        self._registry = registry
        self._in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        yield self._requests_in_flight()
        ready = GaugeMetricFamily(
            "edge_variant_ready", "1 when the variant is loaded and warmed up.", labels=LABELS
        )
        memory = GaugeMetricFamily(
            "edge_variant_memory_bytes",
            "Process RSS growth attributed to the variant: RSS after opening its session "
            "(stage=loaded) and after its warm-up runs (stage=warm, includes loaded) minus RSS "
            "just before, measured in the loading thread; variants load one at a time so the "
            "growth is theirs. Approximate: heap freed by an earlier load can be reused (a "
            "lower figure), requests served meanwhile add noise; 0 until measured.",
            labels=(*LABELS, "stage"),
        )
        heap = GaugeMetricFamily(
            "edge_variant_heap_bytes",
            "malloc'd bytes still in use that loading the variant added (glibc mallinfo2, all "
            "arenas), stages as edge_variant_memory_bytes. Unlike the RSS figure it does not "
            "depend on load order (reused freed heap, library pages); the first variant loaded "
            "also carries ONNX Runtime's one-time set-up (about 1 MB). Absent without glibc.",
            labels=(*LABELS, "stage"),
        )
        size = GaugeMetricFamily(
            "edge_model_file_bytes", "Size of the variant's ONNX file.", labels=LABELS
        )
        load = GaugeMetricFamily(
            "edge_variant_load_seconds",
            "Time to verify and open the variant's session (stage=load) and warm it (warmup).",
            labels=(*LABELS, "stage"),
        )
        failed = GaugeMetricFamily(
            "edge_variants_failed",
            "Variants that failed to load (bad checksum, unreadable file, failed warm-up); "
            "GET /v2/health/ready lists them with the reason.",
            value=len(self._registry.failures()),
        )
        onbox = GaugeMetricFamily(
            "edge_variant_onbox_latency_seconds",
            "Batch-1 latency of the variant measured on this machine after warm-up (median of "
            "runs of the model's sample, interleaved across its variants; EDGE_ONBOX_SECONDS). "
            "The build machine's figure is in the model metadata beside it.",
            labels=LABELS,
        )
        default = GaugeMetricFamily(
            "edge_variant_default",
            "1 for the variant serving requests that name no version (chosen on this box).",
            labels=LABELS,
        )
        for entry in self._registry.models.values():
            for variant in entry.runtimes:
                default.add_metric([entry.name, variant], float(variant == entry.default_variant))
            for variant, ms in entry.onbox_ms.items():
                onbox.add_metric([entry.name, variant], ms / 1000)
        for rt in self._registry.all_runtimes():
            labels = [rt.model, rt.variant]
            ready.add_metric(labels, 1.0 if rt.ready else 0.0)
            memory.add_metric([*labels, "loaded"], rt.facts.memory_loaded_bytes)
            memory.add_metric([*labels, "warm"], rt.facts.memory_warm_bytes)
            for stage, value in (
                ("loaded", rt.facts.heap_loaded_bytes),
                ("warm", rt.facts.heap_warm_bytes),
            ):
                if value is not None:
                    heap.add_metric([*labels, stage], value)
            size.add_metric(labels, rt.path.stat().st_size if rt.path.exists() else 0)
            load.add_metric([*labels, "load"], rt.facts.load_seconds)
            load.add_metric([*labels, "warmup"], rt.facts.warmup_seconds)
        yield from (ready, failed, memory, heap, size, load, onbox, default)

    def _requests_in_flight(self) -> GaugeMetricFamily:
        counts = {(rt.model, rt.variant): 0 for rt in self._registry.all_runtimes()}
        # A copy in one C call: the event loop changes the mapping while a scrape reads it. A
        # replaced variant still draining adds to its successor's labels.
        for runtime, count in dict(self._in_flight).items():
            key = (runtime.model, runtime.variant)
            counts[key] = counts.get(key, 0) + count
        family = GaugeMetricFamily(
            "edge_requests_in_flight", "Inference requests being served now.", labels=LABELS
        )
        for labels, count in counts.items():
            family.add_metric(list(labels), count)
        return family


class MemoryCollector(Collector):
    """Peak RSS, and the container's memory cgroup where there is one (only files that exist)."""

    def __init__(self, cgroup_root: Path | None = None, proc_cgroup: Path | None = None) -> None:
        self._paths = {
            key: value
            for key, value in (("root", cgroup_root), ("proc_cgroup", proc_cgroup))
            if value is not None
        }

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "edge_process_peak_resident_memory_bytes",
            "Peak resident set size of the process since it started (getrusage ru_maxrss).",
            value=peak_rss_bytes(),
        )
        cgroup = cgroup_memory(**self._paths)
        if cgroup is None:
            return
        readings = (
            ("usage", cgroup.usage_bytes, "memory.current / memory.usage_in_bytes, page cache "
             "included"),
            ("working_set", cgroup.working_set_bytes, "usage minus inactive file cache, what "
             "cannot be reclaimed before the OOM killer acts"),
            ("limit", cgroup.limit_bytes, "memory.max / memory.limit_in_bytes; absent when "
             "unlimited"),
            ("peak", cgroup.peak_bytes, "memory.peak / memory.max_usage_in_bytes"),
        )  # fmt: skip
        for name, value, detail in readings:
            if value is not None:
                yield GaugeMetricFamily(
                    f"edge_cgroup_memory_{name}_bytes",
                    f"Memory cgroup of the process (v{cgroup.version}): {detail}.",
                    value=value,
                )


def cpu_features(cpuinfo: str | None = None) -> str:
    """The INT8-relevant CPU features in /proc/cpuinfo, sorted and comma-joined ("" if unknown)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            wanted = X86_FEATURES if key == "flags" else ARM_FEATURES
            present = set(value.split())
            return ",".join(sorted({name for flag, name in wanted.items() if flag in present}))
    return ""


def build_info() -> dict[str, str]:
    """Label values of edge_build_info."""
    return {
        "version": __version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "machine": platform.machine() or sys.platform,
        "cpu_features": cpu_features(),
    }


@dataclass
class _Resolution:
    resolved: bool = False


_RESOLUTION: ContextVar[_Resolution | None] = ContextVar("edge_resolution", default=None)


def mark_resolved() -> None:
    """Called by the inference path once a request is labelled with a (model, version)."""
    resolution = _RESOLUTION.get()
    if resolution is not None:
        resolution.resolved = True


class RejectedRequests:
    """ASGI middleware counting inference POSTs that failed before a variant was resolved."""

    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].startswith(INFERENCE_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        resolution = _Resolution()
        token = _RESOLUTION.set(resolution)
        status: int | None = None

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            status = status or 500  # the server's last-resort handler answers 500
            raise
        finally:
            _RESOLUTION.reset(token)
            if status is not None and status >= 400 and not resolution.resolved:
                self.counter.labels(str(status)).inc()


def new_registry() -> CollectorRegistry:
    """A fresh registry with the process, platform and memory collectors (per app, for tests)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # process_resident_memory_bytes, CPU seconds, fds
    PlatformCollector(registry=registry)
    registry.register(MemoryCollector())
    return registry
