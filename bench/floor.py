"""The in-process ONNX Runtime floor: session.run alone, with the service's session options.

Run pinned to the server's core: `python -m bench.floor MODEL_FILE SAMPLE.npz` prints one JSON
line per line of input ("SECONDS" or "SECONDS ROWS": the sample stacked ROWS times), so the
bench can interleave floor measurements with its load runs on one warm session.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.sessions import open_session


def measure(session: Any, feed: dict[str, np.ndarray], seconds: float) -> dict[str, float]:
    """p50/p90 of session.run, and the rows one core runs per second."""
    rows = next(iter(feed.values())).shape[0]
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 20:
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    times.sort()
    p50 = statistics.median(times)
    return {
        "runs": len(times),
        "p50_ms": p50 * 1000,
        "p90_ms": times[int(len(times) * 0.9)] * 1000,
        "rows": rows,
        "per_second": rows / p50,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.floor", description=__doc__)
    parser.add_argument("model_file")
    parser.add_argument("sample", help=".npz with the feed")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    with np.load(args.sample) as arrays:
        feed = {name: arrays[name] for name in arrays.files}
    session = open_session(Path(args.model_file), args.threads)
    for _ in range(5):
        session.run(None, feed)
    stacked: dict[int, dict[str, np.ndarray]] = {1: feed}
    for line in sys.stdin:
        seconds, _, rows_text = line.strip().partition(" ")
        rows = int(rows_text or 1)
        if rows not in stacked:
            stacked[rows] = {name: np.repeat(a, rows, axis=0) for name, a in feed.items()}
            for _ in range(5):
                session.run(None, stacked[rows])
        print(json.dumps(measure(session, stacked[rows], float(seconds))), flush=True)


if __name__ == "__main__":
    main()
