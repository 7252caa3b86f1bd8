"""Neural-network layers without weights: Softmax, LogSoftmax, Dropout."""

from __future__ import annotations

import onnx_ir as ir

from ..._ir import Builder, Value
from .._helpers import same_type, zero
from .._registry import GradContext, grad_rule


@grad_rule("LogSoftmax")
def log_softmax(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = x - logΣeˣ along axis: dx = dy - eʸ·Σdy."""
    axis = int(ctx.attr("axis", -1))
    dy, y = ctx.dy(), ctx.outputs[0]
    return [op.Sub(dy, op.Mul(op.Exp(y), op.ReduceSum(dy, [axis], keepdims=1)))]


@grad_rule("Softmax")
def softmax(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = eˣ/Σeˣ along axis: dx = y·(dy - Σ(dy·y))."""
    axis = int(ctx.attr("axis", -1))
    dy, y = ctx.dy(), ctx.outputs[0]
    return [op.Mul(y, op.Sub(dy, op.ReduceSum(op.Mul(dy, y), [axis], keepdims=1)))]


@grad_rule("Dropout")
def dropout(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Training: y = x·m/(1 - r) with the random mask m: dx = dy·m/(1 - r).
    Inference (training_mode absent or false, or r = 0): y = x: dx = dy.

    The mask is the one the forward drew, so the forward node is made to output it when the
    model did not ask for it. A training_mode only known at run time selects between the two
    formulas in the graph. The ratio r and training_mode get no gradient.
    """
    dy = ctx.dy()
    ratio_in, mode_in = ctx.input(1), ctx.input(2)
    if mode_in is None:
        return [dy, None, None]
    mode = ctx.const_value(mode_in)
    if mode is not None and not bool(mode):
        return [dy, None, None]
    ratio_c = ctx.const_value(ratio_in) if ratio_in is not None else 0.5
    if ratio_c is not None and float(ratio_c) == 0.0:
        return [dy, None, None]
    mask = ctx.forward_output(1, "dropout_mask", ir.DataType.BOOL)
    if ratio_c is not None:
        scaled: Value = op.Mul(dy, 1.0 / (1.0 - float(ratio_c)))
    else:
        assert ratio_in is not None
        scaled = op.Div(dy, op.Sub(1.0, same_type(op, ratio_in, dy)))
    dx = op.Where(mask, scaled, zero(op, dy))
    if mode is None:  # decided at run time
        dx = op.Where(mode_in, dx, dy)
    return [dx, None, None]
