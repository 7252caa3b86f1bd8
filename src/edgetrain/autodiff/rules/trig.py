"""Trigonometric and hyperbolic functions and their inverses (elementwise).

Each derivative is written with the forward's own input (or output, where that saves a node)
in the input's precision; outside an inverse function's domain the forward is already NaN.
"""

from __future__ import annotations

from ..._ir import Builder, Value
from .._registry import GradContext, grad_rule


@grad_rule("Sin")
def sin(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = sin x: dx = dy·cos x."""
    return [op.Mul(ctx.dy(), op.Cos(ctx.x(0)))]


@grad_rule("Cos")
def cos(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = cos x: dx = -dy·sin x."""
    return [op.Neg(op.Mul(ctx.dy(), op.Sin(ctx.x(0))))]


@grad_rule("Tan")
def tan(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = tan x: dx = dy·(1 + y²)."""
    y = ctx.outputs[0]
    return [op.Mul(ctx.dy(), op.Add(op.Mul(y, y), 1.0))]


def _over_root(op: Builder, dy: Value, x: Value, sign_x2: float, const: float) -> Value:
    """dy/√(const + sign_x2·x²)."""
    return op.Div(dy, op.Sqrt(op.Add(op.Mul(op.Mul(x, x), sign_x2), const)))


@grad_rule("Asin")
def asin(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = asin x: dx = dy/√(1 - x²)."""
    return [_over_root(op, ctx.dy(), ctx.x(0), -1.0, 1.0)]


@grad_rule("Acos")
def acos(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = acos x: dx = -dy/√(1 - x²)."""
    return [op.Neg(_over_root(op, ctx.dy(), ctx.x(0), -1.0, 1.0))]


@grad_rule("Atan")
def atan(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = atan x: dx = dy/(1 + x²)."""
    x = ctx.x(0)
    return [op.Div(ctx.dy(), op.Add(op.Mul(x, x), 1.0))]


@grad_rule("Sinh")
def sinh(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = sinh x: dx = dy·cosh x."""
    return [op.Mul(ctx.dy(), op.Cosh(ctx.x(0)))]


@grad_rule("Cosh")
def cosh(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = cosh x: dx = dy·sinh x."""
    return [op.Mul(ctx.dy(), op.Sinh(ctx.x(0)))]


@grad_rule("Asinh")
def asinh(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = asinh x: dx = dy/√(x² + 1)."""
    return [_over_root(op, ctx.dy(), ctx.x(0), 1.0, 1.0)]


@grad_rule("Acosh")
def acosh(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = acosh x (x ≥ 1): dx = dy/√(x² - 1)."""
    return [_over_root(op, ctx.dy(), ctx.x(0), 1.0, -1.0)]


@grad_rule("Atanh")
def atanh(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = atanh x (|x| < 1): dx = dy/(1 - x²)."""
    x = ctx.x(0)
    return [op.Div(ctx.dy(), op.Sub(1.0, op.Mul(x, x)))]
