"""What the load tests send and how they judge answers: real samples from the model repository.

Everything a request needs is prepared once (v2 JSON and binary bodies, multipart uploads),
so the load generator spends its core on HTTP, not on encoding.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.manifest import (
    MANIFEST_FILE,
    EmbeddingPostprocessing,
    ModelManifest,
    SoftmaxPostprocessing,
)
from service.processing import Processor
from service.protocol import DATATYPES, datatype_of

HEADER_LENGTH = "Inference-Header-Content-Length"
WRONG_ANSWER = "wrong answer"
"""Prefix of the failure message for a well-formed response with the wrong label."""

# The task endpoint of each task; a model whose task is not here gets only v2 infer traffic.
TASK_ROUTES = {
    "image-classification": "classify",
    "text-embedding": "embed",
    "text-recognition": "recognize",
}
INFER_BINARY = "infer-binary"
INFER_JSON = "infer-json"
TASK = "task"
WEIGHTS = {INFER_BINARY: 3, INFER_JSON: 1, TASK: 2}
"""Relative weights of the request kinds (TASK: the model's task endpoint)."""


@dataclass(frozen=True)
class Body:
    """One ready-to-send request body and its headers."""

    data: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class PreparedSample:
    """One shipped sample, encoded every way the load test sends it."""

    index: int
    label: str | None
    text: str | None
    infer_json: Body
    infer_binary: Body
    task: Body | None


@dataclass
class Workload:
    """One model under test: its variants, its prepared samples and how to check answers."""

    model: str
    task: str
    variants: list[str]
    samples: list[PreparedSample]
    labels: list[str] | None = None
    dimension: int | None = None
    output_names: list[str] = field(default_factory=list)

    @property
    def task_route(self) -> str | None:
        return TASK_ROUTES.get(self.task)

    def kinds(self) -> list[str]:
        """Request kinds this model gets: both v2 encodings, plus its task endpoint if any."""
        route = self.task_route
        return [INFER_BINARY, INFER_JSON, *([route] if route else [])]

    def url(self, variant: str, kind: str) -> str:
        if kind in (INFER_BINARY, INFER_JSON):
            return f"/v2/models/{self.model}/versions/{variant}/infer"
        return f"/tasks/{self.model}/{kind}?precision={variant}"

    def body(self, sample: PreparedSample, kind: str) -> Body:
        if kind == INFER_BINARY:
            return sample.infer_binary
        if kind == INFER_JSON:
            return sample.infer_json
        assert sample.task is not None
        return sample.task

    def check(
        self, kind: str, sample: PreparedSample, status: int, headers: Any, content: bytes
    ) -> str | None:
        """None when the answer is right; otherwise why it is not (a Locust failure message)."""
        if status != 200:
            return f"HTTP {status}: {content[:200].decode(errors='replace')}"
        try:
            if kind in (INFER_BINARY, INFER_JSON):
                outputs = decode_infer_response(content, headers.get(HEADER_LENGTH))
                return self._check_tensors(sample, outputs, binary=kind == INFER_BINARY)
            return self._check_task(sample, json.loads(content))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            return f"malformed response: {exc}"

    def _check_tensors(
        self, sample: PreparedSample, outputs: dict[str, tuple[np.ndarray, bool]], binary: bool
    ) -> str | None:
        if list(outputs) != self.output_names:
            return f"outputs {list(outputs)}, expected {self.output_names}"
        array, was_binary = outputs[self.output_names[0]]
        if was_binary != binary:
            return f"output came back {'binary' if was_binary else 'JSON'}"
        if array.shape[0] != 1:
            return f"batch axis {array.shape[0]}, expected 1"
        if not np.all(np.isfinite(array)):
            return "non-finite values in the output"
        if self.labels is not None:
            if array.shape != (1, len(self.labels)):
                return f"shape {list(array.shape)}, expected [1, {len(self.labels)}]"
            return self._check_label(sample, self.labels[int(np.argmax(array[0]))])
        if self.dimension is not None and array.shape != (1, self.dimension):
            return f"shape {list(array.shape)}, expected [1, {self.dimension}]"
        return None

    def _check_task(self, sample: PreparedSample, body: dict[str, Any]) -> str | None:
        if self.task == "image-classification":
            labels = body["labels"]
            if not labels:
                return "no labels in the answer"
            return self._check_label(sample, str(labels[0]["label"]))
        if self.task == "text-embedding":
            embeddings = body["embeddings"]
            if len(embeddings) != 1 or len(embeddings[0]) != body["dimension"]:
                return f"{len(embeddings)} embeddings of dimension {body['dimension']}"
            if self.dimension is not None and body["dimension"] != self.dimension:
                return f"dimension {body['dimension']}, expected {self.dimension}"
            return None
        if self.task == "text-recognition":
            # The read text is not judged: exact-string accuracy is the build report's job.
            if not isinstance(body["text"], str) or not 0.0 <= body["confidence"] <= 1.0:
                return f"text {body['text']!r} with confidence {body['confidence']}"
        return None

    @staticmethod
    def _check_label(sample: PreparedSample, got: str) -> str | None:
        if sample.label is not None and got != sample.label:
            return f"{WRONG_ANSWER}: label {got!r}, expected {sample.label!r}"
        return None


def decode_infer_response(
    content: bytes, header_length: str | None
) -> dict[str, tuple[np.ndarray, bool]]:
    """A v2 infer response as {output name: (array, came as binary)}."""
    length = int(header_length) if header_length else len(content)
    header = json.loads(content[:length])
    offset = length
    outputs: dict[str, tuple[np.ndarray, bool]] = {}
    for out in header["outputs"]:
        dtype = DATATYPES[out["datatype"]]
        size = (out.get("parameters") or {}).get("binary_data_size")
        flat: np.ndarray
        if size is not None:
            flat = np.frombuffer(content[offset : offset + size], dtype=dtype)
            offset += size
        else:
            flat = np.asarray(out["data"], dtype=dtype)
        outputs[out["name"]] = (flat.reshape(out["shape"]), size is not None)
    return outputs


def encode_infer_json(feed: dict[str, np.ndarray]) -> Body:
    """A v2 JSON infer body: tensors as flat JSON lists."""
    inputs = [
        {"name": n, "shape": list(a.shape), "datatype": datatype_of(a),
         "data": a.ravel().tolist()}
        for n, a in feed.items()
    ]  # fmt: skip
    data = json.dumps({"inputs": inputs}, separators=(",", ":")).encode()
    return Body(data, {"Content-Type": "application/json"})


def encode_infer_binary(feed: dict[str, np.ndarray]) -> Body:
    """A v2 binary-extension body: JSON header, raw little-endian tensors; binary outputs asked."""
    inputs = [
        {"name": n, "shape": list(a.shape), "datatype": datatype_of(a),
         "parameters": {"binary_data_size": a.nbytes}}
        for n, a in feed.items()
    ]  # fmt: skip
    header = json.dumps(
        {"inputs": inputs, "parameters": {"binary_data_output": True}}, separators=(",", ":")
    ).encode()
    raw = b"".join(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
                   for a in feed.values())  # fmt: skip
    return Body(
        header + raw,
        {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))},
    )


