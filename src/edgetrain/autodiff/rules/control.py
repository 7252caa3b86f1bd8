"""Control flow: If, Loop and Scan, differentiated through their subgraphs.

A subgraph's backward is built by the engine itself (``_engine.backward``) into the body of a
backward node: an ``If`` on the same condition for an If; for a Scan a ``Scan``, and for a
Loop a ``Loop``, running over the iterations last first. The backward graph reads outer
values (weights, the gradients flowing in) as captured values. What it reads of the forward
subgraph's own values is *stashed*: the forward node is made to output it (an extra If
output; an extra scan output of a Loop or Scan, one slice per iteration), so nothing is
computed twice.

Gradients of the outer values a subgraph reads (weights used only inside a branch or a loop
body) are returned after those of the node's inputs; a loop sums them over the iterations.
A Loop's gradient holds its iteration count fixed: exact wherever the count does not change
under a small change of the weights (a data-dependent condition is a step function, like
Floor), and the stash records how many iterations ran, so no bound is needed. Refused: a
carried value whose shape changes from one iteration to the next (it has no one shape to
stash per iteration).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..._ir import (
    Builder,
    Value,
    all_nodes,
    captured,
    const_array,
    dims,
    is_float,
    np_dtype,
    static_dims,
)
from ...errors import UnsupportedOpError
from .._engine import backward, differentiable_values
from .._helpers import INT64_MIN
from .._registry import GradContext, grad_rule

#: Constants of a forward subgraph up to this many elements are copied into its backward
#: graph; larger ones are stashed like any other value.
_COPY_ELEMENTS = 1 << 16


# -- what every subgraph rule shares -------------------------------------------------------------

def _wanted(ctx: GradContext) -> list[tuple[int, Value]]:
    """The outer values the subgraphs read that need a gradient, with the position of their
    gradient in the rule's result (an input's, when the node also takes the value as input)."""
    n = len(ctx.inputs)
    out: list[tuple[int, Value]] = []
    for v in captured(ctx.node):
        pos = next((i for i, x in enumerate(ctx.inputs) if x is v), None)
        if pos is None:
            pos = n + next(i for i, x in enumerate(ctx.implicit) if x is v)
        if ctx.needs_grad(pos):
            out.append((pos, v))
    return out


def _sources(ctx: GradContext) -> list[Value]:
    """The outer values through which the parameters reach the subgraphs."""
    return [v for v in captured(ctx.node) if ctx.differentiable(v)]


def _backward_of(ctx: GradContext, where: str, body: ir.Graph,
                 seeds: Sequence[tuple[Value, Value]], sources: Sequence[Value],
                 targets: Sequence[Value], bop: Builder) -> list[Value | None]:
    """``backward`` of a subgraph; a refusal inside it names the node that holds it too."""
    try:
        return backward(body, seeds, sources, targets, bop)
    except UnsupportedOpError as e:
        raise UnsupportedOpError(f"{e} (in the {where} of {ctx.where()})") from e


def _new_graph(op: Builder, hint: str, inputs: Sequence[Value] = ()) -> tuple[ir.Graph, Builder]:
    g = ir.Graph(list(inputs), [], nodes=[], name=op.namer.fresh(hint))
    return g, Builder(g, op.opset, op.namer)


def _input(op: Builder, hint: str, like: Value) -> Value:
    """A new graph input typed and shaped like ``like``."""
    return ir.Value(name=op.namer.fresh(hint), type=like.type, shape=like.shape)


def _output(bop: Builder, v: Value) -> Value:
    """``v`` as a value produced inside ``bop``'s graph (graph outputs must be)."""
    producer = v.producer()
    if producer is not None and producer.graph is bop.graph and not v.is_graph_output():
        return v
    return bop.Identity(v)


def _distinct(bop: Builder, values: Sequence[Value]) -> list[Value]:
    """``values`` as graph outputs: each produced in ``bop``'s graph, none twice."""
    out: list[Value] = []
    for v in values:
        v = _output(bop, v)
        out.append(bop.Identity(v) if any(v is o for o in out) else v)
    return out


