"""Linear algebra: Gemm, MatMul, Det."""

from __future__ import annotations

import numpy as np

from ..._ir import Builder, Dims, Value, np_dtype
from ..._ir import dims as ctx_dims
from ...errors import UnsupportedOpError
from .._helpers import dtype_of, sum_to_shape, unbroadcast
from .._registry import GradContext, grad_rule


@grad_rule("Gemm")
def gemm(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = alpha·A'·B' + beta·C with A' = Aᵀ if transA, B' = Bᵀ if transB.

    dA' = alpha·dY·B'ᵀ, dB' = alpha·A'ᵀ·dY, dC = beta·unbroadcast(dY); each written as one
    Gemm with the transposes folded into its flags (dA = dA'ᵀ when transA, and so on).
    """
    a, b = ctx.x(0), ctx.x(1)
    dy = ctx.dy()
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
        g = unbroadcast(ctx, op, dy, 2)
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
    a, b, dy = ctx.x(0), ctx.x(1), ctx.dy()
    ra, rb = ctx.rank(a), ctx.rank(b)
    a2 = op.Unsqueeze(a, [0]) if ra == 1 else a
    b2 = op.Unsqueeze(b, [1]) if rb == 1 else b
    ra2, rb2 = max(ra, 2), max(rb, 2)
    if ra == 1 and rb == 1:
        dy2 = op.Reshape(dy, [1, 1])
    elif ra == 1 or rb == 1:
        dy2 = op.Unsqueeze(dy, [-2] if ra == 1 else [-1])
    else:
        dy2 = dy
    batch = (ctx.shape(ctx.outputs[0]) or ())[: max(ra2, rb2) - 2]  # the forward's batch dims
    da = db = None
    if ctx.needs_grad(0):
        g = op.MatMul(dy2, _swap_last(op, b2, rb2))
        g = sum_to_shape(op, g, a2, _with_matrix(batch, a2))
        da = op.Reshape(g, op.Shape(a)) if ra == 1 else g
    if ctx.needs_grad(1):
        if rb2 == 2 and ra2 > 2:  # a weight under a batch: one GEMM over the flat batch
            g = op.Gemm(_rows(op, a2), _rows(op, dy2), transA=1)
        elif ra2 == 2 and rb2 == 2:
            g = op.Gemm(a2, dy2, transA=1)
        else:
            g = op.MatMul(_swap_last(op, a2, ra2), dy2)
            g = sum_to_shape(op, g, b2, _with_matrix(batch, b2))
        db = op.Reshape(g, op.Shape(b)) if rb == 1 else g
    return [da, db]


def _with_matrix(batch: Dims, like: Value) -> Dims | None:
    """The dims of a gradient of ``like`` before its batch dims are summed: the forward
    output's batch dims, then ``like``'s two matrix dims."""
    shape = ctx_dims(like)
    return None if shape is None or (len(batch) == 0 and len(shape) > 2) else (
        *batch, *shape[-2:])


def _rows(op: Builder, x: Value) -> Value:
    """``x`` as a matrix of its last dimension's rows: [..., K] → [-1, K]."""
    k = (x.shape or [None])[-1]
    if isinstance(k, int):
        return op.Reshape(x, [-1, k])
    return op.Reshape(x, op.Concat(op.const([-1]), op.Slice(op.Shape(x), [-1], [2 ** 62]),
                                   axis=0))


@grad_rule("Det")
def det(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = det X (over the last two axes, n × n): dX = dy·cof(X), the cofactor matrix
    cof(X)ᵢⱼ = (-1)^(i+j)·det(X without row i and column j) — right for singular X too,
    where det(X)·X⁻ᵀ is not."""
    x = ctx.x(0)
    n = (ctx.shape(x) or (None,))[-1]
    if not isinstance(n, int):
        raise UnsupportedOpError(f"{ctx.where()}: the gradient needs a static matrix size")
    g = op.Unsqueeze(ctx.dy(), [-1, -2])
    if n == 1:
        return [op.Expand(g, op.Shape(x))]
    others = np.array([[j for j in range(n) if j != i] for i in range(n)], dtype=np.int64)
    rank = ctx.rank(x)
    rows = op.Gather(x, others, axis=rank - 2)               # [..., i, n-1, n]
    minors = op.Gather(rows, others, axis=rank)              # [..., i, n-1, j, n-1]
    perm = [*range(rank - 2), rank - 2, rank, rank - 1, rank + 1]
    minors = op.Transpose(minors, perm=perm)                 # [..., i, j, n-1, n-1]
    signs = np.array([[(-1.0) ** (i + j) for j in range(n)] for i in range(n)])
    cof = op.Mul(op.op("Det", minors), op.const(signs.astype(np_dtype(dtype_of(x)))))
    return [op.Mul(g, cof)]
