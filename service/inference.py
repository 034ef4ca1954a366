"""The one inference path: validate against the model, queue on the variant's lane, record."""

from __future__ import annotations

import os
import time
from types import TracebackType

import numpy as np

from service.allocator import IdleTrim
from service.bounds import Limits
from service.config import Settings
from service.connections import Connection
from service.errors import BadRequest, client_view
from service.metrics import Metrics, VariantMetrics, mark_resolved
from service.protocol import datatype_of
from service.runtime import Feed, ModelRuntime
from service.scheduler import CoreSlots, Lane, batch_pays, core_slots


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


class _Tracked:
    """The async context of one request: in flight, then counted with its status and latency."""

    __slots__ = ("_bound", "_counts", "_idle", "_runtime", "_started")

    def __init__(
        self,
        bound: VariantMetrics,
        runtime: ModelRuntime,
        counts: dict[ModelRuntime, int],
        idle: IdleTrim,
    ) -> None:
        self._bound = bound
        self._runtime = runtime
        self._counts = counts
        self._idle = idle
        self._started = 0.0

    async def __aenter__(self) -> None:
        mark_resolved()
        self._counts[self._runtime] = self._counts.get(self._runtime, 0) + 1
        self._idle.enter()
        self._started = time.perf_counter()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter() - self._started
        bound = self._bound
        self._counts[self._runtime] -= 1
        self._idle.leave()
        status = "200" if exc is None else str(client_view(exc)[0])
        bound.count(status)
        bound.request_seconds.observe(elapsed)
        if status != "200":
            self._runtime.record(False, 0, 0, int(elapsed * 1e9), 0)


class Admitted:
    """A place past a variant's gate, held from before the body is decoded until the answer."""

    __slots__ = ("_lane", "arrived", "connection")

    def __init__(self, lane: Lane, connection: Connection | None = None) -> None:
        self._lane = lane
        self.connection = connection
        self.arrived = 0.0

    async def __aenter__(self) -> Admitted:
        self.arrived = await self._lane.admit(self.connection)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lane.release()


