"""The model config (`model.yaml`): one pydantic schema, validated whole before any work starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from build_models.metrics import METRICS
from build_models.recipe import CalibrationMethod, QuantType
from service.manifest import Task

SCHEMA_FILE = Path(__file__).parent / "model-config.schema.json"


class ConfigError(Exception):
    """A config that cannot be built; the message names the file and the key path."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnnxSource(_Config):
    """A model file the user brings."""

    onnx: Path = Field(description="ONNX file, relative to the YAML file")


class PluginSource(_Config):
    """A named source plugin: code that must run for the model to exist (train, export, rewrite)."""

    plugin: str = Field(description="name of a source plugin (build_models.plugins)")
    options: dict[str, Any] = Field(default_factory=dict)


def _source_kind(value: Any) -> str:
    """Which source a mapping describes: a plugin when it names one, else an ONNX file."""
    if isinstance(value, dict):
        return "PluginSource" if "plugin" in value else "OnnxSource"
    return "PluginSource" if isinstance(value, PluginSource) else "OnnxSource"


Source = Annotated[
    Annotated[OnnxSource, Tag("OnnxSource")] | Annotated[PluginSource, Tag("PluginSource")],
    Discriminator(_source_kind),
]


class VariantFile(_Config):
    """A variant that arrives as a file (QAT export, or quantized elsewhere)."""

    onnx: Path = Field(description="ONNX file, relative to the YAML file")


