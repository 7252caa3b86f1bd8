"""Gradient table of elementwise and reduction rules added beside the first table's: Mean,
Mod, Clip with crossed bounds, ReduceProd, CumProd, Det, OptionalGetElement — by the method
of tests/test_gradients.py: float64 finite differences, torch.autograd, onnxruntime in
float32, a standard-ONNX backward graph."""

from __future__ import annotations

import numpy as np
import torch

from gradcheck import C, Case, X, nonzero, positive, table_tests


def i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def with_zeros(*flat: int):  # type: ignore[no-untyped-def]
    """Samples with the given flat elements set to 0 (products with zero factors)."""
    def put(x: np.ndarray) -> np.ndarray:
        x = x.copy()
        x.reshape(-1)[list(flat)] = 0.0
        return x
    return put


def t_cumprod(axis: int, exclusive: bool = False, reverse: bool = False):  # type: ignore[no-untyped-def]
    def f(x):  # type: ignore[no-untyped-def]
        if reverse:
            x = x.flip(axis)
        if exclusive:
            ones = torch.ones_like(x.narrow(axis, 0, 1))
            x = torch.cat([ones, x.narrow(axis, 0, x.shape[axis] - 1)], axis)
        y = torch.cumprod(x, axis)
        return y.flip(axis) if reverse else y
    return f


CASES: list[Case] = [
    Case("Mean", [X((2, 3)), X((3,)), X(())], torch=lambda a, b, c: (a + b + c) / 3,
         variant="broadcast"),
    Case("Mean", [X((2, 3))], torch=lambda a: a, variant="single"),
    Case("Mod", [X((3, 4), lambda v: 3.0 * v), X((3, 4), positive)], attrs={"fmod": 1},
         torch=torch.fmod),
    Case("Mod", [X((3, 4), lambda v: 3.0 * v), X((4,), nonzero)], attrs={"fmod": 1},
         torch=torch.fmod, variant="broadcast-negative-divisor"),
    Case("Clip", [X((3, 4)), X((), lambda v: 0.5 + 0.05 * v), X((), lambda v: -0.5 + 0.05 * v)],
         torch=lambda x, lo, hi: torch.clamp(x, lo, hi), variant="lo-above-hi"),
    Case("ReduceProd", [X((2, 3, 4)), C(i64(1))],
         torch=lambda x: torch.prod(x, 1, keepdim=True), variant="axis1"),
    Case("ReduceProd", [X((2, 3))], torch=lambda x: torch.prod(x).reshape(1, 1),
         variant="all"),
    Case("ReduceProd", [X((3, 4), with_zeros(1, 6, 7)), C(i64(1))], attrs={"keepdims": 0},
         torch=lambda x: torch.prod(x, 1), variant="zeros"),
    Case("CumProd", [X((3, 4)), C(np.array(1, dtype=np.int64))], opset=26,
         torch=t_cumprod(1)),
    Case("CumProd", [X((3, 4)), C(np.array(0, dtype=np.int64))], opset=26,
         attrs={"exclusive": 1, "reverse": 1}, torch=t_cumprod(0, True, True),
         variant="exclusive-reverse"),
    Case("CumProd", [X((2, 5), with_zeros(1, 6, 8)), C(np.array(-1, dtype=np.int64))],
         opset=26, torch=t_cumprod(1), variant="zeros"),
    Case("CumProd", [X((2, 5), with_zeros(1, 3)), C(np.array(1, dtype=np.int64))],
         opset=26, attrs={"exclusive": 1}, torch=t_cumprod(1, True), variant="zeros-exclusive"),
    Case("Det", [X((2, 3, 3))], torch=torch.linalg.det, opset=22),
    Case("Det", [X((1, 1))], torch=torch.linalg.det, opset=22, variant="1x1"),
    # A singular matrix: the cofactor matrix is the gradient (finite differences agree);
    # torch.linalg.det's backward returns zeros there, so it is no reference for this row.
    Case("Det", [X((3, 3), lambda v: np.concatenate([v[:2], v[:1] + v[1:2]]))], opset=22,
         variant="singular"),
    Case("OptionalGetElement", [X((2, 3))], torch=lambda x: x),
]

(test_matches_finite_differences, test_matches_torch, test_onnxruntime_float32,
 test_backward_is_standard_onnx) = table_tests(CASES)


def test_float32_weights_under_a_float64_output_train() -> None:
    """The backward seed (the learning rate, in the weights' type) is cast to the loss's
    type: a float32 model whose output is cast to float64 trains, on both backends."""
    from onnx import TensorProto, helper, numpy_helper

    import edgetrain as et

    rng = np.random.default_rng(4)
    w = rng.standard_normal((3, 2)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("Cast", ["h"], ["out"], to=TensorProto.DOUBLE)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("out", TensorProto.DOUBLE, [4, 2])],
        initializer=[numpy_helper.from_array(w, "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = rng.standard_normal((4, 2))
    want = w - 0.1 * (x.T.astype(np.float64) @ (2.0 * (x.astype(np.float64) @ w - y) / y.size))
    for backend in ("reference", "onnxruntime"):
        m = et.load(et.compile(model, loss="mse", optimizer=et.optim.SGD(lr=0.1)).proto,
                    backend=backend)
        m.run("train", x=x, y=y)
        np.testing.assert_allclose(m.parameters()["W"], want, rtol=1e-5, atol=1e-6,
                                   err_msg=backend)
