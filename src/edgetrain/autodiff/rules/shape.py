"""Shape manipulation: the gradient is the output gradient put back where the elements came from.

Shape-like inputs (shapes, axes, starts, split sizes) are integers and get no gradient.
"""

from __future__ import annotations

import numpy as np

from ..._ir import Builder, Value, static_dims
from .._helpers import INT64_MIN, axis, zero
from .._registry import GradContext, grad_rule


@grad_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape_like(ctx: GradContext, op: Builder) -> list[Value | None]:
    """A pure re-indexing of the elements in row-major order: dx = reshape(dy, shape(x))."""
    return [op.Reshape(ctx.dy(), op.Shape(ctx.x(0)))] + [None] * (len(ctx.inputs) - 1)


@grad_rule("Transpose")
def transpose(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = transpose(x, perm): dx = transpose(dy, perm⁻¹) (perm defaults to reversed axes)."""
    perm = ctx.attr("perm")
    if perm is None:
        perm = list(reversed(range(ctx.rank(ctx.x(0)))))
    inverse = [int(i) for i in np.argsort(np.asarray(perm, dtype=np.int64))]
    return [op.Transpose(ctx.dy(), perm=inverse)]


@grad_rule("Concat")
def concat(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = concat(x₀, x₁, …; axis): dxᵢ = the slab of dy that xᵢ filled (one Split of dy)."""
    xs = [ctx.x(i) for i in range(len(ctx.inputs))]
    dy = ctx.dy()
    if len(xs) == 1:
        return [dy]
    a = axis(ctx, xs[0])
    sizes_known = [(ctx.shape(x) or (None,) * (a + 1))[a] for x in xs]
    if all(isinstance(d, int) for d in sizes_known):
        sizes: Value = op.const(np.array(sizes_known, dtype=np.int64))
    else:
        sizes = op.Concat(*[op.Slice(op.Shape(x), [a], [a + 1]) for x in xs], axis=0)
    n = len(xs)
    parts = op.Split(dy, sizes, axis=a, outputs=n)
    return [parts[i] if ctx.needs_grad(i) else None for i in range(n)]


@grad_rule("Split")
def split(ctx: GradContext, op: Builder) -> list[Value | None]:
    """(y₀, y₁, …) = split(x; axis): dx = concat(dy₀, dy₁, …; axis), zeros for outputs that
    nothing downstream uses. The outputs tile x exactly, whichever way the sizes were given
    (split input, num_outputs, or equal parts)."""
    x = ctx.x(0)
    a = axis(ctx, x)
    parts = []
    for i, y in enumerate(ctx.outputs):
        ys = static_dims(y)
        if not ctx.has_dy(i) and ys is not None:  # a constant zero block: no Shape at run time
            parts.append(op.Expand(zero(op, x), list(ys)))
        else:
            parts.append(ctx.dy(i))
    dx = parts[0] if len(parts) == 1 else op.Concat(*parts, axis=a)
    return [dx] + [None] * (len(ctx.inputs) - 1)


@grad_rule("Slice")
def slice_(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x[starts:ends:steps] on axes: dx = zeros like x with dy written at the sliced places.

    Known starts/ends/axes/steps with steps of ±1 and static sliced dims: dy (flipped where
    the step is -1) is zero-padded into place with one Pad. Otherwise (other steps, values
    known only at run time) the same Slice is applied to the flat indices of x, and dy is
    scattered into a zero vector at those indices (ScatterElements), then reshaped.
    """
    x, dy = ctx.x(0), ctx.dy()
    padded = _slice_grad_pad(ctx, op, x, dy)
    if padded is not None:
        return [padded, None, None, None, None][: len(ctx.inputs)]
    n = op.Size(x)
    flat_idx = op.Reshape(op.Range(0, n, 1), op.Shape(x))
    picked = op.Slice(flat_idx, *ctx.inputs[1:])
    zeros = op.Expand(zero(op, dy), op.Reshape(n, [1]))
    flat = op.ScatterElements(zeros, op.Reshape(picked, [-1]), op.Reshape(dy, [-1]), axis=0)
    return [op.Reshape(flat, op.Shape(x))] + [None] * (len(ctx.inputs) - 1)


def _slice_grad_pad(ctx: GradContext, op: Builder, x: Value, dy: Value) -> Value | None:
    """The Pad form of Slice's gradient, or None when the slice is not static with steps ±1."""
    starts_v, ends_v, axes_v, steps_v = (ctx.input(i) for i in range(1, 5))
    vals = [ctx.const_value(v) if v is not None else None for v in (starts_v, ends_v, axes_v,
                                                                    steps_v)]
    if vals[0] is None or vals[1] is None:
        return None
    if (axes_v is not None and vals[2] is None) or (steps_v is not None and vals[3] is None):
        return None
    starts = [int(v) for v in vals[0].reshape(-1)]
    ends = [int(v) for v in vals[1].reshape(-1)]
    xs = ctx.shape(x)
    if xs is None:
        return None
    rank = len(xs)
    axes = ([int(v) for v in vals[2].reshape(-1)] if vals[2] is not None
            else list(range(len(starts))))
    steps = [int(v) for v in vals[3].reshape(-1)] if vals[3] is not None else [1] * len(starts)
    if any(s not in (1, -1) for s in steps):
        return None
    pad_axes, begins, finals, flips = [], [], [], []
    for start, end, ax, step in zip(starts, ends, axes, steps, strict=True):
        ax = ax + rank if ax < 0 else ax
        dim = xs[ax]
        if not isinstance(dim, int):
            return None
        idx = range(*slice(start, end, step).indices(dim))
        if len(idx) == 0:
            lo = hi = 0  # dy is empty along this ax: all of dx is zero there
        else:
            lo, hi = min(idx[0], idx[-1]), max(idx[0], idx[-1])
        if step == -1:
            flips.append(ax)
        pad_axes.append(ax)
        begins.append(lo)
        finals.append(dim - hi - 1 if len(idx) else dim)
    g = dy
    if flips:
        g = op.Slice(g, [-1] * len(flips), [INT64_MIN] * len(flips), flips, [-1] * len(flips))
    if not any(begins) and not any(finals):
        return g
    return op.Pad(g, begins + finals, zero(op, dy), pad_axes)