class ImagePreprocessingConfig(_Config):
    """How an image becomes the input tensor: value = (pixel * scale - mean) / std per channel."""

    size: tuple[int, int] | None = Field(
        None, description="[height, width] to stretch to; default: the model's static input size"
    )
    resize_short: int | None = Field(None, description="resize the short side to this first")
    crop: int | tuple[int, int] | None = Field(None, description="then centre-crop to this")
    keep_aspect: bool = Field(
        False, description="resize to the height keeping aspect, pad right to width (text lines)"
    )
    scale: float = Field(1 / 255, description="pixel (0..255) multiplier before mean/std")
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])
    channels: Literal["RGB", "BGR", "L"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    invert: bool = Field(False, description="use 255 - pixel (dark ink on white paper)")

    @model_validator(mode="after")
    def _one_geometry(self) -> ImagePreprocessingConfig:
        if self.size is not None and (self.resize_short is not None or self.crop is not None):
            raise ValueError("give size, or resize_short plus crop, not both")
        if (self.resize_short is None) != (self.crop is None):
            raise ValueError("resize_short and crop go together")
        if self.keep_aspect and self.crop is not None:
            raise ValueError("keep_aspect pads; it does not crop")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        return self


class TextConfig(_Config):
    """A tokenizer and which graph input takes which of its columns."""

    tokenizer: Path | None = Field(
        None, description="tokenizers JSON file; default: the one the source plugin provides"
    )
    max_length: int = Field(256, ge=1)
    inputs: dict[str, Literal["ids", "attention_mask", "type_ids"]] = Field(
        default_factory=dict,
        description="graph input name -> tokenizer column; default: matched by name",
    )


class CtcConfig(_Config):
    """Greedy CTC decoding over the labels (the character list)."""

    blank_index: int = 0
    prepend_blank: bool = Field(True, description="the label list lacks the blank: insert it")
    append_space: bool = Field(False, description="the model's last class is a space")


class DataConfig(_Config):
    """One data set: exactly one of images, tensors, text or plugin."""

    images: Path | None = Field(
        None, description="folder of images; label-named subfolders give ground truth"
    )
    tensors: Path | None = Field(None, description=".npz with one array per input, batch first")
    text: Path | None = Field(None, description="text file, one sentence per line")
    plugin: str | None = Field(None, description="name of a data plugin (build_models.plugins)")
    options: dict[str, Any] = Field(default_factory=dict)
    count: int | None = Field(None, ge=1, description="use at most this many items")
    batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> DataConfig:
        given = [k for k in ("images", "tensors", "text", "plugin") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of images, tensors, text, plugin (got {given or 'none'})"
            )
        return self


class BudgetConfig(_Config):
    """An accuracy budget: a floor, or a largest drop below FP32's value, or both.

    Error metrics (max_abs_diff) are bounded from above: max_value, max_rise, or both.
    """

    metric: str = Field(description=f"one of {', '.join(METRICS)}")
    max_drop: float | None = Field(None, ge=0, description="points (or fraction) below FP32")
    min_value: float | None = None
    max_rise: float | None = Field(None, ge=0, description="error metrics: above FP32")
    max_value: float | None = Field(None, description="error metrics: the largest allowed")

    @model_validator(mode="after")
    def _bounded(self) -> BudgetConfig:
        metric = METRICS.get(self.metric)
        if metric is None:
            raise ValueError(f"unknown metric {self.metric!r}; choose from {', '.join(METRICS)}")
        floor = [k for k in ("min_value", "max_drop") if getattr(self, k) is not None]
        ceiling = [k for k in ("max_value", "max_rise") if getattr(self, k) is not None]
        if metric.higher_is_better and (ceiling or not floor):
            raise ValueError(f"{self.metric} is better higher: give min_value or max_drop")
        if not metric.higher_is_better and (floor or not ceiling):
            raise ValueError(f"{self.metric} is an error, better lower: give max_value or max_rise")
        if metric.percent and self.min_value is not None and 0 < self.min_value <= 1:
            raise ValueError(
                f"{self.metric} is a percentage (0-100): min_value {self.min_value:g} means "
                f"{self.min_value:g}%; write {self.min_value * 100:g} for {self.min_value:.0%}"
            )
        return self


class RecipeConfig(_Config):
    """One static QDQ candidate; every quantize_static argument spelled out."""

    name: str
    calibrate_method: CalibrationMethod = "MinMax"
    activation_type: QuantType = "QUInt8"
    weight_type: QuantType = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    op_types_to_quantize: list[str] | None = None
    exclude_op_types: list[str] = Field(default_factory=list)
    exclude_name_patterns: list[str] = Field(default_factory=list)
    exclude_rule: str | None = Field(None, description="name of a graph rule plugin")
    post_quantize: str | None = Field(None, description="name of a graph edit plugin")
    extra_options: dict[str, Any] = Field(default_factory=dict)
    skip_symbolic_shape: bool = False


class DynamicConfig(_Config):
    """quantize_dynamic beside the static candidates (transformers)."""

    weight_type: QuantType = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False
    op_types_to_quantize: list[str] | None = None
    float_default_tensor_type: bool = Field(
        True, description="DefaultTensorType FLOAT (needed after ORT's transformer optimizer)"
    )


class FallbackConfig(_Config):
    """Accuracy-aware fallback: worst nodes by qdq_loss_debug error go back to FP32."""

    enabled: bool = True
    step: int = Field(2, ge=1, description="nodes moved to FP32 per round")
    max_nodes: int = Field(16, ge=0, description="give up after this many nodes")


class QuantizationConfig(_Config):
    """The search: candidates, fallback, dynamic, and a time budget."""

    candidates: list[RecipeConfig] | None = Field(
        None, description="static candidates; default: a small grid chosen for the CPU"
    )
    allow_dynamic: bool = False
    dynamic: DynamicConfig = Field(default_factory=DynamicConfig)
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    time_budget_seconds: float = Field(900, gt=0, description="stop trying candidates after")


class ModelConfig(_Config):
    """A model the build can make, quantize, gate and write to the repository."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$", description="the name in URLs")
    task: Task
    description: str = ""
    source: Source
    labels: list[str] | None = None
    labels_file: Path | None = Field(None, description="one label per line")
    labels_from_metadata: str | None = Field(None, description="ONNX metadata key, one per line")
    scores: Literal["logits", "probabilities"] | None = Field(
        None,
        description="what a classifier's output holds; default: probabilities when the graph "
        "ends in Softmax, else logits",
    )
    preprocessing: ImagePreprocessingConfig | None = None
    text: TextConfig | None = None
    ctc: CtcConfig | None = None
    calibration: DataConfig = Field(description="data static quantization calibrates on")
    evaluation: DataConfig | None = None
    budget: BudgetConfig | list[BudgetConfig] | None = None
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    variants: dict[str, VariantFile] = Field(
        default_factory=dict, description="variants that arrive as files (e.g. int8-qat)"
    )
    samples: int = Field(8, ge=1, le=100, description="held-out samples shipped with the model")

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        label_sources = [
            k for k in ("labels", "labels_file", "labels_from_metadata") if getattr(self, k)
        ]
        if len(label_sources) > 1:
            raise ValueError(
                f"give one of labels, labels_file, labels_from_metadata: {label_sources}"
            )
        if self.task in ("image-classification", "text-recognition"):
            if self.text is not None:
                raise ValueError(f"{self.task} takes images: remove 'text'")
        if self.task == "text-recognition" and not label_sources:
            raise ValueError("text-recognition needs its character list as labels")
        if self.task == "text-embedding" and self.preprocessing is not None:
            raise ValueError("text-embedding takes sentences: remove 'preprocessing'")
        if self.task == "tensor" and (self.preprocessing or self.text or self.ctc):
            raise ValueError("a tensor model has no pre/post-processing")
        if self.scores is not None and self.task not in ("image-classification", "tensor"):
            raise ValueError(f"scores is for classifiers; a {self.task} model has none")
        reserved = {"fp32", "int8", "int8-dynamic"} & set(self.variants)
        if reserved:
            raise ValueError(f"variants {sorted(reserved)} are built here; pick other names")
        return self

    @property
    def budgets(self) -> list[BudgetConfig]:
        if self.budget is None:
            return []
        return self.budget if isinstance(self.budget, list) else [self.budget]


def load_config(path: Path) -> tuple[ModelConfig, Path]:
    """A validated config and the folder its relative paths start from; ConfigError if bad."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (name, task, source, ...)")
    try:
        config = ModelConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid config\n{_explain(exc)}") from None
    base = path.parent.resolve()
    missing = [str(p) for p in referenced_files(config) if not (base / p).exists()]
    if missing:
        raise ConfigError(f"{path}: file(s) not found (relative to {base}): {', '.join(missing)}")
    return config, base


