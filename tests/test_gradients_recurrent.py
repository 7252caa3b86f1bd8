"""Gradient rows of the recurrent layers: LSTM, GRU, RNN (differentiated as a Scan of their
cell, ``autodiff/rules/recurrent.py``).

Each row is checked like a rule's: float64 finite differences, torch.autograd on
``torch.nn.LSTM``/``GRU``/``RNN`` holding the same weights (where torch has the variant:
torch's GRU is ONNX's with ``linear_before_reset=1``; torch has no peepholes, clip,
input_forget, custom activations or reverse-only layers — a reverse layer is checked on the
time-flipped sequence, sequence lengths as a packed batch), onnxruntime in float32, and a
standard-ONNX backward graph.

The finite differences run the fused op in onnx.reference with edgetrain's kernels, which
honour every attribute (onnx.reference's own ignore clip, activations, input_forget and
sequence_lens); ``test_reference_kernel_matches_onnxruntime`` holds those kernels to
onnxruntime's on every row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from edgetrain.autodiff import EXPANSIONS
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
    differentiate,
    evaluator,
    params,
)

T, BATCH, IN, H = 3, 2, 2, 3
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
#: ONNX's gate blocks in torch's order: LSTM iofc -> ifgo, GRU zrh -> rzn.
TORCH_ORDER = {"LSTM": [0, 2, 3, 1], "GRU": [1, 0, 2], "RNN": [0]}
CASES: list[Case] = []


def small(v: np.ndarray) -> np.ndarray:
    """Weights of a trained layer's size (keeps every gate away from saturation)."""
    return 0.5 * v


def lengths(*v: int) -> C:
    return C(np.array(v, dtype=np.int32))


def recurrent_inputs(op: str, dirs: int = 1, layout: int = 0, bias: bool = True,
                     initial: bool = True, peepholes: bool = False, lens: C | None = None
                     ) -> list[X | C | None]:
    g = GATES[op]
    state = (BATCH, dirs, H) if layout else (dirs, BATCH, H)
    ins: list[X | C | None] = [X((BATCH, T, IN) if layout else (T, BATCH, IN)),
                               X((dirs, g * H, IN), small), X((dirs, g * H, H), small),
                               X((dirs, 2 * g * H), small) if bias else None, lens,
                               X(state) if initial else None]
    if op == "LSTM":
        ins += [X(state) if initial else None, X((dirs, 3 * H), small) if peepholes else None]
    while ins and ins[-1] is None:
        ins.pop()
    return ins


def row(op: str, variant: str, torch_fn: Callable[..., Any] | None = None,
        attrs: dict[str, Any] | None = None, nodes: Any = None, **kw: Any) -> None:
    attrs = {"hidden_size": H, **(attrs or {})}
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    ins = recurrent_inputs(op, dirs, int(attrs.get("layout", 0)), **kw)
    CASES.append(Case(op, ins, attrs=attrs, torch=torch_fn, variant=variant, nodes=nodes,
                      n_out=3 if op == "LSTM" else 2))


