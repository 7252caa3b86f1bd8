"""Machinery of the per-op gradient table (tests/test_gradients.py).

A :class:`Case` describes a tiny ONNX graph around one op (float64 inputs). The graph's
outputs are reduced to a scalar loss ``Σ_j sum(out_j · R_j)`` with fixed random weights
``R_j``, edgetrain's autodiff appends the backward nodes, and ``onnx.reference`` runs the
result. The gradients are then compared with central finite differences of the same loss
(evaluated by ``onnx.reference`` on the forward graph alone, so they do not depend on any
rule) and with ``torch.autograd`` on the row's torch expression of the op.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgetrain import autodiff
from edgetrain.runtime._reference_ops import EXACT_OPS

Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class X:
    """A float64 input fed at run time. ``grad`` says whether the loss is differentiated with
    respect to it; ``transform`` maps N(0, 1) samples into the op's smooth domain."""

    shape: tuple[int, ...]
    transform: Transform | None = None
    grad: bool = True
    #: Shape declared in the graph (symbols like "N" hide sizes from the rules), if not shape.
    declared: tuple[int | str | None, ...] | None = None


@dataclass(frozen=True)
class C:
    """A fixed input (axes, shapes, bounds, conditions). An initializer, so rules see its
    value, unless ``runtime``: then it is a graph input and only its type and shape are known."""

    value: Any
    runtime: bool = False


Input = X | C | None  # None = an absent optional input ("")
NodesFn = Callable[[list[str]], tuple[list[onnx.NodeProto], list[str]]]


@dataclass(eq=False)  # hashed by identity: rows are cached by ``build``
class Case:
    """One row of the gradient table."""

    op: str
    inputs: Sequence[Input]
    attrs: dict[str, Any] = field(default_factory=dict)
    torch: Callable[..., Any] | None = None
    variant: str = ""
    n_out: int = 1
    #: Indices of the outputs that feed the loss (default: every float output).
    loss_outputs: Sequence[int] | None = None
    #: A graph of several nodes instead of the single op: names of the inputs -> nodes, outputs.
    nodes: NodesFn | None = None
    #: The torch expression also receives the ONNX forward outputs (``outs=``), e.g. a mask.
    torch_gets_outputs: bool = False
    fd_eps: float = 1e-6
    rtol: float = 1e-5
    atol: float = 1e-7
    xfail: str | None = None
    opset: int = 18

    @property
    def id(self) -> str:
        return f"{self.op}-{self.variant}" if self.variant else self.op

    @property
    def seed(self) -> int:
        return zlib.crc32(self.id.encode())


# -- input transforms --------------------------------------------------------------------------

def positive(x: np.ndarray) -> np.ndarray:
    """Into [0.5, ∞): for Log, Sqrt, a Pow base, divisors."""
    return np.abs(x) + 0.5


def away_from(*points: float, margin: float = 0.1) -> Transform:
    """Push samples at least ``margin`` away from the kinks at ``points``."""

    def move(x: np.ndarray) -> np.ndarray:
        x = x.copy()
        for p in points:
            near = np.abs(x - p) < margin
            x[near] = np.where(x[near] >= p, p + margin, p - margin)
        return x

    return move


def nonzero(x: np.ndarray) -> np.ndarray:
    return away_from(0.0, margin=0.3)(x)


def on_grid(x: np.ndarray) -> np.ndarray:
    """Multiples of 2⁻¹², so that x ± 2⁻¹⁰ stays exact in float32 (Cast rows)."""
    return np.round(x * 4096.0) / 4096.0


# -- graphs ------------------------------------------------------------------------------------

@dataclass
class Built:
    """The graphs of one case and the data they run on."""

    case: Case
    forward: onnx.ModelProto       # inputs -> loss (for finite differences)
    model: onnx.ModelProto         # inputs -> loss, grad_<name>... (autodiff appended)
    feeds: dict[str, np.ndarray]
    wrt: list[str]
    weights: list[np.ndarray]      # R_j, one per loss output
    outputs: list[str]             # the op's outputs that feed the loss
    outs: list[np.ndarray]         # their forward values
    n_backward: int                # nodes the autodiff emitted


def _names(case: Case) -> list[str]:
    return [f"in{i}" if spec is not None else "" for i, spec in enumerate(case.inputs)]


