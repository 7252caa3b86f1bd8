"""Ops of transformer and NLP models: layer norm, GELU/Erf, embedding lookups, max/min
reductions, Einsum, CumSum.

Lookups (Gather, GatherElements, GatherND) differentiate into scatters with
``reduction="add"`` into zeros, so a token that occurs several times in a batch receives the
sum of its gradients (what ``torch.nn.Embedding`` does). Max/min gradients are shared evenly
between tied elements, as ``torch.amax`` and ``torch.maximum`` do.
"""

from __future__ import annotations

import math
import string

import numpy as np
import onnx_ir as ir

from ..._ir import Builder, Value, np_dtype
from ...errors import UnsupportedOpError
from .._helpers import axes as reduced_axes
from .._helpers import axis, dtype_of, float_const, sum_to_shape, unbroadcast, zeros_of_shape
from .._registry import GradContext, grad_rule


def _nonnegative(ctx: GradContext, op: Builder, idx: Value, dim: Value) -> Value:
    """``idx`` with negative entries wrapped by ``dim`` (a scatter needs in-range indices).

    ``dim`` is an int64 tensor that broadcasts against ``idx``. Constant indices that are
    already non-negative are used as they are.
    """
    known = ctx.const_value(idx)
    if known is not None and (known.size == 0 or known.min() >= 0):
        return idx
    dim = op.CastLike(dim, idx)
    return op.Where(op.Less(idx, op.CastLike(op.const(np.array(0, dtype=np.int64)), idx)),
                    op.Add(idx, dim), idx)


def _unsupported(ctx: GradContext, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"{ctx.where()}: {why}")


# -- normalization and activations -------------------------------------------------------------

