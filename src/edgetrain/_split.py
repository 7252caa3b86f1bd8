"""Frozen-prefix split: train a head on cached features (the bottleneck trick).

When every trainable parameter sits after a frozen prefix (a backbone), the prefix computes
the same features for an example in every epoch. ``compile(..., split_features=True)`` finds
the tensor where the trainable part starts — the one activation that the frozen prefix hands
to the nodes that depend on trainable parameters — and adds four signatures:

* ``features``        model inputs → ``features`` (the prefix alone)
* ``train_features``  ``features``, label, lr → loss; the same updates as ``train``
* ``eval_features``   ``features``, label → loss (and accuracy)
* ``infer_features``  ``features`` → the model outputs

Each is the corresponding existing graph pruned to what its outputs need once the feature
tensor is given. Backward pruning guarantees that the train step reads nothing else of the
prefix, so training on cached features is exactly training on the inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx
from onnx import helper

from . import format as fmt
from ._graph import is_float
from .errors import EdgetrainError

FEATURES = "features"


def _dependents(graph: onnx.GraphProto, roots: set[str]) -> tuple[set[str], list[int]]:
    """Values that depend on ``roots`` and the indices of the nodes that read them."""
    dep = set(roots)
    nodes = []
    for i, node in enumerate(graph.node):
        if any(x in dep for x in node.input if x):
            nodes.append(i)
            dep.update(o for o in node.output if o)
    return dep, nodes


def _value_infos(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    return {v.name: v for v in list(graph.input) + list(graph.value_info) + list(graph.output)}


def find_feature_tensor(graph: onnx.GraphProto, trainable: Sequence[str],
                        variable: Sequence[str] = ()) -> str:
    """The single activation through which the frozen prefix feeds the trainable part."""
    inits = {t.name for t in graph.initializer}
    dep, node_ids = _dependents(graph, set(trainable) | set(variable))
    produced_by_const = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    inputs = {i.name for i in graph.input if i.name not in inits}
    boundary: list[str] = []
    for i in node_ids:
        for x in graph.node[i].input:
            if x and x not in dep and x not in inits and x not in produced_by_const \
                    and x not in boundary:
                boundary.append(x)
    vis = _value_infos(graph)
    floats = [b for b in boundary if is_float(vis[b].type.tensor_type.elem_type)
              if b in vis]
    if any(b in inputs for b in floats):
        raise EdgetrainError(
            "split_features: the trainable part reads the model input directly, so there is "
            "no frozen prefix to cache; freeze the first layers (e.g. trainable=et.select."
            "head())")
    if len(floats) != 1 or len(boundary) != 1:
        raise EdgetrainError(
            f"split_features: the frozen prefix hands {len(boundary)} values to the trainable "
            f"part ({', '.join(boundary[:5])}); caching needs exactly one feature tensor. "
            "Freeze up to a point that a single activation crosses (e.g. et.select.head())")
    return floats[0]


def _prune(graph: onnx.GraphProto, outputs: Sequence[str], given: set[str]
           ) -> list[onnx.NodeProto]:
    """The nodes that ``outputs`` need when the values in ``given`` are provided."""
    needed = set(outputs)
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i and i not in given)
    keep.reverse()
    return keep


def _sub_graph(name: str, graph: onnx.GraphProto, feature: str, feature_vi: onnx.ValueInfoProto,
               extra_inputs: Sequence[onnx.ValueInfoProto], model_inputs: set[str]
               ) -> onnx.GraphProto:
    """``graph`` started from the feature tensor (given as the input ``features``)."""
    outputs = [o.name for o in graph.output]
    nodes = _prune(graph, outputs, {feature})
    reads = {i for n in nodes for i in n.input}
    leaked = sorted(reads & model_inputs)
    if leaked:
        raise EdgetrainError(f"split_features: the {name} step still needs the model input(s) "
                             f"{leaked} besides the features")
    ident = helper.make_node("Identity", [FEATURES], [feature], name=f"{name}/features")
    used = reads | set(outputs)
    inits = [t for t in graph.initializer if t.name in used]
    g = helper.make_graph([ident, *nodes], name, [feature_vi, *extra_inputs],
                          list(graph.output), initializer=inits)
    return g


def add_feature_signatures(model: onnx.ModelProto, meta: dict[str, Any],
                           y_vi: onnx.ValueInfoProto) -> None:
    """Append the four feature signatures to a compiled model (in place) and its ``meta``."""
    main = model.graph
    sigs: Mapping[str, Any] = meta["signatures"]
    variable = [k for k in sigs["train"]["updates"] if k != meta.get("step", fmt.STEP_NAME)]
    feature = find_feature_tensor(main, meta["trainable"], variable)
    vis = _value_infos(main)
    fvi = onnx.ValueInfoProto()
    fvi.CopyFrom(vis[feature])
    fvi.name = FEATURES
    inits = {t.name for t in main.initializer}
    model_inputs = {i.name for i in main.input if i.name not in inits}

    # features: the prefix alone.
    nodes = _prune(main, [feature], set())
    feats = helper.make_graph(
        [*nodes, helper.make_node("Identity", [feature], [FEATURES], name="features/out")],
        "features", [i for i in main.input if i.name in model_inputs],
        [helper.make_tensor_value_info(FEATURES, fvi.type.tensor_type.elem_type,
                                       fmt.tensor_spec(fvi)["shape"])])

    def graph_of(sig: str) -> onnx.GraphProto:
        idx = int(sigs[sig]["graph"].split("/")[1])
        return model.training_info[idx].algorithm

    train = graph_of("train")
    lr_vi = next(i for i in train.input if i.name == "lr")
    train_f = _sub_graph("train_features", train, feature, fvi, [y_vi, lr_vi], model_inputs)
    eval_f = _sub_graph("eval_features", graph_of("eval"), feature, fvi, [y_vi], model_inputs)
    infer_f = _sub_graph("infer_features", main, feature, fvi, [], model_inputs)
    infer_f.ClearField("initializer")  # the main graph's own weights stay where they are

    fspec = fmt.tensor_spec(fvi)
    base = len(model.training_info)
    new: dict[str, Any] = {}
    for k, (name, g) in enumerate([("features", feats), ("train_features", train_f),
                                   ("eval_features", eval_f), ("infer_features", infer_f)]):
        ti = model.training_info.add()
        ti.algorithm.CopyFrom(g)
        spec: dict[str, Any] = {"kind": "graph", "graph": f"training_info/{base + k}",
                                "updates": {}}
        if name == "features":
            spec["inputs"] = list(sigs["infer"]["inputs"])
            spec["outputs"] = [fspec]
        else:
            like = {"train_features": "train", "eval_features": "eval",
                    "infer_features": "infer"}[name]
            model_in = {s["name"] for s in sigs["infer"]["inputs"]}
            spec["inputs"] = [fspec] + [s for s in sigs[like]["inputs"]
                                        if s["name"] not in model_in]
            spec["outputs"] = list(sigs[like]["outputs"])
            if name == "train_features":
                spec["updates"] = dict(sigs["train"]["updates"])
                for key, value in spec["updates"].items():
                    ti.update_binding.add(key=key, value=value)
        new[name] = spec
    meta["signatures"].update(new)
    meta["features"] = {"tensor": feature, **fspec}
