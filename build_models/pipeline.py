"""Build one model from its config: FP32 source, search, gate, time, write; atomic, incremental."""

from __future__ import annotations

import hashlib
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter

from build_models.calibration import Feed
from build_models.config import ModelConfig, OnnxSource, PluginSource, referenced_files
from build_models.data import Dataset, load_dataset
from build_models.evaluate import first_output, interleaved_latency_ms, op_counts
from build_models.plugins import SourceOutput, source_plugin
from build_models.search import (
    FP32,
    Candidate,
    Search,
    default_variant,
    dynamic_recipe,
    gate,
)
from build_models.tasks import TaskAdapter
from service.manifest import ModelManifest, Variant, file_sha256
from service.sessions import open_session

LATENCY_BATCHES = (1, 8)
LATENCY_RUNS = 50
MIN_OPSET = 13
"""Per-channel DequantizeLinear needs opset 13; older files are upgraded to UPGRADE_OPSET."""
UPGRADE_OPSET = 17
EVALUATION_BATCH = 32
HELD_OUT_SHARE = 4
"""With no evaluation data, every HELD_OUT_SHARE-th calibration item is held out instead."""

Log = Callable[[str], None]


@dataclass
class BuildResult:
    """A model's manifest (written or not), its candidates, and why it failed, if it did."""

    manifest: ModelManifest | None
    failures: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    skipped: bool = False


SERVICE_MODULES = ("agreement", "manifest", "onbox", "processing", "protocol", "sessions", "specs")
"""The service modules the build imports: their code decides what a build makes, so it counts."""


def inputs_digest(config_path: Path, config: ModelConfig, base: Path) -> str:
    """sha256 over the config, every file it names, and the build code: unchanged -> no rebuild."""
    digest = hashlib.sha256(config_path.read_bytes())
    code = sorted(Path(__file__).parent.rglob("*.py"))
    code += [Path(__file__).parents[1] / "service" / f"{n}.py" for n in SERVICE_MODULES]
    files = [base / p for p in referenced_files(config)]
    for path in [*code, *files]:
        for item in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if item.is_file():
                digest.update(item.as_posix().encode())
                digest.update(file_sha256(item).encode())
    digest.update(ort.__version__.encode())
    return digest.hexdigest()


def build_model(
    config_path: Path, config: ModelConfig, base: Path, out_dir: Path, log: Log, force: bool
) -> BuildResult:
    """Build into a scratch folder; swap it in only when every gate passes."""
    target = out_dir / config.name
    digest = inputs_digest(config_path, config, base)
    existing = _readable_manifest(target) if not force else None
    if existing is not None:
        if existing.build.get("inputs_sha256") == digest:
            log(f"[{config.name}] unchanged (config, files and build code): not rebuilt")
            return BuildResult(existing, skipped=True)
    staging = out_dir / f".staging-{config.name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        result = _build(config, base, staging, log, digest)
        if result.failures:
            log(f"[{config.name}] gate failed: the model already in {target} (if any) stays")
        else:
            _swap_in(staging, target)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _readable_manifest(model_dir: Path) -> ModelManifest | None:
    """The model.json already built there, or None when absent or of another schema version."""
    try:
        return ModelManifest.read(model_dir)
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def _swap_in(staging: Path, target: Path) -> None:
    """Replace the model folder with two renames, so a reader never sees half a model."""
    old = target.with_name(f".old-{target.name}")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _build(config: ModelConfig, base: Path, model_dir: Path, log: Log, digest: str) -> BuildResult:
    started = time.perf_counter()
    name = config.name
    fp32_path = model_dir / FP32 / "model.onnx"
    log(f"[{name}] FP32 model from {_describe_source(config)}")
    produced = _fp32(config, base, fp32_path)
    adapter = TaskAdapter.create(config, base, fp32_path, produced.assets)

    calibration, evaluation, data_note = _data(config, base)
    log(f"[{name}] data: {len(calibration)} calibration, {len(evaluation)} evaluation items")
    calibration_feeds = adapter.feeds(calibration, config.calibration.batch_size)
    evaluation_feeds = adapter.feeds(evaluation, EVALUATION_BATCH)
    reference = first_output(open_session(fp32_path), evaluation_feeds)
    truth = evaluation.truth

    def score(outputs: np.ndarray) -> dict[str, float]:
        return adapter.score(outputs, reference, truth)

    fp32_accuracy = score(reference)
    budgets = config.budgets or adapter.default_budgets(truth is not None)
    gate(fp32_accuracy, fp32_accuracy, budgets)  # a metric this model lacks fails here, early
    if len(adapter.outputs) > 1:
        log(
            f"[{name}] the gate scores the first output, {adapter.outputs[0].name!r}; "
            f"the other {len(adapter.outputs) - 1} are served but not scored"
        )
    latency_feeds = {b: _latency_feed(adapter, evaluation, b) for b in _batches(adapter)}
    search = Search(
        fp32_path=fp32_path,
        workdir=model_dir / ".search",
        calibration=calibration_feeds,
        evaluation=evaluation_feeds,
        score=score,
        reference=fp32_accuracy,
        budgets=budgets,
        latency_feeds=latency_feeds,
        log=lambda line: log(f"[{name}] {line}"),
    )
    log(f"[{name}] searching INT8 recipes (budget: {', '.join(b.metric for b in budgets)})")
    chosen = [c for c in [search.static(config.quantization)] if c is not None]
    if config.quantization.allow_dynamic:
        chosen.append(search.dynamic(dynamic_recipe(config.quantization.dynamic)))
    chosen.extend(search.provided(variant, base / f.onnx) for variant, f in config.variants.items())

    paths = {FP32: fp32_path}
    for candidate in chosen:
        paths[candidate.variant] = model_dir / candidate.variant / "model.onnx"
        paths[candidate.variant].parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(candidate.path, paths[candidate.variant])
    shutil.rmtree(model_dir / ".search", ignore_errors=True)

    latency = _final_latency(paths, latency_feeds, log, name)
    by_variant = {c.variant: c for c in chosen}
    variants = {
        variant: Variant(
            precision=variant,
            file=str(path.relative_to(model_dir)),
            sha256=file_sha256(path),
            size_bytes=path.stat().st_size,
            quantization=by_variant[variant].quantization if variant in by_variant else None,
            op_counts=op_counts(path),
            accuracy={
                k: round(v, 6)
                for k, v in (
                    by_variant[variant].accuracy if variant in by_variant else fp32_accuracy
                ).items()
            },
            latency_ms=latency[variant],
            gate=by_variant[variant].gate if variant in by_variant else [],
        )
        for variant, path in paths.items()
    }
    passing = [v for v, variant in variants.items() if variant.passed]
    default, reason = default_variant({v: lat["batch_1"] for v, lat in latency.items()}, passing)
    log(f"[{name}] {reason}")
    adapter.write_assets(model_dir)
    manifest = ModelManifest(
        name=name,
        task=config.task,
        description=config.description or f"{name} ({config.task})",
        default_variant=default,
        default_reason=reason,
        inputs=adapter.inputs,
        outputs=adapter.outputs,
        preprocessing=adapter.preprocessing(),
        postprocessing=adapter.postprocessing(),
        samples=adapter.write_samples(evaluation, model_dir, config.samples),
        build={
            **produced.info,
            "data": data_note,
            "candidates": [c.summary() for c in search.tried],
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "machine": platform.machine(),
            "latency": f"median of {LATENCY_RUNS} interleaved runs, 1 intra-op thread",
            "seconds": round(time.perf_counter() - started, 1),
            "inputs_sha256": digest,
        },
        variants=variants,
    )
    failures = [
        f"{name}/{variant_name}: {check.metric} = {check.value:.6g} "
        f"(fp32 {check.reference if check.reference is None else f'{check.reference:.6g}'}), "
        f"needs {check.rule} = {check.bound:.6g}"
        for variant_name, variant in variants.items()
        for check in variant.gate
        if not check.passed
    ]
    if not failures:
        manifest.write(model_dir)
    log(f"[{name}] done in {manifest.build['seconds']} s")
    return BuildResult(manifest, failures, search.tried)