def _forward_reads(back: ir.Graph, body: ir.Graph) -> list[Value]:
    """The values of the forward subgraph ``body`` that ``back`` reads (at any depth)."""
    out: dict[int, Value] = {}
    for n in all_nodes(back):
        for v in n.inputs:
            if v is not None and v.graph is body:
                out.setdefault(id(v), v)
    return list(out.values())


def _replace_reads(back: ir.Graph, old: Value, new: Value) -> None:
    for n in list(all_nodes(back)):
        for i, v in enumerate(n.inputs):
            if v is old:
                n.replace_input_with(i, new)


def _copied(bop: Builder, v: Value) -> Value | None:
    """A small constant of the forward subgraph, copied into the backward graph."""
    arr = const_array(v, _COPY_ELEMENTS)
    return None if arr is None else bop.const(arr, hint="copied")


def _typed(values: Sequence[Value], like: Sequence[Value]) -> None:
    for v, w in zip(values, like, strict=True):
        v.type, v.shape = w.type, w.shape


def _result(ctx: GradContext, op: Builder, wanted: Sequence[tuple[int, Value]],
            grads: Sequence[Value | None], explicit: Sequence[Value | None] = ()
            ) -> list[Value | None]:
    """One gradient per input then per implicit input, from the explicit inputs' gradients
    and the captured values' (summed where a value is both)."""
    out: list[Value | None] = list(explicit) + [None] * (
        len(ctx.inputs) + len(ctx.implicit) - len(explicit))
    for (pos, _), g in zip(wanted, grads, strict=True):
        if g is not None:
            before = out[pos]
            out[pos] = g if before is None else op.Add(before, g)
    return out


# -- If ------------------------------------------------------------------------------------------

@grad_rule("If")
def if_(ctx: GradContext, op: Builder) -> list[Value | None]:
    """y = then_branch() if cond else else_branch(), where the branches read outer values
    u: du = If(cond, then: backward of then_branch, else: backward of else_branch), each
    branch returning zeros for the outer values it does not read.

    A constant condition (folded at compile) leaves the other branch's backward out (zeros):
    it never runs, and a stash from it would be the empty filler when a runtime folds the
    forward If, which breaks the shape inference of the backward branch that reads it."""
    wanted = _wanted(ctx)
    if not wanted:
        return [None] * (len(ctx.inputs) + len(ctx.implicit))
    seeds = [j for j, o in enumerate(ctx.outputs) if ctx.has_dy(j) and is_float(o.dtype)]
    sources = _sources(ctx)
    cond = ctx.const_value(ctx.x(0))
    taken = None if cond is None else "then_branch" if cond.reshape(-1)[0] else "else_branch"
    graphs: dict[str, ir.Graph] = {}
    for attr in ("then_branch", "else_branch"):
        branch = ctx.node.attributes[attr].as_graph()
        g, bop = _new_graph(op, f"{attr}_grad")
        grads: list[Value | None] = [None] * len(wanted)  # a branch that never runs: zeros
        if taken in (None, attr):
            grads = _backward_of(ctx, attr, branch, [(branch.outputs[j], ctx.dy(j))
                                                     for j in seeds],
                                 sources, [v for _, v in wanted], bop)
        g.outputs.extend(_distinct(bop, [d if d is not None else bop.zeros_like(v)
                                         for d, (_, v) in zip(grads, wanted, strict=True)]))
        graphs[attr] = g
    for attr, g in graphs.items():
        branch = ctx.node.attributes[attr].as_graph()
        bop = Builder(g, op.opset, op.namer)
        for v in _forward_reads(g, branch):
            _replace_reads(g, v, _copied(bop, v) or _stash_if(ctx, op, attr, v))
    outs = op.node("If", [ctx.x(0)], graphs, outputs=len(wanted))
    _typed(outs, [v for _, v in wanted])
    return _result(ctx, op, wanted, outs)


