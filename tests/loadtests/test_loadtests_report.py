"""The load-test runner end to end on the digits repository, and its arithmetic."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtests import prom
from loadtests.report import (
    _files,
    cost_finding,
    finding,
    locust_warnings,
    speed_findings,
    speed_verdict,
)
from loadtests.summary import RunRecord, locust_cpu, ratio, ratios, throughput_series

INF = math.inf
EXPOSITION = """\
# HELP edge_request_duration_seconds Latency.
# TYPE edge_request_duration_seconds histogram
edge_request_duration_seconds_bucket{le="0.001",model="digits",version="int8"} 4.0
edge_request_duration_seconds_bucket{le="0.0005",model="digits",version="int8"} 1.0
edge_request_duration_seconds_bucket{le="+Inf",model="digits",version="int8"} 5.0
edge_request_duration_seconds_count{model="digits",version="int8"} 5.0
edge_request_duration_seconds_sum{model="digits",version="int8"} 0.004
# HELP edge_requests_total Requests.
# TYPE edge_requests_total counter
edge_requests_total{model="digits",status="200",version="int8"} 5.0
edge_requests_total{model="digits",status="400",version="int8"} 2.0
"""


# --- histogram quantiles ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.15),  # rank 20 in (0.1, 0.2]: 0.1 + 0.1 * (20 - 10) / 20
        (0.99, 0.488),  # rank 39.6 in (0.2, 0.5]: 0.2 + 0.3 * 9.6 / 10
        (0.1, 0.04),  # rank 4 in the first bucket, interpolated from 0
        (0.25, 0.1),
        (0.0, 0.0),
    ],
)
def test_histogram_quantile_interpolates_like_promql(q: float, expected: float) -> None:
    buckets = [(0.2, 30.0), (0.1, 10.0), (0.5, 40.0), (INF, 40.0)]  # unsorted on purpose
    assert prom.histogram_quantile(q, buckets) == pytest.approx(expected)


def test_histogram_quantile_in_the_inf_bucket_answers_the_largest_finite_bound() -> None:
    assert prom.histogram_quantile(0.9, [(0.1, 5.0), (0.25, 5.0), (INF, 10.0)]) == 0.25


def test_histogram_quantile_without_observations_is_none() -> None:
    assert prom.histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None
    assert prom.histogram_quantile(0.5, []) is None


def test_histogram_quantile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        prom.histogram_quantile(1.5, [(INF, 1.0)])
    with pytest.raises(ValueError):
        prom.histogram_quantile(0.5, [(0.1, 1.0)])


def test_quantile_of_a_run_uses_bucket_deltas() -> None:
    before = [(0.1, 100.0), (0.2, 100.0), (INF, 100.0)]  # warm-up: all fast
    after = [(0.1, 100.0), (0.2, 110.0), (INF, 110.0)]  # the run: all in (0.1, 0.2]
    delta = prom.bucket_delta(before, after)
    assert delta == [(0.1, 0.0), (0.2, 10.0), (INF, 10.0)]
    assert prom.histogram_quantile(0.5, delta) == pytest.approx(0.15)
    assert prom.histogram_quantile(0.5, after) == pytest.approx(0.1 * 55 / 100)


def test_parse_reads_buckets_and_counters() -> None:
    snapshot = prom.parse(EXPOSITION, at=1.0)
    buckets = snapshot.buckets("edge_request_duration_seconds", model="digits", version="int8")
    assert buckets == [(0.0005, 1.0), (0.001, 4.0), (INF, 5.0)]
    assert snapshot.total("edge_requests_total", model="digits") == 7.0
    assert snapshot.value("edge_requests_total", model="digits", version="int8", status="400") == 2
    assert prom.histogram_quantile(0.5, buckets) == pytest.approx(0.0005 + 0.0005 * 1.5 / 3)


# --- ratios -----------------------------------------------------------------------------


def _row(variant: str, run: str, rps: float, p50: float, cpu: float | None) -> dict:
    return {
        "model": "digits",
        "variant": variant,
        "run": run,
        "requests_per_s": rps,
        "client_ms": {"p50": p50, "p95": p50 * 2, "p99": p50 * 3},
        "server_ms": {"p50": p50 / 2, "p95": None, "p99": p50},
        "server_compute_ms": {"p50": 0.1},
        "cpu_seconds_per_request": cpu,
        "variant_memory_bytes": {"warm": 1e6 if variant == "int8" else 4e6, "loaded": 0.0},
    }


def test_ratio_handles_missing_and_zero() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 3.0) == 0.333
    assert ratio(None, 2.0) is None
    assert ratio(2.0, None) is None
    assert ratio(2.0, 0.0) is None


def test_ratios_compare_each_variant_with_fp32_in_the_same_kind_of_run() -> None:
    results = [
        _row("fp32", "alone", 100.0, 2.0, 0.004),
        _row("int8", "alone", 150.0, 1.0, 0.002),
        _row("fp32", "mixed", 50.0, 4.0, None),
        _row("int8", "mixed", 60.0, 3.0, None),
    ]
    table = {r["run"]: r for r in ratios(results)}
    assert set(table) == {"alone", "mixed"}
    alone, mixed = table["alone"], table["mixed"]
    assert (alone["variant"], alone["baseline"]) == ("int8", "fp32")
    assert alone["requests_per_s"] == 1.5
    assert alone["client_p50"] == 0.5
    assert alone["client_p99"] == 0.5
    assert alone["server_p95"] is None
    assert alone["compute_p50"] == 1.0
    assert alone["cpu_seconds_per_request"] == 0.5
    assert alone["variant_memory_warm"] == 0.25
    assert alone["variant_memory_loaded"] is None  # zero baseline
    assert mixed["requests_per_s"] == 1.2
    assert mixed["client_p50"] == 0.75
    assert mixed["cpu_seconds_per_request"] is None


def test_alone_ratios_pair_the_rounds() -> None:
    fp32, int8 = _row("fp32", "alone", 100.0, 2.0, 0.004), _row("int8", "alone", 150.0, 1.0, 0.002)
    fields = ("requests_per_s", "cpu_seconds_per_request", "server_p50", "client_p50",
              "run_per_row")  # fmt: skip
    fp32["rounds"] = [dict(zip(fields, (100.0, 0.004, 2.0, 3.0, 1.0), strict=True)),
                      dict(zip(fields, (80.0, 0.005, 2.5, 4.0, 1.0), strict=True))]  # fmt: skip
    int8["rounds"] = [dict(zip(fields, (150.0, 0.002, 1.0, 3.0, 0.5), strict=True)),
                      dict(zip(fields, (120.0, 0.004, None, 2.0, 0.6), strict=True))]  # fmt: skip
    (alone,) = ratios([fp32, int8])
    assert alone["rounds"] == [
        {"requests_per_s": 1.5, "cpu_seconds_per_request": 0.5, "server_p50": 0.5,
         "client_p50": 1.0, "run_per_row": 0.5},
        {"requests_per_s": 1.5, "cpu_seconds_per_request": 0.8, "server_p50": None,
         "client_p50": 0.5, "run_per_row": 0.6},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("values", "higher_is_better", "verdict"),
    [
        ([0.85, 0.88, 0.91], False, 1),  # every round lower CPU: better
        ([0.85, 1.02, 0.80], False, 0),  # one round disagrees: not called
        ([0.97, 0.98, 0.96], False, 0),  # agreed, but under SMALLEST
        ([1.10, 1.20, 1.08], True, 1),  # more req/s in every round
        ([1.10, 1.20, 1.08], False, -1),  # more CPU in every round: worse
        ([0.80], False, 1),  # one round: the fixed NOISE threshold
        ([0.90], False, 0),
        ([None, None], True, 0),
    ],
)
def test_a_difference_is_called_when_every_round_agrees(
    values: list[float | None], higher_is_better: bool, verdict: int
) -> None:
    assert finding("x", values, higher_is_better).verdict == verdict


def test_the_reading_ships_what_every_round_found_faster() -> None:
    def ratio_row(cpu: list[float], rps: list[float], p50: list[float]) -> dict[str, Any]:
        keys = ("cpu_seconds_per_request", "requests_per_s", "server_p50")
        return {
            "rounds": [dict(zip(keys, r, strict=True)) for r in zip(cpu, rps, p50, strict=True)]
        }

    faster = speed_findings(ratio_row([0.85, 0.9, 0.88], [1.02, 0.99, 1.05], [0.8, 0.7, 0.9]))
    text = speed_verdict("int8", "fp32", faster)
    assert text.startswith("int8 was faster in every one of 3 interleaved rounds: ")
    assert "server CPU per request 0.88x (rounds 0.85x-0.90x)" in text
    assert "throughput" not in text and text.endswith("ship int8.")
    noise = speed_findings(ratio_row([0.9, 1.1, 0.95], [1.0, 1.0, 1.0], [0.9, 1.1, 1.0]))
    assert "so speed does not decide here" in speed_verdict("int8", "fp32", noise)
    lone = speed_findings(ratio_row([1.07, 0.99, 1.17], [0.89, 0.92, 0.84], [1.05, 0.91, 1.27]))
    text = speed_verdict("int8", "fp32", lone)  # an A/A run's: one measure alone
    assert "only throughput worse in every one of 3 interleaved rounds" in text
    assert "so speed does not decide here" in text
    slower = speed_findings(ratio_row([1.2, 1.1, 1.15], [0.8, 0.9, 0.85], [1.0, 1.0, 1.0]))
    assert "int8 was slower in every one of 3" in speed_verdict("int8", "fp32", slower)
    split = speed_findings(ratio_row([0.8, 0.8, 0.8], [1.0, 1.0, 1.0], [1.2, 1.3, 1.2]))
    text = speed_verdict("int8", "fp32", split)
    assert "better in every one of 3 interleaved rounds on server CPU" in text
    assert "worse on server p50 1.20x" in text


def test_a_call_needs_the_models_own_time_per_row_to_find_it_too() -> None:
    """The false call of a noisy evening: CPU and throughput worse, ONNX Runtime itself faster."""

    def ratio_row(cpu: list[float], rps: list[float], per_row: list[float]) -> dict[str, Any]:
        keys = ("cpu_seconds_per_request", "requests_per_s", "server_p50", "run_per_row")
        rounds = zip(cpu, rps, [1.0] * len(cpu), per_row, strict=True)
        return {"rounds": [dict(zip(keys, r, strict=True)) for r in rounds]}

    drift = ratio_row([1.11, 1.00 + 1e-3, 1.13], [0.9, 0.95, 0.88], [0.85, 0.9, 0.8])
    text = speed_verdict("int8", "fp32", speed_findings(drift), cost_finding(drift))
    assert text.startswith("int8 looked slower in every one of 3 interleaved rounds")
    assert "ONNX Runtime time per row 0.85x (rounds 0.80x-0.90x)" in text
    assert "so speed does not decide here" in text and "ship" not in text
    real = ratio_row([0.8, 0.85, 0.9], [1.2, 1.15, 1.1], [0.6, 0.65, 0.62])
    text = speed_verdict("int8", "fp32", speed_findings(real), cost_finding(real))
    assert "; ONNX Runtime time per row 0.62x (rounds 0.60x-0.65x) agreed. " in text
    assert text.endswith("ship int8.")
    unmeasured = ratio_row([0.8, 0.85, 0.9], [1.2, 1.15, 1.1], [0.6, 0.65, 0.62])
    for r in unmeasured["rounds"]:
        r["run_per_row"] = None  # an older service: the call stands on the measures alone
    assert cost_finding(unmeasured) is None


def test_ratios_without_a_baseline_are_empty() -> None:
    assert ratios([_row("int8", "alone", 1.0, 1.0, 1.0)]) == []


def test_throughput_series_is_the_rate_between_history_rows() -> None:
    def row(t: int, name: str, total: int) -> dict[str, str]:
        return {"Timestamp": str(t), "Name": name, "Total Request Count": str(total)}

    history = [
        row(100, "Aggregated", 0),
        row(101, "digits/int8 infer-binary", 30),
        row(101, "digits/int8 classify", 20),
        row(101, "digits/fp32 classify", 10),
        row(103, "digits/int8 infer-binary", 90),
        row(103, "digits/int8 classify", 60),
        row(103, "digits/fp32 classify", 10),
        row(103, "Aggregated", 160),
    ]
    series = throughput_series(history, "digits")
    assert series["int8"] == [[1.0, 50.0], [3.0, 50.0]]
    assert series["fp32"] == [[1.0, 10.0], [3.0, 0.0]]


def record(cpu: float | None, wall: float = 10.0) -> RunRecord:
    """A run's record with only the timing that the Locust CPU check reads."""
    return RunRecord(
        model="digits", label="fp32", variants=["fp32"], directory=Path("."), started=100.0,
        finished=100.0 + wall, exit_code=0, before=None, after=None, polls=[],  # type: ignore[arg-type]
        locust_cpu_seconds=cpu,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("cpu", "bound"), [(9.5, True), (9.0, True), (8.9, False), (2.0, False), (None, False)]
)
def test_a_run_where_locust_used_90_percent_of_a_core_is_flagged(
    cpu: float | None, bound: bool
) -> None:
    assert locust_cpu(record(cpu))["cpu_bound"] is bound


