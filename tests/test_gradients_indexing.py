"""Gradient table of the rules of rules/indexing.py — OneHot, TopK, Compress, MaxUnpool,
ReverseSequence, Unique, TensorScatter, DequantizeLinear and the scatters' reductions — by
the method of tests/test_gradients.py: float64 finite differences, torch.autograd where torch
has the op, onnxruntime in float32, a standard-ONNX backward graph. Max, min and sort inputs
are spread apart (no ties within the finite-difference step)."""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from edgetrain.autodiff import RULES
from gradcheck import C, Case, X, on_grid, table_tests


def i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def spread(x: np.ndarray) -> np.ndarray:
    """Distinct values at least 0.05 apart, in the order of x."""
    order = np.argsort(x, axis=None)
    out = np.empty(x.size)
    out[order] = np.arange(x.size) * 0.05 - x.size * 0.025
    return out.reshape(x.shape) + 0.01 * np.tanh(x)


ONE_HOT = i64(1, 0, 3, -1)
TOPK_X = (3, 5)
COND = np.array([True, False, True, True])
UNPOOL_I = np.array([[[[5, 7], [13, 15]]]], dtype=np.int64)
LENS = i64(3, 1, 2)
WRITE = i64(1, 3)
SE_IDX = np.array([[1, 0, 2], [1, 1, 0]], dtype=np.int64)  # repeated slots in column 0, 1
SND_IDX = np.array([[0, 1], [2, 0], [0, 1]], dtype=np.int64)  # slot (0, 1) twice


def t_one_hot(v):  # type: ignore[no-untyped-def]
    mask = F.one_hot(torch.as_tensor(ONE_HOT % 4), 4).bool()
    return torch.where(mask, v[1], v[0])


def t_reverse(x):  # type: ignore[no-untyped-def]
    """time axis 0, batch axis 1: each batch entry's first lens[b] steps reversed."""
    rows = []
    for b, n in enumerate(LENS.tolist()):
        idx = list(range(n - 1, -1, -1)) + list(range(n, x.shape[0]))
        rows.append(x[idx, b])
    return torch.stack(rows, 1)


def t_tensor_scatter(past, update):  # type: ignore[no-untyped-def]
    out = past.clone()
    for b, w in enumerate(WRITE.tolist()):
        out[b, w:w + update.shape[1]] = update[b]
    return out


def t_scatter(reduce: str):  # type: ignore[no-untyped-def]
    return lambda x, u: torch.scatter_reduce(x, 0, torch.as_tensor(SE_IDX), u, reduce)


QX = np.array([[3, 200, 17], [0, 255, 128]], dtype=np.uint8)
QZ = np.array([1, 128, 0], dtype=np.uint8)


def _dequantize(ins: list[str], **attrs: int) -> tuple[list[onnx.NodeProto], list[str]]:
    return [helper.make_node("Cast", [ins[1]], ["s32"], to=TensorProto.FLOAT),
            helper.make_node("DequantizeLinear", [ins[0], "s32", *ins[2:]], ["y32"], **attrs),
            helper.make_node("Cast", ["y32"], ["out0"], to=TensorProto.DOUBLE)], ["out0"]


