"""Convolution gradients when the spatial sizes are known only at run time.

A file may leave a length open (audio of any duration) or lose it to ONNX's shape inference
(inside an If branch, behind a data-dependent Slice). Only the kernel's shape and the node's
attributes are static then; the forms of ``conv.py`` get their sizes from the graph instead:

* input gradient: the same adjoint (``ConvTranspose``, or for groups the full correlation of
  the zero-dilated output gradient with the flipped kernel), made ``stride − 1`` rows too long
  at the end of every strided axis (``output_padding``, which covers the rows a strided
  window never reached whatever the size) and sliced to ``Shape(X)``;
* weight gradient: im2col (one strided Slice per kernel offset, ends from ``Shape(dY)``) and
  one Gemm for ungrouped kernels up to ``IM2COL_MAX_KERNEL`` taps, else the convolution of
  the batch-transposed input with dYᵀ as the kernel, sliced to the (static) kernel size;
* ``SAME_UPPER``/``SAME_LOWER`` with a stride above 1 (the pads depend on the size): the pads
  computed from ``Shape(X)``, the input padded once, and the rest done as a ``VALID`` conv.

The static forms stay in ``conv.py``: a model with static sizes never takes these.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..._ir import Builder, Value
from ...errors import UnsupportedOpError
from .._helpers import INT64_MAX, INT64_MIN
from .._registry import GradContext

#: Largest kernel (product of its spatial sizes) whose weight gradient is im2col + one Gemm.
IM2COL_MAX_KERNEL = 49


@dataclass(frozen=True)
class Window:
    """A convolution's window without sizes: kernel, strides, dilations, static pads."""

    k: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]
    group: int

    @property
    def rank(self) -> int:
        return len(self.k)

    def eff(self, i: int) -> int:
        """Effective (dilated) kernel extent along spatial axis ``i``."""
        return (self.k[i] - 1) * self.dilations[i] + 1

    @property
    def padded(self) -> bool:
        return any(self.begin) or any(self.end)


def known_spatial(ctx: GradContext, v: Value, rank: int) -> tuple[int, ...] | None:
    """The ``rank`` spatial sizes (axes 2..) of ``v`` when all are static, else None."""
    shape = ctx.shape(v)
    if shape is None or len(shape) != rank + 2:
        return None
    dims = [d for d in shape[2:] if isinstance(d, int) and d > 0]
    return tuple(dims) if len(dims) == rank else None


