"""Small ONNX models and data folders made here, written as a user would bring them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper


def _save(
    nodes: list[Any],
    inputs: list[Any],
    outputs: list[Any],
    weights: list[Any],
    path: Path,
    opset: int = 17,
) -> None:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def dead_unit_mlp(path: Path) -> None:
    """fc0 -> relu -> fc1 -> relu -> fc2, where fc1 has one huge weight on a unit that is always 0.

    FP32 ignores that weight; per-tensor INT8 weights quantize every other fc1 weight to ~0,
    so the first recipe misses its budget and only fc1 needs to go back to FP32.
    """
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((8, 16)).astype(np.float32)
    w0[:, 0] = 0  # unit 0 is dead after the Relu
    w1 = rng.standard_normal((16, 16)).astype(np.float32)
    w1[0, 0] = 5000
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"], name="fc0"),
        helper.make_node("Relu", ["h0"], ["r0"], name="relu0"),
        helper.make_node("MatMul", ["r0", "w1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["y"], name="fc2"),
    ]
    _save(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, n) for w, n in ((w0, "w0"), (w1, "w1"), (w2, "w2"))],
        path,
    )


def int32_counts_model(
    path: Path, opset: int = 17, classes: int = 3, softmax: bool = False
) -> None:
    """counts INT32 [N, 6] -> Cast -> MatMul -> Relu -> MatMul [-> Softmax] -> scores [N, 3].

    With classes=1 it is a regressor: one value per row.
    """
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((6, 32)).astype(np.float32) / 4
    w1 = rng.standard_normal((32, classes)).astype(np.float32)
    last = "logits" if softmax else "scores"
    nodes = [
        helper.make_node("Cast", ["counts"], ["f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["f", "w0"], ["h"], name="fc0"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w1"], [last], name="fc1"),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", [last], ["scores"], name="softmax", axis=-1))
    _save(
        nodes,
        [helper.make_tensor_value_info("counts", TensorProto.INT32, ["N", 6])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1")],
        path,
        opset,
    )


def pair_model(path: Path) -> None:
    """a, b FP32 [N, L] -> Mul -> ReduceSum over L -> dot [N, 1]: two inputs share L by name."""
    nodes = [
        helper.make_node("Mul", ["a", "b"], ["product"], name="mul"),
        helper.make_node("ReduceSum", ["product", "axes"], ["dot"], name="sum", keepdims=1),
    ]
    _save(
        nodes,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", "L"]) for n in ("a", "b")],
        [helper.make_tensor_value_info("dot", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")],
        path,
    )


def tensor_project(
    folder: Path,
    model: str = "dead_unit",
    opset: int = 17,
    classes: int = 3,
    softmax: bool = False,
    truth: list[str] | None = None,
    calibration_scale: int = 1,
    **overrides: Any,
) -> Path:
    """A user's folder: model.onnx, calib.npz, eval.npz and model.yaml; returns the YAML path.

    `truth` (cycled over the rows) becomes eval.npz's labels array; calibration_scale shrinks
    the calibration data, as a user's mistake would, so its ranges miss the real data's.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    if model == "dead_unit":
        dead_unit_mlp(folder / "model.onnx")
        make = lambda n: {"x": rng.standard_normal((n, 8)).astype(np.float32)}  # noqa: E731
    elif model == "pair":
        pair_model(folder / "model.onnx")
        make = lambda n: {  # noqa: E731
            name: rng.standard_normal((n, 5)).astype(np.float32) for name in ("a", "b")
        }
    else:
        int32_counts_model(folder / "model.onnx", opset, classes, softmax)
        make = lambda n: {"counts": rng.integers(0, 20, (n, 6)).astype(np.int32)}  # noqa: E731
    calibration = {k: v // calibration_scale for k, v in make(64).items()}
    np.savez(folder / "calib.npz", **calibration)
    labels = {"labels": np.array([truth[i % len(truth)] for i in range(128)])} if truth else {}
    np.savez(folder / "eval.npz", **make(128), **labels)
    config: dict[str, Any] = {
        "name": model.replace("_", "-"),
        "task": "tensor",
        "source": {"onnx": "model.onnx"},
        "calibration": {"tensors": "calib.npz"},
        "evaluation": {"tensors": "eval.npz"},
        "samples": 4,
        **overrides,
    }
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
