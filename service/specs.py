"""model.json's tensor specs checked against the ONNX graph a variant actually loads."""

from __future__ import annotations

from collections.abc import Sequence

import onnxruntime as ort

from service.manifest import TensorSpec

ORT_TYPES = {
    "tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(double)": "FP64",
    "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int16)": "INT16",
    "tensor(int8)": "INT8", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}  # fmt: skip
"""ONNX Runtime's type names -> Open Inference Protocol datatypes."""


def spec_mismatches(
    session: ort.InferenceSession, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> list[str]:
    """What differs between the manifest and the graph (empty when they agree)."""
    problems = []
    for kind, specs, args in (
        ("input", inputs, session.get_inputs()),
        ("output", outputs, session.get_outputs()),
    ):
        graph = {arg.name: arg for arg in args}
        if set(graph) != {spec.name for spec in specs}:
            problems.append(
                f"{kind}s are {sorted(graph)} in the graph, {sorted(s.name for s in specs)} "
                "in model.json"
            )
            continue
        for spec in specs:
            arg = graph[spec.name]
            datatype = ORT_TYPES.get(arg.type, arg.type)
            if datatype != spec.datatype:
                problems.append(
                    f"{kind} {spec.name!r} is {datatype}, model.json says {spec.datatype}"
                )
            dims = list(arg.shape or [])
            if len(dims) != len(spec.shape) or any(
                isinstance(d, int) and d > 0 and s not in (-1, d)
                for d, s in zip(dims, spec.shape, strict=False)
            ):
                problems.append(
                    f"{kind} {spec.name!r} has shape {dims}, model.json says {spec.shape}"
                )
    return problems


SharedDims = dict[str, list[tuple[str, int]]]
"""A named dimension -> the (input, axis) pairs that must agree on its size."""


def shared_dims(session: ort.InferenceSession) -> SharedDims:
    """Named dimensions two or more inputs share (MiniLM's sequence, ...).

    model.json writes them as -1, any size; but input_ids [1, 2] beside attention_mask [1, 3]
    fails inside the graph, an error ORT reports like a broken model's.
    """
    found: SharedDims = {}
    for arg in session.get_inputs():
        for axis, dim in enumerate(arg.shape or []):
            if isinstance(dim, str) and dim:
                found.setdefault(dim, []).append((arg.name, axis))
    return {dim: places for dim, places in found.items() if len(places) > 1}
