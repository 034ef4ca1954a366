"""The bench's Markdown report and its goal checks, from the JSON a run writes."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from bench.run import (
    MINIMAL,
    MLSERVER,
    RATIO_FLOOR_MS,
    SERVICE_BINARY,
    SERVICE_JSON,
    UNBATCHED,
    high_concurrency,
)

MB = 1e6


def _cell(results: dict[str, Any], variant: str, config: str, c: int) -> dict[str, Any] | None:
    for cell in results["cells"]:
        if (cell["variant"], cell["config"], cell["concurrency"]) == (variant, config, c):
            found: dict[str, Any] = cell
            return found
    return None


def _rate(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "—"
    return f"{cell['ok_per_second']:.0f} ±{cell['ok_per_second_spread'] * 100:.0f}%"


def _p50(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "—"
    return f"{cell['p50_ms']:.2f} ms ±{cell['p50_ms_spread'] * 100:.0f}%"


def _failed(cell: dict[str, Any] | None) -> str:
    """Non-200 answers and socket errors, where there were any."""
    if cell is None:
        return ""
    bad = {k: v for k, v in cell["statuses"].items() if k != "200"}
    parts = [f"{v}x{k}" for k, v in sorted(bad.items())]
    if cell["errors"]:
        parts.append(f"{cell['errors']} socket errors")
    return f" ({', '.join(parts)})" if parts else ""


def headline_table(results: dict[str, Any], c_high: int) -> list[str]:
    """The issue's table: floor, service binary/JSON, the minimal endpoint; medians ± spread.

    MLServer's column is there where the run benched it (it is optional: bench/mlserver.py).
    """
    with_mlserver = any(cell["config"] == MLSERVER for cell in results["cells"])
    lines = [
        f"| model/variant | raw ORT p50 | service binary c=1 p50 · c={c_high} req/s "
        f"| service JSON c={c_high} req/s | minimal c=1 p50 · c={c_high} req/s "
        f"| binary/minimal c={c_high} |"
        + (f" MLServer c=1 p50 · c={c_high} req/s |" if with_mlserver else ""),
        "|---|---|---|---|---|---|" + ("---|" if with_mlserver else ""),
    ]
    for variant, floor in results["floors"].items():
        binary_1 = _cell(results, variant, SERVICE_BINARY, 1)
        binary_n = _cell(results, variant, SERVICE_BINARY, c_high)
        json_n = _cell(results, variant, SERVICE_JSON, c_high)
        min_1 = _cell(results, variant, MINIMAL, 1)
        min_n = _cell(results, variant, MINIMAL, c_high)
        ratio = (
            f"{binary_n['ok_per_second'] / min_n['ok_per_second']:.2f}x"
            if binary_n and min_n and min_n["ok_per_second"]
            else "—"
        )
        lines.append(
            f"| {variant} | {floor['p50_ms']:.3f} ms ±{floor['p50_ms_spread'] * 100:.0f}% "
            f"| {_p50(binary_1)} · {_rate(binary_n)}"
            f"{_failed(binary_n)} | {_rate(json_n)}{_failed(json_n)} | {_p50(min_1)} · "
            f"{_rate(min_n)}{_failed(min_n)} | {ratio} |"
        )
        if with_mlserver:
            ml_1 = _cell(results, variant, MLSERVER, 1)
            ml_n = _cell(results, variant, MLSERVER, c_high)
            lines[-1] += f" {_p50(ml_1)} · {_rate(ml_n)}{_failed(ml_n)} |"
    return lines


def grid_table(results: dict[str, Any]) -> list[str]:
    """Every cell: 200s per second (p50) by configuration and concurrency."""
    levels = results["meta"]["concurrency"]
    lines = [
        "| model/variant | configuration | "
        + " | ".join(f"c={c} req/s (p50)" for c in levels)
        + " |",
        "|---|---|" + "---|" * len(levels),
    ]
    for variant in results["floors"]:
        for config in (SERVICE_BINARY, SERVICE_JSON, MINIMAL, UNBATCHED, MLSERVER):
            cells = [_cell(results, variant, config, c) for c in levels]
            if not any(cells):
                continue
            row = " | ".join(
                "—" if cell is None else f"{_rate(cell)} ({cell['p50_ms']:.2f} ms){_failed(cell)}"
                for cell in cells
            )
            lines.append(f"| {variant} | {config} | {row} |")
    return lines


def memory_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| model/variant | service RSS at rest → peak → 2 s after (MB) "
        "| minimal RSS at rest → peak → after (MB) |",
        "|---|---|---|",
    ]
    for variant, m in results["memory"].items():
        lines.append(
            f"| {variant} | {m['service_rest'] / MB:.0f} → {m['service_peak'] / MB:.0f} → "
            f"{m['service_after'] / MB:.0f} | {m['minimal_rest'] / MB:.0f} → "
            f"{m['minimal_peak'] / MB:.0f} → {m['minimal_after'] / MB:.0f} |"
        )
    return lines


Check = Callable[[float | None], bool | None]
"""A goal's rule: met, not met, or None where nothing was measured."""


