"""Lanes on a real digits session: admission, deadline, batching split, and 503s over HTTP.

The in-process tests hold the shared core slot themselves, so "the worker is busy" is a fact
the test sets up rather than a race it hopes to win; nothing here asserts on a duration.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.arrivals import ARRIVALS
from service.connections import Connection
from service.errors import ClientGone, Overloaded
from service.manifest import ModelManifest
from service.processing import Processor
from service.runtime import ModelRuntime
from service.scheduler import CREDIT_SECONDS, INLINE_SECONDS, CoreShare, CoreSlots, Lane, core_slots

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def runtime(model_repository: Path) -> ModelRuntime:
    """digits/int8 loaded and warmed up exactly as the registry does it."""
    directory = model_repository / "digits"
    manifest = ModelManifest.read(directory)
    variant = manifest.variants["int8"]
    runtime = ModelRuntime(
        "digits", "int8", directory / variant.file, variant.sha256, 1,
        manifest.inputs, manifest.outputs,
    )  # fmt: skip
    runtime.load(Processor(manifest, directory).sample_feed(), 2)
    assert runtime.ready, runtime.error
    return runtime


ANOTHER_LANE = CoreShare()
"""The share of core slots a test holds, as another lane's run would."""


def make_lane(runtime: ModelRuntime, slots: CoreSlots, observe: Any = None, **options: Any) -> Lane:
    """A lane of one worker; `observe(rows)` sees each run's rows."""
    settings = {"workers": 1, "max_queue": 8, "deadline": 10.0, "batch_rows": 1, **options}
    # deadline 10 s unless a test sets one: nothing here may depend on how fast a run is
    seen = observe or (lambda rows: None)
    return Lane(runtime, slots, observe_run=lambda rows, seconds: seen(rows), **settings)


def digits(rows: int, seed: int) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).uniform(0, 16, (rows, 1, 8, 8)).astype("f4")}


async def wait_until_taken(lane: Lane) -> None:
    """Until the worker has taken the first job off the queue (and blocks on the slot)."""
    while lane.queued:
        await asyncio.sleep(0.001)


def submit(lane: Lane, feed: dict[str, np.ndarray]) -> asyncio.Future[Any]:
    """Queue one request as an admitted one would be."""
    rows = feed["input"].shape[0]
    return asyncio.ensure_future(lane.submit(feed, None, rows, time.perf_counter()))


def test_core_slots_never_oversubscribe() -> None:
    assert core_slots(2, 1) == 2
    assert core_slots(2, 2) == 1
    assert core_slots(1, 4) == 1  # at least one run, even with more threads than cores
    slots = CoreSlots(2)
    assert [slots.acquire(ANOTHER_LANE, blocking=False) for _ in range(3)] == [True, True, False]
    slots.release(ANOTHER_LANE)
    assert slots.acquire(ANOTHER_LANE, blocking=False)
    assert not slots.acquire(ANOTHER_LANE, blocking=False)


def waiting_for_a_slot(slots: CoreSlots, share: CoreShare) -> threading.Thread:
    """A thread of share's lane blocked on a slot (it ends once it has one)."""
    waiting = slots.waiting
    waiter = threading.Thread(target=slots.acquire, args=(share,))
    waiter.start()
    while slots.waiting == waiting:
        time.sleep(0.001)
    return waiter


def got_it(thread: threading.Thread) -> bool:
    thread.join(timeout=10)
    return not thread.is_alive()


def test_a_freed_core_slot_goes_first_to_a_waiter_of_another_lane() -> None:
    """Across lanes a freed slot is handed over; within a lane its freer may take it back."""
    slots = CoreSlots(1)
    a, b = CoreShare(), CoreShare()
    assert slots.acquire(a)
    other_lane = waiting_for_a_slot(slots, b)
    slots.release(a)
    assert not slots.acquire(a, blocking=False)  # lane b's, though "a" asked first here
    assert got_it(other_lane)
    same_lane = waiting_for_a_slot(slots, b)
    switching = sys.getswitchinterval()
    sys.setswitchinterval(10.0)  # the woken waiter must not get the GIL in between
    try:
        slots.release(b)
        assert slots.acquire(b, blocking=False)  # its own lane's waiter did not get it
    finally:
        sys.setswitchinterval(switching)
    slots.release(b)
    assert got_it(same_lane) and not slots.waiting