def _stash_if(ctx: GradContext, op: Builder, attr: str, v: Value) -> Value:
    """Output ``v`` of branch ``attr`` from the forward If; the other branch outputs a tensor
    of its type there: an empty one (an If's branches may differ in shape), or, for an If
    inside a subgraph that may be a loop body (whose stashes must have one shape in every
    iteration), zeros of ``v``'s shape when it is static."""
    node = ctx.node
    branch = node.attributes[attr].as_graph()
    for j, o in enumerate(branch.outputs):
        if o is v:
            return node.outputs[j]
    other = node.attributes["else_branch" if attr == "then_branch" else "then_branch"].as_graph()
    branch.outputs.append(v)
    other.outputs.append(_filler(ctx, op, other, v))
    node.resize_outputs(len(node.outputs) + 1)
    out = node.outputs[-1]
    out.name = op.namer.fresh(f"{v.name or 'stash'}/stash")
    out.type = v.type
    if other.outputs[-1].shape != v.shape:
        _RAGGED.add(out)
    ctx.outputs = list(node.outputs)
    return out


#: Stashed If outputs whose branches give different shapes (a loop cannot stack them).
_RAGGED: weakref.WeakSet[Value] = weakref.WeakSet()


def _filler(ctx: GradContext, op: Builder, other: ir.Graph, v: Value) -> Value:
    bop = Builder(other, op.opset, op.namer)
    dtype = np_dtype(v.dtype or ir.DataType.FLOAT)
    shape = static_dims(v)
    if ctx.node.graph is not op.graph and shape is not None:
        zeros = bop.ConstantOfShape(bop.const(np.array(shape, dtype=np.int64)),
                                    value=ir.tensor(np.zeros(1, dtype=dtype)))
        zeros.shape = v.shape
        return zeros
    rank = len(v.shape) if v.shape is not None else 0
    return bop.op("Constant", value=ir.tensor(np.zeros((0,) * rank, dtype=dtype)))


# -- Loop and Scan -------------------------------------------------------------------------------

@dataclass
class _Recurrence:
    """A Loop's or a Scan's forward, seen alike: a body carrying states from one iteration to
    the next, reading per-iteration slices (Scan) and writing per-iteration slices. The
    node's outputs are the final states, then the stacked slices."""

    body: ir.Graph
    state_in: list[Value]            # body inputs of the carried states
    state_out: list[Value]           # body outputs of the carried states
    state_pos: int                   # position of the initial states among the node's inputs
    scan_in: list[Value]             # body inputs of the per-iteration slices (Scan)
    scan_out: list[Value]            # body outputs of the per-iteration slices
    in_axes: list[int] = field(default_factory=list)   # slicing axis of each scanned input
    in_dirs: list[int] = field(default_factory=list)   # 1: the last slice comes first
    out_axes: list[int] = field(default_factory=list)  # stacking axis of each scan output
    out_dirs: list[int] = field(default_factory=list)
    lead: int = 0                    # body outputs before the states (a Loop's condition)


@dataclass
class _Backward:
    """The body of the backward Scan being built: it runs over the iterations last first,
    carrying the gradients of the states and the sums of the outer values' gradients."""

    graph: ir.Graph
    op: Builder
    states: list[Value]                                        # d state (inputs)
    state_init: list[Value]                                    # their initial values
    accs: list[Value] = field(default_factory=list)            # Σ d outer so far (inputs)
    acc_init: list[Value] = field(default_factory=list)
    acc_of: list[int] = field(default_factory=list)            # index into the wanted values
    scans: list[Value] = field(default_factory=list)           # per-iteration slices (inputs)
    scan_full: list[Value] = field(default_factory=list)       # stacked, last iteration first
    outputs: list[Value] = field(default_factory=list)         # states', accs', then slices
    scanned_out: list[int] = field(default_factory=list)       # inputs whose slices it writes


def _scan_inputs(ctx: GradContext, r: _Recurrence) -> list[Value | None]:
    start = r.state_pos + len(r.state_in)
    return [ctx.input(start + m) for m in range(len(r.scan_in))]


