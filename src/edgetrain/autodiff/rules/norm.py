"""Normalization: BatchNormalization (running or batch statistics), InstanceNormalization."""

from __future__ import annotations

from ..._ir import Builder, Value
from .._helpers import per_channel
from .._registry import GradContext, grad_rule


@grad_rule("BatchNormalization")
def batch_normalization(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = (X - m)·s·r + b with r = (v + ε)^-½, per channel.

    With the statistics m, v as inputs (inference mode, or batch statistics that edgetrain's
    batch_norm="train" computes with ReduceMean and feeds in):
    dX = dY·s·r, dm = -Σ dY·s·r, dv = -½ Σ dY·(X - m)·s·r³, ds = Σ dY·(X - m)·r, db = Σ dY
    (Σ over batch and space). A node in training mode (training_mode=1, statistics of X
    itself) gets the full batch-norm backward:
    dX = s·r·(dY - mean(dY) - x̂·mean(dY·x̂)), x̂ = (X - μ)·r.
    """
    x, s, m, v = ctx.x(0), ctx.x(1), ctx.x(3), ctx.x(4)
    dy = ctx.dy()
    rank = ctx.rank(x)
    eps = float(ctx.attr("epsilon", 1e-5))
    red = [0, *range(2, rank)]
    training = int(ctx.attr("training_mode", 0)) == 1
    if training:
        mu = op.ReduceMean(x, red, keepdims=1)
        xc = op.Sub(x, mu)
        var = op.ReduceMean(op.Mul(xc, xc), red, keepdims=1)
        r = op.Reciprocal(op.Sqrt(op.Add(var, eps)))
    else:
        xc = op.Sub(x, per_channel(op, m, rank))
        r = per_channel(op, op.Reciprocal(op.Sqrt(op.Add(v, eps))), rank)
    sc = per_channel(op, s, rank)
    grads: list[Value | None] = [None] * len(ctx.inputs)
    need_xhat_sum = training and ctx.needs_grad(0)
    dy_xc = op.Mul(dy, xc) if (ctx.needs_grad(1) or ctx.needs_grad(4) or need_xhat_sum) \
        else None
    if ctx.needs_grad(0):
        if training:
            xhat = op.Mul(xc, r)
            g = op.Sub(op.Sub(dy, op.ReduceMean(dy, red, keepdims=1)),
                       op.Mul(xhat, op.Mul(op.ReduceMean(dy_xc, red, keepdims=1), r)))
            grads[0] = op.Mul(g, op.Mul(sc, r))
        else:
            grads[0] = op.Mul(dy, op.Mul(sc, r))
    if ctx.needs_grad(1):
        grads[1] = op.ReduceSum(op.Mul(dy_xc, r), red, keepdims=0)
    if ctx.needs_grad(2):
        grads[2] = op.ReduceSum(dy, red, keepdims=0)
    if not training and ctx.needs_grad(3):
        grads[3] = op.Neg(op.ReduceSum(op.Mul(dy, op.Mul(sc, r)), red, keepdims=0))
    if not training and ctx.needs_grad(4):
        r3 = op.Mul(r, op.Mul(r, r))
        grads[4] = op.Mul(op.ReduceSum(op.Mul(dy_xc, op.Mul(sc, r3)), red, keepdims=0), -0.5)
    return grads


@grad_rule("InstanceNormalization")
def instance_normalization(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = x̂·s + b with x̂ = (X - μ)·r, μ and r = (σ² + ε)^-½ per sample and channel.

    dX = s·r·(dY - mean(dY) - x̂·mean(dY·x̂)) (means over space), ds = Σ dY·x̂,
    db = Σ dY (Σ over batch and space).
    """
    x = ctx.x(0)
    dy = ctx.dy()
    rank = ctx.rank(x)
    eps = float(ctx.attr("epsilon", 1e-5))
    sp = list(range(2, rank))
    mu = op.ReduceMean(x, sp, keepdims=1)
    xc = op.Sub(x, mu)
    r = op.Reciprocal(op.Sqrt(op.Add(op.ReduceMean(op.Mul(xc, xc), sp, keepdims=1), eps)))
    xhat = op.Mul(xc, r)
    red = [0, *sp]
    grads: list[Value | None] = [None, None, None]
    if ctx.needs_grad(0):
        sc = per_channel(op, ctx.x(1), rank)
        dxhat = dy
        g = op.Sub(op.Sub(dxhat, op.ReduceMean(dxhat, sp, keepdims=1)),
                   op.Mul(xhat, op.ReduceMean(op.Mul(dxhat, xhat), sp, keepdims=1)))
        grads[0] = op.Mul(g, op.Mul(sc, r))
    if ctx.needs_grad(1):
        grads[1] = op.ReduceSum(op.Mul(dy, xhat), red, keepdims=0)
    if ctx.needs_grad(2):
        grads[2] = op.ReduceSum(dy, red, keepdims=0)
    return grads
