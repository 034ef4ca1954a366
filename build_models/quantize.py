"""The quantize step: ORT pre-processing, then static QDQ or dynamic INT8, in a scratch folder."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from build_models.recipe import DynamicRecipe, StaticRecipe


@contextlib.contextmanager
def _scratch_dir() -> Iterator[Path]:
    """Quantization drops temp files (*.data, sym_shape_infer_temp.onnx) into the cwd."""
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(previous)


def preprocess(fp32_path: Path, out_path: Path, skip_symbolic_shape: bool = False) -> None:
    """ORT's quantization pre-processing (shape inference, folding), in a scratch folder."""
    fp32_path, out_path = fp32_path.resolve(), out_path.resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _scratch_dir():
        quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=skip_symbolic_shape)


def quantize_static_qdq(
    fp32_path: Path,
    out_path: Path,
    recipe: StaticRecipe,
    reader: CalibrationDataReader,
    preprocessed: bool = False,
) -> dict[str, Any]:
    """Write a static QDQ INT8 model; return the recipe with the nodes it resolved to exclude.

    With preprocessed=True, fp32_path already went through preprocess() (the search reuses it).
    """
    fp32_path, out_path = fp32_path.resolve(), out_path.resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _scratch_dir() as tmp:
        prepared = fp32_path if preprocessed else tmp / "preprocessed.onnx"
        if not preprocessed:
            quant_pre_process(
                str(fp32_path), str(prepared), skip_symbolic_shape=recipe.skip_symbolic_shape
            )
        excluded = recipe.nodes_to_exclude(onnx.load(str(prepared), load_external_data=False))
        extra = {
            "ActivationSymmetric": recipe.activation_symmetric,
            "WeightSymmetric": recipe.weight_symmetric,
            **recipe.extra_options,
        }
        quantize_static(
            model_input=str(prepared),
            model_output=str(out_path),
            calibration_data_reader=reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(recipe.op_types_to_quantize or []) or None,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=QuantType[recipe.activation_type],
            weight_type=QuantType[recipe.weight_type],
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod[recipe.calibrate_method],
            extra_options=extra,
        )
    described = {**recipe.describe(), "nodes_excluded": excluded}
    if recipe.post_quantize is not None:
        model = onnx.load(str(out_path))
        described["post_quantize_edits"] = recipe.post_quantize(model)
        onnx.save(model, str(out_path))
    return described


def float_bypass(model: onnx.ModelProto, quantized_op_types: tuple[str, ...]) -> int:
    """Let consumers that are not quantized ops read x instead of DQ(Q(x)); returns the count.

    quantize_static hands the DQ output to every consumer of a quantized activation, so a
    residual Add also gets the uint8-rounded tensor. Tensors that come out of a QDQ group
    (DQ(table) -> Gather -> Q) stay int8: bypassing those makes ORT dequantize the table.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    edits = 0
    for node in model.graph.node:
        if node.op_type in (*quantized_op_types, "QuantizeLinear", "DequantizeLinear"):
            continue
        for index, name in enumerate(node.input):
            dq = producer.get(name)
            q = (
                producer.get(dq.input[0])
                if dq is not None and dq.op_type == "DequantizeLinear"
                else None
            )
            if q is None or q.op_type != "QuantizeLinear":
                continue  # not an activation's Q/DQ pair (weights have no Q)
            source = producer.get(q.input[0])
            if source is not None and any(
                producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                for i in source.input
            ):
                continue
            node.input[index] = q.input[0]
            edits += 1
    return edits


def quantize_dynamic_int8(fp32_path: Path, out_path: Path, recipe: DynamicRecipe) -> dict[str, Any]:
    """Write a dynamically quantized model (INT8 weights, activations quantized at run time)."""
    fp32_path, out_path = fp32_path.resolve(), out_path.resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _scratch_dir() as tmp:
        prepared = tmp / "preprocessed.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        model = onnx.load(str(prepared), load_external_data=False)
        excluded = [n.name for n in model.graph.node if n.op_type in recipe.exclude_op_types]
        quantize_dynamic(
            model_input=str(prepared),
            model_output=str(out_path),
            op_types_to_quantize=list(recipe.op_types_to_quantize or []) or None,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            weight_type=QuantType[recipe.weight_type],
            nodes_to_exclude=excluded,
            extra_options=dict(recipe.extra_options),
        )
    return {**recipe.describe(), "nodes_excluded": excluded}
