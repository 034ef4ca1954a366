"""What each task means to the build: data to feeds, scores, the served interface, samples."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

from build_models import metrics
from build_models.calibration import Feed
from build_models.config import BudgetConfig, CtcConfig, ImagePreprocessingConfig, ModelConfig
from build_models.data import Dataset
from service.manifest import (
    CtcPostprocessing,
    EmbeddingPostprocessing,
    ImagePreprocessing,
    Postprocessing,
    Preprocessing,
    Sample,
    SoftmaxPostprocessing,
    TensorSpec,
    TextPreprocessing,
)
from service.processing import ctc_greedy, encode_texts, image_tensor, load_tokenizer
from service.protocol import DATATYPES
from service.specs import ORT_TYPES

ASSETS = "assets"
TOKENIZER_FILE = f"{ASSETS}/tokenizer.json"
CHARSET_FILE = f"{ASSETS}/charset.json"
TOKEN_COLUMNS = {
    "input_ids": "ids",
    "attention_mask": "attention_mask",
    "token_type_ids": "type_ids",
}


def graph_specs(session: ort.InferenceSession) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs in v2 terms; named or unknown dimensions become -1."""

    def spec(arg: ort.NodeArg) -> TensorSpec:
        if arg.type not in ORT_TYPES:
            raise ValueError(f"tensor {arg.name!r} has type {arg.type}, not a plain tensor")
        shape = [d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or [])]
        return TensorSpec(name=arg.name, datatype=ORT_TYPES[arg.type], shape=shape)

    return [spec(a) for a in session.get_inputs()], [spec(a) for a in session.get_outputs()]


def _fits(array: tuple[int, ...], graph: list[int]) -> bool:
    """Do an array's rows fit a graph input's shape (-1 any size; no shape: anything)?"""
    if not graph:
        return True
    rows, wanted = array[1:], graph[1:]
    return len(rows) == len(wanted) and all(w in (-1, r) for r, w in zip(rows, wanted, strict=True))


