"""The minilm source's pieces without a torch export: sentences, bypass, metrics, recipes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import build_models.__main__ as cli
from build_models.config import load_config
from build_models.metrics import cosine_rows, ranking
from build_models.plugins.minilm import QUANTIZED_OPS, keep_residual_path_fp32
from build_models.plugins.sentences import (
    MAX_WORDS,
    MIN_WORDS,
    N_CALIB_POOL,
    N_HELD_OUT,
    RANKING_GROUPS,
    RANKING_SENTENCES,
    load_sentences,
)
from build_models.quantize import float_bypass
from build_models.recipe import DynamicRecipe, StaticRecipe
from build_models.search import static_recipe

TOPICS, PER_TOPIC = 10, 5
DIMENSION = 384


@pytest.fixture(scope="module")
def sentences() -> tuple[list[str], list[str]]:
    """(calibration, held_out) as the build loads them."""
    return load_sentences()


def test_sentences_are_deterministic(sentences: tuple[list[str], list[str]]) -> None:
    """A rebuild calibrates and evaluates on exactly the same sentences, in the same order."""
    assert load_sentences() == sentences


def test_calibration_and_held_out_are_disjoint_and_sized(
    sentences: tuple[list[str], list[str]],
) -> None:
    """Evaluating on calibration sentences would flatter the INT8 variant."""
    calibration, held_out = sentences
    assert len(calibration) == len(set(calibration)) == N_CALIB_POOL
    assert len(held_out) == len(set(held_out)) == N_HELD_OUT
    assert not set(calibration) & set(held_out)
    config, _ = load_config(cli.BUILTIN_CONFIGS / "minilm.yaml")
    assert config.calibration is not None and config.calibration.count is not None
    assert config.calibration.count <= N_CALIB_POOL


def test_sentences_are_prose(sentences: tuple[list[str], list[str]]) -> None:
    """Docstring sentences, not code: bounded length, a full stop, no line breaks."""
    for sentence in [*sentences[0], *sentences[1]]:
        assert MIN_WORDS <= len(sentence.split()) <= MAX_WORDS, sentence
        assert sentence.endswith("."), sentence
        assert "\n" not in sentence and sentence == sentence.strip()
    assert (MIN_WORDS, MAX_WORDS) == (5, 40)


def test_ranking_set_has_ten_topics_of_five() -> None:
    """RANKING_GROUPS labels each hand-written sentence with its topic, five per topic."""
    assert len(RANKING_SENTENCES) == len(set(RANKING_SENTENCES)) == TOPICS * PER_TOPIC
    assert len(RANKING_GROUPS) == len(RANKING_SENTENCES)
    assert RANKING_GROUPS == tuple(i // PER_TOPIC for i in range(TOPICS * PER_TOPIC))
    assert all(s.endswith(".") for s in RANKING_SENTENCES)


# --- float_bypass on hand-made QDQ graphs ------------------------------------------------


def _q_dq(name: str, source: str) -> list[onnx.NodeProto]:
    """source -> QuantizeLinear -> DequantizeLinear -> f"{name}_dq" (uint8 scale/zero point)."""
    return [
        helper.make_node(
            "QuantizeLinear", [source, "a_scale", "a_zero"], [f"{name}_q"], f"{name}_quant"
        ),
        helper.make_node(
            "DequantizeLinear", [f"{name}_q", "a_scale", "a_zero"], [f"{name}_dq"], f"{name}_deq"
        ),
    ]


def _weight(name: str, shape: tuple[int, ...]) -> tuple[list[onnx.TensorProto], onnx.NodeProto]:
    """An int8 initializer and its DequantizeLinear (weights have no QuantizeLinear)."""
    values = np.arange(np.prod(shape), dtype=np.int8).reshape(shape)
    tensors = [
        numpy_helper.from_array(values, f"{name}_int8"),
        numpy_helper.from_array(np.array(0.05, np.float32), f"{name}_scale"),
    ]
    node = helper.make_node(
        "DequantizeLinear", [f"{name}_int8", f"{name}_scale"], [f"{name}_dq"], f"{name}_deq"
    )
    return tensors, node


def _model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    inputs: list[onnx.ValueInfoProto],
) -> onnx.ModelProto:
    activation_qparams = [
        numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [*initializers, *activation_qparams],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def residual_block() -> onnx.ModelProto:
    """x -> Q -> DQ -> MatMul(DQ(w)) -> + DQ(x) -> Add(DQ(b)) -> y: a residual around a linear."""
    weight, weight_dq = _weight("w", (4, 4))
    bias, bias_dq = _weight("b", (4,))
    nodes = [
        *_q_dq("x", "x"),
        weight_dq,
        bias_dq,
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["h"], "linear"),
        helper.make_node("Add", ["x_dq", "h"], ["r"], "residual"),
        helper.make_node("Add", ["r", "b_dq"], ["y"], "bias"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    return _model(nodes, [*weight, *bias], [x])


def embedding_lookup() -> onnx.ModelProto:
    """DQ(table) -> Gather(ids) -> Q -> DQ -> Add: the activation comes out of a QDQ group."""
    table, table_dq = _weight("table", (10, 4))
    nodes = [
        table_dq,
        helper.make_node("Gather", ["table_dq", "ids"], ["e"], "lookup"),
        *_q_dq("e", "e"),
        helper.make_node("Add", ["e_dq", "x"], ["y"], "add_positions"),
    ]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    return _model(nodes, table, [ids, x])


def _run(model: onnx.ModelProto, **feed: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    output: np.ndarray = session.run(["y"], feed)[0]
    return output


def _inputs(model: onnx.ModelProto) -> dict[str, list[str]]:
    return {node.name: list(node.input) for node in model.graph.node}


def test_float_bypass_lets_the_residual_read_fp32() -> None:
    """The residual Add reads x itself; the quantized MatMul keeps its DQ(Q(x)) input."""
    model = residual_block()
    before = _inputs(model)
    x = np.linspace(-1.3, 1.7, 12, dtype=np.float32).reshape(3, 4)
    y_before = _run(model, x=x)
    assert float_bypass(model, ("MatMul", "Gather")) == 1
    after = _inputs(model)
    assert after["residual"] == ["x", "h"]
    assert after["linear"] == ["x_dq", "w_dq"]
    assert after["bias"] == ["r", "b_dq"]  # a weight's DQ has no Q: not an activation pair
    assert {k: v for k, v in after.items() if k != "residual"} == {
        k: v for k, v in before.items() if k != "residual"
    }
    onnx.checker.check_model(model)
    # Only the residual term changed: y gains exactly the rounding error x - DQ(Q(x)).
    rounded = (np.clip(np.round(x / 0.02) + 128, 0, 255) - 128) * np.float32(0.02)
    np.testing.assert_allclose(_run(model, x=x) - y_before, x - rounded, atol=1e-5)
    assert float_bypass(model, ("MatMul", "Gather")) == 0  # idempotent


def test_float_bypass_counts_every_edit() -> None:
    """Two unquantized consumers of the same DQ output are two edits; QDQ nodes are untouched."""
    model = residual_block()
    model.graph.node.append(helper.make_node("Relu", ["x_dq"], ["unused"], "side"))
    assert float_bypass(model, ("MatMul",)) == 2
    after = _inputs(model)
    assert after["side"] == ["x"] and after["residual"] == ["x", "h"]
    assert after["x_deq"] == ["x_q", "a_scale", "a_zero"]


def test_float_bypass_keeps_tensors_out_of_a_qdq_group() -> None:
    """Bypassing Gather's Q/DQ would make ORT dequantize the whole embedding table."""
    model = embedding_lookup()
    before = _inputs(model)
    assert keep_residual_path_fp32(model) == 0
    assert _inputs(model) == before
    assert "Gather" in QUANTIZED_OPS


