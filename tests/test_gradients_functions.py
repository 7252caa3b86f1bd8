"""Gradient rows of ops differentiated through their ONNX function body (no hand-written rule).

Where an op's schema defines it by other ONNX ops and edgetrain has no rule, the autodiff
replaces the node by that body in the graph it differentiates (``autodiff/_expand.py``). Each
row here is checked like a rule's: float64 finite differences, torch.autograd, onnxruntime
in float32, and a standard-ONNX backward graph.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from edgetrain.autodiff import RULES
from gradcheck import (
    C,
    Case,
    X,
    check_finite_differences,
    check_onnxruntime_float32,
    check_standard_onnx,
    check_torch,
    differentiate,
    positive,
)

CASES: list[Case] = []


def row(op: str, inputs: list, torch_fn=None, variant: str = "", **kw) -> None:  # type: ignore[no-untyped-def]
    CASES.append(Case(op, inputs, torch=torch_fn, variant=variant, **kw))


def i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def f32(v: float) -> float:
    return float(np.float32(v))


row("Shrink", [X((3, 4), lambda x: np.where(np.abs(np.abs(x) - 0.3) < 0.1, x * 2, x))],
    lambda x: torch.where(x < -f32(0.3), x + f32(0.1),
                          torch.where(x > f32(0.3), x - f32(0.1), torch.zeros_like(x))),
    attrs={"lambd": 0.3, "bias": 0.1})

# Context-dependent bodies, built for the node's input types, at the newest body version at
# or below the model's opset (SoftmaxCrossEntropyLoss's is registered for opset 13 only).
TARGETS = np.array([2, 0, 4, 1], dtype=np.int64)
row("SoftmaxCrossEntropyLoss", [X((4, 5)), C(TARGETS)],
    lambda x: F.cross_entropy(x, torch.as_tensor(TARGETS)), "mean")
row("SoftmaxCrossEntropyLoss", [X((4, 5)), C(TARGETS), X((5,), positive, grad=False)],
    lambda x, w: F.cross_entropy(x, torch.as_tensor(TARGETS), weight=w, reduction="sum"),
    "sum-weighted", attrs={"reduction": "sum"})
row("SoftmaxCrossEntropyLoss", [X((4, 5)), C(TARGETS)],
    lambda x: (F.cross_entropy(x, torch.as_tensor(TARGETS), reduction="none"),
               F.log_softmax(x, 1)), "none-with-log-prob", n_out=2,
    attrs={"reduction": "none"})
row("NegativeLogLikelihoodLoss", [X((4, 5)), C(TARGETS)],
    lambda x: F.nll_loss(x, torch.as_tensor(TARGETS)), "mean", opset=22)
row("NegativeLogLikelihoodLoss", [X((4, 5)), C(np.array([2, 0, -1, 1], dtype=np.int64))],
    lambda x: F.nll_loss(x, torch.tensor([2, 0, -1, 1]), ignore_index=-1, reduction="sum"),
    "ignore-index", attrs={"reduction": "sum", "ignore_index": -1}, opset=22)
row("CenterCropPad", [X((6, 3, 2)), C(np.array([4, 5], dtype=np.int64))],
    lambda x: F.pad(x[1:5], (0, 0, 1, 1)), "crop-and-pad", attrs={"axes": [0, 1]})

IDS = [c.id for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_finite_differences(case: Case) -> None:
    check_finite_differences(case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_torch(case: Case) -> None:
    check_torch(case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_onnxruntime_float32(case: Case) -> None:
    check_onnxruntime_float32(case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_is_standard_onnx(case: Case) -> None:
    check_standard_onnx(case)


def test_rows_are_function_ops_without_a_rule() -> None:
    for case in CASES:
        schema = onnx.defs.get_schema(case.op, case.opset, "")
        assert case.op not in RULES, f"{case.op} has a rule: its row belongs with the rules"
        assert schema.has_function or schema.has_context_dependent_function, case.op


def test_a_body_that_does_not_type_check_is_not_used() -> None:
    """MeanVarianceNormalization's body adds a float32 epsilon: for float64 input it is not
    a valid graph, so the op is refused by name rather than expanded into a broken graph."""
    from edgetrain.errors import UnsupportedOpError

    g = helper.make_graph(
        [helper.make_node("MeanVarianceNormalization", ["x"], ["y"], name="mvn",
                          axes=[0, 2, 3]),
         helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("loss", TensorProto.DOUBLE, [])])
    m = onnx.shape_inference.infer_shapes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), strict_mode=True)
    with pytest.raises(UnsupportedOpError, match="'MeanVarianceNormalization' \\(node 'mvn'"):
        differentiate(m, ["x"])
