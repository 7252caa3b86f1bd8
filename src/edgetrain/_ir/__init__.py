"""edgetrain's graph representation: onnx-ir, plus the few facts every pass needs.

The compiler, the gradient rules, LoRA, the feature splitter and the packager all work on
``onnx_ir`` graphs: values carry their element type, shape and constant value; subgraphs
(If/Loop/Scan bodies) are graphs of their own whose reads of outer values are the outer
``ir.Value`` objects themselves, so :func:`captured` can list them.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir
from onnx_ir._core import Usage

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
    "FLOAT_TYPES",
    "Arg",
    "AttrValue",
    "Builder",
    "Dim",
    "Dims",
    "Namer",
    "Value",
    "all_nodes",
    "captured",
    "const_array",
    "data_type",
    "dims",
    "dtype_name",
    "find",
    "infer_outputs",
    "is_float",
    "np_dtype",
    "numel",
    "prune",
    "reads",
    "redirect",
    "static_dims",
    "subgraphs",
    "value_names",
]


def redirect(old: ir.Value, new: ir.Value, uses: list[Usage] | None = None,
             suffix: str = "/base") -> None:
    """Make the readers of ``old`` read ``new`` (graph outputs included), and give ``new``
    ``old``'s name, so that the interface of the graph keeps its names.

    ``uses`` are the readers to move, taken before ``new``'s own subgraph was built on
    ``old`` (by default all of ``old``'s readers now, except ``new``'s producer).
    """
    producer = new.producer()
    moving = list(old.uses()) if uses is None else uses
    for use in moving:
        if use.node is not producer:
            use.node.replace_input_with(use.idx, new)
    graph = old.graph
    if graph is not None and old.is_graph_output():
        for i, out in enumerate(graph.outputs):
            if out is old:
                graph.outputs[i] = new
    name = old.name
    old.name = f"{name}{suffix}" if name else None
    new.name = name


def prune(graph: ir.Graph) -> None:
    """Remove the nodes no output needs and the initializers nothing reads (in place).

    A value nothing needs costs a kernel call per step (the float64 step number of an
    optimizer without bias correction, say) or bytes in the file.
    """
    live = {id(v) for v in graph.outputs}
    for node in reversed(list(graph)):
        if any(id(o) in live for o in node.outputs):
            live.update(id(v) for v in reads(node))
        else:
            graph.remove(node, safe=True)
    for name, v in list(graph.initializers.items()):
        if not v.uses() and not v.is_graph_output():
            del graph.initializers[name]


def find(graph: ir.Graph, name: str) -> ir.Value | None:
    """The value called ``name`` in ``graph``'s own scope (inputs, initializers, node outputs)."""
    for v in graph.inputs:
        if v.name == name:
            return v
    if name in graph.initializers:
        return graph.initializers[name]
    for n in graph:
        for v in n.outputs:
            if v.name == name:
                return v
    return None
