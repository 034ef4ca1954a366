"""Reading the service's /metrics: snapshots, deltas, and quantiles from histogram buckets."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


@dataclass
class Snapshot:
    """Every sample of one scrape, keyed by sample name and label set."""

    at: float
    samples: dict[tuple[str, Labels], float]

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def select(self, name: str, **labels: str) -> dict[Labels, float]:
        """Samples of one name whose labels include the given ones."""
        wanted = set(labels.items())
        return {lab: v for (n, lab), v in self.samples.items() if n == name and wanted <= lab}

    def total(self, name: str, **labels: str) -> float:
        return sum(self.select(name, **labels).values())

    def buckets(self, histogram: str, **labels: str) -> list[tuple[float, float]]:
        """Cumulative (upper bound, count) pairs of one histogram series, sorted by bound."""
        pairs = []
        for lab, count in self.select(f"{histogram}_bucket", **labels).items():
            bound = dict(lab)["le"]
            pairs.append((math.inf if bound == "+Inf" else float(bound), count))
        return sorted(pairs)


def parse(text: str, at: float | None = None) -> Snapshot:
    """A Prometheus text exposition as a Snapshot."""
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return Snapshot(time.time() if at is None else at, samples)


def scrape(base_url: str, client: httpx.Client | None = None) -> Snapshot:
    """One scrape of /metrics (mounted ASGI apps redirect /metrics to /metrics/)."""
    getter = client.get if client is not None else httpx.get
    response = getter(f"{base_url}/metrics", timeout=10, follow_redirects=True)
    response.raise_for_status()
    return parse(response.text)


def bucket_delta(
    before: Iterable[tuple[float, float]], after: Iterable[tuple[float, float]]
) -> list[tuple[float, float]]:
    """after - before per bucket bound (a bound missing before counts from zero)."""
    old = dict(before)
    return [(bound, count - old.get(bound, 0.0)) for bound, count in after]


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative buckets, interpolated as Prometheus' histogram_quantile.

    Linear inside the bucket that holds the rank; the first bucket starts at 0 (when its
    bound is positive); a rank in the +Inf bucket answers the largest finite bound.
    None when there are no observations.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside [0, 1]")
    pairs = sorted(buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    if not math.isinf(pairs[-1][0]):
        raise ValueError("histogram buckets must end with +Inf")
    total = pairs[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in pairs:
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower if len(pairs) > 1 else None
            if bound <= 0:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


@dataclass
class Poller:
    """Scrapes /metrics every `interval` seconds in a thread, keeping each snapshot."""

    base_url: str
    interval: float = 1.0
    snapshots: list[Snapshot] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Poller:
        self._thread = threading.Thread(target=self._run, name="metrics-poller", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _run(self) -> None:
        with httpx.Client() as client:
            while not self._stop.wait(self.interval):
                try:
                    self.snapshots.append(scrape(self.base_url, client))
                except (httpx.HTTPError, ValueError):
                    self.errors += 1
