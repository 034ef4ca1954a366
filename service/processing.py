"""Task pre- and post-processing, as each model's model.json describes it."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tokenizers import Tokenizer

from service.classification import top_k
from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.manifest import (
    CtcPostprocessing,
    ImagePreprocessing,
    ModelManifest,
    SoftmaxPostprocessing,
    TextPreprocessing,
)
from service.protocol import DATATYPES
from service.runtime import Feed

# Pillow's own bomb guard stays as a backstop; open_image checks EDGE_MAX_IMAGE_PIXELS first.
Image.MAX_IMAGE_PIXELS = 40_000_000
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
DEFAULT_MAX_PIXELS = 16_000_000


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True)
class TextScore:
    text: str
    confidence: float


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An uploaded PNG or JPEG as a PIL image: open_image, then its pixels decoded."""
    return load_pixels(open_image(data, max_pixels))


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """An uploaded PNG or JPEG with only its header read, its size checked against max_pixels.

    Only Pillow's PNG and JPEG parsers ever see client bytes (415 for anything else), and
    width x height is known before a single pixel is decoded: a small file that would
    decode to gigabytes is a 413, not a memory spike.
    """
    if not data:
        raise BadRequest("the uploaded image is empty")
    fmt = next((name for magic, name in _MAGIC.items() if data.startswith(magic)), None)
    if fmt is None:
        raise UnsupportedMediaType("the upload is not a PNG or JPEG image (the formats accepted)")
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
    except Image.DecompressionBombError:
        raise PayloadTooLarge(
            f"image is over {max_pixels} pixels (EDGE_MAX_IMAGE_PIXELS)"
        ) from None
    except _CORRUPT:
        raise _corrupt(fmt) from None
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (EDGE_MAX_IMAGE_PIXELS)"
        )
    return image


def load_pixels(image: Image.Image) -> Image.Image:
    """Decode the pixels of an image from open_image (400 if they are corrupt or cut short)."""
    try:
        image.load()
    except _CORRUPT:
        raise _corrupt(image.format or "image") from None
    return image


_CORRUPT = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError)
"""What Pillow raises on bytes that are not a valid image of their format."""


def _corrupt(fmt: str) -> BadRequest:
    return BadRequest(f"cannot decode the uploaded {fmt} image (corrupt or truncated)")


class Processor:
    """Turns images and sentences into feeds, and outputs into labels, text or embeddings."""

    def __init__(self, manifest: ModelManifest, model_dir: Path) -> None:
        self.manifest = manifest
        self.model_dir = model_dir
        self.input_names = [spec.name for spec in manifest.inputs]

    # --- images --------------------------------------------------------------------------

    def images_to_feed(self, images: list[Image.Image]) -> Feed:
        """Decoded images as the model's batched input, preprocessed as its manifest says."""
        pre = self.manifest.preprocessing
        if not isinstance(pre, ImagePreprocessing):
            raise BadRequest(f"model '{self.manifest.name}' does not take images")
        batch = np.stack([image_tensor(pre, image) for image in images])
        return {self.input_names[0]: batch.astype(self._input_dtype, copy=False)}

    @cached_property
    def _input_dtype(self) -> np.dtype[Any]:
        """The first input's numpy type (FP32 for most image models, UINT8 for some)."""
        return DATATYPES.get(self.manifest.inputs[0].datatype, np.dtype(np.float32))

    def classify(self, scores: np.ndarray, count: int) -> list[list[LabelScore]]:
        """Each row's `count` most probable labels, best first (softmax unless they are already)."""
        post = self.manifest.postprocessing
        assert isinstance(post, SoftmaxPostprocessing)
        if post.scores == "probabilities":
            probabilities = scores
        else:
            shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
        return [
            [LabelScore(post.labels[i], float(row[i])) for i in best]
            for row, best in zip(probabilities, top_k(probabilities, count), strict=True)
        ]

    def recognize(self, probabilities: np.ndarray) -> list[TextScore]:
        """Each row's text by greedy CTC decoding over the model's charset."""
        post = self.manifest.postprocessing
        assert isinstance(post, CtcPostprocessing)
        return [ctc_greedy(row, self.charset, post.blank_index) for row in probabilities]

    @cached_property
    def charset(self) -> list[str]:
        """The CTC model's characters, read once from the file its manifest names."""
        post = self.manifest.postprocessing
        assert isinstance(post, CtcPostprocessing)
        charset: list[str] = json.loads((self.model_dir / post.charset).read_text())
        return charset

    # --- text ----------------------------------------------------------------------------

    def texts_to_feed(self, texts: list[str]) -> Feed:
        """Sentences as token inputs (truncated to max_length, padded to the longest)."""
        pre = self.manifest.preprocessing
        if not isinstance(pre, TextPreprocessing):
            raise BadRequest(f"model '{self.manifest.name}' does not take text")
        return encode_texts(self.tokenizer, texts, pre.inputs)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The model's own tokenizer, loaded once from its folder."""
        pre = self.manifest.preprocessing
        assert isinstance(pre, TextPreprocessing)
        return load_tokenizer(self.model_dir / pre.tokenizer, pre.max_length)

    # --- samples -------------------------------------------------------------------------

    def sample_feed(self, index: int = 0) -> Feed:
        """A real input from the model's shipped samples, for warm-up and load tests."""
        sample = self.manifest.samples[index]
        if sample.tensors is not None:
            with np.load(self.model_dir / sample.tensors) as arrays:
                return {name: arrays[name] for name in self.input_names}
        if sample.text is not None:
            return self.texts_to_feed([sample.text])
        assert sample.file is not None
        return self.images_to_feed([decode_image((self.model_dir / sample.file).read_bytes())])


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    """The model's own tokenizer, truncating to max_length and padding to the longest text."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding()
    return tokenizer


def encode_texts(tokenizer: Tokenizer, texts: list[str], inputs: Mapping[str, str]) -> Feed:
    """INT64 token columns (ids, attention_mask, type_ids) under the graph's input names."""
    encodings = tokenizer.encode_batch(texts)
    columns = {
        "ids": lambda e: e.ids,
        "attention_mask": lambda e: e.attention_mask,
        "type_ids": lambda e: e.type_ids,
    }
    return {
        name: np.asarray([columns[column](e) for e in encodings], dtype=np.int64)
        for name, column in inputs.items()
    }


