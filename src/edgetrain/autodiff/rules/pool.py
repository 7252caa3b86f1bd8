"""Pooling: MaxPool, AveragePool, LpPool, GlobalAveragePool, GlobalMaxPool, GlobalLpPool."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from ..._ir import Builder, Value, np_dtype
from ...errors import UnsupportedOpError
from .._registry import GradContext, grad_rule
from .conv import ConvGeometry, conv_geometry, input_grad


@grad_rule("MaxPool")
def max_pool(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = max over each window: dX = Σ dY scattered onto each window's argmax.

    The forward's Indices output is flat over N·C·spatial (row-major; a pool that outputs
    column-major indices, storage_order=1, gets a second pool for row-major ones), so one
    ScatterElements with reduction="add" over the flattened input adds up the contributions
    of overlapping windows that share a maximum.
    """
    x, dy = ctx.x(0), ctx.dy()
    if int(ctx.attr("storage_order", 0)) != 0:  # column-major indices: ask for row-major ones
        attrs = {k: ctx.attr(k) for k in ctx.node.attributes if k != "storage_order"}
        idx = op.multi("MaxPool", x, outputs=2, **attrs)[1]
    else:
        idx = ctx.forward_output(1, "maxpool_indices", ir.DataType.INT64)
    unpool = _unpool_geometry(ctx)
    if unpool is not None:
        # Windows that never overlap put each input position under at most one maximum, so
        # the scatter needs no addition: MaxUnpool places dY at the indices (4× faster than
        # ScatterElements on onnxruntime, which has it for float32 only).
        kernel, pads = unpool
        return [op.MaxUnpool(dy, idx, op.Shape(x), kernel_shape=kernel, pads=pads,
                             strides=[int(v) for v in ctx.attr("strides", [1] * len(kernel))])]
    zeros = op.Reshape(op.zeros_like(x), [1, -1])
    dx = op.ScatterElements(zeros, op.Reshape(idx, [1, -1]), op.Reshape(dy, [1, -1]), axis=1,
                            reduction="add")
    return [op.Reshape(dx, op.Shape(x))]


def _unpool_geometry(ctx: GradContext) -> tuple[list[int], list[int]] | None:
    """MaxUnpool kernel and pads whose inferred output is exactly X; None where MaxUnpool does
    not apply.

    It applies to float32 pools whose windows never overlap (stride ≥ kernel, no dilation)
    over static spatial sizes. The indices are flat over X, and runtimes differ on where they
    point when ``output_shape`` is not MaxUnpool's inferred size (Y − 1)·stride + kernel −
    pads (onnxruntime: into ``output_shape``; ONNX's reference: into the inferred shape), so
    the two are made equal: a pool that ran past the end (ceil mode, pads) gets pads (each
    below the kernel, as onnxruntime wants; only their sum counts), one that left trailing
    rows out (floor mode) a kernel that reaches them (it only sizes the output).
    """
    x, y = ctx.x(0), ctx.outputs[0]
    if x.dtype != ir.DataType.FLOAT:
        return None
    k = [int(v) for v in ctx.attr("kernel_shape")]
    n = len(k)
    strides = [int(v) for v in ctx.attr("strides", [1] * n)]
    dilations = [int(v) for v in ctx.attr("dilations", [1] * n)]
    xs, ys = ctx.shape(x), ctx.shape(y)
    if any(d != 1 for d in dilations) or any(s < kk for s, kk in zip(strides, k)) \
            or xs is None or ys is None or len(xs) != n + 2 or len(ys) != n + 2 \
            or not all(isinstance(d, int) and d > 0 for d in [*xs[2:], *ys[2:]]):
        return None
    excess = [(int(ys[2 + i]) - 1) * strides[i] + k[i] - int(xs[2 + i])  # type: ignore[arg-type]
              for i in range(n)]
    kernel = [kk - min(e, 0) for kk, e in zip(k, excess)]
    begin = [min(max(e, 0), kk - 1) for e, kk in zip(excess, kernel)]
    end = [max(e, 0) - b for e, b in zip(excess, begin)]
    if any(e >= kk for e, kk in zip(end, kernel)):
        return None
    return kernel, begin + end


def _pool_geometry(ctx: GradContext, x: Value, y: Value) -> tuple[ConvGeometry, int]:
    """The pool's windows as a depthwise convolution's geometry (static channels), with
    extra end padding where windows run past the padded end (ceil_mode), so that the
    window sum S has exactly Y's windows."""
    k = tuple(int(v) for v in ctx.attr("kernel_shape"))
    xshape = ctx.shape(x)
    if xshape is None or not isinstance(xshape[1], int):
        raise UnsupportedOpError(f"{ctx.where()}: the channel count of {x.name!r} must be "
                                 "static")
    channels = int(xshape[1])
    geo = conv_geometry(ctx, x, k, group=channels, y=y)
    end = tuple(max(geo.end[i], (geo.y[i] - 1) * geo.strides[i] + geo.eff(i) - geo.x[i]
                    - geo.begin[i]) for i in range(geo.rank))
    return dataclasses.replace(geo, end=end, group=channels), channels


