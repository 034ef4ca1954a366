"""build_model and the CLI on a tiny fake source: the real gate path in about a second."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

import build_models.__main__ as cli
from build_models.calibration import Feed
from build_models.evaluate import top1_agreement
from build_models.pipeline import BuildResult, build_model
from build_models.recipe import Budget, StaticRecipe
from build_models.sources import SOURCES
from build_models.sources.base import Interface, ModelSource
from service.manifest import (
    MANIFEST_FILE,
    ImagePreprocessing,
    ModelManifest,
    Sample,
    SoftmaxPostprocessing,
    TensorSpec,
)

FeedMaker = Callable[..., list[Feed]]


@pytest.fixture
def tiny_source(
    make_tiny_model: Callable[[], onnx.ModelProto], make_feeds: FeedMaker
) -> type[ModelSource]:
    """A ModelSource around the tiny MLP whose only budget no variant can meet."""

    class TinySource(ModelSource):
        name = "tiny"
        task = "image-classification"
        description = "tiny MLP for pipeline tests"
        recipes = {"int8": StaticRecipe(calibration_batch_size=16)}
        budgets = (Budget("top1", min_value=101),)

        def export_fp32(self, path: Path) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            onnx.save(make_tiny_model(), str(path))

        def calibration_feeds(self, recipe: StaticRecipe) -> list[Feed]:
            return make_feeds(count=4, batch=recipe.calibration_batch_size, seed=1)

        def evaluation_feeds(self) -> list[Feed]:
            return [{"x": f["x"] * np.float32(0.5)} for f in make_feeds(count=2, seed=2)]

        def score(self, outputs: np.ndarray, fp32_outputs: np.ndarray) -> dict[str, float]:
            return {"top1": top1_agreement(outputs, fp32_outputs)}

        def latency_feed(self, batch_size: int) -> Feed:
            return make_feeds(count=1, batch=batch_size, seed=3)[0]

        def interface(self) -> Interface:
            return Interface(
                inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
                outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 3])],
                preprocessing=ImagePreprocessing(color="L", height=2, width=2, resize="stretch"),
                postprocessing=SoftmaxPostprocessing(labels=["a", "b", "c"]),
            )

        def write_assets(self, model_dir: Path) -> list[Sample]:
            return []

    return TinySource


@pytest.fixture
def tiny_build(tiny_source: type[ModelSource], tmp_path: Path) -> tuple[BuildResult, Path]:
    out = tmp_path / "repo"
    return build_model(tiny_source(), out, lambda message: None), out


def test_failed_gate_is_reported_with_model_metric_and_numbers(
    tiny_build: tuple[BuildResult, Path],
) -> None:
    """The failure line names model/variant, metric, value, FP32 value, rule and bound."""
    result, _ = tiny_build
    assert result.failures == ["tiny/int8: top1 = 100 (fp32 100), needs top1 >= 101 = 101"]


def test_failed_variant_is_not_the_default(tiny_build: tuple[BuildResult, Path]) -> None:
    """Only passing variants may be the default; FP32 always passes."""
    manifest = tiny_build[0].manifest
    assert not manifest.variants["int8"].passed
    assert manifest.default_variant == "fp32"


def test_build_model_writes_files_but_not_the_manifest(
    tiny_build: tuple[BuildResult, Path],
) -> None:
    """build_model leaves writing model.json to the caller, after the gate."""
    result, out = tiny_build
    model_dir = out / "tiny"
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*.onnx")) == [
        "fp32/model.onnx",
        "int8/model.onnx",
    ]
    assert not (model_dir / MANIFEST_FILE).exists()
    assert json.loads(result.manifest.model_dump_json())["name"] == "tiny"


def test_build_model_replaces_a_stale_model_folder(
    tiny_source: type[ModelSource], tmp_path: Path
) -> None:
    """A rebuild starts clean: an old model.json must not survive a failing build."""
    stale = tmp_path / "tiny"
    stale.mkdir()
    (stale / MANIFEST_FILE).write_text("{}")
    build_model(tiny_source(), tmp_path, lambda message: None)
    assert not (stale / MANIFEST_FILE).exists()


def test_cli_failed_gate_exit_code_stderr_and_report(
    tiny_source: type[ModelSource],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the real CLI: exit 1, reason on stderr, no model.json, report marks the failure."""
    monkeypatch.setitem(SOURCES, "tiny", tiny_source)
    out = tmp_path / "repo"
    assert cli.main(["--out", str(out), "--models", "tiny"]) == 1
    err = capsys.readouterr().err
    assert "accuracy gate FAILED" in err
    assert "tiny/int8: top1 = 100 (fp32 100), needs top1 >= 101 = 101" in err
    assert not (out / "tiny" / MANIFEST_FILE).exists()
    table = json.loads((out / "report.json").read_text())["models"]
    assert [(r["variant"], r["gate"]) for r in table] == [("fp32", "pass"), ("int8", "failed")]
    assert "| tiny | int8 |" in (out / "report.md").read_text()


def test_cli_passing_build_writes_a_readable_manifest(
    tiny_source: type[ModelSource],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a budget the tiny model meets, the CLI writes model.json and exits 0."""
    monkeypatch.setattr(tiny_source, "budgets", (Budget("top1", max_drop=100),))
    monkeypatch.setitem(SOURCES, "tiny", tiny_source)
    out = tmp_path / "repo"
    assert cli.main(["--out", str(out), "--models", "tiny"]) == 0
    manifest = ModelManifest.read(out / "tiny")
    assert manifest.variants["int8"].passed
    assert manifest.variants["int8"].gate[0].rule == "top1 >= fp32 - 100"
