"""Gradient table of DFT and AffineGrid (rules/linear.py), whose matrices the rules read off
the op itself, by the method of tests/test_gradients.py: float64 finite differences,
torch.autograd (torch.fft, F.affine_grid), onnxruntime in float32 and a standard-ONNX
backward graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from edgetrain.autodiff import RULES
from gradcheck import C, Case, X, autodiff_gradients, build, on_grid, table_tests

AXIS1 = np.array(1, dtype=np.int64)


def real(c):  # type: ignore[no-untyped-def]
    return torch.view_as_real(c)


def cplx(x):  # type: ignore[no-untyped-def]
    return torch.complex(x[..., 0], x[..., 1])


SIZE_2D = np.array([2, 3, 4, 5], dtype=np.int64)
SIZE_3D = np.array([1, 2, 3, 2, 4], dtype=np.int64)
GRID32: dict[str, float] = {"fd_eps": 2.0 ** -10, "rtol": 1e-3, "atol": 1e-4}


def _affine_grid32(ins: list[str], **attrs: int) -> tuple[list[onnx.NodeProto], list[str]]:
    return [helper.make_node("Cast", [ins[0]], ["t32"], to=TensorProto.FLOAT),
            helper.make_node("AffineGrid", ["t32", ins[1]], ["g32"], **attrs),
            helper.make_node("Cast", ["g32"], ["out0"], to=TensorProto.DOUBLE)], ["out0"]


CASES: list[Case] = [
    Case("DFT", [X((2, 6, 1)), None, C(AXIS1)], opset=20,
         torch=lambda x: real(torch.fft.fft(x[..., 0], dim=1))),
    Case("DFT", [X((2, 3, 5, 1)), None, C(np.array(2, dtype=np.int64))], variant="axis2",
         opset=20, torch=lambda x: real(torch.fft.fft(x[..., 0], dim=2))),
    Case("DFT", [X((2, 6, 2)), None, C(AXIS1)], variant="complex-inverse", opset=20,
         attrs={"inverse": 1}, torch=lambda x: real(torch.fft.ifft(cplx(x), dim=1))),
    Case("DFT", [X((2, 6, 1)), None, C(AXIS1)], variant="onesided", opset=20,
         attrs={"onesided": 1}, torch=lambda x: real(torch.fft.rfft(x[..., 0], dim=1))),
    Case("DFT", [X((2, 4, 2)), None, C(AXIS1)], variant="onesided-inverse", opset=20,
         attrs={"onesided": 1, "inverse": 1},
         torch=lambda x: torch.fft.irfft(cplx(x), n=6, dim=1)[..., None]),
    Case("DFT", [X((2, 6, 1)), C(np.array(8, dtype=np.int64)), C(AXIS1)],
         variant="dft-length-pads", opset=20,
         torch=lambda x: real(torch.fft.fft(x[..., 0], n=8, dim=1))),
    Case("DFT", [X((2, 6, 1))], variant="opset19-attribute", opset=19, attrs={"axis": 1},
         torch=lambda x: real(torch.fft.fft(x[..., 0], dim=1))),
    # ONNX's own shape inference rejects AffineGrid in float64 (its body adds float32
    # constants), so the float64 rows run it between casts, with float32-sized differences.
    Case("AffineGrid", [X((2, 2, 3), on_grid), C(SIZE_2D)], variant="float32", opset=20,
         nodes=lambda ins: _affine_grid32(ins), **GRID32),
    Case("AffineGrid", [X((2, 2, 3), on_grid), C(SIZE_2D)], variant="float32-align-corners",
         opset=20, nodes=lambda ins: _affine_grid32(ins, align_corners=1), **GRID32),
    Case("AffineGrid", [X((1, 3, 4), on_grid), C(SIZE_3D)], variant="float32-3d", opset=20,
         nodes=lambda ins: _affine_grid32(ins), **GRID32),
]

(test_matches_finite_differences, test_matches_torch, test_onnxruntime_float32,
 test_backward_is_standard_onnx) = table_tests(CASES)


def test_every_linear_rule_has_a_row() -> None:
    mine = {op for op, fn in RULES.items() if fn.__module__.endswith(".linear")}
    assert mine and not mine - {c.op for c in CASES}, sorted(mine - {c.op for c in CASES})


@pytest.mark.parametrize(("variant", "size", "corners"), [
    ("float32", SIZE_2D, False), ("float32-align-corners", SIZE_2D, True),
    ("float32-3d", SIZE_3D, False)])
def test_affine_grid_matches_torch_in_float32(variant: str, size: np.ndarray,
                                              corners: bool) -> None:
    """AffineGrid's rule (run in float32) against torch's float32 gradient of affine_grid."""
    case = next(c for c in CASES if c.op == "AffineGrid" and c.variant == variant)
    b = build(case)
    _, got = autodiff_gradients(b)
    t = torch.tensor(b.feeds["in0"], dtype=torch.float32, requires_grad=True)
    grid = F.affine_grid(t, [int(d) for d in size], align_corners=corners)
    (grid * torch.as_tensor(b.weights[0], dtype=torch.float32)).sum().backward()
    np.testing.assert_allclose(got["in0"], t.grad.numpy(), rtol=1e-5, atol=1e-5)
