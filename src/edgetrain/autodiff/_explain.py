"""Why no gradient reaches the parameters: the nodes that cut every path to the loss.

A parameter can reach the loss only through ops that carry no gradient (ArgMax, Floor,
Shape, a cast to an integer type, …). Refusing such a model with "nothing to train" leaves
the user searching; naming the op and the node where the path is cut does not.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from .._ir import Value, reads
from ._engine import differentiable_values


def gradient_cuts(graph: ir.Graph, loss: Value, wrt: Sequence[Value]) -> list[ir.Node]:
    """The nodes on a path from ``wrt`` to ``loss`` that read a value depending on ``wrt``
    but whose outputs carry no gradient (a non-differentiable op, or integer outputs)."""
    nodes = list(graph)
    dep = differentiable_values(nodes, wrt)
    ancestors = {id(loss)}
    for node in reversed(nodes):
        if any(id(o) in ancestors for o in node.outputs):
            ancestors.update(id(v) for v in reads(node))
    return [n for n in nodes
            if any(id(o) in ancestors for o in n.outputs)
            and any(id(v) in dep for v in reads(n))
            and not any(id(o) in dep for o in n.outputs)]


def describe_cuts(cuts: Sequence[ir.Node]) -> str:
    """The first few cuts as ``Op node 'name'``, for an error message."""
    named = [f"{n.op_type} node {n.name or '<unnamed>'!r}" for n in cuts[:3]]
    more = f" and {len(cuts) - 3} more" if len(cuts) > 3 else ""
    return ", ".join(named) + more
