"""Calibration and evaluation data sets: image folders, .npz tensors, text files or plugins."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from build_models.config import DataConfig
from build_models.plugins import data_plugin

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
TRUTH_FILE = "labels.tsv"
"""In an image folder of a text-recognition model: `file<TAB>text` lines give ground truth."""


@dataclass
class Dataset:
    """Raw items of one kind, with ground truth where the data gives it (labels or strings)."""

    images: list[Image.Image] | None = None
    texts: list[str] | None = None
    tensors: dict[str, np.ndarray] | None = None
    truth: list[str] | None = None

    def __len__(self) -> int:
        if self.images is not None:
            return len(self.images)
        if self.texts is not None:
            return len(self.texts)
        assert self.tensors is not None
        return len(next(iter(self.tensors.values())))

    def head(self, count: int | None) -> Dataset:
        """The first `count` items (all when None)."""
        if count is None or count >= len(self):
            return self
        return self.select(list(range(count)))

    def select(self, indices: list[int]) -> Dataset:
        """The items at these indices, in this order."""

        def pick(items: list[Any] | None) -> list[Any] | None:
            return [items[i] for i in indices] if items is not None else None

        return Dataset(
            images=pick(self.images),
            texts=pick(self.texts),
            tensors={k: v[indices] for k, v in self.tensors.items()} if self.tensors else None,
            truth=pick(self.truth),
        )


def load_dataset(config: DataConfig, base: Path) -> Dataset:
    """The data set a config names, cut to its count."""
    if config.plugin is not None:
        dataset = data_plugin(config.plugin)(**config.options)
    elif config.images is not None:
        dataset = image_folder(base / config.images)
    elif config.tensors is not None:
        dataset = npz_tensors(base / config.tensors)
    else:
        assert config.text is not None
        dataset = text_lines(base / config.text)
    if len(dataset) == 0:
        raise ValueError(f"data set {config.model_dump(exclude_defaults=True)} is empty")
    return dataset.head(config.count)


def image_folder(folder: Path) -> Dataset:
    """Images in sorted order; label-named subfolders or a labels.tsv give the truth."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of images")
    files = sorted(
        Path(root, name)
        for root, _, names in os.walk(folder, followlinks=True)  # label folders may be links
        for name in names
        if Path(name).suffix.lower() in IMAGE_SUFFIXES
    )
    truth: list[str] | None = None
    table = folder / TRUTH_FILE
    if table.is_file():
        texts = dict(line.split("\t", 1) for line in table.read_text().splitlines() if "\t" in line)
        files = [p for p in files if p.relative_to(folder).as_posix() in texts]
        truth = [texts[p.relative_to(folder).as_posix()] for p in files]
    elif files and all(p.parent != folder for p in files):
        truth = [p.relative_to(folder).parts[0] for p in files]
    images: list[Image.Image] = []
    for path in files:
        with Image.open(path) as image:
            image.load()
            images.append(image)
    return Dataset(images=images, truth=truth)


NPZ_FORMAT = "an .npz archive (numpy.savez) of one array per graph input, batch first"


def npz_tensors(path: Path) -> Dataset:
    """One array per graph input, batch on axis 0; an optional `labels` array gives the truth."""
    try:
        loaded = np.load(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read it as {NPZ_FORMAT} ({exc})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: one bare array; tensors need {NPZ_FORMAT}")
    with loaded as arrays:
        tensors = {name: arrays[name] for name in arrays.files if name != "labels"}
        truth = [str(v) for v in arrays["labels"]] if "labels" in arrays.files else None
    if not tensors:
        raise ValueError(f"{path}: no arrays besides 'labels'; tensors need {NPZ_FORMAT}")
    if any(v.ndim == 0 for v in tensors.values()):
        raise ValueError(f"{path}: a scalar array; tensors need {NPZ_FORMAT}")
    sizes = {len(v) for v in tensors.values()}
    if len(sizes) != 1:
        raise ValueError(f"{path}: arrays disagree on the batch axis: {sorted(sizes)}")
    if truth is not None and len(truth) not in sizes:
        raise ValueError(f"{path}: {len(truth)} labels for {sizes.pop()} rows")
    return Dataset(tensors=tensors, truth=truth)


def text_lines(path: Path) -> Dataset:
    """One sentence per non-empty line."""
    return Dataset(texts=[line.strip() for line in path.read_text().splitlines() if line.strip()])
