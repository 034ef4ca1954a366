"""A real Prometheus scrapes a live server under traffic; the queries operators use answer."""

from __future__ import annotations

import math
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from test_metrics_dashboard import all_panels, load_dashboard

from loadtests.process import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
PROMETHEUS = shutil.which("prometheus")
VARIANTS = {("digits", "fp32"), ("digits", "int8")}
DEADLINE = 40.0
P95 = (
    "histogram_quantile(0.95, sum by (le, model, version) "
    "(rate(edge_request_duration_seconds_bucket[30s])))"
)


pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus not installed (Debian: apt-get install prometheus; CI installs it)",
)


@pytest.fixture
def prometheus(live_server: Any, tmp_path: Path) -> Iterator[str]:
    """Prometheus on a loopback port scraping the live server every second, with our rules."""
    assert PROMETHEUS is not None
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "edge-inference", "static_configs": [{"targets": [live_server.host_port]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited:\n{(tmp_path / 'prometheus.log').read_text()}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready in 20 s"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def traffic(live_server: Any) -> Iterator[None]:
    """Requests to both variants of digits until the test ends."""
    stop = threading.Event()
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [1.0] * 64}]
    }

    def send() -> None:
        with httpx.Client(base_url=live_server.url, timeout=5) as client:
            while not stop.is_set():
                for _, version in sorted(VARIANTS):
                    client.post(f"/v2/models/digits/versions/{version}/infer", json=body)
                stop.wait(0.02)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


def panel_queries() -> dict[str, list[str]]:
    """Each dashboard panel's PromQL, with Grafana's variables as Grafana would fill them in."""
    return {
        panel["title"]: [
            target["expr"].replace("$__rate_interval", "30s").replace('=~"$model"', '=~".*"')
            for target in panel.get("targets", [])
        ]
        for panel in all_panels(load_dashboard()["panels"])
    }


def query(url: str, expr: str) -> dict[tuple[str, str], float]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5)
    response.raise_for_status()
    payload: dict[str, Any] = response.json()
    assert payload["status"] == "success", payload
    return {
        (item["metric"].get("model", ""), item["metric"].get("version", "")): float(
            item["value"][1]
        )
        for item in payload["data"]["result"]
    }


def test_real_prometheus_sees_latency_and_memory_per_variant(
    prometheus: str, traffic: None
) -> None:
    deadline = time.monotonic() + DEADLINE
    p95: dict[tuple[str, str], float] = {}
    memory: dict[tuple[str, str], float] = {}
    recorded: dict[tuple[str, str], float] = {}
    per_row: dict[tuple[str, str], float] = {}
    panels = panel_queries()
    (per_row_expr,) = panels["ONNX Runtime time per row"]
    rules: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        p95 = {k: v for k, v in query(prometheus, P95).items() if math.isfinite(v)}
        memory = query(prometheus, "max by (model, version) (edge_variant_memory_bytes)")
        recorded = query(prometheus, "model_version:edge_request_duration_seconds:p95_rate5m")
        per_row = {k: v for k, v in query(prometheus, per_row_expr).items() if math.isfinite(v)}
        response = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()
        rules = [rule for group in response["data"]["groups"] for rule in group["rules"]]
        if (
            VARIANTS <= set(p95)
            and VARIANTS <= {k for k, v in memory.items() if v > 0}
            and VARIANTS <= {k for k, v in recorded.items() if math.isfinite(v)}
            and VARIANTS <= set(per_row)
            and rules
            and all(rule["health"] != "unknown" for rule in rules)
        ):
            break
        time.sleep(0.5)
    assert VARIANTS <= set(p95), f"p95 per (model, version) within {DEADLINE} s: {p95}"
    for key in VARIANTS:
        assert 0 < p95[key] < 10, (key, p95[key])
        assert memory.get(key, 0) > 0, f"edge_variant_memory_bytes of {key}: {memory}"
        assert key in recorded, f"recording rule has no {key}: {recorded}"
        assert 0 < per_row[key] < 0.1, f"ONNX Runtime time per row of {key}: {per_row}"
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    assert query(prometheus, 'up{job="edge-inference"}') == {("", ""): 1.0}
    firing = query(prometheus, 'ALERTS{alertname="EdgeInferenceVariantNotReady"}')
    assert not firing
    for title, exprs in panels.items():  # every panel's query is valid PromQL here
        for expr in exprs:
            answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
            assert answer.json()["status"] == "success", (title, expr, answer.text)
