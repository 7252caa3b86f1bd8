"""Normalization: BatchNormalization (running or batch statistics), InstanceNormalization,
GroupNormalization, LpNormalization, LRN."""

from __future__ import annotations

import numpy as np

from ..._ir import Builder, Value, np_dtype
from ...errors import UnsupportedOpError
from .._helpers import dtype_of, float_const, per_channel, zero
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


def _normalized_grad(op: Builder, g: Value, xhat: Value, rstd: Value, axes: list[int]
                     ) -> Value:
    """dx of x̂ = (x - μ)·r over ``axes`` given dx̂ = g: r·(g - mean(g) - x̂·mean(g·x̂))."""
    mean_g = op.ReduceMean(g, axes, keepdims=1)
    mean_gx = op.ReduceMean(op.Mul(g, xhat), axes, keepdims=1)
    return op.Mul(rstd, op.Sub(op.Sub(g, mean_g), op.Mul(xhat, mean_gx)))


@grad_rule("GroupNormalization")
def group_normalization(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = x̂·s + b, x̂ normalized over each group of channels (and space) of X [N, C, …],
    s and b per channel (opset 21; opset 18's per-group form is deprecated and refused by
    ONNX's checker): dX = the normalization's backward of g = dY·s within each group,
    ds = Σ dY·x̂ and db = Σ dY over batch and space."""
    x, scale, dy = ctx.x(0), ctx.x(1), ctx.dy()
    rank = ctx.rank(x)
    groups = int(ctx.attr("num_groups"))
    eps = float_const(op, ctx.attr("epsilon", 1e-5), x)
    xg = op.Reshape(x, [0, groups, -1])
    xc = op.Sub(xg, op.ReduceMean(xg, [2], keepdims=1))
    rstd = op.Reciprocal(op.Sqrt(op.Add(op.ReduceMean(op.Mul(xc, xc), [2], keepdims=1), eps)))
    xhat = op.Mul(xc, rstd)
    red = [0, *range(2, rank)]
    grads: list[Value | None] = [None, None, None]
    if ctx.needs_grad(0):
        g = op.Reshape(op.Mul(dy, per_channel(op, scale, rank)), [0, groups, -1])
        grads[0] = op.Reshape(_normalized_grad(op, g, xhat, rstd, [2]), op.Shape(x))
    if ctx.needs_grad(1):
        grads[1] = op.ReduceSum(op.Mul(dy, op.Reshape(xhat, op.Shape(x))), red, keepdims=0)
    if ctx.needs_grad(2):
        grads[2] = op.ReduceSum(dy, red, keepdims=0)
    return grads


@grad_rule("LpNormalization")
def lp_normalization(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x/‖x‖ₚ along axis (p = 1 or 2): dx = (dy - ∂‖x‖·Σ dy·y)/‖x‖ with ∂‖x‖ = sign(x)
    for p = 1 and y for p = 2; 0 where the norm is 0 (y is 0 there, and jumps)."""
    x, y, dy = ctx.x(0), ctx.outputs[0], ctx.dy()
    a = [int(ctx.attr("axis", -1))]
    p = int(ctx.attr("p", 2))
    norm = op.ReduceL1(x, a, keepdims=1) if p == 1 else op.ReduceL2(x, a, keepdims=1)
    dnorm = op.Sign(x) if p == 1 else y
    inner = op.ReduceSum(op.Mul(dy, y), a, keepdims=1)
    zero_norm = op.Equal(norm, 0.0)
    safe = op.Where(zero_norm, op.scalar(1.0, norm), norm)
    return [op.Where(zero_norm, zero(op, dy), op.Div(op.Sub(dy, op.Mul(dnorm, inner)), safe))]


@grad_rule("LRN")
def lrn(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x·d^-β, d = bias + α/size·Σ x² over a window of channels W:
    dx = dy·d^-β − 2αβ/size·x·Wᵀ(dy·x·d^(-β-1)), Wᵀ the window reversed."""
    x, dy = ctx.x(0), ctx.dy()
    size = int(ctx.attr("size"))
    alpha = float(np.float32(ctx.attr("alpha", 1e-4)))
    beta = float(np.float32(ctx.attr("beta", 0.75)))
    bias = float(np.float32(ctx.attr("bias", 1.0)))
    channels = (ctx.shape(x) or (None, None))[1]
    if not isinstance(channels, int):
        raise UnsupportedOpError(f"{ctx.where()}: the gradient needs a static channel count")
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    band = np.zeros((channels, channels))
    for c in range(channels):
        band[c, max(0, c - lo): min(channels, c + hi + 1)] = 1.0
    rest = "hwdefg"[: ctx.rank(x) - 2]
    w = op.const(band.astype(np_dtype(dtype_of(x))), hint="lrn_window")
    wsum = op.Einsum(w, op.Mul(x, x), equation=f"ij,nj{rest}->ni{rest}")
    d = op.Add(op.Mul(wsum, alpha / size), bias)
    t = op.Mul(op.Mul(dy, x), op.Pow(d, -beta - 1.0))
    back = op.Einsum(w, t, equation=f"ji,nj{rest}->ni{rest}")
    return [op.Sub(op.Mul(dy, op.Pow(d, -beta)),
                   op.Mul(op.Mul(x, back), 2.0 * alpha * beta / size))]
