"""Gradient table of the activation rules (rules/activation.py): Selu, Celu, ThresholdedRelu,
Swish — by the method of tests/test_gradients.py (float64 finite differences, torch.autograd,
onnxruntime in float32, a standard-ONNX backward graph). Float attributes are float32 in
ONNX, so the torch side uses them rounded the same way."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from edgetrain.autodiff import RULES
from gradcheck import (
    Case,
    X,
    autodiff_gradients,
    away_from,
    build,
    nonzero,
    on_grid,
    table_tests,
)


def f32(v: float) -> float:
    return float(np.float32(v))


SELU_ALPHA, SELU_GAMMA = f32(1.67326319217681884765625), f32(1.05070102214813232421875)


def t_selu(alpha: float, gamma: float):  # type: ignore[no-untyped-def]
    return lambda x: gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


def _in_float32(op: str, ins: list[str], **attrs: float
                ) -> tuple[list[onnx.NodeProto], list[str]]:
    return [helper.make_node("Cast", [ins[0]], ["x32"], to=TensorProto.FLOAT),
            helper.make_node(op, ["x32"], ["y32"], **attrs),
            helper.make_node("Cast", ["y32"], ["out0"], to=TensorProto.DOUBLE)], ["out0"]


CASES: list[Case] = [
    Case("Selu", [X((3, 4), nonzero)], torch=t_selu(SELU_ALPHA, SELU_GAMMA)),
    Case("Selu", [X((3, 4), nonzero)], torch=t_selu(f32(1.5), f32(0.7)), variant="attrs",
         attrs={"alpha": 1.5, "gamma": 0.7}),
    # Celu is float32-only: a float64 row runs it between casts, on inputs whose float32
    # steps are exact, with finite differences of float32 size (as test_gradients' Cast row).
    Case("Celu", [X((3, 4), lambda v: on_grid(nonzero(v)))], variant="float32",
         nodes=lambda ins: _in_float32("Celu", ins), fd_eps=2.0 ** -10, rtol=1e-3, atol=1e-4),
    Case("Celu", [X((3, 4), lambda v: on_grid(nonzero(v)))], variant="float32-alpha",
         nodes=lambda ins: _in_float32("Celu", ins, alpha=0.3), fd_eps=2.0 ** -10,
         rtol=1e-3, atol=1e-4),
    Case("ThresholdedRelu", [X((3, 4), away_from(1.0))], torch=lambda x: x * (x > 1.0)),
    Case("ThresholdedRelu", [X((3, 4), away_from(0.3))],
         torch=lambda x: x * (x > f32(0.3)), variant="alpha", attrs={"alpha": 0.3}),
    Case("Swish", [X((3, 4))], torch=F.silu, opset=24),
    Case("Swish", [X((3, 4))], torch=lambda x: x * torch.sigmoid(f32(1.7) * x),
         variant="alpha", attrs={"alpha": 1.7}, opset=24),
]

(test_matches_finite_differences, test_matches_torch, test_onnxruntime_float32,
 test_backward_is_standard_onnx) = table_tests(CASES)


def test_every_activation_rule_has_a_row() -> None:
    mine = {op for op, fn in RULES.items() if fn.__module__.endswith(".activation")}
    assert mine and not mine - {c.op for c in CASES}, sorted(mine - {c.op for c in CASES})


@pytest.mark.parametrize("variant", ["float32", "float32-alpha"])
def test_celu_matches_torch_in_float32(variant: str) -> None:
    """Celu's rule (run in float32, the op's only type) against torch's float32 gradient."""
    case = next(c for c in CASES if c.op == "Celu" and c.variant == variant)
    b = build(case)
    _, got = autodiff_gradients(b)
    alpha = f32(0.3) if variant.endswith("alpha") else 1.0
    x = torch.tensor(b.feeds["in0"], dtype=torch.float32, requires_grad=True)
    (F.celu(x, alpha) * torch.as_tensor(b.weights[0], dtype=torch.float32)).sum().backward()
    np.testing.assert_allclose(got["in0"], x.grad.numpy(), rtol=1e-6, atol=1e-6)
