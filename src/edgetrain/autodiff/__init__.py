"""Reverse-mode autodiff over ONNX graphs: one registered rule per op type."""

from . import rules  # noqa: F401  (registers the rules)
from ._engine import build_gradients, static_facts
from ._registry import RULES, GradContext, grad_rule, supported_ops, unbroadcast

__all__ = ["RULES", "GradContext", "build_gradients", "grad_rule", "static_facts",
           "supported_ops", "unbroadcast"]
