"""Ops that move elements by index: OneHot, TopK, Compress, MaxUnpool, ReverseSequence,
Unique, TensorScatter.

Each output element is a copy of one input element (or a constant), so the gradient puts the
output gradient back where the element came from: a gather where the forward scattered, a
scatter into zeros where it gathered. Indices, lengths and conditions get no gradient.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..._ir import Builder, Value, np_dtype
from .._helpers import axis, dtype_of, zeros_of_shape
from .._registry import GradContext, grad_rule


@grad_rule("OneHot")
def one_hot(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = on where the one-hot mask m is set, else off (values = [off, on]):
    d on = Σ dy·m, d off = Σ dy - d on."""
    idx, depth, dy = ctx.x(0), ctx.x(1), ctx.dy()
    unit = op.const(np.array([0, 1], dtype=np_dtype(dtype_of(dy))))
    mask = op.OneHot(idx, depth, unit, axis=int(ctx.attr("axis", -1)))
    on = op.ReduceSum(op.Mul(dy, mask), keepdims=0)
    off = op.Sub(op.ReduceSum(dy, keepdims=0), on)
    return [None, None, op.Concat(op.Reshape(off, [1]), op.Reshape(on, [1]), axis=0)]


@grad_rule("TopK")
def top_k(ctx: GradContext, op: Builder) -> list[Value | None]:
    """values = x at the k indices along axis: dx = dvalues scattered to those indices."""
    x = ctx.x(0)
    idx = ctx.forward_output(1, "topk_indices", ir.DataType.INT64)
    dx = op.ScatterElements(zeros_of_shape(op, op.Shape(x), x), idx, ctx.dy(0),
                            axis=axis(ctx, x, default=-1))
    return [dx, None]


@grad_rule("Compress")
def compress(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = the slices of x (along axis; of flat x without one) where the condition is true:
    dx = dy written back at those positions, zeros elsewhere."""
    x, dy = ctx.x(0), ctx.dy()
    picked = op.Reshape(op.NonZero(ctx.x(1)), [-1])
    if ctx.attr("axis") is None:
        flat = zeros_of_shape(op, op.Reshape(op.Size(x), [1]), x)
        dx = op.ScatterElements(flat, picked, op.Reshape(dy, [-1]), axis=0)
        return [op.Reshape(dx, op.Shape(x)), None]
    a = axis(ctx, x)
    perm = [a] + [d for d in range(ctx.rank(x)) if d != a]
    front = zeros_of_shape(op, op.Shape(op.Transpose(x, perm=perm)), x)
    dx = op.ScatterND(front, op.Unsqueeze(picked, [-1]), op.Transpose(dy, perm=perm))
    return [op.Transpose(dx, perm=[int(i) for i in np.argsort(perm)]), None]


@grad_rule("MaxUnpool")
def max_unpool(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y.flat[I] = X in the shape inferred from kernel, strides and pads (I flat over it, as
    MaxPool's indices), that placed at the start of ``output_shape``: dX = dy.flat[I] after
    cropping dy to the inferred shape."""
    x, idx, dy = ctx.x(0), ctx.x(1), ctx.dy()
    if ctx.input(2) is not None:
        k = [int(v) for v in ctx.attr("kernel_shape")]
        n = len(k)
        s = [int(v) for v in ctx.attr("strides", [1] * n)]
        p = [int(v) for v in ctx.attr("pads", [0] * (2 * n))]
        sizes = op.Shape(x, start=2)
        inferred = op.Add(op.Mul(op.Sub(sizes, op.const(np.ones(n, dtype=np.int64))),
                                 op.const(np.array(s, dtype=np.int64))),
                          op.const(np.array([k[i] - p[i] - p[n + i] for i in range(n)],
                                            dtype=np.int64)))
        dy = op.Slice(dy, op.const(np.zeros(n, dtype=np.int64)), inferred, list(range(2, 2 + n)))
    flat = op.GatherElements(op.Reshape(dy, [1, -1]), op.Reshape(idx, [1, -1]), axis=1)
    return [op.Reshape(flat, op.Shape(x)), None, None]


@grad_rule("ReverseSequence")
def reverse_sequence(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = each batch entry's first lens[b] steps reversed, a permutation that is its own
    inverse: dx = ReverseSequence(dy) with the same lengths and axes."""
    attrs = {k: int(ctx.attr(k, d)) for k, d in (("batch_axis", 1), ("time_axis", 0))}
    return [op.op("ReverseSequence", ctx.dy(), ctx.x(1), **attrs), None]


@grad_rule("Unique")
def unique(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = the distinct elements (slices along axis) of X, and X = Y[inverse_indices]:
    dX = dY[inverse_indices] (an element with duplicates has no derivative of its own)."""
    x = ctx.x(0)
    inverse = ctx.forward_output(2, "unique_inverse", ir.DataType.INT64)
    if ctx.attr("axis") is None:
        return [op.Reshape(op.Gather(ctx.dy(0), inverse), op.Shape(x))]
    return [op.Gather(ctx.dy(0), inverse, axis=axis(ctx, x))]


@grad_rule("TensorScatter")
def tensor_scatter(ctx: GradContext, op: Builder) -> list[Value | None]:
    """present = past with update written along axis at w[b] + j (mod the cache length in
    circular mode): d past = dy with those positions zeroed (the same op writing zeros),
    d update = dy read back at those positions."""
    past, update, dy = ctx.x(0), ctx.x(1), ctx.dy()
    written = ctx.input(2)
    grads: list[Value | None] = [None, None, None]
    if ctx.needs_grad(0):
        zeros = zeros_of_shape(op, op.Shape(update), update)
        grads[0] = op.op("TensorScatter", dy, zeros, written,
                         axis=int(ctx.attr("axis", -2)), mode=ctx.attr("mode", "linear"))
    if ctx.needs_grad(1):
        rank = ctx.rank(update)
        a = axis(ctx, update, default=-2)
        steps = op.Range(op.const(np.array(0, dtype=np.int64)),
                         op.Gather(op.Shape(update), op.const(np.array(a, dtype=np.int64))),
                         op.const(np.array(1, dtype=np.int64)))
        pos = op.Reshape(steps, [-1 if d == a else 1 for d in range(rank)])
        if written is not None:
            pos = op.Add(pos, op.Reshape(written, [-1] + [1] * (rank - 1)))
        if ctx.attr("mode", "linear") == "circular":
            length = op.Gather(op.Shape(past), op.const(np.array(a, dtype=np.int64)))
            pos = op.Mod(pos, length)
        idx = op.Expand(pos, op.Shape(update))
        grads[1] = op.GatherElements(dy, idx, axis=a)
    return grads
