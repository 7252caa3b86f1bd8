"""Recurrent layers: LSTM, GRU and RNN, differentiated as a Scan of their cell.

In the graph being differentiated (the train step; the inference graph keeps the fused op),
each recurrent node on the path to the loss is replaced by the computation the ONNX operator
defines: the input projection ``X·Wᵀ`` for all time steps at once, then a ``Scan`` over time
whose body is one step of the cell (MatMul, Add, Split, the gate activations), one Scan per
direction. The Scan's own rule then gives back-propagation through time, and every gate's
formula is differentiated by the rule of its op, so the gradient is exact by construction.

Every attribute is honoured: ``direction`` (forward, reverse, bidirectional), ``layout``,
``activations`` with ``activation_alpha``/``activation_beta`` (consumed in order by the
functions that take them, as onnxruntime does), ``clip`` (applied to every gate's input),
``input_forget`` (LSTM: f = 1 − i), ``linear_before_reset`` (GRU), and the optional inputs
``sequence_lens`` (steps past a sequence's length keep its state and output zeros),
``initial_h``, ``initial_c`` and the peepholes ``P``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..._ir import Builder, Value, dims, np_dtype
from ...errors import UnsupportedOpError
from .._helpers import INT64_MIN, float_const, zeros_of_shape
from .._registry import expansion

Act = Callable[[Builder, Value], Value]


@dataclass
class _Layer:
    """One recurrent node, read: its inputs, attributes and what each direction uses."""

    node: ir.Node
    op_type: str
    gates: int                        # 4 (LSTM: i o f c), 3 (GRU: z r h), 1 (RNN)
    hidden: int
    x: Value                          # [T, B, I] (time first)
    directions: list[int]             # 0 forward, 1 reverse
    acts: list[list[Act]]             # per direction: f, g, h (as many as the cell uses)
    clip: float | None
    initial: list[Value | None]       # initial_h, initial_c as [D, B, H]
    mask: Value | None = None         # [T, B, 1]: the step is within the sequence
    extra: dict[str, int] = field(default_factory=dict)


def _where(node: ir.Node) -> str:
    return f"{node.op_type} node {node.name or '<unnamed>'!r}"


# -- activations ------------------------------------------------------------------------------

#: name → (number of alpha/beta values it takes, their defaults, the function)
_ACTS: dict[str, tuple[int, tuple[float, float], Callable[[Builder, Value, float, float],
                                                         Value]]] = {
    "sigmoid": (0, (0.0, 0.0), lambda op, x, a, b: op.Sigmoid(x)),
    "tanh": (0, (0.0, 0.0), lambda op, x, a, b: op.Tanh(x)),
    "relu": (0, (0.0, 0.0), lambda op, x, a, b: op.Relu(x)),
    "softsign": (0, (0.0, 0.0), lambda op, x, a, b: op.op("Softsign", x)),
    "softplus": (0, (0.0, 0.0), lambda op, x, a, b: op.Softplus(x)),
    "leakyrelu": (1, (0.01, 0.0), lambda op, x, a, b: op.op("LeakyRelu", x, alpha=a)),
    "thresholdedrelu": (1, (1.0, 0.0),
                        lambda op, x, a, b: op.op("ThresholdedRelu", x, alpha=a)),
    "elu": (1, (1.0, 0.0), lambda op, x, a, b: op.op("Elu", x, alpha=a)),
    "hardsigmoid": (2, (0.2, 0.5), lambda op, x, a, b: op.op("HardSigmoid", x, alpha=a,
                                                             beta=b)),
    "affine": (2, (1.0, 0.0), lambda op, x, a, b: op.Add(op.Mul(x, float_const(op, a, x)),
                                                         float_const(op, b, x))),
    "scaledtanh": (2, (1.0, 1.0), lambda op, x, a, b: op.Mul(
        op.Tanh(op.Mul(x, float_const(op, b, x))), float_const(op, a, x))),
}


def _activations(node: ir.Node, per_direction: int, defaults: Sequence[str],
                 n_dir: int) -> list[list[Act]]:
    """The node's activation functions, per direction, with their alpha and beta."""
    attrs = node.attributes
    names = list(attrs["activations"].as_strings()) if "activations" in attrs else \
        list(defaults) * n_dir
    alphas = list(attrs["activation_alpha"].as_floats()) if "activation_alpha" in attrs else []
    betas = list(attrs["activation_beta"].as_floats()) if "activation_beta" in attrs else []
    if len(names) != per_direction * n_dir:
        raise UnsupportedOpError(f"{_where(node)}: {len(names)} activations for "
                                 f"{n_dir} direction(s); expected {per_direction * n_dir}")
    acts: list[Act] = []
    for name in names:
        spec = _ACTS.get(name.lower())
        if spec is None:
            raise UnsupportedOpError(f"{_where(node)}: unknown activation function {name!r} "
                                     f"(known: {', '.join(sorted(_ACTS))})")
        count, (a, b), fn = spec
        if name.lower() == "thresholdedrelu" and not alphas:
            raise UnsupportedOpError(
                f"{_where(node)}: ThresholdedRelu without activation_alpha: its default is 1.0 "
                "in ONNX and 0.0 in onnxruntime; give activation_alpha")
        if count >= 1 and alphas:
            a = alphas.pop(0)
        if count >= 2 and betas:
            b = betas.pop(0)
        acts.append(_bound(fn, a, b))
    return [acts[d * per_direction:(d + 1) * per_direction] for d in range(n_dir)]


