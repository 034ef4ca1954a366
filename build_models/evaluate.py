"""Evaluation helpers: run a variant over held-out feeds, time variants, count graph ops."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from build_models.calibration import Feed

COUNTED_OPS = (
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
)


def first_output(session: ort.InferenceSession, feeds: Sequence[Feed]) -> np.ndarray:
    """The first output over all feeds, concatenated along the batch axis."""
    name = session.get_outputs()[0].name
    return np.concatenate([session.run([name], feed)[0] for feed in feeds], axis=0)


def interleaved_latency_ms(
    sessions: Mapping[str, ort.InferenceSession],
    feed: Feed,
    runs: int = 50,
    warmup: int = 5,
) -> dict[str, float]:
    """Median wall time per variant, runs interleaved so machine noise hits all alike."""
    for session in sessions.values():
        for _ in range(warmup):
            session.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(samples) * 1000.0) for name, samples in times.items()}


def op_counts(path: Path) -> dict[str, int]:
    """Quantization-relevant node counts of a model file, plus its total node count."""
    graph = onnx.load(str(path), load_external_data=False).graph
    counts = Counter(node.op_type for node in graph.node)
    return {"nodes": len(graph.node), **{op: counts.get(op, 0) for op in COUNTED_OPS}}