def _make_feeds(case: Case) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(case.seed)
    feeds: dict[str, np.ndarray] = {}
    for name, spec in zip(_names(case), case.inputs, strict=True):
        if isinstance(spec, X):
            v = np.asarray(rng.standard_normal(spec.shape), dtype=np.float64)
            feeds[name] = np.asarray(spec.transform(v) if spec.transform else v,
                                     dtype=np.float64)
        elif isinstance(spec, C) and spec.runtime:
            feeds[name] = np.asarray(spec.value)
    return feeds


def _op_nodes(case: Case) -> tuple[list[onnx.NodeProto], list[str]]:
    ins = _names(case)
    while ins and ins[-1] == "":
        ins.pop()
    if case.nodes is not None:
        return case.nodes(ins)
    outs = [f"out{j}" for j in range(case.n_out)]
    return [helper.make_node(case.op, ins, outs, name=f"{case.op.lower()}_under_test",
                             **case.attrs)], outs


def _graph(case: Case, nodes: list[onnx.NodeProto], outputs: list[tuple[str, int]],
           extra_inits: Sequence[onnx.TensorProto] = (),
           value_info: Sequence[onnx.ValueInfoProto] = ()) -> onnx.ModelProto:
    inputs, inits = [], list(extra_inits)
    for name, spec in zip(_names(case), case.inputs, strict=True):
        if isinstance(spec, X):
            shape = spec.declared if spec.declared is not None else spec.shape
            inputs.append(helper.make_tensor_value_info(name, TensorProto.DOUBLE, shape))
        elif isinstance(spec, C):
            arr = np.asarray(spec.value)
            if spec.runtime:
                inputs.append(helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape))
            else:
                inits.append(numpy_helper.from_array(arr, name))
    g = helper.make_graph(nodes, "case", inputs,
                          [helper.make_tensor_value_info(n, t, [] if n == "loss" else None)
                           for n, t in outputs],
                          initializer=inits, value_info=value_info)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", case.opset)],
                             ir_version=10)