class Clock:
    """A clock the test moves: CoreSlots counts held time by it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_lane_that_held_the_core_least_gets_it_not_the_next_in_turn() -> None:
    """INT8 beside FP32 on one core: runs of 3 ms against 10 ms share the time, not the turns."""
    clock = Clock()
    slots = CoreSlots(1, clock)
    fp32, int8 = CoreShare(), CoreShare()
    assert slots.acquire(fp32)
    int8_waits = waiting_for_a_slot(slots, int8)
    clock.now += 0.010
    assert not slots.keep(fp32)  # int8 has held it less: the slot is int8's now
    assert got_it(int8_waits)
    fp32_waits = waiting_for_a_slot(slots, fp32)
    kept = 0
    while True:
        clock.now += 0.003
        if not slots.keep(int8):
            break
        kept += 1
    assert kept == 3  # it ran again while it had held it less than fp32's 10 ms: 4 runs
    assert got_it(fp32_waits)
    slots.release(fp32)
    assert not slots.waiting


def test_a_lane_back_from_idle_gets_no_credit_for_its_idle_time() -> None:
    clock = Clock()
    slots = CoreSlots(1, clock)
    busy, idle = CoreShare(), CoreShare()
    assert slots.acquire(busy)
    clock.now += 10.0  # busy alone for 10 s: idle has held nothing
    idle_waits = waiting_for_a_slot(slots, idle)
    assert not slots.keep(busy)
    assert got_it(idle_waits)
    busy_waits = waiting_for_a_slot(slots, busy)
    held = 0.0
    while slots.keep(idle):  # idle keeps it only for the credit, not for 10 s
        clock.now += 0.015
        held += 0.015
    assert CREDIT_SECONDS <= held < CREDIT_SECONDS + 0.015
    assert got_it(busy_waits)
    slots.release(busy)
    assert not slots.waiting


def test_gate_parks_then_refuses_when_full(runtime: ModelRuntime) -> None:
    """Past capacity requests park; with max_queue parked, the next is refused at once."""
    lane = make_lane(runtime, CoreSlots(1), max_queue=1)
    assert lane.capacity == 4  # one running and three queued behind it, per worker

    async def scenario() -> None:
        inside = [await lane.admit() for _ in range(lane.capacity)]
        parked = asyncio.ensure_future(lane.admit())
        await asyncio.sleep(0)
        assert lane.parked == 1
        with pytest.raises(Overloaded, match="waiting"):
            await lane.admit()
        lane.release()  # one request leaves: its place goes to the parked one
        await parked
        assert lane.parked == 0 and len(inside) == 4

    asyncio.run(scenario())
    lane.close()


def test_parked_request_gets_503_at_the_deadline(runtime: ModelRuntime) -> None:
    lane = make_lane(runtime, CoreSlots(1), deadline=0.05)

    async def scenario() -> None:
        for _ in range(lane.capacity):
            await lane.admit()
        with pytest.raises(Overloaded, match="waited"):
            await lane.admit()  # nobody leaves, so the deadline passes
        assert lane.parked == 0

    asyncio.run(scenario())
    lane.close()


def test_queue_that_drains_in_time_is_served_in_order(runtime: ModelRuntime) -> None:
    """Oldest first while the parked can all be served by the deadline; newest first after."""
    lane = make_lane(runtime, CoreSlots(1), deadline=10.0)

    async def scenario() -> None:
        for _ in range(lane.capacity):
            await lane.admit()
        parked = [asyncio.ensure_future(lane.admit()) for _ in range(4)]
        await asyncio.sleep(0)
        lane.row_seconds = 0.001  # four parked drain in ms: in order
        lane.release()
        await asyncio.sleep(0)
        assert [p.done() for p in parked] == [True, False, False, False]
        lane.row_seconds = 4.0  # three parked take 12 s, past the 10 s deadline: it stands
        lane.release()
        await asyncio.sleep(0)
        assert [p.done() for p in parked] == [True, False, False, True]
        for future in parked[1:3]:
            future.cancel()
        await asyncio.gather(*parked, return_exceptions=True)

    asyncio.run(scenario())
    lane.close()


@pytest.fixture
def row_cost(runtime: ModelRuntime) -> Iterator[Any]:
    """Set the load-time row cost that sends a lane's runs to the event loop or its workers."""
    measured = runtime.facts.row_seconds

    def set_cost(seconds: float) -> None:
        runtime.facts.row_seconds = seconds

    yield set_cost
    runtime.facts.row_seconds = measured