def only_last_state(ins: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    """The layer with its Y and Y_c left out (as exported models often do)."""
    return [helper.make_node("LSTM", ins, ["", "out1"], name="lstm_under_test",
                             hidden_size=H)], ["out1"]


# -- torch's layers holding the ONNX weights ----------------------------------------------------

def torch_layer(op: str, direction: str = "forward", layout: int = 0,
                nonlinearity: str = "tanh", bias: bool = True, initial: bool = True,
                lens: Sequence[int] | None = None) -> Callable[..., Any]:
    """The ONNX op as torch.nn.<op> (weights reordered to torch's gate order); a reverse
    layer runs on the time-flipped sequence; sequence lengths pack the batch."""
    both = direction == "bidirectional"
    dirs = 2 if both else 1

    def fn(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, w, r, *rest = args
        b = rest.pop(0) if bias else None
        states = rest if initial else []
        kw = {"nonlinearity": nonlinearity} if op == "RNN" else {}
        layer = getattr(torch.nn, op)(IN, H, bidirectional=both, batch_first=bool(layout),
                                      dtype=torch.float64, bias=bias, **kw)
        params = {}
        for d in range(dirs):
            sfx = "_reverse" if d else ""
            params[f"weight_ih_l0{sfx}"] = reorder(op, w[d])
            params[f"weight_hh_l0{sfx}"] = reorder(op, r[d])
            if b is not None:
                g = GATES[op] * H
                params[f"bias_ih_l0{sfx}"] = reorder(op, b[d, :g])
                params[f"bias_hh_l0{sfx}"] = reorder(op, b[d, g:])
        hx = [s.transpose(0, 1) if layout else s for s in states]
        init = None if not hx else (tuple(hx) if op == "LSTM" else hx[0])
        xs = x.flip(1 if layout else 0) if direction == "reverse" else x
        if lens is not None:
            xs = torch.nn.utils.rnn.pack_padded_sequence(xs, list(lens), bool(layout),
                                                         enforce_sorted=False)
        y, hn = torch.func.functional_call(layer, params, (xs, init))
        if lens is not None:
            y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, bool(layout), total_length=T)
        if direction == "reverse":
            y = y.flip(1 if layout else 0)
        finals = list(hn) if op == "LSTM" else [hn]
        return onnx_outputs(y, finals, layout, dirs)

    return fn


def reorder(op: str, v: torch.Tensor) -> torch.Tensor:
    blocks = v.split(H, dim=0)
    return torch.cat([blocks[i] for i in TORCH_ORDER[op]], dim=0)


def onnx_outputs(y: torch.Tensor, finals: list[torch.Tensor], layout: int, dirs: int
                 ) -> tuple[torch.Tensor, ...]:
    """torch's [T, B, D·H] and [D, B, H] as ONNX's Y [T, D, B, H] and Y_h [D, B, H] (batch
    first: [B, T, D, H] and [B, D, H])."""
    if layout:
        y = y.reshape(y.shape[0], y.shape[1], dirs, H)
        return (y, *[f.transpose(0, 1) for f in finals])
    y = y.reshape(y.shape[0], y.shape[1], dirs, H).permute(0, 2, 1, 3)
    return (y, *finals)


# -- the rows ---------------------------------------------------------------------------------

for op in ("LSTM", "GRU", "RNN"):
    lbr = {"linear_before_reset": 1} if op == "GRU" else {}
    row(op, "forward", torch_layer(op), attrs=lbr)
    row(op, "reverse", torch_layer(op, "reverse"), attrs={"direction": "reverse", **lbr})
    row(op, "bidirectional", torch_layer(op, "bidirectional"),
        attrs={"direction": "bidirectional", **lbr})
    row(op, "batch-first", torch_layer(op, layout=1), attrs={"layout": 1, **lbr})
    row(op, "no-bias-no-initial-state", torch_layer(op, bias=False, initial=False), attrs=lbr,
        bias=False, initial=False)
    row(op, "clip", attrs={"clip": 0.4, **lbr})
    row(op, "sequence-lengths", torch_layer(op, lens=(3, 1)), attrs=lbr, lens=lengths(3, 1))
    row(op, "sequence-lengths-bidirectional", torch_layer(op, "bidirectional", lens=(2, 3)),
        attrs={"direction": "bidirectional", **lbr}, lens=lengths(2, 3))

row("LSTM", "last-state-only", lambda *a: torch_layer("LSTM")(*a)[1], nodes=only_last_state)
row("LSTM", "peepholes", peepholes=True)
row("LSTM", "peepholes-bidirectional-reverse-lengths", attrs={"direction": "bidirectional"},
    peepholes=True, lens=lengths(1, 3))
row("LSTM", "input-forget", attrs={"input_forget": 1}, peepholes=True)
row("LSTM", "activations", attrs={
    "activations": ["HardSigmoid", "LeakyRelu", "Affine"], "activation_alpha": [0.3, 0.2, 1.5],
    "activation_beta": [0.6, 0.1]})
row("LSTM", "activations-bidirectional", attrs={
    "direction": "bidirectional", "activations": ["Sigmoid", "Tanh", "Tanh", "HardSigmoid",
                                                  "Softsign", "Elu"],
    "activation_alpha": [0.3, 0.8], "activation_beta": [0.4]})
row("GRU", "linear-before-reset-0")
row("GRU", "linear-before-reset-0-bidirectional", attrs={"direction": "bidirectional"})
row("GRU", "activations", attrs={"activations": ["Softsign", "ScaledTanh"],
                                 "activation_alpha": [1.2], "activation_beta": [0.7]})
row("RNN", "relu", torch_layer("RNN", nonlinearity="relu"), attrs={"activations": ["Relu"]})
row("RNN", "softplus-clip", attrs={"activations": ["Softplus"], "clip": 0.5})
row("RNN", "thresholded-relu", attrs={"activations": ["ThresholdedRelu"],
                                      "activation_alpha": [-5.0]})


def rank_lost(ins: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    """X through an If whose branches differ in rank (silero-vad's LSTMCell export): ONNX's
    inference leaves the LSTM's input without a rank; the condition picks the rank-3 one."""
    x, *weights, cond = ins
    then = helper.make_graph([helper.make_node("Identity", [x], ["x3"])], "then", [],
                             [helper.make_tensor_value_info("x3", TensorProto.DOUBLE, None)])
    flat = helper.make_graph([helper.make_node("Reshape", [x, "flat_shape"], ["x1"])], "else",
                             [], [helper.make_tensor_value_info("x1", TensorProto.DOUBLE, None)])
    return [helper.make_node("Constant", [], ["flat_shape"], value=helper.make_tensor(
                "s", TensorProto.INT64, [1], [-1])),
            helper.make_node("If", [cond], ["xany"], then_branch=then, else_branch=flat),
            helper.make_node("LSTM", ["xany", *weights], ["out0", "out1", "out2"],
                             name="lstm_under_test", hidden_size=H)], ["out0", "out1", "out2"]


CASES.append(Case("LSTM", [*recurrent_inputs("LSTM"), C(np.array(True), runtime=True)],
                  attrs={"hidden_size": H}, torch=torch_layer("LSTM"),
                  variant="input-of-unknown-rank", nodes=rank_lost, n_out=3))
#: Rows that are more than the op on the row's inputs (the reference kernel test runs it alone).
NOT_THE_OP_ALONE = {"LSTM-input-of-unknown-rank"}
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


@pytest.mark.parametrize("case", params(CASES))
def test_onnxruntime_float32(case: Case) -> None:
    check_onnxruntime_float32(case)


@pytest.mark.parametrize("case", params(CASES))
def test_backward_is_standard_onnx(case: Case) -> None:
    check_standard_onnx(case)
    ops = {n.op_type for n in build(case).model.graph.node}
    assert case.op not in ops and "Scan" in ops, "the train graph runs the cell as a Scan"


@pytest.mark.parametrize("case", [p for p, c in zip(params(CASES), CASES, strict=True)
                                  if c.id not in NOT_THE_OP_ALONE])
def test_reference_kernel_matches_onnxruntime(case: Case) -> None:
    """The finite differences' oracle (edgetrain's reference kernel of the fused op) computes
    what onnxruntime computes, in float32 (onnxruntime has no float64 kernel nor batch-first
    layout: a batch-first row runs there time first)."""
    b = build(case)
    feeds = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in b.feeds.items()}
    for k, spec in enumerate(case.inputs):
        if isinstance(spec, C):
            feeds[f"in{k}"] = np.asarray(spec.value)
    want = evaluator(op_model(case, case.attrs, feeds)).run(None, feeds)
    layout = int(case.attrs.get("layout", 0))
    if layout:  # X [B, T, I] -> [T, B, I]; initial states [B, D, H] -> [D, B, H]
        feeds = {k: np.swapaxes(v, 0, 1) if k in ("in0", "in5", "in6") else v
                 for k, v in feeds.items()}
    time_first = op_model(case, {**case.attrs, "layout": 0}, feeds)
    got = ort.InferenceSession(time_first.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)
    if layout:
        got = [np.transpose(g, (2, 0, 1, 3)) if g.ndim == 4 else np.swapaxes(g, 0, 1)
               for g in got]
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(w, g, rtol=1e-5, atol=1e-5, err_msg=f"{case.id}: output {k}")


def op_model(case: Case, attrs: dict[str, Any], feeds: dict[str, np.ndarray]
             ) -> onnx.ModelProto:
    """The row's op alone, in float32, on inputs shaped like ``feeds``."""
    names = [f"in{k}" if spec is not None else "" for k, spec in enumerate(case.inputs)]
    outs = [f"out{j}" for j in range(case.n_out)]
    node = helper.make_node(case.op, names, outs, **attrs)
    inputs = [helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(
        feeds[nm].dtype), feeds[nm].shape) for nm in names if nm]
    g = helper.make_graph([node], "op", inputs, [
        helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(("attrs", "says"), [
    ({"activations": ["Sigmoid", "Swish", "Tanh"]}, "unknown activation function 'Swish'"),
    ({"activations": ["Sigmoid", "Tanh"]}, "2 activations for 1 direction(s); expected 3"),
    ({"activations": ["Sigmoid", "ThresholdedRelu", "Tanh"]}, "give activation_alpha"),
])
def test_unsupported_attributes_are_refused(attrs: dict[str, Any], says: str) -> None:
    """A refusal names the op and the node, and what is wrong, in one line."""
    node = helper.make_node("LSTM", ["X", "W", "R"], ["", "Y_h"], name="lstm_under_test",
                            hidden_size=H, **attrs)
    loss = helper.make_node("ReduceSum", ["Y_h"], ["loss"], keepdims=0)
    d = TensorProto.DOUBLE
    g = helper.make_graph([node, loss], "refused", [
        helper.make_tensor_value_info("X", d, [T, BATCH, IN]),
        helper.make_tensor_value_info("W", d, [1, 4 * H, IN]),
        helper.make_tensor_value_info("R", d, [1, 4 * H, H])],
        [helper.make_tensor_value_info("loss", d, [])])
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
    with pytest.raises(UnsupportedOpError) as e:
        differentiate(model, ["W"])
    msg = str(e.value)
    assert "LSTM node 'lstm_under_test'" in msg and says in msg and "\n" not in msg, msg


def test_rows_cover_the_expansions() -> None:
    assert {"LSTM", "GRU", "RNN"} <= set(EXPANSIONS)
    assert {c.op for c in CASES} == {"LSTM", "GRU", "RNN"}


# -- a compiled model trains like torch ---------------------------------------------------------

def lstm_classifier(layer: torch.nn.LSTM, head: torch.nn.Linear, dtype: Any) -> onnx.ModelProto:
    """X [T, B, I] -> LSTM -> last hidden state -> Linear: the ONNX twin of ``layer`` and
    ``head`` (torch's ifgo gate blocks reordered to ONNX's iofc)."""
    def onnx_order(t: torch.Tensor) -> np.ndarray:
        i, f, g, o = t.detach().double().split(layer.hidden_size, dim=0)
        return torch.cat([i, o, f, g], dim=0).numpy().astype(dtype)

    w = onnx_order(layer.weight_ih_l0)[None]
    r = onnx_order(layer.weight_hh_l0)[None]
    b = np.concatenate([onnx_order(layer.bias_ih_l0), onnx_order(layer.bias_hh_l0)])[None]
    hw = head.weight.detach().double().numpy().T.astype(dtype)
    hb = head.bias.detach().double().numpy().astype(dtype)
    tp = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    init = [onnx.numpy_helper.from_array(a, n) for a, n in
            ((w, "W"), (r, "R"), (b, "B"), (hw, "head.W"), (hb, "head.b"),
             (np.array([0], dtype=np.int64), "axis0"))]
    g = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "h"], hidden_size=layer.hidden_size),
         helper.make_node("Squeeze", ["h", "axis0"], ["last"]),
         helper.make_node("Gemm", ["last", "head.W", "head.b"], ["logits"])],
        "lstm_classifier", [helper.make_tensor_value_info("x", tp, [5, "batch", 4])],
        [helper.make_tensor_value_info("logits", tp, ["batch", 3])], initializer=init)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "backend", "tol"), [
    (np.float64, "reference", (1e-9, 1e-12)), (np.float32, "onnxruntime", (1e-4, 1e-6))])