def _window_sum_t(op: Builder, g: Value, geo: ConvGeometry, channels: int, like: Value
                  ) -> Value:
    """Sᵀg: each input position gets the sum of g over the windows that contain it."""
    dt = np_dtype(like.dtype or ir.DataType.FLOAT)
    kernel = op.const(np.ones((channels, 1, *geo.k), dtype=dt), hint="pool_kernel")
    return input_grad(op, g, kernel, geo, channels, channels)


@grad_rule("AveragePool")
def average_pool(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = S(X)·q with S the window sum over zero-padded X and q = 1/divisor per window.

    q = AveragePool(1)/S(1) on an all-ones image reproduces the node's own divisor rule
    (count_include_pad either way, ceil_mode), whatever it is. Then dX = Sᵀ(dY·q): the input
    gradient of a depthwise convolution with an all-ones kernel.
    """
    x, y, dy = ctx.x(0), ctx.outputs[0], ctx.dy()
    geo, channels = _pool_geometry(ctx, x, y)
    dt = np_dtype(x.dtype or ir.DataType.FLOAT)
    ones = op.const(np.ones((1, 1, *geo.x), dtype=dt), hint="pool_ones")
    attrs = {a: ctx.attr(a) for a in ("auto_pad", "ceil_mode", "count_include_pad",
                                      "dilations", "kernel_shape", "pads", "strides")}
    avg = op.AveragePool(ones, **attrs)
    kernel1 = op.const(np.ones((1, 1, *geo.k), dtype=dt), hint="pool_kernel")
    total = op.Conv(ones, kernel1, strides=list(geo.strides), dilations=list(geo.dilations),
                    pads=list(geo.begin) + list(geo.end))
    q = op.Where(op.Greater(total, 0.0), op.Div(avg, op.Max(total, 1.0)), op.zeros_like(avg))
    return [_window_sum_t(op, op.Mul(dy, q), geo, channels, x)]


@grad_rule("LpPool")
def lp_pool(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = S(|X|ᵖ)^(1/p) with S the window sum: dX = Sᵀ(dY·Y^(1-p))·|X|^(p-1)·sign(X)
    (0 from windows whose Y is 0)."""
    x, y, dy = ctx.x(0), ctx.outputs[0], ctx.dy()
    p = float(ctx.attr("p", 2))
    geo, channels = _pool_geometry(ctx, x, y)
    back = _window_sum_t(op, _lp_outer(op, dy, y, p), geo, channels, x)
    return [op.Mul(back, _lp_inner(op, x, p))]


def _lp_outer(op: Builder, dy: Value, y: Value, p: float) -> Value:
    """dY·Y^(1-p), the gradient of Y = S^(1/p) w.r.t. S times p (0 where Y is 0)."""
    alive = op.Greater(y, 0.0)
    return op.Where(alive, op.Mul(dy, op.Pow(op.Where(alive, y, op.scalar(1.0, y)), 1.0 - p)),
                    op.zeros_like(y))


def _lp_inner(op: Builder, x: Value, p: float) -> Value:
    """|X|^(p-1)·sign(X), the gradient of |X|ᵖ over p."""
    return op.Mul(op.Pow(op.Abs(x), p - 1.0), op.Sign(x))


def _spatial_scale(ctx: GradContext, op: Builder, x: Value, y: Value) -> Value | float:
    xs = ctx.shape(x)
    if xs is not None and all(isinstance(d, int) for d in xs[2:]):
        return 1.0 / float(np.prod([int(d) for d in xs[2:]]))  # type: ignore[arg-type]
    return op.Div(op.cast(op.Size(y), x.dtype), op.cast(op.Size(x), x.dtype))


@grad_rule("GlobalAveragePool")
def global_average_pool(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = mean of X over space: dX = dY/|space| broadcast over space."""
    x, y = ctx.x(0), ctx.outputs[0]
    scale = _spatial_scale(ctx, op, x, y)
    return [op.Expand(op.Mul(ctx.dy(), scale), op.Shape(x))]


@grad_rule("GlobalMaxPool")
def global_max_pool(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = max of X over space: dX = dY shared equally among the positions that reach it."""
    x, y = ctx.x(0), ctx.outputs[0]
    rank = ctx.rank(x)
    mask = op.cast(op.Equal(x, y), x.dtype)
    count = op.ReduceSum(mask, list(range(2, rank)), keepdims=1)
    return [op.Mul(mask, op.Div(ctx.dy(), count))]



@grad_rule("GlobalLpPool")
def global_lp_pool(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = (Σ |X|ᵖ over space)^(1/p): dX = dY·Y^(1-p)·|X|^(p-1)·sign(X) (0 where Y is 0)."""
    x, y = ctx.x(0), ctx.outputs[0]
    p = float(ctx.attr("p", 2))
    return [op.Mul(_lp_outer(op, ctx.dy(), y, p), _lp_inner(op, x, p))]
