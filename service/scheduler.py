"""Per-variant work lanes: bounded admission with a deadline, zero-delay batching, core slots.

Each variant has one Lane: a queue the event loop appends to and a few worker threads that
take from it. A worker takes the oldest request and, where batching is on, every other queued
request of the same shape (never waiting for more: a lone request runs at once), runs one
session.run, and hands each request its own rows back. Admission is where backpressure lives:
a request that would wait past the deadline, or finds the queue full, gets a 503 with
Retry-After immediately instead of joining a queue that only grows. All lanes share one
semaphore of core slots (usable cores // intra-op threads), so the threads of every running
session together never outnumber the cores.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.errors import NotReady, Overloaded, ServiceError
from service.runtime import Feed, ModelRuntime

log = logging.getLogger(__name__)

Result = dict[str, np.ndarray]
# Weight of the newest run in the per-row cost estimate used for admission.
_EWMA = 0.2


@dataclass(frozen=True)
class Done:
    """One request's outputs and where its time went."""

    result: Result
    queue_seconds: float
    compute_seconds: float


@dataclass(eq=False)
class _Job:
    feed: Feed
    outputs: list[str] | None
    rows: int
    key: tuple[object, ...]
    future: asyncio.Future[Done]
    enqueued: float


def core_slots(cores: int, threads: int) -> int:
    """Concurrent session.run calls the cores hold without oversubscription (at least 1)."""
    return max(1, cores // max(1, threads))


class Lane:
    """One variant's queue and workers: submit() on the event loop, the run in a worker thread."""

    def __init__(
        self,
        runtime: ModelRuntime,
        slots: threading.Semaphore,
        workers: int,
        max_queue: int,
        deadline: float,
        batch_rows: int,
        observe_batch: Callable[[int], None],
    ) -> None:
        self.runtime = runtime
        self.workers = workers
        self.max_queue = max_queue
        self.deadline = deadline
        self.batch_rows = batch_rows
        self._slots = slots
        self._observe_batch = observe_batch
        self._queue: deque[_Job] = deque()
        self._queued_rows = 0
        self._closed = False
        self._ready = threading.Condition(threading.Lock())
        self.row_seconds = runtime.facts.row_seconds
        self._threads = [
            threading.Thread(target=self._work, name=f"lane-{runtime.name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def batching(self) -> bool:
        return self.batch_rows > 1

    async def submit(self, feed: Feed, outputs: list[str] | None, rows: int) -> Done:
        """Queue one validated request and wait for its rows; 503 at once if it cannot fit."""
        future: asyncio.Future[Done] = asyncio.get_running_loop().create_future()
        key = (
            tuple((name, array.dtype.str, array.shape[1:]) for name, array in feed.items()),
            tuple(outputs) if outputs else None,
        )
        job = _Job(feed, outputs, rows, key, future, time.perf_counter())
        with self._ready:
            if self._closed:
                raise NotReady(f"model '{self.runtime.model}' is shutting down")
            self._admit(rows)
            self._queue.append(job)
            self._queued_rows += rows
            self._ready.notify()
        return await future

    def _admit(self, rows: int) -> None:
        """Refuse what would only wait past the deadline (called with the lock held)."""
        if len(self._queue) >= self.max_queue:
            raise Overloaded(
                f"model '{self.runtime.model}' version '{self.runtime.variant}' has "
                f"{len(self._queue)} requests queued (EDGE_MAX_QUEUE); retry shortly"
            )
        expected = (self._queued_rows + rows) * self.row_seconds / self.workers
        if self._queue and expected > self.deadline:
            raise Overloaded(
                f"model '{self.runtime.model}' version '{self.runtime.variant}' is busy: "
                f"about {expected * 1000:.0f} ms of queued work is over the "
                f"{self.deadline * 1000:.0f} ms deadline (EDGE_QUEUE_DEADLINE_MS); retry shortly"
            )

    def close(self) -> None:
        """Let the workers finish what is queued, then end."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    # --- worker side ---------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    if self._closed:
                        return
                    self._ready.wait()
                jobs = self._take()
            try:
                self._run(jobs)
            except Exception as exc:  # never lose an accepted request, even to a bug here
                log.exception("lane %s failed a run", self.runtime.name)
                _settle([(job, None, exc) for job in jobs])

    def _take(self) -> list[_Job]:
        """The oldest job, plus queued jobs of the same shape up to batch_rows (lock held)."""
        first = self._queue.popleft()
        jobs, rows = [first], first.rows
        if self.batching and self._queue and rows < self.batch_rows:
            kept: deque[_Job] = deque()
            for job in self._queue:
                if job.key == first.key and rows + job.rows <= self.batch_rows:
                    jobs.append(job)
                    rows += job.rows
                else:
                    kept.append(job)
            self._queue = kept
        self._queued_rows -= rows
        return jobs

    def _run(self, jobs: list[_Job]) -> None:
        now = time.perf_counter()
        late = [job for job in jobs if now - job.enqueued > self.deadline]
        if late:
            _settle([(job, None, self._late(now - job.enqueued)) for job in late])
            jobs = [job for job in jobs if job not in late]
            if not jobs:
                return
        with self._slots:
            started = time.perf_counter()
            outcomes = self._batched(jobs) if len(jobs) > 1 else self._single(jobs[0])
            finished = time.perf_counter()
        rows = sum(job.rows for job in jobs)
        self._observe_batch(rows)
        self.row_seconds += _EWMA * ((finished - started) / rows - self.row_seconds)
        _settle(
            [
                (job, Done(result, started - job.enqueued, finished - started), None)
                if error is None
                else (job, None, error)
                for job, result, error in outcomes
            ]
        )

    def _single(self, job: _Job) -> list[tuple[_Job, Result, Exception | None]]:
        try:
            return [(job, self.runtime.predict(job.feed, job.outputs), None)]
        except ServiceError as exc:
            return [(job, {}, exc)]

    def _batched(self, jobs: list[_Job]) -> list[tuple[_Job, Result, Exception | None]]:
        """One run over the stacked rows, split back; one run each if that cannot be done."""
        first = jobs[0]
        feed = {name: np.concatenate([job.feed[name] for job in jobs]) for name in first.feed}
        rows = sum(job.rows for job in jobs)
        try:
            result = self.runtime.predict(feed, first.outputs)
        except ServiceError:  # one bad input must not fail its neighbours
            return [outcome for job in jobs for outcome in self._single(job)]
        if any(array.ndim == 0 or array.shape[0] != rows for array in result.values()):
            return [outcome for job in jobs for outcome in self._single(job)]
        outcomes: list[tuple[_Job, Result, Exception | None]] = []
        offset = 0
        for job in jobs:
            end = offset + job.rows
            rows_of_job = {name: array[offset:end] for name, array in result.items()}
            outcomes.append((job, rows_of_job, None))
            offset = end
        return outcomes

    def _late(self, waited: float) -> Overloaded:
        return Overloaded(
            f"model '{self.runtime.model}' version '{self.runtime.variant}' waited "
            f"{waited * 1000:.0f} ms in the queue, over the {self.deadline * 1000:.0f} ms "
            "deadline (EDGE_QUEUE_DEADLINE_MS); retry shortly"
        )


def _settle(outcomes: list[tuple[_Job, Done | None, Exception | None]]) -> None:
    """Hand results to the waiting requests on their event loops (one wake-up per loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Done | None, Exception | None]]]
    by_loop = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].future.get_loop(), []).append(outcome)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, items)
        except RuntimeError:  # the loop closed: its requests are gone with it
            pass


def _resolve(outcomes: list[tuple[_Job, Done | None, Exception | None]]) -> None:
    for job, done, error in outcomes:
        if job.future.done():  # the request was cancelled meanwhile
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            assert done is not None
            job.future.set_result(done)


def batch_pays(speedup: float | None) -> bool:
    """Batching pays where a row costs clearly less in a batch than alone (load-time timing)."""
    return speedup is not None and math.isfinite(speedup) and speedup >= 1.2
