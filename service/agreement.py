"""How far a variant's outputs are from the reference variant's, per task (the compare route).

Which figures mean something depends on what the outputs are: scores whose argmax is the
answer (classifiers, recognisers, plain tensors) or embeddings whose direction is. That choice
is a table keyed by the manifest's task, not a branch in the route.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from service.manifest import Task

Figures = dict[str, float]


def top1(got: np.ndarray, ref: np.ndarray) -> Figures:
    """Share of rows whose highest score is at the same index."""
    return {"top1_agreement": float(np.mean(got.argmax(-1) == ref.argmax(-1)))}


def cosine(got: np.ndarray, ref: np.ndarray) -> Figures:
    """Mean and worst cosine similarity of the rows."""
    a, b = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    similarity = np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)
    return {"cosine_mean": float(similarity.mean()), "cosine_min": float(similarity.min())}


MEASURES: dict[Task, Callable[[np.ndarray, np.ndarray], Figures]] = {"text-embedding": cosine}
"""The measure per task where it is not top-1 agreement."""


def agreement(
    task: Task, outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> dict[str, Figures]:
    """Per output: max abs diff always, and the task's own measure."""
    measure = MEASURES.get(task, top1)
    figures: dict[str, Figures] = {}
    for name, array in outputs.items():
        ref = reference[name].astype(np.float64)
        got = array.astype(np.float64)
        figures[name] = {"max_abs_diff": float(np.max(np.abs(got - ref))), **measure(got, ref)}
    return figures
