"""The in-process ONNX Runtime floor: session.run alone, with the service's session options.

Run pinned to the server's core: `python -m bench.floor MODEL_FILE SAMPLE.npz`; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from service.sessions import open_session


def measure(model_file: str, feed: dict[str, np.ndarray], seconds: float, threads: int) -> dict:
    """p50/p90 of session.run after a warm-up, and the runs one core does per second."""
    session = open_session(model_file, threads)  # type: ignore[arg-type]
    for _ in range(5):
        session.run(None, feed)
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
        "per_second": 1.0 / p50,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.floor", description=__doc__)
    parser.add_argument("model_file")
    parser.add_argument("sample", help=".npz with the feed")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    with np.load(args.sample) as arrays:
        feed = {name: arrays[name] for name in arrays.files}
    json.dump(measure(args.model_file, feed, args.seconds, args.threads), sys.stdout)


if __name__ == "__main__":
    main()
