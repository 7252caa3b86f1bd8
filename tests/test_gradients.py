"""The per-op gradient table: every rule against finite differences and torch.autograd.

One row per op and attribute variant (tests/gradcheck.py builds and runs them). Each row's
gradient, computed by edgetrain's autodiff and run by onnx.reference in float64, must match
central finite differences of the same loss and, where torch has the op, torch.autograd.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import edgetrain
from edgetrain.autodiff import RULES
from edgetrain.autodiff._registry import NON_DIFFERENTIABLE
from gradcheck import (
    C,
    Case,
    X,
    autodiff_gradients,
    away_from,
    build,
    check_finite_differences,
    check_torch,
    differentiate,
    evaluator,
    nonzero,
    on_grid,
    params,
    positive,
)

I64_MAX = int(np.iinfo(np.int64).max)
I64_MIN = int(np.iinfo(np.int64).min)


def i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def f32(v: float) -> float:
    """A float attribute as ONNX stores it (float32), for the torch side of a row."""
    return float(np.float32(v))


# -- torch expressions of ONNX ops -------------------------------------------------------------

def t_gemm(ta: int, tb: int, alpha: float, beta: float):  # type: ignore[no-untyped-def]
    def f(a, b, c=None):  # type: ignore[no-untyped-def]
        y = alpha * ((a.T if ta else a) @ (b.T if tb else b))
        return y if c is None else y + beta * c
    return f


def t_slice(shape: tuple[int, ...], starts, ends, axes=None, steps=None):  # type: ignore[no-untyped-def]
    """Slice through numpy's own slicing of an index grid (numpy allows negative steps)."""
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    key = [slice(None)] * len(shape)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        key[a] = slice(s, e, st)
    picked = torch.as_tensor(np.ascontiguousarray(idx[tuple(key)]))
    return lambda x: x.reshape(-1)[picked]


def t_flatten(axis: int):  # type: ignore[no-untyped-def]
    def f(x):  # type: ignore[no-untyped-def]
        a = axis + x.dim() if axis < 0 else axis
        lead = int(np.prod(x.shape[:a])) if a else 1
        return x.reshape(lead, -1)
    return f


def t_reduce(fn, axes, keepdims: bool):  # type: ignore[no-untyped-def]
    def f(x):  # type: ignore[no-untyped-def]
        ax = list(range(x.dim())) if axes is None else axes
        return fn(x, dim=ax, keepdim=keepdims)
    return f


def t_dropout(ratio: float):  # type: ignore[no-untyped-def]
    """The mask is whatever the ONNX forward drew: where y != 0 (x is never exactly 0)."""
    def f(x, outs):  # type: ignore[no-untyped-def]
        mask = torch.as_tensor(outs[0] != 0)
        return x * mask / (1.0 - ratio)
    return f


# -- multi-node rows ---------------------------------------------------------------------------

