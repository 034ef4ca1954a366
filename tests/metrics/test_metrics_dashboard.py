"""The Grafana dashboard and the Prometheus rules only use metrics the service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import MemoryCollector

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "edge-inference.json"
# Series Prometheus makes itself rather than scraping them.
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}  # fmt: skip


def load_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [
        target["expr"]
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        # label_values(metric, label): only the first argument is a metric.
        match = re.fullmatch(r"\s*label_values\(\s*([^,{)\s]+).*\)\s*", text)
        exprs.append(match.group(1) if match else text)
    return exprs


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: not functions, keywords, labels or strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers, including $variables
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery windows
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text
    )  # label lists
    text = re.sub(r"\$\w+", "", text)  # Grafana variables outside matchers
    text = re.sub(r"(?<![\w:])\d[\d.]*(?:e[+-]?\d+)?[a-z]*", "", text)  # 0.99, 1e3, 5m
    names = set()
    for match in re.finditer(r"(?<![\w:])[A-Za-z_:][\w:]*", text):
        name = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or name.lower() in KEYWORDS:
            continue  # a function or aggregation, or an operator
        names.add(name)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, model, version) (rate(edge_request_duration_"
        'seconds_bucket{model=~"$model",status=~"5.."}[$__rate_interval]))) > 0.1 and on '
        "(model, version) model_version:edge_requests:rate5m > bool 1 or "
        "(edge_cgroup_memory_working_set_bytes or edge_cgroup_memory_usage_bytes) "
        '/ ignoring (instance) up{job="x"} offset 5m'
    )
    assert metric_names(expr) == {
        "edge_request_duration_seconds_bucket",
        "model_version:edge_requests:rate5m",
        "edge_cgroup_memory_working_set_bytes",
        "edge_cgroup_memory_usage_bytes",
        "up",
    }


@pytest.fixture(scope="module")
def exported(live_server: Any) -> set[str]:
    """Sample names in a live server's /metrics, plus cgroup metrics only some hosts have."""
    response = httpx.get(f"{live_server.url}/metrics", follow_redirects=True, timeout=10)
    response.raise_for_status()
    names = {
        sample.name
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return names


def cgroup_names(tmp_path: Path) -> set[str]:
    """What a container with a memory limit exports (a full fake cgroup v2 tree)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for name, text in {
        "memory.current": "100",
        "memory.max": "1000",
        "memory.peak": "200",
        "memory.stat": "inactive_file 10",
    }.items():
        (root / name).write_text(text)
    (tmp_path / "cgroup-of-self").write_text("0::/\n")
    registry = CollectorRegistry()
    registry.register(MemoryCollector(root, tmp_path / "cgroup-of-self"))
    return {
        sample.name
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_used_exists(source: str, exported: set[str], tmp_path: Path) -> None:
    rules = load_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    if source == "rules":
        exprs = [str(rule["expr"]) for rule in rules]
    else:
        exprs = dashboard_exprs(load_dashboard())
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert len(used) >= 5, f"suspiciously few metric names found in the {source}: {used}"
    available = exported | cgroup_names(tmp_path) | recorded | PROMETHEUS_OWN
    missing = sorted(used - available)
    assert not missing, f"{source} uses metrics the service does not export: {missing}"


def documented_metrics(text: str) -> set[str]:
    """Metric names in `text`'s code spans; `a_{b,c}_d` stands for a_b_d and a_c_d."""
    names = set()
    for stem, choices, tail in re.findall(r"`(edge_\w*)(?:\{([\w,]+)\}(\w+))?", text):
        names |= {stem + choice + tail for choice in choices.split(",")} if tail else {stem}
    return names


def test_every_service_metric_is_documented(exported: set[str], tmp_path: Path) -> None:
    """deploy/prometheus/README.md is where operators look a metric up: none is left out."""
    documented = documented_metrics((PROMETHEUS / "README.md").read_text())
    suffixes = ("_bucket", "_count", "_sum", "_created")
    families = {
        name
        for name in exported | cgroup_names(tmp_path)
        if name.startswith("edge_") and not name.endswith(suffixes)
    }
    missing = sorted(families - documented)
    assert not missing, f"exported but not in deploy/prometheus/README.md: {missing}"


def test_recording_rule_names_follow_the_convention() -> None:
    for rule in load_rules():
        if "record" in rule:
            assert re.fullmatch(r"model_version:edge_[a-z0-9_]+:[a-z0-9_]+", rule["record"])


def test_dashboard_has_what_grafana_needs() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "edge-inference"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["model"]["datasource"]["uid"] == "prometheus"
    ids = [panel["id"] for panel in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    exprs = []
    for panel in all_panels(dashboard["panels"]):
        assert panel["type"] and panel["title"], panel
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["datasource"]["uid"] == "prometheus"
            exprs.append(target["expr"])
    text = "\n".join(exprs)
    # FP32 and INT8 side by side: quantiles per (model, version) for each of p50/p95/p99.
    for quantile in ("0.50", "0.95", "0.99"):
        assert (
            f"histogram_quantile({quantile}, sum by (le, model, version) "
            "(rate(edge_request_duration_seconds_bucket" in text
        )
    for name in (
        "edge_variant_memory_bytes",
        "process_resident_memory_bytes",
        "edge_cgroup_memory_limit_bytes",
        "edge_variant_ready",
        "edge_inference_queue_duration_seconds_bucket",
        "edge_inference_compute_duration_seconds_bucket",
    ):
        assert name in text


def test_provisioning_matches_the_compose_mounts() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    grafana_mounts = dict(
        volume.split(":")[:2] for volume in compose["grafana"]["volumes"] if volume.startswith(".")
    )
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yml").read_text())
    assert [p["options"]["path"] for p in providers["providers"]] == [
        grafana_mounts["./grafana/dashboards"]
    ]
    assert grafana_mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert (source["uid"], source["type"], source["url"]) == (
        "prometheus",
        "prometheus",
        "http://prometheus:9090",
    )
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    prometheus_mounts = dict(
        volume.split(":")[:2]
        for volume in compose["prometheus"]["volumes"]
        if volume.startswith(".")
    )
    for rule_file in config["rule_files"]:
        assert prometheus_mounts[f"./prometheus/{rule_file}"] == f"/etc/prometheus/{rule_file}"
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "edge-inference"
    assert job["static_configs"][0]["targets"] == ["edge-inference:8000"]
    assert "edge-inference" in compose


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "rules.yml"],
        ["test", "rules", "rules_test.yml"],
    ],
    ids=["config", "rules", "rule-tests"],
)
def test_promtool(args: list[str]) -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