def _bound(fn: Callable[[Builder, Value, float, float], Value], a: float, b: float) -> Act:
    return lambda op, x: fn(op, x, a, b)


# -- reading the node -------------------------------------------------------------------------

def _layer(node: ir.Node, op: Builder, gates: int, defaults: Sequence[str]) -> _Layer:
    attrs = node.attributes
    direction = attrs["direction"].as_string() if "direction" in attrs else "forward"
    if direction not in ("forward", "reverse", "bidirectional"):
        raise UnsupportedOpError(f"{_where(node)}: unknown direction {direction!r}")
    dirs = [0, 1] if direction == "bidirectional" else [1 if direction == "reverse" else 0]
    layout = attrs["layout"].as_int() if "layout" in attrs else 0
    r_shape = node.inputs[2].shape if node.inputs[2] is not None else None
    hidden = attrs["hidden_size"].as_int() if "hidden_size" in attrs else (
        r_shape[-1] if r_shape is not None and isinstance(r_shape[-1], int) else None)
    if hidden is None:
        raise UnsupportedOpError(f"{_where(node)}: the hidden size is unknown; give the node "
                                 "its hidden_size attribute")
    x = _input(node, 0)
    assert x is not None
    if dims(x) is None:  # rank lost to shape inference (an If whose branches differ): 3
        x = op.Reshape(x, [0, 0, -1])
    initial = [_input(node, 5), _input(node, 6) if node.op_type == "LSTM" else None]
    if layout == 1:  # batch first: [B, T, I] and [B, D, H]
        x = op.Transpose(x, perm=[1, 0, 2])
        initial = [op.Transpose(v, perm=[1, 0, 2]) if v is not None else None for v in initial]
    clip = attrs["clip"].as_float() if "clip" in attrs else None
    acts = _activations(node, len(defaults), defaults, len(dirs))
    layer = _Layer(node, node.op_type, gates, int(hidden), x, dirs, acts, clip, initial)
    layer.extra["layout"] = layout
    lens = _input(node, 4)
    if lens is not None:
        steps = op.Range(op.const(np.array(0, dtype=np.int64)),
                         op.Squeeze(op.Slice(op.Shape(x), [0], [1]), [0]),
                         op.const(np.array(1, dtype=np.int64)))
        within = op.Less(op.Unsqueeze(steps, [1]),
                         op.Unsqueeze(op.Cast(lens, to=ir.DataType.INT64), [0]))
        layer.mask = op.Unsqueeze(within, [2])
    return layer