def n_same_input_twice(ins: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    """x·x: one value reaching the loss along two edges (gradients are summed)."""
    return [helper.make_node("Mul", [ins[0], ins[0]], ["out0"])], ["out0"]


def n_cast_f32(ins: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    """float64 → float32 → float64: the gradient is cast back at each step."""
    return [helper.make_node("Cast", [ins[0]], ["h"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["h"], ["out0"], to=TensorProto.DOUBLE)], ["out0"]


def n_cast_int(ins: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    """x + float(int(x)): the integer detour carries no gradient."""
    return [helper.make_node("Cast", [ins[0]], ["k"], to=TensorProto.INT64),
            helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.DOUBLE),
            helper.make_node("Add", [ins[0], "kf"], ["out0"])], ["out0"]


def n_shape_path(ins: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    """x·n + reshape(x, shape(x) with integer arithmetic): Shape/Size/int ops are skipped."""
    return [helper.make_node("Shape", [ins[0]], ["s"]),
            helper.make_node("Size", [ins[0]], ["n"]),
            helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.DOUBLE),
            helper.make_node("Mul", [ins[0], "nf"], ["a"]),
            helper.make_node("Mul", ["s", "one"], ["s2"]),          # integer Mul
            helper.make_node("Reshape", [ins[0], "s2"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["out0"])], ["out0"]


def n_constant(ins: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    """x·K with K from a Constant node."""
    k = numpy_helper.from_array(np.array([[1.5, -2.0, 0.5]]), "k")
    return [helper.make_node("Constant", [], ["K"], value=k),
            helper.make_node("Mul", [ins[0], "K"], ["out0"])], ["out0"]


def n_constant_of_shape(ins: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    """x·full(shape(x), 2.5) + full(...): ConstantOfShape carries nothing back."""
    v = helper.make_tensor("v", TensorProto.DOUBLE, [1], [2.5])
    return [helper.make_node("Shape", [ins[0]], ["s"]),
            helper.make_node("ConstantOfShape", ["s"], ["f"], value=v),
            helper.make_node("Mul", [ins[0], "f"], ["a"]),
            helper.make_node("Add", ["a", "f"], ["out0"])], ["out0"]


def _with_one(fn):  # type: ignore[no-untyped-def]
    """The int64 constant 1 that n_shape_path multiplies the shape by."""
    def wrapped(ins):  # type: ignore[no-untyped-def]
        nodes, outs = fn(ins)
        one = numpy_helper.from_array(i64(1), "onev")
        return [helper.make_node("Constant", [], ["one"], value=one), *nodes], outs
    return wrapped


# -- the table ---------------------------------------------------------------------------------

M, K, N = 3, 4, 2
kink0 = away_from(0.0)
CASES: list[Case] = []


def row(op: str, inputs: list, torch_fn=None, variant: str = "", **kw) -> None:  # type: ignore[no-untyped-def]
    CASES.append(Case(op, inputs, torch=torch_fn, variant=variant, **kw))


# Gemm: every transA/transB with and without alpha/beta, every C broadcast.
for ta in (0, 1):
    for tb in (0, 1):
        a_shape, b_shape = ((K, M) if ta else (M, K)), ((N, K) if tb else (K, N))
        row("Gemm", [X(a_shape), X(b_shape), X((N,))], t_gemm(ta, tb, 1.0, 1.0),
            f"tA{ta}tB{tb}", attrs={"transA": ta, "transB": tb})
        row("Gemm", [X(a_shape), X(b_shape), X((M, N))], t_gemm(ta, tb, 0.5, 2.0),
            f"tA{ta}tB{tb}-alpha-beta",
            attrs={"transA": ta, "transB": tb, "alpha": 0.5, "beta": 2.0})
for c_shape, name in [((1, N), "C1xN"), ((M, 1), "CMx1"), ((), "Cscalar"), ((1, 1), "C1x1")]:
    row("Gemm", [X((M, K)), X((K, N)), X(c_shape)], t_gemm(0, 0, 1.0, -1.5), name,
        attrs={"beta": -1.5})
row("Gemm", [X((M, K)), X((N, K))], t_gemm(0, 1, 2.0, 1.0), "noC", attrs={"transB": 1,
                                                                        "alpha": 2.0})
row("Gemm", [X((K, M), grad=False), X((K, N)), X((N,), grad=False)], t_gemm(1, 0, 1.0, 1.0),
    "only-B", attrs={"transA": 1})

# MatMul: 2-D, 1-D operands, batched, broadcast batch dims, weights shared over a batch.
for sa, sb, name in [
    ((M, K), (K, N), "2Dx2D"),
    ((K,), (K, N), "1Dx2D"),
    ((M, K), (K,), "2Dx1D"),
    ((K,), (K,), "1Dx1D"),
    ((K,), (2, K, N), "1Dx3D"),
    ((2, M, K), (K,), "3Dx1D"),
    ((2, M, K), (K, N), "3Dx2D-weight"),
    ((M, K), (2, K, N), "2Dx3D"),
    ((2, M, K), (2, K, N), "3Dx3D"),
    ((1, M, K), (2, K, N), "batch1-broadcast-A"),
    ((2, M, K), (1, K, N), "batch1-broadcast-B"),
    ((2, 1, M, K), (3, K, N), "4Dx3D-broadcast"),
    ((2, 1, M, K), (1, 3, K, N), "4Dx4D-both-broadcast"),
    ((K,), (2, 1, K, N), "1Dx4D"),
]:
    row("MatMul", [X(sa), X(sb)], torch.matmul, name)
row("MatMul", [X((2, M, K), declared=("B", M, K)), X((K, N))], torch.matmul,
    "symbolic-batch-weight")
row("MatMul", [X((1, M, K), declared=(None, M, K)), X((2, K, N), declared=(None, K, N))],
    torch.matmul, "unknown-batch-broadcast")

# Binary elementwise ops under broadcasting, scalars included.
BINARY = [((2, 3), (2, 3), "same"), ((2, 3), (3,), "row"), ((2, 1), (1, 3), "outer"),
          ((), (2, 3), "scalar-a"), ((2, 3, 4), (3, 1), "rank3-col"), ((2, 3), (), "scalar-b")]
for op_name, fn in [("Add", torch.add), ("Sub", torch.sub), ("Mul", torch.mul)]:
    for sa, sb, name in BINARY:
        row(op_name, [X(sa), X(sb)], fn, name)
    row(op_name, [X((2, 3), declared=("B", 3)), X((1, 3), declared=(1, None))], fn,
        "symbolic-dims")
for sa, sb, name in BINARY:
    row("Div", [X(sa), X(sb, nonzero)], torch.div, name)
row("Sum", [X((2, 3)), X((3,)), X(())], lambda a, b, c: a + b + c, "broadcast")
row("Sum", [X((2, 3))], lambda a: a, "single")
row("Mul", [X((2, 3))], lambda x: x * x, "same-input-twice", nodes=n_same_input_twice)
row("Add", [X((2, 3)), X((2, 3), grad=False)], torch.add, "only-a")
row("Sub", [X((2, 3), grad=False), X((3,))], torch.sub, "only-b")
row("Pow", [X((2, 3), positive), X((2, 3))], torch.pow, "both")
row("Pow", [X((2, 3), positive), X(())], torch.pow, "scalar-exponent")
row("Pow", [X((3,), positive), X((2, 3))], torch.pow, "broadcast-base")
row("Pow", [X((2, 3), positive), C(np.array(3.0))], lambda a: torch.pow(a, 3.0), "const-exp")
row("Pow", [X((2, 3), nonzero), C(np.array(2, dtype=np.int64))], lambda a: torch.pow(a, 2),
    "int-exponent-negative-base")

# Unary elementwise ops and activations.
UNARY = [
    ("Neg", None, torch.neg, {}),
    ("Abs", kink0, torch.abs, {}),
    ("Relu", kink0, torch.relu, {}),
    ("Sigmoid", None, torch.sigmoid, {}),
    ("Tanh", None, torch.tanh, {}),
    ("Softplus", None, F.softplus, {}),
    ("Exp", None, torch.exp, {}),
    ("Log", positive, torch.log, {}),
    ("Sqrt", positive, torch.sqrt, {}),
    ("Reciprocal", nonzero, torch.reciprocal, {}),
    ("Identity", None, lambda x: x, {}),
    ("LeakyRelu", kink0, lambda x: F.leaky_relu(x, f32(0.01)), {}),
    ("Elu", kink0, F.elu, {}),
]
for op_name, tf, fn, attrs in UNARY:
    row(op_name, [X((2, 3), tf)], fn, attrs=attrs)
row("LeakyRelu", [X((2, 3), kink0)], lambda x: F.leaky_relu(x, f32(0.2)), "alpha",
    attrs={"alpha": 0.2})
row("Elu", [X((2, 3), kink0)], lambda x: F.elu(x, f32(0.7)), "alpha", attrs={"alpha": 0.7})

for op_name, fn in [("Softmax", torch.softmax), ("LogSoftmax", torch.log_softmax)]:
    row(op_name, [X((2, 3))], lambda x, fn=fn: fn(x, -1), "default-axis")
    row(op_name, [X((2, 3, 4))], lambda x, fn=fn: fn(x, 1), "axis1", attrs={"axis": 1})
    row(op_name, [X((2, 3, 4))], lambda x, fn=fn: fn(x, 0), "axis-neg3", attrs={"axis": -3})

# Clip: both bounds, one bound, none, bounds as differentiable inputs.
clip_x = away_from(-0.5, 0.5, margin=0.15)
row("Clip", [X((3, 4), clip_x), C(np.array(-0.5)), C(np.array(0.5))],
    lambda x: torch.clamp(x, -0.5, 0.5), "min-max")
row("Clip", [X((3, 4), clip_x), C(np.array(-0.5))], lambda x: torch.clamp(x, min=-0.5), "min")
row("Clip", [X((3, 4), clip_x), None, C(np.array(0.5))], lambda x: torch.clamp(x, max=0.5),
    "max-only")
row("Clip", [X((3, 4))], lambda x: x, "no-bounds")
row("Clip", [X((3, 4), away_from(-0.5, 0.5, margin=0.3)), X((), lambda v: -0.5 + 0.05 * v),
             X((), lambda v: 0.5 + 0.05 * v)],
    lambda x, lo, hi: torch.clamp(x, lo, hi), "bounds-trained")

# Shape ops.
row("Reshape", [X((2, 3, 4)), C(i64(4, 6))], lambda x: x.reshape(4, 6), "static")
row("Reshape", [X((2, 3, 4)), C(i64(0, -1))], lambda x: x.reshape(2, 12), "zero-minus-one")
row("Reshape", [X((2, 3, 4)), C(i64(6, 4), runtime=True)], lambda x: x.reshape(6, 4),
    "runtime-shape")
row("Flatten", [X((2, 3, 4))], t_flatten(1), "default")
row("Flatten", [X((2, 3, 4))], t_flatten(0), "axis0", attrs={"axis": 0})
row("Flatten", [X((2, 3, 4))], t_flatten(-1), "axis-neg1", attrs={"axis": -1})
row("Transpose", [X((2, 3, 4))], lambda x: x.permute(2, 1, 0), "default-perm")
row("Transpose", [X((2, 3, 4))], lambda x: x.permute(1, 2, 0), "perm",
    attrs={"perm": [1, 2, 0]})
row("Squeeze", [X((2, 1, 3)), C(i64(1))], lambda x: x.squeeze(1), "axis")
row("Squeeze", [X((2, 1, 3, 1)), C(i64(-1, 1))], lambda x: x.squeeze(3).squeeze(1), "neg-axes")
row("Squeeze", [X((1, 3, 1))], lambda x: x.reshape(3), "all-ones")
row("Unsqueeze", [X((2, 3)), C(i64(0, -1))], lambda x: x.reshape(1, 2, 3, 1), "neg-axes")
row("Concat", [X((2, 1)), X((2, 3)), X((2, 2))], lambda *xs: torch.cat(xs, 1), "axis1",
    attrs={"axis": 1})
row("Concat", [X((2, 3)), X((1, 3), grad=False), X((3, 3))], lambda *xs: torch.cat(xs, 0),
    "axis0-one-frozen", attrs={"axis": 0})
row("Concat", [X((2, 3, 2)), X((2, 3, 1))], lambda *xs: torch.cat(xs, -1), "axis-neg",
    attrs={"axis": -1})
row("Concat", [X((2, 3), declared=("B", 3)), X((2, 1), declared=("B", None))],
    lambda *xs: torch.cat(xs, 1), "symbolic", attrs={"axis": 1})
row("Concat", [X((2, 3))], lambda x: x, "single", attrs={"axis": 0})
row("Split", [X((2, 3)), C(i64(1, 2))], lambda x: torch.split(x, [1, 2], 1), "split-input",
    n_out=2, attrs={"axis": 1})
row("Split", [X((7, 2))], lambda x: torch.split(x, 3, 0), "num-outputs-uneven", n_out=3,
    attrs={"axis": 0, "num_outputs": 3})
row("Split", [X((2, 4))], lambda x: torch.split(x, 2, -1), "unused-output", n_out=2,
    loss_outputs=[1], attrs={"axis": -1, "num_outputs": 2})
row("Split", [X((6, 2), declared=(None, 2)), C(i64(1, 2, 3))],
    lambda x: torch.split(x, [1, 2, 3], 0), "unknown-dims-unused-middle", n_out=3,
    loss_outputs=[0, 2])

SLICES = [
    ("basic", (4, 3), [1], [3], None, None),
    ("axes-negative", (4, 5), [-3, 1], [-1, 4], [-1, 0], None),
    ("end-int64max", (4, 3), [2], [I64_MAX], [0], None),
    ("step2", (5, 3), [0, 1], [5, 3], [0, 1], [2, 1]),
    ("step-neg1", (4, 3), [-1], [I64_MIN], [0], [-1]),
    ("step-neg1-partial", (5, 4), [3, 2], [0, 0], [0, 1], [-1, -1]),
    ("step-neg2", (6, 2), [5], [0], [0], [-2]),
    ("empty", (4, 3), [2], [2], [0], None),
]
for name, shape, st, en, ax, sp in SLICES:
    ins = [X(shape), C(i64(*st)), C(i64(*en))]
    ins += [C(i64(*ax)) if ax is not None else None] if (ax is not None or sp is not None) else []
    ins += [C(i64(*sp))] if sp is not None else []
    row("Slice", ins, t_slice(shape, st, en, ax, sp), name)
row("Slice", [X((5, 4)), C(i64(1, -1), runtime=True), C(i64(4, 0), runtime=True),
              C(i64(0, 1), runtime=True), C(i64(2, -1), runtime=True)],
    t_slice((5, 4), [1, -1], [4, 0], [0, 1], [2, -1]), "runtime-starts")
row("Slice", [X((5, 4), declared=("A", None)), C(i64(1)), C(i64(3)), C(i64(1))],
    t_slice((5, 4), [1], [3], [1]), "unknown-dims")

for op_name, fn in [("ReduceSum", torch.sum), ("ReduceMean", torch.mean)]:
    row(op_name, [X((2, 3, 4)), C(i64(1))], t_reduce(fn, [1], True), "keepdims")
    row(op_name, [X((2, 3, 4)), C(i64(1))], t_reduce(fn, [1], False), "no-keepdims",
        attrs={"keepdims": 0})
    row(op_name, [X((2, 3, 4)), C(i64(-1, 0))], t_reduce(fn, [2, 0], False),
        "neg-axes-no-keepdims", attrs={"keepdims": 0})
    row(op_name, [X((2, 3, 4))], t_reduce(fn, None, True), "all-keepdims")
    row(op_name, [X((2, 3, 4))], t_reduce(fn, None, False), "all-no-keepdims",
        attrs={"keepdims": 0})
    row(op_name, [X((2, 3)), C(np.zeros(0, dtype=np.int64))], t_reduce(fn, None, False),
        "empty-axes", attrs={"keepdims": 0})
    row(op_name, [X((2, 3))], lambda x: x, "noop-empty-axes", attrs={"noop_with_empty_axes": 1})
    row(op_name, [X((2, 3, 4)), C(i64(0, 2), runtime=True)], t_reduce(fn, [0, 2], True),
        "runtime-axes")
    row(op_name, [X((2, 3, 4)), C(i64(2), runtime=True)], t_reduce(fn, [2], False),
        "runtime-axes-no-keepdims", attrs={"keepdims": 0})
    row(op_name, [X((2, 3), declared=("B", None)), C(i64(1))], t_reduce(fn, [1], False),
        "symbolic", attrs={"keepdims": 0})

row("Cast", [X((2, 3))], lambda x: x.double(), "to-same", attrs={"to": TensorProto.DOUBLE})
row("Cast", [X((2, 3), on_grid)], lambda x: x.float().double(), "f64-f32-f64",
    nodes=n_cast_f32, fd_eps=2.0 ** -10)
row("Cast", [X((2, 3), away_from(0.0, 1.0, -1.0, 2.0, -2.0, margin=0.2))],
    lambda x: x + x.long().double(), "to-int-no-gradient", nodes=n_cast_int)
row("CastLike", [X((2, 3)), C(np.zeros((), dtype=np.float64))], lambda x: x, "to-same")

# Dropout: training with and without the mask output, inference, run-time mode and ratio.
row("Dropout", [X((3, 4)), C(np.array(0.25)), C(np.array(True))], t_dropout(0.25),
    "train-mask-output", n_out=2, attrs={"seed": 7}, torch_gets_outputs=True)
row("Dropout", [X((3, 4)), C(np.array(0.5, dtype=np.float32)), C(np.array(True))],
    t_dropout(0.5), "train-no-mask-output-f32-ratio", attrs={"seed": 3}, torch_gets_outputs=True)
row("Dropout", [X((3, 4)), C(np.array(0.25), runtime=True), C(np.array(True), runtime=True)],
    t_dropout(0.25), "train-runtime-mode-ratio", attrs={"seed": 11}, torch_gets_outputs=True)
row("Dropout", [X((3, 4)), C(np.array(0.3), runtime=True), C(np.array(False), runtime=True)],
    lambda x: x, "infer-runtime-mode", attrs={"seed": 11})
row("Dropout", [X((3, 4))], lambda x: x, "inference")
row("Dropout", [X((3, 4)), C(np.array(0.25)), C(np.array(False))], lambda x: x,
    "training-mode-false", n_out=2)

row("Where", [C(np.array([[True, False, True], [False, False, True]])), X((2, 3)), X((2, 3))],
    lambda a, b: torch.where(torch.tensor([[True, False, True], [False, False, True]]),
                                     a, b), "same")
row("Where", [C(np.array([True, False, True])), X((2, 3)), X(())],
    lambda a, b: torch.where(torch.tensor([True, False, True]), a, b), "broadcast-scalar")
row("Where", [C(np.array([[True], [False]])), X((3,)), X((2, 1))],
    lambda a, b: torch.where(torch.tensor([[True], [False]]), a, b), "broadcast-both")

# The newest opsets take the same rules (models at 18..21 keep their opset when compiled).
row("ReduceMean", [X((2, 3, 4)), C(i64(-1))], t_reduce(torch.mean, [2], False), "opset21",
    attrs={"keepdims": 0}, opset=21)
row("Slice", [X((5, 3)), C(i64(4)), C(i64(0)), C(i64(0)), C(i64(-2))],
    t_slice((5, 3), [4], [0], [0], [-2]), "opset21", opset=21)
row("Gemm", [X((K, M)), X((K, N)), X((N,))], t_gemm(1, 0, 1.0, 1.0), "opset21",
    attrs={"transA": 1}, opset=21)

row("Softsign", [X((3, 4))], F.softsign)

# Norm-like reductions (F.normalize, weight norm, log-sum-exp pooling).
row("ReduceL2", [X((3, 4)), C(i64(1))], lambda x: torch.linalg.vector_norm(x, dim=1),
    "axis1", attrs={"keepdims": 0})
row("ReduceL2", [X((2, 3, 4))], lambda x: torch.linalg.vector_norm(x).reshape(1, 1, 1),
    "all")
row("ReduceL1", [X((3, 4), nonzero), C(i64(0))], lambda x: x.abs().sum(0, keepdim=True),
    "axis0")
row("ReduceSumSquare", [X((3, 4)), C(i64(-1))], lambda x: (x * x).sum(-1), attrs={
    "keepdims": 0})
row("ReduceLogSum", [X((3, 4), positive), C(i64(1))],
    lambda x: torch.log(x.sum(1, keepdim=True)))
row("ReduceLogSumExp", [X((3, 4)), C(i64(1))], lambda x: torch.logsumexp(x, 1), attrs={
    "keepdims": 0})
row("ReduceLogSumExp", [X((2, 3, 2))], lambda x: torch.logsumexp(x.reshape(-1), 0)
    .reshape(1, 1, 1), "all")

# Paths that carry no gradient.
row("Shape", [X((2, 3))], lambda x: x * 6 + x, "size-and-int-arith",
    nodes=_with_one(n_shape_path))
row("Constant", [X((2, 3))], lambda x: x * torch.tensor([[1.5, -2.0, 0.5]], dtype=x.dtype),
    "mul", nodes=n_constant)
row("ConstantOfShape", [X((2, 3))], lambda x: x * 2.5 + 2.5, "mul-add",
    nodes=n_constant_of_shape)

IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS), "row ids must be unique"


# -- the checks --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", params(CASES))
def test_matches_finite_differences(case: Case) -> None:
    check_finite_differences(case)


@pytest.mark.parametrize("case", [p for p, c in zip(params(CASES), CASES, strict=True)
                                  if c.torch is not None])
def test_matches_torch(case: Case) -> None:
    check_torch(case)


@pytest.mark.parametrize("case", [p for p, c in zip(params(CASES), CASES, strict=True)
                                  if sum(isinstance(s, X) and s.grad for s in c.inputs) > 1])
def test_each_input_alone(case: Case) -> None:
    """Differentiating w.r.t. one input at a time (the other branches of each rule's
    needs_grad checks) gives the same gradient as w.r.t. all of them."""
    b = build(case)
    _, together = autodiff_gradients(b)
    inferred = onnx.shape_inference.infer_shapes(b.forward, strict_mode=True, data_prop=True)
    for w in b.wrt:
        model, _ = differentiate(inferred, [w])
        onnx.checker.check_model(model, full_check=True)
        alone = evaluator(model).run([f"grad_{w}"], b.feeds)[0]
        np.testing.assert_allclose(alone, together[w], rtol=1e-12, atol=1e-14,
                                   err_msg=f"{case.id}: {w} alone (seed={case.seed})")


@pytest.mark.parametrize("case", params(CASES))
def test_rule_graph_is_valid_standard_onnx(case: Case) -> None:
    model = build(case).model
    onnx.checker.check_model(model, full_check=True)
    domains = {n.domain for n in model.graph.node}
    assert domains <= {"", "ai.onnx"}, f"{case.id}: non-default domains {domains}"
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}


def _all_rows() -> list[Case]:
    """This table plus the tables of rule families kept in tests/test_gradients_<family>.py
    (each a module-level ``CASES`` of gradcheck.Case rows): together, one table."""
    rows = list(CASES)
    for path in sorted(Path(__file__).parent.glob("test_gradients_*.py")):
        rows += getattr(importlib.import_module(path.stem), "CASES", [])
    return rows


def test_every_rule_has_a_row() -> None:
    covered = {c.op for c in _all_rows()}
    missing = sorted(set(RULES) - covered)
    assert not missing, f"registered gradient rules without a row in the table: {missing}"


def test_rows_name_real_ops() -> None:
    """A row's op is either differentiated by a rule or on the non-differentiable list."""
    unknown = sorted({c.op for c in CASES} - set(RULES) - NON_DIFFERENTIABLE)
    assert not unknown, unknown


def test_dropout_rule_adds_the_mask_output() -> None:
    case = next(c for c in CASES if c.id == "Dropout-train-no-mask-output-f32-ratio")
    node = next(n for n in build(case).model.graph.node if n.op_type == "Dropout")
    assert len(node.output) == 2 and node.output[1], "the backward needs the drawn mask"


# -- errors and pruning ------------------------------------------------------------------------

def _mlp_with_prefix(prefix_ops: list[str]) -> onnx.ModelProto:
    """x → prefix ops (frozen, no parameters) → MatMul W → ReduceSum: only W trains."""
    nodes, h = [], "x"
    for i, op_type in enumerate(prefix_ops):
        nodes.append(helper.make_node(op_type, [h], [f"h{i}"], name=f"prefix_{i}"))
        h = f"h{i}"
    nodes += [helper.make_node("MatMul", [h, "W"], ["y"], name="head"),
              helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)]
    w = numpy_helper.from_array(np.ones((3, 2)), "W")
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE,
                                                                     [4, 3])],
                          [helper.make_tensor_value_info("loss", TensorProto.DOUBLE, [])],
                          initializer=[w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    return onnx.shape_inference.infer_shapes(m, strict_mode=True)


def test_frozen_prefix_gets_no_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(RULES, "Sin")  # prefix ops without rules must not matter
    monkeypatch.delitem(RULES, "Cos")
    short = _mlp_with_prefix(["Relu"])
    long = _mlp_with_prefix(["Relu", "Sin", "Tanh", "Cos", "Sigmoid", "Exp"])
    _, n_short = differentiate(short, ["W"])
    m_long, n_long = differentiate(long, ["W"])  # Sin/Cos have no rule: must not matter
    assert n_long == n_short, "the frozen prefix's ops got backward nodes"
    backward = [n.op_type for n in m_long.graph.node[len(long.graph.node):]]
    assert "Sin" not in backward and "Cos" not in backward


def test_frozen_prefix_invokes_no_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts rule calls by op type; the real rules still run."""
    calls: list[str] = []
    for op_type, rule in list(RULES.items()):
        def counted(ctx, op, rule=rule, op_type=op_type):  # type: ignore[no-untyped-def]
            calls.append(op_type)
            return rule(ctx, op)
        monkeypatch.setitem(RULES, op_type, counted)
    differentiate(_mlp_with_prefix(["Relu", "Tanh", "Sigmoid"]), ["W"])
    assert sorted(calls) == ["MatMul", "ReduceSum"], calls


def test_missing_rule_names_op_node_and_supported_ops(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.delitem(RULES, "Sin")  # an op without a rule (and without a function body)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="dense"),
             helper.make_node("Sin", ["h"], ["s"], name="my_sine"),
             helper.make_node("ReduceSum", ["s"], ["loss"], keepdims=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE,
                                                                     [4, 3])],
                          [helper.make_tensor_value_info("loss", TensorProto.DOUBLE, [])],
                          initializer=[numpy_helper.from_array(np.ones((3, 2)), "W")])
    m = onnx.shape_inference.infer_shapes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), strict_mode=True)
    with pytest.raises(edgetrain.UnsupportedOpError) as err:
        differentiate(m, ["W"])
    msg = str(err.value)
    assert "'Sin'" in msg and "'my_sine'" in msg, msg
    listed = re.search(r"Supported: (.*)$", msg)
    assert listed is not None, msg
    assert set(listed.group(1).split(", ")) == set(RULES), msg
    assert isinstance(err.value, edgetrain.EdgetrainError)


def test_weights_as_initializers() -> None:
    """The compiler's calling convention: parameters are initializers of the step graph."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((3, 2))
    b = rng.standard_normal((2,))
    x = rng.standard_normal((4, 3))
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["y"]),
             helper.make_node("Tanh", ["y"], ["t"]),
             helper.make_node("ReduceMean", ["t"], ["loss"], keepdims=0)]
    g = helper.make_graph(nodes, "step", [helper.make_tensor_value_info("x", TensorProto.DOUBLE,
                                                                        [4, 3])],
                          [helper.make_tensor_value_info("loss", TensorProto.DOUBLE, [])],
                          initializer=[numpy_helper.from_array(w, "W"),
                                       numpy_helper.from_array(b, "b")])
    inferred = onnx.shape_inference.infer_shapes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), strict_mode=True)
    model, _ = differentiate(inferred, ["W", "b"])
    onnx.checker.check_model(model, full_check=True)
    gw, gb = evaluator(model).run(["grad_W", "grad_b"], {"x": x})
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    torch.tanh(torch.tensor(x) @ tw + tb).mean().backward()
    np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(gb, tb.grad.numpy(), rtol=1e-10)


