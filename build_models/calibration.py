"""Calibration data reader: feeds representative batches to ONNX Runtime's calibrators."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

Feed = dict[str, np.ndarray]


class FeedReader(CalibrationDataReader):
    """Replays a fixed list of input feeds; supports strided calibration through set_range."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        if not feeds:
            raise ValueError("calibration needs at least one batch")
        self._feeds = list(feeds)
        self._start, self._end = 0, len(self._feeds)
        self._position = 0

    def get_next(self) -> Feed | None:
        if self._start + self._position >= self._end:
            return None
        feed = self._feeds[self._start + self._position]
        self._position += 1
        return feed

    def rewind(self) -> None:
        self._position = 0

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end = start_index, min(end_index, len(self._feeds))
        self._position = 0

    def __len__(self) -> int:
        return len(self._feeds)


def batched(arrays: dict[str, np.ndarray], batch_size: int) -> list[Feed]:
    """Split aligned arrays (same first axis) into feeds of at most batch_size rows."""
    total = len(next(iter(arrays.values())))
    return [
        {name: array[start : start + batch_size] for name, array in arrays.items()}
        for start in range(0, total, batch_size)
    ]
