"""End to end: the digits repository built once per session by `python -m build_models`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import build_models.__main__ as cli
from build_models.pipeline import BuildResult
from build_models.plugins import digits
from service.manifest import (
    MANIFEST_FILE,
    GateCheck,
    ImagePreprocessing,
    ModelManifest,
    SoftmaxPostprocessing,
)
from service.sessions import open_session

VARIANTS = ("fp32", "int8")


@pytest.fixture(scope="module")
def model_dir(model_repository: Path) -> Path:
    return model_repository / "digits"


@pytest.fixture(scope="module")
def manifest(model_dir: Path) -> ModelManifest:
    return ModelManifest.read(model_dir)


def _qdq_nodes(path: Path) -> tuple[int, int]:
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    return ops.count("QuantizeLinear"), ops.count("DequantizeLinear")


def _preprocess(image: Image.Image, spec: ImagePreprocessing) -> np.ndarray:
    """What a client does with a sample PNG: grayscale, BOX resize, invert, scale -> NCHW."""
    gray = image.convert(spec.color).resize((spec.width, spec.height), Image.Resampling.BOX)
    pixels = np.asarray(gray, dtype=np.float32)
    if spec.invert:
        pixels = 255.0 - pixels
    return (pixels * spec.scale)[None, None].astype(np.float32)


@pytest.mark.parametrize(
    "relative",
    [MANIFEST_FILE, "fp32/model.onnx", "int8/model.onnx", "../report.json", "../report.md"],
)
def test_repository_files_exist(model_dir: Path, relative: str) -> None:
    """The layout the service and the Dockerfile expect."""
    assert (model_dir / relative).is_file()


def test_sample_pngs_exist(model_dir: Path, manifest: ModelManifest) -> None:
    """Every listed sample is shipped, and nothing unlisted."""
    listed = {sample.file for sample in manifest.samples}
    assert len(listed) == 20  # samples: 20 in configs/digits.yaml
    shipped = {f"samples/{p.name}" for p in (model_dir / "samples").glob("*.png")}
    assert shipped == listed


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_file_matches_manifest(
    model_dir: Path, manifest: ModelManifest, variant: str
) -> None:
    """The service verifies files by sha256 and reports their size from the manifest."""
    entry = manifest.variants[variant]
    path = model_dir / entry.file
    assert entry.file == f"{variant}/model.onnx"
    assert entry.precision == variant
    assert entry.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry.size_bytes == path.stat().st_size


def test_int8_is_qdq_and_fp32_is_not(model_dir: Path, manifest: ModelManifest) -> None:
    """Static QDQ quantization really happened; the recorded op counts agree with the files."""
    q, dq = _qdq_nodes(model_dir / "int8/model.onnx")
    assert q > 0 and dq > 0
    assert _qdq_nodes(model_dir / "fp32/model.onnx") == (0, 0)
    for variant in VARIANTS:
        counts = manifest.variants[variant].op_counts
        path = model_dir / manifest.variants[variant].file
        assert (counts["QuantizeLinear"], counts["DequantizeLinear"]) == _qdq_nodes(path)


def test_int8_is_at_most_035x_fp32(manifest: ModelManifest) -> None:
    """INT8 weights are a quarter of FP32; scales and zero points may add a little."""
    assert manifest.variants["int8"].size_bytes <= 0.35 * manifest.variants["fp32"].size_bytes


def test_manifest_interface(manifest: ModelManifest) -> None:
    """Task, tensor names/shapes, and pre/post-processing clients rely on."""
    assert manifest.name == "digits"
    assert manifest.task == "image-classification"
    assert [(t.name, t.datatype, t.shape) for t in manifest.inputs] == [
        ("input", "FP32", [-1, 1, 8, 8])
    ]
    assert [(t.name, t.datatype, t.shape) for t in manifest.outputs] == [
        ("logits", "FP32", [-1, 10])
    ]
    assert manifest.preprocessing == ImagePreprocessing(
        color="L", height=8, width=8, resize="stretch", invert=True, scale=0.0627450980392157
    )
    assert manifest.postprocessing == SoftmaxPostprocessing(labels=[str(d) for d in range(10)])
    assert {sample.label for sample in manifest.samples} <= set(manifest.postprocessing.labels)


def test_manifest_build_info(manifest: ModelManifest) -> None:
    """Rebuilds are reproducible only if the seed and the split are recorded."""
    build = manifest.build
    assert build["seed"] == digits.SEED
    assert build["split"] == {
        "train": 1797 - digits.TEST_SIZE - digits.CALIBRATION_SIZE,
        "calibration": digits.CALIBRATION_SIZE,
        "test": digits.TEST_SIZE,
    }
    assert {"onnxruntime", "onnx", "machine", "latency", "seconds", "inputs_sha256"} <= set(build)
    assert [c["name"] for c in build["candidates"]] == ["u8s8-per-channel"]


def test_default_variant_passes(manifest: ModelManifest) -> None:
    """The service serves the default when no version is given: it must pass its gate."""
    assert manifest.default_variant in manifest.variants
    assert manifest.variants[manifest.default_variant].passed


def test_recipes_recorded(manifest: ModelManifest) -> None:
    """FP32 has no recipe; INT8 records the static recipe it was built with."""
    assert manifest.variants["fp32"].quantization is None
    recipe = manifest.variants["int8"].quantization
    assert recipe is not None
    assert recipe["name"] == "u8s8-per-channel" and recipe["method"] == "static"
    assert (recipe["activation_type"], recipe["weight_type"]) == ("QUInt8", "QInt8")
    assert recipe["per_channel"] is True and recipe["calibrate_method"] == "MinMax"
    assert recipe["nodes_excluded"] == []


def test_int8_gate_passed_and_top1_close_to_fp32(manifest: ModelManifest) -> None:
    """Every INT8 gate check passed and top-1 is within half a point of FP32."""
    fp32, int8 = manifest.variants["fp32"], manifest.variants["int8"]
    assert fp32.gate == []
    assert int8.gate and all(check.passed for check in int8.gate)
    assert [check.metric for check in int8.gate] == ["top1"]  # configs/digits.yaml
    assert abs(int8.accuracy["top1"] - fp32.accuracy["top1"]) <= 0.5
    assert fp32.accuracy["top1_agreement"] == 100.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_latency_recorded(manifest: ModelManifest, variant: str) -> None:
    """Both batch sizes are timed for every variant (values only need to be positive)."""
    latency = manifest.variants[variant].latency_ms
    assert set(latency) == {"batch_1", "batch_8"}
    assert all(ms > 0 for ms in latency.values())


@pytest.fixture(scope="module")
def sample_batch(model_dir: Path, manifest: ModelManifest) -> tuple[np.ndarray, np.ndarray]:
    """All sample PNGs preprocessed as a client would, with their labels."""
    assert isinstance(manifest.preprocessing, ImagePreprocessing)
    inputs, labels = [], []
    for sample in manifest.samples:
        assert sample.file is not None and sample.label is not None  # image samples
        inputs.append(_preprocess(Image.open(model_dir / sample.file), manifest.preprocessing))
        labels.append(int(sample.label))
    return np.concatenate(inputs), np.array(labels)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_runs_on_one_sample(
    model_dir: Path,
    manifest: ModelManifest,
    sample_batch: tuple[np.ndarray, np.ndarray],
    variant: str,
) -> None:
    """Each file opens in ORT and maps one [1,1,8,8] image to [1,10] logits."""
    session = open_session(model_dir / manifest.variants[variant].file)
    (logits,) = session.run(["logits"], {"input": sample_batch[0][:1]})
    assert logits.shape == (1, 10)
    assert np.isfinite(logits).all()


def test_samples_round_trip_to_their_labels(
    model_dir: Path, sample_batch: tuple[np.ndarray, np.ndarray]
) -> None:
    """The PNGs plus the manifest's preprocessing reproduce inputs FP32 classifies correctly."""
    inputs, labels = sample_batch
    assert inputs.shape == (len(labels), 1, 8, 8)
    assert 0.0 <= inputs.min() and inputs.max() <= 16.0
    (logits,) = open_session(model_dir / "fp32/model.onnx").run(["logits"], {"input": inputs})
    assert np.mean(logits.argmax(-1) == labels) >= 0.95


