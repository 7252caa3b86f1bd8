"""Batch norm in training mode: batch statistics in the train step, running statistics updated.

``compile(..., batch_norm="train")`` replaces, in the train graph only, every
``BatchNormalization`` node that normalizes with its running statistics by the
normalization with the statistics of the batch, written out (the variance in the stable
two-pass form)::

    μ = ReduceMean(x, [0, 2, …])    c = x − μ    σ² = ReduceMean(c², [0, 2, …])
    y = c · (σ² + ε)^-½ · γ + β                              (same epsilon)

so gradients flow through μ and σ² by the rules of those ops. A float64 model keeps the
BatchNormalization node and feeds it μ and σ² instead: the written-out form exists for float32
(see ``_normalize``), and in float64 the node's rounding is the one that reproduces torch's
training-mode loss to 1e-9 on the model zoo (efficientnet_b0 at 32×32, where the written-out
form is 1.3e-9 off). The step also computes the new running statistics with the node's own
momentum, as PyTorch does (the variance unbiased, n/(n-1))::

    running_mean ← momentum·running_mean + (1 - momentum)·μ
    running_var  ← momentum·running_var  + (1 - momentum)·σ²·n/(n - 1)

and the compiler binds them back to the running-statistics initializers (``update_binding``,
listed in the metadata's ``state``), so checkpoints keep them and ``export`` bakes them in.
The infer and eval graphs keep normalizing with the running statistics.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .._ir import Builder, Value, redirect
from ..autodiff._helpers import per_channel
from ..errors import UnsupportedOpError


def use_batch_statistics(graph: ir.Graph, op: Builder) -> dict[str, Value]:
    """Rewrite ``graph``'s batch norms (in place) to normalize with batch statistics.

    Returns ``{running statistic initializer: value holding its new value}``. Nodes already in
    training mode are left alone (their running outputs are not state).
    """
    updates: dict[str, Value] = {}
    for node in list(graph):
        a = node.attributes.get("training_mode")
        if node.op_type != "BatchNormalization" or (a is not None and a.as_int() == 1):
            continue
        x, rm, rv = node.inputs[0], node.inputs[3], node.inputs[4]
        if x is None or rm is None or rv is None or node.inputs[1] is None \
                or node.inputs[2] is None:
            continue
        if x.shape is None:
            raise UnsupportedOpError(f"batch norm node {node.name!r}: the rank of {x.name!r} "
                                     "is unknown")
        if x.dtype == ir.DataType.DOUBLE:  # the node itself, on the batch's statistics
            mean, var = _batch_statistics(op.at(before=node), x)
            node.replace_input_with(3, mean)
            node.replace_input_with(4, var)
        else:
            mean, var = _normalize(op.at(before=node), node, x)
        if rm.is_initializer() and rv.is_initializer() and str(rm.name) not in updates \
                and str(rv.name) not in updates:
            m_attr = node.attributes.get("momentum")
            momentum = m_attr.as_float() if m_attr is not None else 0.9
            updates.update(_running_updates(op.at(before=node), x, mean, var, rm, rv, momentum))
        if x.dtype != ir.DataType.DOUBLE:
            graph.remove(node, safe=False)  # written out
    return updates


def _batch_statistics(op: Builder, x: Value) -> tuple[Value, Value]:
    """The batch mean and (biased, two-pass) variance per channel, [C]."""
    rank = len(x.shape or ())
    red = [0, *range(2, rank)]
    mean_k = op.ReduceMean(x, red, keepdims=1)
    mean = op.Squeeze(mean_k, red) if rank > 1 else mean_k
    xc = op.Sub(x, mean_k)
    return mean, op.ReduceMean(op.Mul(xc, xc), red, keepdims=0)


def _normalize(op: Builder, node: ir.Node, x: Value) -> tuple[Value, Value]:
    """``y = (x − μ)·(σ² + ε)^-½·γ + β`` written out in place of the node; returns the batch
    mean and variance ([C]) for the running statistics.

    Written out, the backward pass differentiates the normalization in torch's order, with
    ``x − μ`` computed once and read by both the variance and the output. Fed into a
    BatchNormalization node as inputs instead, μ and σ² took separate gradient paths whose
    large terms cancel: in float32, on the few values per channel a small feature map
    leaves (LeViT's last stages), that cancellation left gradients hundreds of times their
    size in rounding error.
    """
    rank = len(x.shape or ())
    red = [0, *range(2, rank)]
    eps_attr = node.attributes.get("epsilon")
    eps = eps_attr.as_float() if eps_attr is not None else 1e-5
    mean_k = op.ReduceMean(x, red, keepdims=1)
    xc = op.Sub(x, mean_k)
    var_k = op.ReduceMean(op.Mul(xc, xc), red, keepdims=1)
    r = op.Reciprocal(op.Sqrt(op.Add(var_k, float(np.float32(eps)))))
    scale, bias = node.inputs[1], node.inputs[2]
    assert scale is not None and bias is not None
    y = op.Add(op.Mul(op.Mul(xc, r), per_channel(op, scale, rank)),
               per_channel(op, bias, rank))
    redirect(node.outputs[0], y)
    squeeze = (lambda v: op.Squeeze(v, red)) if rank > 1 else (lambda v: v)
    return squeeze(mean_k), squeeze(var_k)


def _running_updates(op: Builder, x: Value, mean: Value, var: Value, rm: Value, rv: Value,
                     momentum: float) -> dict[str, Value]:
    n = op.Div(op.cast(op.Size(x), x.dtype), op.cast(op.Size(mean), x.dtype))
    unbiased = op.Mul(var, op.Div(n, op.Max(op.Sub(n, 1.0), op.scalar(1.0, n))))
    return {str(rm.name): op.Add(op.Mul(rm, momentum), op.Mul(mean, 1.0 - momentum)),
            str(rv.name): op.Add(op.Mul(rv, momentum), op.Mul(unbiased, 1.0 - momentum))}
