"""Prometheus metrics, declared once per app on its own CollectorRegistry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from service.registry import Registry

# Seconds. Fine steps from 50 µs (a 0.1 ms INT8 CNN) up to 10 s (a cold OCR batch).
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075,
    0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LABELS = ("model", "version")


class Metrics:
    """Every metric the service exports; labels come only from loaded (model, version) pairs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.request_seconds = Histogram(
            "edge_request_duration_seconds",
            "Inference request latency inside the service, decode to encode.",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "edge_inference_queue_duration_seconds",
            "Time from submitting an inference to a worker thread starting it.",
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
            "Inference requests by outcome (HTTP status code).",
            (*LABELS, "status"),
            registry=registry,
        )
        self.in_flight = Gauge(
            "edge_requests_in_flight",
            "Inference requests being served now.",
            LABELS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "edge_inference_batch_size",
            "Rows (first tensor axis) per session.run call.",
            LABELS,
            buckets=BATCH_BUCKETS,
            registry=registry,
        )

    def register_variants(self, registry: Registry) -> None:
        """Pre-create label sets so every variant shows zeros before its first request."""
        for runtime in registry.all_runtimes():
            labels = (runtime.model, runtime.variant)
            for metric in (self.request_seconds, self.queue_seconds, self.compute_seconds):
                metric.labels(*labels)
            self.in_flight.labels(*labels)
            self.batch_size.labels(*labels)
            self.requests.labels(*labels, "200")
        self.registry.register(VariantCollector(registry))


class VariantCollector(Collector):
    """Per-variant facts measured at load time, read from the registry at scrape time."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "edge_variant_ready", "1 when the variant is loaded and warmed up.", labels=LABELS
        )
        memory = GaugeMetricFamily(
            "edge_variant_memory_bytes",
            "Process RSS growth attributed to the variant while loading (stage=loaded) "
            "and after warm-up (stage=warm).",
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
        for rt in self._registry.all_runtimes():
            labels = [rt.model, rt.variant]
            ready.add_metric(labels, 1.0 if rt.ready else 0.0)
            memory.add_metric([*labels, "loaded"], rt.facts.memory_loaded_bytes)
            memory.add_metric([*labels, "warm"], rt.facts.memory_warm_bytes)
            size.add_metric(labels, rt.path.stat().st_size if rt.path.exists() else 0)
            load.add_metric([*labels, "load"], rt.facts.load_seconds)
            load.add_metric([*labels, "warmup"], rt.facts.warmup_seconds)
        yield from (ready, memory, size, load)


def new_registry() -> CollectorRegistry:
    """A fresh registry with the process and platform collectors (per app, so tests are clean)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
