"""Ops that move elements by index — OneHot, Trilu, TopK, Compress, MaxUnpool,
ReverseSequence, Unique, TensorScatter, ScatterND, ScatterElements — and DequantizeLinear's
scale.

Each output element is a copy of one input element (or a constant), so the gradient puts the
output gradient back where the element came from: a gather where the forward scattered, a
scatter into zeros where it gathered. Indices, lengths and conditions get no gradient.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..._ir import Builder, Value, np_dtype
from ...errors import UnsupportedOpError
from .._helpers import axis, dtype_of, sum_to_shape, zeros_of_shape
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


@grad_rule("Trilu")
def trilu(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = the upper (lower) triangle of x from diagonal k, zeros elsewhere: the same mask
    applied to dy."""
    return [op.Trilu(ctx.dy(), ctx.input(1), upper=int(ctx.attr("upper", 1))), None]


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


@grad_rule("DequantizeLinear")
def dequantize_linear(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = (x - zero_point)·scale, the scale per tensor, per slice along axis or per block of
    block_size along axis: d scale = Σ dy·(x - zero_point) over the elements that share it.
    (x - zero_point) is the op itself with unit scales; x and zero_point are integers."""
    x, scale, dy = ctx.x(0), ctx.x(1), ctx.dy()
    if not ctx.needs_grad(1):
        return [None, None, None]
    attrs = {k: ctx.attr(k) for k in ctx.node.attributes}
    ones = op.Expand(op.scalar(1.0, scale), op.Shape(scale))
    g = op.Mul(op.cast(dy, scale.dtype),
               op.cast(op.op("DequantizeLinear", x, ones, ctx.input(2), **attrs), scale.dtype))
    rank, srank = ctx.rank(x), ctx.rank(scale)
    a = axis(ctx, x, default=1)
    if srank == 0:
        return [None, op.ReduceSum(g, keepdims=0), None]
    if srank == 1 and rank > 1:  # per axis
        return [None, op.ReduceSum(g, [d for d in range(rank) if d != a], keepdims=0), None]
    block = int(ctx.attr("block_size", 0))
    xs = ctx.shape(x)
    if not block or xs is None or not all(isinstance(d, int) for d in xs):
        return [None, sum_to_shape(op, g, scale), None]
    size = int(xs[a])  # type: ignore[arg-type]
    blocks = -(-size // block)
    if blocks * block != size:
        pads = [0] * (2 * rank)
        pads[rank + a] = blocks * block - size
        g = op.Pad(g, pads)
    split = [int(d) for d in xs[:a]] + [blocks, block] + [int(d) for d in xs[a + 1:]]  # type: ignore[arg-type]
    return [None, op.ReduceSum(op.Reshape(g, split), [a + 1], keepdims=0), None]


# -- scatters ----------------------------------------------------------------------------------

class _Scatter:
    """The scatter of a ScatterND or ScatterElements node, and the gather that reads back the
    slots it writes."""

    def __init__(self, ctx: GradContext, op: Builder) -> None:
        self.op, self.idx = op, ctx.x(1)
        self.nd = ctx.node.op_type == "ScatterND"
        self.axis = 0 if self.nd else axis(ctx, ctx.x(0))

    def gather(self, v: Value) -> Value:
        if self.nd:
            return self.op.GatherND(v, self.idx)
        return self.op.GatherElements(v, self.idx, axis=self.axis)

    def scatter(self, base: Value, upd: Value, reduction: str = "none") -> Value:
        if self.nd:
            return self.op.ScatterND(base, self.idx, upd, reduction=reduction)
        return self.op.ScatterElements(base, self.idx, upd, axis=self.axis,
                                       reduction=reduction)


@grad_rule("ScatterND", "ScatterElements")
def scatter(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = data with each update u written into its slot i (ScatterND: a slice at an index
    tuple; ScatterElements: an element along axis), combined by the reduction:
    none: d data = dy with written slots zeroed, du = dy[i];
    add: d data = dy, du = dy[i];
    mul: d data = dy·P (P the product of a slot's updates), du = dy[i]·data[i]·P[i]/u
    (a slot's only zero update: the product of the others);
    max/min: the gradient goes to the winners, shared evenly between ties (torch's
    scatter_reduce amax/amin): d data = dy·[data = y]/n, du = dy[i]·[u = y[i]]/n[i]."""
    data, upd, dy = ctx.x(0), ctx.x(2), ctx.dy()
    red = str(ctx.attr("reduction", "none"))
    s = _Scatter(ctx, op)
    ones = op.filled_like(data, 1.0)
    if red in ("none", "add"):
        d_data = dy if red == "add" else s.scatter(dy, zeros_of_shape(op, op.Shape(upd), dy))
        d_upd = s.gather(dy)
    elif red == "mul":
        prod = s.scatter(ones, upd, "mul")
        d_data = op.Mul(dy, prod)
        is0 = op.Equal(upd, 0.0)
        nonzero = op.Where(is0, op.scalar(1.0, upd), upd)
        others = op.Where(is0, s.gather(s.scatter(ones, nonzero, "mul")),
                          op.Div(s.gather(prod), nonzero))
        d_upd = op.Mul(s.gather(op.Mul(dy, data)), others)
    elif red in ("max", "min"):
        y = ctx.outputs[0]
        won_data = op.cast(op.Equal(data, y), dy.dtype)
        won_upd = op.cast(op.Equal(upd, s.gather(y)), dy.dtype)
        share = op.Div(dy, s.scatter(won_data, won_upd, "add"))
        d_data, d_upd = op.Mul(share, won_data), op.Mul(s.gather(share), won_upd)
    else:
        raise UnsupportedOpError(f"{ctx.where()}: reduction={red!r} has no gradient rule")
    return [d_data if ctx.needs_grad(0) else None, None,
            d_upd if ctx.needs_grad(2) else None]
