"""A 60-second soak in `make test`: the digits repository, every request kind, judged per window."""

from __future__ import annotations

import json
from pathlib import Path

from loadtests.soak import run

DURATION = 60.0


def test_soak_a_minute_without_server_errors_or_memory_growth(
    model_repository: Path, tmp_path: Path
) -> None:
    """0 5xx, every correct request right (503 sheds apart), bad ones 4xx, RSS drift < 5%."""
    report = run(model_repository, tmp_path, DURATION)
    print("\nsoak:", (tmp_path / "soak.md").read_text())
    assert json.loads((tmp_path / "soak.json").read_text()) == report
    assert report["server_errors"] == 0, report["failing_calls"]
    assert report["errors"] == 0, report["failing_calls"]
    assert report["server_alive_after"] and report["server_exit_code"] == 0
    assert report["bad_requests"] > 0
    assert report["bad_requests_answered_4xx"] == report["bad_requests"]
    kinds = {name.rsplit("/", 1)[-1] for name in report["by_call"]}
    assert {"infer-binary", "infer-json", "task", "compare"} <= kinds, kinds
    assert len(report["windows"]) == 6 and all(w["requests"] > 0 for w in report["windows"])
    assert report["rss_drift_percent"] is not None and abs(report["rss_drift_percent"]) < 5
