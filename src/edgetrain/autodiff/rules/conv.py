"""Convolutions: Conv and ConvTranspose (1-D, 2-D, N-D; strides, pads, auto_pad, dilations,
groups including depthwise).

Grouped convolutions' backward passes are written with ``Conv`` only, as JAX does
(``_conv_general_dilated_transpose_lhs/rhs``):

* the input gradient of a convolution is a *full* correlation of the zero-dilated output
  gradient with the spatially flipped, group-transposed kernel;
* the weight gradient is a convolution of the input (batch and channels swapped) with the
  output gradient used as the kernel (strides and dilations swap roles).

Ungrouped convolutions (``group == 1``), the expensive ones, take the faster forms on
onnxruntime: the input gradient is one ``ConvTranspose`` (the adjoint), and the weight gradient
(kernels up to :data:`IM2COL_MAX_KERNEL` taps) is im2col by strided slices and one ``Gemm``.
Grouped ``ConvTranspose`` stays out of backward graphs (onnx.reference mis-handles it).

``ConvTranspose`` is the adjoint of ``Conv``, so its input gradient is a plain ``Conv`` and its
weight gradient the same weight-gradient convolution.
These forms use static spatial sizes (the batch size may be dynamic); when a size is known only
at run time, the rules take the forms of ``conv_dynamic`` instead.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from ..._ir import Builder, Value
from ...errors import UnsupportedOpError
from .._registry import GradContext, grad_rule
from . import conv_dynamic
from .conv_dynamic import IM2COL_MAX_KERNEL, Window, crop_or_pad, flipped_kernel, known_spatial


@dataclass(frozen=True)
class ConvGeometry(Window):
    """A convolution's window with its static spatial sizes."""

    x: tuple[int, ...]        # input spatial sizes
    y: tuple[int, ...]        # output spatial sizes


def static_spatial(ctx: GradContext, name: Value) -> tuple[int, ...]:
    """Spatial sizes (axes 2..) of ``name``; they must be known at compile time."""
    shape = ctx.shape(name)
    dims = [d for d in (shape or ())[2:] if isinstance(d, int) and d > 0]
    if shape is None or len(dims) != len(shape) - 2:
        raise UnsupportedOpError(
            f"{ctx.where()}: the gradient needs static spatial sizes, but {name.name!r} has "
            f"shape "
            f"{shape}; export the model with a fixed image size (a dynamic batch is fine)")
    return tuple(dims)


