"""Declarative quantization recipes and accuracy budgets: the one place a model's recipe lives."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import onnx

CalibrationMethod = Literal["MinMax", "Entropy", "Percentile"]
QuantType = Literal["QUInt8", "QInt8"]


@dataclass(frozen=True)
class StaticRecipe:
    """quantize_static in QDQ format with ORT calibration; every argument spelled out."""

    name: str = "static"
    calibrate_method: CalibrationMethod = "MinMax"
    # U8 activations with S8 weights: ~2x faster than S8/S8 on x86 VNNI (NOTES.md).
    activation_type: QuantType = "QUInt8"
    weight_type: QuantType = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    op_types_to_quantize: tuple[str, ...] | None = None
    # Nodes kept in FP32: exact op types and name regexes, resolved against the pre-processed graph.
    exclude_op_types: tuple[str, ...] = ()
    exclude_name_patterns: tuple[str, ...] = ()
    # Nodes moved to FP32 by name (the accuracy-aware fallback adds to these).
    exclude_nodes: tuple[str, ...] = ()
    # A model-specific rule over the pre-processed graph (recorded by name and docstring).
    exclude_rule: Callable[[onnx.ModelProto], list[str]] | None = None
    # A graph edit applied to the quantized model (recorded by name and docstring).
    post_quantize: Callable[[onnx.ModelProto], int] | None = None
    extra_options: Mapping[str, Any] = field(default_factory=dict)
    skip_symbolic_shape: bool = False
    method: Literal["static"] = "static"

    def nodes_to_exclude(self, model: onnx.ModelProto) -> list[str]:
        """Names of the graph's nodes this recipe keeps in FP32."""
        patterns = [re.compile(p) for p in self.exclude_name_patterns]
        by_rule = set(self.exclude_rule(model)) if self.exclude_rule else set()
        return [
            node.name
            for node in model.graph.node
            if node.op_type in self.exclude_op_types
            or any(p.search(node.name) for p in patterns)
            or node.name in by_rule
            or node.name in self.exclude_nodes
        ]

    def describe(self) -> dict[str, Any]:
        """The recipe as recorded in model.json."""
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class DynamicRecipe:
    """quantize_dynamic: weights INT8 ahead of time, activations quantized per call."""

    name: str = "dynamic"
    weight_type: QuantType = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False
    op_types_to_quantize: tuple[str, ...] | None = None
    exclude_op_types: tuple[str, ...] = ()
    extra_options: Mapping[str, Any] = field(default_factory=dict)
    method: Literal["dynamic"] = "dynamic"

    def describe(self) -> dict[str, Any]:
        """The recipe as recorded in model.json."""
        return _jsonable(asdict(self))


Recipe = StaticRecipe | DynamicRecipe


@dataclass(frozen=True)
class Budget:
    """An accuracy budget: a metric must stay above a floor or near FP32's value.

    Error metrics (lower is better) take a ceiling instead: max_value, or max_rise over FP32's.
    """

    metric: str
    min_value: float | None = None
    max_drop: float | None = None
    max_value: float | None = None
    max_rise: float | None = None

    def __post_init__(self) -> None:
        floor = self.min_value is not None or self.max_drop is not None
        ceiling = self.max_value is not None or self.max_rise is not None
        if floor == ceiling:
            raise ValueError(
                f"budget for {self.metric} needs min_value/max_drop (higher is better) "
                "or max_value/max_rise (lower is better)"
            )

    @property
    def higher_is_better(self) -> bool:
        return self.max_value is None and self.max_rise is None

    def rule(self) -> str:
        parts = []
        if self.min_value is not None:
            parts.append(f"{self.metric} >= {self.min_value:g}")
        if self.max_drop is not None:
            parts.append(f"{self.metric} >= fp32 - {self.max_drop:g}")
        if self.max_value is not None:
            parts.append(f"{self.metric} <= {self.max_value:g}")
        if self.max_rise is not None:
            parts.append(f"{self.metric} <= fp32 + {self.max_rise:g}")
        return " and ".join(parts)

    def bound(self, reference: float | None) -> float:
        """The last passing value (lowest, or highest for an error), given FP32's value."""
        if self.higher_is_better:
            fixed = self.min_value
            relative = None if self.max_drop is None else -self.max_drop
        else:
            fixed, relative = self.max_value, self.max_rise
        bounds = [fixed] if fixed is not None else []
        if relative is not None and reference is not None:
            bounds.append(reference + relative)
        if not bounds:
            raise ValueError(f"budget for {self.metric} is relative, but FP32 has no value")
        return max(bounds) if self.higher_is_better else min(bounds)


def _jsonable(value: Any) -> Any:
    if callable(value):
        doc = (value.__doc__ or "").strip().splitlines()
        return f"{value.__name__}: {doc[0]}" if doc else value.__name__
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