def _dependent_states(ctx: GradContext, r: _Recurrence) -> tuple[list[int], list[Value]]:
    """The carried float states that depend on a parameter in some iteration (a fixed point:
    a state may start to depend after another one does), and the body's sources."""
    sources = _sources(ctx) + [s for s, x in zip(r.scan_in, _scan_inputs(ctx, r), strict=True)
                               if ctx.differentiable(x)]
    live = [k for k in range(len(r.state_in)) if ctx.differentiable(ctx.input(r.state_pos + k))]
    while True:
        dep = differentiable_values(list(r.body), sources + [r.state_in[k] for k in live])
        more = [k for k, o in enumerate(r.state_out) if k not in live and id(o) in dep
                and is_float(r.state_in[k].dtype)]
        if not more:
            return sorted(live), sources + [r.state_in[k] for k in live]
        live += more


def _same_shape_states(ctx: GradContext, r: _Recurrence, live: Sequence[int]) -> None:
    """A state whose shape changes between iterations cannot be stashed per iteration."""
    for k in live:
        a, b = dims(r.state_in[k]), dims(r.state_out[k])
        if a is not None and b is not None and (len(a) != len(b) or any(
                isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a, b))):
            raise UnsupportedOpError(
                f"{ctx.where()}: the carried value {r.state_in[k].name!r} changes shape from "
                f"one iteration to the next ({list(a)} -> {list(b)}); its gradient needs one "
                "shape per iteration")


def _reverse0(op: Builder, x: Value) -> Value:
    return op.Slice(x, [-1], [INT64_MIN], [0], [-1])


def _moved(ctx: GradContext, op: Builder, x: Value, axis: int, to_front: bool) -> Value:
    """``x`` with its ``axis`` moved to the front (or axis 0 moved back to ``axis``)."""
    if axis == 0:
        return x
    rank = ctx.rank(x)
    axis = axis + rank if axis < 0 else axis
    if to_front:
        perm = [axis] + [i for i in range(rank) if i != axis]
    else:
        perm = list(range(1, axis + 1)) + [0] + list(range(axis + 1, rank))
    return op.Transpose(x, perm=perm)


def _reverse_recurrence(ctx: GradContext, op: Builder, r: _Recurrence, kind: str
                        ) -> list[Value | None]:
    """The gradients of a Loop or Scan (one per input, then per implicit input), computed by
    a backward Scan over the iterations, last first."""
    live, sources = _dependent_states(ctx, r)
    _same_shape_states(ctx, r, live)
    g, bop = _new_graph(op, f"{kind}_grad_body")
    b = _Backward(g, bop, [_input(op, "d_state", r.state_out[k]) for k in live],
                  [ctx.dy(k) for k in live])
    seeds = list(zip([r.state_out[k] for k in live], b.states, strict=True))
    for k, o in enumerate(r.scan_out):
        j = len(r.state_in) + k
        if ctx.has_dy(j) and is_float(o.dtype):
            b.scans.append(_input(op, "d_slice", o))
            seeds.append((o, b.scans[-1]))
            moved = _moved(ctx, op, ctx.dy(j), r.out_axes[k], True)
            b.scan_full.append(moved if r.out_dirs[k] == 1 else _reverse0(op, moved))
    first_scanned = r.state_pos + len(r.state_in)
    scanned = [m for m in range(len(r.scan_in)) if ctx.needs_grad(first_scanned + m)]
    wanted = _wanted(ctx)
    targets = [r.state_in[k] for k in live] + [r.scan_in[m] for m in scanned] + \
        [v for _, v in wanted]
    grads = _backward_of(ctx, "body", r.body, seeds, sources, targets, bop)
    n, m = len(live), len(live) + len(scanned)
    _body_outputs(b, live, grads[:n], scanned, grads[n:m], wanted, grads[m:], op)
    _stash_all(ctx, op, r, b)
    outs = _backward_loop(op, b) if kind == "loop" else _backward_scan(op, b)
    result: list[Value | None] = [None] * len(ctx.inputs)
    for k, d in zip(live, outs, strict=False):
        result[r.state_pos + k] = d
    d_outer: list[Value | None] = [None] * len(wanted)
    for i, d in zip(b.acc_of, outs[n:], strict=False):
        d_outer[i] = d
    for mi, d in zip(b.scanned_out, outs[n + len(b.accs):], strict=True):
        elem = r.scan_in[mi].shape
        if d.shape is None and elem is not None:
            d.shape = ir.Shape([None, *elem])
        back = d if r.in_dirs[mi] == 1 else _reverse0(op, d)
        result[first_scanned + mi] = _moved(ctx, op, back, r.in_axes[mi], False)
    return _result(ctx, op, wanted, d_outer, result)


