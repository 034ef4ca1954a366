"""The one inference path: validate against the model, run off the event loop, record metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
import numpy as np
from starlette.exceptions import HTTPException

from service.errors import BadRequest, ServiceError
from service.metrics import Metrics, mark_resolved
from service.protocol import datatype_of
from service.runtime import Feed, ModelRuntime


class Inference:
    """Routes call track() around a request and run() for each session call inside it."""

    def __init__(self, metrics: Metrics, max_batch_size: int) -> None:
        self.metrics = metrics
        self.max_batch_size = max_batch_size

    @asynccontextmanager
    async def track(self, runtime: ModelRuntime) -> AsyncIterator[None]:
        """Count the request, its outcome and its latency under the variant's labels."""
        labels = (runtime.model, runtime.variant)
        mark_resolved()
        in_flight = self.metrics.in_flight.labels(*labels)
        in_flight.inc()
        started = time.perf_counter()
        status = "500"
        try:
            yield
            status = "200"
        except (ServiceError, HTTPException) as exc:  # HTTPException: the body limit's 413
            status = str(exc.status_code)
            raise
        finally:
            elapsed = time.perf_counter() - started
            in_flight.dec()
            self.metrics.requests.labels(*labels, status).inc()
            self.metrics.request_seconds.labels(*labels).observe(elapsed)
            if status != "200":
                runtime.record(False, 0, 0, int(elapsed * 1e9), 0)

    async def run(
        self, runtime: ModelRuntime, feed: Feed, outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Validate the feed, run the session in a worker thread, observe queue/compute time."""
        batch = self._validate(runtime, feed)
        if outputs is not None:
            unknown = sorted(set(outputs) - {spec.name for spec in runtime.outputs})
            if unknown:
                raise BadRequest(f"unknown output(s) {', '.join(unknown)} for {runtime.model}")
        submitted = time.perf_counter()

        def work() -> tuple[dict[str, np.ndarray], float, float]:
            started = time.perf_counter()
            result = runtime.predict(feed, outputs)
            return result, started, time.perf_counter()

        result, started, finished = await anyio.to_thread.run_sync(work)
        labels = (runtime.model, runtime.variant)
        self.metrics.queue_seconds.labels(*labels).observe(started - submitted)
        self.metrics.compute_seconds.labels(*labels).observe(finished - started)
        self.metrics.batch_size.labels(*labels).observe(batch)
        runtime.record(
            True,
            int((started - submitted) * 1e9),
            int((finished - started) * 1e9),
            int((finished - submitted) * 1e9),
            batch,
        )
        return result

    def _validate(self, runtime: ModelRuntime, feed: Feed) -> int:
        """Names, datatypes and shapes must match the model; returns the batch size."""
        expected = {spec.name for spec in runtime.inputs}
        missing, unknown = sorted(expected - set(feed)), sorted(set(feed) - expected)
        if missing or unknown:
            raise BadRequest(
                f"model '{runtime.model}' takes inputs {sorted(expected)}; "
                f"missing {missing}, unknown {unknown}"
            )
        batches = set()
        for spec in runtime.inputs:
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
            batches.add(array.shape[0])
        if len(batches) != 1:
            raise BadRequest(f"inputs disagree on the batch size: {sorted(batches)}")
        batch = batches.pop()
        if batch > self.max_batch_size:
            raise BadRequest(f"batch size {batch} is over the limit of {self.max_batch_size}")
        return int(batch)
