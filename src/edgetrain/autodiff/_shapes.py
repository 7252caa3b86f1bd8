"""Shapes ONNX's inference leaves unknown around subgraphs, recovered before differentiating.

Gradient rules decide statically from shapes (a MatMul's rank, a Conv's spatial sizes), and
ONNX's inference loses them in three places: inside a subgraph it does not read the values of
the outer constants the subgraph uses (the axes of a Squeeze, the shape of a Reshape); it
drops the shapes of a Loop's carried values (they may change from one iteration to the next);
and a body input declared without a shape stays so. Here each node with an unknown output
shape is inferred again, in order, with what the values themselves carry (the outer
constants' values), and a node with subgraphs gets the shapes its subgraphs prove.
"""

from __future__ import annotations

import onnx_ir as ir

from .._ir import Dim, Dims, dims, infer_outputs, subgraphs


def refine_shapes(graph: ir.Graph, opset: int, inner: bool = False) -> None:
    """Fill in the unknown shapes of ``graph``'s values (at every depth) that can be proven.

    Inside a subgraph (``inner``) a named dim counts as unknown too: there ONNX names the
    sizes it could not compute (``unk__3``), and the sizes may well be numbers.
    """
    for node in graph:
        subs = list(subgraphs(node))
        if node.op_type in ("Loop", "Scan"):
            _body_inputs(node)
        for sub in subs:
            refine_shapes(sub, opset, inner=True)
        if all(_known(o, inner) for o in node.outputs):
            continue
        if not subs:
            _infer_again(node, opset)
        elif node.op_type == "If":
            _if_outputs(node, subs)
        elif node.op_type in ("Loop", "Scan"):
            _carried_outputs(node)


def _known(v: ir.Value, numbers_only: bool) -> bool:
    shape = dims(v)
    return shape is not None and all(
        isinstance(d, int) or (d is not None and not numbers_only) for d in shape)


def _infer_again(node: ir.Node, opset: int) -> None:
    """ONNX's inference of ``node`` with its inputs as they are now, merged with what was
    known: a number wins, then a named dim, then unknown."""
    before = [dims(o) for o in node.outputs]
    infer_outputs(node, opset)
    for o, old in zip(node.outputs, before, strict=True):
        new = dims(o)
        if old is not None and (new is None or len(new) != len(old)):
            o.shape = ir.Shape(old)
        elif old is not None and new is not None:
            o.shape = ir.Shape([_better(a, b) for a, b in zip(new, old, strict=True)])


def _better(new: Dim, old: Dim) -> Dim:
    if isinstance(new, int) or old is None:
        return new
    return old


def _if_outputs(node: ir.Node, branches: list[ir.Graph]) -> None:
    """An If's output has its branches' shape where they agree."""
    for j, o in enumerate(node.outputs):
        shapes = {dims(b.outputs[j]) for b in branches if j < len(b.outputs)}
        if o.shape is None and len(shapes) == 1 and None not in shapes:
            o.shape = branches[0].outputs[j].shape


def _split(node: ir.Node) -> tuple[ir.Graph, int, int, int]:
    """The body, the count of carried states, of leading body inputs (a Loop's iteration
    number and condition) and of leading body outputs (a Loop's condition)."""
    body = node.attributes["body"].as_graph()
    if node.op_type == "Loop":
        return body, len(body.inputs) - 2, 2, 1
    return body, len(node.inputs) - node.attributes["num_scan_inputs"].as_int(), 0, 0


def _body_inputs(node: ir.Node) -> None:
    """Body inputs declared without a shape take the node's: a state its initial value's, a
    Scan's slice its scanned input's without the scanned axis."""
    body, n, lead_in, _ = _split(node)
    first = 2 if node.op_type == "Loop" else 0
    for k in range(n):
        init = node.inputs[first + k] if first + k < len(node.inputs) else None
        v = body.inputs[lead_in + k]
        if v.shape is None and init is not None and init.shape is not None:
            v.shape = init.shape
    if node.op_type != "Scan":
        return
    axes = _ints(node, "scan_input_axes", len(body.inputs) - n)
    for m, v in enumerate(body.inputs[n:]):
        x = node.inputs[n + m]
        if v.shape is None and x is not None and x.shape is not None and len(x.shape):
            axis = axes[m] % len(x.shape)
            v.shape = ir.Shape([d for i, d in enumerate(x.shape) if i != axis])


def _carried_outputs(node: ir.Node) -> None:
    """A carried state keeps its rank when the body maps its rank to itself, and each dim the
    body proves unchanged (the output's dim is the input's: a number or the same named dim);
    a scan output is its slices stacked along the output axis."""
    body, n, lead_in, lead_out = _split(node)
    first = 2 if node.op_type == "Loop" else 0
    for k in range(min(n, len(node.outputs))):
        init = node.inputs[first + k] if first + k < len(node.inputs) else None
        kept = _kept(dims(init), dims(body.inputs[lead_in + k]),
                     dims(body.outputs[lead_out + k]))
        if node.outputs[k].shape is None and kept is not None:
            node.outputs[k].shape = ir.Shape(kept)
    slices = body.outputs[lead_out + n:]
    axes = _ints(node, "scan_output_axes", len(slices))
    for j, (out, s) in enumerate(zip(node.outputs[n:], slices, strict=False)):
        if out.shape is None and s.shape is not None:
            elem = list(s.shape)
            axis = axes[j] % (len(elem) + 1)
            out.shape = ir.Shape([*elem[:axis], None, *elem[axis:]])


def _kept(init: Dims | None, before: Dims | None, after: Dims | None) -> list[Dim] | None:
    """The final state's dims: the initial ones where the body keeps them, else unknown."""
    if init is None or before is None or after is None or not len(init) == len(before) == len(
            after):
        return None
    return [d if b is not None and b == a else None for d, b, a in zip(init, before, after)]


def _ints(node: ir.Node, name: str, count: int) -> list[int]:
    a = node.attributes.get(name)
    return list(a.as_ints()) if a is not None else [0] * count
