"""edgetrain's graph representation: onnx-ir, plus the few facts every pass needs.

The compiler, the gradient rules, LoRA, the feature splitter and the packager all work on
``onnx_ir`` graphs: values carry their element type, shape and constant value; subgraphs
(If/Loop/Scan bodies) are graphs of their own whose reads of outer values are the outer
``ir.Value`` objects themselves, so :func:`captured` can list them.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir

from ._builder import Arg, AttrValue, Builder, Namer, Value
from ._infer import infer_outputs
from ._types import (
    FLOAT_TYPES,
    Dim,
    Dims,
    const_array,
    data_type,
    dims,
    dtype_name,
    is_float,
    np_dtype,
    numel,
    static_dims,
)


def subgraphs(node: ir.Node) -> Iterator[ir.Graph]:
    """The graphs held by ``node``'s attributes (If branches, Loop and Scan bodies)."""
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.as_graph()
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.as_graphs()


def all_nodes(graph: ir.Graph) -> Iterator[ir.Node]:
    """Every node of ``graph`` and of its subgraphs, at any depth."""
    for node in graph:
        yield node
        for sub in subgraphs(node):
            yield from all_nodes(sub)


def captured(node: ir.Node) -> list[ir.Value]:
    """Outer values that ``node``'s subgraphs read (its implicit inputs), in first-use order."""
    inner: set[int] = set()
    out: dict[int, ir.Value] = {}
    for sub in subgraphs(node):
        _collect_captured(sub, inner, out)
    return list(out.values())


def _collect_captured(graph: ir.Graph, inner: set[int], out: dict[int, ir.Value]) -> None:
    inner.update(id(v) for v in graph.inputs)
    inner.update(id(v) for v in graph.initializers.values())
    for n in graph:
        for v in n.inputs:
            if v is not None and id(v) not in inner:
                out.setdefault(id(v), v)
        for sub in subgraphs(n):
            _collect_captured(sub, inner, out)
        inner.update(id(v) for v in n.outputs)


def reads(node: ir.Node) -> list[ir.Value]:
    """Everything ``node`` reads: its inputs and the outer values its subgraphs capture."""
    explicit = [v for v in node.inputs if v is not None]
    return explicit + [v for v in captured(node) if v not in explicit]


def value_names(graph: ir.Graph) -> set[str]:
    """Every value and node name used in ``graph`` at any depth (for fresh names)."""
    names = {v.name for v in graph.inputs if v.name}
    names.update(k for k in graph.initializers)
    for n in all_nodes(graph):
        if n.name:
            names.add(n.name)
        names.update(v.name for v in n.outputs if v.name)
    for sub in (s for n in all_nodes(graph) for s in subgraphs(n)):
        names.update(v.name for v in sub.inputs if v.name)
    return names


__all__ = [
    "FLOAT_TYPES", "Arg", "AttrValue", "Builder", "Dim", "Dims", "Namer", "Value", "all_nodes",
    "captured", "const_array", "data_type", "dims", "dtype_name", "infer_outputs", "is_float",
    "np_dtype", "numel", "reads", "static_dims", "subgraphs", "value_names",
]
