"""Attention (opset 23+): scaled dot-product attention with masks, a KV cache, grouped heads.

The forward is ``Y = P·V`` with ``P = softmax(C + bias)``, ``C = softcap(S)`` and
``S = (Q·σ)(K·σ)ᵀ`` (σ = √scale in the input's precision). The bias gathers everything that
masks (the attention mask, causal and sliding-window masks, padding): instead of rebuilding
it, the rule asks the op itself for P through its ``qk_matmul_output`` output (mode 3) —
another Attention node with the same inputs — so every masking rule, the fully-masked-row
guard and ``softmax_precision`` are the runtime's own. Then:

    dV = Pᵀ·dY,  dP = dY·Vᵀ,  dZ = P ⊙ (dP − Σ dP ⊙ P)  (Z = C + bias),
    dS = dZ ⊙ (1 − tanh²(S/c)) with softcap c,  dQ = σ·dS·(Kσ),  dK = σ·dSᵀ·(Qσ),

a float attention mask gets dZ (summed to its shape), grouped K/V heads sum the gradients of
the query heads that share them, the cache inputs take their slice of the present key/value's
gradient, and a ``qk_matmul_output`` adds its gradient where the schema takes it: S (mode 0),
C (1), Z (2), P (3). (onnx.reference returns C in mode 0 when a softcap is set; onnxruntime
and the schema, S.) The function body would compute the scale in float32 and emit ~80 forward
nodes; this is a dozen matrix products.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..._ir import Builder, Value, np_dtype
from ...errors import UnsupportedOpError
from .._helpers import dtype_of, float_const, sum_to_shape
from .._registry import GradContext, grad_rule


def _static(ctx: GradContext, v: Value, i: int) -> int:
    d = (ctx.shape(v) or (None,) * (i + 1))[i]
    if not isinstance(d, int):
        raise UnsupportedOpError(f"{ctx.where()}: dimension {i} of {v.name!r} must be static "
                                 "for the gradient")
    return d


def _to_heads(op: Builder, t: Value, heads: int) -> Value:
    """[B, S, heads·D] → [B, heads, S, D]."""
    return op.Transpose(op.Reshape(t, [0, 0, heads, -1]), perm=[0, 2, 1, 3])


def _from_heads(op: Builder, t: Value) -> Value:
    """[B, heads, S, D] → [B, S, heads·D]."""
    return op.Reshape(op.Transpose(t, perm=[0, 2, 1, 3]), [0, 0, -1])


def _grouped_shape(op: Builder, t: Value, middle: list[int]) -> Value:
    """t's shape with its head axis (1) replaced by ``middle``."""
    return op.Concat(op.Shape(t, start=0, end=1), op.const(np.array(middle, dtype=np.int64)),
                     op.Shape(t, start=2), axis=0)


def _repeat_heads(op: Builder, t: Value, kv_heads: int, group: int) -> Value:
    """Each of the ``kv_heads`` heads repeated ``group`` times in place (h0, h0, h1, h1, …)."""
    if group == 1:
        return t
    wide = op.Expand(op.Unsqueeze(t, [2]), [1, 1, group, 1, 1])
    return op.Reshape(wide, _grouped_shape(op, t, [kv_heads * group]))


def _sum_groups(op: Builder, g: Value, kv_heads: int, group: int) -> Value:
    """The adjoint of :func:`_repeat_heads`: the gradients of each group's heads summed."""
    if group == 1:
        return g
    return op.ReduceSum(op.Reshape(g, _grouped_shape(op, g, [kv_heads, group])), [2],
                        keepdims=0)


def _probabilities(ctx: GradContext, op: Builder) -> Value:
    """P, the node's ``qk_matmul_output`` in mode 3, by a second Attention node with the
    same inputs."""
    attrs = {name: ctx.attr(name) for name in ctx.node.attributes}
    attrs["qk_matmul_output_mode"] = 3
    return op.multi("Attention", *ctx.inputs, outputs=4, **attrs)[3]