def _input(node: ir.Node, i: int) -> Value | None:
    return node.inputs[i] if i < len(node.inputs) else None


def _direction(op: Builder, v: Value | None, d: int) -> Value | None:
    """Direction ``d``'s slice of a [D, …] weight."""
    return None if v is None else op.Gather(v, op.const(np.array(d, dtype=np.int64)), axis=0)


def _part(op: Builder, v: Value, i: int, size: int) -> Value:
    """Block ``i`` of ``size`` rows along the last axis."""
    return op.Slice(v, [i * size], [(i + 1) * size], [-1])


def _clipped(layer: _Layer, op: Builder, x: Value) -> Value:
    if layer.clip is None:
        return x
    return op.op("Clip", x, float_const(op, -layer.clip, x), float_const(op, layer.clip, x))


def _reversed(op: Builder, v: Value) -> Value:
    return op.Slice(v, [-1], [INT64_MIN], [0], [-1])


# -- the scan over time -----------------------------------------------------------------------

Cell = Callable[[_Layer, Builder, int, list[Value], Value, dict[str, Value]], list[Value]]


def _expand(node: ir.Node, op: Builder, gates: int, defaults: Sequence[str], cell: Cell,
            weights: Callable[[_Layer, Builder, int], tuple[Value, dict[str, Value]]]
            ) -> list[Value | None]:
    """Y, Y_h (and Y_c) of a recurrent node, computed by one Scan of ``cell`` per direction."""
    layer = _layer(node, op, gates, defaults)
    n_states = 2 if layer.op_type == "LSTM" else 1
    ys: list[Value] = []
    finals: list[list[Value]] = [[] for _ in range(n_states)]
    for k, d in enumerate(layer.directions):
        xw, inner = weights(layer, op, k)
        init = [_initial(layer, op, i, k) for i in range(n_states)]
        y, states = _scan(layer, op, k, xw, init, inner, cell, reverse=d == 1)
        ys.append(op.Unsqueeze(y, [1]))
        for i, s in enumerate(states):
            finals[i].append(op.Unsqueeze(s, [0]))
    y_all = ys[0] if len(ys) == 1 else op.Concat(*ys, axis=1)
    outs = [y_all] + [f[0] if len(f) == 1 else op.Concat(*f, axis=0) for f in finals]
    if layer.extra["layout"] == 1:
        outs = [op.Transpose(outs[0], perm=[2, 0, 1, 3])] + [
            op.Transpose(v, perm=[1, 0, 2]) for v in outs[1:]]
    return list(outs)


def _initial(layer: _Layer, op: Builder, i: int, k: int) -> Value:
    """The initial hidden (i = 0) or cell (i = 1) state of direction ``k``: [B, H]."""
    given = _direction(op, layer.initial[i], k)
    if given is not None:
        return given
    batch = op.Slice(op.Shape(layer.x), [1], [2])
    return zeros_of_shape(op, op.Concat(batch, [layer.hidden], axis=0), layer.x)


