"""Locust load test of the edge inference service with the repository's real samples.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

Environment: LOADTEST_REPOSITORY (default ./models), LOADTEST_MODELS and LOADTEST_VARIANTS
(comma-separated; default every model and variant in the repository). Each request is named
`<model>/<variant> <kind>` (kind: infer-binary, infer-json, or the model's task endpoint), so
Locust's statistics split by precision. A response with the wrong label is a failure.

LOADTEST_RAW, when set, is a file that gets every request's exact latency at test stop
(Locust's own statistics round to whole milliseconds; the runner's report needs finer).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, constant, events, task

try:
    from loadtests import workload
except ImportError:  # run from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from loadtests import workload

WORKLOADS = workload.from_env()
TARGETS = [(w, variant) for w in WORKLOADS for variant in w.variants]
TASK_TARGETS = [(w, variant) for w, variant in TARGETS if w.task_route]


def request_name(model: str, variant: str, kind: str) -> str:
    """The Locust stats name of one model x variant x kind."""
    return f"{model}/{variant} {kind}"


class EdgeUser(FastHttpUser):
    """A client with no think time: the next request goes as soon as the answer arrives."""

    wait_time = constant(0)

    def _send(self, target: tuple[workload.Workload, str], kind: str) -> None:
        load, variant = target
        sample = random.choice(load.samples)
        body = load.body(sample, kind)
        with self.client.post(
            load.url(variant, kind),
            data=body.data,  # type: ignore[arg-type]  # bytes work; the stub says str
            headers=body.headers,
            name=request_name(load.model, variant, kind),
            catch_response=True,
        ) as resp:
            problem = load.check(kind, sample, resp.status_code, resp.headers, resp.content or b"")
            if problem is None:
                resp.success()
            else:
                resp.failure(problem)

    @task(workload.WEIGHTS[workload.INFER_BINARY])
    def infer_binary(self) -> None:
        """v2 infer with the binary tensor extension: what a tritonclient program sends."""
        self._send(random.choice(TARGETS), workload.INFER_BINARY)

    @task(workload.WEIGHTS[workload.INFER_JSON])
    def infer_json(self) -> None:
        """v2 infer with JSON tensors: what curl users and simple clients send."""
        self._send(random.choice(TARGETS), workload.INFER_JSON)

    @task(workload.WEIGHTS[workload.TASK])
    def task_endpoint(self) -> None:
        """The model's task endpoint with the sample as uploaded file or sentence."""
        if not TASK_TARGETS:  # no model here has a task endpoint: keep the same request rate
            self.infer_binary()
            return
        load, variant = random.choice(TASK_TARGETS)
        self._send((load, variant), load.task_route or "")


class _Recorder:
    """Exact per-request latencies by request name, written to LOADTEST_RAW at test stop."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.failures: dict[str, int] = defaultdict(int)
        self.wrong: dict[str, int] = defaultdict(int)
        self.started = 0.0
        self.last = 0.0

    def start(self, **_: Any) -> None:
        self.times.clear()
        self.failures.clear()
        self.wrong.clear()
        self.started = self.last = time.time()

    def request(
        self, name: str, response_time: float, exception: BaseException | None, **_: Any
    ) -> None:
        self.times[name].append(round(response_time, 4))
        self.last = time.time()
        if exception is not None:
            self.failures[name] += 1
            if str(exception).startswith(workload.WRONG_ANSWER):
                self.wrong[name] += 1

    def stop(self, **_: Any) -> None:
        path = os.environ.get("LOADTEST_RAW")
        if not path:
            return
        record = {
            "started": self.started,
            "stopped": time.time(),
            "last_response": self.last,
            "requests": {
                name: {
                    "times_ms": times,
                    "failures": self.failures[name],
                    "wrong_answers": self.wrong[name],
                }
                for name, times in sorted(self.times.items())
            },
        }
        Path(path).write_text(json.dumps(record))


_recorder = _Recorder()
events.test_start.add_listener(_recorder.start)
events.request.add_listener(_recorder.request)
events.test_stop.add_listener(_recorder.stop)

# gevent's loop caches "now": after the seconds this import spent preparing samples, a stale
# clock makes Locust's --run-time timer fire at once (a 3 s run lasted 0.05 s). Refresh it.
gevent.get_hub().loop.update_now()
