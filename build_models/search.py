"""The search for the INT8 variant to ship: recipes for this CPU, accuracy-aware fallback, speed.

Every candidate is quantized, scored on held-out data against the budget, and timed
interleaved against FP32 in the same run. A candidate that misses the budget moves its
worst nodes (by qdq_loss_debug's per-tensor error) back to FP32 a few at a time until it
passes. Among those that pass, the fastest relative to FP32 wins.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from build_models.calibration import Feed, FeedReader
from build_models.config import BudgetConfig, DynamicConfig, QuantizationConfig, RecipeConfig
from build_models.evaluate import first_output, interleaved_latency_ms
from build_models.metrics import METRICS
from build_models.plugins import edit_plugin, rule_plugin
from build_models.quantize import preprocess, quantize_dynamic_int8, quantize_static_qdq
from build_models.recipe import Budget, DynamicRecipe, StaticRecipe
from service.manifest import GateCheck
from service.onbox import FP32, TIE_MARGIN, fastest_passing
from service.sessions import open_session

SEARCH_RUNS = {1: 30, 8: 15}
"""Interleaved runs per batch size when timing a candidate against FP32."""
RANK_BATCHES = 4
"""Calibration batches run through both graphs to rank nodes by quantization error."""

Log = Callable[[str], None]
Scorer = Callable[[np.ndarray], dict[str, float]]


def default_candidates() -> list[RecipeConfig]:
    """A small grid chosen for CPUs: U8 activations / S8 weights (fast on VNNI and ARM dot)."""
    return [
        RecipeConfig(name="u8s8-per-channel"),
        RecipeConfig(name="u8s8-conv-matmul", op_types_to_quantize=["Conv", "MatMul", "Gemm"]),
        RecipeConfig(name="u8s8-per-tensor", per_channel=False),
    ]


def may_saturate(recipe: StaticRecipe) -> bool:
    """U8 x S8 with 8-bit weights: x86 without VNNI can saturate (ORT's quantization docs).

    Its cure, reduce_range (7-bit weights), costs no speed; it is tried before the fallback
    moves nodes to FP32, which does.
    """
    u8s8 = recipe.activation_type == "QUInt8" and recipe.weight_type == "QInt8"
    return u8s8 and not recipe.reduce_range


def calibration_stride(batches: int, most: int = 4) -> int:
    """The largest stride <= most that divides the batch count (ORT's strided calibration)."""
    return next(k for k in range(min(most, batches), 0, -1) if batches % k == 0)


def static_recipe(config: RecipeConfig, batches: int) -> StaticRecipe:
    """A config's recipe with its named graph rule and edit resolved to plugins."""
    return StaticRecipe(
        name=config.name,
        calibrate_method=config.calibrate_method,
        activation_type=config.activation_type,
        weight_type=config.weight_type,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        activation_symmetric=config.activation_symmetric,
        weight_symmetric=config.weight_symmetric,
        op_types_to_quantize=tuple(config.op_types_to_quantize or ()) or None,
        exclude_op_types=tuple(config.exclude_op_types),
        exclude_name_patterns=tuple(config.exclude_name_patterns),
        exclude_rule=rule_plugin(config.exclude_rule) if config.exclude_rule else None,
        post_quantize=edit_plugin(config.post_quantize) if config.post_quantize else None,
        # Strided calibration bounds memory: a few batches' activations at a time.
        extra_options={"CalibStridedMinMax": calibration_stride(batches), **config.extra_options},
        skip_symbolic_shape=config.skip_symbolic_shape,
    )


def dynamic_recipe(config: DynamicConfig) -> DynamicRecipe:
    """The config's quantize_dynamic recipe."""
    return DynamicRecipe(
        name="dynamic-per-channel" if config.per_channel else "dynamic",
        weight_type=config.weight_type,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        op_types_to_quantize=tuple(config.op_types_to_quantize or ()) or None,
        extra_options=(
            {"DefaultTensorType": onnx.TensorProto.FLOAT}
            if config.float_default_tensor_type
            else {}
        ),
    )


def budget_of(config: BudgetConfig) -> Budget:
    """The budget a config states."""
    return Budget(
        config.metric,
        min_value=config.min_value,
        max_drop=config.max_drop,
        max_value=config.max_value,
        max_rise=config.max_rise,
    )


def gate(
    accuracy: dict[str, float], reference: dict[str, float], budgets: Sequence[BudgetConfig]
) -> list[GateCheck]:
    """Check one variant's accuracy against its budgets (FP32 is the reference)."""
    checks = []
    for config in budgets:
        budget = budget_of(config)
        if config.metric not in accuracy:
            needs = (
                "; it needs ground truth in the evaluation data (label-named image folders, "
                "a labels.tsv, or a 'labels' array in the .npz)"
                if METRICS[config.metric].needs_truth
                else ""
            )
            raise ValueError(
                f"budget metric {config.metric!r} is not measured for this model "
                f"(measured: {', '.join(accuracy)}){needs}"
            )
        value = accuracy[config.metric]
        ref = reference.get(config.metric)
        bound = budget.bound(ref)
        checks.append(
            GateCheck(
                metric=config.metric,
                value=value,
                reference=ref,
                bound=bound,
                passed=METRICS[config.metric].margin(value, bound) >= 0,
                rule=budget.rule(),
            )
        )
    return checks


@dataclass
class Candidate:
    """One INT8 model tried: how it was made, how accurate and how fast it was."""

    name: str
    variant: str
    path: Path
    quantization: dict[str, Any] | None
    accuracy: dict[str, float]
    gate: list[GateCheck]
    # batch size -> (this candidate's median ms, FP32's median ms in the same interleaved run)
    latency: dict[int, tuple[float, float]] = field(default_factory=dict)
    size_bytes: int = 0
    note: str = ""
    chosen: bool = False

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.gate)

    @property
    def speedup(self) -> float:
        """FP32 latency / this latency at batch 1, both from one interleaved run."""
        mine, fp32 = self.latency[1]
        return fp32 / mine

    def summary(self) -> dict[str, Any]:
        """What the report and model.json record of every candidate."""
        excluded = (self.quantization or {}).get("nodes_excluded", [])
        return {
            "name": self.name,
            "variant": self.variant,
            "accuracy": {k: round(v, 6) for k, v in self.accuracy.items()},
            "gate": "pass" if self.passed else "failed",
            "latency_ms": {f"batch_{b}": round(ms, 4) for b, (ms, _) in self.latency.items()},
            "fp32_latency_ms": {f"batch_{b}": round(ms, 4) for b, (_, ms) in self.latency.items()},
            "speedup": round(self.speedup, 3),
            "size_bytes": self.size_bytes,
            "nodes_fp32": len(excluded),
            "chosen": self.chosen,
            "note": self.note,
        }


@dataclass
class Search:
    """Everything the candidates share: the FP32 model, data, scorer, budgets, timing feed."""

    fp32_path: Path
    workdir: Path
    calibration: list[Feed]
    evaluation: list[Feed]
    score: Scorer
    reference: dict[str, float]
    budgets: Sequence[BudgetConfig]
    latency_feeds: dict[int, Feed]
    log: Log
    tried: list[Candidate] = field(default_factory=list)

    def static(self, config: QuantizationConfig) -> Candidate | None:
        """The fastest static candidate that passes (or the most accurate one when none does)."""
        deadline = time.monotonic() + config.time_budget_seconds
        recipes = config.candidates or default_candidates()
        prepared: dict[bool, Path] = {}
        for index, recipe_config in enumerate(recipes):
            if index and time.monotonic() > deadline:
                self.log(f"time budget spent: {len(recipes) - index} candidate(s) not tried")
                break
            recipe = static_recipe(recipe_config, len(self.calibration))
            skip = recipe.skip_symbolic_shape
            if skip not in prepared:
                prepared[skip] = self.workdir / f"preprocessed-{int(skip)}.onnx"
                preprocess(self.fp32_path, prepared[skip], skip_symbolic_shape=skip)
            candidate = self._static_candidate(recipe, prepared[skip], f"c{index}")
            if not candidate.passed and may_saturate(recipe):
                recipe = dataclasses.replace(
                    recipe, name=f"{recipe.name}-reduce-range", reduce_range=True
                )
                candidate = self._static_candidate(
                    recipe, prepared[skip], f"c{index}-rr", "7-bit weights, as ORT advises"
                )
            if not candidate.passed and config.fallback.enabled:
                candidate = self._fall_back(candidate, recipe, prepared[skip], config, index)
        static = [c for c in self.tried if c.quantization and c.quantization["method"] == "static"]
        return choose(static)

    def dynamic(self, recipe: DynamicRecipe) -> Candidate:
        """quantize_dynamic, scored and timed like the static ones."""
        path = self.workdir / "dynamic" / "model.onnx"
        self.log(f"  candidate {recipe.name}: quantize_dynamic")
        described = quantize_dynamic_int8(self.fp32_path, path, recipe)
        candidate = self._measure(recipe.name, "int8-dynamic", path, described)
        candidate.chosen = True  # the one dynamic candidate
        return candidate

    def provided(self, variant: str, path: Path) -> Candidate:
        """A variant that arrived as a file (QAT, or quantized elsewhere)."""
        self.log(f"  variant {variant}: provided file {path.name}")
        candidate = self._measure(f"file:{path.name}", variant, path, {"method": "provided"})
        candidate.chosen = True  # served as given
        return candidate

    def _static_candidate(
        self, recipe: StaticRecipe, prepared: Path, tag: str, note: str = ""
    ) -> Candidate:
        path = self.workdir / tag / "model.onnx"
        self.log(f"  candidate {recipe.name}{f' ({note})' if note else ''}: quantize_static QDQ")
        described = quantize_static_qdq(
            prepared, path, recipe, FeedReader(self.calibration), preprocessed=True
        )
        candidate = self._measure(recipe.name, "int8", path, described)
        candidate.note = note
        return candidate

    def _measure(self, name: str, variant: str, path: Path, described: dict[str, Any]) -> Candidate:
        session = open_session(path)  # every file written is loaded: no silent unloadable output
        accuracy = self.score(first_output(session, self.evaluation))
        checks = gate(accuracy, self.reference, self.budgets)
        sessions = {FP32: open_session(self.fp32_path), name: session}
        latency = {}
        for batch, feed in self.latency_feeds.items():
            medians = interleaved_latency_ms(sessions, feed, SEARCH_RUNS.get(batch, 15))
            latency[batch] = (medians[name], medians[FP32])
        candidate = Candidate(
            name, variant, path, described, accuracy, checks, latency, path.stat().st_size
        )
        self.tried.append(candidate)
        budget = ", ".join(f"{c.metric} {c.value:.6g} (needs {c.bound:.6g})" for c in checks)
        self.log(
            f"    {budget}; {'pass' if candidate.passed else 'MISS'}; "
            f"{latency[1][0]:.3f} ms vs fp32 {latency[1][1]:.3f} ms (batch 1)"
        )
        return candidate

    def _fall_back(
        self,
        candidate: Candidate,
        recipe: StaticRecipe,
        prepared: Path,
        config: QuantizationConfig,
        index: int,
    ) -> Candidate:
        """Move the worst nodes to FP32, `step` at a time, until the budget passes."""
        ranked = rank_nodes(prepared, candidate.path, self.calibration[:RANK_BATCHES])
        already = set((candidate.quantization or {}).get("nodes_excluded", []))
        ranked = [node for node in ranked if node not in already]
        # At least one node stays quantized: an all-FP32 "int8" would only measure noise.
        limit = min(config.fallback.max_nodes, len(ranked) - 1)
        self.log(f"  fallback: {len(ranked)} quantized nodes ranked by qdq_loss_debug error")
        moved: list[str] = []
        for round_ in range(1, limit // config.fallback.step + 2):
            moved = ranked[: min(limit, round_ * config.fallback.step)]
            if not moved:
                break
            widened = dataclasses.replace(recipe, exclude_nodes=(*recipe.exclude_nodes, *moved))
            candidate = self._static_candidate(
                widened, prepared, f"c{index}-fb{round_}", f"fallback: {len(moved)} node(s) FP32"
            )
            if candidate.passed or len(moved) >= limit:
                break
        return candidate


def choose(candidates: Sequence[Candidate]) -> Candidate | None:
    """The fastest (relative to FP32) that passes; else the one nearest to passing."""
    if not candidates:
        return None
    passing = [c for c in candidates if c.passed]
    if passing:
        best = max(passing, key=lambda c: c.speedup)
        why = f"kept: the fastest of {len(passing)} passing ({best.speedup:.2f}x fp32)"
    else:
        best = max(candidates, key=lambda c: min(_margin(ch) for ch in c.gate))
        why = "kept: none passed; nearest to its budget"
    best.chosen = True
    best.note = "; ".join(part for part in (best.note, why) if part)
    return best


def _margin(check: GateCheck) -> float:
    return METRICS[check.metric].margin(check.value, check.bound)


def default_variant(latency_ms: dict[str, float], passing: Sequence[str]) -> tuple[str, str]:
    """The speed rule (the service re-runs it on the box): the winner, and one sentence why."""
    fp32 = latency_ms[FP32]
    winner = fastest_passing(latency_ms, passing)
    others = sorted((n for n in latency_ms if n != FP32), key=lambda n: latency_ms[n])
    if winner == FP32 and others:
        fastest = others[0]
        return winner, (
            f"fp32 is the default: no INT8 variant that passed its accuracy budget was over "
            f"{TIE_MARGIN:.0%} faster on this machine (fp32 {fp32:.3f} ms, {fastest} "
            f"{latency_ms[fastest]:.3f} ms, batch 1)."
        )
    if winner == FP32:
        return winner, "fp32 is the only variant."
    return winner, (
        f"{winner} is the default: it passed its accuracy budget and ran "
        f"{fp32 / latency_ms[winner]:.2f}x faster than fp32 "
        f"({latency_ms[winner]:.3f} vs {fp32:.3f} ms, batch 1)."
    )


CLEAN_DB = 100.0
"""SQNR given to tensors with no quantization error upstream (graph inputs)."""


def rank_nodes(prepared: Path, qdq: Path, feeds: Sequence[Feed]) -> list[str]:
    """Nodes to move to FP32, worst first: where qdq_loss_debug's SQNR against FP32 drops most.

    A node's damage is the SQNR (dB, INT8 model vs FP32 model) of its inputs minus that of its
    outputs: the error it adds, not the error it inherits. Each such node comes with the
    consumers of its outputs, since an activation keeps its Q/DQ while any consumer is INT8.
    """
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    def intermediate(model: Path) -> dict[str, list[np.ndarray]]:
        """Every intermediate tensor of `model` over the feeds."""
        augmented = qdq.with_name(f"augmented-{model.stem}.onnx")
        modify_model_output_intermediate_tensors(str(model), str(augmented))
        try:
            return collect_activations(
                str(augmented),
                FeedReader(list(feeds)),
                execution_providers=["CPUExecutionProvider"],
            )
        finally:
            augmented.unlink(missing_ok=True)

    matched = create_activation_matching(intermediate(qdq), intermediate(prepared))
    measured = {
        name: min(float(errors["xmodel_err"]), CLEAN_DB)
        for name, errors in compute_activation_error(matched).items()
    }
    sqnr = dict(measured)
    graph = onnx.load(str(prepared), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    # Nodes since the last measured tensor: fused ops (Conv+Relu) have no Q/DQ in between.
    segment_of: dict[str, list[str]] = {}
    damage: list[tuple[float, list[str]]] = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        inputs = [i for i in node.input if i and i not in weights]
        upstream = min((sqnr[i] for i in inputs if i in sqnr), default=CLEAN_DB)
        segment = [n for i in inputs for n in segment_of.get(i, [])] + [node.name]
        for out in node.output:
            if out in measured:
                group = segment + consumers.get(out, [])
                damage.append((upstream - measured[out], group))
            else:
                sqnr[out], segment_of[out] = upstream, segment
    ranked: dict[str, None] = {}  # insertion-ordered set
    for _, group in sorted(damage, key=lambda item: -item[0]):
        for name in group:
            ranked.setdefault(name, None)
    return list(ranked)
