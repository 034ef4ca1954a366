"""Triton's classification extension: `class_count` on an output returns its top-k classes.

On the wire the output's parameter is "classification" (tritonclient's
InferRequestedOutput(name, class_count=k) sends {"classification": k}).

Per row of an output [batch, classes] (or one row [classes]), the k largest values as BYTES
strings "score:index:label" (Triton's format, score as C's %f; ":label" only where the model
has labels), largest first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import BadRequest
from service.manifest import SoftmaxPostprocessing

if TYPE_CHECKING:
    from service.registry import ModelEntry


def class_counts(outputs: Sequence[tuple[str, Mapping[str, Any]]] | None) -> dict[str, int]:
    """The class count asked for per output name (empty: no output asked for one)."""
    counts: dict[str, int] = {}
    for name, parameters in outputs or ():
        if "classification" not in parameters:
            continue
        count = parameters["classification"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise BadRequest(
                f"output '{name}': classification (class_count) must be a non-negative integer"
            )
        if count > 0:  # tritonclient sends 0 for "no classification"
            counts[name] = count
    return counts


def top_k(rows: np.ndarray, k: int) -> np.ndarray:
    """The indices of each row's k highest scores, best first; ties keep index order.

    Stable, so the v2 classification extension and the task routes rank ties alike.
    """
    return np.argsort(-rows, axis=-1, kind="stable")[..., :k]


def classify(
    outputs: dict[str, np.ndarray], counts: Mapping[str, int], labels: Sequence[str] | None
) -> dict[str, np.ndarray]:
    """Outputs with each class_count output replaced by its top-k "score:index:label" strings."""
    result = dict(outputs)
    for name, count in counts.items():
        array = outputs[name]
        if array.ndim not in (1, 2) or array.dtype.kind not in "biuf":
            raise BadRequest(
                f"output '{name}' of shape {list(array.shape)} cannot be classified "
                "(class_count needs a numeric [classes] or [batch, classes] output)"
            )
        rows = array.reshape(1, -1) if array.ndim == 1 else array
        k = min(count, rows.shape[1])
        top = top_k(rows, k)
        strings = [
            [_entry(float(row[index]), int(index), labels) for index in indices]
            for row, indices in zip(rows, top, strict=True)
        ]
        classified = np.array(strings, dtype=object)
        result[name] = classified.reshape(k) if array.ndim == 1 else classified
    return result


def _entry(score: float, index: int, labels: Sequence[str] | None) -> bytes:
    text = f"{score:f}:{index}"
    if labels is not None and index < len(labels):
        text += f":{labels[index]}"
    return text.encode()


def labels_of(entry: ModelEntry) -> list[str] | None:
    """The model's class labels (softmax post-processing), if it has any."""
    post = entry.manifest.postprocessing
    return post.labels if isinstance(post, SoftmaxPostprocessing) else None