def image_tensor(pre: ImagePreprocessing, image: Image.Image) -> np.ndarray:
    """CHW (or HWC) float32 following the manifest: resize, invert, scale, normalise."""
    image = _resized(pre, image.convert("RGB" if pre.color == "BGR" else pre.color))
    # In 0..1 first, then scale * 255: the same maths as (pixel * scale), computed the classic
    # way so that 1/255 models get exactly the float inputs their exporters saw.
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    elif pre.color == "BGR":
        pixels = pixels[:, :, ::-1]
    if pre.invert:
        pixels = 1.0 - pixels
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    hwc = (pixels * np.float32(pre.scale * 255.0) - mean) / std
    if hwc.shape[1] < pre.width:  # keep-aspect: pad on the right with zeros after normalising
        hwc = np.pad(hwc, ((0, 0), (0, pre.width - hwc.shape[1]), (0, 0)))
    out = hwc if pre.layout == "NHWC" else hwc.transpose(2, 0, 1)
    return np.ascontiguousarray(out, dtype=np.float32)


def _resized(pre: ImagePreprocessing, image: Image.Image) -> Image.Image:
    """The image at the model's geometry: stretched, text-line fitted, or short side + crop."""
    if pre.resize == "stretch":
        return image.resize((pre.width, pre.height), Image.Resampling.BOX)
    if pre.resize == "keep-aspect-pad-right":
        width = min(pre.width, max(1, math.ceil(pre.height * image.width / image.height)))
        return image.resize((width, pre.height), Image.Resampling.BILINEAR)
    short = pre.resize_short or min(pre.height, pre.width)
    ratio = short / min(image.width, image.height)
    size = (
        max(pre.width, round(image.width * ratio)),
        max(pre.height, round(image.height * ratio)),
    )
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - pre.width) // 2, (size[1] - pre.height) // 2
    return image.crop((left, top, left + pre.width, top + pre.height))


def ctc_greedy(probabilities: np.ndarray, charset: list[str], blank: int = 0) -> TextScore:
    """Best path decoding: argmax per step, collapse repeats, drop blanks, trim margin spaces."""
    best = probabilities.argmax(axis=-1)
    scores = probabilities.max(axis=-1)
    keep = (best != blank) & np.concatenate(([True], best[1:] != best[:-1]))
    text = "".join(charset[i] for i in best[keep] if i < len(charset)).strip()
    confidence = float(scores[keep].mean()) if keep.any() else 0.0
    return TextScore(text, confidence)