class Inference:
    """Routes call track() around a request and run() for each session call inside it."""

    def __init__(self, metrics: Metrics, settings: Settings) -> None:
        self.metrics = metrics
        self.settings = settings
        self.limits = Limits.of(settings)
        """What one request may make the server hold (service/bounds.py), read once."""
        self.max_batch_size = settings.max_batch_size
        self.slots = core_slots(usable_cores(), settings.threads)
        self._core_slots = CoreSlots(self.slots)
        self._lanes: dict[ModelRuntime, Lane] = {}
        self.in_flight: dict[ModelRuntime, int] = {}
        """Requests inside track() per runtime object, changed on the event loop only: what a
        reload drains, and edge_requests_in_flight at scrape time."""
        self.idle = IdleTrim()
        """Gives the heaps' free memory back once no request has been in flight for a while."""

    def track(self, runtime: ModelRuntime) -> _Tracked:
        """Count the request, its outcome and its latency under the variant's labels."""
        bound = self.metrics.variant(runtime.model, runtime.variant)
        return _Tracked(bound, runtime, self.in_flight, self.idle)

    def admit(self, runtime: ModelRuntime, connection: Connection | None = None) -> Admitted:
        """Wait at the variant's gate (503 past its deadline); pass the result to run().

        With the request's connection, a request whose client has left is not run (499).
        """
        return Admitted(self.lane(runtime), connection)

    async def run(
        self,
        runtime: ModelRuntime,
        feed: Feed,
        outputs: list[str] | None = None,
        admitted: Admitted | None = None,
        connection: Connection | None = None,
    ) -> dict[str, np.ndarray]:
        """Validate the feed, run it on the variant's lane, observe queue/compute time.

        Without `admitted`, waits at the gate here; with the request's `connection`, a request
        whose client has left is not run (499).
        """
        rows = self._validate(runtime, feed)
        if outputs is not None:
            unknown = sorted(set(outputs) - {spec.name for spec in runtime.outputs})
            if unknown:
                raise BadRequest(f"unknown output(s) {', '.join(unknown)} for {runtime.model}")
        lane = self.lane(runtime)
        if admitted is None:
            async with Admitted(lane, connection) as place:
                done = await lane.submit(feed, outputs, rows, place.arrived, connection)
        else:
            done = await lane.submit(feed, outputs, rows, admitted.arrived, admitted.connection)
        bound = self.metrics.variant(runtime.model, runtime.variant)
        bound.queue_seconds.observe(done.queue_seconds)
        bound.compute_seconds.observe(done.compute_seconds)
        runtime.record(
            True,
            int(done.queue_seconds * 1e9),
            int(done.compute_seconds * 1e9),
            int((done.queue_seconds + done.compute_seconds) * 1e9),
            rows,
        )
        return done.result

    def lane(self, runtime: ModelRuntime) -> Lane:
        """The variant's lane, started on its first request (after the variant is ready)."""
        lane = self._lanes.get(runtime)
        if lane is None:
            lane = self._lanes[runtime] = self._new_lane(runtime)
        return lane

    def batch_rows(self, runtime: ModelRuntime) -> int:
        """Rows one run may stack from queued requests; 1 where batching is off or does not pay."""
        settings = self.settings
        batching = runtime.batch_axis_dynamic and (
            settings.batching == "on"
            or (settings.batching == "auto" and batch_pays(runtime.facts.batch_speedup))
        )
        return min(settings.batch_rows, settings.max_batch_size) if batching else 1

    def _new_lane(self, runtime: ModelRuntime) -> Lane:
        settings = self.settings
        return Lane(
            runtime,
            self._core_slots,
            workers=settings.max_concurrency or self.slots,
            max_queue=settings.max_queue,
            deadline=None
            if settings.queue_deadline_ms is None
            else settings.queue_deadline_ms / 1e3,
            batch_rows=self.batch_rows(runtime),
            observe_run=self.metrics.variant(runtime.model, runtime.variant).observe_run,
        )

    def retire(self, runtime: ModelRuntime) -> None:
        """A replaced or unloaded variant, drained: stop its lane's workers, forget it."""
        self.in_flight.pop(runtime, None)
        lane = self._lanes.pop(runtime, None)
        if lane is not None:
            lane.close()

    def close(self) -> None:
        """Stop every lane's workers once their queues are empty (new lanes start on demand)."""
        self.idle.cancel()
        lanes, self._lanes = self._lanes, {}
        for lane in lanes.values():
            lane.close()

    def _validate(self, runtime: ModelRuntime, feed: Feed) -> int:
        """Names, datatypes and shapes must match the model; returns the batch size."""
        specs = runtime.inputs
        if len(feed) != len(specs) or any(spec.name not in feed for spec in specs):
            expected = {spec.name for spec in specs}
            missing, unknown = sorted(expected - set(feed)), sorted(set(feed) - expected)
            raise BadRequest(
                f"model '{runtime.model}' takes inputs {sorted(expected)}; "
                f"missing {missing}, unknown {unknown}"
            )
        batch = -1
        for spec in specs:
            array = feed[spec.name]
            datatype = datatype_of(array)
            if datatype != spec.datatype:
                raise BadRequest(f"input '{spec.name}' must be {spec.datatype}, got {datatype}")
            if len(array.shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
            ):
                raise BadRequest(
                    f"input '{spec.name}' has shape {list(array.shape)}, model takes {spec.shape}"
                    " (-1: any size)"
                )
            if 0 in array.shape:
                raise BadRequest(f"input '{spec.name}' is empty (shape {list(array.shape)})")
            if batch not in (-1, array.shape[0]):
                raise BadRequest(
                    f"inputs disagree on the batch size: {sorted({batch, array.shape[0]})}"
                )
            batch = array.shape[0]
        for dim, places in runtime.shared_dims.items():
            sizes = {name: feed[name].shape[axis] for name, axis in places}
            if len(set(sizes.values())) > 1:
                raise BadRequest(f"inputs disagree on the size of dimension '{dim}': {sizes}")
        if batch > self.max_batch_size:
            raise BadRequest(f"batch size {batch} is over the limit of {self.max_batch_size}")
        return int(batch)
