"""`make bench`'s code path on digits for about a second, and its goal logic (no timing)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.__main__ import main as bench_main
from bench.load import wrk_path
from bench.mlserver import mlserver_path, start_mlserver
from bench.payloads import json_payload, sample_feed
from bench.profile import summarise
from bench.report import against_floor, at_least, goals, headline_table, paired
from bench.run import (
    MINIMAL,
    MLSERVER,
    SERVICE_BINARY,
    Floor,
    Plan,
    _pair_with_fp32,
    paired_floors,
)
from loadtests.process import ServiceProcess, stop_service
from service.manifest import ModelManifest
from service.sessions import open_session


@pytest.mark.skipif(wrk_path() is None, reason="wrk is not installed (apt-get install wrk)")
def test_bench_runs_on_digits_and_writes_its_report(
    model_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Floor, service (binary, JSON), minimal endpoint, batching-off column, overload, goals."""
    monkeypatch.setenv("BENCH_QUICK", "1")
    monkeypatch.setenv("BENCH_VARIANTS", "digits/int8")
    monkeypatch.setenv("BENCH_ROUNDS", "1")
    monkeypatch.setenv("BENCH_SECONDS", "1")
    monkeypatch.setenv("BENCH_MLSERVER", "off")  # its own test below; it is optional
    out = tmp_path / "results"
    assert bench_main(["--repository", str(model_repository), "--out", str(out)]) == 0
    (written,) = out.glob("*.json")
    results = json.loads(written.read_text())
    configs = {(c["config"], c["concurrency"]) for c in results["cells"]}
    assert {("service binary", 1), ("service JSON", 16), ("minimal JSON", 16)} <= configs
    for cell in results["cells"]:
        assert cell["statuses"].get("200", 0) > 0, cell
        assert set(cell["statuses"]) <= {"200", "503"}, cell
    assert results["floors"]["digits/int8"]["per_second"] > 0
    (binary_16,) = (
        c for c in results["cells"] if (c["config"], c["concurrency"]) == ("service binary", 16)
    )
    assert len(binary_16["rows_per_run"]) == 1 and binary_16["rows_per_run"][0] >= 1
    assert results["floors"]["digits/int8"]["served_batch"]["per_second"] > 0
    floor_rounds = results["floors"]["digits/int8"]["rounds"]
    assert {16, 1} <= {run.get("connections") for run in floor_rounds}
    assert results["memory"]["digits/int8"]["service_peak"] > 0
    assert results["overload"]["results"]["64"]["ok"] > 0
    assert all(r["extra"]["busy_after_seconds"] >= 0 for c in results["cells"] for r in c["rounds"])
    report = written.with_suffix(".md").read_text()
    assert "## Headline" in report and "## Goals (issue 10)" in report
    assert "| paired rounds (met in) |" in report
    by_goal = {g["goal"]: g for g in goals(results, 16)}
    c1 = by_goal["digits/int8 binary c=1 p50 / minimal p50"]
    assert len(c1["rounds"]) == 1 and c1["rounds_met"] in (0, 1)


@pytest.mark.skipif(
    mlserver_path() is None,
    reason="MLServer is not installed (optional: `make mlserver`, or BENCH_MLSERVER=path)",
)
def test_mlserver_column_serves_the_bench_payload_with_the_same_answer(
    model_repository: Path, tmp_path: Path
) -> None:
    """The optional MLServer column: a real MLServer on the model file, the minimal's JSON."""
    executable = mlserver_path()
    assert executable is not None
    manifest = ModelManifest.read(model_repository / "digits")
    model_file = model_repository / "digits" / manifest.variants["int8"].file
    feed = sample_feed(model_repository, "digits")
    server = start_mlserver(executable, tmp_path / "repo", "digits", model_file, tmp_path / "log")
    try:
        payload = json_payload(feed)
        answer = httpx.post(f"{server.url}/v2/models/digits/infer", content=payload.body,
                            headers=payload.headers, timeout=10)  # fmt: skip
    finally:
        assert stop_service(server) == 0
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    (expected,) = open_session(model_file).run(None, feed)
    assert output["shape"] == list(expected.shape)
    np.testing.assert_allclose(np.asarray(output["data"], np.float32), expected.ravel(), rtol=1e-6)


