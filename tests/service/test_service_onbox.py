"""The precision chosen on the box: each variant timed here, the build's rule re-run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.manifest import GateCheck, ModelManifest
from service.onbox import choose_default
from service.runtime import ModelRuntime


@pytest.fixture(scope="module")
def manifest(model_repository: Path) -> ModelManifest:
    return ModelManifest.read(model_repository / "digits")


def runtimes(manifest: ModelManifest) -> dict[str, ModelRuntime]:
    """Registered (unloaded) runtimes: the rule reads only which variants there are."""
    return {
        name: ModelRuntime("digits", name, Path(v.file), v.sha256, 1, [], [])
        for name, v in manifest.variants.items()
    }


@pytest.mark.parametrize(
    ("int8_ms", "chosen"),
    [(0.05, "int8"), (0.094, "int8"), (0.096, "fp32"), (0.10, "fp32"), (0.2, "fp32")],
)
def test_faster_here_by_over_five_percent_wins_ties_go_to_fp32(
    manifest: ModelManifest, int8_ms: float, chosen: str
) -> None:
    variant, reason = choose_default(
        manifest, runtimes(manifest), {"fp32": 0.1, "int8": int8_ms}, None
    )
    assert variant == chosen
    assert reason.startswith(f"{chosen} is the default") and "on this box" in reason


def test_a_variant_that_failed_its_gate_is_never_chosen(manifest: ModelManifest) -> None:
    failed = GateCheck(metric="top1", value=0, reference=1, bound=1, passed=False, rule="test")
    int8 = manifest.variants["int8"].model_copy(update={"gate": [failed]})
    broken = manifest.model_copy(update={"variants": {**manifest.variants, "int8": int8}})
    variant, _ = choose_default(broken, runtimes(broken), {"fp32": 0.1, "int8": 0.01}, None)
    assert variant == "fp32"


def test_edge_default_variant_overrides(manifest: ModelManifest) -> None:
    variant, reason = choose_default(
        manifest, runtimes(manifest), {"fp32": 0.01, "int8": 0.1}, "int8"
    )
    assert (variant, reason) == ("int8", "int8 is the default: EDGE_DEFAULT_VARIANT says so.")


def test_latency_here_in_metadata_metrics_and_log(live_server: Any) -> None:
    """Each variant's figure here sits beside the build machine's; the default is one of them."""
    metadata = httpx.get(f"{live_server.url}/v2/models/digits").json()["parameters"]
    assert set(metadata["onbox_latency_ms"]) == {"fp32", "int8"}
    assert all(ms > 0 for ms in metadata["onbox_latency_ms"].values())
    assert set(metadata["build_latency_ms"]) == {"fp32", "int8"}
    assert metadata["default_reason"].startswith(f"{metadata['default_version']} is the default")
    print(f"\ndigits parameters: {metadata}")

    text = httpx.get(f"{live_server.url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    onbox = {
        s.labels["version"]: s.value
        for s in families["edge_variant_onbox_latency_seconds"].samples
        if s.labels["model"] == "digits"
    }
    assert onbox == pytest.approx(
        {name: ms / 1000 for name, ms in metadata["onbox_latency_ms"].items()}, rel=1e-3
    )
    default = {
        s.labels["version"]: s.value
        for s in families["edge_variant_default"].samples
        if s.labels["model"] == "digits"
    }
    assert default == {
        name: float(name == metadata["default_version"]) for name in ("fp32", "int8")
    }
    log = live_server.log.read_text()
    assert "digits on this box: fp32 " in log and "(build machine " in log
