"""Gradient table of the transformer/NLP rules (rules/transformer.py), by the method of
tests/test_gradients.py: each row's autodiff gradient (float64, onnx.reference) must match
central finite differences and torch.autograd; every emitted graph passes the full ONNX check;
onnxruntime runs each backward graph in float32 and agrees with the float64 gradient.

Besides one row per rule, composite rows check the patterns exporters emit around those
rules: the decomposed layer norm (ReduceMean, Sub, Pow, Sqrt, Div), GELU's Erf form, and an
attention block (4-D MatMul broadcasting, additive mask built with Where, Softmax).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from edgetrain.autodiff import RULES
from gradcheck import (
    C,
    Case,
    X,
    check_finite_differences,
    check_onnxruntime_float32,
    check_standard_onnx,
    check_torch,
    differentiate,
    evaluator,
    on_grid,
)

TEXT_MODULES = ("transformer",)


CASES: list[Case] = []


def row(op: str, inputs: list, torch_fn=None, variant: str = "", **kw) -> None:  # type: ignore[no-untyped-def]
    CASES.append(Case(op, inputs, torch=torch_fn, variant=variant, **kw))


def i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def E32(v: float) -> float:
    """A float attribute as the graph stores it (float32)."""
    return float(np.float32(v))


def spread(x: np.ndarray) -> np.ndarray:
    """Distinct values at least 0.05 apart (max/min rows: no ties, no kinks within ε)."""
    order = np.argsort(x, axis=None)
    out = np.empty(x.size)
    out[order] = np.arange(x.size) * 0.05 - x.size * 0.025
    return out.reshape(x.shape) + 0.01 * np.tanh(x)


# -- LayerNormalization, Erf, Gelu -----------------------------------------------------------
# RMSNormalization (opset 23) normalizes in float32 (stash_type 1, the only one onnx.reference
# implements), so its float64 rows are exact to float32's precision: checked against finite
# differences at that precision, and against torch in float32 on onnxruntime.
row("RMSNormalization", [X((3, 5)), X((5,))], None, "last-axis", opset=23, rtol=1e-4,
    atol=1e-6)
row("RMSNormalization", [X((2, 3, 4)), X((3, 4))], None, "axis1", attrs={"axis": 1,
    "epsilon": 1e-3}, opset=23, rtol=1e-4, atol=1e-6)
RMS_TORCH = {"RMSNormalization-last-axis": ((5,), 1e-5),
             "RMSNormalization-axis1": ((3, 4), 1e-3)}

row("LayerNormalization", [X((3, 5)), X((5,)), X((5,))],
    lambda x, s, b: F.layer_norm(x, (5,), s, b, eps=E32(1e-5)), "last-axis")
row("LayerNormalization", [X((2, 3, 4)), X((3, 4)), X((3, 4))],
    lambda x, s, b: F.layer_norm(x, (3, 4), s, b, eps=E32(1e-3)), "axis1",
    attrs={"axis": 1, "epsilon": 1e-3})
row("LayerNormalization", [X((2, 3, 4)), X((4,))],
    lambda x, s: F.layer_norm(x, (4,), s, None, eps=E32(1e-5)), "no-bias-neg-axis",
    attrs={"axis": -1})
row("LayerNormalization", [X((2, 4, 6), declared=("B", "T", 6)), X((6,)), X((6,))],
    lambda x, s, b: F.layer_norm(x, (6,), s, b, eps=E32(1e-12)), "dynamic-dims",
    attrs={"epsilon": 1e-12})
row("LayerNormalization", [X((2, 3, 4)), X((3, 1)), X((1, 4))],
    lambda x, s, b: F.layer_norm(x, (3, 4), None, None, eps=E32(1e-5)) * s + b,
    "broadcast-scale-bias", attrs={"axis": 1})

# The statistics outputs feeding the loss with Y. Their type is stash_type's, float32 (the only
# one onnx.reference implements, and it returns float64 statistics for float64 inputs), so
# these rows run the op in float32 between casts, with float32-sized differences on inputs
# whose steps are exact.
def _layer_norm32(ins: list[str], outputs: tuple[int, ...] = (0, 1, 2), **attrs: Any
                  ) -> tuple[list[onnx.NodeProto], list[str]]:
    nodes = [helper.make_node("Cast", [i], [f"{i}_32"], to=TensorProto.FLOAT) for i in ins]
    names = [f"y{k}" if k in outputs else "" for k in range(3)]
    nodes.append(helper.make_node("LayerNormalization", [f"{i}_32" for i in ins], names, **attrs))
    nodes += [helper.make_node("Cast", [f"y{k}"], [f"out{k}"], to=TensorProto.DOUBLE)
              for k in outputs]
    return nodes, [f"out{k}" for k in outputs]


# (float32 rounding over the step, and the step's truncation of 1/σ's curvature)
STATS: dict[str, Any] = {"fd_eps": 2.0 ** -10, "rtol": 2e-3, "atol": 5e-4}
row("LayerNormalization", [X((3, 5), on_grid), X((5,), on_grid), X((5,), on_grid)], None,
    "float32-mean-invstddev-outputs", nodes=_layer_norm32, **STATS)
row("LayerNormalization", [X((2, 3, 4), on_grid), X((3, 4), on_grid), X((3, 4), on_grid)],
    None, "float32-axis1-invstddev-only",
    nodes=lambda ins: _layer_norm32(ins, (0, 2), axis=1, epsilon=1e-3), **STATS)

row("Erf", [X((3, 4))], torch.erf)
row("Gelu", [X((3, 4))], lambda x: F.gelu(x), "none", opset=20)
row("Gelu", [X((3, 4))], lambda x: F.gelu(x, approximate="tanh"), "tanh",
    attrs={"approximate": "tanh"}, opset=20)

# -- lookups ---------------------------------------------------------------------------------
EMB_IDS = np.array([[1, 3, 3, 0], [4, 1, -1, 1]], dtype=np.int64)  # repeats and a negative
row("Gather", [X((5, 3)), C(EMB_IDS)], lambda w: w[torch.as_tensor(EMB_IDS)], "embedding")
row("Gather", [X((5, 3)), C(EMB_IDS, runtime=True)], lambda w: w[torch.as_tensor(EMB_IDS)],
    "embedding-runtime-ids")
row("Gather", [X((5, 3)), C(np.array([[2, 0], [4, 2]], dtype=np.int32), runtime=True)],
    lambda w: w[torch.tensor([[2, 0], [4, 2]])], "int32-ids")
row("Gather", [X((2, 4, 3)), C(np.array([[3, 0, 3]], dtype=np.int64))],
    lambda x: x[:, torch.tensor([[3, 0, 3]])], "axis1", attrs={"axis": 1})
row("Gather", [X((2, 3, 4)), C(np.array([-1, 1, 1], dtype=np.int64))],
    lambda x: x[..., torch.tensor([-1, 1, 1])], "last-axis-negative", attrs={"axis": -1})
row("Gather", [X((4, 3)), C(np.array(2, dtype=np.int64))], lambda x: x[2], "scalar-index")

GE_IDX = np.array([[0, 2, 2], [1, 0, 2]], dtype=np.int64)
row("GatherElements", [X((3, 3)), C(GE_IDX)],
    lambda x: torch.gather(x, 0, torch.as_tensor(GE_IDX)), "axis0")
row("GatherElements", [X((2, 4)), C(np.array([[3, 3, -4], [1, 0, -1]], dtype=np.int64),
                                    runtime=True)],
    lambda x: torch.gather(x, 1, torch.tensor([[3, 3, 0], [1, 0, 3]])), "axis1-negative",
    attrs={"axis": 1})

GND_IDX = np.array([[0, 1], [2, 3], [0, 1]], dtype=np.int64)  # a repeated slot
row("GatherND", [X((3, 4, 2)), C(GND_IDX)],
    lambda x: x[torch.as_tensor(GND_IDX[:, 0]), torch.as_tensor(GND_IDX[:, 1])])
row("GatherND", [X((3, 4)), C(np.array([[-1], [0]], dtype=np.int64))],
    lambda x: x[torch.tensor([2, 0])], "rows-negative")

# -- Einsum with a subscript repeated in an operand: diagonals and traces --------------------
row("Einsum", [X((3, 4, 4))], lambda x: torch.einsum("bii->bi", x), "batch-diagonal",
    attrs={"equation": "bii->bi"})
row("Einsum", [X((4, 4)), X((4, 3))], lambda a, b: torch.einsum("ii,ij->j", a, b),
    "trace-times-matrix", attrs={"equation": "ii,ij->j"})
row("Einsum", [X((2, 3, 2, 3))], lambda x: torch.einsum("ijij->", x), "double-trace",
    attrs={"equation": "ijij->"})

# -- scatters --------------------------------------------------------------------------------
SND_IDX = np.array([[0, 1], [2, 0]], dtype=np.int64)


def _index_put(x, u, idx, accumulate):  # type: ignore[no-untyped-def]
    t = torch.as_tensor(idx)
    return x.index_put((t[:, 0], t[:, 1]), u, accumulate=accumulate)


row("ScatterND", [X((3, 2, 4)), C(SND_IDX), X((2, 4))],
    lambda x, u: _index_put(x, u, SND_IDX, False), "none")
row("ScatterND", [X((3, 2, 4)), C(np.array([[0, 1], [2, 0], [0, 1]], dtype=np.int64)),
                  X((3, 4))],
    lambda x, u: _index_put(x, u, np.array([[0, 1], [2, 0], [0, 1]]), True), "add-repeated",
    attrs={"reduction": "add"})

row("ScatterElements", [X((2, 4)), C(np.array([[1, 0, 3], [2, 3, 0]], dtype=np.int64)),
                        X((2, 3))],
    lambda x, u: x.scatter(1, torch.tensor([[1, 0, 3], [2, 3, 0]]), u), "none",
    attrs={"axis": 1})
row("ScatterElements", [X((3, 2)), C(np.array([[1, 0], [1, 1], [0, 0]], dtype=np.int64)),
                        X((3, 2))],
    lambda x, u: x.scatter_add(0, torch.tensor([[1, 0], [1, 1], [0, 0]]), u), "add-repeated",
    attrs={"reduction": "add"})

# -- max and min -----------------------------------------------------------------------------
row("ReduceMax", [X((3, 4), spread), C(i64(1))], lambda x: x.amax(1), "axis1",
    attrs={"keepdims": 0})
row("ReduceMax", [X((2, 3, 4), spread), C(i64(0, -1))], lambda x: x.amax((0, 2), keepdim=True),
    "two-axes-keepdims")
row("ReduceMax", [X((3, 4), spread)], lambda x: x.amax(), "all", attrs={"keepdims": 0})
row("ReduceMax", [X((3, 4), spread), C(i64(1), runtime=True)], lambda x: x.amax(1),
    "runtime-axes", attrs={"keepdims": 0})
row("ReduceMin", [X((3, 4), spread), C(i64(-1))], lambda x: x.amin(-1, keepdim=True), "last")
row("Max", [X((3, 4), spread), X((4,), spread), X((3, 1), spread)],
    lambda a, b, c: torch.maximum(torch.maximum(a, b), c), "three-broadcast")
row("Max", [X((3, 4))], lambda a: a, "single")
row("Min", [X((2, 3), spread), X((2, 3), spread)], torch.minimum, "two")

# -- Einsum ----------------------------------------------------------------------------------


def _einsum(eq: str):  # type: ignore[no-untyped-def]
    return lambda *xs: torch.einsum(eq, *xs)


for eq, shapes, name in [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)], "batched-matmul"),
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)], "attention-scores"),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (1, 5, 4, 2)], "ellipsis-broadcast"),
    ("ij->i", [(3, 4)], "row-sum"),
    ("ij,j->i", [(3, 4), (4,)], "matvec"),
    ("i,j->ij", [(3,), (4,)], "outer"),
    ("ij->ji", [(3, 4)], "transpose"),
    ("ij,kj", [(3, 4), (2, 4)], "implicit-output"),
    ("bij,jk->b", [(2, 3, 4), (4, 5)], "sum-to-batch"),
]:
    row("Einsum", [X(s) for s in shapes], _einsum(eq), name, attrs={"equation": eq})

# -- CumSum ----------------------------------------------------------------------------------


def _cumsum(x, dim, exclusive, reverse):  # type: ignore[no-untyped-def]
    if reverse:
        x = x.flip(dim)
    y = x.cumsum(dim)
    if exclusive:
        y = y - x
    return y.flip(dim) if reverse else y


for ex, rev in [(0, 0), (1, 0), (0, 1), (1, 1)]:
    row("CumSum", [X((3, 4)), C(np.array(1, dtype=np.int64))],
        lambda x, ex=ex, rev=rev: _cumsum(x, 1, ex, rev), f"ex{ex}-rev{rev}",
        attrs={"exclusive": ex, "reverse": rev})
row("CumSum", [X((3, 4)), C(np.array(-2, dtype=np.int32))], lambda x: x.cumsum(0),
    "int32-negative-axis")


# -- composites: what exporters emit around these rules --------------------------------------

def _decomposed_layer_norm(ins: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    """torch.onnx's layer norm at opset < 17: mean, centre, Pow 2, mean, +ε, Sqrt, Div."""
    x, s, b = ins
    c = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(v, n))
         for n, v in [("ax", i64(-1)), ("two", np.array(2.0)), ("eps", np.array(1e-5))]]
    return c + [
        helper.make_node("ReduceMean", [x, "ax"], ["mu"]),
        helper.make_node("Sub", [x, "mu"], ["xc"]),
        helper.make_node("Pow", ["xc", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "ax"], ["var"]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["xc", "sd"], ["xn"]),
        helper.make_node("Mul", ["xn", s], ["xs"]),
        helper.make_node("Add", ["xs", b], ["out"]),
    ], ["out"]


