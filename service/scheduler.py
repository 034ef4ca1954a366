"""Per-variant work lanes: a gate with a deadline, zero-delay batching, core slots.

Each variant has one Lane. Its gate, on the event loop, lets `capacity` requests in (a few runs'
worth; more where requests are batched); the rest park, costing nothing, until a place frees or
the deadline passes, when they get a 503 with Retry-After. A request that finds `max_queue`
already parked gets that 503 at once. A freed place goes to the oldest parked request, or to the
newest once the queue stands (too long to drain within the deadline: adaptive LIFO). Parking
rather than refusing at once matters on a shared core: refused clients that retry immediately
would take half the CPU from session.run.
A request whose client has left by the time it gets a place, or by the time a worker would run
it, is not run (service.connections).
Past the gate, requests queue for the lane's worker threads. A worker takes the oldest and,
where batching is on, every other queued request of the same shape (never waiting for more: a
lone request runs at once), runs one session.run and hands each request its own rows. Variants
whose rows cost less than the hand-off to a worker run on the event loop instead, batched the
same way from the requests that reached the lane in one turn of the loop. All lanes share one
set of core slots (usable cores // intra-op threads), so the threads of every running session
together never outnumber the cores; a freed slot goes to the waiting lane that has held the
slots least, so lanes share the cores by time rather than by turns.
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

from service.arrivals import ARRIVALS
from service.connections import Connection
from service.errors import ClientGone, NotReady, Overloaded, ServiceError
from service.runtime import Feed, ModelRuntime

log = logging.getLogger(__name__)

Result = dict[str, np.ndarray]
# Weight of the newest run in the run-time estimate behind the adaptive deadline.
_EWMA = 0.2
# Unbatched: requests past the gate per worker (one running, the rest queued behind it);
# where a run takes over SLOW_RUN_SECONDS, one running and one decoded and ready is enough,
# and a deeper queue only adds runs of waiting to every answer (p99 at 64 clients on OCR:
# 258-280 ms with 2, 302-340 ms with 4, same throughput).
DEPTH = 4
SLOW_DEPTH = 2
SLOW_RUN_SECONDS = 0.005
# Batched: requests past the gate per worker, in batches' worth (one running, one filling).
BATCH_DEPTH = 2
# Rows expected to take less than this run on the event loop (see Lane._run_gathered).
INLINE_SECONDS = 0.0002
# The adaptive deadline: this many runs of the variant, never under MIN_DEADLINE seconds.
# Clients that retry a 503 at once turn over once per deadline, and every 503 costs the core
# a body read: with 3 runs OCR INT8 at 16 such clients served 26-28 req/s, with 10 runs 33-36.
DEADLINE_RUNS = 10
MIN_DEADLINE = 0.050
# How far (slot-seconds) a lane back from idle may trail the most served lane (CoreSlots).
CREDIT_SECONDS = 0.050


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
    arrived: float
    connection: Connection | None


_Outcome = tuple[_Job, Done | None, Exception | None]
"""A job's answer: its rows, or the error its request gets."""


