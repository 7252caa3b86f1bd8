"""The shared vocabulary of gradient rules: axes, zeros, sum-to-shape, type casts.

Every rule that needs one of these uses it from here, so each is written (and tested) once.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .._ir import Builder, Dims, Value, dims, np_dtype
from ._registry import GradContext

INT64_MIN = int(np.iinfo(np.int64).min)
INT64_MAX = int(np.iinfo(np.int64).max)


def axis(ctx: GradContext, like: Value, name: str = "axis", default: int = 0) -> int:
    """The node's ``name`` attribute as a non-negative axis of ``like``."""
    a = int(ctx.attr(name, default))
    return a + ctx.rank(like) if a < 0 else a


def axes(ctx: GradContext, i: int = 1, name: str = "axes") -> list[int] | Value | None:
    """Axes given as input ``i`` (opset ≥ 13/18) or as the attribute ``name`` (older opsets):
    a static list, the value itself when known only at run time, or ``None`` when absent."""
    v = ctx.input(i)
    if v is not None:
        known = ctx.const_value(v)
        return [int(a) for a in known.reshape(-1)] if known is not None else v
    attr = ctx.attr(name)
    return [int(a) for a in attr] if attr is not None else None


def zero(op: Builder, like: Value) -> Value:
    """A scalar 0 of ``like``'s element type (for ``Where`` branches, which broadcast)."""
    return op.scalar(0.0, like)


def same_type(op: Builder, v: Value, like: Value) -> Value:
    """``v`` cast to ``like``'s element type when they differ."""
    return op.cast(v, like.dtype)


def float_const(op: Builder, x: float, like: Value) -> Value:
    """``x`` as a scalar constant of ``like``'s type (float attributes are float32 in ONNX:
    round through float32 first, as the forward op sees them)."""
    return op.const(np.array(float(np.float32(x)), dtype=np_dtype(like.dtype or 1)))


def sum_to_shape(op: Builder, g: Value, like: Value, out: Value | Dims | None = None
                 ) -> Value:
    """Sum ``g`` (shaped like ``out`` — a value or its dims —, by default g's own shape) down
    to ``like``'s shape under numpy broadcasting, as JAX's ``_unbroadcast``.

    Static shapes decide which axes to reduce: leading axes ``like`` lacks, and axes where
    ``like`` has 1 and the output does not (summing an axis that turns out to be 1 is free).
    Where a dimension of ``like`` is not a static int (unknown, or a symbol that differs from
    the output's), the axes are computed in the graph from the run-time shapes.
    """
    xs = dims(like)
    ys = out if isinstance(out, tuple) else dims(out if out is not None else g)
    if xs is not None and ys is not None and xs == ys and all(isinstance(d, int) for d in xs):
        return g
    if xs is None or ys is None or len(ys) < len(xs):
        return _sum_to_shape_dynamic(op, g, like)
    lead = len(ys) - len(xs)
    keep_axes: list[int] = []
    for i, d in enumerate(xs):
        e = ys[lead + i]
        if d == 1 and e != 1:
            keep_axes.append(i)
        elif d is None or (isinstance(d, str) and d != e):
            return _sum_to_shape_dynamic(op, g, like)
    if lead:
        g = op.ReduceSum(g, list(range(lead)), keepdims=0)
    if keep_axes:
        g = op.ReduceSum(g, keep_axes, keepdims=1)
    return g


def _sum_to_shape_dynamic(op: Builder, g: Value, like: Value) -> Value:
    gshape, xshape = op.Shape(g), op.Shape(like)
    # Left-pad x's shape with ones to g's rank, then reduce every axis where x has 1, g not.
    pad = op.Sub(op.Size(gshape), op.Size(xshape))
    ones = op.Expand(op.const(np.array([1], dtype=np.int64)), op.Reshape(pad, [1]))
    xfull = op.Concat(ones, xshape, axis=0)
    mask = op.And(op.Equal(xfull, [1]), op.Not(op.Equal(gshape, [1])))
    reduce_axes = op.Reshape(op.NonZero(mask), [-1])
    summed = op.ReduceSum(g, reduce_axes, keepdims=1, noop_with_empty_axes=1)
    return op.Reshape(summed, xshape)


def unbroadcast(ctx: GradContext, op: Builder, g: Value, i: int) -> Value:
    """The gradient ``g`` of output 0 summed to the shape of input ``i``."""
    return sum_to_shape(op, g, ctx.x(i), ctx.outputs[0])


def per_channel(op: Builder, v: Value, rank: int) -> Value:
    """A [C] vector shaped [C, 1, …] to broadcast over [N, C, spatial…]."""
    return op.Unsqueeze(v, list(range(1, rank - 1))) if rank > 2 else v


def dtype_of(v: Value) -> ir.DataType:
    """The element type of ``v`` (every value the compiler handles has one)."""
    return v.dtype if v.dtype is not None else ir.DataType.FLOAT


def zeros_of_shape(op: Builder, shape: Value, like: Value) -> Value:
    """Zeros of a run-time ``shape`` in ``like``'s element type (no arithmetic on ``like``)."""
    return op.ConstantOfShape(shape, value=ir.tensor(np.zeros(1, dtype=np_dtype(dtype_of(like)))))
