"""The model repository's `model.json` schema: written by build_models, read by the service."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

MANIFEST_FILE = "model.json"
SCHEMA_VERSION: Literal[2] = 2

Task = Literal["image-classification", "text-embedding", "text-recognition", "tensor"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Model):
    """One graph input or output in Open Inference Protocol terms (-1 marks a dynamic axis)."""

    name: str
    datatype: str
    shape: list[int]


class ImagePreprocessing(_Model):
    """How an uploaded image becomes the model's float tensor (one image, no batch axis)."""

    kind: Literal["image"] = "image"
    color: Literal["L", "RGB", "BGR"]
    height: int
    width: int
    # stretch: to height x width; keep-aspect-pad-right: to the height, padded on the right
    # (text lines); short-side-crop: short side to resize_short, then a centre crop.
    resize: Literal["stretch", "keep-aspect-pad-right", "short-side-crop"]
    resize_short: int | None = None
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    invert: bool = False
    # value = ((255 - pixel if invert else pixel) * scale - mean) / std, per channel
    scale: float = 1 / 255
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])


TokenColumn = Literal["ids", "attention_mask", "type_ids"]


class TextPreprocessing(_Model):
    """How sentences become token ids: the model's own tokenizer file, padded per batch."""

    kind: Literal["text"] = "text"
    tokenizer: str
    max_length: int
    # graph input name -> the tokenizer column it takes
    inputs: dict[str, TokenColumn]


Preprocessing = Annotated[ImagePreprocessing | TextPreprocessing, Field(discriminator="kind")]


class SoftmaxPostprocessing(_Model):
    """Class scores to labels with probabilities (softmax of logits; probabilities as they are)."""

    kind: Literal["softmax"] = "softmax"
    labels: list[str]
    scores: Literal["logits", "probabilities"] = "logits"

    @model_serializer(mode="wrap")
    def _readable_by_older_services(self, write: SerializerFunctionWrapHandler) -> Any:
        """Logits, the default, go unsaid: a service older than `scores` (which refuses unknown
        keys) still reads a logits classifier's model.json updated over the air before it."""
        data = write(self)
        if self.scores == "logits":
            data.pop("scores", None)
        return data


class CtcPostprocessing(_Model):
    """Greedy CTC decoding of per-timestep probabilities; index 0 is the blank."""

    kind: Literal["ctc"] = "ctc"
    charset: str
    blank_index: int = 0


class EmbeddingPostprocessing(_Model):
    """The output already is the embedding (pooled and L2-normalised in the graph)."""

    kind: Literal["embedding"] = "embedding"
    dimension: int


Postprocessing = Annotated[
    SoftmaxPostprocessing | CtcPostprocessing | EmbeddingPostprocessing,
    Field(discriminator="kind"),
]


class Sample(_Model):
    """A held-out example shipped with the model for warm-up, docs and load tests.

    Image models give a file (relative to the model folder) and its label or text;
    text models give the text itself; tensor models an .npz with one array per input.
    """

    file: str | None = None
    label: str | None = None
    text: str | None = None
    tensors: str | None = None


class GateCheck(_Model):
    """One accuracy budget check of a variant against FP32."""

    metric: str
    value: float
    reference: float | None
    bound: float
    passed: bool
    rule: str


class Variant(_Model):
    """One precision of a model: its file and what the build measured about it."""

    precision: str
    file: str
    sha256: str
    size_bytes: int
    quantization: dict[str, Any] | None
    op_counts: dict[str, int]
    accuracy: dict[str, float]
    latency_ms: dict[str, float]
    gate: list[GateCheck] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether the variant met every check of its model's accuracy budget."""
        return all(check.passed for check in self.gate)


class ModelManifest(_Model):
    """Everything the service needs to know about one model and its variants."""

    # A model.json from another schema is refused, not misread (v1 scaled pixels differently).
    schema_version: Literal[2] = SCHEMA_VERSION
    name: str
    task: Task
    description: str
    default_variant: str
    # Why the default won, in one sentence with the numbers (the build's speed rule).
    default_reason: str = ""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: Preprocessing | None = None
    postprocessing: Postprocessing | None = None
    samples: list[Sample]
    build: dict[str, Any]
    variants: dict[str, Variant]

    @classmethod
    def read(cls, model_dir: Path) -> ModelManifest:
        """A model folder's model.json, validated against this version's schema."""
        return cls.model_validate_json((model_dir / MANIFEST_FILE).read_text())

    def write(self, model_dir: Path) -> None:
        """model.json into a model folder (the build writes it; the service only reads it)."""
        (model_dir / MANIFEST_FILE).write_text(self.model_dump_json(indent=2) + "\n")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
