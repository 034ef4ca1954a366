"""The build CLI on models a user brings: tensor tasks, fallback, speed rule, atomicity."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import build_models.__main__ as cli
from build_models import pipeline
from build_models.search import default_variant
from service.manifest import MANIFEST_FILE, ModelManifest, file_sha256
from service.sessions import open_session
from tests.build_models.rigs import tensor_project

FALLBACK = {
    "budget": {"metric": "top1_agreement", "min_value": 97},
    "quantization": {
        "fallback": {"step": 1},
        "candidates": [{"name": "u8s8-per-tensor", "per_channel": False}],
    },
}


@pytest.fixture(scope="module")
def fallback_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The dead-unit MLP built once: its first recipe misses the budget."""
    root = tmp_path_factory.mktemp("fallback")
    config = tensor_project(root / "project", **FALLBACK)
    out = root / "repo"
    assert cli.main(["--config", str(config), "--out", str(out)]) == 0
    return config, out


def test_tensor_model_with_int32_input_from_npz(tmp_path: Path) -> None:
    """INT32 input, tensors from .npz, served as a v2-only model with .npz samples."""
    config = tensor_project(tmp_path / "counts", model="int32_counts")
    out = tmp_path / "repo"
    assert cli.main(["--config", str(config), "--out", str(out)]) == 0
    manifest = ModelManifest.read(out / "int32-counts")
    assert manifest.task == "tensor"
    assert manifest.preprocessing is None and manifest.postprocessing is None
    assert [(s.name, s.datatype, s.shape) for s in manifest.inputs] == [
        ("counts", "INT32", [-1, 6])
    ]
    assert set(manifest.variants) == {"fp32", "int8"}
    # No labels: the gate compares with FP32 (2-D scores -> top-1 agreement).
    assert [c.metric for c in manifest.variants["int8"].gate] == ["top1_agreement"]
    assert manifest.variants["int8"].op_counts["QuantizeLinear"] > 0
    sample = manifest.samples[0]
    assert sample.tensors is not None
    with np.load(out / "int32-counts" / sample.tensors) as arrays:
        feed = {"counts": arrays["counts"]}
    assert feed["counts"].dtype == np.int32 and feed["counts"].shape == (1, 6)
    for variant in manifest.variants.values():
        (scores,) = open_session(out / "int32-counts" / variant.file).run(None, feed)
        assert scores.shape == (1, 3)


def test_fallback_moves_the_worst_node_to_fp32(fallback_build: tuple[Path, Path]) -> None:
    """The first recipe misses, and so does its 7-bit-weight retry; qdq_loss_debug's ranking
    puts fc1 back in FP32; then it passes."""
    _, out = fallback_build
    manifest = ModelManifest.read(out / "dead-unit")
    candidates = manifest.build["candidates"]
    assert [(c["name"], c["gate"]) for c in candidates] == [
        ("u8s8-per-tensor", "failed"),
        ("u8s8-per-tensor-reduce-range", "failed"),
        ("u8s8-per-tensor-reduce-range", "pass"),
    ]
    assert candidates[1]["note"] == "7-bit weights, as ORT advises"
    assert (
        candidates[1]["accuracy"]["top1_agreement"]
        < 97
        <= candidates[2]["accuracy"]["top1_agreement"]
    )
    assert candidates[2]["chosen"]
    assert candidates[2]["note"].startswith("fallback: 1 node(s) FP32; kept: the fastest of 1")
    int8 = manifest.variants["int8"]
    assert int8.passed and int8.quantization is not None
    assert int8.quantization["nodes_excluded"] == ["fc1"]
    assert int8.op_counts["QuantizeLinear"] > 0  # fc0 and fc2 are still INT8
    report = (out / "report.md").read_text()
    assert "## dead-unit: candidates tried" in report
    assert "fallback: 1 node(s) FP32" in report


def test_default_reason_is_recorded(fallback_build: tuple[Path, Path]) -> None:
    """model.json and the report say in one sentence why the default won, with the numbers."""
    _, out = fallback_build
    manifest = ModelManifest.read(out / "dead-unit")
    assert manifest.default_reason.startswith(f"{manifest.default_variant} is the default")
    assert " ms" in manifest.default_reason
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] is True and report["defaults"]["dead-unit"] == manifest.default_reason