def test_the_report_says_which_runs_measured_locust() -> None:
    """The flag leads "Which to ship" and marks the run's status in the files table."""
    runs = [
        {"model": "digits", "run": "fp32", "error": None, "files": {},
         "locust": locust_cpu(record(9.6))},
        {"model": "digits", "run": "int8", "error": None, "files": {},
         "locust": locust_cpu(record(3.0))},
    ]  # fmt: skip
    (warning,) = locust_warnings({"runs": runs})
    assert "Locust was CPU-bound** in digits / fp32 (96% of one core)" in warning
    status = [row[-1] for row in _files({"runs": runs}).rows]
    assert status == ["ok (Locust CPU-bound: 96% of a core)", "ok"]


# --- end to end ---------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def test_runner_writes_a_report_that_renders(model_repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOADTEST_", "EDGE_"))}
    done = subprocess.run(
        [sys.executable, "-m", "loadtests", "--repository", str(model_repository),
         "--out", str(out), "--duration", "3", "--rounds", "2", "--users", "2",
         "--warmup", "2"],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["models"] == ["digits"]
    assert summary["settings"]["variants"]["digits"] == ["fp32", "int8"]
    assert [(r["run"], r["round"], r["error"]) for r in summary["runs"]] == [
        ("fp32-1", 1, None), ("int8-1", 1, None), ("int8-2", 2, None), ("fp32-2", 2, None),
        ("mixed", None, None),
    ]  # fmt: skip
    assert summary["pinning"]
    for run in summary["runs"]:  # Locust's own CPU is measured for every run
        assert run["locust"]["cpu_seconds"] > 0 and 0 < run["locust"]["cpu_share"], run["locust"]
    keys = {(r["variant"], r["run"]) for r in summary["results"]}
    assert keys == {("fp32", "alone"), ("int8", "alone"), ("fp32", "mixed"), ("int8", "mixed")}
    for row in summary["results"]:
        assert row["requests"] > 0
        assert row["failures"] == 0, row
        assert row["server_requests"] > 0
        assert row["requests_per_s"] > 0
        for side in ("client_ms", "server_ms"):
            p50, p95, p99 = (row[side][p] for p in ("p50", "p95", "p99"))
            assert 0 < p50 <= p95 <= p99, (side, row[side])
        assert set(row["by_kind"]) == {"infer-binary", "infer-json", "classify"}
        assert row["variant_memory_bytes"]["warm"] > 0
        assert row["rss_bytes_max"] > 0
        if row["run"] == "alone":  # the rounds together, and each round on its own
            assert row["cpu_seconds_per_request"] > 0
            assert [r["run"] for r in row["rounds"]] == [f"{row['variant']}-1",
                                                         f"{row['variant']}-2"]  # fmt: skip
            assert sum(r["requests_per_s"] for r in row["rounds"]) > row["requests_per_s"]
            assert all(r["cpu_seconds_per_request"] > 0 for r in row["rounds"])
    assert {(r["variant"], r["run"]) for r in summary["ratios"]} == {
        ("int8", "alone"), ("int8", "mixed")
    }  # fmt: skip
    (alone,) = (r for r in summary["ratios"] if r["run"] == "alone")
    assert len(alone["rounds"]) == 2 and all(r["requests_per_s"] > 0 for r in alone["rounds"])
    assert [a["variant"] for a in summary["accuracy"]] == ["fp32", "int8"]
    assert all(a["gate"] == "pass" and a["accuracy"]["top1"] > 90 for a in summary["accuracy"])
    for run in ("fp32-1", "int8-1", "fp32-2", "int8-2", "mixed"):
        for name in ("locust.html", "locust_stats.csv", "locust_stats_history.csv"):
            assert (out / "digits" / run / name).is_file()

    report = (out / "report.md").read_text()
    for variant, run in sorted(keys):
        assert f"| digits | {variant} | {run} | " in report
    assert "| digits | int8 / fp32 | alone |" in report
    assert "| digits | int8 / fp32 | alone, round 2 |" in report
    assert (
        "Each model got 2 round(s) of Locust runs" in report and "each 3 s with 2 users" in report
    )
    assert "Round by round, int8 / fp32 (alone runs, interleaved): server CPU per request" in report
    assert "## Which to ship" in report and "digits, int8 against fp32" in report
    assert "| digits | fp32 | top1 " in report or "| digits | fp32 (default) | top1 " in report

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium binary (apt-get install -y chromium) to render report.html")
    url = (out / "report.html").resolve().as_uri()
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"]
    shot = subprocess.run(
        [chromium, *flags, f"--screenshot={out / 'report.png'}", "--window-size=1280,2400", url],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert shot.returncode == 0, shot.stderr.decode(errors="replace")[-2000:]
    assert (out / "report.png").stat().st_size > 20_000
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    assert '<table id="headline">' in dom
    assert dom.count('src="data:image/png;base64,') == 3
    for variant, run in sorted(keys):
        assert f"<td>digits</td><td>{variant}</td><td>{run}</td>" in dom