def _sigma(ctx: GradContext, q: Value, heads: int) -> np.ndarray:
    """σ = √scale rounded to the input's type, as the forward computes it: the scale
    attribute's root in float32 (the op's body and onnx.reference alike), the default
    1/√head_size's in float64 (onnx.reference; float32 models round both the same)."""
    dt = np_dtype(dtype_of(q))
    scale = ctx.attr("scale")
    if scale is not None:
        return np.asarray(np.sqrt(np.float32(scale)), dtype=dt)
    size = _static(ctx, q, ctx.rank(q) - 1)
    return np.asarray(np.sqrt(1.0 / np.sqrt(size // heads if ctx.rank(q) == 3 else size)),
                      dtype=dt)


@grad_rule("Attention")
def attention(ctx: GradContext, op: Builder) -> list[Value | None]:
    """See the module docstring."""
    q, k, v = ctx.x(0), ctx.x(1), ctx.x(2)
    three_d = ctx.rank(q) == 3
    if three_d:
        hq, hkv = int(ctx.attr("q_num_heads", 0)), int(ctx.attr("kv_num_heads", 0))
    else:
        hq, hkv = _static(ctx, q, 1), _static(ctx, k, 1)
    if hkv <= 0 or hq % hkv:
        raise UnsupportedOpError(f"{ctx.where()}: {hq} query heads do not group over {hkv} "
                                 "key/value heads")
    group = hq // hkv
    q4, k4, v4 = ((_to_heads(op, t, h) for t, h in ((q, hq), (k, hkv), (v, hkv))) if three_d
                  else (q, k, v))
    past_k, past_v = ctx.input(4), ctx.input(5)
    kt = op.Concat(past_k, k4, axis=2) if past_k is not None else k4
    vt = op.Concat(past_v, v4, axis=2) if past_v is not None else v4
    sigma = op.const(_sigma(ctx, q, hq))
    p = _probabilities(ctx, op)
    dy = _to_heads(op, ctx.dy(0), hq) if three_d else ctx.dy(0)
    mode = int(ctx.attr("qk_matmul_output_mode", 0))
    dqk = ctx.dy(3) if ctx.has_dy(3) else None
    swap = [0, 1, 3, 2]
    dp = op.MatMul(dy, op.Transpose(_repeat_heads(op, vt, hkv, group), perm=swap))
    if dqk is not None and mode == 3:
        dp = op.Add(dp, dqk)
    dz = op.Mul(p, op.Sub(dp, op.ReduceSum(op.Mul(dp, p), [-1], keepdims=1)))
    if dqk is not None and mode == 2:
        dz = op.Add(dz, dqk)
    dc = op.Add(dz, dqk) if dqk is not None and mode == 1 else dz
    krep = _repeat_heads(op, kt, hkv, group)
    softcap = float(ctx.attr("softcap", 0.0) or 0.0)
    ds = dc
    if softcap > 0.0:
        scores = op.MatMul(op.Mul(q4, sigma), op.Transpose(op.Mul(krep, sigma), perm=swap))
        t = op.Tanh(op.Div(scores, float_const(op, softcap, q)))
        ds = op.Mul(dc, op.Sub(1.0, op.Mul(t, t)))
    if dqk is not None and mode == 0:
        ds = op.Add(ds, dqk)
    grads: list[Value | None] = [None] * len(ctx.inputs)
    if ctx.needs_grad(0):
        dq = op.Mul(op.MatMul(ds, op.Mul(krep, sigma)), sigma)
        grads[0] = _from_heads(op, dq) if three_d else dq
    if ctx.needs_grad(1) or ctx.needs_grad(4):
        dkt = op.Mul(op.MatMul(op.Transpose(ds, perm=swap), op.Mul(q4, sigma)), sigma)
        _split_cache(ctx, op, grads, _sum_groups(op, dkt, hkv, group), past_k, 1, three_d)
    if ctx.needs_grad(2) or ctx.needs_grad(5):
        dvt = op.MatMul(op.Transpose(p, perm=swap), dy)
        _split_cache(ctx, op, grads, _sum_groups(op, dvt, hkv, group), past_v, 2, three_d)
    mask = ctx.input(3)
    if mask is not None and ctx.needs_grad(3) and mask.dtype != ir.DataType.BOOL:
        width = op.Shape(mask, start=-1)
        grads[3] = sum_to_shape(op, op.Slice(dz, op.const(np.array([0], dtype=np.int64)),
                                             width, [-1]), mask)
    return grads


def _split_cache(ctx: GradContext, op: Builder, grads: list[Value | None], g: Value,
                 past: Value | None, new_slot: int, three_d: bool) -> None:
    """The present key/value's gradient (output ``new_slot``: present_key 1, present_value 2)
    split between the cache input (input ``new_slot + 3``) and the new K/V (``new_slot``)."""
    past_slot = new_slot + 3
    if ctx.has_dy(new_slot):
        g = op.Add(g, ctx.dy(new_slot))
    if past is not None:
        n_past = op.Shape(past, start=2, end=3)
        if ctx.needs_grad(past_slot):
            grads[past_slot] = op.Slice(g, op.const(np.array([0], dtype=np.int64)), n_past,
                                        [2])
        g = op.Slice(g, n_past, op.const(np.array([2 ** 62], dtype=np.int64)), [2])
    if ctx.needs_grad(new_slot):
        grads[new_slot] = _from_heads(op, g) if three_d else g