def test_headline_shows_the_mlserver_column_only_where_the_run_benched_it() -> None:
    """Optional column: present with MLServer cells, absent (as before) without."""

    def cell(config: str, c: int, rate: float, p50: float) -> dict[str, object]:
        return {"variant": "m/int8", "config": config, "concurrency": c, "ok_per_second": rate,
                "ok_per_second_spread": 0.1, "p50_ms": p50, "p50_ms_spread": 0.2,
                "statuses": {"200": 10}, "errors": 0}  # fmt: skip

    cells = [cell(cfg, c, 100.0 * c, 1.0) for cfg in (SERVICE_BINARY, MINIMAL) for c in (1, 16)]
    results = {"floors": {"m/int8": {"p50_ms": 0.5, "p50_ms_spread": 0.1}}, "cells": cells}
    without = headline_table(results, 16)
    assert "MLServer" not in without[0] and without[0].count("|") == without[1].count("|")
    results["cells"] = cells + [cell(MLSERVER, 1, 50.0, 2.5), cell(MLSERVER, 16, 400.0, 9.0)]
    header, rule, row = headline_table(results, 16)
    assert "MLServer c=1 p50 · c=16 req/s" in header
    assert header.count("|") == rule.count("|") == row.count("|")
    assert row.endswith("| 2.50 ms ±20% · 400 ±10% |")


def test_paired_floors_measure_two_variants_side_by_side(model_repository: Path) -> None:
    """Two warm floor processes, alternated; their own summaries keep none of the pair runs."""
    plan = Plan(model_repository, [], [1], 1, 1, 1.0, True, None, None)
    feed = sample_feed(model_repository, "digits")
    manifest = ModelManifest.read(model_repository / "digits")
    fp32, int8 = (
        Floor(plan, model_repository / "digits" / manifest.variants[v].file, feed)
        for v in ("fp32", "int8")
    )
    try:
        pair = paired_floors(fp32, int8, rounds=3, seconds=0.05)
    finally:
        fp32.close()
        int8.close()
    assert (pair["rows"], pair["reference_rows"], len(pair["ratios"])) == (1, 1, 3)
    assert pair["ratio"] == sorted(pair["ratios"])[1] > 0
    assert fp32.runs == int8.runs == [] and "served" not in pair