def test_report_has_a_row_per_variant(model_repository: Path, manifest: ModelManifest) -> None:
    """report.md and report.json list every variant with its gate result."""
    lines = (model_repository / "report.md").read_text().splitlines()
    rows = [line for line in lines if line.startswith("| digits |")]
    assert len(rows) == len(VARIANTS)
    for variant in VARIANTS:
        assert sum(f"| {variant} |" in row or f"**{variant}**" in row for row in rows) == 1
    table = json.loads((model_repository / "report.json").read_text())["models"]
    assert [(r["model"], r["variant"], r["gate"]) for r in table] == [
        ("digits", variant, "pass") for variant in VARIANTS
    ]
    assert [r["variant"] for r in table if r["default"]] == [manifest.default_variant]


def _no_build(*args: object, **kwargs: object) -> BuildResult:
    raise AssertionError("the CLI must not build anything here")


@pytest.mark.parametrize("models", ["nope", "digits,nope"])
def test_cli_rejects_unknown_models_before_building(
    models: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo is a usage error (exit 2), caught before any slow build starts."""
    monkeypatch.setattr(cli, "build_model", _no_build)
    assert cli.main(["--out", str(tmp_path / "out"), "--models", models]) == 2
    assert "unknown built-in model(s) nope" in capsys.readouterr().err


def test_cli_gate_failure_exits_1_without_writing_model_json(
    manifest: ModelManifest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A failed gate keeps model.json out of the repository and says why on stderr."""
    failing = GateCheck(
        metric="top1", value=97.5, reference=99.44, bound=101.0, passed=False, rule="top1 >= 101"
    )
    int8 = manifest.variants["int8"].model_copy(update={"gate": [failing]})
    failed = manifest.model_copy(
        update={"default_variant": "fp32", "variants": {**manifest.variants, "int8": int8}}
    )
    message = "digits/int8: top1 = 97.5 (fp32 99.44), needs top1 >= 101 = 101"
    monkeypatch.setattr(cli, "build_model", lambda *a: BuildResult(failed, [message]))

    out = tmp_path / "fresh"
    assert cli.main(["--out", str(out), "--models", "digits"]) == 1

    err = capsys.readouterr().err
    assert "build FAILED" in err
    for part in ("digits/int8", "top1", "97.5", "99.44", "101"):
        assert part in err
    assert not (out / "digits" / MANIFEST_FILE).exists()
    assert list(out.glob(f"*/{MANIFEST_FILE}")) == []
    table = json.loads((out / "report.json").read_text())["models"]
    assert {(r["variant"], r["gate"]) for r in table} == {("fp32", "pass"), ("int8", "failed")}