def at_least(bound: float) -> Check:
    return lambda value: None if value is None or math.isnan(value) else value >= bound


def at_most(bound: float) -> Check:
    return lambda value: None if value is None or math.isnan(value) else value <= bound


def not_a_goal(value: float | None) -> None:
    """The rule of a figure shown beside the goals but not one of them: never met or missed."""
    return None


def _round_value(run: dict[str, Any], key: str) -> float | None:
    """One round's figure of a cell: 200s per second, or its p50."""
    if key == "ok_per_second":
        return run["ok"] / run["seconds"] if run["seconds"] else None
    value: float | None = run.get(key)
    return value


def paired(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> list[float]:
    """a / b round by round, for two cells run in the same rounds (configurations interleaved).

    A median ratio near its target says little on its own: the rounds show whether the target
    is met in most of them or only by the median's luck.
    """
    if a is None or b is None:
        return []
    out = []
    for mine, theirs in zip(a["rounds"], b["rounds"], strict=False):
        top, bottom = _round_value(mine, key), _round_value(theirs, key)
        if top is not None and bottom:
            out.append(top / bottom)
    return out


def against_floor(cell: dict[str, Any] | None, floor: dict[str, Any], c: int) -> list[float]:
    """A cell's rate over the floor's, round by round: each round measured its floor first."""
    if cell is None:
        return []
    at_c = [run for run in floor["rounds"] if run.get("connections") == c]
    out = []
    for mine, theirs in zip(cell["rounds"], at_c, strict=False):
        rate = _round_value(mine, "ok_per_second")
        if rate is not None and theirs["p50_ms"]:
            out.append(rate * theirs["p50_ms"] / 1000)
    return out


def goals(results: dict[str, Any], c_high: int) -> list[dict[str, Any]]:
    """Each goal of issue 10 with its measured value, whether this run met it, and by round."""
    out: list[dict[str, Any]] = []

    def add(
        goal: str,
        value: float | None,
        target: str,
        check: Check,
        rounds: Sequence[float] = (),
    ) -> None:
        """`rounds`: the paired ratios where the goal compares two cells of the same rounds."""
        out.append(
            {"goal": goal, "value": value, "target": target, "met": check(value),
             "rounds": list(rounds), "rounds_met": sum(bool(check(r)) for r in rounds)}
        )  # fmt: skip

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> float | None:
        if a is None or b is None or not b[key]:
            return None
        value: float = a[key] / b[key]
        return value

    def against_minimal(
        goal: str, variant: str, config: str, c: int, key: str, target: str, check: Check
    ) -> None:
        """A goal on the service's cell over the minimal endpoint's, from the same rounds."""
        mine, theirs = _cell(results, variant, config, c), _cell(results, variant, MINIMAL, c)
        add(goal, ratio(mine, theirs, key), target, check, paired(mine, theirs, key))

    def kept(variant: str, reference: str, c: int, raw: float) -> float | None:
        """The service's throughput ratio of two variants at c clients, over their raw ratio."""
        served = ratio(
            _cell(results, variant, SERVICE_BINARY, c),
            _cell(results, reference, SERVICE_BINARY, c),
            "ok_per_second",
        )
        return served / raw if served is not None and raw else None

    floors = results["floors"]
    if "digits/int8" in floors:
        against_minimal(
            f"digits/int8 binary c={c_high} req/s / minimal",
            "digits/int8",
            SERVICE_BINARY,
            c_high,
            "ok_per_second",
            ">= 1.3",
            at_least(1.3),
        )
        against_minimal(
            "digits/int8 binary c=1 p50 / minimal p50",
            "digits/int8",
            SERVICE_BINARY,
            1,
            "p50_ms",
            "<= 1.0",
            at_most(1.0),
        )
    if "minilm/int8-dynamic" in floors:
        against_minimal(
            f"minilm/int8-dynamic binary c={c_high} req/s / minimal",
            "minilm/int8-dynamic",
            SERVICE_BINARY,
            c_high,
            "ok_per_second",
            ">= 1.3",
            at_least(1.3),
        )
    if "ocr/int8" in floors:
        against_minimal(
            f"ocr/int8 JSON c={c_high} req/s / minimal",
            "ocr/int8",
            SERVICE_JSON,
            c_high,
            "ok_per_second",
            ">= 1.0",
            at_least(1.0),
        )
        binary = _cell(results, "ocr/int8", SERVICE_BINARY, c_high)
        floor = floors["ocr/int8"]
        r = binary["ok_per_second"] / floor["per_second"] if binary else None
        add(
            f"ocr/int8 binary c={c_high} req/s / one-core floor",
            r,
            ">= 0.9",
            at_least(0.9),
            against_floor(binary, floor, c_high),
        )
    for variant, floor in floors.items():
        model, name = variant.split("/")
        reference = f"{model}/fp32"
        if not name.startswith("int8") or reference not in floors:
            continue
        if floors[reference]["p50_ms"] < RATIO_FLOOR_MS:
            continue
        fp32 = floors[reference]
        # Like for like: the raw ratio at the batches the service ran under this load (a
        # batching server runs FP32 and INT8 at batches where INT8 gains less than at batch 1),
        # from the two floors measured side by side where the run paired them.
        here, there = floor["served_batch"], fp32["served_batch"]
        rows, reference_rows = here["rows"], there["rows"]
        raw, how = here["per_second"] / there["per_second"], ""
        by_round: list[float] = []
        if "paired" in floor:
            pair = floor["paired"]
            rows, reference_rows, raw = pair["rows"], pair["reference_rows"], pair["ratio"]
            how = f", floors paired in {len(pair['ratios'])} rounds"
            if pair.get("served"):
                # Served and raw ratios of the same rounds: each round's served over its raw.
                by_round = [s / r for s, r in zip(pair["served"], pair["ratios"], strict=True)]
                how = (
                    f"; served {statistics.median(pair['served']):.2f}x, floors and service "
                    f"paired in {len(by_round)} rounds"
                )
        add(
            f"{variant}/fp32 served c={c_high} throughput ratio / raw ratio at the batches "
            f"served ({rows:g} and {reference_rows:g} rows; {raw:.2f}x raw{how})",
            statistics.median(by_round) if by_round else kept(variant, reference, c_high, raw),
            ">= 0.8",
            at_least(0.8),
            by_round,
        )
        if here["rows"] == there["rows"] == 1:
            continue
        raw_1 = floor["per_second"] / fp32["per_second"]
        for c, why in ((c_high, "the service ran batches"), (1, "one client: no batches")):
            add(
                f"{variant}/fp32 served c={c} throughput ratio / raw ratio at batch 1 "
                f"({raw_1:.2f}x raw; {why})",
                kept(variant, reference, c, raw_1),
                "info",
                not_a_goal,
            )
    overload = results.get("overload")
    if overload:
        low, high = overload["results"]["2"], overload["results"]["64"]
        only = set(high["statuses"]) <= {"200", "503"} and not high["errors"]
        add(
            f"{overload['variant']} c=64: every answer 200 or 503",
            float(only),
            "yes",
            at_least(1.0),
        )
        r = high["p99_ms"] / low["p99_ms"] if low["p99_ms"] else None
        add(f"{overload['variant']} p99 of 200s c=64 / c=2", r, "<= 5", at_most(5.0))
        live = high["extra"]["live_max_ms"]
        add("liveness under c=64, slowest probe (ms)", live, "< 500", at_most(500.0))
    cold = results["cold_start_seconds"]
    add("cold start to ready, default models (s)", cold, "<= 3", at_most(3.0))
    return out


LONGER = " (slow cells longer, up to 8 s: ~8 answers per connection)"


def busy_after(results: dict[str, Any]) -> str:
    """How long each server kept its core after the load stopped (the next run waited)."""
    longest: dict[str, float] = {}
    for cell in results["cells"]:
        for run in cell["rounds"]:
            busy = run.get("extra", {}).get("busy_after_seconds")
            if busy is not None:
                longest[cell["config"]] = max(longest.get(cell["config"], 0.0), busy)
    if not longest:
        return ""  # a run from before the bench waited for idle servers
    parts = [f"{config} {seconds:.1f} s" for config, seconds in longest.items()]
    return (
        "Each run waited for its server to go idle before the next measurement on its core; "
        f"the longest a server stayed busy after its load stopped: {', '.join(parts)}."
    )


def markdown(results: dict[str, Any]) -> str:
    """The whole report."""
    meta = results["meta"]
    levels = meta["concurrency"]
    c_high = high_concurrency(levels)
    load = meta["load_average_before"], meta["load_average_after"]
    lines = [
        f"# Bench {meta['time']}{' (quick)' if meta['quick'] else ''}",
        "",
        f"{meta['cpu']}, {meta['cores']} cores; server on core {meta['server_core']}, load "
        f"generator (wrk, 1 thread) on core {meta['load_core']}. {meta['rounds']} rounds of "
        f"{meta['seconds_per_run']:g} s per cell{'' if meta['quick'] else LONGER}, "
        "configurations interleaved; each figure is "
        f"the median of the rounds ± their spread ((max - min) / median). Rates count 200s only. "
        f"Load average {load[0][0]:.2f} before, {load[1][0]:.2f} after. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
        "",
        "## Headline",
        "",
        *headline_table(results, c_high),
        "",
        "## Every cell",
        "",
        *grid_table(results),
        "",
        "Dynamic batching (service): "
        + ", ".join(f"{v} {'on' if on else 'off'}" for v, on in results["batching"].items())
        + f". Rows per run of the service over binary at c={c_high} (median of the rounds; "
        "the floor was measured at it after each round's run): "
        + ", ".join(
            f"{c['variant']} {statistics.median(c['rows_per_run']):.1f}"
            for c in results["cells"]
            if c["config"] == SERVICE_BINARY and c.get("rows_per_run")
        )
        + ". Load generator CPU, most of any run: "
        + f"{max(c['generator_cpu_max'] for c in results['cells']) * 100:.0f}% of its core. "
        + busy_after(results),
        "",
        "## Memory",
        "",
        *memory_table(results),
        "",
    ]
    overload = results.get("overload")
    if overload:
        lines += [
            f"## Overload: {overload['variant']} binary, clients that never back off",
            "",
            "| clients | answers | 200/s | p50 / p99 of 200s | 503 p50 | slowest liveness probe |",
            "|---|---|---|---|---|---|",
        ]
        for clients, r in overload["results"].items():
            answers = ", ".join(f"{v}x{k}" for k, v in sorted(r["statuses"].items()))
            if r["errors"]:
                answers += f", {r['errors']} socket errors"
            lines.append(
                f"| {clients} | {answers} "
                f"| {r['ok'] / r['seconds']:.0f} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms "
                f"| {r['extra']['rejected_p50_ms']:.1f} ms | {r['extra']['live_max_ms']:.1f} ms |"
            )
        lines.append("")
    lines += [
        "## Goals (issue 10)",
        "",
        "Measured: the ratio of the cells' medians. Paired rounds: where a goal compares two "
        "cells of the same rounds, the ratio round by round (each round's two runs were "
        "next to each other; for the floor goal, the round's floor and the run after it) and "
        "in how many rounds the target was met.",
        "",
        "| goal | measured | target | met | paired rounds (met in) |",
        "|---|---|---|---|---|",
    ]
    for goal in goals(results, c_high):
        value = "—" if goal["value"] is None else f"{goal['value']:.2f}"
        met = {True: "yes", False: "**no**", None: "—"}[goal["met"]]
        rounds = goal["rounds"]
        by_round = (
            f"{min(rounds):.2f}-{max(rounds):.2f} ({goal['rounds_met']} of {len(rounds)})"
            if rounds
            else "—"
        )
        lines.append(f"| {goal['goal']} | {value} | {goal['target']} | {met} | {by_round} |")
    runs = results.get("cold_start_runs") or [results["cold_start_seconds"]]
    lines.append(
        f"\nCold start to ready: {results['cold_start_seconds']:.2f} s (median of "
        f"{' / '.join(f'{s:.2f}' for s in runs)} s)."
    )
    return "\n".join(lines) + "\n"