# -- the compile path, float32 on onnxruntime --------------------------------------------------

def _f32_model(nodes: list[onnx.NodeProto], x_shape: list[int], out: str, out_shape: list[int],
               weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _one_sgd_step_matches_torch(model: onnx.ModelProto, weights: dict[str, np.ndarray],
                                torch_forward, x: np.ndarray, y: np.ndarray,  # type: ignore[no-untyped-def]
                                lr: float = 0.1) -> None:
    tm = edgetrain.compile(model, loss="mse", optimizer=edgetrain.optim.SGD(lr=lr))
    m = edgetrain.load(tm.proto, backend="onnxruntime")
    loss = m.run("train", x=x, y=y)["loss"]
    params = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    tloss = F.mse_loss(torch_forward(torch.tensor(x), params), torch.tensor(y))
    tloss.backward()
    np.testing.assert_allclose(loss, tloss.item(), rtol=1e-5)
    got = m.parameters()
    for k, p in params.items():
        assert p.grad is not None and float(p.grad.abs().max()) > 0, k
        want = (p - lr * p.grad).detach().numpy()
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6, err_msg=k)


def test_compiled_dense_step_on_onnxruntime_matches_torch() -> None:
    """Gemm(transB) → Elu → MatMul → Softmax, trained one SGD step in float32."""
    rng = np.random.default_rng(21)
    w = {"W1": (rng.standard_normal((5, 6)) * 0.5).astype(np.float32),
         "b1": rng.standard_normal(5).astype(np.float32),
         "W2": (rng.standard_normal((5, 3)) * 0.5).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
             helper.make_node("Elu", ["h"], ["e"], alpha=0.5),
             helper.make_node("MatMul", ["e", "W2"], ["z"]),
             helper.make_node("Softmax", ["z"], ["p"], axis=-1)]
    model = _f32_model(nodes, [4, 6], "p", [4, 3], w)

    def fwd(x, p):  # type: ignore[no-untyped-def]
        return torch.softmax(F.elu(x @ p["W1"].T + p["b1"], 0.5) @ p["W2"], -1)

    x = rng.standard_normal((4, 6)).astype(np.float32)
    y = rng.random((4, 3)).astype(np.float32)
    _one_sgd_step_matches_torch(model, w, fwd, x, y)


