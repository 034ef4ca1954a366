"""README's "Bring your own model", run as written: a user's ONNX classifier, PNGs, a YAML file.

The test plays the user: it trains a small CNN (not a built-in model) on pictures of three
defect kinds, exports it to ONNX and lays out the folder the README describes. Then it runs
the README's build command, starts the service as `make serve` does, and runs the README's
curl commands, and classifies every held-out image on both precisions over HTTP.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from loadtests.process import ServiceProcess
from service.manifest import ModelManifest
from tests.service.test_service_readme import curl_commands, runnable

README = Path(__file__).parents[2] / "README.md"
LABELS = ("ok", "scratch", "dent")
SIZE = 32


def section(markdown: str, title: str) -> str:
    """The README text under a `## title` heading, up to the next one."""
    start = markdown.index(f"## {title}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end != -1 else None]


BYO = section(README.read_text(), "Bring your own model")


def picture(label: str, rng: np.random.Generator) -> Image.Image:
    """A photographed part: grey metal with noise; a bright diagonal scratch or a dark dent."""
    shade = int(rng.integers(110, 150))
    pixels = rng.normal(shade, 12, (SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    if label == "scratch":
        x0, y0 = (int(v) for v in rng.integers(0, 10, 2))
        draw.line((x0, y0, x0 + 20, y0 + 20), fill=(235, 235, 235), width=2)
    elif label == "dent":
        cx, cy, r = (int(v) for v in (*rng.integers(10, 22, 2), rng.integers(4, 7)))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(40, 40, 40))
    return image


def tensor(image: Image.Image) -> np.ndarray:
    """What the README's preprocessing makes of an image: (pixel / 255 - 0.5) / 0.25, CHW."""
    return ((np.asarray(image, np.float32) / 255 - 0.5) / 0.25).transpose(2, 0, 1)


def train_and_export(images: list[Image.Image], labels: list[int], path: Path) -> None:
    """A small CNN trained for a few seconds, exported to ONNX with a dynamic batch axis."""
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, len(LABELS)),
    )  # fmt: skip
    x = torch.from_numpy(np.stack([tensor(i) for i in images]))
    y = torch.tensor(labels)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(8):
        for batch in torch.randperm(len(x)).split(32):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    model.eval()
    torch.onnx.export(
        model,
        (x[:1],),
        str(path),
        input_names=["image"],
        output_names=["scores"],
        dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's working folder holding defects/ exactly as the README lays it out."""
    root = tmp_path_factory.mktemp("byo")
    folder = root / "defects"
    folder.mkdir()
    rng = np.random.default_rng(0)
    train = [(picture(label, rng), index) for _ in range(100) for index, label in enumerate(LABELS)]
    train_and_export([i for i, _ in train], [k for _, k in train], folder / "model.onnx")
    (folder / "calib").mkdir()
    for n in range(100):
        picture(LABELS[n % 3], rng).save(folder / "calib" / f"{n:03d}.png")
    for label in LABELS:
        (folder / "eval" / label).mkdir(parents=True)
        for n in range(30):
            picture(label, rng).save(folder / "eval" / label / f"{n:03d}.png")
    config = re.search(r"```yaml\n(.*?)```", BYO, re.DOTALL)
    assert config, "the README's example has no model.yaml block"
    (folder / "model.yaml").write_text(config.group(1))
    return root


@pytest.fixture(scope="module")
def built(project: Path) -> Path:
    """The README's build command (its python form: make would set up another venv)."""
    command = re.search(r"# or: (python -m build_models [^\n]*)", BYO)
    assert command, "the README names no python -m build_models command"
    argv = [sys.executable, *shlex.split(command.group(1))[1:]]
    done = subprocess.run(argv, cwd=project, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return project / "models"


@pytest.fixture(scope="module")
def server(built: Path, project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The service on the built repository, started as `make serve` starts it."""
    from tests.conftest import start_server, stop_server

    process: ServiceProcess = start_server(built, tmp_path_factory.mktemp("log") / "server.log")
    yield process
    stop_server(process)


def test_build_report_names_the_model_and_its_gate(built: Path) -> None:
    """The build wrote both precisions, gated on top-1 against the eval folders' labels."""
    manifest = ModelManifest.read(built / "defects")
    assert set(manifest.variants) >= {"fp32", "int8"}
    assert [c.metric for c in manifest.variants["int8"].gate] == ["top1"]
    assert manifest.variants["fp32"].accuracy["top1"] >= 90
    assert manifest.default_reason
    report = (built / "report.md").read_text()
    assert "| defects | " in report and "## defects: candidates tried" in report


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_commands_answer(server: Any, project: Path) -> None:
    """The README's two curl lines, as pasted in the user's folder, say 'scratch'."""
    commands = curl_commands(BYO)
    assert len(commands) == 2
    for command in commands:
        argv = runnable(command, server.url, project / "models")
        done = subprocess.run(argv, cwd=project, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert '"label":"scratch"' in done.stdout.replace(" ", ""), done.stdout


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_every_held_out_image_over_http(server: Any, project: Path, precision: str) -> None:
    """Both precisions classify the user's held-out images as well as the build measured."""
    files = sorted((project / "defects" / "eval").rglob("*.png"))
    correct = 0
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for path in files:
            response = http.post(
                "/tasks/defects/classify",
                params={"precision": precision, "top_k": 1},
                files={"image": (path.name, path.read_bytes(), "image/png")},
            )
            assert response.status_code == 200, response.text
            assert response.json()["version"] == precision
            correct += response.json()["labels"][0]["label"] == path.parent.name
    assert correct / len(files) >= 0.9
