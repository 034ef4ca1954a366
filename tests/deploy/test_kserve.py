"""deploy/kserve/ checked offline against KServe's own schema.

The kserve wheel (installed --no-deps by `make venv`: only its files are read) ships the
models generated from its CRDs' OpenAPI schema: per class, `openapi_types` (field -> type),
`attribute_map` (field -> YAML key) and setters refusing None for required fields. They are
read from the source here (importing kserve would need its whole server stack), and every key
of the manifests is walked against them; Kubernetes' own types inside (containers, probes,
resources, metadata) are checked against kubernetes-validate's strict JSON schemas.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

KSERVE_DIR = Path(__file__).parents[2] / "deploy" / "kserve"
K8S_VERSION = "1.37.0"
ROOTS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}


@dataclass(frozen=True)
class Model:
    types: dict[str, str]  # python attribute -> type
    keys: dict[str, str]  # YAML key -> python attribute
    required: frozenset[str]


@cache
def kserve_models() -> dict[str, Model]:
    spec = importlib.util.find_spec("kserve")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("kserve is not installed (make venv installs it --no-deps)")
    models: dict[str, Model] = {}
    for path in sorted(Path(spec.submodule_search_locations[0], "models").glob("v*.py")):
        source = path.read_text()
        for node in ast.parse(source).body:
            if not isinstance(node, ast.ClassDef):
                continue
            found: dict[str, dict[str, str]] = {}
            for item in node.body:
                if isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name):
                    if item.targets[0].id in ("openapi_types", "attribute_map"):
                        found[item.targets[0].id] = ast.literal_eval(item.value)
            if len(found) == 2:
                required = frozenset(re.findall(r"Invalid value for `(\w+)`, must not be", source))
                models[node.name] = Model(
                    found["openapi_types"],
                    {key: attr for attr, key in found["attribute_map"].items()},
                    required,
                )
    assert "V1alpha1ServingRuntimeSpec" in models and "V1beta1ModelSpec" in models
    return models


@cache
def k8s_definitions() -> dict[str, Any]:
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    path = root / f"v{K8S_VERSION}-local-strict" / "_definitions.json"
    definitions: dict[str, Any] = json.loads(path.read_text())
    return definitions


def check_k8s(type_name: str, value: Any, where: str) -> list[str]:
    """A Kubernetes type (V1Container, V1Probe, ...) against its strict JSON schema."""
    name = type_name.removeprefix("V1")
    defs = k8s_definitions()
    keys = [k for k in defs["$defs"] if k.endswith((f"core.v1.{name}", f"meta.v1.{name}"))]
    if not keys:
        return [f"{where}: no Kubernetes schema for {type_name}"]
    schema = {"$ref": f"{defs['$id']}#/$defs/{keys[0]}"}
    registry = Registry().with_resource(defs["$id"], Resource.from_contents(defs))
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [
        f"{where}.{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(value)
    ]


def check(type_name: str, value: Any, where: str) -> list[str]:
    """Every key known, every value of its type, every required field present."""
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        inner = type_name[5:-1]
        return [p for i, item in enumerate(value) for p in check(inner, item, f"{where}[{i}]")]
    if type_name.startswith("dict("):
        inner = type_name[5:-1].split(", ", 1)[1]
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [p for k, item in value.items() for p in check(inner, item, f"{where}.{k}")]
    simple = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if type_name in simple:
        ok = isinstance(value, simple[type_name]) and not (
            type_name == "int" and isinstance(value, bool)
        )
        return [] if ok else [f"{where}: expected {type_name}, got {value!r}"]
    model = kserve_models().get(type_name)
    if model is None:
        return check_k8s(type_name, value, where)
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} mapping"]
    problems = [
        f"{where}.{key}: not a field of {type_name}" for key in value if key not in model.keys
    ]
    for key, item in value.items():
        if key in model.keys:
            problems += check(model.types[model.keys[key]], item, f"{where}.{key}")
    present = {model.keys[key] for key in value if key in model.keys}
    problems += [f"{where}: {type_name} requires {attr}" for attr in model.required - present]
    return problems


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(KSERVE_DIR.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]


def test_each_manifest_matches_kserves_schema() -> None:
    docs = documents()
    assert {doc["kind"] for _, doc in docs} == {"ServingRuntime", "InferenceService"}
    for name, doc in docs:
        root = ROOTS[(doc["apiVersion"], doc["kind"])]
        problems = check(root, doc, f"{name}:{doc['kind']}")
        assert not problems, "\n".join(problems)
        print(f"{name}: {doc['kind']} {doc['metadata']['name']} valid against kserve {root}")


def test_the_checker_catches_mistakes() -> None:
    """A typo'd field, a wrong type and a missing container are each reported."""
    runtime = next(doc for _, doc in documents() if doc["kind"] == "ServingRuntime")
    bad = json.loads(json.dumps(runtime))
    bad["spec"]["protocolVersion"] = ["v2"]  # the field is protocolVersions
    bad["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [8080]
    problems = check("V1alpha1ServingRuntime", bad, "bad")
    assert any("protocolVersion: not a field" in p for p in problems), problems
    assert any("readinessProbe.httpGet.port" in p for p in problems), problems
    del bad["spec"]["containers"]
    assert any("requires containers" in p for p in check("V1alpha1ServingRuntime", bad, "bad"))


def test_the_runtime_serves_v2_with_the_services_probes() -> None:
    """The wiring KServe relies on: v2 protocol, the repository at /mnt/models, the probes."""
    runtime = next(doc for _, doc in documents() if doc["kind"] == "ServingRuntime")
    isvc = next(doc for _, doc in documents() if doc["kind"] == "InferenceService")
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2"]
    (container,) = spec["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["EDGE_MODEL_REPOSITORY"] == "/mnt/models"
    assert str(container["ports"][0]["containerPort"]) == env["EDGE_PORT"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] == spec["supportedModelFormats"][0]["name"]
    assert model["storageUri"].startswith("pvc://")