def test_compiled_shape_ops_step_on_onnxruntime_matches_torch() -> None:
    """MatMul → Reshape → Transpose → Slice(step -2) → Split → Concat → ReduceSum → Tanh."""
    rng = np.random.default_rng(22)
    w = {"W": (rng.standard_normal((6, 8)) * 0.5).astype(np.float32)}
    consts = [("shape", i64(4, 2, 4)), ("st", i64(-1)), ("en", i64(I64_MIN)), ("ax", i64(1)),
              ("sp", i64(-2)), ("sizes", i64(1, 1)), ("rax", i64(2))]
    nodes = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(v, n + "_v"))
             for n, v in consts]
    nodes += [helper.make_node("MatMul", ["x", "W"], ["h"]),
              helper.make_node("Reshape", ["h", "shape"], ["r"]),
              helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
              helper.make_node("Slice", ["t", "st", "en", "ax", "sp"], ["s"]),
              helper.make_node("Split", ["s", "sizes"], ["a", "b"], axis=2),
              helper.make_node("Mul", ["a", "a"], ["aa"]),
              helper.make_node("Concat", ["b", "aa"], ["c"], axis=2),
              helper.make_node("ReduceSum", ["c", "rax"], ["rs"], keepdims=0),
              helper.make_node("Tanh", ["rs"], ["out"])]
    model = _f32_model(nodes, [4, 6], "out", [4, 2], w)

    def fwd(x, p):  # type: ignore[no-untyped-def]
        t = (x @ p["W"]).reshape(4, 2, 4).permute(0, 2, 1)
        s = t[:, [3, 1], :]
        a, b = s[:, :, :1], s[:, :, 1:]
        return torch.tanh(torch.cat([b, a * a], 2).sum(2))

    x = rng.standard_normal((4, 6)).astype(np.float32)
    y = rng.standard_normal((4, 2)).astype(np.float32)
    _one_sgd_step_matches_torch(model, w, fwd, x, y)


