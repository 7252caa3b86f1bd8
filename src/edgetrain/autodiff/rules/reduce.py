"""Reductions: ReduceSum, ReduceMean (axes as an input from opset 18, or an attribute before)."""

from __future__ import annotations

from ..._ir import Builder, Value
from .._helpers import axes as reduced_axes
from .._helpers import zero
from .._registry import GradContext, grad_rule


def _spread(ctx: GradContext, op: Builder, g: Value) -> Value:
    """Broadcast the gradient of the reduced output back over the input's shape.

    With keepdims=0 the reduced axes are first put back as unit dims (Unsqueeze, whose axes
    count in the input's rank, so negative axes work unchanged); absent or empty axes reduce
    everything (y is a scalar, broadcast as is) unless noop_with_empty_axes makes y = x.
    """
    axes = reduced_axes(ctx)
    x = ctx.x(0)
    if not axes:  # None or []: absent or empty
        if int(ctx.attr("noop_with_empty_axes", 0)):
            return g
        return op.Expand(g, op.Shape(x))
    if not int(ctx.attr("keepdims", 1)):
        g = op.Unsqueeze(g, axes)
    return op.Expand(g, op.Shape(x))


@grad_rule("ReduceSum")
def reduce_sum(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = Σ x over axes: dx = dy broadcast back over the reduced axes."""
    return [_spread(ctx, op, ctx.dy()), None]


@grad_rule("ReduceMean")
def reduce_mean(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = mean x over axes: dx = dy·(|y|/|x|) broadcast back over the reduced axes."""
    x, y = ctx.x(0), ctx.outputs[0]
    xs, ys = ctx.shape(x), ctx.shape(y)
    if xs is not None and ys is not None and all(isinstance(d, int) for d in (*xs, *ys)):
        n_in = 1
        for d in xs:
            n_in *= int(d)  # type: ignore[arg-type]
        n_out = 1
        for d in ys:
            n_out *= int(d)  # type: ignore[arg-type]
        scale: Value | float = n_out / n_in
    else:
        scale = op.Div(op.cast(op.Size(y), x.dtype), op.cast(op.Size(x), x.dtype))
    dy = ctx.dy()
    return [_spread(ctx, op, dy if scale == 1.0 else op.Mul(dy, scale)), None]


@grad_rule("ReduceSumSquare")
def reduce_sum_square(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = Σ x² over axes: dx = 2·x·dy (dy broadcast back)."""
    x = ctx.x(0)
    return [op.Mul(op.Mul(x, 2.0), _spread(ctx, op, ctx.dy())), None]


@grad_rule("ReduceL1")
def reduce_l1(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = Σ |x| over axes: dx = sign(x)·dy (0 at x = 0, as torch)."""
    return [op.Mul(op.Sign(ctx.x(0)), _spread(ctx, op, ctx.dy())), None]


@grad_rule("ReduceL2")
def reduce_l2(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = √(Σ x²) over axes: dx = x·dy/y, and 0 where y = 0 (torch's subgradient)."""
    y, dy = ctx.outputs[0], ctx.dy()
    safe = op.Where(op.Greater(y, 0.0), y, op.scalar(1.0, y))
    scaled = op.Where(op.Greater(y, 0.0), op.Div(dy, safe), zero(op, dy))
    return [op.Mul(ctx.x(0), _spread(ctx, op, scaled)), None]


@grad_rule("ReduceLogSumExp")
def reduce_log_sum_exp(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = log Σ eˣ over axes: dx = dy·e^(x − y), the softmax over the reduced axes."""
    x = ctx.x(0)
    p = op.Exp(op.Sub(x, _spread(ctx, op, ctx.outputs[0])))
    return [op.Mul(p, _spread(ctx, op, ctx.dy())), None]


@grad_rule("ReduceLogSum")
def reduce_log_sum(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = log Σ x over axes: dx = dy/Σx = dy·e^(−y) (dy broadcast back)."""
    return [_spread(ctx, op, op.Mul(ctx.dy(), op.Exp(op.Neg(ctx.outputs[0])))), None]