CASES: list[Case] = [
    Case("OneHot", [C(ONE_HOT), C(np.array(4, dtype=np.int64)), X((2,))], torch=t_one_hot),
    Case("OneHot", [C(ONE_HOT), C(np.array(4, dtype=np.int64)), X((2,))], variant="axis0",
         attrs={"axis": 0}, torch=lambda v: t_one_hot(v).T),
    Case("Trilu", [X((2, 3, 4))], torch=torch.triu),
    Case("Trilu", [X((3, 4)), C(np.array(-1, dtype=np.int64))], variant="lower-k-1",
         attrs={"upper": 0}, torch=lambda x: torch.tril(x, -1)),
    Case("TopK", [X(TOPK_X, spread), C(i64(2))], n_out=2, loss_outputs=[0],
         torch=lambda x: torch.topk(x, 2, -1).values),
    Case("TopK", [X(TOPK_X, spread), C(i64(2))], variant="axis0-smallest", n_out=2,
         loss_outputs=[0], attrs={"axis": 0, "largest": 0},
         torch=lambda x: torch.topk(x, 2, 0, largest=False).values),
    Case("Compress", [X((4, 3)), C(COND)], variant="axis0", attrs={"axis": 0},
         torch=lambda x: x[torch.as_tensor(COND)]),
    Case("Compress", [X((2, 3)), C(COND)], variant="flat",
         torch=lambda x: x.reshape(-1)[:4][torch.as_tensor(COND)]),
    Case("MaxUnpool", [X((1, 1, 2, 2)), C(UNPOOL_I)], attrs={"kernel_shape": [2, 2],
                                                              "strides": [2, 2]},
         torch=lambda x: F.max_unpool2d(x, torch.as_tensor(UNPOOL_I), 2)),
    Case("MaxUnpool", [X((1, 1, 2, 2)), C(UNPOOL_I), C(i64(1, 1, 5, 5))],
         variant="output-shape", attrs={"kernel_shape": [2, 2], "strides": [2, 2]},
         torch=lambda x: F.pad(F.max_unpool2d(x, torch.as_tensor(UNPOOL_I), 2), (0, 1, 0, 1))),
    Case("ReverseSequence", [X((4, 3, 2)), C(LENS)], torch=t_reverse),
    Case("Unique", [X((6,), spread)], n_out=4, loss_outputs=[0],
         torch=lambda x: torch.sort(x).values),
    Case("Unique", [X((3, 2), spread)], variant="axis-unsorted", n_out=4, loss_outputs=[0],
         attrs={"axis": 0, "sorted": 0}, torch=lambda x: x),
    Case("TensorScatter", [X((2, 5, 3)), X((2, 2, 3)), C(WRITE)], attrs={"axis": 1},
         torch=t_tensor_scatter, opset=24),
    Case("TensorScatter", [X((2, 5, 3)), X((2, 3, 3)), C(WRITE)], variant="circular",
         attrs={"axis": 1, "mode": "circular"}, opset=24),
    # The scale is float32 at most: float64 rows cast it (on-grid values: exact products);
    # the gradient then rounds through float32, so torch's float64 one is no 1e-9 reference.
    Case("DequantizeLinear", [C(QX), X((3,), lambda v: on_grid(np.abs(v) + 0.5)), C(QZ)],
         variant="per-axis", nodes=lambda ins: _dequantize(ins, axis=1), fd_eps=2.0 ** -10,
         opset=21),
    Case("DequantizeLinear", [C(np.arange(12, dtype=np.int8).reshape(3, 4)),
                              X((3, 2), lambda v: on_grid(np.abs(v) + 0.5))],
         variant="blocked", nodes=lambda ins: _dequantize(ins, axis=1, block_size=2),
         fd_eps=2.0 ** -10, opset=21),
    Case("ScatterElements", [X((3, 3), spread), C(SE_IDX), X((2, 3), spread)],
         variant="max", attrs={"reduction": "max"}, torch=t_scatter("amax")),
    Case("ScatterElements", [X((3, 3), spread), C(SE_IDX), X((2, 3), spread)],
         variant="min", attrs={"reduction": "min"}, torch=t_scatter("amin")),
    Case("ScatterElements", [X((3, 3)), C(SE_IDX), X((2, 3))], variant="mul",
         attrs={"reduction": "mul"}, torch=t_scatter("prod")),
    Case("ScatterND", [X((3, 2, 2), spread), C(SND_IDX), X((3, 2), spread)], variant="max",
         attrs={"reduction": "max"}),
    Case("ScatterND", [X((3, 2, 2)), C(SND_IDX), X((3, 2))], variant="mul",
         attrs={"reduction": "mul"}),
]

(test_matches_finite_differences, test_matches_torch, test_onnxruntime_float32,
 test_backward_is_standard_onnx) = table_tests(CASES)


def test_every_indexing_rule_has_a_row() -> None:
    mine = {op for op, fn in RULES.items() if fn.__module__.endswith(".indexing")}
    assert mine and not mine - {c.op for c in CASES}, sorted(mine - {c.op for c in CASES})