@dataclass
class TaskAdapter:
    """One model's task, bound to its config and its FP32 graph."""

    config: ModelConfig
    base: Path
    fp32_path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    assets: dict[str, Path]

    @classmethod
    def create(
        cls, config: ModelConfig, base: Path, fp32: Path, assets: dict[str, Path]
    ) -> TaskAdapter:
        session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
        inputs, outputs = graph_specs(session)
        adapter = cls(config, base, fp32, inputs, outputs, assets)
        adapter.check()
        return adapter

    # --- what the graph must look like ------------------------------------------------------

    def check(self) -> None:
        """Fail early, with the reason, where the config and the graph disagree."""
        task = self.config.task
        if task in ("image-classification", "text-recognition"):
            spec = self.inputs[0]
            if len(self.inputs) != 1 or len(spec.shape) != 4:
                raise ValueError(
                    f"{task} needs one 4-D image input; the graph takes "
                    f"{[(s.name, s.shape) for s in self.inputs]}"
                )
        if task in ("image-classification", "tensor") and self.labels is not None:
            shape = self.outputs[0].shape
            if task == "tensor" and (len(shape) != 2 or shape[1] == 1):
                raise ValueError(
                    f"labels name the classes of a [batch, classes] output; the model's "
                    f"{self.outputs[0].name!r} is {shape}"
                )
            if shape[-1] not in (-1, len(self.labels)):
                raise ValueError(
                    f"{len(self.labels)} labels, but the model scores {shape[-1]} classes"
                )
        if task == "text-embedding":
            missing = sorted(set(self.token_inputs) - {s.name for s in self.inputs})
            unmapped = sorted({s.name for s in self.inputs} - set(self.token_inputs))
            if missing or unmapped:
                raise ValueError(
                    f"text inputs {missing} are not in the graph; graph inputs {unmapped} have no "
                    "tokenizer column (set text.inputs: {graph input: ids|attention_mask|type_ids})"
                )

    @property
    def dynamic_batch(self) -> bool:
        return all(spec.shape[:1] == [-1] for spec in self.inputs)

    @cached_property
    def labels(self) -> list[str] | None:
        """The labels from the config, a file, or the model's metadata (read once)."""
        config = self.config
        if config.labels is not None:
            return list(config.labels)
        if config.labels_file is not None:
            lines = (self.base / config.labels_file).read_text().splitlines()
            return [line for line in lines if line.strip()]
        if config.labels_from_metadata is not None:
            metadata = {p.key: p.value for p in self._graph.metadata_props}
            if config.labels_from_metadata not in metadata:
                raise ValueError(
                    f"the model has no metadata key {config.labels_from_metadata!r} "
                    f"(it has {sorted(metadata)})"
                )
            return metadata[config.labels_from_metadata].splitlines()
        return None

    @cached_property
    def scores(self) -> Literal["logits", "probabilities"]:
        """What the classifier's output holds: as configured, else read off the graph's end."""
        if self.config.scores is not None:
            return self.config.scores
        graph = self._graph.graph
        output = self.outputs[0].name
        producers = [node.op_type for node in graph.node if output in node.output]
        return "probabilities" if producers == ["Softmax"] else "logits"

    @cached_property
    def _graph(self) -> onnx.ModelProto:
        """The FP32 graph without its weights (read once)."""
        return onnx.load(str(self.fp32_path), load_external_data=False)

    @property
    def charset(self) -> list[str]:
        """CTC classes: the labels with the blank and trailing space the config says."""
        ctc = self.config.ctc or CtcConfig()
        charset = list(self.labels or [])
        if ctc.prepend_blank:
            charset.insert(ctc.blank_index, "<blank>")
        if ctc.append_space:
            charset.append(" ")
        return charset

    @property
    def token_inputs(self) -> dict[str, str]:
        """Graph input name -> tokenizer column."""
        text = self.config.text
        if text is not None and text.inputs:
            return dict(text.inputs)
        return {s.name: TOKEN_COLUMNS[s.name] for s in self.inputs if s.name in TOKEN_COLUMNS}

    # --- served interface -----------------------------------------------------------------

    def preprocessing(self) -> Preprocessing | None:
        task = self.config.task
        if task == "text-embedding":
            return TextPreprocessing(
                tokenizer=TOKENIZER_FILE,
                max_length=self.config.text.max_length if self.config.text else 256,
                inputs=self.token_inputs,
            )
        if task not in ("image-classification", "text-recognition"):
            return None
        pre = self.config.preprocessing or ImagePreprocessingConfig()
        layout = pre.layout
        shape = self.inputs[0].shape
        static_hw = shape[2:4] if layout == "NCHW" else shape[1:3]
        if pre.size is not None:
            height, width = pre.size
        elif pre.crop is not None:
            height, width = pre.crop if isinstance(pre.crop, tuple) else (pre.crop, pre.crop)
        elif all(d > 0 for d in static_hw):
            height, width = static_hw
        else:
            raise ValueError("the model's input size is dynamic: set preprocessing.size")
        for want, got, axis in zip((height, width), static_hw, ("height", "width"), strict=True):
            if got > 0 and got != want:
                raise ValueError(f"preprocessing {axis} {want}, but the model takes {got}")
        channels = shape[1] if layout == "NCHW" else shape[3]
        expected = 1 if pre.channels == "L" else 3
        if channels not in (-1, expected):
            raise ValueError(
                f"channels {pre.channels} give {expected} planes, the model takes {channels}"
                f" ({layout})"
            )
        for key, values in (("mean", pre.mean), ("std", pre.std)):
            if len(values) not in (1, expected):
                raise ValueError(
                    f"preprocessing.{key} has {len(values)} values; channels {pre.channels} "
                    f"give {expected} planes: give 1 value or {expected}"
                )
        resize = (
            "keep-aspect-pad-right"
            if pre.keep_aspect
            else "short-side-crop"
            if pre.resize_short is not None
            else "stretch"
        )
        return ImagePreprocessing(
            color=pre.channels,
            height=height,
            width=width,
            resize=resize,
            resize_short=pre.resize_short,
            layout=layout,
            invert=pre.invert,
            scale=pre.scale,
            mean=pre.mean,
            std=pre.std,
        )

    def postprocessing(self) -> Postprocessing | None:
        task = self.config.task
        if task == "image-classification" or (task == "tensor" and self.labels is not None):
            classes = self.outputs[0].shape[-1]
            labels = self.labels or [str(i) for i in range(max(classes, 0))]
            if not labels:
                raise ValueError("the model's class count is dynamic: give labels")
            return SoftmaxPostprocessing(labels=labels, scores=self.scores)
        if task == "text-recognition":
            ctc = self.config.ctc or CtcConfig()
            return CtcPostprocessing(charset=CHARSET_FILE, blank_index=ctc.blank_index)
        if task == "text-embedding":
            return EmbeddingPostprocessing(dimension=self.outputs[0].shape[-1])
        return None

    def write_assets(self, model_dir: Path) -> None:
        """Files the service reads next to model.json: tokenizer, charset."""
        if self.config.task in ("text-embedding", "text-recognition"):
            (model_dir / ASSETS).mkdir(parents=True, exist_ok=True)
        if self.config.task == "text-embedding":
            shutil.copyfile(self.tokenizer_path, model_dir / TOKENIZER_FILE)
        if self.config.task == "text-recognition":
            (model_dir / CHARSET_FILE).write_text(json.dumps(self.charset, ensure_ascii=False))

    @property
    def tokenizer_path(self) -> Path:
        text = self.config.text
        if text is not None and text.tokenizer is not None:
            return self.base / text.tokenizer
        if "tokenizer" in self.assets:
            return self.assets["tokenizer"]
        raise ValueError("text-embedding needs text.tokenizer (a tokenizers JSON file)")

    # --- data -----------------------------------------------------------------------------

    def feeds(self, dataset: Dataset, batch_size: int) -> list[Feed]:
        """The data set as model inputs, in batches (size 1 where the batch axis is static)."""
        size = batch_size if self.dynamic_batch else 1
        total = len(dataset)
        return [
            self._feed(dataset, start, min(start + size, total)) for start in range(0, total, size)
        ]

    def _feed(self, dataset: Dataset, start: int, end: int) -> Feed:
        if dataset.images is not None:
            pre = self.preprocessing()
            if not isinstance(pre, ImagePreprocessing):
                raise ValueError(f"a {self.config.task} model does not take images")
            spec = self.inputs[0]
            batch = np.stack([image_tensor(pre, image) for image in dataset.images[start:end]])
            return {spec.name: batch.astype(DATATYPES.get(spec.datatype, np.dtype(np.float32)))}
        if dataset.texts is not None:
            if self.config.task != "text-embedding":
                raise ValueError(f"a {self.config.task} model does not take text")
            return encode_texts(self._tokenizer, dataset.texts[start:end], self.token_inputs)
        assert dataset.tensors is not None
        feed = {}
        for spec in self.inputs:
            if spec.name not in dataset.tensors:
                raise ValueError(
                    f"the tensors have no array {spec.name!r} (they have {sorted(dataset.tensors)})"
                )
            array = dataset.tensors[spec.name][start:end]
            if not _fits(array.shape, spec.shape):
                raise ValueError(
                    f"array {spec.name!r} has rows of shape {list(array.shape[1:])}; the model's "
                    f"input {spec.name!r} is {spec.shape} (batch first, -1: any size)"
                )
            want = DATATYPES[spec.datatype]
            if not np.can_cast(array.dtype, want, casting="same_kind"):
                raise ValueError(f"array {spec.name!r} is {array.dtype}, the model takes {want}")
            feed[spec.name] = np.ascontiguousarray(array, dtype=want)
        return feed

    @cached_property
    def _tokenizer(self) -> Tokenizer:
        max_length = self.config.text.max_length if self.config.text else 256
        return load_tokenizer(self.tokenizer_path, max_length)

    # --- scores ---------------------------------------------------------------------------

    def score(
        self, outputs: np.ndarray, fp32: np.ndarray, truth: list[str] | None
    ) -> dict[str, float]:
        """Accuracy of one variant's first output: against the truth where known, and FP32."""
        task = self.config.task
        if task == "text-recognition":
            charset, blank = self.charset, (self.config.ctc or CtcConfig()).blank_index
            texts = [ctc_greedy(row, charset, blank).text for row in outputs]
            reference = [ctc_greedy(row, charset, blank).text for row in fp32]
            exact = metrics.strings(texts, truth) if truth is not None else {}
            agreement = float(np.mean([a == b for a, b in zip(texts, reference, strict=True)]))
            return {
                **exact,
                "string_agreement": agreement * 100.0,
                "top1_agreement": metrics.top1_agreement(outputs, fp32),
            }
        if task == "text-embedding":
            cosine = metrics.cosine_rows(outputs, fp32)
            return {
                "cosine_mean": float(cosine.mean()),
                "cosine_min": float(cosine.min()),
                **metrics.ranking(outputs, fp32),
            }
        scores: dict[str, float] = {}
        if metrics.has_classes(outputs):
            if truth is not None and outputs.ndim == 2:  # one label per row
                scores["top1"] = metrics.top1(outputs, self.class_indices(truth, outputs.shape[-1]))
            scores["top1_agreement"] = metrics.top1_agreement(outputs, fp32)
        if task == "tensor":
            if outputs[0].size > 1:
                cosine = metrics.cosine_rows(outputs, fp32)
                scores["cosine_mean"] = float(cosine.mean())
                scores["cosine_min"] = float(cosine.min())
            scores["r2_agreement"] = metrics.r2_agreement(outputs, fp32)
        return {**scores, "max_abs_diff": metrics.max_abs_diff(outputs, fp32)}

    def class_indices(self, truth: list[str], classes: int) -> list[int]:
        """Ground-truth labels as class indices: by the model's labels, or as index numbers."""
        labels = self.labels or [str(i) for i in range(classes)]
        index = {label: i for i, label in enumerate(labels)}
        if all(t in index for t in truth):
            return [index[t] for t in truth]
        if all(t.isdigit() and int(t) < classes for t in truth):
            return [int(t) for t in truth]
        unknown = sorted(set(truth) - set(index))
        named = "the config's labels" if self.labels else "no labels given, so class numbers"
        raise ValueError(
            f"evaluation labels {unknown[:8]} are neither the model's labels ({named}: "
            f"{labels[:8]}) nor class numbers below {classes}"
        )

    def default_budgets(self, has_truth: bool) -> list[BudgetConfig]:
        """Budgets when the config gives none: the task's usual metric, near FP32."""
        task = self.config.task
        if task == "text-recognition":
            if has_truth:
                return [BudgetConfig(metric="char_accuracy", max_drop=1.0)]
            return [BudgetConfig(metric="string_agreement", min_value=95.0)]
        if task == "text-embedding":
            return [BudgetConfig(metric="cosine_mean", min_value=0.99)]
        shape = self.outputs[0].shape
        if task == "image-classification" or (len(shape) == 2 and shape[1] != 1):
            if has_truth:
                return [BudgetConfig(metric="top1", max_drop=1.0)]
            return [BudgetConfig(metric="top1_agreement", min_value=99.0)]
        if len(shape) <= 2:  # one value per row: a regressor
            return [BudgetConfig(metric="r2_agreement", min_value=99.0)]
        return [BudgetConfig(metric="cosine_mean", min_value=0.99)]

    # --- samples --------------------------------------------------------------------------

    def write_samples(self, dataset: Dataset, model_dir: Path, count: int) -> list[Sample]:
        """Held-out items next to the model, for warm-up, docs and load tests."""
        folder = model_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        samples = []
        for index in range(min(count, len(dataset))):
            label = dataset.truth[index] if dataset.truth is not None else None
            if dataset.texts is not None:
                samples.append(Sample(text=dataset.texts[index], label=label))
            elif dataset.images is not None:
                name = f"samples/sample-{index:03d}.png"
                dataset.images[index].save(model_dir / name)
                samples.append(Sample(file=name, label=label))
            else:
                name = f"samples/sample-{index:03d}.npz"
                np.savez(model_dir / name, **self._feed(dataset, index, index + 1))  # type: ignore[arg-type]
                samples.append(Sample(tensors=name, label=label))
        return samples
