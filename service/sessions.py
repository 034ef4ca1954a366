"""ONNX Runtime session construction: one place decides threads and graph optimisation."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Options measured best here: full optimisation (QDQ fusion needs it), no spinning."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning threads on 2 shared cores made 2 threads ~2x slower than 1.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU inference session on one model file."""
    return ort.InferenceSession(
        str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
    )


def run_options() -> ort.RunOptions:
    """Give the CPU arena's spare chunks back after each run, so RSS falls after a burst.

    Measured (bench/README.md): PP-OCR rec INT8 after a burst of batch-16 runs kept 230 MB with
    the default arena, 179 MB without an arena (glibc keeps freed heap), 131 MB with this,
    against 111 MB at rest; batch-1 latency unchanged within noise on all three models.
    """
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options