def conv_window(ctx: GradContext, k: tuple[int, ...], group: int) -> tuple[Window, str]:
    """The node's window, and its auto_pad mode when the pads depend on the run-time size
    (``SAME_*`` with a stride above 1: the window's pads are then 0), else ``""``."""
    n = len(k)
    strides = tuple(int(s) for s in (ctx.attr("strides") or [1] * n))
    dilations = tuple(int(d) for d in (ctx.attr("dilations") or [1] * n))
    mode = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    eff = [(k[i] - 1) * dilations[i] + 1 for i in range(n)]
    if mode in ("SAME_UPPER", "SAME_LOWER") and any(s > 1 for s in strides):
        return Window(k, strides, dilations, (0,) * n, (0,) * n, group), mode
    if mode in ("SAME_UPPER", "SAME_LOWER"):  # stride 1: eff − 1 in total whatever the size
        small, big = [(e - 1) // 2 for e in eff], [e - 1 - (e - 1) // 2 for e in eff]
        begin, end = (small, big) if mode == "SAME_UPPER" else (big, small)
    elif mode == "VALID":
        begin, end = [0] * n, [0] * n
    else:
        pads = [int(p) for p in (ctx.attr("pads") or [0] * (2 * n))]
        begin, end = pads[:n], pads[n:]
    return Window(k, strides, dilations, tuple(begin), tuple(end), group), ""


def spatial_sizes(op: Builder, v: Value, axes: list[int] | None = None) -> Value:
    """The run-time sizes (int64 [len]) of ``v``'s spatial ``axes`` (0-based; all by
    default)."""
    shape = op.Shape(v)
    if axes is None:
        return op.Slice(shape, [2], [INT64_MAX], [0])
    return op.Gather(shape, [2 + a for a in axes], axis=0)


def fit_to(op: Builder, g: Value, like: Value, axes: list[int]) -> Value:
    """``g`` cut to ``like``'s run-time size along spatial ``axes`` (g is at least as long)."""
    if not axes:
        return g
    return op.Slice(g, [0] * len(axes), spatial_sizes(op, like, axes), [2 + a for a in axes])


def crop_or_pad(op: Builder, g: Value, begin: list[int], end: list[int]) -> tuple[
        Value, list[int], list[int]]:
    """Apply the negative part of spatial pads as a crop; return the non-negative rest."""
    axes = [2 + i for i, (b, e) in enumerate(zip(begin, end)) if b < 0 or e < 0]
    if axes:
        starts = [max(-begin[a - 2], 0) for a in axes]
        ends = [end[a - 2] if end[a - 2] < 0 else INT64_MAX for a in axes]
        g = op.Slice(g, starts, ends, axes)
    return g, [max(b, 0) for b in begin], [max(e, 0) for e in end]


def flipped_kernel(op: Builder, w: Value, k: tuple[int, ...], group: int, out_channels: int,
                   in_channels: int) -> Value:
    """W [M, C/g, *k] as the kernel of its full correlation: [C, M/g, *k], flipped in space."""
    n = len(k)
    if group == 1:
        wt = op.Transpose(w, perm=[1, 0, *range(2, 2 + n)])
    else:
        mg, cg = out_channels // group, in_channels // group
        wt = op.Reshape(w, [group, mg, cg, *k])
        wt = op.Transpose(wt, perm=[0, 2, 1, *range(3, 3 + n)])
        wt = op.Reshape(wt, [in_channels, mg, *k])
    return op.Slice(wt, [-1] * n, [INT64_MIN] * n, list(range(2, 2 + n)), [-1] * n)


def dilate(op: Builder, g: Value, strides: tuple[int, ...],
           sizes: tuple[int, ...] | None = None, channels: int = 0) -> Value:
    """Insert ``stride − 1`` zeros between neighbours along every spatial axis of ``g``
    ([N, channels, *sizes]): a new axis padded to ``stride``, folded back, trimmed to
    (n − 1)·s + 1. With static ``sizes`` the fold is a Reshape to constants, otherwise to a
    shape computed in the graph."""
    n = len(strides)
    cur = list(sizes) if sizes is not None else None
    for i, s in enumerate(strides):
        if s == 1:
            continue
        axis = 2 + i
        pads = [0] * (2 * (3 + n))
        pads[3 + n + axis + 1] = s - 1
        g = op.Pad(op.Unsqueeze(g, [axis + 1]), pads)
        if cur is not None:
            cur[i] = cur[i] * s
            folded = op.Reshape(g, [0, channels, *cur])
            cur[i] = cur[i] - (s - 1)
        else:
            shape = op.Shape(g)
            folded = op.Reshape(g, op.Concat(op.Slice(shape, [0], [axis], [0]), [-1],
                                             op.Slice(shape, [axis + 2], [INT64_MAX], [0]),
                                             axis=0))
        g = op.Slice(folded, [0], [1 - s], [axis])
    return g


def input_grad(op: Builder, dy: Value, w: Value, x: Value, win: Window, out_channels: int,
               in_channels: int) -> Value:
    """dX of Y = Conv(X, W), shaped like ``x`` at run time.

    Ungrouped: ConvTranspose(dY, W), the adjoint; grouped: the full correlation of the
    zero-dilated dY with the flipped, group-transposed W (see ``conv.input_grad``). Either is
    made up to ``stride − 1`` rows longer than X (the rows past the last window are zeros) and
    cut to X's size.
    """
    n = win.rank
    slack = [s - 1 for s in win.strides]
    if win.group == 1:
        r = op.ConvTranspose(dy, w, strides=list(win.strides), dilations=list(win.dilations),
                             pads=list(win.begin) + list(win.end), output_padding=slack,
                             kernel_shape=list(win.k))
    else:
        wt = flipped_kernel(op, w, win.k, win.group, out_channels, in_channels)
        d = dilate(op, dy, win.strides)
        begin = [win.eff(i) - 1 - win.begin[i] for i in range(n)]
        end = [win.eff(i) - 1 - win.end[i] + slack[i] for i in range(n)]
        d, begin, end = crop_or_pad(op, d, begin, end)
        r = op.Conv(d, wt, dilations=list(win.dilations), group=win.group, pads=begin + end,
                    strides=[1] * n)
    return fit_to(op, r, x, [i for i in range(n) if slack[i]])


def weight_grad(op: Builder, x: Value, dy: Value, win: Window, in_channels: int) -> Value:
    """dW of Y = Conv(X, W): Conv(Xᵀ, dYᵀ) with strides and dilations swapped, sliced to k
    (see ``conv.weight_grad``); groups reshape X to [C/g, g·N, *x] through a flat space."""
    g, n = win.group, win.rank
    sp = list(range(2, 2 + n))
    if g == 1:
        xt = op.Transpose(x, perm=[1, 0, *sp])
    else:
        cg = in_channels // g
        xt = op.Transpose(op.Reshape(x, [0, g, cg, -1]), perm=[2, 1, 0, 3])
        xt = op.Reshape(xt, op.Concat(op.const(np.array([cg, -1], dtype=np.int64)),
                                      spatial_sizes(op, x), axis=0))
    dyt = op.Transpose(dy, perm=[1, 0, *sp])
    r = op.Conv(xt, dyt, strides=list(win.dilations), dilations=list(win.strides), group=g,
                pads=list(win.begin) + list(win.end))
    r = op.Slice(r, [0] * n, list(win.k), sp)
    return op.Transpose(r, perm=[1, 0, *sp])


def weight_grad_im2col(op: Builder, x: Value, dy: Value, win: Window, in_channels: int,
                       out_channels: int) -> Value:
    """dW of an ungrouped Conv as im2col + one Gemm (see ``conv.weight_grad_im2col``), the
    slices' ends from dY's run-time size: (y − 1)·stride + 1 past each offset."""
    n = win.rank
    sp = list(range(2, 2 + n))
    xt = op.Transpose(x, perm=[1, 0, *sp])  # [C, N, *x]
    if win.padded:
        xt = op.Pad(xt, [0, 0, *win.begin, 0, 0, *win.end])
    offsets = list(itertools.product(*(range(k) for k in win.k)))
    if len(offsets) == 1 and all(s == 1 for s in win.strides) and not win.padded:
        cols = op.Reshape(xt, [in_channels, -1])  # a pointwise conv: Y's space is X's
    else:
        span = op.Add(op.Mul(spatial_sizes(op, dy), list(win.strides)),
                      [1 - s for s in win.strides])
        parts = []
        for off in offsets:
            starts = [o * d for o, d in zip(off, win.dilations)]
            ends = op.Add(span, starts) if any(starts) else span
            parts.append(op.Unsqueeze(op.Slice(xt, starts, ends, sp, list(win.strides)), [1]))
        stacked = op.Concat(*parts, axis=1) if len(parts) > 1 else parts[0]  # [C, K, N, *y]
        cols = op.Reshape(stacked, [in_channels * len(offsets), -1])
    dyt = op.Reshape(op.Transpose(dy, perm=[1, 0, *sp]), [out_channels, -1])
    return op.Reshape(op.Gemm(dyt, cols, transB=1), [out_channels, in_channels, *win.k])


def same_pads(op: Builder, x: Value, win: Window, mode: str) -> tuple[Value, Value]:
    """Run-time begin and end pads (int64 [rank]) of ``SAME_UPPER``/``SAME_LOWER``: in total
    max((⌈x / stride⌉ − 1)·stride + k_eff − x, 0), the odd one at the end (UPPER) or start."""
    xs = spatial_sizes(op, x)
    s = list(win.strides)
    out = op.Div(op.Add(xs, [v - 1 for v in s]), s)
    total = op.Max(op.Sub(op.Add(op.Mul(op.Sub(out, [1] * len(s)), s),
                                 [win.eff(i) for i in range(win.rank)]), xs), [0] * len(s))
    small = op.Div(total, [2] * len(s))
    big = op.Sub(total, small)
    return (small, big) if mode == "SAME_UPPER" else (big, small)


def conv_grads(ctx: GradContext, op: Builder, ws: tuple[int, ...]) -> list[Value | None]:
    """The Conv rule's gradients (dX, dW, dB) with run-time spatial sizes."""
    x, w, dy = ctx.x(0), ctx.x(1), ctx.dy()
    win, same = conv_window(ctx, ws[2:], int(ctx.attr("group", 1)))
    n, in_channels = win.rank, ws[1] * win.group
    begin: Value | None = None
    if same:  # pad once and differentiate a VALID conv of the padded input
        begin, end = same_pads(op, x, win, same)
        zeros = op.const(np.zeros(2, dtype=np.int64))
        x_in = op.Pad(x, op.Concat(zeros, begin, zeros, end, axis=0))
    else:
        x_in = x
    grads: list[Value | None] = [None, None, None]
    if ctx.needs_grad(0):
        dx = input_grad(op, dy, w, x_in, win, ws[0], in_channels)
        if begin is not None:
            dx = op.Slice(dx, begin, op.Add(begin, spatial_sizes(op, x)), list(range(2, 2 + n)))
        grads[0] = dx
    if ctx.needs_grad(1):
        if win.group == 1 and int(np.prod(win.k)) <= IM2COL_MAX_KERNEL:
            grads[1] = weight_grad_im2col(op, x_in, dy, win, in_channels, ws[0])
        else:
            grads[1] = weight_grad(op, x_in, dy, win, in_channels)
    if ctx.needs_grad(2):
        grads[2] = op.ReduceSum(dy, [0, *range(2, 2 + n)], keepdims=0)
    return grads


def conv_transpose_grads(ctx: GradContext, op: Builder, ws: tuple[int, ...]
                         ) -> list[Value | None]:
    """The ConvTranspose rule's gradients with run-time spatial sizes: the adjoint Conv
    (from Y's space to X's) has the node's pads; dX = Conv(dY, W), dW its weight gradient."""
    if ctx.attr("output_shape") is not None or (ctx.attr("auto_pad", "NOTSET") or "NOTSET") \
            not in ("NOTSET", "VALID"):
        raise UnsupportedOpError(
            f"{ctx.where()}: the gradient of a ConvTranspose with output_shape or SAME "
            "padding needs static spatial sizes; export the model with a fixed size")
    x, w, dy = ctx.x(0), ctx.x(1), ctx.dy()
    win, _ = conv_window(ctx, ws[2:], int(ctx.attr("group", 1)))
    grads: list[Value | None] = [None, None, None]
    if ctx.needs_grad(0):
        grads[0] = op.Conv(dy, w, strides=list(win.strides), dilations=list(win.dilations),
                           group=win.group, pads=list(win.begin) + list(win.end))
    if ctx.needs_grad(1):
        grads[1] = weight_grad(op, dy, x, win, ws[1] * win.group)
    if ctx.needs_grad(2):
        grads[2] = op.ReduceSum(dy, [0, *range(2, 2 + win.rank)], keepdims=0)
    return grads
