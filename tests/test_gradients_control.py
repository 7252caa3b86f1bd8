"""Gradient rows of the control-flow ops: If, Loop, Scan.

Each row is a small graph around one control-flow node whose subgraphs read outer values
(weights used only inside a branch or a loop body) as well as the node's inputs; it is checked
like every rule's row: float64 finite differences, torch.autograd on the same computation
written as Python control flow, onnxruntime in float32, and a standard-ONNX backward graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgetrain.autodiff import RULES
from edgetrain.errors import UnsupportedOpError
from gradcheck import (
    C,
    Case,
    X,
    build,
    check_finite_differences,
    check_onnxruntime_float32,
    check_standard_onnx,
    check_torch,
    params,
)

D, I64, B = TensorProto.DOUBLE, TensorProto.INT64, TensorProto.BOOL
CASES: list[Case] = []


def vi(name: str, dtype: int = D, shape: Sequence[int | str | None] | None = None
       ) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def graph(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
          outputs: list[onnx.ValueInfoProto], name: str = "body") -> onnx.GraphProto:
    return helper.make_graph(nodes, name, inputs, outputs)


def n(op: str, ins: list[str], outs: list[str], **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, ins, outs, **attrs)


def single(op: str, make: Callable[[list[str]], onnx.NodeProto]
           ) -> Callable[[list[str]], tuple[list[onnx.NodeProto], list[str]]]:
    """A graph of one ``op`` node named ``<op>_under_test`` (outputs out0, out1, …)."""

    def nodes(ins: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
        node = make(ins)
        node.name = f"{op.lower()}_under_test"
        return [node], list(node.output)

    return nodes


def row(op: str, variant: str, inputs: list, make: Callable[[list[str]], onnx.NodeProto],
        torch_fn: Callable[..., object] | None, **kw: object) -> None:
    CASES.append(Case(op, inputs, torch=torch_fn, variant=variant,
                      nodes=single(op, make), **kw))  # type: ignore[arg-type]


def i64(v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


# -- If ------------------------------------------------------------------------------------------

def if_tanh_or_sigmoid(ins: list[str]) -> onnx.NodeProto:
    """then: tanh(x·w) (reads x and w); else: sigmoid(exp(x)) (reads x only)."""
    x, w, c = ins
    then = graph([n("Mul", [x, w], ["t0"]), n("Tanh", ["t0"], ["t1"])], [], [vi("t1")], "then")
    other = graph([n("Exp", [x], ["e0"]), n("Sigmoid", ["e0"], ["e1"])], [], [vi("e1")], "else")
    return n("If", [c], ["out0"], then_branch=then, else_branch=other)


for cond in (True, False):
    row("If", f"then-reads-w-{cond}", [X((3, 4)), X((4,)), C(np.array(cond), runtime=True)],
        if_tanh_or_sigmoid,
        (lambda x, w: torch.tanh(x * w)) if cond else (lambda x, w: torch.sigmoid(torch.exp(x))))


def if_nested(ins: list[str]) -> onnx.NodeProto:
    """then: an If on c2 inside (w·x or x/w), times x; else: x + w (two outputs each)."""
    x, w, c1, c2 = ins
    inner = n("If", [c2], ["i0"],
              then_branch=graph([n("Mul", [w, x], ["a0"])], [], [vi("a0")], "inner_then"),
              else_branch=graph([n("Div", [x, w], ["b0"])], [], [vi("b0")], "inner_else"))
    then = graph([inner, n("Mul", ["i0", x], ["t0"]), n("Relu", [w], ["t1"])], [],
                 [vi("t0"), vi("t1")], "then")
    other = graph([n("Add", [x, w], ["e0"]), n("Neg", [w], ["e1"])], [], [vi("e0"), vi("e1")],
                  "else")
    return n("If", [c1], ["out0", "out1"], then_branch=then, else_branch=other)


for c1, c2 in ((True, True), (True, False), (False, True)):
    row("If", f"nested-{c1}-{c2}",
        [X((2, 3)), X((3,), lambda v: np.abs(v) + 0.5), C(np.array(c1), runtime=True),
         C(np.array(c2), runtime=True)], if_nested,
        (lambda x, w, a=c2: ((w * x if a else x / w) * x, torch.relu(w))) if c1 else
        (lambda x, w: (x + w, -w)))
row("If", "one-output-in-the-loss", [X((2, 3)), X((3,), lambda v: np.abs(v) + 0.5),
                                     C(np.array(True), runtime=True),
                                     C(np.array(False), runtime=True)], if_nested,
    lambda x, w: (x / w * x, torch.relu(w)), loss_outputs=[1])


def if_on_data(ins: list[str]) -> list[onnx.NodeProto]:
    """The condition computed from the data (a step function of it: no gradient)."""
    x, w = ins
    then = graph([n("Mul", [x, w], ["t0"])], [], [vi("t0", D, [2, 3])], "then")
    other = graph([n("Sub", [x, w], ["e0"])], [], [vi("e0", D, [2, 3])], "else")
    return [n("Constant", [], ["zero"], value=helper.make_tensor("z", D, [], [0.0])),
            n("ReduceSum", [x], ["s"], keepdims=0), n("Greater", ["s", "zero"], ["c"]),
            n("If", ["c"], ["out0"], then_branch=then, else_branch=other, name="if_under_test")]


CASES.append(Case("If", [X((2, 3), lambda v: v + 0.5), X((3,))], variant="condition-from-data",
                  nodes=lambda ins: (if_on_data(ins), ["out0"]),
                  torch=lambda x, w: x * w if float(x.detach().sum()) > 0 else x - w))


def if_on_constant(ins: list[str]) -> onnx.NodeProto:
    """then: x·w; else: tanh(x @ v) @ vᵀ (its backward reads tanh's output [2, 4]). The
    condition is an initializer: onnxruntime folds the If to its then branch."""
    x, w, v, c = ins
    then = graph([n("Mul", [x, w], ["t0"])], [], [vi("t0")], "then")
    other = graph([n("MatMul", [x, v], ["e0"]), n("Tanh", ["e0"], ["e1"]),
                   n("Transpose", [v], ["vt"]), n("MatMul", ["e1", "vt"], ["e2"])], [],
                  [vi("e2")], "else")
    return n("If", [c], ["out0"], then_branch=then, else_branch=other)


# The backward of a branch that never runs is left out: a stash from it would be the other
# branch's empty filler once onnxruntime folds the forward If, and the backward If's branch
# reading it would fail onnxruntime's shape inference when the session loads.
row("If", "constant-condition", [X((2, 3)), X((3,)), X((3, 4)), C(np.array(True))],
    if_on_constant, lambda x, w, v: x * w)


# -- Loop ----------------------------------------------------------------------------------------

def loop_tanh(ins: list[str]) -> onnx.NodeProto:
    """s ← tanh(s·W) for M iterations; every iteration also outputs s²."""
    m, c, s0, w = ins
    body = graph([n("MatMul", ["s", w], ["sw"]), n("Tanh", ["sw"], ["s2"]),
                  n("Mul", ["s2", "s2"], ["y"]), n("Identity", ["cin"], ["cout"])],
                 [vi("i", I64, []), vi("cin", B, []), vi("s", D, [2, 3])],
                 [vi("cout", B, []), vi("s2", D, [2, 3]), vi("y", D, [2, 3])])
    return n("Loop", [m, c, s0], ["out0", "out1"], body=body)


def undeclared(node: onnx.NodeProto) -> onnx.NodeProto:
    """``node`` with the shapes of its body's float values left out (as some exporters
    write them)."""
    body = next(a.g for a in node.attribute if a.name == "body")
    for v in list(body.input) + list(body.output):
        if v.type.tensor_type.elem_type == D:
            v.type.tensor_type.ClearField("shape")
    return node


def torch_loop_tanh(steps: int) -> Callable[..., object]:
    def fn(s: torch.Tensor, w: torch.Tensor) -> object:
        ys = []
        for _ in range(steps):
            s = torch.tanh(s @ w)
            ys.append(s * s)
        return s, (torch.stack(ys) if ys else None)

    return fn


row("Loop", "trip-count-constant", [C(i64(3)), C(np.array(True)), X((2, 3)), X((3, 3))],
    loop_tanh, torch_loop_tanh(3))
row("Loop", "trip-count-at-run-time", [C(i64(4), runtime=True), C(np.array(True)), X((2, 3)),
                                       X((3, 3))], loop_tanh, torch_loop_tanh(4))
row("Loop", "body-shapes-undeclared", [C(i64(3)), C(np.array(True)), X((2, 3)), X((3, 3))],
    lambda ins: undeclared(loop_tanh(ins)), torch_loop_tanh(3))
row("Loop", "no-iteration", [C(i64(0), runtime=True), C(np.array(True)), X((2, 3)), X((3, 3))],
    loop_tanh, lambda s, w: torch_loop_tanh(0)(s, w)[0] + 0 * w.sum(), loss_outputs=[0])
row("Loop", "weight-only", [C(i64(3)), C(np.array(True)), X((2, 3), grad=False), X((3, 3))],
    loop_tanh, torch_loop_tanh(3))
row("Loop", "final-state-only", [C(i64(3)), C(np.array(True)), X((2, 3)), X((3, 3))],
    loop_tanh, torch_loop_tanh(3), loss_outputs=[0])


def loop_while(ins: list[str]) -> onnx.NodeProto:
    """s ← s·w + 0.5 while sum(s) < 20 (at most 10 times): the data decide the count."""
    m, c, s0, w = ins
    body = graph([n("Constant", [], ["half"], value=helper.make_tensor("h", D, [], [0.5])),
                  n("Constant", [], ["limit"], value=helper.make_tensor("l", D, [], [20.0])),
                  n("Mul", ["s", w], ["sw"]), n("Add", ["sw", "half"], ["s2"]),
                  n("ReduceSum", ["s2"], ["t"], keepdims=0), n("Less", ["t", "limit"], ["cout"])],
                 [vi("i", I64, []), vi("cin", B, []), vi("s", D, [3])],
                 [vi("cout", B, []), vi("s2", D, [3])])
    return n("Loop", [m, c, s0], ["out0"], body=body)


def torch_while(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    for _ in range(10):
        s = s * w + 0.5
        if float(s.detach().sum()) >= 20.0:
            break
    return s


row("Loop", "data-dependent-condition",
    [C(i64(10)), C(np.array(True)), X((3,), lambda v: np.abs(v) + 1.0),
     X((3,), lambda v: 1.2 + 0.1 * v)], loop_while, torch_while)


def loop_rows(ins: list[str]) -> onnx.NodeProto:
    """s ← s + x[i]·w: each iteration reads its row of an outer tensor (Gather by i)."""
    m, s0, x, w = ins
    body = graph([n("Gather", [x, "i"], ["row"], axis=0), n("Mul", ["row", w], ["rw"]),
                  n("Add", ["s", "rw"], ["s2"]), n("Identity", ["cin"], ["cout"]),
                  n("Tanh", ["s2"], ["y"])],
                 [vi("i", I64, []), vi("cin", B, []), vi("s", D, [3])],
                 [vi("cout", B, []), vi("s2", D, [3]), vi("y", D, [3])])
    return n("Loop", [m, "", s0], ["out0", "out1"], body=body)


def torch_rows(s: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> object:
    ys = []
    for i in range(x.shape[0]):
        s = s + x[i] * w
        ys.append(torch.tanh(s))
    return s, torch.stack(ys)


row("Loop", "iteration-number-no-condition", [C(i64(4)), X((3,)), X((4, 3)), X((3,))],
    loop_rows, torch_rows)


def loop_if(ins: list[str]) -> onnx.NodeProto:
    """An If inside the body, on the iteration number: s ← s·w for i < 2, else s + w."""
    m, c, s0, w = ins
    branch = n("If", ["early"], ["s2"],
               then_branch=graph([n("Mul", ["s", w], ["a"])], [], [vi("a", D, [3])], "then"),
               else_branch=graph([n("Add", ["s", w], ["b"]), n("Tanh", ["b"], ["bt"])], [],
                                 [vi("bt", D, [3])], "else"))
    body = graph([n("Less", ["i", "two"], ["early"]), branch, n("Identity", ["cin"], ["cout"])],
                 [vi("i", I64, []), vi("cin", B, []), vi("s", D, [3])],
                 [vi("cout", B, []), vi("s2", D, [3])])
    body.node.insert(0, helper.make_node("Constant", [], ["two"], value=helper.make_tensor(
        "t", I64, [], [2])))
    return n("Loop", [m, c, s0], ["out0"], body=body)


def torch_loop_if(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    for i in range(4):
        s = s * w if i < 2 else torch.tanh(s + w)
    return s


row("Loop", "if-in-body", [C(i64(4)), C(np.array(True)), X((3,)), X((3,))], loop_if,
    torch_loop_if)


def loop_if_stashes(ins: list[str]) -> onnx.NodeProto:
    """An If in the body whose branches both keep an inner value for the gradient, on a
    condition that changes between iterations: s ← tanh(s)·w for i < 2, else sigmoid(s) + w."""
    m, c, s0, w = ins
    branch = n("If", ["early"], ["s2"],
               then_branch=graph([n("Tanh", ["s"], ["t"]), n("Mul", ["t", w], ["a"])], [],
                                 [vi("a", D, [3])], "then"),
               else_branch=graph([n("Sigmoid", ["s"], ["e"]), n("Add", ["e", w], ["b"])], [],
                                 [vi("b", D, [3])], "else"))
    body = graph([n("Constant", [], ["two"], value=helper.make_tensor("t", I64, [], [2])),
                  n("Less", ["i", "two"], ["early"]), branch, n("Identity", ["cin"], ["cout"])],
                 [vi("i", I64, []), vi("cin", B, []), vi("s", D, [3])],
                 [vi("cout", B, []), vi("s2", D, [3])])
    return n("Loop", [m, c, s0], ["out0"], body=body)


def torch_loop_if_stashes(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    for i in range(4):
        s = torch.tanh(s) * w if i < 2 else torch.sigmoid(s) + w
    return s


row("Loop", "if-in-body-keeping-values", [C(i64(4)), C(np.array(True)), X((3,)), X((3,))],
    loop_if_stashes, torch_loop_if_stashes)


def loop_nested(ins: list[str]) -> onnx.NodeProto:
    """A Loop in a Loop: 2 outer iterations of 3 inner ones of s ← tanh(s·w + v)."""
    m, c, s0, w, v = ins
    inner_body = graph([n("Mul", ["t", w], ["tw"]), n("Add", ["tw", v], ["tv"]),
                        n("Tanh", ["tv"], ["t2"]), n("Identity", ["ci"], ["co"])],
                       [vi("j", I64, []), vi("ci", B, []), vi("t", D, [3])],
                       [vi("co", B, []), vi("t2", D, [3])], "inner")
    body = graph([n("Loop", ["three", "", "s"], ["s2"], body=inner_body),
                  n("Mul", ["s2", v], ["y"]), n("Identity", ["cin"], ["cout"])],
                 [vi("i", I64, []), vi("cin", B, []), vi("s", D, [3])],
                 [vi("cout", B, []), vi("s2", D, [3]), vi("y", D, [3])])
    body.node.insert(0, helper.make_node("Constant", [], ["three"], value=helper.make_tensor(
        "k", I64, [], [3])))
    return n("Loop", [m, c, s0], ["out0", "out1"], body=body)


def torch_nested(s: torch.Tensor, w: torch.Tensor, v: torch.Tensor) -> object:
    ys = []
    for _ in range(2):
        for _ in range(3):
            s = torch.tanh(s * w + v)
        ys.append(s * v)
    return s, torch.stack(ys)


row("Loop", "loop-in-body", [C(i64(2)), C(np.array(True)), X((3,)), X((3,)), X((3,))],
    loop_nested, torch_nested)


def loop_add(ins: list[str]) -> onnx.NodeProto:
    """s ← s + w: the backward needs no value of the forward, only the iteration count."""
    m, s0, w = ins
    body = graph([n("Add", ["s", w], ["s2"]), n("Identity", ["cin"], ["cout"])],
                 [vi("i", I64, []), vi("cin", B, []), vi("s", D, [3])],
                 [vi("cout", B, []), vi("s2", D, [3])])
    return n("Loop", [m, "", s0], ["out0"], body=body)


row("Loop", "nothing-to-keep", [C(i64(5), runtime=True), X((3,)), X((3,))], loop_add,
    lambda s, w: s + 5 * w)


def loop_no_state(ins: list[str]) -> onnx.NodeProto:
    """No carried value: every iteration outputs w·(i + 1)."""
    m, w = ins
    body = graph([n("Add", ["i", "one"], ["i1"]), n("Cast", ["i1"], ["f"], to=D),
                  n("Mul", [w, "f"], ["y"]), n("Identity", ["cin"], ["cout"])],
                 [vi("i", I64, []), vi("cin", B, [])], [vi("cout", B, []), vi("y", D, [2])])
    body.node.insert(0, helper.make_node("Constant", [], ["one"], value=helper.make_tensor(
        "o", I64, [], [1])))
    return n("Loop", [m, ""], ["out0"], body=body)


row("Loop", "scan-outputs-only", [C(i64(3)), X((2,))], loop_no_state,
    lambda w: torch.stack([w * (i + 1) for i in range(3)]))


# -- Scan ----------------------------------------------------------------------------------------

def scan_rnn(ins: list[str], **attrs: object) -> onnx.NodeProto:
    """h ← tanh(x_t·W + h·R) over the slices x_t; every h is also a scan output."""
    h0, x, w, r = ins
    body = graph([n("MatMul", ["xt", w], ["xw"]), n("MatMul", ["h", r], ["hr"]),
                  n("Add", ["xw", "hr"], ["a"]), n("Tanh", ["a"], ["h2"]),
                  n("Identity", ["h2"], ["y"])],
                 [vi("h", D, [2, 3]), vi("xt", D, [2, 4])],
                 [vi("h2", D, [2, 3]), vi("y", D, [2, 3])])
    return n("Scan", [h0, x], ["out0", "out1"], body=body, num_scan_inputs=1, **attrs)


def torch_rnn(reverse: bool = False, batch_first: bool = False) -> Callable[..., object]:
    def fn(h: torch.Tensor, x: torch.Tensor, w: torch.Tensor, r: torch.Tensor) -> object:
        xs = x.transpose(0, 1) if batch_first else x
        steps = range(xs.shape[0] - 1, -1, -1) if reverse else range(xs.shape[0])
        ys = []
        for t in steps:
            h = torch.tanh(xs[t] @ w + h @ r)
            ys.append(h)
        y = torch.stack(ys[::-1] if reverse else ys)
        return h, (y.transpose(0, 1) if batch_first else y)

    return fn


row("Scan", "rnn", [X((2, 3)), X((4, 2, 4)), X((4, 3)), X((3, 3))], scan_rnn, torch_rnn())
row("Scan", "body-shapes-undeclared", [X((2, 3)), X((2, 4, 4)), X((4, 3)), X((3, 3))],
    lambda ins: undeclared(scan_rnn(ins, scan_input_axes=[1], scan_input_directions=[1],
                                    scan_output_axes=[1], scan_output_directions=[1])),
    torch_rnn(reverse=True, batch_first=True))
row("Scan", "rnn-weights-only",
    [X((2, 3), grad=False), X((4, 2, 4), grad=False), X((4, 3)), X((3, 3))], scan_rnn,
    torch_rnn())
row("Scan", "reverse-and-axis-1", [X((2, 3)), X((2, 4, 4)), X((4, 3)), X((3, 3))],
    lambda ins: scan_rnn(ins, scan_input_axes=[1], scan_input_directions=[1],
                         scan_output_axes=[1], scan_output_directions=[1]),
    torch_rnn(reverse=True, batch_first=True))


def scan_two(ins: list[str]) -> onnx.NodeProto:
    """Two scanned inputs, one reversed, a state that the body also reads from outside
    (the initial value h0 itself) and an integer counter state."""
    h0, k0, x, z = ins
    body = graph([n("Mul", ["xt", "zt"], ["xz"]), n("Add", ["h", "xz"], ["a"]),
                  n("Mul", ["a", h0], ["h2"]), n("Add", ["k", "one"], ["k2"]),
                  n("Sigmoid", ["h2"], ["y"])],
                 [vi("h", D, [3]), vi("k", I64, []), vi("xt", D, [3]), vi("zt", D, [3])],
                 [vi("h2", D, [3]), vi("k2", I64, []), vi("y", D, [3])])
    body.node.insert(0, helper.make_node("Constant", [], ["one"], value=helper.make_tensor(
        "o", I64, [], [1])))
    return n("Scan", [h0, k0, x, z], ["out0", "out1", "out2"], body=body, num_scan_inputs=2,
             scan_input_directions=[0, 1])


def torch_two(h0: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> object:
    h, ys = h0, []
    for t in range(x.shape[0]):
        h = (h + x[t] * z[x.shape[0] - 1 - t]) * h0
        ys.append(torch.sigmoid(h))
    return h, None, torch.stack(ys)  # the integer counter is not in the loss


row("Scan", "two-inputs-state-read-from-outside",
    [X((3,)), C(i64(0)), X((5, 3)), X((5, 3))], scan_two, torch_two, loss_outputs=[0, 2])

IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS), "row ids must be unique"


# -- the checks --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", params(CASES))
def test_matches_finite_differences(case: Case) -> None:
    check_finite_differences(case)


@pytest.mark.parametrize("case", params(CASES))
def test_matches_torch(case: Case) -> None:
    check_torch(case)


@pytest.mark.parametrize("case", params(CASES))
def test_onnxruntime_float32(case: Case) -> None:
    check_onnxruntime_float32(case)


@pytest.mark.parametrize("case", params(CASES))
def test_backward_is_standard_onnx(case: Case) -> None:
    check_standard_onnx(case)


def test_data_dependent_row_stops_before_its_trip_count() -> None:
    """The while row really ends on its condition (else it would test a plain count)."""
    case = next(c for c in CASES if c.id == "Loop-data-dependent-condition")
    b = build(case)
    s, w = b.feeds["in2"], b.feeds["in3"]
    steps = 0
    while steps < 10:
        s, steps = s * w + 0.5, steps + 1
        if s.sum() >= 20.0:
            break
    assert 1 < steps < 10, steps
    np.testing.assert_allclose(b.outs[0], s, rtol=1e-12)


def _refusal(case: Case) -> str:
    """The error of differentiating ``case`` (the forward alone is fine: ``build`` checks it)."""
    with pytest.raises(UnsupportedOpError) as e:
        build(case)
    return str(e.value)


def test_growing_carried_value_is_refused() -> None:
    """A Loop that appends to a carried tensor has no one shape per iteration to stash."""

    def grow(ins: list[str]) -> onnx.NodeProto:
        m, c, s0 = ins
        body = graph([n("Concat", ["s", "s"], ["s2"], axis=0), n("Identity", ["cin"], ["cout"])],
                     [vi("i", I64, []), vi("cin", B, []), vi("s", D, [2])],
                     [vi("cout", B, []), vi("s2", D, [4])])
        return n("Loop", [m, c, s0], ["out0"], body=body)

    msg = _refusal(Case("Loop", [C(i64(1)), C(np.array(True)), X((2,))], variant="grow",
                        nodes=single("Loop", grow)))
    assert "Loop node 'loop_under_test'" in msg and "changes shape" in msg and "'s'" in msg, msg
    assert "\n" not in msg


def test_if_in_a_loop_keeping_a_value_of_dynamic_shape_is_refused() -> None:
    """The other branch cannot make a stand-in of the value's shape in every iteration."""
    msg = _refusal(Case("Loop", [C(i64(4)), C(np.array(True)), X((3,), declared=("n",)),
                                 X((3,), declared=("n",))], variant="ragged",
                        nodes=single("Loop", lambda ins: undeclared(loop_if_stashes(ins)))))
    assert "Loop node 'loop_under_test'" in msg and "static shapes" in msg, msg