def _body_outputs(b: _Backward, live: Sequence[int], d_states: Sequence[Value | None],
                  scanned: Sequence[int], d_scans: Sequence[Value | None],
                  wanted: Sequence[tuple[int, Value]], d_outer: Sequence[Value | None],
                  op: Builder) -> None:
    """The backward body's outputs: the states' gradients one iteration earlier, the running
    sums of the outer values' gradients, the scanned inputs' slices' gradients."""
    bop = b.op
    for s, d in zip(b.states, d_states, strict=True):
        b.outputs.append(d if d is not None else bop.zeros_like(s))
    for i, ((_, v), d) in enumerate(zip(wanted, d_outer, strict=True)):
        if d is not None:
            acc = _input(op, "d_sum", v)
            b.accs.append(acc)
            b.acc_init.append(op.zeros_like(v))
            b.acc_of.append(i)
            b.outputs.append(bop.Add(acc, d))
    for m, d in zip(scanned, d_scans, strict=True):
        if d is not None:
            b.scanned_out.append(m)
            b.outputs.append(d)


def _stash_all(ctx: GradContext, op: Builder, r: _Recurrence, b: _Backward) -> None:
    """Read what the backward body needs of the forward body's values from per-iteration
    stashes (small constants are copied instead)."""
    for v in _forward_reads(b.graph, r.body):
        if v in _RAGGED:
            raise UnsupportedOpError(
                f"{ctx.where()}: the gradient of an If in its body needs {v.name!r} from one "
                "branch, whose shape is not static, in every iteration; give the model static "
                "shapes")
        copy = _copied(b.op, v)
        if copy is not None:
            _replace_reads(b.graph, v, copy)
            continue
        elem = _input(op, "stashed", v)
        _replace_reads(b.graph, v, elem)
        b.scans.append(elem)
        b.scan_full.append(_reverse0(op, _stash_scan(ctx, op, r, v)))
    if not b.scans:  # the backward Scan needs a scanned input to count the iterations
        one = Builder(r.body, op.opset, op.namer).op(
            "Constant", value=ir.tensor(np.array(0, dtype=np.int64)))
        b.scans.append(_input(op, "iteration", one))
        b.scan_full.append(_stash_scan(ctx, op, r, one))


def _stash_scan(ctx: GradContext, op: Builder, r: _Recurrence, v: Value) -> Value:
    """Make the forward node output ``v`` of every iteration, stacked along axis 0 in
    iteration order (a new scan output)."""
    node = ctx.node
    r.body.outputs.append(Builder(r.body, op.opset, op.namer).Identity(v))
    for name in ("scan_output_axes", "scan_output_directions"):
        if name in node.attributes:
            old = list(node.attributes[name].as_ints())
            node.attributes[name] = ir.AttrInt64s(name, [*old, 0])
    node.resize_outputs(len(r.body.outputs) - r.lead)
    out = node.outputs[-1]
    out.name = op.namer.fresh(f"{v.name or 'stash'}/stash")
    out.type = v.type
    if v.shape is not None:
        out.shape = ir.Shape([None, *v.shape])
    ctx.outputs = list(node.outputs)
    return out