def auto_pads(mode: str, x: tuple[int, ...], k_eff: list[int], strides: list[int]
              ) -> tuple[list[int], list[int]]:
    """Begin/end pads that ONNX's auto_pad mode implies (SAME_* keeps ceil(x / stride))."""
    begin, end = [], []
    for xi, ki, si in zip(x, k_eff, strides):
        if mode == "VALID":
            begin.append(0)
            end.append(0)
            continue
        out = -(-xi // si)
        total = max((out - 1) * si + ki - xi, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return begin, end


def conv_geometry(ctx: GradContext, x: Value, k: tuple[int, ...], group: int = 1,
                  y: Value | None = None) -> ConvGeometry:
    """Resolve strides, dilations and (auto) pads of a Conv/MaxPool/AveragePool node."""
    xs = static_spatial(ctx, x)
    n = len(xs)
    strides = [int(s) for s in (ctx.attr("strides") or [1] * n)]
    dilations = [int(d) for d in (ctx.attr("dilations") or [1] * n)]
    mode = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    k_eff = [(k[i] - 1) * dilations[i] + 1 for i in range(n)]
    if mode in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        begin, end = auto_pads(mode, xs, k_eff, strides)
    else:
        pads = [int(p) for p in (ctx.attr("pads") or [0] * (2 * n))]
        begin, end = pads[:n], pads[n:]
    if y is not None:
        ys = static_spatial(ctx, y)
    else:
        ys = tuple((xs[i] + begin[i] + end[i] - k_eff[i]) // strides[i] + 1 for i in range(n))
    return ConvGeometry(tuple(k), tuple(strides), tuple(dilations), tuple(begin), tuple(end),
                        group, x=xs, y=ys)


def input_grad(op: Builder, dy: Value, w: Value, geo: ConvGeometry, out_channels: int,
               in_channels: int) -> Value:
    """dX of Y = Conv(X, W): a full correlation of dilated dY with the flipped, transposed W.

    W is [M, C/g, *k]; the kernel of the backward conv is [C, M/g, *k] flipped in space.
    """
    g, n = geo.group, geo.rank
    wt = flipped_kernel(op, w, geo.k, g, out_channels, in_channels)
    d = conv_dynamic.dilate(op, dy, geo.strides, geo.y, out_channels)
    begin, end = [], []
    for i in range(n):
        extra = (geo.x[i] + geo.begin[i] + geo.end[i] - geo.eff(i)) % geo.strides[i]
        begin.append(geo.eff(i) - 1 - geo.begin[i])
        end.append(geo.eff(i) - 1 - geo.end[i] + extra)
    d, begin, end = crop_or_pad(op, d, begin, end)
    return op.Conv(d, wt, dilations=list(geo.dilations), group=g, pads=begin + end,
                   strides=[1] * n)


def weight_grad(op: Builder, x: Value, dy: Value, geo: ConvGeometry, in_channels: int
                ) -> Value:
    """dW of Y = Conv(X, W): Conv(Xᵀ, dYᵀ) with strides and dilations swapped, cropped to k.

    X becomes [C/g, g·N, *x] (channels as batch, batch as channels, group-major) and dY
    becomes the kernel [M, N, *y], so group j of the result only sees group j's channels.
    """
    g, n = geo.group, geo.rank
    cg = in_channels // g
    sp = list(range(3, 3 + n))
    if g == 1:
        xt = op.Transpose(x, perm=[1, 0, *range(2, 2 + n)])
    else:
        xt = op.Reshape(x, [0, g, cg, *geo.x])
        xt = op.Transpose(xt, perm=[2, 1, 0, *sp])
        xt = op.Reshape(xt, [cg, -1, *geo.x])
    dyt = op.Transpose(dy, perm=[1, 0, *range(2, 2 + n)])
    r = op.Conv(xt, dyt, strides=list(geo.dilations), dilations=list(geo.strides), group=g,
                pads=list(geo.begin) + list(geo.end))
    full = [(geo.x[i] + geo.begin[i] + geo.end[i] - ((geo.y[i] - 1) * geo.strides[i] + 1))
            // geo.dilations[i] + 1 for i in range(n)]
    if any(f != k for f, k in zip(full, geo.k)):
        r = op.Slice(r, [0] * n, list(geo.k), list(range(2, 2 + n)))
    return op.Transpose(r, perm=[1, 0, *range(2, 2 + n)])


def input_grad_transposed(op: Builder, dy: Value, w: Value, geo: ConvGeometry) -> Value:
    """dX of Y = Conv(X, W) for ``group == 1`` as ConvTranspose(dY, W), the adjoint of Conv.

    onnxruntime runs it as one Gemm and a col2im, without the zero-dilated, padded copy of dY
    and the flipped kernel that the full-correlation form (:func:`input_grad`) needs.
    ``output_padding`` restores the trailing rows a strided window never reached.
    """
    n = geo.rank
    out_pad = [(geo.x[i] + geo.begin[i] + geo.end[i] - geo.eff(i)) % geo.strides[i]
               for i in range(n)]
    return op.ConvTranspose(dy, w, strides=list(geo.strides), dilations=list(geo.dilations),
                            pads=list(geo.begin) + list(geo.end), output_padding=out_pad,
                            kernel_shape=list(geo.k))


def weight_grad_im2col(op: Builder, x: Value, dy: Value, geo: ConvGeometry, in_channels: int,
                       out_channels: int) -> Value:
    """dW of Y = Conv(X, W) for ``group == 1`` as im2col + one Gemm.

    dW[m, c, o] = Σ_{n, p} dY[n, m, p] · Xpad[n, c, p·stride + o·dilation]: the columns are
    one strided Slice of the (channel-major, padded) input per kernel offset ``o``, stacked to
    [C·K, N·|Y|], and dY transposed to [M, N·|Y|] multiplies them in a single Gemm. The
    Conv-with-dY-as-kernel formulation (:func:`weight_grad`) makes onnxruntime run N small
    GEMMs with a huge reduction per output pixel: several times slower for ordinary
    (small-kernel) layers.
    """
    n = geo.rank
    spatial = list(range(2, 2 + n))
    xt = op.Transpose(x, perm=[1, 0, *spatial])  # [C, N, *x]
    if any(geo.begin) or any(geo.end):
        xt = op.Pad(xt, [0, 0, *geo.begin, 0, 0, *geo.end])
    offsets = list(itertools.product(*(range(k) for k in geo.k)))
    ident = all(s == 1 for s in geo.strides) and all(
        geo.x[i] + geo.begin[i] + geo.end[i] == geo.y[i] for i in range(n))
    if len(offsets) == 1 and ident:
        cols = op.Reshape(xt, [in_channels, -1])
    else:
        parts = []
        for off in offsets:
            starts = [o * d for o, d in zip(off, geo.dilations)]
            ends = [st + (y - 1) * s + 1 for st, y, s in zip(starts, geo.y, geo.strides)]
            parts.append(op.Unsqueeze(op.Slice(xt, starts, ends, spatial, list(geo.strides)),
                                      [1]))
        stacked = op.Concat(*parts, axis=1) if len(parts) > 1 else parts[0]  # [C, K, N, *y]
        cols = op.Reshape(stacked, [in_channels * len(offsets), -1])
    dyt = op.Reshape(op.Transpose(dy, perm=[1, 0, *spatial]), [out_channels, -1])
    return op.Reshape(op.Gemm(dyt, cols, transB=1), [out_channels, in_channels, *geo.k])


def bias_grad(op: Builder, dy: Value, rank: int) -> Value:
    """dB = Σ dY over the batch and spatial axes."""
    return op.ReduceSum(dy, [0, *range(2, rank)], keepdims=0)


def _weight_shape(ctx: GradContext, w: Value) -> tuple[int, ...]:
    shape = ctx.shape(w)
    dims = [d for d in (shape or ()) if isinstance(d, int)]
    if shape is None or len(dims) != len(shape):
        raise UnsupportedOpError(f"{ctx.where()}: the kernel {w.name!r} needs a static shape, got "
                                 f"{shape}")
    return tuple(dims)


def _operands(ctx: GradContext) -> tuple[Value, Value, tuple[int, ...], bool]:
    """X, W, W's static shape, and whether the node's input and output have static spatial
    sizes (the tuned forms; otherwise the run-time-size forms of ``conv_dynamic``)."""
    x, w = ctx.x(0), ctx.x(1)
    ws = _weight_shape(ctx, w)
    static = all(known_spatial(ctx, v, len(ws) - 2) is not None for v in (x, ctx.outputs[0]))
    return x, w, ws, static


@grad_rule("Conv")
def conv(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = Σ_c X ⋆ W + B (cross-correlation per group).

    dX = Conv(dilate(dY, stride), flip(Wᵀ), pads = k_eff - 1 - pads, dilation d);
    dW = Conv(Xᵀ, dYᵀ, strides = d, dilations = stride)ᵀ cropped to the kernel;
    dB = Σ dY over batch and space.
    """
    x, w, ws, static = _operands(ctx)
    if not static:
        return conv_dynamic.conv_grads(ctx, op, ws)
    dy, group = ctx.dy(), int(ctx.attr("group", 1))
    geo = conv_geometry(ctx, x, ws[2:], group, y=ctx.outputs[0])
    in_channels = ws[1] * group
    grads: list[Value | None] = [None, None, None]
    if ctx.needs_grad(0):
        if group == 1:
            grads[0] = input_grad_transposed(op, dy, w, geo)
        else:
            grads[0] = input_grad(op, dy, w, geo, ws[0], in_channels)
    if ctx.needs_grad(1):
        if group == 1 and int(np.prod(geo.k)) <= IM2COL_MAX_KERNEL:
            grads[1] = weight_grad_im2col(op, x, dy, geo, in_channels, ws[0])
        else:
            grads[1] = weight_grad(op, x, dy, geo, in_channels)
    if ctx.needs_grad(2):
        grads[2] = bias_grad(op, dy, 2 + geo.rank)
    return grads


def _conv_transpose_geometry(ctx: GradContext, ws: tuple[int, ...], group: int
                             ) -> ConvGeometry:
    """The Conv (from Y's space to X's) whose adjoint the ConvTranspose node is."""
    x, y = ctx.x(0), ctx.outputs[0]
    xs, ys = static_spatial(ctx, x), static_spatial(ctx, y)
    n = len(xs)
    k = ws[2:]
    strides = [int(s) for s in (ctx.attr("strides") or [1] * n)]
    dilations = [int(d) for d in (ctx.attr("dilations") or [1] * n)]
    out_pad = [int(p) for p in (ctx.attr("output_padding") or [0] * n)]
    mode = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    pads = ctx.attr("pads")
    if pads is not None and mode == "NOTSET" and ctx.attr("output_shape") is None:
        begin, end = [int(p) for p in pads[:n]], [int(p) for p in pads[n:]]
    elif mode == "VALID" or (mode == "NOTSET" and pads is None
                             and ctx.attr("output_shape") is None):
        begin, end = [0] * n, [0] * n
    else:
        begin, end = [], []
        for i in range(n):
            total = (strides[i] * (xs[i] - 1) + out_pad[i] + (k[i] - 1) * dilations[i] + 1
                     - ys[i])
            if mode == "SAME_UPPER":
                begin.append(total // 2)
                end.append(total - total // 2)
            else:
                begin.append(total - total // 2)
                end.append(total // 2)
    return ConvGeometry(tuple(k), tuple(strides), tuple(dilations), tuple(begin), tuple(end),
                        group, x=ys, y=xs)


def _crop_outside(op: Builder, dy: Value, geo: ConvGeometry) -> tuple[Value, ConvGeometry]:
    """Negative pads of the adjoint Conv (an ``output_shape`` beyond the natural size) mark
    output rows no input reaches: dY cropped to the rest, and the geometry without them."""
    g, begin, end = crop_or_pad(op, dy, list(geo.begin), list(geo.end))
    xs = tuple(geo.x[i] + min(geo.begin[i], 0) + min(geo.end[i], 0) for i in range(geo.rank))
    return g, dataclasses.replace(geo, x=xs, begin=tuple(begin), end=tuple(end))


@grad_rule("ConvTranspose")
def conv_transpose(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = ConvTranspose(X, W) + B is the adjoint of Z ↦ Conv(Z, W) (same attributes).

    dX = Conv(dY, W); dW = the Conv weight gradient with input dY and output gradient X;
    dB = Σ dY over batch and space.
    """
    x, w, ws, static = _operands(ctx)
    if not static:
        return conv_dynamic.conv_transpose_grads(ctx, op, ws)
    dy, group = ctx.dy(), int(ctx.attr("group", 1))
    geo = _conv_transpose_geometry(ctx, ws, group)
    n = geo.rank
    dy_in = dy
    if any(p < 0 for p in geo.begin + geo.end):  # output_shape past the natural size
        dy_in, geo = _crop_outside(op, dy, geo)
    grads: list[Value | None] = [None, None, None]
    if ctx.needs_grad(0):
        grads[0] = op.Conv(dy_in, w, strides=list(geo.strides), dilations=list(geo.dilations),
                           group=group, pads=list(geo.begin) + list(geo.end))
    if ctx.needs_grad(1):
        grads[1] = weight_grad(op, dy_in, x, geo, ws[1] * group)
    if ctx.needs_grad(2):
        grads[2] = bias_grad(op, dy, 2 + n)
    return grads


@grad_rule("Col2Im")
def col2im(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Y = the blocks of the input [N, C·K, L] added into an image (torch's fold): its adjoint
    is im2col, dInput[n, c·K + o, l] = dY_padded[n, c, l·stride + o·dilation], one strided
    Slice of the padded dY per kernel offset o, stacked."""
    image, block = ctx.const_value(ctx.input(1)), ctx.const_value(ctx.input(2))
    if image is None or block is None:
        raise UnsupportedOpError(f"{ctx.where()}: image_shape and block_shape must be "
                                 "constants for the gradient")
    size, k = [int(v) for v in image.reshape(-1)], [int(v) for v in block.reshape(-1)]
    n = len(size)
    dil = [int(v) for v in ctx.attr("dilations", [1] * n)]
    pads = [int(v) for v in ctx.attr("pads", [0] * (2 * n))]
    strides = [int(v) for v in ctx.attr("strides", [1] * n)]
    g = ctx.dy()
    if any(pads):
        g = op.Pad(g, [0, 0, *pads[:n], 0, 0, *pads[n:]])
    blocks = [(size[i] + pads[i] + pads[n + i] - dil[i] * (k[i] - 1) - 1) // strides[i] + 1
              for i in range(n)]
    parts = []
    for off in itertools.product(*(range(kk) for kk in k)):
        starts = [o * d for o, d in zip(off, dil)]
        ends = [st + (b - 1) * s + 1 for st, b, s in zip(starts, blocks, strides)]
        parts.append(op.Unsqueeze(op.Slice(g, starts, ends, list(range(2, 2 + n)), strides),
                                  [2]))
    stacked = op.Concat(*parts, axis=2) if len(parts) > 1 else parts[0]  # [N, C, K, *blocks]
    return [op.Reshape(stacked, [0, -1, int(np.prod(blocks))]), None, None]
