"""Frozen-prefix split: train a head on cached features (the bottleneck trick).

When every trainable parameter sits after a frozen prefix (a backbone), the prefix computes
the same features for an example in every epoch. ``compile(..., split_features=True)`` finds
the tensor where the trainable part starts — the one activation that the frozen prefix hands
to the nodes that depend on trainable parameters — and adds four signatures:

* ``features``        model inputs → ``features`` (the prefix alone)
* ``train_features``  ``features``, label, lr → loss; the same updates as ``train``
* ``eval_features``   ``features``, label → loss (and metrics)
* ``infer_features``  ``features`` → the model outputs

Each is the corresponding existing graph, cloned, with the feature tensor replaced by an input
and pruned to what its outputs then need. Backward pruning guarantees that the train step
reads nothing else of the prefix, so training on cached features is exactly training on the
inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from .._ir import find, is_float, prune, reads
from ..errors import EdgetrainError

FEATURES = "features"


def find_feature_tensor(graph: ir.Graph, variable: Sequence[str]) -> ir.Value:
    """The single activation through which the frozen prefix feeds the trainable part."""
    dep = {id(graph.initializers[n]) for n in variable if n in graph.initializers}
    boundary: list[ir.Value] = []
    for node in graph:
        ins = reads(node)
        if not any(id(v) in dep for v in ins):
            continue
        dep.update(id(o) for o in node.outputs)
        for v in ins:
            if id(v) not in dep and not v.is_initializer() and not _constant(v) \
                    and all(v is not b for b in boundary):
                boundary.append(v)
    floats = [b for b in boundary if is_float(b.dtype)]
    if any(b.is_graph_input() for b in floats):
        raise EdgetrainError(
            "split_features: the trainable part reads the model input directly, so there is "
            "no frozen prefix to cache; freeze the first layers (e.g. trainable=et.select."
            "head())")
    if len(floats) != 1 or len(boundary) != 1:
        raise EdgetrainError(
            f"split_features: the frozen prefix hands {len(boundary)} values to the trainable "
            f"part ({', '.join(str(b.name) for b in boundary[:5])}); caching needs exactly one "
            "feature tensor. Freeze up to a point that a single activation crosses (e.g. "
            "et.select.head())")
    return floats[0]


def _constant(v: ir.Value) -> bool:
    p = v.producer()
    return p is not None and p.op_type == "Constant"


def prefix_graph(main: ir.Graph, feature: str) -> ir.Graph:
    """The ``features`` signature: the model inputs → the feature tensor."""
    g = main.clone()
    f = find(g, feature)
    assert f is not None
    g.outputs.clear()
    g.outputs.append(_identity(g, f))
    g.name = "features"
    prune(g)
    return g


def _identity(g: ir.Graph, v: ir.Value) -> ir.Value:
    node = ir.Node("", "Identity", [v], outputs=[ir.Value(name=FEATURES, type=v.type,
                                                            shape=v.shape)],
                   name="features/out")
    g.append(node)
    return node.outputs[0]


def started_from_features(graph: ir.Graph, feature: str, name: str,
                          extra_inputs: Sequence[str]) -> ir.Graph:
    """A clone of ``graph`` that takes the feature tensor as its input ``features``."""
    g = graph.clone()
    f = find(g, feature)
    if f is None:
        raise EdgetrainError(f"split_features: the {name} step does not compute {feature!r}")
    given = ir.Value(name=FEATURES, type=f.type, shape=f.shape)
    f.replace_all_uses_with(given, replace_graph_outputs=False)
    model_inputs = list(g.inputs)
    kept = [v for v in model_inputs if v.name in extra_inputs]
    g.inputs.clear()
    g.inputs.extend([given, *kept])
    g.name = name
    prune(g)
    leaked = sorted(str(v.name) for v in model_inputs if v not in kept and v.uses())
    if leaked:
        raise EdgetrainError(f"split_features: the {name} step still needs the model input(s) "
                             f"{leaked} besides the features")
    return g
