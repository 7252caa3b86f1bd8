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
from onnx import TensorProto, helper

from edgetrain.autodiff import RULES
from gradcheck import (
    Case,
    X,
    check_finite_differences,
    check_onnxruntime_float32,
    check_standard_onnx,
    check_torch,
    differentiate,
    nonzero,
)

CASES: list[Case] = []


def row(op: str, inputs: list, torch_fn=None, variant: str = "", **kw) -> None:  # type: ignore[no-untyped-def]
    CASES.append(Case(op, inputs, torch=torch_fn, variant=variant, **kw))


def i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def f32(v: float) -> float:
    return float(np.float32(v))


SELU_ALPHA, SELU_GAMMA = f32(1.67326319217681884765625), f32(1.05070102214813232421875)

row("Selu", [X((3, 4), nonzero)],
    lambda x: SELU_GAMMA * torch.where(x > 0, x, SELU_ALPHA * (torch.exp(x) - 1)))
row("ThresholdedRelu", [X((3, 4), lambda x: np.where(np.abs(x - 0.3) < 0.1, x + 0.2, x))],
    lambda x: x * (x > f32(0.3)), attrs={"alpha": 0.3})
row("Shrink", [X((3, 4), lambda x: np.where(np.abs(np.abs(x) - 0.3) < 0.1, x * 2, x))],
    lambda x: torch.where(x < -f32(0.3), x + f32(0.1),
                          torch.where(x > f32(0.3), x - f32(0.1), torch.zeros_like(x))),
    attrs={"lambd": 0.3, "bias": 0.1})
row("Swish", [X((3, 4))], lambda x: x * torch.sigmoid(f32(1.5) * x), attrs={"alpha": 1.5},
    opset=24)

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
