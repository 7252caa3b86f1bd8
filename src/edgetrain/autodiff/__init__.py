"""Reverse-mode autodiff over ONNX graphs: one registered rule per op type."""

from . import rules  # noqa: F401  (registers the rules)
from ._engine import backward, build_gradients, differentiable_values, differentiate
from ._explain import describe_cuts, gradient_cuts
from ._registry import (
    EXPANSIONS,
    NON_DIFFERENTIABLE,
    RULES,
    GradContext,
    expansion,
    grad_rule,
    supported_ops,
)

__all__ = ["EXPANSIONS", "NON_DIFFERENTIABLE", "RULES", "GradContext", "backward",
           "build_gradients", "describe_cuts", "differentiable_values", "differentiate",
           "expansion", "grad_rule", "gradient_cuts", "supported_ops"]