def test_float_bypass_skips_quantized_op_types() -> None:
    """A consumer whose op type is quantized keeps DQ(Q(x)), whatever the op is."""
    model = residual_block()
    assert float_bypass(model, ("MatMul", "Add")) == 0
    assert _inputs(model)["residual"] == ["x_dq", "h"]


# --- metrics on synthetic embeddings ----------------------------------------------------


def _topical(rng: np.random.Generator, rows: int, spread: float = 0.3) -> np.ndarray:
    """Unit vectors clustered by RANKING_GROUPS-style topics (rows // 5), DIMENSION wide."""
    centres = rng.standard_normal((rows // PER_TOPIC + 1, DIMENSION))
    groups = np.arange(rows) // PER_TOPIC
    vectors = centres[groups] + spread * rng.standard_normal((rows, DIMENSION))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((DIMENSION, DIMENSION)))
    return q.astype(np.float32)


def test_ranking_of_identical_embeddings_is_perfect() -> None:
    """Same vectors: every neighbour kept and Spearman 1."""
    reference = _topical(np.random.default_rng(0), len(RANKING_GROUPS))
    result = ranking(reference.copy(), reference)
    assert result["ranking_neighbour_kept"] == 1.0
    assert result["ranking_spearman"] == pytest.approx(1.0)


def test_ranking_drops_with_noise() -> None:
    """Heavy noise scrambles neighbours and pair similarities."""
    rng = np.random.default_rng(1)
    reference = _topical(rng, len(RANKING_GROUPS))
    noisy = reference + 0.2 * rng.standard_normal(reference.shape).astype(np.float32)
    result = ranking(noisy, reference)
    assert result["ranking_spearman"] < 0.99
    assert result["ranking_neighbour_kept"] < 1.0


def test_rotation_keeps_ranking_but_not_cosine() -> None:
    """A rotation keeps every similarity (ranking intact) but not the vectors (cosine drops);
    noise lowers both."""
    rng = np.random.default_rng(3)
    reference = _topical(rng, len(RANKING_GROUPS))
    rotated = reference @ _rotation(rng)
    assert cosine_rows(rotated, reference).mean() < 0.5
    assert ranking(rotated, reference)["ranking_neighbour_kept"] == 1.0
    assert ranking(rotated, reference)["ranking_spearman"] == pytest.approx(1.0, abs=1e-6)
    noisy = reference + 0.02 * rng.standard_normal(reference.shape).astype(np.float32)
    cosine = cosine_rows(noisy, reference)
    assert 0.5 < cosine.mean() < 0.99 and cosine.min() <= cosine.mean()
    assert ranking(noisy, reference)["ranking_spearman"] < 0.99


# --- recipes as recorded in model.json ----------------------------------------------------


def _builtin_recipe(model: str) -> StaticRecipe:
    config, _ = load_config(cli.BUILTIN_CONFIGS / f"{model}.yaml")
    assert config.quantization.candidates
    return static_recipe(config.quantization.candidates[0], batches=8)


@pytest.mark.parametrize(
    ("model", "field", "function"),
    [
        ("minilm", "post_quantize", "keep_residual_path_fp32"),
        ("ocr", "exclude_rule", "narrow_convs_and_attention"),
    ],
)
def test_static_recipe_describe_names_its_functions(model: str, field: str, function: str) -> None:
    """Plugins named in a config are recorded by function name and docstring; the whole is JSON."""
    recipe = _builtin_recipe(model)
    described = json.loads(json.dumps(recipe.describe()))
    assert described["method"] == "static"
    assert described[field].startswith(f"{function}: ")
    assert described[field].split(": ", 1)[1]  # the docstring's first line
    assert described["op_types_to_quantize"] == list(recipe.op_types_to_quantize or [])


def test_dynamic_recipe_describe_is_json() -> None:
    """The dynamic recipe's extra options (an onnx enum value) serialise too."""
    recipe = DynamicRecipe(extra_options={"DefaultTensorType": TensorProto.FLOAT})
    described = json.loads(json.dumps(recipe.describe()))
    assert described["method"] == "dynamic"
    assert described["extra_options"] == {"DefaultTensorType": TensorProto.FLOAT}