def _erf_gelu(ins: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    """BERT's GELU as exported: x·½·(1 + erf(x/√2))."""
    (x,) = ins
    c = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(np.array(v), n))
         for n, v in [("r2", math.sqrt(2.0)), ("one", 1.0), ("half", 0.5)]]
    return c + [helper.make_node("Div", [x, "r2"], ["d"]),
                helper.make_node("Erf", ["d"], ["e"]),
                helper.make_node("Add", ["e", "one"], ["e1"]),
                helper.make_node("Mul", [x, "e1"], ["m"]),
                helper.make_node("Mul", ["m", "half"], ["out"])], ["out"]


MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=bool)  # batch 2, 5 keys, padding


def _attention(ins: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    """Masked attention as BERT exports it: q·kᵀ·scale + Where(mask, 0, -big), Softmax,
    Where(IsNaN) guard, ·v."""
    q, k, v, mask = ins
    c = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(val, n))
         for n, val in [("scale", np.array(0.5)), ("zero", np.array(0.0)),
                        ("big", np.array(-1e4)), ("unsq", i64(1, 2))]]
    return c + [
        helper.make_node("Transpose", [k], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", [q, "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Unsqueeze", [mask, "unsq"], ["m4"]),
        helper.make_node("Where", ["m4", "zero", "big"], ["bias"]),
        helper.make_node("Add", ["ss", "bias"], ["z"]),
        helper.make_node("Softmax", ["z"], ["p"], axis=-1),
        helper.make_node("IsNaN", ["p"], ["nan"]),
        helper.make_node("Where", ["nan", "zero", "p"], ["pg"]),
        helper.make_node("MatMul", ["pg", v], ["out"]),
    ], ["out"]


def _torch_attention(q, k, v):  # type: ignore[no-untyped-def]
    bias = torch.where(torch.as_tensor(MASK)[:, None, None, :], 0.0, -1e4).to(q.dtype)
    return torch.softmax(q @ k.transpose(-1, -2) * 0.5 + bias, -1) @ v


row("LayerNormalization", [X((2, 3, 6)), X((6,)), X((6,))],
    lambda x, s, b: F.layer_norm(x, (6,), s, b, eps=1e-5), "decomposed-as-exported",
    nodes=_decomposed_layer_norm)
row("Erf", [X((3, 4))], lambda x: F.gelu(x), "gelu-as-exported", nodes=_erf_gelu)
row("Softmax", [X((2, 2, 3, 4)), X((2, 2, 5, 4)), X((2, 1, 5, 3)), C(MASK, runtime=True)],
    _torch_attention, "masked-attention-block", nodes=_attention)

IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS), "row ids must be unique"


