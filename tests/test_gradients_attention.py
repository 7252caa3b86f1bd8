"""Gradient table of the Attention rule (rules/attention.py): 4-D and 3-D inputs, grouped
key/value heads, causal, float and boolean masks, a KV cache with its present outputs,
softcap, an explicit scale, every qk_matmul_output mode, padding by nonpad_kv_seqlen and a
fully masked row — by the method of tests/test_gradients.py: float64 finite differences,
torch.autograd on the operator's definition written in torch, onnxruntime in float32 and a
standard-ONNX backward graph."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

from edgetrain.autodiff import RULES
from gradcheck import C, Case, X, table_tests

B, HQ, HKV, SQ, SKV, D = 2, 4, 2, 3, 5, 4
MASK_BOOL = np.array([[True, True, False, True, True],
                      [True, False, True, True, True],
                      [False, False, False, False, False]])  # the last row attends nothing
NONPAD = np.array([3, 5], dtype=np.int64)


def t_attention(q: Any, k: Any, v: Any, mask: Any = None, past: tuple[Any, Any] | None = None,
                *, causal: bool = False, scale: float | None = None, softcap: float = 0.0,
                heads: tuple[int, int] | None = None, mode: int | None = None,
                nonpad: np.ndarray | None = None) -> Any:
    """ONNX Attention in torch (onnx.reference's definition): outputs Y, present K and V and,
    with ``mode``, qk_matmul_output."""
    three_d = q.dim() == 3
    if three_d:
        hq, hkv = heads  # type: ignore[misc]
        q, k, v = (t.reshape(t.shape[0], t.shape[1], h, -1).transpose(1, 2)
                   for t, h in ((q, hq), (k, hkv), (v, hkv)))
    if past is not None:
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
    present_k, present_v = k, v
    # σ = √scale: a given (float32) scale's root in float32, the default's in float64.
    sigma = (float(np.sqrt(np.float32(scale))) if scale is not None
             else math.sqrt(1.0 / math.sqrt(q.shape[-1])))
    group = q.shape[1] // k.shape[1]
    kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = (q * sigma) @ (kr * sigma).transpose(-1, -2)
    c = softcap * torch.tanh(s / softcap) if softcap else s
    sq, skv = s.shape[-2:]
    bias = torch.zeros(sq, skv, dtype=q.dtype)
    if mask is not None:
        bias = bias + (mask if mask.dtype != torch.bool
                       else torch.where(mask, 0.0, -math.inf).to(q.dtype))
    if causal:
        offset = past[0].shape[2] if past is not None else 0
        allowed = torch.arange(skv)[None, :] <= torch.arange(sq)[:, None] + offset
        bias = bias + torch.where(allowed, 0.0, -math.inf).to(q.dtype)
    if nonpad is not None:
        keep = torch.arange(skv)[None, :] < torch.as_tensor(nonpad)[:, None]
        bias = bias + torch.where(keep, 0.0, -math.inf).to(q.dtype)[:, None, None, :]
    z = c + bias
    dead = torch.isneginf(bias.amax(-1, keepdim=True))
    p = torch.where(dead, 0.0, torch.softmax(torch.where(dead, 0.0, z), -1))
    y = p @ vr
    if three_d:
        y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
    outs = [y, present_k, present_v]
    if mode is not None:
        outs.append({0: s, 1: c, 2: z, 3: p}[mode])
    return tuple(outs) if len(outs) > 1 else y


def q4(sq: int = SQ) -> X:
    return X((B, HQ, sq, D))


def kv4(heads: int = HQ, skv: int = SKV) -> X:
    return X((B, heads, skv, D))


CASES: list[Case] = [
    Case("Attention", [q4(), kv4(), kv4()], torch=t_attention, opset=23, variant="4d"),
    Case("Attention", [q4(), kv4(HKV), kv4(HKV)], torch=t_attention, opset=23,
         variant="4d-grouped-heads"),
    Case("Attention", [X((B, SQ, HQ * D)), X((B, SKV, HKV * D)), X((B, SKV, HKV * 3))],
         torch=lambda q, k, v: t_attention(q, k, v, heads=(HQ, HKV)), opset=23,
         attrs={"q_num_heads": HQ, "kv_num_heads": HKV}, variant="3d-grouped-heads"),
    Case("Attention", [q4(), kv4(), kv4()], opset=23, attrs={"is_causal": 1, "scale": 0.3},
         torch=lambda q, k, v: t_attention(q, k, v, causal=True, scale=0.3),
         variant="causal-scale"),
    Case("Attention", [q4(), kv4(), kv4(), X((SQ, SKV))], opset=23,
         torch=lambda q, k, v, m: t_attention(q, k, v, m), variant="float-mask"),
    Case("Attention", [q4(), kv4(), kv4(), X((SQ, 3))], opset=23, variant="short-float-mask",
         torch=lambda q, k, v, m: t_attention(
             q, k, v, torch.cat([m, torch.full((SQ, 2), -math.inf, dtype=m.dtype)], 1))),
    Case("Attention", [q4(), kv4(), kv4(), C(MASK_BOOL)], opset=23,
         torch=lambda q, k, v: t_attention(q, k, v, torch.as_tensor(MASK_BOOL)),
         variant="bool-mask-fully-masked-row"),
    Case("Attention", [q4(), kv4(HKV, 2), kv4(HKV, 2), None, kv4(HKV, 3), kv4(HKV, 3)],
         opset=23, n_out=3, attrs={"is_causal": 1},
         torch=lambda q, k, v, pk, pv: t_attention(q, k, v, past=(pk, pv), causal=True),
         variant="cache-causal-present-outputs"),
    Case("Attention", [q4(), kv4(), kv4()], opset=23, attrs={"softcap": 2.0},
         torch=lambda q, k, v: t_attention(q, k, v, softcap=2.0), variant="softcap"),
    Case("Attention", [q4(), kv4(), kv4(), X((SQ, SKV)), None, None, C(NONPAD)], opset=24,
         torch=lambda q, k, v, m: t_attention(q, k, v, m, nonpad=NONPAD),
         variant="nonpad-kv-seqlen"),
]
# Every qk_matmul_output mode (the schema's: 0 the scores S, 1 softcap(S), 2 plus the bias,
# 3 the probabilities) feeding the loss with Y. Mode 0 without a softcap: onnx.reference,
# the finite differences' oracle, returns softcap(S) there, against the schema and onnxruntime.
def _with_qk(ins: list[str], **attrs: Any) -> tuple[list[onnx.NodeProto], list[str]]:
    return [helper.make_node("Attention", ins, ["out0", "", "", "out3"], **attrs)], \
        ["out0", "out3"]


for mode, cap in ((0, 0.0), (1, 3.0), (2, 3.0), (3, 3.0)):
    attrs = {"qk_matmul_output_mode": mode, **({"softcap": cap} if cap else {})}
    CASES.append(Case(
        "Attention", [q4(), kv4(), kv4(), X((SQ, SKV))], opset=23,
        nodes=lambda ins, attrs=attrs: _with_qk(ins, **attrs),
        torch=lambda q, k, v, m, mode=mode, cap=cap: _y_and_qk(
            t_attention(q, k, v, m, softcap=cap, mode=mode)),
        variant=f"qk-output-mode{mode}" + ("-softcap" if cap else "")))


def _y_and_qk(outs: tuple[Any, ...]) -> tuple[Any, Any]:
    return outs[0], outs[3]


ORT_CANNOT = {"Attention-short-float-mask": "a mask shorter than the keys (the schema pads "
                                            "it with -inf)"}

(test_matches_finite_differences, test_matches_torch, test_onnxruntime_float32,
 test_backward_is_standard_onnx) = table_tests(CASES, ORT_CANNOT)


def test_attention_rule_has_rows() -> None:
    assert RULES["Attention"].__module__.endswith(".attention")
    assert len({c.variant for c in CASES}) == len(CASES)