def _backward_scan(op: Builder, b: _Backward) -> list[Value]:
    """The backward Scan node; its outputs: the initial states' gradients, the outer values'
    gradient sums, and the scanned inputs' gradients stacked last iteration first."""
    b.graph.inputs.extend([*b.states, *b.accs, *b.scans])
    b.graph.outputs.extend(_distinct(b.op, b.outputs))
    outs = op.node("Scan", [*b.state_init, *b.acc_init, *b.scan_full],
                   {"body": b.graph, "num_scan_inputs": len(b.scans)},
                   outputs=len(b.outputs))
    _typed_outputs(outs, b)
    return outs


def _backward_loop(op: Builder, b: _Backward) -> list[Value]:
    """A Loop's backward as a Loop over the stashed iterations, reading slice ``i`` of each
    stash (stacked last iteration first): unlike a Scan (in onnxruntime), it also runs when
    the forward ran no iteration at all."""
    g, bop = b.graph, b.op
    it = ir.Value(name=op.namer.fresh("iteration"), type=ir.TensorType(ir.DataType.INT64),
                  shape=ir.Shape([]))
    cond = ir.Value(name=op.namer.fresh("cond"), type=ir.TensorType(ir.DataType.BOOL),
                    shape=ir.Shape([]))
    first = next(iter(g), None)
    at = bop.at(before=first) if first is not None else bop
    for elem, full in zip(b.scans, b.scan_full, strict=True):
        _replace_reads(g, elem, at.Gather(full, it, axis=0))
    g.inputs.extend([it, cond, *b.states, *b.accs])
    g.outputs.extend([bop.Identity(cond), *_distinct(bop, b.outputs)])
    trips = op.Gather(op.Shape(b.scan_full[0]), op.const(np.array(0, dtype=np.int64)), axis=0)
    outs = op.node("Loop", [trips, None, *b.state_init, *b.acc_init], {"body": g},
                   outputs=len(b.outputs))
    _typed_outputs(outs, b)
    return outs


def _typed_outputs(outs: Sequence[Value], b: _Backward) -> None:
    n = len(b.states) + len(b.accs)
    _typed(outs[:n], [*b.state_init, *b.acc_init])
    for o, inner in zip(outs[n:], b.outputs[n:], strict=True):
        o.type = inner.type
        o.shape = ir.Shape([None, *inner.shape]) if inner.shape is not None else None


@grad_rule("Scan")
def scan(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Scan carries states s through a body f over slices x_t: (s_t+1, y_t) = f(s_t, x_t).
    Its gradient is a Scan over t in reverse: (ds_t, dx_t, du) from the body's backward at
    iteration t (seeded by ds_t+1 and dy_t), the outer values' du summed over t."""
    body = ctx.node.attributes["body"].as_graph()
    m = int(ctx.attr("num_scan_inputs"))
    n = len(ctx.inputs) - m
    k = len(body.outputs) - n

    def ints(name: str, count: int) -> list[int]:
        return [int(a) for a in ctx.attr(name, [0] * count)]

    r = _Recurrence(body, list(body.inputs[:n]), list(body.outputs[:n]), 0,
                    list(body.inputs[n:]), list(body.outputs[n:]),
                    ints("scan_input_axes", m), ints("scan_input_directions", m),
                    ints("scan_output_axes", k), ints("scan_output_directions", k))
    return _reverse_recurrence(ctx, op, r, "scan")


@grad_rule("Loop")
def loop(ctx: GradContext, op: Builder) -> list[Value | None]:
    """Loop carries states s through a body f for as many iterations as ran:
    (c, s_t+1, y_t) = f(t, c, s_t). Its gradient is a Loop over the iterations in reverse,
    computing what Scan's does; the iteration count and the condition get no gradient."""
    body = ctx.node.attributes["body"].as_graph()
    n = len(body.inputs) - 2
    k = len(body.outputs) - 1 - n
    r = _Recurrence(body, list(body.inputs[2:]), list(body.outputs[1:1 + n]), 2, [],
                    list(body.outputs[1 + n:]), [], [], [0] * k, [0] * k, lead=1)
    return _reverse_recurrence(ctx, op, r, "loop")