def _describe_source(config: ModelConfig) -> str:
    if isinstance(config.source, PluginSource):
        return f"source plugin {config.source.plugin!r}"
    return str(config.source.onnx)


def _fp32(config: ModelConfig, base: Path, out: Path) -> SourceOutput:
    """Write the FP32 file: the user's ONNX (opset upgraded if needed), or a plugin's output."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(config.source, PluginSource):
        produced = source_plugin(config.source.plugin)(out, **config.source.options)
    else:
        assert isinstance(config.source, OnnxSource)
        model = onnx.load(str(base / config.source.onnx))
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        info: dict[str, object] = {"source": config.source.onnx.name, "opset": opset}
        if opset < MIN_OPSET:
            metadata = {p.key: p.value for p in model.metadata_props}
            model = version_converter.convert_version(model, UPGRADE_OPSET)
            onnx.helper.set_model_props(model, metadata)
            info["opset_upgraded_to"] = UPGRADE_OPSET
        onnx.save(model, str(out))
        produced = SourceOutput(info=info)
    onnx.checker.check_model(str(out))
    open_session(out)  # fails here, with ORT's reason, if the file will not load
    return produced


def _data(config: ModelConfig, base: Path) -> tuple[Dataset, Dataset, dict[str, str]]:
    """Calibration and evaluation sets; without evaluation data, a held-out calibration share."""
    calibration = load_dataset(config.calibration, base)
    if config.evaluation is not None:
        evaluation = load_dataset(config.evaluation, base)
        return calibration, evaluation, {"evaluation": "held-out data from the config"}
    held = [i for i in range(len(calibration)) if i % HELD_OUT_SHARE == HELD_OUT_SHARE - 1]
    kept = [i for i in range(len(calibration)) if i % HELD_OUT_SHARE != HELD_OUT_SHARE - 1]
    if not held or not kept:
        raise ValueError("no evaluation data, and too little calibration data to hold some out")
    return (
        calibration.select(kept),
        calibration.select(held),
        {"evaluation": f"every {HELD_OUT_SHARE}th calibration item, held out of calibration"},
    )


def _batches(adapter: TaskAdapter) -> tuple[int, ...]:
    return LATENCY_BATCHES if adapter.dynamic_batch else (1,)


def _latency_feed(adapter: TaskAdapter, evaluation: Dataset, batch: int) -> Feed:
    """The first `batch` evaluation items (cycled if there are fewer), encoded as one feed."""
    items = evaluation.select([i % len(evaluation) for i in range(batch)])
    return adapter.feeds(items, batch)[0]


def _final_latency(
    paths: dict[str, Path], feeds: dict[int, Feed], log: Log, name: str
) -> dict[str, dict[str, float]]:
    """Every kept variant timed in one interleaved run per batch size."""
    sessions = {variant: open_session(path) for variant, path in paths.items()}
    latency: dict[str, dict[str, float]] = {variant: {} for variant in paths}
    for batch, feed in feeds.items():
        log(f"[{name}] timing batch {batch} ({LATENCY_RUNS} interleaved runs)")
        for variant, median in interleaved_latency_ms(sessions, feed, LATENCY_RUNS).items():
            latency[variant][f"batch_{batch}"] = round(median, 4)
    return latency
