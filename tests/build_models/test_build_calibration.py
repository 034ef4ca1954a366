"""FeedReader and batched: the calibration data contract ONNX Runtime's calibrators rely on."""

from __future__ import annotations

import numpy as np
import pytest
from onnxruntime.quantization import CalibrationDataReader

from build_models.calibration import Feed, FeedReader, batched


def _feeds(count: int) -> list[Feed]:
    """Feeds tagged by index in their single value, so order is easy to check."""
    return [{"input": np.full((1, 2), index, dtype=np.float32)} for index in range(count)]


def _drain(reader: FeedReader) -> list[int]:
    """Read until None; return the index tag of each feed."""
    seen = []
    while (feed := reader.get_next()) is not None:
        seen.append(int(feed["input"][0, 0]))
    return seen


def test_is_an_ort_calibration_data_reader() -> None:
    """quantize_static type-checks its reader against CalibrationDataReader."""
    assert isinstance(FeedReader(_feeds(1)), CalibrationDataReader)


def test_yields_every_feed_in_order_then_none() -> None:
    """Calibrators read until None, so every feed must come out exactly once."""
    reader = FeedReader(_feeds(5))
    assert _drain(reader) == [0, 1, 2, 3, 4]
    assert reader.get_next() is None
    assert reader.get_next() is None


def test_rewind_restarts_from_the_first_feed() -> None:
    """Calibrators may read the data twice (e.g. histogram after min/max)."""
    reader = FeedReader(_feeds(3))
    _drain(reader)
    reader.rewind()
    assert _drain(reader) == [0, 1, 2]


def test_rewind_mid_way_restarts() -> None:
    """Rewind resets a partly read reader too."""
    reader = FeedReader(_feeds(3))
    reader.get_next()
    reader.get_next()
    reader.rewind()
    assert _drain(reader) == [0, 1, 2]


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [(0, 2, [0, 1]), (2, 4, [2, 3]), (4, 6, [4, 5]), (4, 100, [4, 5]), (6, 8, [])],
)
def test_set_range_limits_to_the_stride(start: int, end: int, expected: list[int]) -> None:
    """Strided calibration (CalibStridedMinMax) calls set_range(start, start + stride)."""
    reader = FeedReader(_feeds(6))
    reader.set_range(start, end)
    assert _drain(reader) == expected


def test_strided_calibration_loop_sees_every_feed_once() -> None:
    """The loop quantize_static runs for CalibStridedMinMax covers the data exactly once."""
    reader, stride = FeedReader(_feeds(6)), 2
    seen = []
    for start in range(0, len(reader), stride):
        reader.set_range(start_index=start, end_index=start + stride)
        seen.extend(_drain(reader))
    assert seen == list(range(6))


def test_set_range_restarts_a_drained_reader_and_rewind_keeps_the_range() -> None:
    """set_range resets the position; rewind replays the same window."""
    reader = FeedReader(_feeds(4))
    _drain(reader)
    reader.set_range(1, 3)
    assert _drain(reader) == [1, 2]
    reader.rewind()
    assert _drain(reader) == [1, 2]


def test_len_is_the_total_feed_count_regardless_of_range() -> None:
    """quantize_static checks len(reader) % stride, so len must be the whole data set."""
    reader = FeedReader(_feeds(6))
    assert len(reader) == 6
    reader.set_range(0, 2)
    assert len(reader) == 6


def test_feeds_are_copied_from_the_caller_sequence() -> None:
    """Mutating the caller's list after construction does not change what is replayed."""
    feeds = _feeds(2)
    reader = FeedReader(feeds)
    feeds.clear()
    assert _drain(reader) == [0, 1]


def test_empty_feed_list_is_rejected() -> None:
    """Calibrating on nothing would give garbage scales, so fail loudly at construction."""
    with pytest.raises(ValueError, match="at least one batch"):
        FeedReader([])


def test_batched_splits_aligned_arrays_with_a_partial_last_batch() -> None:
    """Every named array is cut at the same rows; the remainder becomes a smaller last feed."""
    images = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    masks = np.arange(10, dtype=np.int64)
    feeds = batched({"images": images, "masks": masks}, 4)
    assert [len(feed["images"]) for feed in feeds] == [4, 4, 2]
    for feed in feeds:
        assert set(feed) == {"images", "masks"}
        assert len(feed["masks"]) == len(feed["images"])
    np.testing.assert_array_equal(np.concatenate([f["images"] for f in feeds]), images)
    np.testing.assert_array_equal(np.concatenate([f["masks"] for f in feeds]), masks)


@pytest.mark.parametrize(("rows", "size", "lengths"), [(8, 4, [4, 4]), (3, 8, [3]), (1, 1, [1])])
def test_batched_lengths(rows: int, size: int, lengths: list[int]) -> None:
    """Exact multiples give full batches; a batch larger than the data gives one feed."""
    feeds = batched({"x": np.zeros((rows, 2), dtype=np.float32)}, size)
    assert [len(feed["x"]) for feed in feeds] == lengths