def referenced_files(config: ModelConfig) -> list[Path]:
    """Every path a config names, for the check before any work starts."""
    paths: list[Path | None] = [
        config.source.onnx if isinstance(config.source, OnnxSource) else None,
        config.labels_file,
        config.text.tokenizer if config.text else None,
        *(v.onnx for v in config.variants.values()),
    ]
    for data in (config.calibration, config.evaluation):
        if data is not None:
            paths.extend([data.images, data.tensors, data.text])
    return [p for p in paths if p is not None]


_WRONG_BRANCH = {"list_type", "dict_type", "model_type", "model_attributes_type"}
"""Errors of a union's other shapes (a list where a mapping was given): noise beside real ones."""


def _explain(exc: ValidationError) -> str:
    """One line per problem: the key path, what was expected, what was given."""
    found: dict[str, list[tuple[str, str]]] = {}
    for error in exc.errors():
        # Union members show up in the path as tags like "OnnxSource" or "list[...]": drop them.
        parts = [str(p) for p in error["loc"] if not _is_union_tag(p)]
        where = ".".join(parts) or "(top level)"
        given = error.get("input")
        shown = "" if isinstance(given, dict | list) else f" (got {given!r})"
        found.setdefault(where, []).append((error["type"], f"  {where}: {error['msg']}{shown}"))
    lines: list[str] = []
    for where, errors in found.items():
        real = [line for kind, line in errors if kind not in _WRONG_BRANCH]
        if not real and any(other.startswith(f"{where}.") for other in found):
            continue  # the union's other shape; the real problem is named deeper
        lines.extend(dict.fromkeys(real or [errors[0][1]]))
    return "\n".join(lines)


def _is_union_tag(part: object) -> bool:
    text = str(part)
    return isinstance(part, str) and ("[" in text or text[:1].isupper())


def json_schema() -> dict[str, Any]:
    """The config's JSON Schema, as shipped in build_models/model-config.schema.json."""
    schema = ModelConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Edge inference model config"
    return schema


def write_json_schema(path: Path = SCHEMA_FILE) -> None:
    path.write_text(json.dumps(json_schema(), indent=2) + "\n")
