"""Tiny hand-built ONNX models and feeds, so quantize/evaluate tests run in milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from build_models.calibration import Feed, FeedReader, batched
from build_models.quantize import quantize_static_qdq
from build_models.recipe import StaticRecipe

TINY_INPUT, TINY_OUTPUT = "x", "y"
TINY_FEATURES, TINY_CLASSES = 4, 3


def tiny_mlp(seed: int = 0) -> onnx.ModelProto:
    """x[N,4] -> MatMul fc1 [4,8] -> Relu relu -> MatMul fc2 [8,3] -> y[N,3], opset 17."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.standard_normal((TINY_FEATURES, 8)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((8, TINY_CLASSES)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", [TINY_INPUT, "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], [TINY_OUTPUT], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(TINY_INPUT, TensorProto.FLOAT, ["N", TINY_FEATURES])],
        [helper.make_tensor_value_info(TINY_OUTPUT, TensorProto.FLOAT, ["N", TINY_CLASSES])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def random_feeds(count: int = 4, batch: int = 16, seed: int = 1) -> list[Feed]:
    """`count` feeds of `batch` standard-normal rows for the tiny model's input."""
    rows = np.random.default_rng(seed).standard_normal((count * batch, TINY_FEATURES))
    return batched({TINY_INPUT: rows.astype(np.float32)}, batch)


@pytest.fixture
def make_tiny_model() -> Callable[[int], onnx.ModelProto]:
    """The tiny MLP builder, for tests that need the proto itself."""
    return tiny_mlp


@pytest.fixture
def make_feeds() -> Callable[..., list[Feed]]:
    """The random feed builder for the tiny model."""
    return random_feeds


@pytest.fixture(scope="session")
def tiny_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny MLP saved as an FP32 ONNX file (read-only for tests)."""
    path = tmp_path_factory.mktemp("tiny") / "fp32.onnx"
    onnx.save(tiny_mlp(), str(path))
    return path


@pytest.fixture(scope="session")
def tiny_int8(tiny_fp32: Path) -> Path:
    """The tiny MLP statically quantized (QDQ) with the default recipe (read-only for tests)."""
    path = tiny_fp32.parent / "int8.onnx"
    quantize_static_qdq(tiny_fp32, path, StaticRecipe(), FeedReader(random_feeds()))
    return path
