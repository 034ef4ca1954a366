"""One runtime: one ONNX Runtime session for one (model, variant), with its load lifecycle."""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from service.errors import BadRequest, InferenceFailed, NotReady
from service.manifest import TensorSpec, file_sha256
from service.memory import heap_bytes, rss_bytes
from service.sessions import open_session, run_options
from service.specs import SharedDims, shared_dims, spec_mismatches

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]


# What session.run raises for inputs it cannot take (wrong shapes or types, out-of-range
# indices such as token ids past the vocabulary): the client's fault, a 400. Anything else
# (a kernel failing on an input the spec accepts, memory, a broken file) is the server's: 500.
_ORT_INPUT_ERRORS = (ort_errors.InvalidArgument,)


class State(StrEnum):
    """A variant's life: registered, loading, then ready or failed (what /v2/models says)."""

    REGISTERED = "registered"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class LoadFacts:
    """What loading measured: durations and the memory this variant added to the process."""

    load_seconds: float = 0.0
    warmup_seconds: float = 0.0
    memory_loaded_bytes: int = 0
    memory_warm_bytes: int = 0
    heap_loaded_bytes: int | None = None
    heap_warm_bytes: int | None = None
    row_seconds: float = 0.0
    """Compute time of one row at batch 1, after warm-up (seeds the queue's wait estimate)."""
    batch_speedup: float | None = None
    """Cost of a row alone / a row in a batch (service.onbox.measure); None: not probed."""


@dataclass
class Stats:
    """Cumulative counts for Triton's statistics extension."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    inference_count: int = 0
    last_inference_ms: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class ModelRuntime:
    """load() verifies the file and opens the session; predict() runs it (off the event loop)."""

    def __init__(
        self,
        model: str,
        variant: str,
        path: Path,
        sha256: str,
        threads: int,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
    ) -> None:
        self.model = model
        self.variant = variant
        self.path = path
        self.sha256 = sha256
        self.threads = threads
        self.inputs = inputs
        self.outputs = outputs
        self.state = State.REGISTERED
        self.error: str | None = None
        self.facts = LoadFacts()
        self.stats = Stats()
        self._session: ort.InferenceSession | None = None
        self._output_names: list[str] = []
        self._run_options = run_options()
        self.shared_dims: SharedDims = {}

    @property
    def name(self) -> str:
        """`model/variant`, as logs and the bench name a variant."""
        return f"{self.model}/{self.variant}"

    @property
    def label(self) -> str:
        """How client-facing messages name this variant: model '<model>' version '<variant>'."""
        return f"model '{self.model}' version '{self.variant}'"

    @property
    def ready(self) -> bool:
        """Loaded and warmed up: requests may run on it."""
        return self.state is State.READY

    def load(self, warmup_feed: Feed, warmup_runs: int) -> None:
        """Verify sha256, open the session, warm it up with a real sample; never raises."""
        self.state = State.LOADING
        # Clients see a short, path-free reason per stage; the log keeps ORT's full text.
        file = f"{self.path.parent.name}/{self.path.name}"
        reason = f"{file} is missing or unreadable"
        try:
            before, heap_before = rss_bytes(), heap_bytes()
            started = time.perf_counter()
            digest = file_sha256(self.path)
            if digest != self.sha256:
                reason = f"sha256 mismatch for {file}: not the file the build wrote"
                raise ValueError(f"sha256 mismatch for {self.path}: manifest {self.sha256[:12]}…")
            reason = f"ONNX Runtime could not open {file} (details in the server log)"
            self._session = open_session(self.path, self.threads)
            if mismatches := spec_mismatches(self._session, self.inputs, self.outputs):
                reason = f"model.json does not match {file}: {'; '.join(mismatches)}"
                raise ValueError(reason)
            reason = f"warm-up run of {file} failed (details in the server log)"
            self.facts.load_seconds = time.perf_counter() - started
            self.facts.memory_loaded_bytes = max(rss_bytes() - before, 0)
            self.facts.heap_loaded_bytes = _growth(heap_before, heap_bytes())
            self._output_names = [out.name for out in self._session.get_outputs()]
            self.shared_dims = shared_dims(self._session)
            started = time.perf_counter()
            for _ in range(warmup_runs):
                self._session.run(None, warmup_feed)
            self.facts.warmup_seconds = time.perf_counter() - started
            self.facts.memory_warm_bytes = max(rss_bytes() - before, 0)
            self.facts.heap_warm_bytes = _growth(heap_before, heap_bytes())
        except Exception as exc:  # a broken file must not take the other variants down
            self.state, self.error, self._session = State.FAILED, reason, None
            log.error("failed to load %s: %s", self.name, exc)
            return
        self.state = State.READY
        log.info(
            "loaded %s in %.2f s (warm-up %.2f s, +%.1f MB RSS)",
            self.name,
            self.facts.load_seconds,
            self.facts.warmup_seconds,
            self.facts.memory_warm_bytes / 1e6,
        )

    def predict(self, feed: Feed, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the session; ORT's complaints about the input values become 400s."""
        session = self._session
        if session is None or not self.ready:
            raise NotReady(f"{self.label} is not ready")
        names = outputs or self._output_names
        try:
            results = session.run(names, feed, self._run_options)
        except _ORT_INPUT_ERRORS as exc:
            log.info("%s rejected an input: %s", self.name, exc)
            raise BadRequest(
                f"{self.label} could not run on this input: {_client_reason(exc)}"
            ) from None
        except (ort_errors.Fail, ort_errors.RuntimeException, ort_errors.EPFail) as exc:
            log.error("%s failed on an input its spec accepts: %s", self.name, exc)
            raise InferenceFailed(
                f"{self.label} failed to run (details in the server log)"
            ) from None
        return dict(zip(names, results, strict=True))

    @property
    def batch_axis_dynamic(self) -> bool:
        """Every input and output takes any number of rows: requests can be stacked."""
        return all(spec.shape[:1] == [-1] for spec in (*self.inputs, *self.outputs))

    def record(self, ok: bool, queue_ns: int, compute_ns: int, total_ns: int, batch: int) -> None:
        """Add one request to the statistics."""
        with self.stats.lock:
            stats = self.stats
            if ok:
                stats.success_count += 1
                stats.success_ns += total_ns
                stats.queue_ns += queue_ns
                stats.compute_ns += compute_ns
                stats.inference_count += batch
            else:
                stats.fail_count += 1
                stats.fail_ns += total_ns
            stats.last_inference_ms = int(time.time() * 1000)


def _growth(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else max(after - before, 0)


def _client_reason(exc: Exception) -> str:
    """ORT's complaint about the input's names, shapes or types; nothing from inside the graph."""
    # ORT prefixes messages with "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ".
    text = " ".join(str(exc).split()).rsplit(" : ", 1)[-1]
    text = text.split(" Please fix", 1)[0]
    return _PATH.sub("…", text)[:300] or "invalid input"


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.+-]+){2,}")
