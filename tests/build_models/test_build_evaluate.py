"""Accuracy budgets, the gate, and the evaluation helpers (timing, op counts, agreement)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from build_models.calibration import Feed
from build_models.config import BudgetConfig
from build_models.evaluate import (
    COUNTED_OPS,
    first_output,
    interleaved_latency_ms,
    op_counts,
)
from build_models.metrics import top1_agreement
from build_models.recipe import Budget
from build_models.search import gate
from service.manifest import GateCheck
from service.sessions import open_session

FeedMaker = Callable[..., list[Feed]]


@pytest.mark.parametrize(
    ("budget", "reference", "bound"),
    [
        (Budget("top1", min_value=90), None, 90.0),
        (Budget("top1", min_value=90), 99.0, 90.0),
        (Budget("top1", max_drop=0.5), 99.0, 98.5),
        (Budget("top1", min_value=90, max_drop=0.5), 99.0, 98.5),  # the drop is stricter
        (Budget("top1", min_value=95, max_drop=10), 99.0, 95.0),  # the floor is stricter
        (Budget("top1", min_value=95, max_drop=10), None, 95.0),  # no reference: floor only
    ],
)
def test_budget_bound(budget: Budget, reference: float | None, bound: float) -> None:
    """The bound is the strictest of the floor and FP32 minus the allowed drop."""
    assert budget.bound(reference) == pytest.approx(bound)


@pytest.mark.parametrize(
    ("budget", "rule"),
    [
        (Budget("top1", min_value=90), "top1 >= 90"),
        (Budget("top1", max_drop=0.5), "top1 >= fp32 - 0.5"),
        (Budget("f1", min_value=0.8, max_drop=0.02), "f1 >= 0.8 and f1 >= fp32 - 0.02"),
    ],
)
def test_budget_rule(budget: Budget, rule: str) -> None:
    """The rule is the human-readable budget written into model.json and the failure message."""
    assert budget.rule() == rule


def _budget(metric: str, **bounds: float) -> BudgetConfig:
    return BudgetConfig(metric=metric, **bounds)


@pytest.mark.parametrize(
    ("int8", "passed"),
    [(99.0, True), (98.75, True), (98.5, True), (98.25, False), (50.0, False)],
)
def test_gate_max_drop(int8: float, passed: bool) -> None:
    """A variant passes at exactly FP32 - max_drop and fails just below it."""
    (check,) = gate({"top1": int8}, {"top1": 99.0}, [_budget("top1", max_drop=0.5)])
    assert check == GateCheck(
        metric="top1",
        value=int8,
        reference=99.0,
        bound=98.5,
        passed=passed,
        rule="top1 >= fp32 - 0.5",
    )


def test_gate_checks_every_budget_in_order() -> None:
    """One check per budget, each judged on its own metric."""
    budgets = [_budget("top1", max_drop=0.5), _budget("top1_agreement", min_value=99.0)]
    checks = gate(
        {"top1": 98.0, "top1_agreement": 99.5}, {"top1": 99.0, "top1_agreement": 100.0}, budgets
    )
    assert [(c.metric, c.value, c.reference, c.bound, c.passed) for c in checks] == [
        ("top1", 98.0, 99.0, 98.5, False),
        ("top1_agreement", 99.5, 100.0, 99.0, True),
    ]


def test_gate_impossible_floor_fails_even_when_equal_to_fp32() -> None:
    """A floor above what FP32 reaches fails every variant: the budget is absolute."""
    (check,) = gate({"top1": 100.0}, {"top1": 100.0}, [_budget("top1", min_value=101)])
    assert not check.passed
    assert (check.value, check.reference, check.bound) == (100.0, 100.0, 101.0)


def test_gate_without_fp32_metric_uses_floor_only() -> None:
    """A metric only the variant reports has no reference; the floor still applies."""
    (check,) = gate({"cosine_min": 0.99}, {}, [_budget("cosine_min", min_value=0.99)])
    assert check.reference is None
    assert check.passed


@pytest.mark.parametrize(
    ("value", "passed"), [(0.5, True), (2.0, True), (2.01, False), (45.0, False)]
)  # fmt: skip
def test_gate_error_metric_is_bounded_from_above(value: float, passed: bool) -> None:
    """max_abs_diff is an error: the budget is a ceiling, the strictest of max_value and FP32's
    value plus max_rise; a large error fails however it compares with the floor metrics."""
    budget = _budget("max_abs_diff", max_value=3.0, max_rise=2.0)
    (check,) = gate({"max_abs_diff": value}, {"max_abs_diff": 0.0}, [budget])
    assert (check.bound, check.passed) == (2.0, passed)
    assert check.rule == "max_abs_diff <= 3 and max_abs_diff <= fp32 + 2"


def test_interleaved_latency_one_positive_median_per_session(
    tiny_fp32: Path, tiny_int8: Path, make_feeds: FeedMaker
) -> None:
    """Every session gets a finite positive median in ms (speed itself is not asserted)."""
    sessions = {"fp32": open_session(tiny_fp32), "int8": open_session(tiny_int8)}
    (feed,) = make_feeds(count=1, batch=8)
    medians = interleaved_latency_ms(sessions, feed, runs=5, warmup=1)
    assert set(medians) == {"fp32", "int8"}
    for value in medians.values():
        assert isinstance(value, float)
        assert math.isfinite(value) and value > 0


def test_op_counts_fp32(tiny_fp32: Path) -> None:
    """An unquantized graph counts its nodes and zero of every quantization op."""
    assert op_counts(tiny_fp32) == {"nodes": 3, **dict.fromkeys(COUNTED_OPS, 0)}


def test_op_counts_static_int8(tiny_int8: Path) -> None:
    """A QDQ graph counts Q and DQ nodes, none of the dynamic/integer ops, and all nodes."""
    counts = op_counts(tiny_int8)
    graph = onnx.load(str(tiny_int8)).graph
    assert counts["nodes"] == len(graph.node)
    assert counts["QuantizeLinear"] == sum(n.op_type == "QuantizeLinear" for n in graph.node) > 0
    assert counts["DequantizeLinear"] == sum(n.op_type == "DequantizeLinear" for n in graph.node)
    assert counts["DequantizeLinear"] > counts["QuantizeLinear"]  # weights: DQ only
    assert counts["DynamicQuantizeLinear"] == counts["MatMulInteger"] == 0
    assert counts["ConvInteger"] == 0


def test_first_output_concatenates_over_feeds(tiny_fp32: Path, make_feeds: FeedMaker) -> None:
    """Batched evaluation equals one big run: rows in order, first output only."""
    session = open_session(tiny_fp32)
    feeds = make_feeds(count=3, batch=5)
    whole = session.run(None, {"x": np.concatenate([f["x"] for f in feeds])})[0]
    np.testing.assert_allclose(first_output(session, feeds), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("outputs", "reference", "agreement"),
    [
        ([[0.1, 0.9], [0.8, 0.2]], [[0.0, 1.0], [1.0, 0.0]], 100.0),
        ([[0.1, 0.9], [0.8, 0.2]], [[0.0, 1.0], [0.0, 1.0]], 50.0),
        ([[0.9, 0.1], [0.8, 0.2]], [[0.0, 1.0], [0.0, 1.0]], 0.0),
        ([[1, 2, 3], [3, 2, 1], [1, 3, 2], [2, 1, 3]], [[0, 0, 1]] * 4, 50.0),
    ],
)
def test_top1_agreement(
    outputs: list[list[float]], reference: list[list[float]], agreement: float
) -> None:
    """Percentage of rows whose argmax matches the reference's argmax."""
    assert top1_agreement(np.array(outputs), np.array(reference)) == pytest.approx(agreement)


def test_top1_agreement_uses_the_last_axis() -> None:
    """Sequence outputs [N, T, C] compare per position, over the class axis."""
    reference = np.eye(3)[None].repeat(2, axis=0)  # [2, 3, 3]
    outputs = reference.copy()
    outputs[1, 2] = [1.0, 0.0, 0.0]  # one of six positions disagrees
    assert top1_agreement(outputs, reference) == pytest.approx(500 / 6)
    assert top1_agreement(reference, reference) == 100.0