@cache
def build(case: Case) -> Built:
    """Forward graph, loss, autodiff and the inputs of ``case`` (cached per row)."""
    feeds = _make_feeds(case)
    nodes, outs = _op_nodes(case)
    # Run the op alone once: the loss weights need the outputs' shapes and types.
    probe = _graph(case, nodes, [(o, TensorProto.UNDEFINED) for o in outs])
    values = evaluator(probe).run(outs, feeds)
    # In the types the schema gives them (onnx.reference returns LayerNormalization's
    # statistics in float64 where they are float32).
    inferred = onnx.shape_inference.infer_shapes(probe).graph
    kinds = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.value_info, *inferred.output]}
    values = [np.asarray(v).astype(helper.tensor_dtype_to_np_dtype(kinds[o]))
              if kinds.get(o) else v for o, v in zip(outs, values)]
    chosen = (list(case.loss_outputs) if case.loss_outputs is not None else
              [j for j, v in enumerate(values) if np.asarray(v).dtype.kind == "f"])
    rng = np.random.default_rng(case.seed + 1)
    weights, loss_nodes, inits, parts = [], [], [], []
    loss_type = helper.np_dtype_to_tensor_dtype(np.asarray(values[chosen[0]]).dtype)
    for j in chosen:
        v = np.asarray(values[j])
        w = rng.standard_normal(v.shape).astype(v.dtype)
        weights.append(w)
        inits.append(numpy_helper.from_array(w, f"R{j}"))
        loss_nodes.append(helper.make_node("Mul", [outs[j], f"R{j}"], [f"wo{j}"]))
        loss_nodes.append(helper.make_node("ReduceSum", [f"wo{j}"], [f"part{j}"], keepdims=0))
        parts.append(f"part{j}")
        if v.dtype != np.asarray(values[chosen[0]]).dtype:  # a float32 statistics output
            loss_nodes.append(helper.make_node("Cast", [parts[-1]], [f"cpart{j}"], to=loss_type))
            parts[-1] = f"cpart{j}"
    if len(parts) == 1:
        loss_nodes.append(helper.make_node("Identity", parts, ["loss"]))
    else:
        loss_nodes.append(helper.make_node("Sum", parts, ["loss"]))
    forward = _graph(case, nodes + loss_nodes, [("loss", loss_type)], inits)
    # Outputs ONNX's inference leaves untyped (GroupNormalization-21 has none) as they came.
    typed = {v.name for v in onnx.shape_inference.infer_shapes(forward).graph.value_info}
    declared = [helper.make_tensor_value_info(
        o, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.asarray(v).shape)
        for o, v in zip(outs, values) if o not in typed]
    if declared:
        forward = _graph(case, nodes + loss_nodes, [("loss", loss_type)], inits, declared)
    onnx.checker.check_model(forward, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(forward, strict_mode=True, data_prop=True)

    wrt = [n for n, s in zip(_names(case), case.inputs, strict=True) if isinstance(s, X) and s.grad]
    model, n_backward = differentiate(inferred, wrt)
    return Built(case, forward, model, feeds, wrt, weights, [outs[j] for j in chosen],
                 [np.asarray(values[j]) for j in chosen], n_backward)


def differentiate(inferred: onnx.ModelProto, wrt: Sequence[str],
                  loss: str = "loss") -> tuple[onnx.ModelProto, int]:
    """Append edgetrain's backward of ``loss`` w.r.t. ``wrt``; outputs ``loss, grad_<w>…``."""
    return autodiff.differentiate(inferred, wrt, loss)


# -- the three ways to get a gradient ----------------------------------------------------------

def evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    """onnx.reference with exact float64 kernels where its own round to float32 (Erf, Gelu)."""
    return ReferenceEvaluator(model, new_ops=EXACT_OPS)


def autodiff_gradients(b: Built) -> tuple[float, dict[str, np.ndarray]]:
    names = [o.name for o in b.model.graph.output]
    res = evaluator(b.model).run(None, b.feeds)
    got = dict(zip(names, res, strict=True))
    grads = {w: np.asarray(got[f"grad_{w}"]) if f"grad_{w}" in got else None for w in b.wrt}
    return float(got["loss"]), grads  # type: ignore[return-value]


def finite_differences(b: Built) -> dict[str, np.ndarray]:
    """Central differences of the loss, one element at a time (float64)."""
    sess = evaluator(b.forward)
    h = b.case.fd_eps
    out = {}
    for w in b.wrt:
        base = b.feeds[w]
        g = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            feeds = dict(b.feeds)
            plus, minus = base.copy(), base.copy()
            plus[idx] += h
            minus[idx] -= h
            feeds[w] = plus
            lp = float(sess.run(["loss"], feeds)[0])
            feeds[w] = minus
            lm = float(sess.run(["loss"], feeds)[0])
            g[idx] = (lp - lm) / (2 * h)
        out[w] = g
    return out


def torch_gradients(b: Built) -> tuple[float, dict[str, np.ndarray]]:
    import torch

    case = b.case
    assert case.torch is not None
    tensors = []
    for name, spec in zip(_names(case), case.inputs, strict=True):
        if isinstance(spec, X):
            tensors.append(torch.tensor(b.feeds[name], dtype=torch.float64,
                                        requires_grad=spec.grad))
    kw = {"outs": b.outs} if case.torch_gets_outputs else {}
    res = case.torch(*tensors, **kw)
    res = list(res) if isinstance(res, (tuple, list)) else [res]
    chosen = (list(case.loss_outputs) if case.loss_outputs is not None
              else list(range(len(b.outputs))))
    loss = sum((res[j] * torch.as_tensor(w)).sum() for j, w in zip(chosen, b.weights,
                                                                   strict=True))
    wrt_t = [t for t, s in zip(tensors, (s for s in case.inputs if isinstance(s, X)),
                               strict=True) if s.grad]
    gs = torch.autograd.grad(loss, wrt_t, allow_unused=True)
    grads = {w: (g.detach().numpy() if g is not None else np.zeros(b.feeds[w].shape))
             for w, g in zip(b.wrt, gs, strict=True)}
    return float(loss.detach()), grads


def assert_close(got: np.ndarray | None, want: np.ndarray, rtol: float, atol: float,
                 what: str) -> None:
    assert got is not None, f"{what}: autodiff produced no gradient"
    assert got.shape == want.shape, f"{what}: gradient shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


# -- the checks every table runs -----------------------------------------------------------------

def params(cases: Sequence[Case]) -> list[Any]:
    """pytest params of a table, its xfail rows marked (strict)."""
    import pytest

    return [pytest.param(c, id=c.id, marks=pytest.mark.xfail(reason=c.xfail, strict=True))
            if c.xfail else pytest.param(c, id=c.id) for c in cases]


def check_finite_differences(case: Case) -> None:
    b = build(case)
    _, got = autodiff_gradients(b)
    want = finite_differences(b)
    for w in b.wrt:
        assert_close(got[w], want[w], case.rtol, case.atol,
                     f"{case.id}: d loss/d {w} vs finite differences (seed={case.seed})")


def check_torch(case: Case) -> None:
    b = build(case)
    loss, got = autodiff_gradients(b)
    tloss, want = torch_gradients(b)
    np.testing.assert_allclose(loss, tloss, rtol=1e-12, atol=1e-12, err_msg=(
        f"{case.id}: the row's torch expression computes another function (seed={case.seed})"))
    for w in b.wrt:
        assert_close(got[w], want[w], 1e-9, 1e-12,
                     f"{case.id}: d loss/d {w} vs torch.autograd (seed={case.seed})")


def check_standard_onnx(case: Case) -> None:
    model = build(case).model
    onnx.checker.check_model(model, full_check=True)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}