@pytest.mark.skipif(wrk_path() is None, reason="wrk is not installed (apt-get install wrk)")
def test_the_service_ratio_is_paired_with_the_floors_round_by_round(
    model_repository: Path, live_server: ServiceProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each round: both floors, then the real service on both variants, in the same order."""
    monkeypatch.setattr("bench.run.RATIO_FLOOR_MS", 0.0)  # digits runs far under 1 ms
    plan = Plan(model_repository, [], [1, 4], 2, 1, 1.0, True, None, None)
    feed = sample_feed(model_repository, "digits")
    manifest = ModelManifest.read(model_repository / "digits")
    floors = {
        f"digits/{v}": Floor(plan, model_repository / "digits" / manifest.variants[v].file, feed)
        for v in ("fp32", "int8")
    }
    summaries = {name: {"p50_ms": 0.1} for name in floors}
    try:
        paired = _pair_with_fp32(plan, "digits", floors, summaries, live_server)
    finally:
        for floor in floors.values():
            floor.close()
    pair = paired["digits/int8"]["paired"]
    assert len(pair["ratios"]) == len(pair["served"]) == 2
    assert all(ratio > 0 for ratio in pair["served"])
    results = {"floors": {name: {"p50_ms": 2.0, "per_second": 500.0,
                                 "served_batch": {"rows": 1, "per_second": 500.0}}
                          for name in floors},
               "cells": [], "cold_start_seconds": 1.0}  # fmt: skip
    results["floors"]["digits/int8"]["paired"] = pair
    (row,) = [g for g in goals(results, 4) if "batches served" in g["goal"]]
    by_round = [s / r for s, r in zip(pair["served"], pair["ratios"], strict=True)]
    assert row["rounds"] == pytest.approx(by_round)
    assert "floors and service paired in 2 rounds" in row["goal"]


def test_goal_rounds_pair_the_cells_round_by_round() -> None:
    """Round n of the service over round n of the minimal endpoint, and how many met it."""

    def cell(*rounds: tuple[int, float, float]) -> dict[str, object]:
        return {"rounds": [{"ok": ok, "seconds": s, "p50_ms": p50} for ok, s, p50 in rounds]}

    service = cell((300, 2.0, 1.0), (200, 2.0, 0.5), (100, 0.0, 0.5))
    minimal = cell((100, 2.0, 2.0), (200, 2.0, 0.5), (100, 2.0, 1.0))
    assert paired(service, minimal, "ok_per_second") == [3.0, 1.0]  # a 0 s round is skipped
    assert paired(service, minimal, "p50_ms") == [0.5, 1.0, 0.5]
    assert paired(service, None, "p50_ms") == []
    check = at_least(1.3)
    assert [check(r) for r in (1.3, 1.29, None, float("nan"))] == [True, False, None, None]


def test_the_floor_goal_pairs_each_round_with_the_floor_measured_before_it() -> None:
    """Round n of the cell over the floor of round n at the same clients; others are skipped."""
    cell = {"rounds": [{"ok": 90, "seconds": 2.0}, {"ok": 80, "seconds": 2.0}]}
    floor = {
        "rounds": [
            {"p50_ms": 10.0},  # the first look, before any round
            {"p50_ms": 30.0, "connections": 1},
            {"p50_ms": 20.0, "connections": 16},
            {"p50_ms": 25.0, "connections": 16},
        ]
    }
    assert against_floor(cell, floor, 16) == pytest.approx([45 * 0.020, 40 * 0.025])
    assert against_floor(None, floor, 16) == []


def test_the_precision_ratio_goal_is_read_at_the_batches_the_service_ran() -> None:
    """Served INT8/FP32 at c=16 over the raw ratio at the served batches; batch 1 shown only."""

    def cell(variant: str, c: int, rate: float) -> dict[str, object]:
        rounds = [{"ok": rate, "seconds": 1.0, "p50_ms": 1.0}]
        return {"variant": variant, "config": "service binary", "concurrency": c,
                "ok_per_second": rate, "rounds": rounds}  # fmt: skip

    def floor(p50_ms: float, served_rows: float, served_rate: float) -> dict[str, object]:
        return {"p50_ms": p50_ms, "per_second": 1000 / p50_ms,
                "served_batch": {"rows": served_rows, "per_second": served_rate}}  # fmt: skip

    results = {
        "floors": {"m/fp32": floor(10.0, 12, 250.0), "m/int8": floor(5.0, 9, 350.0)},
        "cells": [
            cell("m/fp32", 16, 200.0),
            cell("m/int8", 16, 252.0),
            cell("m/fp32", 1, 90.0),
            cell("m/int8", 1, 153.0),
        ],  # fmt: skip
        "cold_start_seconds": 1.0,
    }
    rows = [g for g in goals(results, 16) if g["goal"].startswith("m/int8/fp32")]
    assert [(g["value"], g["met"]) for g in rows] == [
        (pytest.approx(1.26 / 1.4), True),  # raw 350/250 at batches 9 and 12
        (pytest.approx(1.26 / 2.0), None),  # raw 200/100 at batch 1: information only
        (pytest.approx(1.7 / 2.0), None),  # one client: batch 1 against batch 1
    ]
    assert "9 and 12 rows; 1.40x raw" in rows[0]["goal"]

    # Where the run measured the two floors side by side, the goal reads that paired ratio.
    pair = {"rows": 8, "reference_rows": 8, "ratio": 1.2, "ratios": [1.1, 1.2, 1.3]}
    results["floors"]["m/int8"]["paired"] = pair  # type: ignore[index]
    (paired_row,) = [g for g in goals(results, 16) if "batches served" in g["goal"]]
    assert paired_row["value"] == pytest.approx(1.26 / 1.2)
    assert "8 and 8 rows; 1.20x raw, floors paired in 3 rounds" in paired_row["goal"]


def test_profile_summary_counts_self_and_inclusive_samples() -> None:
    raw = "main (a.py:1);handle (b.py:2);run (c.py:3) 3\nmain (a.py:1);handle (b.py:2) 1\n"
    total, rows = summarise(raw)
    assert total == 4
    shares = {name: (own, inclusive) for name, own, inclusive in rows}
    assert shares["c.py:run"] == (75.0, 75.0)
    assert shares["b.py:handle"] == (25.0, 100.0)