def test_batched_rows_go_back_to_their_requests(runtime: ModelRuntime, row_cost: Any) -> None:
    """Queued requests of different sizes run as one batch; each gets exactly its own rows."""
    row_cost(0.001)  # over INLINE_SECONDS: the lane's worker runs them
    slots = CoreSlots(1)
    batches: list[int] = []
    lane = make_lane(runtime, slots, batch_rows=32, observe=batches.append)
    feeds = [digits(rows, seed) for seed, rows in enumerate((1, 3, 1, 2, 5))]

    async def scenario() -> list[Any]:
        slots.acquire(ANOTHER_LANE)
        first = submit(lane, feeds[0])
        await asyncio.sleep(0)
        await wait_until_taken(lane)
        rest = [submit(lane, f) for f in feeds[1:]]
        await asyncio.sleep(0)
        slots.release(ANOTHER_LANE)
        return list(await asyncio.gather(first, *rest))

    done = asyncio.run(scenario())
    lane.close()
    for feed, result in zip(feeds, done, strict=True):
        expected = runtime.predict(feed)["logits"]
        assert np.array_equal(result.result["logits"], expected)
    assert batches == [1, 11]  # the first alone (taken at once), the other four stacked


def test_tiny_rows_arriving_together_run_as_one_batch_on_the_event_loop(
    runtime: ModelRuntime, row_cost: Any
) -> None:
    """Rows cheaper than the hand-off to a worker: one run on the loop for one loop turn's."""
    row_cost(INLINE_SECONDS / 8)  # each of these requests' rows together cost less than that
    runs: list[tuple[int, str]] = []
    lane = make_lane(
        runtime,
        CoreSlots(1),
        batch_rows=32,
        observe=lambda rows: runs.append((rows, threading.current_thread().name)),
    )
    feeds = [digits(rows, seed) for seed, rows in enumerate((1, 3, 2))]

    async def scenario() -> list[Any]:
        for _ in feeds:  # all three past the gate: none of them is alone in the lane
            await lane.admit()
        return list(await asyncio.gather(*(submit(lane, feed) for feed in feeds)))

    done = asyncio.run(scenario())
    lane.close()
    assert runs == [(6, threading.main_thread().name)]
    for feed, result in zip(feeds, done, strict=True):
        assert np.array_equal(result.result["logits"], runtime.predict(feed)["logits"])


def test_a_tiny_request_alone_in_its_lane_runs_at_once(
    runtime: ModelRuntime, row_cost: Any
) -> None:
    row_cost(INLINE_SECONDS / 8)
    lane = make_lane(runtime, CoreSlots(1))

    async def scenario() -> bool:
        await lane.admit()
        request = submit(lane, digits(1, 0))
        await asyncio.sleep(0)  # one step of the request: no second loop turn
        return request.done()

    assert asyncio.run(scenario())
    lane.close()


def test_a_tiny_request_waits_one_loop_turn_for_requests_on_their_way(
    runtime: ModelRuntime, row_cost: Any
) -> None:
    """uvicorn has started another request's task (service.arrivals): batch with it."""
    row_cost(INLINE_SECONDS / 8)
    lane = make_lane(runtime, CoreSlots(1))

    async def scenario() -> tuple[bool, bool]:
        await lane.admit()
        ARRIVALS.started()
        try:
            request = submit(lane, digits(1, 0))
            await asyncio.sleep(0)
            after_one_step = request.done()
            await request
            return after_one_step, request.done()
        finally:
            ARRIVALS.entered()
            ARRIVALS.left()

    assert asyncio.run(scenario()) == (False, True)
    lane.close()


