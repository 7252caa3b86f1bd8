"""Ops of mobile vision nets: hard activations, Mish, PRelu, Pad, Resize, Expand, Tile."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..._ir import Builder, Value, np_dtype
from ...errors import UnsupportedOpError
from .._helpers import INT64_MAX, float_const, unbroadcast, zero
from .._registry import GradContext, grad_rule


@grad_rule("HardSigmoid")
def hard_sigmoid(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = clip(αx + β, 0, 1): dx = α·dy where 0 < αx + β < 1, else 0."""
    x, dy = ctx.x(0), ctx.dy()
    alpha = float_const(op, ctx.attr("alpha", 0.2), x)  # attributes are float32
    z = op.Add(op.Mul(x, alpha), float_const(op, ctx.attr("beta", 0.5), x))
    inside = op.And(op.Greater(z, 0.0), op.Less(z, 1.0))
    return [op.Where(inside, op.Mul(dy, alpha), zero(op, dy))]


@grad_rule("HardSwish")
def hard_swish(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x·clip(αx + ½, 0, 1), α = 1/6: dx = dy·(2αx + ½) on (-3, 3), dy above, 0 below.

    α is taken as float32(1/6), the constant runtimes use, so gradients match their forward.
    """
    x, dy = ctx.x(0), ctx.dy()
    mid = op.Add(op.Mul(x, 2.0 * float(np.float32(1.0 / 6.0))), 0.5)
    slope = op.Where(op.Less(x, -3.0), zero(op, x),
                     op.Where(op.Greater(x, 3.0), op.scalar(1.0, x), mid))
    return [op.Mul(dy, slope)]


@grad_rule("Mish")
def mish(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x·tanh(softplus(x)): dx = dy·(t + x·σ(x)·(1 - t²)), t = tanh(softplus(x))."""
    x, dy = ctx.x(0), ctx.dy()
    t = op.Tanh(op.Softplus(x))
    d = op.Add(t, op.Mul(op.Mul(x, op.Sigmoid(x)), op.Sub(1.0, op.Mul(t, t))))
    return [op.Mul(dy, d)]


@grad_rule("PRelu")
def prelu(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x if x > 0 else a·x (a broadcast to x): dx = dy or a·dy, da = Σ dy·x where x ≤ 0."""
    x, a, dy = ctx.x(0), ctx.x(1), ctx.dy()
    pos = op.Greater(x, 0.0)
    grads: list[Value | None] = [None, None]
    if ctx.needs_grad(0):
        grads[0] = op.Where(pos, dy, op.Mul(dy, a))
    if ctx.needs_grad(1):
        grads[1] = unbroadcast(ctx, op, op.Where(pos, zero(op, dy), op.Mul(dy, x)), 1)
    return grads


# -- Pad ---------------------------------------------------------------------------------------

def _static_shape(ctx: GradContext, name: Value, skip_batch: bool) -> list[int]:
    shape = ctx.shape(name)
    dims = list(shape or [])
    check = dims[1:] if skip_batch else dims
    if shape is None or any(not isinstance(d, int) for d in check):
        raise UnsupportedOpError(f"{ctx.where()}: the gradient needs the static shape of "
                                 f"{name.name!r}, got {shape}")
    return [int(d) if isinstance(d, int) else -1 for d in dims]


def _pad_amounts(ctx: GradContext, rank: int) -> list[int]:
    known = ctx.const_value(ctx.input(1))
    if known is None:
        raise UnsupportedOpError(f"{ctx.where()}: the pads must be constants for the gradient")
    pads = [int(p) for p in known.reshape(-1)]
    axes_v = ctx.const_value(ctx.input(3))
    if ctx.input(3) and axes_v is None:
        raise UnsupportedOpError(f"{ctx.where()}: the axes must be constants for the gradient")
    axes = ([int(a) % rank for a in axes_v.reshape(-1)] if axes_v is not None
            else list(range(rank)))
    full = [0] * (2 * rank)
    for j, a in enumerate(axes):
        full[a], full[rank + a] = pads[j], pads[len(axes) + j]
    return full


@grad_rule("Pad")
def pad(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = pad(x): dx collects every output element back onto the input element it copies.

    constant: dx is the interior of dy (negative pads, which crop, become zero padding).
    reflect/edge/wrap: the copy map is static, so it is computed once with numpy (np.pad of
    an index grid) and dx = ScatterElements(0, map, dy, reduction="add") per sample.
    """
    x, dy = ctx.x(0), ctx.dy()
    rank = ctx.rank(x)
    pads = _pad_amounts(ctx, rank)
    mode = ctx.attr("mode", "constant")
    grads: list[Value | None] = [None] * len(ctx.inputs)
    if mode == "constant":
        undo = [max(-p, 0) for p in pads]
        g = op.Pad(dy, undo) if any(undo) else dy
        axes = [a for a in range(rank) if pads[a] > 0 or pads[rank + a] > 0]
        if axes:
            starts = [max(pads[a], 0) for a in axes]
            ends = [-pads[rank + a] if pads[rank + a] > 0 else INT64_MAX for a in axes]
            g = op.Slice(g, starts, ends, axes)
        grads[0] = g
        return grads
    batch_free = pads[0] == 0 and pads[rank] == 0
    xs = _static_shape(ctx, x, skip_batch=batch_free)
    inner = xs[1:] if batch_free else xs
    inner_pads = ([(pads[a], pads[rank + a]) for a in range(1, rank)] if batch_free
                  else [(pads[a], pads[rank + a]) for a in range(rank)])
    if any(p < 0 for pp in inner_pads for p in pp):
        raise UnsupportedOpError(f"{ctx.where()}: negative pads in {mode} mode")
    size = int(np.prod(inner))
    grid = np.arange(size, dtype=np.int64).reshape(inner)
    np_mode = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode]
    index = np.pad(grid, inner_pads, mode=np_mode).reshape(1, -1)  # type: ignore[call-overload]
    flat_dy = op.Reshape(dy, [-1, index.shape[1]] if batch_free else [1, -1])
    idx = op.Expand(op.const(index, hint="pad_index"), op.Shape(flat_dy))
    zeros = op.Reshape(op.zeros_like(x), [-1, size] if batch_free else [1, -1])
    g = op.ScatterElements(zeros, idx, flat_dy, axis=1, reduction="add")
    grads[0] = op.Reshape(g, op.Shape(x))
    return grads


# -- Resize ------------------------------------------------------------------------------------

def _resize_weights(ctx: GradContext, op: Builder, n_in: int, n_out: int,
                    scale: float | None, roi: tuple[float, float], like: Value) -> Value:
    """The [n_out, n_in] matrix of the node's 1-D interpolation along one axis.

    Resize is separable: every mode (nearest, linear, cubic, antialiased, with any coordinate
    transform) interpolates each axis independently. The node's own attributes applied to an
    identity give the exact weights — in the graph, so that each runtime gets the weights of
    its own Resize (onnxruntime and onnx.reference disagree on align_corners when scales
    leave a fractional output size). ``roi``: the axis's crop for tf_crop_and_resize;
    outputs outside it take the extrapolation value, a constant (0 here).
    """
    attrs = {k: ctx.attr(k) for k in ctx.node.attributes
             if k not in ("axes", "keep_aspect_ratio_policy")}
    attrs["extrapolation_value"] = 0.0
    eye = op.const(np.eye(n_in, dtype=np_dtype(like.dtype or ir.DataType.FLOAT)),
                   hint="resize_basis")
    roi_v = op.const(np.array([0.0, roi[0], 1.0, roi[1]], dtype=np.float32), hint="roi")
    if scale is None:  # the node gave sizes: the transform uses out/in
        sizes = op.const(np.array([n_in, n_out], dtype=np.int64))
        out = op.Resize(eye, roi_v, None, sizes, **attrs)
    else:
        scales = op.const(np.array([1.0, scale], dtype=np.float32), hint="scales")
        out = op.Resize(eye, roi_v, scales, **attrs)
    return op.Transpose(out, perm=[1, 0])


def _resize_rois(ctx: GradContext, axes: list[int], rank: int) -> dict[int, tuple[float, float]]:
    """tf_crop_and_resize's crop (start, end) per axis, from the constant roi input."""
    if ctx.attr("coordinate_transformation_mode", "half_pixel") != "tf_crop_and_resize":
        return {}
    roi = ctx.const_value(ctx.input(1))
    if roi is None:
        raise UnsupportedOpError(f"{ctx.where()}: the roi must be a constant for the gradient")
    flat = [float(v) for v in roi.reshape(-1)]
    on = axes if len(flat) == 2 * len(axes) else list(range(rank))
    return {a: (flat[i], flat[len(on) + i]) for i, a in enumerate(on)}


@grad_rule("Resize")
def resize(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = R X with R = ⊗ R_a (one static matrix per resized axis): dX = Rᵀ dY.

    Each resized axis is moved last, multiplied by R_aᵀ (MatMul) and moved back.
    """
    x, y, dy = ctx.x(0), ctx.outputs[0], ctx.dy()
    rank = ctx.rank(x)
    xs, ys = ctx.shape(x), ctx.shape(y)
    scales_v = ctx.const_value(ctx.input(2))
    sizes_v = ctx.const_value(ctx.input(3))
    if (ctx.input(2) and scales_v is None) or (ctx.input(3) and sizes_v is None):
        raise UnsupportedOpError(f"{ctx.where()}: scales/sizes must be constants")
    axes_attr = ctx.attr("axes")
    axes = [int(a) % rank for a in axes_attr] if axes_attr is not None else list(range(rank))
    scales = {a: 1.0 for a in range(rank)}
    if scales_v is not None and scales_v.size:
        for a, s in zip(axes, scales_v.reshape(-1)):
            scales[a] = float(s)
    assert xs is not None and ys is not None
    rois = _resize_rois(ctx, axes, rank)
    g = dy
    for a in range(rank):
        n_in, n_out = xs[a], ys[a]
        if a not in axes or (sizes_v is None and scales[a] == 1.0):
            continue  # identity along this axis, whatever the coordinate transform
        if not isinstance(n_in, int) or not isinstance(n_out, int):
            raise UnsupportedOpError(f"{ctx.where()}: resized axis {a} needs a static size")
        use_sizes = sizes_v is not None and sizes_v.size > 0
        if n_in == n_out and (use_sizes or scales[a] == 1.0) and a not in rois:
            continue
        w = _resize_weights(ctx, op, n_in, n_out, None if use_sizes else scales[a],
                            rois.get(a, (0.0, 1.0)), x)
        if a == rank - 1:
            g = op.MatMul(g, w)
        else:
            perm = list(range(rank))
            perm[a], perm[-1] = perm[-1], perm[a]
            g = op.Transpose(op.MatMul(op.Transpose(g, perm=perm), w), perm=perm)
    return [g] + [None] * (len(ctx.inputs) - 1)


# -- broadcasting copies -----------------------------------------------------------------------

@grad_rule("Expand")
def expand(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = broadcast(x, shape): dx = dy summed over the broadcast axes."""
    return [unbroadcast(ctx, op, ctx.dy(), 0), None]


@grad_rule("Tile")
def tile(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = tile(x, r): view dy as [r₀, d₀, r₁, d₁, …] and sum over the r axes."""
    x, reps = ctx.x(0), ctx.x(1)
    rank = ctx.rank(x)
    pairs = op.Concat(op.Unsqueeze(reps, [1]), op.Unsqueeze(op.Shape(x), [1]), axis=1)
    g = op.Reshape(ctx.dy(), op.Reshape(pairs, [-1]))
    g = op.ReduceSum(g, [2 * i for i in range(rank)], keepdims=0)
    return [g, None]


# -- GridSample --------------------------------------------------------------------------------

#: Largest sampling matrix (batch × input pixels × output points) the GridSample rule builds.
GRID_SAMPLE_MAX_ELEMENTS = 1 << 26


def _identity_image(op: Builder, pixels: int, spatial: list[int], like: Value) -> Value:
    """[1, pixels, *spatial]: channel p is the unit image of pixel p (built at run time for
    large images, where the constant would bloat the file)."""
    dt = np_dtype(like.dtype or ir.DataType.FLOAT)
    if pixels <= 4096:
        return op.const(np.eye(pixels, dtype=dt).reshape(1, pixels, *spatial),
                        hint="grid_sample_basis")
    square = op.ConstantOfShape(op.const(np.array([pixels, pixels], dtype=np.int64)),
                                value=ir.tensor(np.zeros(1, dtype=dt)))
    return op.Reshape(op.op("EyeLike", square), [1, pixels, *spatial])


@grad_rule("GridSample")
def grid_sample(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y[n, c] = W[n]·X[n, c] with W[n] [points, pixels] fixed by the grid (mode, padding,
    align_corners): dX[n, c] = W[n]ᵀ·dY[n, c].

    Wᵀ is the op itself run on the identity image (one channel per input pixel): sampling
    pixel p's unit image at every grid point gives row p of Wᵀ, for every mode and padding
    rule exactly as the runtime samples. The grid gets no gradient (the schema marks it
    non-differentiable).
    """
    x, grid, dy = ctx.x(0), ctx.x(1), ctx.dy()
    xs, ys = ctx.shape(x), ctx.shape(ctx.outputs[0])
    if xs is None or ys is None or not all(isinstance(d, int) for d in [*xs[2:], *ys[2:]]):
        raise UnsupportedOpError(f"{ctx.where()}: the gradient needs static spatial sizes")
    pixels = int(np.prod([int(d) for d in xs[2:]]))  # type: ignore[arg-type]
    points = int(np.prod([int(d) for d in ys[2:]]))  # type: ignore[arg-type]
    batch = xs[0] if isinstance(xs[0], int) else 1
    if batch * pixels * points > GRID_SAMPLE_MAX_ELEMENTS:
        raise UnsupportedOpError(f"{ctx.where()}: the gradient's sampling matrix would have "
                                 f"{batch * pixels * points} elements (limit "
                                 f"{GRID_SAMPLE_MAX_ELEMENTS})")
    spatial = [int(d) for d in xs[2:]]  # type: ignore[arg-type]
    basis = op.Expand(_identity_image(op, pixels, spatial, x),
                      op.Concat(op.Shape(x, start=0, end=1),
                                op.const(np.ones(len(xs) - 1, dtype=np.int64)), axis=0))
    attrs = {k: ctx.attr(k) for k in ctx.node.attributes}
    wt = op.Reshape(op.op("GridSample", basis, grid, **attrs), [0, pixels, points])
    g = op.MatMul(op.Reshape(dy, [0, 0, points]), op.Transpose(wt, perm=[0, 2, 1]))
    return [op.Reshape(g, op.Shape(x)), None]