def test_op_without_rule_in_a_branch_names_both_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(RULES, "Tanh")
    case = next(c for c in CASES if c.id == "If-nested-True-True")
    case = Case("If", case.inputs, variant="no-tanh-rule", nodes=single("If", lambda ins: n(
        "If", [ins[2]], ["out0"], then_branch=graph([n("Tanh", [ins[1]], ["t"], name="inner")],
                                                    [], [vi("t")], "then"),
        else_branch=graph([n("Neg", [ins[1]], ["e"])], [], [vi("e")], "else"))))
    msg = _refusal(case)
    assert "'Tanh'" in msg and "'inner'" in msg and "If node 'if_under_test'" in msg, msg
    assert "then_branch" in msg and "\n" not in msg


def test_rows_cover_the_control_flow_rules() -> None:
    assert {"If", "Loop", "Scan"} <= set(RULES)
    assert {c.op for c in CASES} == {"If", "Loop", "Scan"}


# -- compiled models: weights used only inside branches (the layout of silero-vad) ---------------

def branchy_model(dtype: int) -> onnx.ModelProto:
    """mode == 16000 picks an LSTM branch (holding a nested If on the batch size), anything
    else a GRU branch; every weight is an initializer of the main graph read only inside a
    branch, as in silero-vad."""
    rng = np.random.default_rng(7)
    npd = helper.tensor_dtype_to_np_dtype(dtype)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return onnx.numpy_helper.from_array((0.5 * rng.standard_normal(shape)).astype(npd), name)

    inits = [w("lstm.W", 1, 12, 2), w("lstm.R", 1, 12, 3), w("lstm.B", 1, 24),
             w("gru.W", 1, 9, 2), w("gru.R", 1, 9, 3), w("head", 3, 1), w("head8k", 3, 1),
             onnx.numpy_helper.from_array(np.array(16000, dtype=np.int64), "rate"),
             onnx.numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
             onnx.numpy_helper.from_array(np.array(2, dtype=np.int64), "two")]
    vi_ = lambda name: vi(name, dtype)  # noqa: E731
    two_rows = graph([n("Relu", ["h"], ["hr"])], [], [vi_("hr")], "two_rows")
    other_rows = graph([n("Identity", ["h"], ["hi"])], [], [vi_("hi")], "other_rows")
    lstm = graph([n("LSTM", ["xt", "lstm.W", "lstm.R", "lstm.B"], ["", "yh"], hidden_size=3),
                  n("Squeeze", ["yh", "axis0"], ["h"]),
                  n("Shape", ["h"], ["hs"]), n("Gather", ["hs", "axis0"], ["b"]),
                  n("Equal", ["b", "two"], ["is2"]), n("Reshape", ["is2", "scalar"], ["c2"]),
                  n("If", ["c2"], ["hh"], then_branch=two_rows, else_branch=other_rows),
                  n("MatMul", ["hh", "head"], ["o"]), n("Sigmoid", ["o"], ["p"])],
                 [], [vi_("p")], "lstm_branch")
    gru = graph([n("GRU", ["xt", "gru.W", "gru.R"], ["", "gh"], hidden_size=3,
                   linear_before_reset=1),
                 n("Squeeze", ["gh", "axis0"], ["g"]), n("MatMul", ["g", "head8k"], ["o8"]),
                 n("Sigmoid", ["o8"], ["p8"])], [], [vi_("p8")], "gru_branch")
    nodes = [n("Transpose", ["x"], ["xt"], perm=[1, 0, 2]), n("Equal", ["mode", "rate"], ["c"]),
             n("If", ["c"], ["prob"], then_branch=lstm, else_branch=gru, name="by_rate")]
    inits.append(onnx.numpy_helper.from_array(np.array([], dtype=np.int64), "scalar"))
    g = helper.make_graph(nodes, "branchy", [vi("x", dtype, [2, 4, 2]), vi("mode", I64, [])],
                          [vi("prob", dtype, [2, 1])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _batch(npd: type) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.standard_normal((2, 4, 2)).astype(npd), rng.random((2, 1)).astype(npd)


@pytest.mark.slow
@pytest.mark.parametrize("rate", [16000, 8000])
def test_compiled_weights_inside_branches_train(rate: int) -> None:
    """The weights of the branch taken get the gradient of the loss (a directional check in
    float64 against the eval loss), those of the other branch none; onnxruntime's float32
    step agrees with it."""
    import edgetrain as et

    x, y = _batch(np.float64)
    mode = np.array(rate, dtype=np.int64)
    tm = et.compile(branchy_model(D), loss="mse", optimizer=et.optim.SGD(lr=1.0))
    m = et.load(tm.proto, backend="reference")
    w0 = m.parameters()
    m.run("train", x=x, mode=mode, y=y)
    g = {k: w0[k] - v for k, v in m.parameters().items()}
    taken = "lstm" if rate == 16000 else "gru"
    for k, v in g.items():
        moved = bool(np.any(v != 0))
        assert moved == (k.startswith(taken) or k == ("head" if rate == 16000 else "head8k")), k
    rng = np.random.default_rng(5)
    for _ in range(3):
        d = {k: rng.standard_normal(v.shape) for k, v in w0.items()}
        eps = 1e-6
        losses = []
        for sign in (1.0, -1.0):
            m.set_parameters({k: w0[k] + sign * eps * d[k] for k in w0})
            losses.append(float(m.run("eval", x=x, mode=mode, y=y)["loss"]))
        slope = (losses[0] - losses[1]) / (2 * eps)
        want = sum(float(np.sum(g[k] * d[k])) for k in g)
        np.testing.assert_allclose(slope, want, rtol=1e-6, atol=1e-10)
    m32 = et.load(et.compile(branchy_model(TensorProto.FLOAT), loss="mse",
                             optimizer=et.optim.SGD(lr=1.0)).proto, backend="onnxruntime")
    v0 = m32.parameters()
    m32.run("train", x=x.astype(np.float32), mode=mode, y=y.astype(np.float32))
    for k, v in m32.parameters().items():
        np.testing.assert_allclose(v0[k] - v, g[k], rtol=1e-3, atol=1e-6, err_msg=k)


def loop_rnn_model(w: np.ndarray, u: np.ndarray, head: np.ndarray, dtype: Any
                   ) -> onnx.ModelProto:
    """s ← tanh(s·W + x[i]·U) for i < len(x) (a trip count known when the step runs), then
    logits = s·head."""
    tp = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    body = graph([n("Gather", ["x", "i"], ["xi"], axis=0), n("MatMul", ["xi", "U"], ["xu"]),
                  n("MatMul", ["s", "W"], ["sw"]), n("Add", ["sw", "xu"], ["a"]),
                  n("Tanh", ["a"], ["s2"]), n("Identity", ["cin"], ["cout"])],
                 [vi("i", I64, []), vi("cin", B, []), vi("s", tp, ["batch", 4])],
                 [vi("cout", B, []), vi("s2", tp, ["batch", 4])])
    nodes = [n("Shape", ["x"], ["xs"]), n("Gather", ["xs", "zero"], ["steps"], axis=0),
             n("Shape", ["x"], ["bs"], start=1, end=2), n("Concat", ["bs", "four"], ["ss"],
                                                          axis=0),
             n("ConstantOfShape", ["ss"], ["s0"], value=helper.make_tensor(
                 "z", tp, [1], [0.0])),
             n("Loop", ["steps", "", "s0"], ["s_final"], body=body, name="rnn_loop"),
             n("MatMul", ["s_final", "head"], ["logits"])]
    init = [onnx.numpy_helper.from_array(a.astype(dtype), nm)
            for a, nm in ((w, "W"), (u, "U"), (head, "head"))]
    init += [onnx.numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
             onnx.numpy_helper.from_array(np.array([4], dtype=np.int64), "four")]
    g = helper.make_graph(nodes, "loop_rnn", [vi("x", tp, ["steps", "batch", 2])],
                          [vi("logits", tp, ["batch", 3])], initializer=init)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "backend", "tol"), [
    (np.float64, "reference", (1e-9, 1e-12)), (np.float32, "onnxruntime", (1e-4, 1e-6))])