# -- the checks ------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_finite_differences(case: Case) -> None:
    check_finite_differences(case)


@pytest.mark.parametrize("case", [c for c in CASES if c.torch is not None],
                         ids=[c.id for c in CASES if c.torch is not None])
def test_matches_torch(case: Case) -> None:
    check_torch(case)


@pytest.mark.parametrize("row_id", sorted(RMS_TORCH))
def test_rms_normalization_gradient_matches_torch_float64(row_id: str) -> None:
    """The rule differentiates in the input's precision, so its float64 gradient equals
    torch's float64 one, although the forward op itself normalizes in float32."""
    from gradcheck import autodiff_gradients, build

    case = next(c for c in CASES if c.id == row_id)
    shape, eps = RMS_TORCH[row_id]
    b = build(case)
    _, got = autodiff_gradients(b)
    x = torch.tensor(b.feeds["in0"], requires_grad=True)
    s = torch.tensor(b.feeds["in1"], requires_grad=True)
    y = F.rms_norm(x, shape, s, eps=E32(eps))
    (y * torch.as_tensor(b.weights[0])).sum().backward()
    np.testing.assert_allclose(got["in0"], x.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["in1"], s.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_onnxruntime_float32(case: Case) -> None:
    check_onnxruntime_float32(case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rule_graph_is_valid_standard_onnx(case: Case) -> None:
    check_standard_onnx(case)


def test_every_text_rule_has_a_row() -> None:
    mine = {op for op, fn in RULES.items() if fn.__module__.rsplit(".", 1)[-1] in TEXT_MODULES}
    assert mine, "rules/transformer.py registered nothing"
    missing = sorted(mine - {c.op for c in CASES})
    assert not missing, f"text rules without a row: {missing}"


# -- behaviour the table cannot show ---------------------------------------------------------

def _grad_of(nodes: list[onnx.NodeProto], x: np.ndarray, r: np.ndarray, out_shape: list[int],
             extra: list[onnx.TensorProto] = (),  # type: ignore[assignment]
             dynamic: bool = False) -> np.ndarray:
    """d Σ(out·r)/dx through edgetrain's rules, run by onnx.reference (``dynamic``: x's
    dims unknown to the rules)."""
    nodes = list(nodes) + [helper.make_node("Mul", ["out", "r"], ["w"]),
                           helper.make_node("ReduceSum", ["w"], ["loss"], keepdims=0)]
    shape = [None] * x.ndim if dynamic else list(x.shape)
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.DOUBLE,
                                                                     shape)],
                          [helper.make_tensor_value_info("loss", TensorProto.DOUBLE, [])],
                          initializer=[numpy_helper.from_array(r, "r"), *extra])
    m = onnx.shape_inference.infer_shapes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10),
        strict_mode=True)
    model, _ = differentiate(m, ["x"])
    return evaluator(model).run(["grad_x"], {"x": x})[0]


