"""Batch norm in training mode: batch statistics in the train step, running statistics updated.

``compile(..., batch_norm="train")`` rewrites, in the train graph only, every
``BatchNormalization`` node that normalizes with its running statistics into one that
normalizes with the statistics of the batch::

    μ = ReduceMean(x, [0, 2, …])          σ² = ReduceMean((x - μ)², [0, 2, …])
    y = BatchNormalization(x, scale, bias, μ, σ²)          (same epsilon)

so gradients flow through μ and σ² (the BatchNormalization rule differentiates its mean and
var inputs, ReduceMean/Sub/Mul do the rest). The step also computes the new running
statistics with the node's own momentum, as PyTorch does (the variance unbiased, n/(n-1))::

    running_mean ← momentum·running_mean + (1 - momentum)·μ
    running_var  ← momentum·running_var  + (1 - momentum)·σ²·n/(n - 1)

and the compiler binds them back to the running-statistics initializers (``update_binding``,
listed in the metadata's ``state``), so checkpoints keep them and ``export`` bakes them in.
The infer and eval graphs keep normalizing with the running statistics.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ._graph import Builder


def _types(graph: onnx.GraphProto) -> dict[str, int]:
    t = {v.name: v.type.tensor_type.elem_type
         for v in list(graph.input) + list(graph.value_info) + list(graph.output)}
    t.update({i.name: i.data_type for i in graph.initializer})
    return t


def _rank(graph: onnx.GraphProto, name: str) -> int | None:
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        if v.name == name and v.type.tensor_type.HasField("shape"):
            return len(v.type.tensor_type.shape.dim)
    return None


def use_batch_statistics(proto: onnx.ModelProto, taken: set[str]
                         ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``proto`` whose batch norms use batch statistics.

    Returns the copy and ``{running statistic initializer: value holding its new value}``.
    Nodes already in training mode are left alone (their running outputs are not state).
    """
    graph = proto.graph
    op = Builder(prefix="bn/", types=_types(graph), taken=taken)
    inits = {t.name for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    updates: dict[str, str] = {}
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "BatchNormalization" or int(attrs.get("training_mode", 0)) == 1:
            nodes.append(node)
            continue
        x, scale, bias, rm, rv = node.input[:5]
        rank = _rank(graph, x)
        if rank is None:
            raise ValueError(f"batch norm node {node.name!r}: the rank of {x!r} is unknown")
        start = len(op.nodes)
        red = [0, *range(2, rank)]
        mean_k = op.ReduceMean(x, red, keepdims=1)
        mean = op.Squeeze(mean_k, red) if rank > 1 else mean_k
        xc = op.Sub(x, mean_k)
        var = op.ReduceMean(op.Mul(xc, xc), red, keepdims=0)
        eps = float(attrs.get("epsilon", 1e-5))
        op.BatchNormalization(x, scale, bias, mean, var, epsilon=eps, _names=list(node.output[:1]))
        if rm in inits and rv in inits and rm not in updates and rv not in updates:
            momentum = float(attrs.get("momentum", 0.9))
            dt = op.types[x]
            n = op.Div(op.Cast(op.Size(x), to=dt), op.Cast(op.Size(mean), to=dt))
            unbiased = op.Mul(var, op.Div(n, op.Max(op.Sub(n, 1.0), 1.0)))
            updates[rm] = op.Add(op.Mul(rm, momentum), op.Mul(mean, 1.0 - momentum))
            updates[rv] = op.Add(op.Mul(rv, momentum), op.Mul(unbiased, 1.0 - momentum))
        nodes.extend(op.nodes[start:])
    if not updates and not op.nodes:
        return proto, {}
    consts = [helper.make_node("Constant", [], [t.name], value=t, name=f"{t.name}_const")
              for t in op.initializers]
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    out.graph.node.extend(consts + nodes)
    return out, updates
