"""Reverse-mode differentiation of an ONNX graph into more ONNX nodes.

Only nodes on a path from a trainable parameter to the loss are differentiated (backward
pruning): a frozen prefix gets no backward nodes at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .._graph import Builder, Value, is_float
from ..errors import UnsupportedOpError
from ._registry import NON_DIFFERENTIABLE, RULES, GradContext, Shape


def static_facts(graph: onnx.GraphProto, extra: Sequence[onnx.TensorProto] = (),
                 ) -> tuple[dict[str, Shape | None], dict[str, int], dict[str, np.ndarray]]:
    """Shapes and element types of every value, and known constant values."""
    shapes: dict[str, Shape | None] = {}
    types: dict[str, int] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = vi.type.tensor_type
        types[vi.name] = tt.elem_type
        if tt.HasField("shape"):
            shapes[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tt.shape.dim)
        else:
            shapes[vi.name] = None
    consts: dict[str, np.ndarray] = {}
    for init in list(extra) + list(graph.initializer):
        types[init.name] = init.data_type
        shapes[init.name] = tuple(int(d) for d in init.dims)
        if int(np.prod(init.dims)) <= 4096:  # small constants: axes, shapes, scalars
            consts[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            a = node.attribute[0]
            if a.name == "value":
                arr = numpy_helper.to_array(a.t)
            elif a.name in ("value_float", "value_int"):
                arr = np.array(a.f if a.name == "value_float" else a.i)
            elif a.name in ("value_floats", "value_ints"):
                arr = np.array(list(a.floats) if a.name == "value_floats" else list(a.ints))
            else:
                continue
            consts[node.output[0]] = arr
    return shapes, types, consts


def differentiable_values(graph: onnx.GraphProto, wrt: Sequence[str],
                          types: dict[str, int]) -> set[str]:
    """Float values that depend on at least one of ``wrt``."""
    dep = set(wrt)
    for node in graph.node:
        if node.op_type in NON_DIFFERENTIABLE:
            continue
        if any(i in dep for i in node.input if i):
            for o in node.output:
                if o and is_float(types.get(o)):
                    dep.add(o)
    return dep


def build_gradients(graph: onnx.GraphProto, loss: Value, wrt: Sequence[str], op: Builder,
                    opset: int, seed: Value | None = None,
                    initializers: Sequence[onnx.TensorProto] = ()) -> dict[str, Value]:
    """Append to ``op`` the nodes computing d(loss)/d(w) for each ``w`` in ``wrt``.

    ``graph`` must be shape-inferred (value_info filled in); ``initializers`` are outer-scope
    tensors it reads (the main graph's weights). Returns ``{w: grad}`` for the parameters that
    reach the loss; the others are absent.
    """
    shapes, types, consts = static_facts(graph, initializers)
    op.types.update({k: v for k, v in types.items() if k not in op.types})
    dep = differentiable_values(graph, wrt, types)
    if loss not in dep:
        return {}
    # Nodes that lead to the loss.
    reaches: set[str] = {loss}
    needed: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in reaches for o in node.output if o) and node.op_type not in NON_DIFFERENTIABLE:
            if any(i in dep for i in node.input if i):
                needed.append(node)
                reaches.update(i for i in node.input if i in dep)
    grads: dict[str, list[Value]] = {loss: [seed or op.const(np.array(1.0, dtype=_np(types,
                                                                                     loss)))]}
    for node in needed:  # already in reverse topological order
        douts = [_total(op, grads.get(o)) if o else None for o in node.output]
        if all(d is None for d in douts):
            continue
        rule = RULES.get(node.op_type)
        if rule is None:
            raise UnsupportedOpError(
                f"no gradient rule for op {node.op_type!r} (node {node.name or '<unnamed>'!r}, "
                f"outputs {list(node.output)}) on the path from the trainable parameters to the "
                f"loss. Freeze the parameters before it or use a supported op. Supported: "
                f"{', '.join(sorted(RULES))}")
        needs = [bool(i) and i in dep and i in reaches for i in node.input]
        ctx = GradContext(node, douts, needs, shapes, types, consts, opset)
        result = list(rule(ctx, op))
        for i, g in enumerate(result):
            if g is not None and i < len(needs) and needs[i]:
                grads.setdefault(node.input[i], []).append(g)
    out: dict[str, Value] = {}
    for w in wrt:
        total = _total(op, grads.get(w))
        if total is not None:
            out[w] = total
    return out


def _np(types: dict[str, int], name: str) -> np.dtype:
    from .._graph import np_dtype

    return np_dtype(types.get(name, onnx.TensorProto.FLOAT))


def _total(op: Builder, parts: list[Value] | None) -> Value | None:
    if not parts:
        return None
    if len(parts) > 1:
        total = op.Sum(*parts)
        parts[:] = [total]
    return parts[0]
