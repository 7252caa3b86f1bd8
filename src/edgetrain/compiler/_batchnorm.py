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

import onnx_ir as ir

from .._ir import Builder, Value
from ..errors import UnsupportedOpError


def use_batch_statistics(graph: ir.Graph, op: Builder) -> dict[str, Value]:
    """Rewrite ``graph``'s batch norms (in place) to use batch statistics.

    Returns ``{running statistic initializer: value holding its new value}``. Nodes already in
    training mode are left alone (their running outputs are not state).
    """
    updates: dict[str, Value] = {}
    for node in list(graph):
        a = node.attributes.get("training_mode")
        if node.op_type != "BatchNormalization" or (a is not None and a.as_int() == 1):
            continue
        x, rm, rv = node.inputs[0], node.inputs[3], node.inputs[4]
        if x is None or rm is None or rv is None:
            continue
        if x.shape is None:
            raise UnsupportedOpError(f"batch norm node {node.name!r}: the rank of {x.name!r} "
                                     "is unknown")
        mean, var = _batch_statistics(op.at(before=node), x)
        node.replace_input_with(3, mean)
        node.replace_input_with(4, var)
        if rm.is_initializer() and rv.is_initializer() and str(rm.name) not in updates \
                and str(rv.name) not in updates:
            m_attr = node.attributes.get("momentum")
            momentum = m_attr.as_float() if m_attr is not None else 0.9
            updates.update(_running_updates(op.at(before=node), x, mean, var, rm, rv, momentum))
    return updates


def _batch_statistics(op: Builder, x: Value) -> tuple[Value, Value]:
    rank = len(x.shape or ())
    red = [0, *range(2, rank)]
    mean_k = op.ReduceMean(x, red, keepdims=1)
    mean = op.Squeeze(mean_k, red) if rank > 1 else mean_k
    xc = op.Sub(x, mean_k)
    return mean, op.ReduceMean(op.Mul(xc, xc), red, keepdims=0)


def _running_updates(op: Builder, x: Value, mean: Value, var: Value, rm: Value, rv: Value,
                     momentum: float) -> dict[str, Value]:
    n = op.Div(op.cast(op.Size(x), x.dtype), op.cast(op.Size(mean), x.dtype))
    unbiased = op.Mul(var, op.Div(n, op.Max(op.Sub(n, 1.0), op.scalar(1.0, n))))
    return {str(rm.name): op.Add(op.Mul(rm, momentum), op.Mul(mean, 1.0 - momentum)),
            str(rv.name): op.Add(op.Mul(rv, momentum), op.Mul(unbiased, 1.0 - momentum))}