def test_compiled_lstm_trains_like_torch(dtype: Any, backend: str,
                                         tol: tuple[float, float]) -> None:
    """Ten Adam steps of an LSTM classifier: the same losses and weights as torch's."""
    import edgetrain as et

    torch.manual_seed(0)
    layer, head = torch.nn.LSTM(4, 6).double(), torch.nn.Linear(6, 3).double()
    m = et.compile(lstm_classifier(layer, head, dtype), loss="cross_entropy",
                   optimizer=et.optim.Adam(lr=0.01)).load(backend=backend)
    opt = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=0.01)
    rng = np.random.default_rng(1)
    for _ in range(10):
        x = rng.standard_normal((5, 3, 4))
        y = rng.integers(0, 3, 3)
        got = float(m.run("train", x=x.astype(dtype), y=y)["loss"])
        opt.zero_grad()
        _, (hn, _) = layer(torch.tensor(x))
        loss = torch.nn.functional.cross_entropy(head(hn[0]), torch.tensor(y))
        loss.backward()
        opt.step()
        np.testing.assert_allclose(got, loss.item(), rtol=tol[0], atol=tol[1])
    want = lstm_classifier(layer, head, np.float64)
    for t in want.graph.initializer:
        if t.name in m.parameters():
            np.testing.assert_allclose(m.parameters()[t.name],
                                       onnx.numpy_helper.to_array(t), rtol=tol[0],
                                       atol=tol[1] * 10, err_msg=t.name)
