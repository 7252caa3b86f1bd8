"""After the update: fusions, the train graph's outputs, the eval graph, the feature split."""

from __future__ import annotations

import onnx_ir as ir

from .._ir import Value, prune
from . import _split
from ._state import Compilation, StepGraph
from ._step import add_loss, step_graph


def fuse_gemm_updates(c: Compilation) -> None:
    """Pass: ``p − g`` folded into the GEMM that computes ``g`` (an lr-scaled weight gradient).

    Gemm computes ``alpha·A'B' + beta·C``; with ``C = p``, ``beta = 1`` and ``alpha`` negated
    it writes the updated weight directly — no separate passes over the weights to subtract
    and write them. Applies where the update is ``Sub(p, g)``, ``g`` comes straight from a
    two-input Gemm and nothing else reads ``g``.
    """
    for key, new in list(c.new_state.items()):
        sub = new.producer()
        if sub is None or sub.op_type != "Sub" or sub.inputs[0] is None \
                or sub.inputs[0].name != key or sub.inputs[1] is None:
            continue
        g = sub.inputs[1]
        gemm = g.producer()
        if gemm is None or gemm.op_type != "Gemm" or len(gemm.inputs) != 2 \
                or len(g.uses()) != 1 or g.is_graph_output():
            continue
        alpha = gemm.attributes.get("alpha")
        gemm.resize_inputs(3)
        gemm.replace_input_with(2, sub.inputs[0])
        gemm.attributes["alpha"] = ir.AttrFloat32("alpha", -(alpha.as_float() if alpha else 1.0))
        gemm.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        new.replace_all_uses_with(g)
        c.step().graph.remove(sub, safe=True)
        c.new_state[key] = g


def finish_train(c: Compilation) -> None:
    """Pass: the train graph's outputs — the loss, then each state tensor's new value under
    ``<name>.new`` — and nothing the outputs do not need."""
    t = c.step()
    outputs = [_expose(t, t.outputs["loss"], c.names.loss)]
    seen: set[int] = set()
    for key, v in c.new_state.items():
        name = c.namer.fresh(f"{key}.new")
        out = _expose(t, v, name, copy=id(v) in seen)
        seen.add(id(out))
        c.updates[key] = name
        outputs.append(out)
    t.graph.outputs.clear()
    t.graph.outputs.extend(outputs)
    prune(t.graph)


def _expose(step: StepGraph, v: Value, name: str, copy: bool = False) -> Value:
    """``v`` as a graph output called ``name``: the producing node's output renamed (an
    Identity would copy the tensor every step), or an Identity where ``v`` is an input, a
    weight or already exposed."""
    producer = v.producer()
    if copy or producer is None or producer.graph is not step.graph or v.is_graph_output():
        out = step.op.named("Identity", name, v)
        out.shape = v.shape
        return out
    v.name = name
    return v


def eval_graph(c: Compilation) -> None:
    """Pass: the eval graph — the inference graph, the loss and the loss's metrics."""
    c.eval = e = step_graph(c, "eval")
    add_loss(c, e)
    outputs = [_expose(e, e.outputs["loss"], c.names.loss)]
    metrics = c.options.loss.metrics(e.op, e.outputs["prediction"], e.inputs["label"],
                                     c.options.labels)
    for name, v in metrics.items():
        public = name if name not in c.namer.taken else c.namer.fresh(name)
        c.namer.taken.add(public)
        outputs.append(_expose(e, v, public))
    e.graph.outputs.clear()
    e.graph.outputs.extend(outputs)
    prune(e.graph)


def split_features(c: Compilation) -> None:
    """Pass: the feature signatures (``split_features=True``; see ``_split``)."""
    if not c.options.split_features:
        return
    variable = c.trainable + c.bn_state
    feature = str(_split.find_feature_tensor(c.main, variable).name)
    c.feature_tensor = feature
    label, lr = c.names.label, c.names.lr
    c.feature_graphs = {
        "features": _split.prefix_graph(c.main, feature),
        "train_features": _split.started_from_features(c.step().graph, feature,
                                                       "train_features", [label, lr]),
        "eval_features": _split.started_from_features(_eval(c).graph, feature,
                                                      "eval_features", [label]),
        "infer_features": _split.started_from_features(c.main, feature, "infer_features", []),
    }


def _eval(c: Compilation) -> StepGraph:
    assert c.eval is not None
    return c.eval