@grad_rule("LayerNormalization")
def layer_normalization(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x̂·s + b with x̂ = (x - μ)·r, r = 1/√(σ² + ε), μ and σ² over axes [axis, rank):
    ds = Σ dy·x̂ and db = Σ dy over the leading axes (then summed to s's and b's shapes),
    dx = r·(g - mean(g) - x̂·mean(g·x̂)) with g = dy·s and means over the normalized axes.
    The optional outputs Mean (μ) and InvStdDev (r) add dμ/n and -dr·r³·(x - μ)/n to dx
    (n elements normalized together).

    μ and r are recomputed in x's own precision rather than read from those outputs, which
    opset 17 keeps in ``stash_type`` (float32 even for float64 x).
    """
    x = ctx.x(0)
    scale, bias = ctx.input(1), ctx.input(2)
    y, dy = ctx.outputs[0], ctx.dy()
    rank = ctx.rank(x)
    norm_axes = list(range(axis(ctx, x, default=-1), rank))
    eps = float(ctx.attr("epsilon", 1e-5))
    mu = op.ReduceMean(x, norm_axes, keepdims=1)
    xc = op.Sub(x, mu)
    var = op.ReduceMean(op.Mul(xc, xc), norm_axes, keepdims=1)
    rstd = op.Reciprocal(op.Sqrt(op.Add(var, eps)))
    xhat = op.Mul(xc, rstd)
    grads: list[Value | None] = [None, None, None]
    if ctx.needs_grad(0):
        g = op.Mul(dy, scale) if scale is not None else dy
        mean_g = op.ReduceMean(g, norm_axes, keepdims=1)
        mean_gx = op.ReduceMean(op.Mul(g, xhat), norm_axes, keepdims=1)
        grads[0] = op.Mul(rstd, op.Sub(op.Sub(g, mean_g), op.Mul(xhat, mean_gx)))
        if ctx.has_dy(1) or ctx.has_dy(2):
            grads[0] = op.Add(grads[0], _statistics_grad(ctx, op, x, xc, rstd, norm_axes))
    if scale is not None and ctx.needs_grad(1):
        grads[1] = sum_to_shape(op, op.Mul(dy, xhat), scale, y)
    if bias is not None and ctx.needs_grad(2):
        grads[2] = sum_to_shape(op, dy, bias, y)
    return grads


def _statistics_grad(ctx: GradContext, op: Builder, x: Value, xc: Value, rstd: Value,
                     norm_axes: list[int]) -> Value:
    """dx from LayerNormalization's Mean and InvStdDev outputs: (dμ - dr·r³·(x - μ))/n."""
    parts = []
    if ctx.has_dy(1):
        parts.append(op.cast(ctx.dy(1), x.dtype))
    if ctx.has_dy(2):
        r3 = op.Mul(rstd, op.Mul(rstd, rstd))
        parts.append(op.Neg(op.Mul(op.Mul(op.cast(ctx.dy(2), x.dtype), r3), xc)))
    total = parts[0] if len(parts) == 1 else op.Add(parts[0], parts[1])
    n = op.ReduceProd(op.Gather(op.Shape(x), norm_axes), keepdims=0)
    return op.Div(total, op.cast(n, x.dtype))  # broadcasts over the normalized axes


@grad_rule("RMSNormalization")
def rms_normalization(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x̂·s with x̂ = x·r, r = 1/√(mean(x²) + ε) over axes [axis, rank):
    dx = r·(g − x̂·mean(g·x̂)) with g = dy·s; ds = Σ dy·x̂ summed to s's shape.

    A rule rather than the function body: the body would replace the fused forward op of the
    train step by a dozen nodes that round differently.
    """
    x, scale, dy = ctx.x(0), ctx.x(1), ctx.dy()
    norm_axes = list(range(axis(ctx, x, default=-1), ctx.rank(x)))
    eps = float_const(op, ctx.attr("epsilon", 1e-5), x)
    rstd = op.Reciprocal(op.Sqrt(op.Add(op.ReduceMean(op.Mul(x, x), norm_axes, keepdims=1),
                                        eps)))
    xhat = op.Mul(x, rstd)
    grads: list[Value | None] = [None, None]
    if ctx.needs_grad(0):
        g = op.Mul(dy, scale)
        mean_gx = op.ReduceMean(op.Mul(g, xhat), norm_axes, keepdims=1)
        grads[0] = op.Mul(rstd, op.Sub(g, op.Mul(xhat, mean_gx)))
    if ctx.needs_grad(1):
        grads[1] = sum_to_shape(op, op.Mul(dy, xhat), scale, ctx.outputs[0])
    return grads


@grad_rule("Erf")
def erf(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = erf x: dx = dy·(2/√π)·exp(-x²)."""
    x = ctx.x(0)
    return [op.Mul(ctx.dy(), op.Mul(op.Exp(op.Neg(op.Mul(x, x))), 2.0 / math.sqrt(math.pi)))]


@grad_rule("Gelu")
def gelu(ctx: GradContext, op: Builder) -> list[Value | None]:
    """approximate="none": y = x·Φ(x), Φ(x) = ½(1 + erf(x/√2)): dx = dy·(Φ(x) + x·φ(x)),
    φ(x) = exp(-x²/2)/√(2π).
    approximate="tanh": y = ½x(1 + t), t = tanh(u), u = √(2/π)(x + 0.044715x³):
    dx = dy·(½(1 + t) + ½x(1 - t²)·√(2/π)(1 + 3·0.044715x²)).
    """
    x, dy = ctx.x(0), ctx.dy()
    mode = ctx.attr("approximate", "none")
    x2 = op.Mul(x, x)
    if mode == "none":
        cdf = op.Mul(op.Add(op.Erf(op.Mul(x, 1.0 / math.sqrt(2.0))), 1.0), 0.5)
        pdf = op.Mul(op.Exp(op.Mul(x2, -0.5)), 1.0 / math.sqrt(2.0 * math.pi))
        return [op.Mul(dy, op.Add(cdf, op.Mul(x, pdf)))]
    if mode == "tanh":
        k, c = math.sqrt(2.0 / math.pi), 0.044715
        t = op.Tanh(op.Mul(op.Add(x, op.Mul(op.Mul(x2, x), c)), k))
        du = op.Mul(op.Add(op.Mul(x2, 3.0 * c), 1.0), k)
        left = op.Mul(op.Add(t, 1.0), 0.5)
        right = op.Mul(op.Mul(op.Mul(x, 0.5), op.Sub(1.0, op.Mul(t, t))), du)
        return [op.Mul(dy, op.Add(left, right))]
    raise _unsupported(ctx, f"unknown approximate={mode!r}")


# -- lookups and scatters ----------------------------------------------------------------------

@grad_rule("Gather")
def gather(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = data[..., idx, ...] along axis a (an embedding lookup when a = 0):
    d data = zeros with dy scatter-added at idx (repeated indices sum their gradients).

    For a ≠ 0 the indexed axis is moved to the front, scattered with ScatterND, and moved back.
    """
    data, idx = ctx.x(0), ctx.x(1)
    dy = ctx.dy()
    if not ctx.needs_grad(0):
        return [None, None]
    rd, ri = ctx.rank(data), ctx.rank(idx)
    a = axis(ctx, data)
    dshape = op.Shape(data)
    idx = op.cast(idx, ir.DataType.INT64)  # ScatterND takes int64 indices only
    idx = _nonnegative(ctx, op, idx, op.Gather(dshape, op.const(np.array(a, dtype=np.int64))))
    perm = [a] + [d for d in range(rd) if d != a]  # data's axes with a first
    if a:
        lead = list(range(a, a + ri))
        dy = op.Transpose(dy, perm=lead + list(range(a)) + list(range(a + ri, rd - 1 + ri)))
        zeros = zeros_of_shape(op, op.Gather(dshape, perm), dy)
    else:
        zeros = zeros_of_shape(op, dshape, dy)
    out = op.ScatterND(zeros, op.Unsqueeze(idx, [-1]), dy, reduction="add")
    if a:
        out = op.Transpose(out, perm=[int(i) for i in np.argsort(perm)])
    return [out, None]


@grad_rule("GatherElements")
def gather_elements(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y[i][j] = data[idx[i][j]][j] (axis 0; likewise others): d data = ScatterElements of dy
    at idx into zeros, with reduction="add"."""
    data, idx = ctx.x(0), ctx.x(1)
    if not ctx.needs_grad(0):
        return [None, None]
    a = axis(ctx, data)
    dshape = op.Shape(data)
    idx = _nonnegative(ctx, op, idx, op.Gather(dshape, op.const(np.array(a, dtype=np.int64))))
    zeros = zeros_of_shape(op, dshape, data)
    return [op.ScatterElements(zeros, idx, ctx.dy(), axis=a, reduction="add"), None]


@grad_rule("GatherND")
def gather_nd(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = data[idx[..., :]] (batch_dims = 0): d data = ScatterND of dy at idx into zeros,
    with reduction="add"."""
    data, idx = ctx.x(0), ctx.x(1)
    if not ctx.needs_grad(0):
        return [None, None]
    if int(ctx.attr("batch_dims", 0)):
        raise _unsupported(ctx, "GatherND with batch_dims > 0 has no gradient rule yet")
    ishape = ctx.shape(idx)
    k = ishape[-1] if ishape else None
    if not isinstance(k, int):
        raise _unsupported(ctx, "the last dimension of GatherND's indices must be static")
    dshape = op.Shape(data)
    idx = _nonnegative(ctx, op, idx, op.Slice(dshape, [0], [k]))
    return [op.ScatterND(zeros_of_shape(op, dshape, data), idx, ctx.dy(), reduction="add"), None]


# -- max and min -------------------------------------------------------------------------------

@grad_rule("ReduceMax", "ReduceMin")
def reduce_extremum(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = max (min) of x over axes: dx = dy·[x = y]/#{x = y}, i.e. the gradient goes to the
    extremal elements and is shared evenly between ties (as torch.amax/amin)."""
    x, y = ctx.x(0), ctx.outputs[0]
    dy = ctx.dy()
    axes = reduced_axes(ctx)
    if not axes and int(ctx.attr("noop_with_empty_axes", 0)):
        return [dy, None]
    if axes and not int(ctx.attr("keepdims", 1)):
        y, dy = op.Unsqueeze(y, axes), op.Unsqueeze(dy, axes)
    mask = op.cast(op.Equal(x, y), x.dtype)
    count = op.ReduceSum(mask, axes, keepdims=1) if axes else op.ReduceSum(mask, keepdims=1)
    return [op.Div(op.Mul(dy, mask), count), None]


@grad_rule("Max", "Min")
def elementwise_extremum(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = max(x₀, x₁, …) (broadcasting): dxᵢ = dy·[xᵢ = y]/#{j: xⱼ = y}, summed to xᵢ's
    shape; ties share the gradient evenly (torch.maximum gives each of two ties dy/2)."""
    dy, y = ctx.dy(), ctx.outputs[0]
    xs = [ctx.x(i) for i in range(len(ctx.inputs))]
    if len(xs) == 1:
        return [dy]
    masks = [op.cast(op.Equal(x, y), y.dtype) for x in xs]
    share = op.Div(dy, op.Sum(*masks))
    return [unbroadcast(ctx, op, op.Mul(share, masks[i]), i) if ctx.needs_grad(i) else None
            for i in range(len(xs))]


# -- Einsum and CumSum -------------------------------------------------------------------------

def _einsum_terms(ctx: GradContext) -> tuple[list[str], str]:
    """Operand and result subscripts with every ``...`` spelled out as letters.

    Ellipsis dimensions align from the right (numpy broadcasting), so an operand with fewer of
    them gets the rightmost of the shared letters.
    """
    eq = str(ctx.attr("equation")).replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ctx.inputs):
        raise _unsupported(ctx, f"equation {eq!r} has {len(terms)} operands for "
                           f"{len(ctx.inputs)} inputs")
    if not arrow:  # implicit output: "..." then the letters that occur once, sorted
        letters = "".join(terms).replace(".", "")
        rhs = ("..." if "..." in lhs else "") + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1))
    free = [c for c in string.ascii_letters if c not in eq]
    widths = [ctx.rank(ctx.x(i)) - len(t.replace("...", "")) if "..." in t else 0
              for i, t in enumerate(terms)]
    width = max(widths, default=0)
    if len(free) < width:
        raise _unsupported(ctx, "too many ellipsis dimensions")
    ell = "".join(free[:width])
    out_terms = [t.replace("...", ell[width - w:] if w else "") for t, w in zip(terms, widths)]
    return out_terms, rhs.replace("...", ell)


@grad_rule("Einsum")
def einsum(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = einsum(eq, x₀, x₁, …): dxᵢ = einsum("y-subscripts, others → xᵢ-subscripts", dy,
    x_{j≠i}), since y is linear in each operand. Letters that only xᵢ sums out are restored by
    broadcasting; broadcast (size-1) ellipsis dims are summed back. A letter repeated inside
    one operand (a diagonal, a trace) is differentiated once and the result placed back on
    that diagonal (an identity matrix per repetition).
    """
    terms, out = _einsum_terms(ctx)
    dy = ctx.dy()
    grads: list[Value | None] = []
    operands = [ctx.x(i) for i in range(len(ctx.inputs))]
    for i, (x, term) in enumerate(zip(operands, terms)):
        if not ctx.needs_grad(i):
            grads.append(None)
            continue
        unique = "".join(dict.fromkeys(term))
        firsts = [term.index(c) for c in unique]
        others = [t for j, t in enumerate(terms) if j != i]
        seen = set(out) | set("".join(others))
        kept = "".join(c for c in unique if c in seen)
        eq = ",".join([out, *others]) + "->" + kept
        g = op.Einsum(dy, *[v for j, v in enumerate(operands) if j != i], equation=eq)
        if kept != unique:  # letters summed out of xᵢ alone: broadcast dy back over them
            g = op.Expand(op.Unsqueeze(g, [k for k, c in enumerate(unique) if c not in seen]),
                          op.Gather(op.Shape(x), firsts))
        if unique != term:
            g = _onto_diagonals(ctx, op, g, term, unique, x)
        xs = ctx.shape(x)
        if xs is None or any(d == 1 or not isinstance(d, int) for d in xs):
            g = sum_to_shape(op, g, x)  # a size-1 dim of xᵢ may have broadcast
        grads.append(g)
    return grads


def _onto_diagonals(ctx: GradContext, op: Builder, g: Value, term: str, unique: str,
                    x: Value) -> Value:
    """g (subscripts ``unique``) placed on the diagonals of ``term`` (a letter repeated):
    einsum with one identity matrix per repetition."""
    xs = ctx.shape(x)
    free = iter(c for c in string.ascii_letters if c not in term)
    spelled, eyes, eqs = [], [], []
    for k, c in enumerate(term):
        if term.index(c) == k:
            spelled.append(c)
            continue
        n = xs[k] if xs is not None else None
        if not isinstance(n, int):
            raise _unsupported(ctx, f"the repeated subscript {c!r} needs a static size")
        f = next(free)
        spelled.append(f)
        eyes.append(op.const(np.eye(n, dtype=np_dtype(dtype_of(x)))))
        eqs.append(c + f)
    return op.Einsum(g, *eyes, equation=",".join([unique, *eqs]) + "->" + "".join(spelled))


@grad_rule("CumSum")
def cumsum(ctx: GradContext, op: Builder) -> list[Value | None]:
    """yⱼ = Σ_{i ≤ j} xᵢ along axis (exclusive: i < j; reverse: i ≥ j): dx = the cumulative sum
    of dy in the opposite direction, with the same exclusivity."""
    reverse = int(ctx.attr("reverse", 0))
    exclusive = int(ctx.attr("exclusive", 0))
    return [op.CumSum(ctx.dy(), ctx.x(1), exclusive=exclusive, reverse=1 - reverse), None]