def _scan(layer: _Layer, op: Builder, k: int, xw: Value, init: list[Value],
          inner: dict[str, Value], cell: Cell, reverse: bool) -> tuple[Value, list[Value]]:
    """Run ``cell`` over the time steps of ``xw`` ([T, B, gates·H]); returns Y [T, B, H]
    (in time order) and the final states."""
    scanned = [xw] + ([layer.mask] if layer.mask is not None else [])
    if reverse:
        scanned = [_reversed(op, v) for v in scanned]
    x_dims = dims(layer.x)
    batch = x_dims[1] if x_dims is not None else None
    widths = [layer.gates * layer.hidden, 1]
    states = [ir.Value(name=op.namer.fresh("state"), type=v.type,
                       shape=ir.Shape([batch, layer.hidden])) for v in init]
    slices = [ir.Value(name=op.namer.fresh("step"), type=v.type, shape=ir.Shape([batch, w]))
              for v, w in zip(scanned, widths, strict=False)]
    body = ir.Graph([*states, *slices], [], nodes=[], name=op.namer.fresh("cell"))
    bop = Builder(body, op.opset, op.namer)
    new = cell(layer, bop, k, states, slices[0], inner)
    h = new[0]
    y = h
    if layer.mask is not None:
        m = slices[1]
        new = [bop.Where(m, v, s) for v, s in zip(new, states, strict=True)]
        y = bop.Where(m, h, bop.scalar(0.0, h))
    body.outputs.extend([*new, bop.Identity(y)])
    outs = op.node("Scan", [*init, *scanned], {"body": body, "num_scan_inputs": len(scanned)},
                   outputs=len(new) + 1)
    for o in outs:
        o.type = init[0].type
        o.shape = ir.Shape([batch, layer.hidden])
    outs[-1].shape = ir.Shape([x_dims[0] if x_dims is not None else None, batch, layer.hidden])
    y_all = outs[-1]
    return (_reversed(op, y_all) if reverse else y_all), list(outs[:-1])


# -- the cells --------------------------------------------------------------------------------

def _projection(layer: _Layer, op: Builder, k: int, inner_rows: int = 0
                ) -> tuple[Value, Value, Value | None]:
    """X·Wᵀ + Wb + Rb for every step at once ([T, B, gates·H]) and Rᵀ. The last
    ``inner_rows`` blocks of Rb are left out and returned: a GRU with linear_before_reset
    adds Rbh inside the reset gate's product."""
    node, g, hsz = layer.node, layer.gates, layer.hidden
    w = _direction(op, _input(node, 1), k)
    r = _direction(op, _input(node, 2), k)
    assert w is not None and r is not None
    xw, rt = op.MatMul(layer.x, op.Transpose(w, perm=[1, 0])), op.Transpose(r, perm=[1, 0])
    b = _direction(op, _input(node, 3), k)
    if b is None:
        return xw, rt, None
    wb, rb = _part(op, b, 0, g * hsz), _part(op, b, 1, g * hsz)
    inner = None
    if inner_rows:
        kept = (g - inner_rows) * hsz
        zeros = op.const(np.zeros(inner_rows * hsz, dtype=np_dtype(b.dtype or 1)))
        inner = op.Slice(rb, [kept], [g * hsz], [-1])
        rb = op.Concat(op.Slice(rb, [0], [kept], [-1]), zeros, axis=0)
    return op.Add(xw, op.Add(wb, rb)), rt, inner


def _lstm_weights(layer: _Layer, op: Builder, k: int) -> tuple[Value, dict[str, Value]]:
    xw, rt, _ = _projection(layer, op, k)
    inner = {"rt": rt}
    p = _direction(op, _input(layer.node, 7), k)
    if p is not None:
        for i, name in enumerate(("pi", "po", "pf")):
            inner[name] = _part(op, p, i, layer.hidden)
    return xw, inner


def _lstm_cell(layer: _Layer, op: Builder, k: int, states: list[Value], xw: Value,
               inner: dict[str, Value]) -> list[Value]:
    """i, o, f, c = split(x·Wᵀ + h·Rᵀ + b); i += Pi⊙C₀, f += Pf⊙C₀; C = f⊙C₀ + i⊙g(c);
    o += Po⊙C; H = f(o)⊙h(C), with f = 1 − i when input_forget."""
    f, g, h = layer.acts[k]
    h0, c0 = states
    gates = op.Add(xw, op.MatMul(h0, inner["rt"]))
    i_, o_, f_, c_ = op.Split(gates, [layer.hidden] * 4, outputs=4, axis=-1)
    if "pi" in inner:
        i_ = op.Add(i_, op.Mul(inner["pi"], c0))
        f_ = op.Add(f_, op.Mul(inner["pf"], c0))
    i = f(op, _clipped(layer, op, i_))
    forget = layer.node.attributes.get("input_forget")
    fg = op.Sub(op.scalar(1.0, i), i) if forget is not None and forget.as_int() else \
        f(op, _clipped(layer, op, f_))
    c = op.Add(op.Mul(fg, c0), op.Mul(i, g(op, _clipped(layer, op, c_))))
    if "po" in inner:
        o_ = op.Add(o_, op.Mul(inner["po"], c))
    o = f(op, _clipped(layer, op, o_))
    return [op.Mul(o, h(op, c)), c]