def test_tiny_rows_go_to_the_worker_when_no_core_slot_is_free(
    runtime: ModelRuntime, row_cost: Any
) -> None:
    row_cost(INLINE_SECONDS / 2)
    slots = CoreSlots(1)
    threads: list[str] = []
    lane = make_lane(
        runtime, slots, observe=lambda rows: threads.append(threading.current_thread().name)
    )

    async def scenario() -> Any:
        slots.acquire(ANOTHER_LANE)  # another lane's run holds the only core
        request = submit(lane, digits(1, 0))
        for _ in range(3):  # the request reaches the lane, then its loop turn ends
            await asyncio.sleep(0)
        assert not request.done()
        slots.release(ANOTHER_LANE)
        return await request

    done = asyncio.run(scenario())
    lane.close()
    assert threads == ["lane-digits/int8-0"]
    assert done.result["logits"].shape == (1, 10)


def test_unbatched_lane_runs_one_request_per_run(runtime: ModelRuntime) -> None:
    slots = CoreSlots(1)
    batches: list[int] = []
    lane = make_lane(runtime, slots, batch_rows=1, observe=batches.append)

    async def scenario() -> None:
        await asyncio.gather(*(submit(lane, digits(2, s)) for s in range(4)))

    asyncio.run(scenario())
    lane.close()
    assert batches == [2, 2, 2, 2]


def test_a_parked_request_whose_client_left_gets_no_place(runtime: ModelRuntime) -> None:
    lane = make_lane(runtime, CoreSlots(1))

    async def scenario() -> None:
        for _ in range(lane.capacity):
            await lane.admit()
        left = Connection()
        first = asyncio.ensure_future(lane.admit(left))
        second = asyncio.ensure_future(lane.admit(Connection()))
        await asyncio.sleep(0)
        assert lane.parked == 2
        left.disconnected = True
        lane.release()  # a place frees for the oldest parked request, whose client has left
        with pytest.raises(ClientGone):
            await first
        await second  # so the place went on to the next one
        assert lane.parked == 0

    asyncio.run(scenario())
    lane.close()


def test_a_queued_request_whose_client_left_is_not_run(
    runtime: ModelRuntime, row_cost: Any
) -> None:
    row_cost(0.001)  # over INLINE_SECONDS: the lane's worker runs them
    slots = CoreSlots(1)
    runs: list[int] = []
    lane = make_lane(runtime, slots, observe=runs.append)

    async def scenario() -> Any:
        slots.acquire(ANOTHER_LANE)  # the worker takes the first request, then waits for the core
        left = Connection()
        gone = asyncio.ensure_future(lane.submit(digits(2, 0), None, 2, time.perf_counter(), left))
        await asyncio.sleep(0)
        await wait_until_taken(lane)
        stays = submit(lane, digits(3, 1))
        await asyncio.sleep(0)
        left.disconnected = True
        slots.release(ANOTHER_LANE)
        with pytest.raises(ClientGone):
            await gone
        return await stays

    done = asyncio.run(scenario())
    lane.close()
    assert runs == [3]  # only the request whose client stayed was run
    assert done.result["logits"].shape == (3, 10)