def to_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph in float32 (inputs, initializers, constants, value types), subgraphs
    (If branches, Loop and Scan bodies) too."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _graph_to_float32(m.graph)
    return m


def _graph_to_float32(g: onnx.GraphProto) -> None:
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.DOUBLE:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.DOUBLE:
            g.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(t).astype(np.float32), t.name))
    for n in g.node:
        for a in n.attribute:
            if a.name == "to" and a.i == TensorProto.DOUBLE:
                a.i = TensorProto.FLOAT
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.DOUBLE:
                a.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
            if a.type == onnx.AttributeProto.GRAPH:
                _graph_to_float32(a.g)


def check_onnxruntime_float32(case: Case) -> None:
    """onnxruntime runs the backward graph emitted for the float32 forward (rules may choose
    float32-only kernels) and agrees with the float64 gradient."""
    import onnxruntime as ort

    b = build(case)
    _, want = autodiff_gradients(b)
    forward32 = onnx.shape_inference.infer_shapes(to_float32(b.forward), strict_mode=True,
                                                  data_prop=True)
    m32, _ = differentiate(forward32, b.wrt)
    sess = ort.InferenceSession(m32.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {k: (v.astype(np.float32) if v.dtype == np.float64 else v)
             for k, v in b.feeds.items()}
    names = [o.name for o in m32.graph.output]
    got = dict(zip(names, sess.run(None, feeds), strict=True))
    for w in b.wrt:
        scale = max(float(np.abs(want[w]).max()), 1.0)
        np.testing.assert_allclose(got[f"grad_{w}"], want[w], rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=f"{case.id}: onnxruntime float32 d/d {w} "
                                           f"(seed={case.seed})")


def table_tests(cases: Sequence[Case], not_on_onnxruntime: dict[str, str] | None = None
                ) -> tuple[Any, Any, Any, Any]:
    """The four checks of a gradient table as pytest test functions, for a table module to
    bind as ``test_matches_finite_differences, test_matches_torch,
    test_onnxruntime_float32, test_backward_is_standard_onnx = table_tests(CASES)``:
    float64 finite differences, torch.autograd (rows with a torch expression), onnxruntime
    in float32 (except rows whose forward onnxruntime cannot run: ``{row id: why}``), and a
    backward graph of standard ONNX ops."""
    import pytest

    rows = params(cases)
    skipped = not_on_onnxruntime or {}
    on_ort = [pytest.param(*p.values, id=p.id, marks=(*p.marks, pytest.mark.skip(
        reason=f"onnxruntime cannot run the forward: {skipped[c.id]}")))
              if c.id in skipped else p for p, c in zip(rows, cases, strict=True)]
    with_torch = [p for p, c in zip(rows, cases, strict=True) if c.torch is not None]

    @pytest.mark.parametrize("case", rows)
    def test_matches_finite_differences(case: Case) -> None:
        check_finite_differences(case)

    @pytest.mark.parametrize("case", with_torch)
    def test_matches_torch(case: Case) -> None:
        check_torch(case)

    @pytest.mark.parametrize("case", on_ort)
    def test_onnxruntime_float32(case: Case) -> None:
        check_onnxruntime_float32(case)

    @pytest.mark.parametrize("case", rows)
    def test_backward_is_standard_onnx(case: Case) -> None:
        check_standard_onnx(case)

    return (test_matches_finite_differences, test_matches_torch, test_onnxruntime_float32,
            test_backward_is_standard_onnx)
