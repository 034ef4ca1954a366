"""The OCR source's pieces, on the real shipped graph but without a full build."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import version_converter

from build_models.metrics import edit_distance
from build_models.plugins.ocr import (
    OPSET,
    PREPROCESSING,
    narrow_convs_and_attention,
    shipped_model,
)
from build_models.plugins.pplcnet_graph import simplify_pplcnet
from build_models.plugins.text_lines import render_samples
from service.processing import ctc_greedy, image_tensor
from service.sessions import open_session


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The shipped recogniser at opset 17, as shipped and after the exact rewrites."""
    original = version_converter.convert_version(onnx.load(str(shipped_model())), OPSET)
    simplified = onnx.ModelProto()
    simplified.CopyFrom(original)
    simplify_pplcnet(simplified)
    return original, simplified


def test_rewrites_are_exact_and_remove_elementwise_ops(
    graphs: tuple[onnx.ModelProto, onnx.ModelProto], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Folding the affine and HardSwish patterns must not change what the model reads."""
    original, simplified = graphs
    folder = tmp_path_factory.mktemp("ocr")
    onnx.save(original, str(folder / "original.onnx"))
    onnx.save(simplified, str(folder / "simplified.onnx"))
    images = [image for image, _ in render_samples(8, seed=5)]
    feed = {
        original.graph.input[0].name: np.stack([image_tensor(PREPROCESSING, i) for i in images])
    }
    before = open_session(folder / "original.onnx").run(None, feed)[0]
    after = open_session(folder / "simplified.onnx").run(None, feed)[0]
    np.testing.assert_allclose(after, before, atol=1e-3)
    assert (after.argmax(-1) == before.argmax(-1)).all()
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    assert count(simplified, "HardSwish") > 0
    assert count(simplified, "Mul") < count(original, "Mul")


def test_exclusion_rule_keeps_depthwise_se_and_attention_in_fp32(
    graphs: tuple[onnx.ModelProto, onnx.ModelProto],
) -> None:
    """The rule names real nodes: narrow Convs, SE Convs and activation x activation MatMuls."""
    _, simplified = graphs
    excluded = set(narrow_convs_and_attention(simplified))
    nodes = {n.name: n for n in simplified.graph.node}
    assert excluded and excluded <= set(nodes)
    ops = {nodes[name].op_type for name in excluded}
    assert ops == {"Conv", "MatMul"}
    convs = [n for n in simplified.graph.node if n.op_type == "Conv"]
    assert 0 < sum(n.name in excluded for n in convs) < len(convs)


def test_rendering_is_deterministic_and_seeds_differ() -> None:
    """Calibration and evaluation sets come from different seeds and rebuild identically."""
    first, again, other = render_samples(6, 1), render_samples(6, 1), render_samples(6, 2)
    assert [t for _, t in first] == [t for _, t in again]
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for (a, _), (b, _) in zip(first, again, strict=True)
    )
    assert [t for _, t in first] != [t for _, t in other]
    assert all(3 <= len(text) <= 20 for _, text in first)


def test_ctc_greedy_collapses_repeats_drops_blanks_and_trims() -> None:
    """Best-path decoding as PP-OCR does it: blank is index 0."""
    charset = ["<blank>", "a", "b", " "]
    steps = [3, 1, 1, 0, 1, 2, 2, 0, 3]  # " aa_abb_ " -> "aab" after trimming
    probabilities = np.eye(4, dtype=np.float32)[steps]
    result = ctc_greedy(probabilities, charset)
    assert result.text == "aab"
    assert result.confidence == pytest.approx(1.0)
    assert ctc_greedy(np.eye(4, dtype=np.float32)[[0, 0]], charset).text == ""


@pytest.mark.parametrize(
    ("a", "b", "distance"), [("", "", 0), ("abc", "abc", 0), ("abc", "abd", 1), ("", "ab", 2)]
)
def test_edit_distance(a: str, b: str, distance: int) -> None:
    assert edit_distance(a, b) == distance
