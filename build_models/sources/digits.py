"""digits: a conv-pool-dense CNN trained here on scikit-learn's load_digits (8x8, 0..16)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from build_models.calibration import Feed, batched
from build_models.evaluate import top1_agreement
from build_models.recipe import Budget, StaticRecipe
from build_models.sources.base import Interface, ModelSource
from service.manifest import ImagePreprocessing, Sample, SoftmaxPostprocessing, TensorSpec

SEED = 0
TEST_SIZE = 360
CALIBRATION_SIZE = 200
EPOCHS = 30
SAMPLE_COUNT = 20
SAMPLE_PIXELS = 64  # samples are shipped as 64x64 PNGs, dark ink on white, like a scan
OPSET = 17


def _split(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed train / calibration / test indices."""
    order = np.random.default_rng(SEED).permutation(n)
    test = order[:TEST_SIZE]
    calibration = order[TEST_SIZE : TEST_SIZE + CALIBRATION_SIZE]
    return order[TEST_SIZE + CALIBRATION_SIZE :], calibration, test


def digit_to_png(pixels: np.ndarray, size: int = SAMPLE_PIXELS) -> Image.Image:
    """Render an 8x8 load_digits array (0..16 ink) as a grayscale image, dark ink on white."""
    gray = (255.0 - pixels.reshape(8, 8) * (255.0 / 16.0)).round().astype(np.uint8)
    return Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.NEAREST)


class DigitsSource(ModelSource):
    """Trained in ~10 s with a fixed seed and split, so rebuilds give the same numbers."""

    name = "digits"
    task = "image-classification"
    description = "Handwritten digit classifier (conv-pool-dense CNN) trained on load_digits."
    recipes = {
        "int8": StaticRecipe(
            calibrate_method="MinMax",
            activation_type="QUInt8",
            weight_type="QInt8",
            per_channel=True,
            calibration_samples=CALIBRATION_SIZE,
            calibration_batch_size=20,
        )
    }
    budgets = (Budget("top1", max_drop=0.5),)

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images = (digits.data.astype(np.float32)).reshape(-1, 1, 8, 8)
        self.labels = digits.target.astype(np.int64)
        self.train, self.calibration, self.test = _split(len(self.labels))

    def export_fp32(self, path: Path) -> None:
        import torch

        threads, deterministic = (
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
        )
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            model = self._train(torch)
        finally:  # the build may run inside a longer process (tests): leave torch as it was
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )

    def _train(self, torch: Any) -> Any:
        """Adam on the training split, fixed seed and single thread so rebuilds are identical."""
        torch.manual_seed(SEED)
        model = _cnn(torch)
        x = torch.from_numpy(self.images[self.train])
        y = torch.from_numpy(self.labels[self.train])
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

    def calibration_feeds(self, recipe: StaticRecipe) -> list[Feed]:
        chosen = self.calibration[: recipe.calibration_samples]
        return batched({"input": self.images[chosen]}, recipe.calibration_batch_size)

    def evaluation_feeds(self) -> list[Feed]:
        return batched({"input": self.images[self.test]}, 64)

    def score(self, outputs: np.ndarray, fp32_outputs: np.ndarray) -> dict[str, float]:
        truth = self.labels[self.test]
        return {
            "top1": float(np.mean(outputs.argmax(-1) == truth) * 100.0),
            "top1_agreement": top1_agreement(outputs, fp32_outputs),
            "max_abs_diff": float(np.max(np.abs(outputs - fp32_outputs))),
        }

    def latency_feed(self, batch_size: int) -> Feed:
        return {"input": self.images[self.test[:batch_size]]}

    def interface(self) -> Interface:
        return Interface(
            inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 1, 8, 8])],
            outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])],
            preprocessing=ImagePreprocessing(
                color="L", height=8, width=8, resize="stretch", invert=True, scale=16.0
            ),
            postprocessing=SoftmaxPostprocessing(labels=[str(d) for d in range(10)]),
        )

    def write_assets(self, model_dir: Path) -> list[Sample]:
        folder = model_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        samples = []
        for index in self.test[:SAMPLE_COUNT]:
            name = f"samples/digit-{index:04d}.png"
            digit_to_png(self.images[index]).save(model_dir / name)
            samples.append(Sample(file=name, label=str(self.labels[index])))
        return samples

    def build_info(self) -> dict[str, Any]:
        return {
            "source": "trained here on sklearn.datasets.load_digits",
            "seed": SEED,
            "split": {
                "train": len(self.train),
                "calibration": len(self.calibration),
                "test": len(self.test),
            },
            "epochs": EPOCHS,
        }


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
