"""Linear algebra: Gemm and MatMul."""

from __future__ import annotations

from ..._graph import Builder, Value
from .._registry import GradContext, Shape, grad_rule, unbroadcast


@grad_rule("Gemm")
def gemm(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = alpha·A'·B' + beta·C with A' = Aᵀ if transA, B' = Bᵀ if transB.

    dA' = alpha·dY·B'ᵀ, dB' = alpha·A'ᵀ·dY, dC = beta·unbroadcast(dY); each written as one
    Gemm with the transposes folded into its flags (dA = dA'ᵀ when transA, and so on).
    """
    a, b = ctx.inputs[0], ctx.inputs[1]
    dy = ctx.dy
    alpha = float(ctx.attr("alpha", 1.0))
    beta = float(ctx.attr("beta", 1.0))
    ta, tb = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    da = db = dc = None
    if ctx.needs_grad(0):
        da = (op.Gemm(dy, b, transA=0, transB=1 - tb, alpha=alpha) if not ta
              else op.Gemm(b, dy, transA=tb, transB=1, alpha=alpha))
    if ctx.needs_grad(1):
        db = (op.Gemm(a, dy, transA=1 - ta, transB=0, alpha=alpha) if not tb
              else op.Gemm(dy, a, transA=1, transB=ta, alpha=alpha))
    if ctx.needs_grad(2):
        g = unbroadcast(ctx, op, dy, ctx.inputs[2], ctx.outputs[0])
        dc = op.Mul(g, beta) if beta != 1.0 else g
    return [da, db, dc]


def _swap_last(op: Builder, x: Value, rank: int) -> Value:
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return op.Transpose(x, perm=perm)


@grad_rule("MatMul")
def matmul(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = A·B (numpy matmul semantics): dA = dY·Bᵀ, dB = Aᵀ·dY, each summed over the batch
    dims its operand was broadcast along.

    1-D operands are promoted to matrices as numpy does (A: [K] → [1, K], B: [K] → [K, 1]),
    dY gets the promoted unit dims back, and the gradients are reshaped to the 1-D shapes.
    A weight B of rank 2 under a batched A gets one GEMM over the flattened batch instead of
    a batched product followed by a sum.
    """
    a, b, y = ctx.inputs[0], ctx.inputs[1], ctx.outputs[0]
    dy = ctx.dy
    ra, rb = ctx.rank(a), ctx.rank(b)
    sa, sb = tuple(ctx.shape(a) or ()), tuple(ctx.shape(b) or ())
    a2, sa2 = (op.Unsqueeze(a, [0]), (1, *sa)) if ra == 1 else (a, sa)
    b2, sb2 = (op.Unsqueeze(b, [1]), (*sb, 1)) if rb == 1 else (b, sb)
    ra2, rb2 = max(ra, 2), max(rb, 2)
    r = max(ra2, rb2)
    ys = ctx.shape(y)
    batch_out: Shape = tuple(ys[: r - 2]) if ys is not None else (None,) * (r - 2)
    if ra == 1 and rb == 1:
        dy2 = op.Reshape(dy, [1, 1])
    elif ra == 1:
        dy2 = op.Unsqueeze(dy, [-2])
    elif rb == 1:
        dy2 = op.Unsqueeze(dy, [-1])
    else:
        dy2 = dy
    da = db = None
    if ctx.needs_grad(0):
        g = op.MatMul(dy2, _swap_last(op, b2, rb2))
        g = _sum_batch(op, g, a2, sa2[:-2], batch_out)
        da = op.Reshape(g, op.Shape(a)) if ra == 1 else g
    if ctx.needs_grad(1):
        if rb2 == 2 and ra2 > 2:
            k, n = sa2[-1], (sb2[-1] if rb != 1 else 1)
            a_mat = op.Reshape(a2, [-1, k] if isinstance(k, int) else
                               op.Concat(op.const([-1]), op.Slice(op.Shape(a2), [-1], [ra2]),
                                         axis=0))
            dy_mat = op.Reshape(dy2, [-1, n] if isinstance(n, int) else
                                op.Concat(op.const([-1]), op.Slice(op.Shape(dy2), [-1], [r]),
                                          axis=0))
            g = op.Gemm(a_mat, dy_mat, transA=1)
        elif ra2 == 2 and rb2 == 2:
            g = op.Gemm(a2, dy2, transA=1)
        else:
            g = op.MatMul(_swap_last(op, a2, ra2), dy2)
            g = _sum_batch(op, g, b2, sb2[:-2], batch_out)
        db = op.Reshape(g, op.Shape(b)) if rb == 1 else g
    return [da, db]


def _sum_batch(op: Builder, g: Value, like: Value, like_batch: Shape,
               out_batch: Shape) -> Value:
    """Sum ``g`` (batch dims ``out_batch``, then two matrix dims) down to the batch dims of
    ``like``: drop the extra leading dims, then sum the dims where ``like`` has 1.

    A dim of ``like`` that is statically 1 is summed even when the output's dim is unknown
    (summing a unit dim is free); an unknown dim of ``like`` falls back to deciding in the
    graph from the runtime shapes.
    """
    lead = len(out_batch) - len(like_batch)
    if lead:
        g = op.ReduceSum(g, list(range(lead)), keepdims=0)
    if all(d is not None for d in like_batch):
        axes = [i for i, d in enumerate(like_batch) if d == 1 and out_batch[lead + i] != 1]
        return op.ReduceSum(g, axes, keepdims=1) if axes else g
    nb = len(like_batch)
    gs = op.Shape(g)
    target = op.Concat(op.Slice(op.Shape(like), [0], [nb]), op.Slice(gs, [nb], [nb + 2]),
                       axis=0)
    mask = op.And(op.Equal(target, [1]), op.Not(op.Equal(gs, [1])))
    axes_v = op.Reshape(op.NonZero(mask), [-1])
    return op.ReduceSum(g, axes_v, keepdims=1, noop_with_empty_axes=1)
