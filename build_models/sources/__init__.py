"""One module per model source; SOURCES names them for the CLI."""

from __future__ import annotations

from collections.abc import Callable

from build_models.sources.base import ModelSource
from build_models.sources.digits import DigitsSource
from build_models.sources.minilm import MiniLMSource
from build_models.sources.ocr import OcrSource

SOURCES: dict[str, Callable[[], ModelSource]] = {
    "digits": DigitsSource,
    "minilm": MiniLMSource,
    "ocr": OcrSource,
}
