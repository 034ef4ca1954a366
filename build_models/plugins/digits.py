"""digits: a conv-pool-dense CNN trained here on scikit-learn's load_digits (8x8, 0..16)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from build_models import plugins
from build_models.data import Dataset
from build_models.plugins import SourceOutput

SEED = 0
TEST_SIZE = 360
CALIBRATION_SIZE = 200
EPOCHS = 30
SAMPLE_PIXELS = 64  # samples are shipped as 64x64 PNGs, dark ink on white, like a scan
OPSET = 17


def split_indices(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed train / calibration / test indices."""
    order = np.random.default_rng(SEED).permutation(n)
    test = order[:TEST_SIZE]
    calibration = order[TEST_SIZE : TEST_SIZE + CALIBRATION_SIZE]
    return order[TEST_SIZE + CALIBRATION_SIZE :], calibration, test


def digit_to_png(pixels: np.ndarray, size: int = SAMPLE_PIXELS) -> Image.Image:
    """Render an 8x8 load_digits array (0..16 ink) as a grayscale image, dark ink on white."""
    gray = (255.0 - pixels.reshape(8, 8) * (255.0 / 16.0)).round().astype(np.uint8)
    return Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.NEAREST)


def dataset() -> tuple[np.ndarray, np.ndarray]:
    """load_digits as (N, 1, 8, 8) float32 ink values 0..16 and int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data.astype(np.float32).reshape(-1, 1, 8, 8), digits.target.astype(np.int64)


@dataclass(frozen=True)
class HeldOut:
    """load_digits with the build's fixed split: `test` indexes the held-out set."""

    images: np.ndarray
    labels: np.ndarray
    test: np.ndarray


def held_out() -> HeldOut:
    images, labels = dataset()
    return HeldOut(images, labels, split_indices(len(labels))[2])


@plugins.source("digits")
def train_digits(out: Path) -> SourceOutput:
    """Train the CNN in ~10 s with a fixed seed and split, so rebuilds give the same numbers."""
    import torch

    images, labels = dataset()
    train, calibration, test = split_indices(len(labels))
    threads, deterministic = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
    )
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        model = _train(torch, images[train], labels[train])
    finally:  # the build may run inside a longer process (tests): leave torch as it was
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(out),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    return SourceOutput(
        info={
            "source": "trained here on sklearn.datasets.load_digits",
            "seed": SEED,
            "split": {"train": len(train), "calibration": len(calibration), "test": len(test)},
            "epochs": EPOCHS,
        }
    )


@plugins.data("digits")
def digit_images(split: str) -> Dataset:
    """The calibration or test split rendered as the PNG scans clients send (64x64, ink dark)."""
    images, labels = dataset()
    splits = dict(
        zip(("train", "calibration", "evaluation"), split_indices(len(labels)), strict=True)
    )
    if split not in splits:
        raise ValueError(f"digits data: split must be one of {sorted(splits)}, not {split!r}")
    chosen = splits[split]
    return Dataset(
        images=[digit_to_png(images[i]) for i in chosen],
        truth=[str(labels[i]) for i in chosen],
    )


def _train(torch: Any, images: np.ndarray, labels: np.ndarray) -> Any:
    """Adam on the training split, fixed seed and single thread so rebuilds are identical."""
    torch.manual_seed(SEED)
    model = _cnn(torch)
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimiser.step()
    return model.eval()


def _cnn(torch: Any) -> Any:
    """Conv-pool-dense: the classic MNIST-style net, sized for 8x8 inputs (values 0..16)."""
    nn = torch.nn

    class DigitsCNN(nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 64, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )
            self.classifier = nn.Sequential(
                nn.Flatten(),
                nn.Linear(64 * 4 * 4, 512),
                nn.ReLU(),
                nn.Dropout(0.25),
                nn.Linear(512, 10),
            )

        def forward(self, x: Any) -> Any:
            return self.classifier(self.features(x / 16.0))

    return DigitsCNN()
