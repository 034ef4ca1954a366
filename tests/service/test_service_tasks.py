"""The classify task endpoint on real held-out digits, uploaded as PNG and JPEG files."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from build_models.plugins.digits import HeldOut, digit_to_png

VARIANTS = ("fp32", "int8")
SAMPLE = 100
RENDERINGS: dict[str, Callable[[np.ndarray], bytes]] = {}


def rendering(name: str, size: int, fmt: str) -> None:
    """Register one way a user might photograph or scan a digit."""

    def render(pixels: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        digit_to_png(pixels, size).save(buffer, format=fmt)
        return buffer.getvalue()

    RENDERINGS[name] = render


rendering("png-64", 64, "PNG")
rendering("png-200", 200, "PNG")
rendering("jpeg-96", 96, "JPEG")


@pytest.fixture(scope="module")
def http(live_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=10) as client:
        yield client


def classify(http: httpx.Client, image: bytes, **params: Any) -> dict[str, Any]:
    response = http.post("/tasks/digits/classify", params=params, files={"image": ("d", image)})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


@pytest.mark.parametrize("name", RENDERINGS)
@pytest.mark.parametrize("precision", VARIANTS)
def test_held_out_digits_are_classified(
    http: httpx.Client, digits: HeldOut, precision: str, name: str
) -> None:
    """Accuracy over HTTP on unseen images matches what the build measured (>= 95% top-1)."""
    indices = digits.test[:SAMPLE]
    correct = 0
    for index in indices:
        result = classify(http, RENDERINGS[name](digits.images[index]), precision=precision)
        assert (result["model"], result["version"]) == ("digits", precision)
        correct += result["labels"][0]["label"] == str(digits.labels[index])
    assert correct / len(indices) >= 0.95, f"{correct}/{len(indices)} correct"


@pytest.mark.parametrize(("top_k", "expected"), [(1, 1), (3, 3), (10, 10), (100, 10)])
def test_top_k(http: httpx.Client, digits: HeldOut, top_k: int, expected: int) -> None:
    """top_k labels come back, best first, as probabilities."""
    image = RENDERINGS["png-64"](digits.images[digits.test[0]])
    labels = classify(http, image, top_k=top_k)["labels"]
    scores = [item["score"] for item in labels]
    assert len(labels) == expected
    assert len({item["label"] for item in labels}) == expected
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores) and sum(scores) <= 1.0 + 1e-5
    if expected == 10:
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_default_precision_is_the_model_default(http: httpx.Client, digits: HeldOut) -> None:
    """No precision parameter means the default version from the model metadata."""
    default = http.get("/v2/models/digits").json()["parameters"]["default_version"]
    image = RENDERINGS["png-64"](digits.images[digits.test[0]])
    assert classify(http, image)["version"] == default


def shipped_samples(repository: Path) -> list[tuple[Path, str]]:
    manifest = json.loads((repository / "digits" / "model.json").read_text())
    return [(repository / "digits" / s["file"], s["label"]) for s in manifest["samples"]]


@pytest.mark.parametrize("precision", VARIANTS)
def test_shipped_samples_classify_to_their_labels(
    http: httpx.Client, model_repository: Path, precision: str
) -> None:
    """The samples the README and load tests use are right in both precisions."""
    samples = shipped_samples(model_repository)
    assert samples
    for path, label in samples:
        top = classify(http, path.read_bytes(), precision=precision)["labels"][0]
        assert top["label"] == label, path.name