def test_compiled_loop_trains_like_torch(dtype: Any, backend: str,
                                         tol: tuple[float, float]) -> None:
    """An RNN written as a Loop over the rows of its input (as many as each batch has):
    five SGD steps on batches of 3, 5 and 4 steps give torch's losses and weights."""
    import edgetrain as et

    rng = np.random.default_rng(0)
    ws = {k: 0.5 * rng.standard_normal(s) for k, s in
          (("W", (4, 4)), ("U", (2, 4)), ("head", (4, 3)))}
    m = et.compile(loop_rnn_model(ws["W"], ws["U"], ws["head"], dtype), loss="cross_entropy",
                   optimizer=et.optim.SGD(lr=0.1)).load(backend=backend)
    tw = {k: torch.tensor(v, requires_grad=True) for k, v in ws.items()}
    opt = torch.optim.SGD(list(tw.values()), lr=0.1)
    for steps in (3, 5, 4, 3, 5):
        x = rng.standard_normal((steps, 2, 2))
        y = rng.integers(0, 3, 2)
        got = float(m.run("train", x=x.astype(dtype), y=y)["loss"])
        s = torch.zeros(2, 4, dtype=torch.float64)
        for i in range(steps):
            s = torch.tanh(s @ tw["W"] + torch.tensor(x[i]) @ tw["U"])
        loss = torch.nn.functional.cross_entropy(s @ tw["head"], torch.tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        np.testing.assert_allclose(got, loss.item(), rtol=tol[0], atol=tol[1])
    for k, v in m.parameters().items():
        np.testing.assert_allclose(v, tw[k].detach().numpy(), rtol=tol[0], atol=tol[1] * 10,
                                   err_msg=k)


def padded_conv_in_branch(dtype: int) -> onnx.ModelProto:
    """A Conv inside an If branch on a Pad whose pads are an outer constant: ONNX's inference
    of the branch cannot read them (it names the padded length ``unk__…``), the Conv's
    gradient needs the number."""
    rng = np.random.default_rng(4)
    npd = helper.tensor_dtype_to_np_dtype(dtype)
    inits = [onnx.numpy_helper.from_array(np.array([0, 0, 2, 0, 0, 2], np.int64), "pads"),
             onnx.numpy_helper.from_array(rng.standard_normal((3, 2, 3)).astype(npd), "w"),
             onnx.numpy_helper.from_array(np.array(0, np.int64), "zero")]
    then = graph([n("Pad", ["x", "pads"], ["p"], mode="reflect"),
                  n("Conv", ["p", "w"], ["c"]), n("Tanh", ["c"], ["t"])], [], [vi("t", dtype)],
                 "then")
    other = graph([n("Conv", ["x", "w"], ["e"], pads=[2, 2])], [], [vi("e", dtype)], "else")
    g = helper.make_graph(
        [n("Greater", ["flag", "zero"], ["c0"]),
         n("If", ["c0"], ["out"], then_branch=then, else_branch=other, name="pick")],
        "padded", [vi("x", dtype, [1, 2, 8]), vi("flag", I64, [])],
        [vi("out", dtype, [1, 3, 10])],
        initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_compiled_conv_on_outer_pads_inside_a_branch_trains() -> None:
    """The branch's sizes are recovered with the outer constant's value: the Conv's weight
    gets the gradient torch computes (float64)."""
    import edgetrain as et

    m = et.compile(padded_conv_in_branch(D), loss="mse",
                   optimizer=et.optim.SGD(lr=1.0)).load(backend="reference")
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((1, 2, 8)), rng.standard_normal((1, 3, 10))
    w0 = m.parameters()["w"]
    m.run("train", x=x, flag=np.array(1, np.int64), y=y)
    tw = torch.tensor(w0, requires_grad=True)
    xp = torch.nn.functional.pad(torch.tensor(x), (2, 2), mode="reflect")
    loss = torch.nn.functional.mse_loss(torch.tanh(torch.nn.functional.conv1d(xp, tw)),
                                        torch.tensor(y))
    loss.backward()
    assert tw.grad is not None
    np.testing.assert_allclose(w0 - m.parameters()["w"], tw.grad.numpy(), rtol=1e-9,
                               atol=1e-12)
