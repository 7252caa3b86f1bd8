"""Ops that are linear in one input along a short axis: DFT (in the signal) and AffineGrid
(in theta).

Each output element is a fixed linear combination of a few input elements — the DFT matrix
along the transformed axis, the base grid of AffineGrid — with conventions (inverse,
one-sided, real or complex, align_corners) that are easy to get subtly wrong. So the rule
reads the matrix J off the op itself: ``onnx.reference`` runs the node, with its own
attributes, on a batch of unit inputs (row i of J is the output of the i-th unit), once at
compile time. Then y = x·J along that axis and the gradient is dx = dy·Jᵀ, one MatMul.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..._ir import Builder, Value, np_dtype
from ...errors import UnsupportedOpError
from .._helpers import dtype_of
from .._registry import GradContext, grad_rule


def _jacobian(ctx: GradContext, unit: tuple[int, ...], others: Sequence[np.ndarray | None],
              attrs: dict[str, Any]) -> np.ndarray:
    """[n_in, n_out]: the node run by onnx.reference on the n_in = Π unit basis inputs
    (input 0, shaped [n_in, *unit]) with ``others`` as its other inputs."""
    from onnx.reference import ReferenceEvaluator

    n = int(np.prod(unit))
    basis = np.eye(n, dtype=np.float64).reshape(n, *unit)
    names = ["x"] + [f"in{i}" if a is not None else "" for i, a in enumerate(others)]
    inits = [numpy_helper.from_array(a, f"in{i}") for i, a in enumerate(others)
             if a is not None]
    node = helper.make_node(ctx.node.op_type, names, ["y"], **attrs)
    g = helper.make_graph([node], "jacobian",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, None)],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, None)],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", ctx.opset)])
    out = np.asarray(ReferenceEvaluator(m).run(None, {"x": basis})[0])  # type: ignore[index]
    return out.reshape(n, -1)


def _apply(op: Builder, g: Value, jt: np.ndarray, like: Value) -> Value:
    """g [..., n_out] times Jᵀ [n_out, n_in]."""
    return op.MatMul(g, op.const(jt.astype(np_dtype(dtype_of(like))), hint="jacobian"))


def _attrs(ctx: GradContext, drop: Sequence[str] = ()) -> dict[str, Any]:
    return {k: ctx.attr(k) for k in ctx.node.attributes if k not in drop}


@grad_rule("DFT")
def dft(ctx: GradContext, op: Builder) -> list[Value | None]:
    """The DFT along its axis is one matrix J over (position, real/imaginary) pairs (with
    dft_length's padding or cropping, onesided, inverse): dx = dy·Jᵀ along that axis."""
    x = ctx.x(0)
    shape = ctx.shape(x)
    rank = ctx.rank(x)
    axis_in = ctx.input(2)
    known = ctx.const_value(axis_in) if axis_in is not None else None
    a = int(known) if known is not None else int(ctx.attr("axis", 1))
    a = a + rank if a < 0 else a
    length = ctx.const_value(ctx.input(1)) if ctx.input(1) is not None else None
    if shape is None or not isinstance(shape[a], int) or not isinstance(shape[-1], int) or \
            (ctx.input(1) is not None and length is None) or (axis_in is not None and
                                                               known is None):
        raise UnsupportedOpError(f"{ctx.where()}: the gradient needs a static length along "
                                 "the axis and constant dft_length and axis")
    n, c = int(shape[a]), int(shape[-1])  # type: ignore[arg-type]
    if axis_in is not None:
        others = [length, np.array(1, dtype=np.int64)]
        attrs = _attrs(ctx)
    else:
        others = [length]
        attrs = {**_attrs(ctx), "axis": 1}
    jt = _jacobian(ctx, (n, c), others, attrs).T  # [n_out·c_out, n·c]
    perm = [d for d in range(rank - 1) if d != a] + [a, rank - 1]
    g = op.Transpose(ctx.dy(), perm=perm)
    g = op.Reshape(g, [0] * (rank - 2) + [-1])
    g = op.Reshape(_apply(op, g, jt, x), [0] * (rank - 2) + [n, c])
    return [op.Transpose(g, perm=[int(i) for i in np.argsort(perm)]), None, None]


@grad_rule("AffineGrid")
def affine_grid(ctx: GradContext, op: Builder) -> list[Value | None]:
    """grid[n] = base·θ[n]ᵀ with a base grid fixed by the size and align_corners:
    dθ = dgrid·Jᵀ per sample, J read off the op for unit θs."""
    theta = ctx.x(0)
    size = ctx.const_value(ctx.x(1))
    unit = ctx.shape(theta)
    if size is None or unit is None or not all(isinstance(d, int) for d in unit[1:]):
        raise UnsupportedOpError(f"{ctx.where()}: the gradient needs a constant size and a "
                                 "static theta shape")
    dims = tuple(int(d) for d in unit[1:])  # type: ignore[arg-type]
    n = int(np.prod(dims))
    sizes = np.array([n, *[int(s) for s in size.reshape(-1)[1:]]], dtype=np.int64)
    jt = _jacobian(ctx, dims, [sizes], _attrs(ctx)).T
    flat = op.Reshape(ctx.dy(), [0, -1])
    return [op.Reshape(_apply(op, flat, jt, theta), op.Shape(theta)), None]