def test_compiled_dropout_trains_on_onnxruntime() -> None:
    """Dropout without a mask output: the compiled step asks the forward for its mask."""
    rng = np.random.default_rng(23)
    w = {"W": rng.standard_normal((6, 3)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["h"]),
             helper.make_node("Dropout", ["h"], ["d"]),
             helper.make_node("MatMul", ["d", "W"], ["out"])]
    w0 = {"W0": rng.standard_normal((6, 6)).astype(np.float32)}
    model = _f32_model(nodes, [4, 6], "out", [4, 3], {**w, **w0})
    tm = edgetrain.compile(model, loss="mse", optimizer=edgetrain.optim.SGD(lr=0.01),
                           trainable=["W0"])
    train = tm.proto.training_info[0].algorithm
    drop = next(n for n in train.node if n.op_type == "Dropout")
    assert len(drop.output) == 2 and drop.output[1], "the mask must be an output of the step"
    m = edgetrain.load(tm.proto, backend="onnxruntime")
    before = m.parameters()["W0"]
    loss = m.run("train", x=rng.standard_normal((4, 6)).astype(np.float32),
                 y=rng.standard_normal((4, 3)).astype(np.float32))["loss"]
    assert np.isfinite(loss)
    assert not np.array_equal(m.parameters()["W0"], before)


def test_refusal_names_the_op_that_cuts_the_path() -> None:
    """A weight that reaches the loss only through an op without a gradient (ArgMax): the
    error names that op and its node, not just "nothing to train"."""
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="dense"),
             helper.make_node("ArgMax", ["h"], ["k"], axis=1, keepdims=0, name="pick"),
             helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT, name="as_float"),
             helper.make_node("Unsqueeze", ["kf", "one"], ["out"], name="column")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     [4, 3])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 1])],
                          initializer=[numpy_helper.from_array(
                              rng.standard_normal((3, 2)).astype(np.float32), "W"),
                              numpy_helper.from_array(i64(1), "one")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(edgetrain.EdgetrainError,
                       match=r"passes through ArgMax node 'pick', which carries none"):
        edgetrain.compile(model, loss="mse", optimizer=edgetrain.optim.SGD(lr=0.1))
