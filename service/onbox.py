"""The variant chosen on the box: each variant timed here, the build's speed rule re-run.

The build picks a model's default variant by latency on the build machine (x86-64 with
VNNI, usually); an ARM gateway or an older Atom can rank the variants differently. After
warm-up each ready variant runs the model's own sample, interleaved round by round so
machine noise falls on every variant alike, within a time budget; the median is its
latency here. The same rounds give the scheduler its row costs and batch gains.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence

import numpy as np

from service.manifest import ModelManifest
from service.runtime import Feed, ModelRuntime

FP32 = "fp32"
TIE_MARGIN = 0.05
"""A variant must beat FP32 by more than this share to be the default: ties go to FP32."""
# Rounds of the interleaved timing: enough for a stable median, few enough for big models.
MIN_ROUNDS = 3
MAX_ROUNDS = 200
# The batch probe: rows stacked, and pairs timed (fastest of each). Not probed where a row of
# the model's fastest variant takes over PROBE_MAX_ROW_SECONDS: such models keep the cores busy
# alone, and the probe would cost the cold start more than it tells.
BATCH_PROBE = 4
PROBE_ROUNDS = 3
PROBE_MAX_ROW_SECONDS = 0.010


def measure(runtimes: Mapping[str, ModelRuntime], feed: Feed, budget: float) -> dict[str, float]:
    """Median batch-1 latency (ms) of each ready variant, interleaved, within budget seconds.

    One pass serves three needs, so loading times nothing twice (cold start): the medians pick
    the default here, the fastest run seeds each runtime's row cost (the queue's wait
    estimate), and where the batch axis is dynamic PROBE_ROUNDS pairs of a row alone and
    BATCH_PROBE stacked rows tell the scheduler whether a row costs less in a batch. At least
    MIN_ROUNDS run whatever the budget (0 included): the row cost is always needed.
    """
    ready = {name: rt for name, rt in runtimes.items() if rt.ready}
    if not ready:
        return {}
    rows = next(iter(feed.values())).shape[0] if feed else 1
    singles: dict[str, list[float]] = {name: [] for name in ready}
    deadline = time.perf_counter() + budget
    probed: dict[str, ModelRuntime] = {}
    for round_ in range(MAX_ROUNDS):
        for name, runtime in ready.items():
            singles[name].append(_timed(runtime, feed) / rows)
        if round_ == 0 and rows == 1:  # the probe comes out of the same budget
            # Per model, not per variant: all its variants are probed or none, so that a variant
            # near the limit (MiniLM FP32 at ~10 ms) is never served unbatched by a coin flip.
            if min(times[0] for times in singles.values()) <= PROBE_MAX_ROW_SECONDS:
                probed = {name: rt for name, rt in ready.items() if rt.batch_axis_dynamic}
            deadline -= PROBE_ROUNDS * (1 + BATCH_PROBE) * sum(singles[n][0] for n in probed)
        if round_ + 1 >= MIN_ROUNDS and time.perf_counter() > deadline:
            break
    for name, runtime in ready.items():
        runtime.facts.row_seconds = min(singles[name])
    if probed:
        stacked = {name: np.repeat(array, BATCH_PROBE, axis=0) for name, array in feed.items()}
        alone = dict.fromkeys(probed, math.inf)
        batched = dict.fromkeys(probed, math.inf)
        for _ in range(PROBE_ROUNDS):  # pairs back to back: noise falls on both alike
            for name, runtime in probed.items():
                alone[name] = min(alone[name], _timed(runtime, feed))
                batched[name] = min(batched[name], _timed(runtime, stacked))
        for name, runtime in probed.items():
            runtime.facts.batch_speedup = alone[name] * BATCH_PROBE / max(batched[name], 1e-9)
    return {name: statistics.median(times) * rows * 1000 for name, times in singles.items()}


def _timed(runtime: ModelRuntime, feed: Feed) -> float:
    started = time.perf_counter()
    runtime.predict(feed)
    return time.perf_counter() - started


def choose_default(
    manifest: ModelManifest,
    runtimes: Mapping[str, ModelRuntime],
    onbox_ms: Mapping[str, float],
    override: str | None,
) -> tuple[str, str]:
    """The variant serving unversioned requests here, and one sentence on why."""
    if override is not None and override in runtimes:
        return override, f"{override} is the default: EDGE_DEFAULT_VARIANT says so."
    build = manifest.default_variant
    passing = [
        name
        for name, ms in onbox_ms.items()
        if name in manifest.variants and manifest.variants[name].passed and math.isfinite(ms)
    ]
    if not passing:
        fallback = build if build in runtimes else next(iter(runtimes))
        ready = [name for name, rt in runtimes.items() if rt.ready]
        if not runtimes[fallback].ready and ready:
            fallback = ready[0]
        why = manifest.default_reason or "the build's choice"
        return fallback, f"{fallback} is the default: not timed on this box; build: {why}"
    if FP32 not in passing:  # no reference here (fp32 not loaded): simply the fastest
        winner = min(passing, key=lambda name: onbox_ms[name])
        return winner, (
            f"{winner} is the default: the fastest here of the variants that passed their "
            f"accuracy budget ({_figures(passing, onbox_ms)}, batch 1; "
            f"build machine chose {build})."
        )
    fp32 = onbox_ms[FP32]
    winner = fastest_passing(onbox_ms, passing)
    if winner == FP32:
        others = [n for n in passing if n != FP32]
        if not others:
            return winner, (
                f"fp32 is the default: no other variant passed and loaded here (build: {build})."
            )
        return winner, (
            f"fp32 is the default: no variant that passed its accuracy budget was over "
            f"{TIE_MARGIN:.0%} faster on this box ({_figures(passing, onbox_ms)}, batch 1; "
            f"build machine chose {build})."
        )
    return winner, (
        f"{winner} is the default: it passed its accuracy budget and ran "
        f"{fp32 / onbox_ms[winner]:.2f}x faster than fp32 on this box "
        f"({onbox_ms[winner]:.3f} vs {fp32:.3f} ms, batch 1; build machine chose {build})."
    )


def fastest_passing(latency_ms: Mapping[str, float], passing: Sequence[str]) -> str:
    """The speed rule, one for the build and the box: the fastest variant that passed.

    Beating FP32 takes more than TIE_MARGIN; latency_ms must include FP32.
    """
    fp32 = latency_ms[FP32]
    faster = [n for n in passing if n == FP32 or latency_ms[n] < fp32 * (1 - TIE_MARGIN)]
    return min(faster, key=lambda name: latency_ms[name])


def _figures(names: list[str], onbox_ms: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {onbox_ms[name]:.3f} ms" for name in sorted(names))