def test_reduce_max_ties_share_the_gradient_like_torch_amax() -> None:
    x = np.array([[1.0, 3.0, 3.0, 3.0], [2.0, 2.0, 0.5, -1.0]])
    r = np.array([2.0, -3.0])
    got = _grad_of([helper.make_node("ReduceMax", ["x", "axes"], ["out"], keepdims=0)], x, r,
                   [2], [numpy_helper.from_array(i64(1), "axes")])
    t = torch.tensor(x, requires_grad=True)
    (t.amax(1) * torch.tensor(r)).sum().backward()
    np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-15)
    assert got[0, 1] == pytest.approx(2.0 / 3.0)


def test_max_ties_share_the_gradient_like_torch_maximum() -> None:
    x = np.array([[1.0, 2.0, -1.0]])
    other = np.array([[1.0, 0.0, -1.0]])
    r = np.array([[1.0, 1.0, 4.0]])
    got = _grad_of([helper.make_node("Max", ["x", "other"], ["out"])], x, r, [1, 3],
                   [numpy_helper.from_array(other, "other")])
    t = torch.tensor(x, requires_grad=True)
    (torch.maximum(t, torch.tensor(other)) * torch.tensor(r)).sum().backward()
    np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-15)


def test_embedding_gradient_sums_repeated_tokens() -> None:
    """Each occurrence of a token adds its gradient row: the property LoRA-free fine-tuning of
    an embedding table relies on (a padded batch repeats token 0 many times)."""
    ids = np.array([[2, 2, 0, 2]], dtype=np.int64)
    w = np.arange(12, dtype=np.float64).reshape(4, 3)
    r = np.ones((1, 4, 3))
    nodes = [helper.make_node("Gather", ["x", "ids"], ["out"])]
    got = _grad_of(nodes, w, r, [1, 4, 3], [numpy_helper.from_array(ids, "ids")])
    np.testing.assert_array_equal(got, [[1, 1, 1], [0, 0, 0], [3, 3, 3], [0, 0, 0]])


def test_unsupported_variants_are_named() -> None:
    from edgetrain.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError, match=r"GatherND node .*batch_dims"):
        _grad_of([helper.make_node("GatherND", ["x", "i"], ["out"], batch_dims=1)],
                 np.ones((2, 3)), np.ones(2), [2],
                 [numpy_helper.from_array(np.array([[0], [2]], dtype=np.int64), "i")])
    with pytest.raises(UnsupportedOpError, match=r"Einsum node .*repeated subscript 'i'"):
        _grad_of([helper.make_node("Einsum", ["x"], ["out"], equation="ii->i")],
                 np.eye(3), np.ones(3), [3], dynamic=True)