def _gru_weights(layer: _Layer, op: Builder, k: int) -> tuple[Value, dict[str, Value]]:
    lbr = layer.node.attributes.get("linear_before_reset")
    linear = lbr is not None and lbr.as_int() != 0
    xw, rt, rbh = _projection(layer, op, k, 1 if linear else 0)
    hsz = layer.hidden
    inner = {"rt_zr": op.Slice(rt, [0], [2 * hsz], [1]),
             "rt_h": op.Slice(rt, [2 * hsz], [3 * hsz], [1])}
    if linear and rbh is not None:
        inner["rbh"] = rbh
    layer.extra["linear"] = int(linear)
    return xw, inner


def _gru_cell(layer: _Layer, op: Builder, k: int, states: list[Value], xw: Value,
              inner: dict[str, Value]) -> list[Value]:
    """z, r = f(x·Wᵀ + h·Rᵀ + b); h̃ = g(x·Whᵀ + (r⊙h)·Rhᵀ + b), or with linear_before_reset
    g(x·Whᵀ + r⊙(h·Rhᵀ + Rbh) + Wbh); H = (1 − z)⊙h̃ + z⊙h."""
    f, g = layer.acts[k]
    (h0,) = states
    xz, xr, xh = op.Split(xw, [layer.hidden] * 3, outputs=3, axis=-1)
    hz, hr = op.Split(op.MatMul(h0, inner["rt_zr"]), [layer.hidden] * 2, outputs=2,
                      axis=-1)
    z = f(op, _clipped(layer, op, op.Add(xz, hz)))
    r = f(op, _clipped(layer, op, op.Add(xr, hr)))
    if layer.extra["linear"]:
        hh = op.MatMul(h0, inner["rt_h"])
        if "rbh" in inner:
            hh = op.Add(hh, inner["rbh"])
        pre = op.Add(xh, op.Mul(r, hh))
    else:
        pre = op.Add(xh, op.MatMul(op.Mul(r, h0), inner["rt_h"]))
    cand = g(op, _clipped(layer, op, pre))
    return [op.Add(op.Mul(op.Sub(op.scalar(1.0, z), z), cand), op.Mul(z, h0))]


def _rnn_weights(layer: _Layer, op: Builder, k: int) -> tuple[Value, dict[str, Value]]:
    xw, rt, _ = _projection(layer, op, k)
    return xw, {"rt": rt}


def _rnn_cell(layer: _Layer, op: Builder, k: int, states: list[Value], xw: Value,
              inner: dict[str, Value]) -> list[Value]:
    """H = f(x·Wᵀ + h·Rᵀ + Wb + Rb)."""
    (f,) = layer.acts[k]
    return [f(op, _clipped(layer, op, op.Add(xw, op.MatMul(states[0], inner["rt"]))))]


@expansion("LSTM")
def lstm(node: ir.Node, op: Builder) -> list[Value | None]:
    return _expand(node, op, 4, ("Sigmoid", "Tanh", "Tanh"), _lstm_cell, _lstm_weights)


@expansion("GRU")
def gru(node: ir.Node, op: Builder) -> list[Value | None]:
    return _expand(node, op, 3, ("Sigmoid", "Tanh"), _gru_cell, _gru_weights)


@expansion("RNN")
def rnn(node: ir.Node, op: Builder) -> list[Value | None]:
    return _expand(node, op, 1, ("Tanh",), _rnn_cell, _rnn_weights)