# --- over HTTP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tight_server(
    model_repository: Path, servers: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A server whose lanes park one request and refuse the rest at once."""
    server = servers.start_server(
        model_repository,
        tmp_path_factory.mktemp("tight") / "server.log",
        EDGE_MAX_QUEUE="1",
        EDGE_MAX_CONCURRENCY="1",
        EDGE_BATCHING="off",
    )
    yield server
    servers.stop_server(server)


def test_overload_answers_only_200_or_503_with_retry_after(tight_server: Any) -> None:
    """Many clients at once on a tight gate: each answer is a result or a 503 with Retry-After."""
    x = np.zeros((64, 1, 8, 8), np.float32).tobytes()
    header = (
        b'{"inputs":[{"name":"input","shape":[64,1,8,8],"datatype":"FP32",'
        b'"parameters":{"binary_data_size":16384}}]}'
    )
    url = f"{tight_server.url}/v2/models/digits/versions/fp32/infer"

    def client(_: int) -> list[httpx.Response]:
        with httpx.Client(timeout=30) as http:
            return [
                http.post(url, content=header + x, headers={HEADER: str(len(header))})
                for _ in range(10)
            ]

    with ThreadPoolExecutor(16) as pool:
        answers = [r for batch in pool.map(client, range(16)) for r in batch]
        live = httpx.get(f"{tight_server.url}/v2/health/live", timeout=5)
    assert live.status_code == 200
    assert {r.status_code for r in answers} <= {200, 503}
    for response in answers:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert list(response.json()) == ["error"]
    metrics = httpx.get(f"{tight_server.url}/metrics").text
    assert 'edge_inference_batch_size_count{model="digits",version="fp32"}' in metrics


def test_requests_of_clients_that_hung_up_are_not_run(
    model_repository: Path, servers: ModuleType, tmp_path: Path
) -> None:
    """60 requests of 64 rows on one worker; 50 clients hang up at once, the first 10 wait.

    The server reads every body long before the one worker gets through them, so most of the
    50 are still waiting when their connection closes: those are counted 499 and never run.
    """
    with one_patient_worker(servers, model_repository, tmp_path / "server.log") as server:
        x = np.zeros((64, 1, 8, 8), np.float32).tobytes()
        header = (
            b'{"inputs":[{"name":"input","shape":[64,1,8,8],"datatype":"FP32",'
            b'"parameters":{"binary_data_size":16384}}]}'
        )
        request = httpx.Request(
            "POST",
            f"{server.url}/v2/models/digits/versions/fp32/infer",
            content=header + x,
            headers={HEADER: str(len(header))},
        )
        counts = send_then_hang_up(server.url, request, "digits", "fp32", sent=60, kept=10)
        assert counts["200"] + counts["499"] == 60  # every request accounted for


@contextmanager
def one_patient_worker(servers: ModuleType, repository: Path, log: Path) -> Iterator[Any]:
    """A real server with one worker per lane, no batching, and a 60 s queue deadline.

    Requests queue behind each other for long enough that their clients can leave first.
    """
    server = servers.start_server(
        repository,
        log,
        EDGE_MAX_CONCURRENCY="1",
        EDGE_BATCHING="off",
        EDGE_QUEUE_DEADLINE_MS="60000",
    )
    try:
        yield server
    finally:
        servers.stop_server(server)


def send_then_hang_up(
    url: str, request: httpx.Request, model: str, version: str, sent: int, kept: int
) -> dict[str, float]:
    """Send `request` on `sent` raw connections, close all but `kept` at once, read those.

    Asserts what holds for any endpoint: the kept clients get 200, some hung-up requests are
    counted 499, and the variant ran exactly the requests it answered 200. Returns the counts.
    """
    host, port = url.removeprefix("http://").split(":")
    head = f"{request.method} {request.url.raw_path.decode()} HTTP/1.1\r\n"
    for name, value in request.headers.items():
        head += f"{name}: {value}\r\n"
    raw = (head + "\r\n").encode() + request.read()
    clients = [socket.create_connection((host, int(port)), timeout=30) for _ in range(sent)]
    for client in clients:
        client.sendall(raw)
    for client in clients[kept:]:
        client.close()
    for client in clients[:kept]:
        with client:
            assert client.recv(12) == b"HTTP/1.1 200"
    for _ in range(100):  # until every request is accounted for
        counts = variant_counts(url, model, version)
        if counts["200"] + counts["499"] == sent:
            break
        time.sleep(0.1)
    assert counts["200"] >= kept
    assert counts["499"] >= 1
    assert counts["runs"] == counts["200"]
    return counts


def variant_counts(url: str, model: str, version: str) -> dict[str, float]:
    """A variant's requests by status, and its session runs, from /metrics."""
    counts = {"runs": 0.0, "200": 0.0, "499": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.labels.get("model") != model or sample.labels.get("version") != version:
                continue
            if sample.name == "edge_requests_total":
                counts[sample.labels["status"]] = sample.value
            elif sample.name == "edge_inference_batch_size_count":
                counts["runs"] = sample.value
    return counts
