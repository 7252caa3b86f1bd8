"""Reductions (ReduceSum, ReduceMean, ReduceProd, the norms and log-sums; axes as an input from
opset 18, or an attribute before) and CumProd."""

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


@grad_rule("ReduceProd")
def reduce_prod(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = Π x over axes: dxᵢ = dy·Π_{j≠i} xⱼ, which is dy·y/xᵢ where xᵢ ≠ 0. Where xᵢ is the
    group's only zero it is dy·Π of the others (the product with that zero read as 1), and
    0 where the group has another zero."""
    x, dy = ctx.x(0), ctx.dy()
    is0 = op.Equal(x, 0.0)
    ones = op.Where(is0, op.scalar(1.0, x), x)
    rest = ctx.node.inputs[1:]
    attrs = {k: ctx.attr(k) for k in ("keepdims", "noop_with_empty_axes", "axes")}
    others = op.op("ReduceProd", ones, *rest, **attrs)  # the product without the zeros
    zeros = op.op("ReduceSum", op.cast(is0, x.dtype), *rest, **attrs)
    spread_dy = _spread(ctx, op, dy)
    nonzero = op.Div(op.Mul(spread_dy, _spread(ctx, op, ctx.outputs[0])), ones)
    lone = op.Mul(spread_dy, _spread(ctx, op, op.Where(op.Equal(zeros, 1.0), others,
                                                        zero(op, others))))
    return [op.Where(is0, lone, nonzero), None]


@grad_rule("CumProd")
def cum_prod(ctx: GradContext, op: Builder) -> list[Value | None]:
    """yⱼ = Π xᵢ over the i that position j covers (i ≤ j; exclusive: i < j; reverse: i ≥ j):
    dxᵢ = Σ_{j covers i} dyⱼ·Π_{k covered by j, k ≠ i} xₖ — CumSum of dy·y in the opposite
    direction, divided by xᵢ where xᵢ ≠ 0. At a zero xᵢ the products that cover no other zero
    (P = cumprod with zeros read as 1, kept where the covered zeros number at most one)
    summed the same way."""
    x, ax, dy = ctx.x(0), ctx.x(1), ctx.dy()
    flags = {"exclusive": int(ctx.attr("exclusive", 0)), "reverse": int(ctx.attr("reverse", 0))}
    back = {"exclusive": flags["exclusive"], "reverse": 1 - flags["reverse"]}
    is0 = op.Equal(x, 0.0)
    ones = op.Where(is0, op.scalar(1.0, x), x)
    nonzero = op.Div(op.CumSum(op.Mul(dy, ctx.outputs[0]), ax, **back), ones)
    covered0 = op.CumSum(op.cast(is0, x.dtype), ax, **flags)
    lone = op.Where(op.LessOrEqual(covered0, 1.0), op.op("CumProd", ones, ax, **flags),
                    zero(op, x))
    at0 = op.CumSum(op.Mul(dy, lone), ax, **back)
    return [op.Where(is0, at0, nonzero), None]
