"""What a model source provides to the pipeline: the model-specific pieces and nothing else."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from build_models.calibration import Feed
from build_models.recipe import Budget, Recipe, StaticRecipe
from service.manifest import Postprocessing, Preprocessing, Sample, Task, TensorSpec


@dataclass(frozen=True)
class Interface:
    """How clients talk to the model: tensors plus pre- and post-processing."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: Preprocessing
    postprocessing: Postprocessing


class ModelSource(ABC):
    """A model the build can make: obtain or train it, feed calibration, score variants."""

    name: ClassVar[str]
    task: ClassVar[Task]
    description: ClassVar[str]
    recipes: ClassVar[Mapping[str, Recipe]]
    budgets: ClassVar[tuple[Budget, ...]]

    @abstractmethod
    def export_fp32(self, path: Path) -> None:
        """Train or obtain the model and write its FP32 ONNX file (opset >= 17)."""

    @abstractmethod
    def calibration_feeds(self, recipe: StaticRecipe) -> list[Feed]:
        """Representative input batches, disjoint from the evaluation set."""

    @abstractmethod
    def evaluation_feeds(self) -> list[Feed]:
        """Held-out input batches, never used for training or calibration."""

    @abstractmethod
    def score(self, outputs: np.ndarray, fp32_outputs: np.ndarray) -> dict[str, float]:
        """Task accuracy of one variant's first output over the evaluation feeds."""

    @abstractmethod
    def latency_feed(self, batch_size: int) -> Feed:
        """A realistic input of the given batch size for timing."""

    @abstractmethod
    def interface(self) -> Interface:
        """The model's tensors and processing, as written to model.json."""

    @abstractmethod
    def write_assets(self, model_dir: Path) -> list[Sample]:
        """Write samples (and tokenizer or charset files) next to the model."""

    def build_info(self) -> dict[str, Any]:
        """Where the weights and data came from, for model.json."""
        return {}
