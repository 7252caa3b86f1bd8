"""Gradient table of the trigonometric and hyperbolic rules (rules/trig.py), by the method of
tests/test_gradients.py: float64 finite differences, torch.autograd, onnxruntime in float32
and a standard-ONNX backward graph. Inputs are drawn inside each function's smooth domain."""

from __future__ import annotations

import numpy as np
import torch

from edgetrain.autodiff import RULES
from gradcheck import Case, X, table_tests


def inside_unit(x: np.ndarray) -> np.ndarray:
    """Into (-0.9, 0.9): asin, acos, atanh."""
    return 0.9 * np.tanh(x)


def above_one(x: np.ndarray) -> np.ndarray:
    """Into [1.2, ∞): acosh."""
    return 1.2 + np.abs(x)


CASES: list[Case] = [
    Case("Sin", [X((3, 4))], torch=torch.sin),
    Case("Cos", [X((3, 4))], torch=torch.cos),
    Case("Tan", [X((3, 4), inside_unit)], torch=torch.tan),
    Case("Asin", [X((3, 4), inside_unit)], torch=torch.asin),
    Case("Acos", [X((3, 4), inside_unit)], torch=torch.acos),
    Case("Atan", [X((3, 4))], torch=torch.atan),
    Case("Sinh", [X((3, 4))], torch=torch.sinh),
    Case("Cosh", [X((3, 4))], torch=torch.cosh),
    Case("Asinh", [X((3, 4))], torch=torch.asinh),
    Case("Acosh", [X((3, 4), above_one)], torch=torch.acosh),
    Case("Atanh", [X((3, 4), inside_unit)], torch=torch.atanh),
    Case("Sin", [X((2, 3), declared=("N", 3))], torch=torch.sin, variant="dynamic-batch"),
]

(test_matches_finite_differences, test_matches_torch, test_onnxruntime_float32,
 test_backward_is_standard_onnx) = table_tests(CASES)


def test_every_trig_rule_has_a_row() -> None:
    mine = {op for op, fn in RULES.items() if fn.__module__.endswith(".trig")}
    assert mine and not mine - {c.op for c in CASES}, sorted(mine - {c.op for c in CASES})
