"""Elementwise arithmetic, activations, Cast and Where.

Binary ops broadcast (numpy rules), so each input's gradient is summed back to that input's
shape with :func:`unbroadcast`. Gradients at kinks follow torch (Relu'(0) = 0, |x|'(0) = 0).
"""

from __future__ import annotations

from ..._ir import Builder, Value, is_float
from .._helpers import float_const, same_type, unbroadcast, zero
from .._registry import GradContext, grad_rule


@grad_rule("Add")
def add(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = a + b: da = dy, db = dy (summed over broadcast axes)."""
    dy = ctx.dy()
    return [unbroadcast(ctx, op, dy, i) if ctx.needs_grad(i) else None for i in range(2)]


@grad_rule("Sum")
def sum_(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x₀ + x₁ + … (variadic, broadcasting): dxᵢ = dy summed to xᵢ's shape."""
    dy = ctx.dy()
    return [unbroadcast(ctx, op, dy, i) if ctx.needs_grad(i) else None
            for i in range(len(ctx.inputs))]


@grad_rule("Mean")
def mean(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = (x₀ + x₁ + … + xₙ₋₁)/n (variadic, broadcasting): dxᵢ = dy/n summed to xᵢ's shape."""
    g = op.Mul(ctx.dy(), 1.0 / len(ctx.inputs))
    return [unbroadcast(ctx, op, g, i) if ctx.needs_grad(i) else None
            for i in range(len(ctx.inputs))]


@grad_rule("Sub")
def sub(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = a - b: da = dy, db = -dy."""
    dy = ctx.dy()
    return [unbroadcast(ctx, op, dy, 0) if ctx.needs_grad(0) else None,
            unbroadcast(ctx, op, op.Neg(dy), 1) if ctx.needs_grad(1) else None]


@grad_rule("Mul")
def mul(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = a·b: da = dy·b, db = dy·a."""
    a, b = ctx.x(0), ctx.x(1)
    dy = ctx.dy()
    return [unbroadcast(ctx, op, op.Mul(dy, b), 0) if ctx.needs_grad(0) else None,
            unbroadcast(ctx, op, op.Mul(dy, a), 1) if ctx.needs_grad(1) else None]


@grad_rule("Div")
def div(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = a/b: da = dy/b, db = -dy·y/b."""
    b = ctx.x(1)
    dy = ctx.dy()
    return [unbroadcast(ctx, op, op.Div(dy, b), 0) if ctx.needs_grad(0) else None,
            unbroadcast(ctx, op, op.Neg(op.Div(op.Mul(dy, ctx.outputs[0]), b)), 1)
            if ctx.needs_grad(1) else None]


@grad_rule("Pow")
def pow_(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = aᵇ: da = dy·b·aᵇ⁻¹, db = dy·y·ln a (0 where a ≤ 0, where ln a is undefined).

    ``aᵇ⁻¹`` is a Pow of its own (not y/a) so that a = 0 gives the right limit.
    """
    a, b = ctx.x(0), ctx.x(1)
    dy = ctx.dy()
    da = db = None
    if ctx.needs_grad(0):
        bf = same_type(op, b, a)
        da = unbroadcast(ctx, op, op.Mul(dy, op.Mul(bf, op.Pow(a, op.Sub(bf, 1.0)))), 0)
    if ctx.needs_grad(1):
        af = same_type(op, a, b)
        yf = same_type(op, ctx.outputs[0], b)
        dyf = same_type(op, dy, b)
        pos = op.Greater(af, 0.0)
        g = op.Where(pos, op.Mul(dyf, op.Mul(yf, op.Log(af))), zero(op, b))
        db = unbroadcast(ctx, op, g, 1)
    return [da, db]


@grad_rule("Mod")
def mod(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = a - b·q with q = trunc(a/b) (fmod=1) or floor(a/b) (fmod=0), an integer that is
    constant between the jumps: da = dy, db = -dy·q. q is read back from the forward as
    round((a - y)/b), exact for the integer it is."""
    a, b, dy = ctx.x(0), ctx.x(1), ctx.dy()
    grads: list[Value | None] = [None, None]
    if ctx.needs_grad(0):
        grads[0] = unbroadcast(ctx, op, dy, 0)
    if ctx.needs_grad(1):
        q = op.Round(op.Div(op.Sub(a, ctx.outputs[0]), b))
        grads[1] = unbroadcast(ctx, op, op.Neg(op.Mul(dy, q)), 1)
    return grads


@grad_rule("Neg")
def neg(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = -x: dx = -dy."""
    return [op.Neg(ctx.dy())]


@grad_rule("Abs")
def abs_(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = |x|: dx = dy·sign(x) (0 at 0, as torch)."""
    return [op.Mul(ctx.dy(), op.Sign(ctx.x(0)))]


@grad_rule("Relu")
def relu(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = max(x, 0): dx = dy where x > 0, else 0.

    Written dy·[x > 0] rather than Where(x > 0, dy, 0): onnxruntime's Where with a full-size
    condition is several times slower than Cast + Mul (a relu layer's backward cost more than
    its convolution's). The two differ only where dy is already non-finite: NaN instead of 0
    at inactive units, so the step's guard skips that step.
    """
    x, dy = ctx.x(0), ctx.dy()
    return [op.Mul(dy, op.cast(op.Greater(x, 0.0), dy.dtype))]


@grad_rule("LeakyRelu")
def leaky_relu(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x if x ≥ 0 else α·x: dx = dy where x > 0, else α·dy (torch's choice at 0)."""
    x, dy = ctx.x(0), ctx.dy()
    alpha = float_const(op, ctx.attr("alpha", 0.01), dy)  # float32, as the forward sees it
    return [op.Where(op.Greater(x, 0.0), dy, op.Mul(dy, alpha))]


@grad_rule("Elu")
def elu(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x if x > 0 else α·(eˣ - 1): dx = dy where x > 0, else dy·(y + α)."""
    x, y, dy = ctx.x(0), ctx.outputs[0], ctx.dy()
    alpha = float(ctx.attr("alpha", 1.0))
    return [op.Where(op.Greater(x, 0.0), dy, op.Mul(dy, op.Add(y, alpha)))]


@grad_rule("Sigmoid")
def sigmoid(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = σ(x): dx = dy·y·(1 - y)."""
    y = ctx.outputs[0]
    return [op.Mul(ctx.dy(), op.Mul(y, op.Sub(1.0, y)))]


@grad_rule("Tanh")
def tanh(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = tanh(x): dx = dy·(1 - y²)."""
    y = ctx.outputs[0]
    return [op.Mul(ctx.dy(), op.Sub(1.0, op.Mul(y, y)))]


@grad_rule("Softplus")
def softplus(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = ln(1 + eˣ): dx = dy·σ(x)."""
    return [op.Mul(ctx.dy(), op.Sigmoid(ctx.x(0)))]


@grad_rule("Exp")
def exp(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = eˣ: dx = dy·y."""
    return [op.Mul(ctx.dy(), ctx.outputs[0])]


@grad_rule("Log")
def log(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = ln x: dx = dy/x."""
    return [op.Div(ctx.dy(), ctx.x(0))]


@grad_rule("Sqrt")
def sqrt(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = √x: dx = dy/(2y)."""
    return [op.Div(op.Mul(ctx.dy(), 0.5), ctx.outputs[0])]


@grad_rule("Reciprocal")
def reciprocal(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = 1/x: dx = -dy·y²."""
    y = ctx.outputs[0]
    return [op.Neg(op.Mul(ctx.dy(), op.Mul(y, y)))]


@grad_rule("Clip")
def clip(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = min(max(x, lo), hi) = min(m, hi): dx = dy where x ≥ lo and m ≤ hi;
    dlo = Σ dy where x < lo and m ≤ hi; dhi = Σ dy where m > hi (torch.clamp's convention at
    the bounds). With lo > hi every y is hi, and all of the gradient goes to hi.

    ``lo`` and ``hi`` are optional inputs; an absent bound passes everything on its side.
    """
    x, dy = ctx.x(0), ctx.dy()
    lo, hi = ctx.input(1), ctx.input(2)
    z = zero(op, dy)
    grads: list[Value | None] = [None] * len(ctx.inputs)
    below_hi = None  # m ≤ hi
    if hi is not None:
        below_hi = op.LessOrEqual(op.Max(x, lo) if lo is not None else x, hi)
    if ctx.needs_grad(0):
        inside = op.GreaterOrEqual(x, lo) if lo is not None else None
        if below_hi is not None:
            inside = below_hi if inside is None else op.And(inside, below_hi)
        # dy·[inside] rather than Where(inside, dy, 0), as for Relu: onnxruntime's Where on a
        # full-size condition cost a MobileNetV2 step 14 % in ReLU6 backwards alone.
        grads[0] = dy if inside is None else op.Mul(dy, op.cast(inside, dy.dtype))
    if lo is not None and ctx.needs_grad(1):
        under = op.Less(x, lo)
        under = under if below_hi is None else op.And(under, below_hi)
        grads[1] = op.ReduceSum(op.Where(under, dy, z), keepdims=0)
    if hi is not None and below_hi is not None and ctx.needs_grad(2):
        grads[2] = op.ReduceSum(op.Where(below_hi, z, dy), keepdims=0)
    return grads


@grad_rule("Identity", "OptionalGetElement")
def identity(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x (and the tensor inside an optional tensor): dx = dy."""
    return [ctx.dy()]


@grad_rule("Cast", "CastLike")
def cast(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = cast(x) (Cast, CastLike): dx = cast(dy) back to x's type, for float → float casts.

    Casts to or from integer and bool types carry no gradient (the engine never reaches them
    through an integer output; an integer input gets ``None``).
    """
    x = ctx.x(0)
    rest: list[Value | None] = [None] * (len(ctx.inputs) - 1)  # CastLike's target gets none
    if not is_float(x.dtype):
        return [None, *rest]
    dy = ctx.dy()
    return [op.cast(dy, x.dtype), *rest]


@grad_rule("Where")
def where(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = c ? a : b: da = dy where c else 0, db = dy where not c else 0 (c gets nothing)."""
    c, dy = ctx.x(0), ctx.dy()
    grads: list[Value | None] = [None, None, None]
    if ctx.needs_grad(1):
        grads[1] = unbroadcast(ctx, op, op.Where(c, dy, zero(op, dy)), 1)
    if ctx.needs_grad(2):
        grads[2] = unbroadcast(ctx, op, op.Where(c, zero(op, dy), dy), 2)
    return grads


@grad_rule("Softsign")
def softsign(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x/(1 + |x|): dx = dy/(1 + |x|)²."""
    d = op.Add(op.Abs(ctx.x(0)), 1.0)
    return [op.Div(ctx.dy(), op.Mul(d, d))]
