"""Accuracy metrics of a variant against ground truth and against FP32, one function each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Against FP32, the service's compare route measures the same way: one formula for both.
from service.agreement import cosine_rows as cosine_rows
from service.agreement import has_classes as has_classes
from service.agreement import max_abs_diff as max_abs_diff
from service.agreement import top1_share


@dataclass(frozen=True)
class Metric:
    """What a budget must know of a metric: which way is better, its unit, what it needs."""

    higher_is_better: bool = True
    percent: bool = False
    needs_truth: bool = False

    def margin(self, value: float, bound: float) -> float:
        """How far inside its budget's bound a value is (negative: outside, it fails)."""
        return value - bound if self.higher_is_better else bound - value


METRICS: dict[str, Metric] = {
    "top1": Metric(percent=True, needs_truth=True),
    "exact_match": Metric(percent=True, needs_truth=True),
    "char_accuracy": Metric(percent=True, needs_truth=True),
    "top1_agreement": Metric(percent=True),
    "string_agreement": Metric(percent=True),
    "r2_agreement": Metric(percent=True),
    "cosine_mean": Metric(),
    "cosine_min": Metric(),
    "ranking_spearman": Metric(),
    "ranking_neighbour_kept": Metric(),
    "max_abs_diff": Metric(higher_is_better=False),
}
"""Every metric the build measures; a budget may name any that its model's task measures."""


def top1(outputs: np.ndarray, truth: Sequence[int]) -> float:
    """Share (in %) of rows whose argmax is the true class."""
    return float(np.mean(outputs.argmax(-1) == np.asarray(truth)) * 100.0)


def top1_agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Share (in %) of rows whose argmax over the last axis matches the reference."""
    return top1_share(outputs, reference) * 100.0


def r2_agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    """R² (in %) of the outputs as predictions of the reference, per column past the batch axis.

    Top-1 and cosine say nothing of one value per row (a regressor's output): this does. 100
    when the outputs equal the reference; 0 or below when they predict it no better than its
    mean. A reference that never varies counts as matched only where the outputs equal it.
    """
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    error = float(np.sum((a - b) ** 2))
    spread = float(np.sum((b - b.mean(axis=0)) ** 2))
    if spread == 0.0:
        return 100.0 if error == 0.0 else 0.0
    return (1.0 - error / spread) * 100.0


def ranking(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Do embeddings rank like FP32's: Spearman of pair similarities, nearest neighbour kept."""
    from scipy.stats import spearmanr

    a = outputs / np.linalg.norm(outputs, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    sim_a, sim_b = a @ a.T, b @ b.T
    upper = np.triu_indices(len(a), k=1)
    spearman = float(spearmanr(sim_a[upper], sim_b[upper]).statistic)
    np.fill_diagonal(sim_a, -np.inf)
    np.fill_diagonal(sim_b, -np.inf)
    kept = float(np.mean(sim_a.argmax(axis=1) == sim_b.argmax(axis=1)))
    return {"ranking_spearman": spearman, "ranking_neighbour_kept": kept}


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute all cost 1)."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def strings(texts: Sequence[str], truth: Sequence[str]) -> dict[str, float]:
    """Exact match and character accuracy (1 - edit distance / characters), in %."""
    distance = sum(edit_distance(t, g) for t, g in zip(texts, truth, strict=True))
    characters = max(1, sum(len(g) for g in truth))
    return {
        "exact_match": float(np.mean([t == g for t, g in zip(texts, truth, strict=True)])) * 100,
        "char_accuracy": max(0.0, 1.0 - distance / characters) * 100.0,
    }
