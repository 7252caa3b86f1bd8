"""Activations: Selu, Celu, ThresholdedRelu, Swish.

Some have ONNX function bodies, but only from recent opsets (Selu-22, Swish-24), and a rule is
a handful of nodes against the body's dozen. Attributes are float32 in ONNX: the derivative
uses them rounded as the forward sees them (``float_const``).
"""

from __future__ import annotations

from ..._ir import Builder, Value
from .._helpers import float_const, zero
from .._registry import GradContext, grad_rule

SELU_ALPHA = 1.67326319217681884765625
SELU_GAMMA = 1.05070102214813232421875


@grad_rule("Selu")
def selu(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = γx for x > 0, γα(eˣ - 1) otherwise: dx = γ·dy, or dy·γα·eˣ."""
    x, dy = ctx.x(0), ctx.dy()
    alpha = float_const(op, ctx.attr("alpha", SELU_ALPHA), x)
    gamma = float_const(op, ctx.attr("gamma", SELU_GAMMA), x)
    neg = op.Mul(op.Mul(alpha, gamma), op.Exp(x))
    return [op.Mul(dy, op.Where(op.Greater(x, 0.0), gamma, neg))]


@grad_rule("Celu")
def celu(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = max(0, x) + min(0, α(e^(x/α) - 1)): dx = dy for x > 0, dy·e^(x/α) otherwise."""
    x, dy = ctx.x(0), ctx.dy()
    alpha = float_const(op, ctx.attr("alpha", 1.0), x)
    return [op.Where(op.Greater(x, 0.0), dy, op.Mul(dy, op.Exp(op.Div(x, alpha))))]


@grad_rule("ThresholdedRelu")
def thresholded_relu(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x for x > α, else 0: dx = dy where x > α."""
    x, dy = ctx.x(0), ctx.dy()
    alpha = float_const(op, ctx.attr("alpha", 1.0), x)
    return [op.Where(op.Greater(x, alpha), dy, zero(op, dy))]


@grad_rule("Swish")
def swish(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x·σ(αx): dx = dy·(s + αx·s·(1 - s)), s = σ(αx)."""
    x, dy = ctx.x(0), ctx.dy()
    ax = op.Mul(x, float_const(op, ctx.attr("alpha", 1.0), x))
    s = op.Sigmoid(ax)
    return [op.Mul(dy, op.Add(s, op.Mul(op.Mul(ax, s), op.Sub(1.0, s))))]