def encode_multipart(field_name: str, filename: str, content: bytes) -> Body:
    """A multipart/form-data upload of one file, built once instead of per request."""
    boundary = uuid.uuid4().hex
    data = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return Body(data, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def prepare(model_dir: Path, variants: list[str] | None = None) -> Workload:
    """Read one model folder and prepare every shipped sample."""
    manifest = ModelManifest.read(model_dir)
    chosen = list(manifest.variants)
    if variants:
        missing = [v for v in variants if v not in manifest.variants]
        if missing:
            raise ValueError(
                f"model {manifest.name!r} has no variant(s) {', '.join(missing)} "
                f"(it has {', '.join(manifest.variants)})"
            )
        chosen = [v for v in variants if v in manifest.variants]
    if not manifest.samples:
        raise ValueError(f"model {manifest.name!r} ships no samples to send")
    processor = Processor(manifest, model_dir)
    samples = []
    for index, sample in enumerate(manifest.samples):
        # The same feed the service warms up with: images decoded, text tokenized, .npz read.
        feed = processor.sample_feed(index)
        task: Body | None = None
        if sample.text is not None and manifest.task == "text-embedding":
            task = Body(
                json.dumps({"sentences": [sample.text]}).encode(),
                {"Content-Type": "application/json"},
            )
        elif sample.file is not None and manifest.task in TASK_ROUTES:
            content = (model_dir / sample.file).read_bytes()
            task = encode_multipart("image", Path(sample.file).name, content)
        samples.append(
            PreparedSample(
                index=index,
                label=sample.label,
                text=sample.text,
                infer_json=encode_infer_json(feed),
                infer_binary=encode_infer_binary(feed),
                task=task,
            )
        )
    post = manifest.postprocessing
    return Workload(
        model=manifest.name,
        task=manifest.task,
        variants=chosen,
        samples=samples,
        labels=list(post.labels) if isinstance(post, SoftmaxPostprocessing) else None,
        dimension=post.dimension if isinstance(post, EmbeddingPostprocessing) else None,
        output_names=[spec.name for spec in manifest.outputs],
    )


def split_list(value: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']; None or '' -> []."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def available_models(repository: Path) -> list[str]:
    """Names of the model folders (those holding a model.json), sorted."""
    return sorted(p.parent.name for p in repository.glob(f"*/{MANIFEST_FILE}"))


def load(
    repository: Path, models: list[str] | None = None, variants: list[str] | None = None
) -> list[Workload]:
    """Workloads for the chosen models (default: all in the repository).

    A variant list applies to every model that has those variants; a model with none of
    them is an error, so a typo is not a silently empty test.
    """
    present = available_models(repository)
    if not present:
        raise ValueError(
            f"no {MANIFEST_FILE} under {repository} (build it: python -m build_models)"
        )
    chosen = models or present
    unknown = [m for m in chosen if m not in present]
    if unknown:
        raise ValueError(f"model(s) {', '.join(unknown)} not in {repository} (has {present})")
    workloads = []
    for name in chosen:
        manifest = ModelManifest.read(repository / name)
        wanted = [v for v in variants or [] if v in manifest.variants] if variants else None
        if variants and not wanted:
            raise ValueError(f"model {name!r} has none of the variants {variants}")
        workloads.append(prepare(repository / name, wanted))
    return workloads


def from_env() -> list[Workload]:
    """Workloads chosen by LOADTEST_REPOSITORY, LOADTEST_MODELS and LOADTEST_VARIANTS."""
    return load(
        Path(os.environ.get("LOADTEST_REPOSITORY", "models")),
        split_list(os.environ.get("LOADTEST_MODELS")) or None,
        split_list(os.environ.get("LOADTEST_VARIANTS")) or None,
    )
