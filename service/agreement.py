"""How far a variant's outputs are from the reference variant's: the arithmetic, and per task.

The build's accuracy gate (build_models.metrics) and the compare route both measure a variant
against FP32; the formulas live here once, since the service cannot import the build. Which
figures the compare route shows depends on what the outputs are: scores whose argmax is the
answer (classifiers, recognisers, plain tensors), embeddings whose direction is, or single
values per row (regressors), where only the distance means anything. That choice is a table
keyed by the manifest's task and the output's shape, not a branch in the route.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from service.manifest import Task

Figures = dict[str, float]


def max_abs_diff(outputs: np.ndarray, reference: np.ndarray) -> float:
    """The largest absolute difference of any value, in float64."""
    return float(np.max(np.abs(outputs.astype(np.float64) - reference.astype(np.float64))))


def top1_share(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Share (0-1) of rows whose argmax over the last axis matches the reference's."""
    return float(np.mean(outputs.argmax(-1) == reference.argmax(-1)))


def has_classes(outputs: np.ndarray) -> bool:
    """Scores over more than one class on the last axis: their argmax is an answer."""
    return outputs.ndim >= 2 and outputs.shape[-1] > 1


def cosine_rows(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (flattened past the batch axis) to the reference row."""
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)


def top1(got: np.ndarray, ref: np.ndarray) -> Figures:
    """Share of rows whose highest score is at the same index."""
    return {"top1_agreement": top1_share(got, ref)}


def values(got: np.ndarray, ref: np.ndarray) -> Figures:
    """Nothing past max abs diff: a value per row has no argmax, and a few rows no spread."""
    return {}


def cosine(got: np.ndarray, ref: np.ndarray) -> Figures:
    """Mean and worst cosine similarity of the rows."""
    similarity = cosine_rows(got, ref)
    return {"cosine_mean": float(similarity.mean()), "cosine_min": float(similarity.min())}


MEASURES: dict[Task, Callable[[np.ndarray, np.ndarray], Figures]] = {"text-embedding": cosine}
"""The measure per task where it is not top-1 agreement (classes) or none (plain values)."""


def agreement(
    task: Task, outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> dict[str, Figures]:
    """Per output: max abs diff always, and the task's own measure (or the output's)."""

    def measure(array: np.ndarray) -> Callable[[np.ndarray, np.ndarray], Figures]:
        return MEASURES.get(task) or (top1 if has_classes(array) else values)

    return {
        name: {
            "max_abs_diff": max_abs_diff(array, reference[name]),
            **measure(array)(array, reference[name]),
        }
        for name, array in outputs.items()
    }
