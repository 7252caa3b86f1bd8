"""Reverse-mode differentiation of an ONNX graph into more nodes of the same graph.

Only nodes on a path from a trainable parameter to the loss are differentiated (backward
pruning): a frozen prefix gets no backward nodes at all. A node that holds subgraphs reads
the outer values they capture; those count as its inputs for deciding what depends on a
parameter, so a weight read only inside an If branch still reaches the loss through the If.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
import onnx_ir as ir

from .._ir import Builder, Namer, Value, is_float, reads, value_names
from ..errors import UnsupportedOpError
from ._expand import expand_functions
from ._registry import NON_DIFFERENTIABLE, RULES, GradContext
from ._shapes import refine_shapes


def differentiable_values(nodes: Sequence[ir.Node], wrt: Sequence[Value]) -> set[int]:
    """Ids of the float values that depend on at least one of ``wrt`` (subgraph reads too)."""
    dep = {id(v) for v in wrt}
    for node in nodes:
        if node.op_type in NON_DIFFERENTIABLE:
            continue
        if any(id(v) in dep for v in reads(node)):
            dep.update(id(o) for o in node.outputs if is_float(o.dtype))
    return dep


def _path(nodes: Sequence[ir.Node], outputs: Sequence[Value], dep: set[int]
          ) -> tuple[list[ir.Node], set[int]]:
    """The nodes between the parameters and ``outputs``, in reverse order, and the ids of the
    values on that path."""
    reaches = {id(v) for v in outputs}
    needed: list[ir.Node] = []
    for node in reversed(nodes):
        if node.op_type in NON_DIFFERENTIABLE:
            continue
        if any(id(o) in reaches for o in node.outputs) and any(id(v) in dep
                                                               for v in reads(node)):
            needed.append(node)
            reaches.update(id(v) for v in reads(node) if id(v) in dep)
    return needed, reaches


def build_gradients(graph: ir.Graph, loss: Value, wrt: Sequence[Value], op: Builder,
                    seed: Value | None = None) -> dict[str, Value]:
    """Append to ``graph`` (through ``op``) the nodes computing d(loss)/d(w) for each w.

    ``seed`` is d(final)/d(loss) (1 when absent; the learning rate for plain SGD). Returns
    ``{w.name: gradient}`` for the parameters that reach the loss; the others are absent.
    """
    first = seed if seed is not None else op.scalar(1.0, loss)
    grads = backward(graph, [(loss, first)], wrt, wrt, op)
    return {w.name: g for w, g in zip(wrt, grads, strict=True) if g is not None and w.name}


def backward(graph: ir.Graph, seeds: Sequence[tuple[Value, Value]], sources: Sequence[Value],
             targets: Sequence[Value], op: Builder) -> list[Value | None]:
    """The gradients of ``Σ_j <seed_j, out_j>`` w.r.t. each of ``targets`` (``None`` where
    none flows), for ``seeds`` of ``(out_j, seed_j)`` pairs: the vector-Jacobian product of
    the nodes of ``graph``.

    ``sources`` are the values the parameters reach ``graph`` through (the dependency analysis
    starts there). ``op`` builds the backward nodes, into ``graph`` itself or into another
    graph: the rules of If, Loop and Scan build a subgraph's backward as the body of a
    backward node, where the outer values and the seeds are read as captured values.
    """
    refine_shapes(graph, op.opset)  # what ONNX's inference lost around subgraphs
    replaced: dict[int, tuple[Value, Value]] = {}
    expand_functions(graph, sources, op, replaced)  # ops without a rule become their bodies
    nodes = list(graph)  # the forward nodes, before any backward node is appended
    dep = differentiable_values(nodes, sources)
    live = [(_current(v, replaced), s) for v, s in seeds]
    live = [(v, s) for v, s in live if id(v) in dep]
    if not live:
        return [None] * len(targets)
    needed, reaches = _path(nodes, [v for v, _ in live], dep)
    grads: dict[int, list[Value]] = {}
    for v, s in live:
        grads.setdefault(id(v), []).append(s)
    for node in needed:
        _differentiate_node(node, grads, dep, reaches, op)
    return [_total(op, grads.get(id(t))) for t in targets]


def _current(v: Value, replaced: dict[int, tuple[Value, Value]]) -> Value:
    """``v``, or the value that took its place when its node was expanded."""
    while id(v) in replaced and replaced[id(v)][0] is v:
        v = replaced[id(v)][1]
    return v


def _differentiate_node(node: ir.Node, grads: dict[int, list[Value]], dep: set[int],
                        reaches: set[int], op: Builder) -> None:
    """Ask ``node``'s rule for the gradients of what it reads; add them to ``grads``."""
    douts = [_total(op, grads.get(id(o))) for o in node.outputs]
    if all(d is None for d in douts):
        return
    rule = RULES.get(node.op_type)
    if rule is None:
        raise UnsupportedOpError(
            f"no gradient rule for op {node.op_type!r} (node {node.name or '<unnamed>'!r}, "
            f"outputs {[o.name for o in node.outputs]}) on the path from the trainable "
            f"parameters to the loss. Freeze the parameters before it or use a supported "
            f"op. Supported: {', '.join(sorted(RULES))}")
    explicit = {id(v) for v in node.inputs if v is not None}
    targets = list(node.inputs) + [v for v in reads(node) if id(v) not in explicit]
    needs = [v is not None and id(v) in dep and id(v) in reaches for v in targets]
    implicit = [v for v in targets[len(node.inputs):] if v is not None]
    ctx = GradContext(node, douts, needs, dep, op, implicit=implicit)
    for v, g in zip(targets, rule(ctx, op)):
        if g is not None and v is not None and id(v) in dep and id(v) in reaches:
            _same_shape(g, v)
            grads.setdefault(id(v), []).append(g)


def _same_shape(g: Value, v: Value) -> None:
    """A gradient has its value's shape: give it the forward value's symbols (``batch``)
    where inference through the backward nodes lost them, so later rules decide statically."""
    if v.shape is not None and (g.shape is None or len(g.shape) == len(v.shape)) \
            and g.producer() is not None and g is not v:
        g.shape = v.shape


def _total(op: Builder, parts: list[Value] | None) -> Value | None:
    if not parts:
        return None
    if len(parts) > 1:
        total = op.Sum(*parts)
        parts[:] = [total]
    return parts[0]


def differentiate(model: onnx.ModelProto, wrt: Sequence[str], loss: str = "loss"
                  ) -> tuple[onnx.ModelProto, int]:
    """``model`` with the backward of ``loss`` appended: outputs ``loss, grad_<w>…``.

    The autodiff pass on its own, for tests and tools: ``model`` must be shape-inferred;
    ``wrt`` names graph inputs or initializers. Returns the model and the number of backward
    nodes emitted.
    """
    m = ir.serde.deserialize_model(model)
    g = m.graph
    op = Builder(g, m.opset_imports.get("", 18), Namer(value_names(g), prefix="grad/"))
    values = {v.name: v for v in g.inputs}
    values.update(g.initializers)
    values.update((v.name, v) for n in g for v in n.outputs if v.name)
    grads = build_gradients(g, values[loss], [values[w] for w in wrt], op)
    n_backward = len(op.nodes)
    outputs = [values[loss]]
    for w in wrt:
        if w in grads:
            out = op.named("Identity", f"grad_{w}", grads[w])
            out.shape = values[w].shape
            outputs.append(out)
    g.outputs.clear()
    g.outputs.extend(outputs)
    return ir.serde.serialize_model(m), n_backward