@pytest.mark.parametrize(
    ("latency", "passing", "default", "words"),
    [
        ({"fp32": 1.0, "int8": 1.2}, ["fp32", "int8"], "fp32", "no INT8 variant"),
        ({"fp32": 1.0, "int8": 0.97}, ["fp32", "int8"], "fp32", "over 5% faster"),
        ({"fp32": 1.0, "int8": 0.5}, ["fp32", "int8"], "int8", "2.00x faster"),
        ({"fp32": 1.0, "int8": 0.5}, ["fp32"], "fp32", "no INT8 variant"),
        ({"fp32": 1.0, "int8": 0.6, "int8-dynamic": 0.4}, ["fp32", "int8", "int8-dynamic"],
         "int8-dynamic", "int8-dynamic is the default"),
    ],
)  # fmt: skip
def test_speed_rule(
    latency: dict[str, float], passing: list[str], default: str, words: str
) -> None:
    """The fastest passing variant wins; INT8 slower than (or tied with) FP32 leaves FP32."""
    chosen, reason = default_variant(latency, passing)
    assert chosen == default
    assert words in reason


def test_unchanged_model_is_not_rebuilt(
    fallback_build: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Same config, files and code: the build says so and leaves the folder alone."""
    config, out = fallback_build
    before = file_sha256(out / "dead-unit" / MANIFEST_FILE)
    capsys.readouterr()
    assert cli.main(["--config", str(config), "--out", str(out)]) == 0
    assert "[dead-unit] unchanged" in capsys.readouterr().out
    assert file_sha256(out / "dead-unit" / MANIFEST_FILE) == before


def test_failed_gate_keeps_the_previous_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rebuild whose gate fails exits 1, leaves the old model in place, and the report says so."""
    config = tensor_project(tmp_path / "project", model="int32_counts")
    out = tmp_path / "repo"
    assert cli.main(["--config", str(config), "--out", str(out)]) == 0
    model_dir = out / "int32-counts"
    files = {p.relative_to(model_dir): file_sha256(p) for p in model_dir.rglob("*") if p.is_file()}

    tensor_project(
        tmp_path / "project",
        model="int32_counts",
        budget={"metric": "top1_agreement", "min_value": 101},
        quantization={"fallback": {"enabled": False}},
    )
    assert cli.main(["--config", str(config), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "int32-counts/int8: top1_agreement" in err and "needs top1_agreement >= 101" in err
    after = {p.relative_to(model_dir): file_sha256(p) for p in model_dir.rglob("*") if p.is_file()}
    assert after == files
    assert not list(out.glob(".staging-*")) and not list(out.glob(".old-*"))
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] is False and report["failed"]
    assert "**Build failed**" in (out / "report.md").read_text()


def test_variant_from_a_file_is_gated_timed_and_served(tmp_path: Path) -> None:
    """A variant quantized elsewhere (here: a previous build's INT8 file) sits beside the rest."""
    config = tensor_project(tmp_path / "project", model="int32_counts")
    first = tmp_path / "first"
    assert cli.main(["--config", str(config), "--out", str(first)]) == 0
    shutil.copyfile(first / "int32-counts" / "int8" / "model.onnx", config.parent / "qat.onnx")
    tensor_project(
        tmp_path / "project", model="int32_counts", variants={"int8-qat": {"onnx": "qat.onnx"}}
    )
    out = tmp_path / "repo"
    assert cli.main(["--config", str(config), "--out", str(out)]) == 0
    manifest = ModelManifest.read(out / "int32-counts")
    qat = manifest.variants["int8-qat"]
    assert qat.quantization == {"method": "provided"}
    assert qat.passed and [c.metric for c in qat.gate] == ["top1_agreement"]
    assert set(qat.latency_ms) == {"batch_1", "batch_8"}
    assert qat.sha256 == file_sha256(config.parent / "qat.onnx")
    assert "| int32-counts | int8-qat |" in (out / "report.md").read_text()


def test_old_opset_is_upgraded_before_per_channel_quantization(tmp_path: Path) -> None:
    """Per-channel INT8 of an opset 11 file would not load; the build upgrades it first."""
    config = tensor_project(tmp_path / "old", model="int32_counts", opset=11)
    out = tmp_path / "repo"
    assert cli.main(["--config", str(config), "--out", str(out)]) == 0
    manifest = ModelManifest.read(out / "int32-counts")
    assert (manifest.build["opset"], manifest.build["opset_upgraded_to"]) == (11, 17)
    # Every candidate's file was loaded to be scored, the per-channel one among them.
    tried = {c["name"]: c["gate"] for c in manifest.build["candidates"]}
    assert tried["u8s8-per-channel"] == "pass"
    open_session(out / "int32-counts" / manifest.variants["int8"].file)


def test_regressor_is_gated_on_r2_and_a_miscalibration_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One value per row: top-1 and cosine cannot fail there, R² against FP32 can. Calibration
    data at a tenth of the real range clips INT8's activations, and the gate says so."""
    one_recipe = {"candidates": [{"name": "u8s8", "reduce_range": True}]}
    config = tensor_project(
        tmp_path / "good", model="int32_counts", classes=1, quantization=one_recipe
    )
    out = tmp_path / "repo"
    assert cli.main(["--config", str(config), "--out", str(out)]) == 0
    int8 = ModelManifest.read(out / "int32-counts").variants["int8"]
    assert [(c.metric, c.rule) for c in int8.gate] == [("r2_agreement", "r2_agreement >= 99")]

    config = tensor_project(
        tmp_path / "bad",
        model="int32_counts",
        classes=1,
        calibration_scale=10,
        quantization={**one_recipe, "fallback": {"enabled": False}},
    )
    assert cli.main(["--config", str(config), "--out", str(tmp_path / "bad-repo")]) == 1
    assert "int32-counts/int8: r2_agreement = " in capsys.readouterr().err


def test_tensor_classifier_with_labels_is_gated_on_the_truth(tmp_path: Path) -> None:
    """Labels in the config and a labels array in eval.npz: top-1 against the truth, and the
    served output names its classes; a graph ending in Softmax is known to give probabilities."""
    config = tensor_project(
        tmp_path / "project",
        model="int32_counts",
        softmax=True,
        truth=["low", "mid", "high"],
        labels=["low", "mid", "high"],
    )
    out = tmp_path / "repo"
    assert cli.main(["--config", str(config), "--out", str(out)]) == 0
    manifest = ModelManifest.read(out / "int32-counts")
    assert [c.metric for c in manifest.variants["int8"].gate] == ["top1"]
    assert manifest.postprocessing is not None
    assert manifest.postprocessing.model_dump() == {
        "kind": "softmax",
        "labels": ["low", "mid", "high"],
        "scores": "probabilities",
    }


def test_one_models_bad_data_does_not_stop_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows of the wrong shape are named before ORT sees them; the other config still builds."""
    good = tensor_project(tmp_path / "good", model="int32_counts")
    bad = tensor_project(tmp_path / "bad", name="wrong-rows")
    np.savez(bad.parent / "calib.npz", x=np.zeros((64, 7), np.float32))
    out = tmp_path / "repo"
    assert cli.main(["--config", str(bad), "--config", str(good), "--out", str(out)]) == 1
    assert (
        "wrong-rows: array 'x' has rows of shape [7]; the model's input 'x' is [-1, 8]"
        in capsys.readouterr().err
    )
    assert ModelManifest.read(out / "int32-counts").variants["int8"].passed


def test_model_json_of_another_schema_is_rebuilt(tmp_path: Path) -> None:
    """An older model.json in the output folder is rebuilt, not trusted or crashed on."""
    config = tensor_project(tmp_path / "project", model="int32_counts")
    out = tmp_path / "repo"
    assert cli.main(["--config", str(config), "--out", str(out)]) == 0
    path = out / "int32-counts" / MANIFEST_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": 1}))
    assert cli.main(["--config", str(config), "--out", str(out)]) == 0
    assert ModelManifest.read(out / "int32-counts").schema_version == 2


def test_the_rebuild_digest_covers_every_service_module_the_build_imports() -> None:
    """A change in service code the build runs (gate metrics, session options) rebuilds."""
    root = Path(pipeline.__file__).parent
    imported = {
        node.module.split(".")[1]
        for path in root.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service.")
    }
    assert imported == set(pipeline.SERVICE_MODULES)