def core_slots(cores: int, threads: int) -> int:
    """Concurrent session.run calls the cores hold without oversubscription (at least 1)."""
    return max(1, cores // max(1, threads))


class CoreShare:
    """One lane's claim on the core slots: how long it has held them (CoreSlots' fairness).

    Taking a slot subtracts the clock from the ledger and freeing it adds it back, so the time
    held is the ledger plus the clock for each slot still held: no start time kept per slot.
    """

    __slots__ = ("holding", "ledger")

    def __init__(self) -> None:
        self.ledger = 0.0
        self.holding = 0

    def served(self, now: float) -> float:
        """Slot-seconds held up to now."""
        return self.ledger + self.holding * now


class _Waiter:
    """A thread blocked on a core slot: its gate opens when a slot is handed to it or freed."""

    __slots__ = ("gate", "handed", "share")

    def __init__(self, share: CoreShare) -> None:
        self.share = share
        self.handed = False
        self.gate = threading.Lock()
        self.gate.acquire()


class CoreSlots:
    """The core slots every lane shares; a freed slot goes to the waiting lane served least.

    Across lanes a freed slot is handed over: with a free-for-all, the thread that frees a slot
    takes it back before a woken waiter gets the GIL (two busy threads on one slot: 117 turns
    to 1), so a lane whose queue stays full kept the core while the other lane's requests
    waited out their deadlines. It goes to the lane that has held the slots for the least time
    (a lane with another run to do keeps its slot while it is that lane), not by turns: turns
    give every lane the same runs per second, so FP32 and INT8 side by side on a full core
    finished the same requests and INT8's cheaper runs never showed. A lane back from idle
    counts at most CREDIT_SECONDS behind the most served, so its idle time buys it no more.
    Within a lane a freed slot stays free-for-all, so the event loop's inline runs may take it
    back ahead of their own lane's worker (handing it over there too measured 16% fewer req/s
    for digits INT8 at 16 clients, in one A/B of 4 rounds). An acquire and release cost ~2 us,
    two clock reads included (0.2 us for a C queue of tokens, which cannot hand over); digits
    pays it once per request.
    """

    def __init__(self, count: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self._mutex = threading.Lock()
        self._free = count
        self._waiting: deque[_Waiter] = deque()
        self._clock = clock

    @property
    def waiting(self) -> int:
        """Threads blocked on a slot now."""
        return len(self._waiting)

    def acquire(self, share: CoreShare, blocking: bool = True) -> bool:
        """Take a slot for share's lane; without blocking, False when none is free."""
        with self._mutex:
            if self._free:
                self._free -= 1
                self._hold(share)
                return True
            if not blocking:
                return False
            waiter = _Waiter(share)
            self._waiting.append(waiter)
        while True:
            waiter.gate.acquire()
            if waiter.handed:
                return True  # counted as held by whoever handed it over
            with self._mutex:  # woken to compete for a slot its own lane freed
                if self._free:
                    self._free -= 1
                    self._hold(share)
                    return True
                self._waiting.appendleft(waiter)  # taken meanwhile: first in line again

    def release(self, share: CoreShare) -> None:
        """Free a slot of share's lane: to the lane waiting that was served least, else free."""
        with self._mutex:
            self._let_go(share)
            if not self._waiting:
                self._free += 1
                return
            waiter = self._least_served(share, wants_more=False)
            assert waiter is not None  # someone waits
            if waiter.share is not share:
                self._hand(waiter)
                return
            self._free += 1  # its own lane's waiter is woken to take it, or the loop takes it
            self._waiting.remove(waiter)
            waiter.gate.release()

    def keep(self, share: CoreShare) -> bool:
        """share's lane, holding a slot, has another run: keep the slot (True) unless a lane
        served less waits, which gets it (False: the slot is no longer share's)."""
        with self._mutex:
            if not self._waiting:
                return True
            waiter = self._least_served(share, wants_more=True)
            if waiter is None:
                return True
            self._let_go(share)
            self._hand(waiter)
            return False

    def _hold(self, share: CoreShare) -> None:
        share.ledger -= self._clock()
        share.holding += 1

    def _let_go(self, share: CoreShare) -> None:
        share.ledger += self._clock()
        share.holding -= 1

    def _hand(self, waiter: _Waiter) -> None:
        self._waiting.remove(waiter)
        self._hold(waiter.share)
        waiter.handed = True
        waiter.gate.release()

    def _least_served(self, share: CoreShare, wants_more: bool) -> _Waiter | None:
        """The first waiter of the waiting lane that has held the slots least, ties going to a
        lane other than share's; None where share's lane, wanting more, is that lane itself.
        A lane trailing the most served by over CREDIT_SECONDS is lifted to that first.
        """
        now = self._clock()
        firsts: dict[CoreShare, _Waiter | None] = {share: None} if wants_more else {}
        for waiter in self._waiting:
            firsts.setdefault(waiter.share, waiter)
        served = {candidate: candidate.served(now) for candidate in firsts}
        floor = max(served.values()) - CREDIT_SECONDS
        for candidate, seconds in served.items():
            if seconds < floor:  # no credit for idle time
                candidate.ledger += floor - seconds
                served[candidate] = floor
        least = min(served, key=lambda candidate: (served[candidate], candidate is share))
        return firsts[least]


class Lane:
    """One variant's gate, queue and workers: admit() and submit() on the event loop."""

    def __init__(
        self,
        runtime: ModelRuntime,
        slots: CoreSlots,
        workers: int,
        max_queue: int,
        deadline: float | None,
        batch_rows: int,
        observe_run: Callable[[int, float], None],
    ) -> None:
        self.runtime = runtime
        self.workers = workers
        self.max_queue = max_queue
        self.fixed_deadline = deadline
        self.batch_rows = batch_rows
        depth = SLOW_DEPTH if runtime.facts.row_seconds > SLOW_RUN_SECONDS else DEPTH
        self.capacity = workers * (batch_rows * BATCH_DEPTH if batch_rows > 1 else depth)
        self.run_seconds = runtime.facts.row_seconds
        self.row_seconds = runtime.facts.row_seconds
        self._slots = slots
        self._share = CoreShare()
        self._observe_run = observe_run
        self._inside = 0
        self._parked: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._queue: deque[_Job] = deque()
        self._gathered: list[_Job] = []
        """Requests for the event loop's next run (_run_gathered), in arrival order."""
        self._closed = False
        self._ready = threading.Condition(threading.Lock())
        self._threads = [
            threading.Thread(target=self._work, name=f"lane-{runtime.name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def batching(self) -> bool:
        return self.batch_rows > 1

    @property
    def queued(self) -> int:
        """Requests waiting for a worker now."""
        return len(self._queue)

    @property
    def parked(self) -> int:
        """Requests waiting at the gate now."""
        return len(self._parked)

    @property
    def deadline(self) -> float:
        """How long a request may wait at the gate: the setting, or a few runs of the variant."""
        if self.fixed_deadline is not None:
            return self.fixed_deadline
        return max(MIN_DEADLINE, DEADLINE_RUNS * self.run_seconds)

    # --- the gate (event loop only) ------------------------------------------------------

    async def admit(self, connection: Connection | None = None) -> float:
        """Wait for a place past the gate (503 at the deadline, or at once when full)."""
        arrived = time.perf_counter()
        if self._inside < self.capacity and not self._parked:
            self._inside += 1
            return arrived
        if self._closed:
            raise self._closing()
        if len(self._parked) >= self.max_queue:
            raise Overloaded(
                f"{self.runtime.label} has {len(self._parked)} requests waiting "
                "(EDGE_MAX_QUEUE); retry shortly"
            )
        loop = asyncio.get_running_loop()
        place: asyncio.Future[None] = loop.create_future()
        self._parked.append((arrived, place))
        deadline = self.deadline  # adaptive: the 503 names the one this request was given
        timer = loop.call_later(deadline, self._expire, place, arrived, deadline)
        try:
            await place
        except asyncio.CancelledError:
            if place.done() and not place.cancelled() and place.exception() is None:
                self.release()  # handed a place just as the request was cancelled
            elif (arrived, place) in self._parked:
                self._parked.remove((arrived, place))
            raise
        except ServiceError:
            # The 503 leaves through this frame, which holds the future that holds the 503,
            # whose traceback holds the frames back to the request's body: a reference cycle
            # only Python's cyclic collector frees, and after a burst nothing runs it. OCR, three
            # 6 s bursts of 64 JSON clients, RSS 3 s after each: 573/612/664 MB with it,
            # 307/311/314 MB without (malloc_stats: 647 MB still in use with it).
            del place
            raise
        finally:
            timer.cancel()
        if connection is not None and connection.disconnected:
            self.release()  # the place goes on to the next parked request
            raise _gone()
        return arrived

    def release(self) -> None:
        """A request left: its place goes to a parked request, if any.

        Oldest first while the parked requests can all get a place within the deadline; newest
        first once they cannot (the queue stands): then the back of the queue would time out
        anyway, and serving the freshest keeps the answers that are given quick (adaptive LIFO,
        as in Facebook's "Fail at Scale"). The refused still get their 503 at the deadline.
        """
        while self._parked:
            _, place = self._parked.pop() if self._standing() else self._parked.popleft()
            if not place.done():
                place.set_result(None)
                return
        self._inside -= 1

    def _standing(self) -> bool:
        """Whether the newest parked request, served in order, would miss its deadline.

        Judged by the time the queue takes to drain, not by how long its oldest has waited: a
        few clients more than the gate holds form a queue that drains in time, and serving it
        newest first only starved its oldest into 503s. OCR INT8 at 8 clients on one core, 4
        interleaved rounds of 5 s: 70-104 503s a round and p99 305 ms when the oldest's wait
        decided, 0-1 and 239 ms now; at 16 and 64 clients the queue stands either way.
        """
        newest, _ = self._parked[-1]
        drain = len(self._parked) * self.row_seconds / self.workers
        return time.perf_counter() - newest + drain > self.deadline

    def _expire(self, place: asyncio.Future[None], arrived: float, deadline: float) -> None:
        if place.done():
            return
        self._parked.remove((arrived, place))
        place.set_exception(self._overdue(time.perf_counter() - arrived, deadline))

    # --- the queue -------------------------------------------------------------------------

    async def submit(
        self,
        feed: Feed,
        outputs: list[str] | None,
        rows: int,
        arrived: float,
        connection: Connection | None = None,
    ) -> Done:
        """Queue one validated, admitted request and wait for its rows."""
        if self._closed:
            raise self._closing()
        tiny = rows * self.runtime.facts.row_seconds < INLINE_SECONDS
        # Tiny, alone, and no request on its way in this loop turn: nobody to batch with, so
        # run now (waiting a loop turn cost digits ~10% of its req/s at one client).
        if (
            tiny
            and self._inside <= 1
            and not self._gathered
            and not self._queue
            and not ARRIVALS.waiting
        ):
            done = self._inline(feed, outputs, rows, arrived)
            if done is not None:
                return done
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Done] = loop.create_future()
        key = (
            tuple((name, array.dtype.str, array.shape[1:]) for name, array in feed.items()),
            tuple(outputs) if outputs else None,
        )
        job = _Job(feed, outputs, rows, key, future, arrived, connection)
        if tiny:
            self._gathered.append(job)
            if len(self._gathered) == 1:
                loop.call_soon(self._run_gathered)
        else:
            self._hand_over([job])
        return await future

    def _inline(
        self, feed: Feed, outputs: list[str] | None, rows: int, arrived: float
    ) -> Done | None:
        """Run one request here and now (a free core slot needed; None without one)."""
        if not self._slots.acquire(self._share, blocking=False):
            return None
        try:
            started = time.perf_counter()
            result = self.runtime.predict(feed, outputs)
            took = time.perf_counter() - started
        finally:
            self._slots.release(self._share)
        self._ran(rows, took)
        return Done(result, started - arrived, took)

    def _ran(self, rows: int, took: float) -> None:
        """Record one run: its rows and time in the metrics, its time in the cost estimates."""
        self._observe_run(rows, took)
        self.run_seconds += _EWMA * (took - self.run_seconds)
        self.row_seconds += _EWMA * (took / rows - self.row_seconds)

    def _hand_over(self, jobs: list[_Job]) -> None:
        """Queue jobs for the workers (503 once the lane is closed: its workers may be gone)."""
        with self._ready:
            if not self._closed:
                self._queue.extend(jobs)
                self._ready.notify(len(jobs))
                return
        closed = self._closing()
        _resolve([(job, None, closed) for job in jobs])

    def _run_gathered(self) -> None:
        """Run, here on the event loop, what reached the lane in the last turn of the loop.

        For variants whose row costs less than INLINE_SECONDS (at load): waking a worker and
        waking the loop back costs ~0.2 ms on a shared core, several times a digits run. The
        requests that arrive together still batch, without waiting for anyone: a request alone
        in its lane runs at once, others one loop turn after they arrived. The loop holds a
        core slot while it runs, so the cores are never oversubscribed; without a free one (or
        with work already queued for the workers) the requests go to the workers as usual.
        """
        pending, self._gathered = deque(self._gathered), []
        if self._queue or not self._slots.acquire(self._share, blocking=False):
            self._hand_over(list(pending))
            return
        try:
            while pending:
                jobs, pending = self._take(pending)
                _resolve(self._outcomes(jobs))
        finally:
            self._slots.release(self._share)

    def close(self) -> None:
        """Let the workers finish what is queued, then end; parked requests get 503."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        while self._parked:
            _, place = self._parked.popleft()
            if not place.done():
                place.set_exception(self._closing())

    # --- worker side ---------------------------------------------------------------------

    def _work(self) -> None:
        holding = False  # a core slot kept from the run before (CoreSlots.keep)
        while True:
            with self._ready:
                while not self._queue:
                    if holding:
                        self._slots.release(self._share)
                        holding = False
                    if self._closed:
                        return
                    self._ready.wait()
                jobs, self._queue = self._take(self._queue)
            if not holding:
                self._slots.acquire(self._share)
            try:  # checked once the slot is ours: the last moment before the run
                jobs, outcomes = self._abandoned(jobs)
                if jobs:
                    outcomes += self._outcomes(jobs)
            finally:  # with a run to follow the slot is kept, unless a lane served less waits
                if self._queue:
                    holding = self._slots.keep(self._share)
                else:
                    self._slots.release(self._share)
                    holding = False
            _settle(outcomes)

    def _outcomes(self, jobs: list[_Job]) -> list[_Outcome]:
        """_execute, but an accepted request is never lost, even to a bug here."""
        try:
            return self._execute(jobs)
        except Exception as exc:
            log.exception("lane %s failed a run", self.runtime.name)
            return [(job, None, exc) for job in jobs]

    def _take(self, queue: deque[_Job]) -> tuple[list[_Job], deque[_Job]]:
        """The oldest job plus queued jobs of the same shape up to batch_rows; and the rest."""
        rest = deque(queue)
        first = rest.popleft()
        jobs, rows = [first], first.rows
        # A batch no bigger than the deadline's worth of rows: batching must not build tails.
        limit = min(self.batch_rows, int(self.deadline / max(self.row_seconds, 1e-9)))
        if not self.batching or not rest or rows >= limit:
            return jobs, rest
        kept: deque[_Job] = deque()
        for job in rest:
            if job.key == first.key and rows + job.rows <= limit:
                jobs.append(job)
                rows += job.rows
            else:
                kept.append(job)
        return jobs, kept

    def _abandoned(self, jobs: list[_Job]) -> tuple[list[_Job], list[_Outcome]]:
        """The jobs still worth running, and the outcomes of those nobody waits for any more.

        499 where the client has closed its connection. 503 where the job waited far past
        its time: past the gate a request waits about `capacity` runs; far beyond that (a
        stalled core) its client has most likely given up, and a 503 serves it better than a
        late answer. Workers only: on the event loop's path the run is micro-seconds away.
        """
        now = time.perf_counter()
        late_after = self.deadline + (self.capacity / self.workers + 1) * self.run_seconds
        kept: list[_Job] = []
        outcomes: list[_Outcome] = []
        for job in jobs:
            if job.connection is not None and job.connection.disconnected:
                outcomes.append((job, None, _gone()))
            elif now - job.arrived > late_after:
                outcomes.append((job, None, self._overdue(now - job.arrived, self.deadline)))
            else:
                kept.append(job)
        return kept, outcomes

    def _execute(self, jobs: list[_Job]) -> list[_Outcome]:
        """One run over jobs (a core slot held), timed; each job's outcome."""
        started = time.perf_counter()
        results = self._batched(jobs) if len(jobs) > 1 else self._single(jobs[0])
        took = time.perf_counter() - started
        self._ran(sum(job.rows for job in jobs), took)
        return [
            (job, Done(result, started - job.arrived, took), None)
            if error is None
            else (job, None, error)
            for job, result, error in results
        ]

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

    def _closing(self) -> NotReady:
        return NotReady(f"model '{self.runtime.model}' is shutting down")

    def _overdue(self, waited: float, deadline: float) -> Overloaded:
        return Overloaded(
            f"{self.runtime.label} is busy: waited {waited * 1000:.0f} ms, "
            f"over the {deadline * 1000:.0f} ms queue deadline "
            "(EDGE_QUEUE_DEADLINE_MS); retry shortly"
        )


def _gone() -> ClientGone:
    return ClientGone("the client closed the connection while its request waited; not run")


def _settle(outcomes: list[_Outcome]) -> None:
    """Hand results to the waiting requests on their event loops (one wake-up per loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]]
    by_loop = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].future.get_loop(), []).append(outcome)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, items)
        except RuntimeError:  # the loop closed: its requests are gone with it
            pass


def _resolve(outcomes: list[_Outcome]) -> None:
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
