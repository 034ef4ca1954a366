"""Build one model: export FP32, quantize each variant, evaluate against FP32, gate, write."""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort

from build_models.calibration import FeedReader
from build_models.evaluate import first_output, interleaved_latency_ms, op_counts
from build_models.quantize import quantize_dynamic_int8, quantize_static_qdq
from build_models.recipe import Budget, StaticRecipe
from build_models.sources.base import ModelSource
from service.manifest import GateCheck, ModelManifest, Variant, file_sha256
from service.sessions import open_session

FP32 = "fp32"
LATENCY_BATCHES = (1, 8)
LATENCY_RUNS = 50

Log = Callable[[str], None]


@dataclass
class BuildResult:
    """A built model's manifest, and the gate failures that keep it out of the repository."""

    manifest: ModelManifest
    failures: list[str] = field(default_factory=list)


def gate(
    variant: str, budgets: tuple[Budget, ...], accuracy: dict[str, dict[str, float]]
) -> list[GateCheck]:
    """Check one variant's accuracy against its budgets (FP32 is the reference)."""
    checks = []
    for budget in budgets:
        value = accuracy[variant][budget.metric]
        reference = accuracy[FP32].get(budget.metric)
        bound = budget.bound(reference)
        checks.append(
            GateCheck(
                metric=budget.metric,
                value=value,
                reference=reference,
                bound=bound,
                passed=value >= bound,
                rule=budget.rule(),
            )
        )
    return checks


def build_model(source: ModelSource, out_dir: Path, log: Log) -> BuildResult:
    """Run every build step for one model into out_dir/<name>; the manifest is not yet written."""
    started = time.perf_counter()
    model_dir = out_dir / source.name
    shutil.rmtree(model_dir, ignore_errors=True)
    paths = {FP32: model_dir / FP32 / "model.onnx"}

    log(f"[{source.name}] training / exporting FP32")
    source.export_fp32(paths[FP32])
    onnx.checker.check_model(str(paths[FP32]))

    recipes: dict[str, dict[str, object] | None] = {FP32: None}
    for variant, recipe in source.recipes.items():
        paths[variant] = model_dir / variant / "model.onnx"
        log(f"[{source.name}] quantizing {variant} ({recipe.method})")
        if isinstance(recipe, StaticRecipe):
            reader = FeedReader(source.calibration_feeds(recipe))
            recipes[variant] = quantize_static_qdq(paths[FP32], paths[variant], recipe, reader)
        else:
            recipes[variant] = quantize_dynamic_int8(paths[FP32], paths[variant], recipe)

    log(f"[{source.name}] evaluating {', '.join(paths)} on held-out data")
    sessions = {variant: open_session(path) for variant, path in paths.items()}
    feeds = source.evaluation_feeds()
    outputs = {variant: first_output(session, feeds) for variant, session in sessions.items()}
    accuracy = {variant: source.score(out, outputs[FP32]) for variant, out in outputs.items()}

    latency: dict[str, dict[str, float]] = {variant: {} for variant in paths}
    for batch in LATENCY_BATCHES:
        log(f"[{source.name}] timing batch {batch} ({LATENCY_RUNS} interleaved runs)")
        medians = interleaved_latency_ms(sessions, source.latency_feed(batch), LATENCY_RUNS)
        for variant, median in medians.items():
            latency[variant][f"batch_{batch}"] = round(median, 4)

    variants = {
        variant: Variant(
            precision=variant,
            file=str(path.relative_to(model_dir)),
            sha256=file_sha256(path),
            size_bytes=path.stat().st_size,
            quantization=recipes[variant],
            op_counts=op_counts(path),
            accuracy={k: round(v, 6) for k, v in accuracy[variant].items()},
            latency_ms=latency[variant],
            gate=[] if variant == FP32 else gate(variant, source.budgets, accuracy),
        )
        for variant, path in paths.items()
    }
    passing = [name for name, v in variants.items() if v.passed]
    interface = source.interface()
    manifest = ModelManifest(
        name=source.name,
        task=source.task,
        description=source.description,
        # The fastest variant that passes its accuracy budget (FP32 always passes).
        default_variant=min(passing, key=lambda name: latency[name]["batch_1"]),
        inputs=interface.inputs,
        outputs=interface.outputs,
        preprocessing=interface.preprocessing,
        postprocessing=interface.postprocessing,
        samples=source.write_assets(model_dir),
        build={
            **source.build_info(),
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "machine": platform.machine(),
            "latency": f"median of {LATENCY_RUNS} interleaved runs, 1 intra-op thread",
            "seconds": round(time.perf_counter() - started, 1),
        },
        variants=variants,
    )
    failures = [
        f"{source.name}/{name}: {check.metric} = {check.value:.4g} "
        f"(fp32 {check.reference if check.reference is None else f'{check.reference:.4g}'}), "
        f"needs {check.rule} = {check.bound:.4g}"
        for name, variant in variants.items()
        for check in variant.gate
        if not check.passed
    ]
    log(f"[{source.name}] done in {manifest.build['seconds']} s")
    return BuildResult(manifest, failures)
