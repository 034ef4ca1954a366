"""Named plugins a model config refers to where code must run: sources, data, graph rules.

A plugin registers itself with a decorator; configs name it (`source: {plugin: digits}`).
The built-in plugin modules are imported on first lookup, so importing this stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import onnx

if TYPE_CHECKING:
    from build_models.data import Dataset


@dataclass
class SourceOutput:
    """What a source plugin made besides the FP32 file: files the model needs, provenance."""

    assets: dict[str, Path] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


SourceFn = Callable[..., SourceOutput]
"""(out: Path, **options) -> SourceOutput; writes the FP32 ONNX file to `out`."""
DataFn = Callable[..., "Dataset"]
"""(**options) -> Dataset."""
GraphRule = Callable[[onnx.ModelProto], list[str]]
"""Names of nodes to keep in FP32, decided on the pre-processed graph."""
GraphEdit = Callable[[onnx.ModelProto], int]
"""An edit of the quantized graph; returns how many places it changed."""

BUILTIN_MODULES = ("digits", "minilm", "ocr")
_KINDS: dict[str, dict[str, Any]] = {"source": {}, "data": {}, "rule": {}, "edit": {}}
F = TypeVar("F", bound=Callable[..., Any])


def _register(kind: str, name: str) -> Callable[[F], F]:
    def decorate(function: F) -> F:
        _KINDS[kind][name] = function
        return function

    return decorate


def source(name: str) -> Callable[[F], F]:
    """Register a source plugin under `name`."""
    return _register("source", name)


def data(name: str) -> Callable[[F], F]:
    """Register a data plugin under `name`."""
    return _register("data", name)


def graph_rule(name: str) -> Callable[[F], F]:
    """Register a node-exclusion rule under `name`."""
    return _register("rule", name)


def graph_edit(name: str) -> Callable[[F], F]:
    """Register a post-quantization graph edit under `name`."""
    return _register("edit", name)


def lookup(kind: str, name: str) -> Any:
    """The plugin of a kind by name, or a KeyError listing the names there are."""
    for module in BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    try:
        return _KINDS[kind][name]
    except KeyError:
        known = ", ".join(sorted(_KINDS[kind])) or "none"
        raise KeyError(f"no {kind} plugin named {name!r} (known: {known})") from None


def source_plugin(name: str) -> SourceFn:
    function: SourceFn = lookup("source", name)
    return function


def data_plugin(name: str) -> DataFn:
    function: DataFn = lookup("data", name)
    return function


def rule_plugin(name: str) -> GraphRule:
    function: GraphRule = lookup("rule", name)
    return function


def edit_plugin(name: str) -> GraphEdit:
    function: GraphEdit = lookup("edit", name)
    return function
