"""Package: the IR graphs and the metadata become one ONNX file (see ``edgetrain.format``).

The inference graph is the main graph; each step graph becomes a ``training_info`` algorithm
whose ``update_binding`` maps state tensors to the outputs holding their new values. Weights
and state live once, as initializers of the main graph, which the step graphs read.
"""

from __future__ import annotations

from typing import Any

import onnx
import onnx_ir as ir
from onnx import helper

from .. import format as fmt
from .._ir import dims, dtype_name, is_float
from ._state import Compilation


def tensor_spec(v: ir.Value, role: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": v.name, "dtype": dtype_name(v.dtype or 1),
                            "shape": list(dims(v) or [])}
    if role is not None:
        spec["role"] = role
    return spec


def _algorithm(graph: ir.Graph, main: set[str]) -> onnx.GraphProto:
    """A step graph as stored: the main graph's initializers are read from there."""
    g = ir.serde.serialize_graph(graph)
    own = [t for t in g.initializer if t.name not in main]
    del g.initializer[:]
    g.initializer.extend(own)
    del g.value_info[:]
    return g


def _signatures(c: Compilation) -> dict[str, Any]:
    t, e = c.step(), c.eval
    assert e is not None and c.prediction is not None
    data = [tensor_spec(v, "data") for v in c.main.inputs if not v.is_initializer()]
    label = tensor_spec(t.inputs["label"], "label")
    lr = {**tensor_spec(t.inputs["lr"], "lr"), "default": float(c.options.optimizer.lr),
          "optional": True}
    loss = tensor_spec(t.graph.outputs[0], "loss")
    builtin = [{"name": "checkpoint_path", "dtype": "str", "shape": []}]
    return {
        "infer": {"kind": "graph", "graph": "main", "inputs": data, "updates": {},
                  "outputs": [tensor_spec(o, "prediction" if o.name == c.prediction.name
                                          else "output") for o in c.main.outputs]},
        "train": {"kind": "graph", "graph": "training_info/0", "inputs": [*data, label, lr],
                  "outputs": [loss], "updates": dict(c.updates)},
        "eval": {"kind": "graph", "graph": "training_info/1", "inputs": [*data, label],
                 "outputs": [tensor_spec(o, "loss" if i == 0 else "metric")
                             for i, o in enumerate(e.graph.outputs)], "updates": {}},
        "save": {"kind": "builtin", "inputs": builtin, "outputs": builtin},
        "restore": {"kind": "builtin", "inputs": builtin, "outputs": builtin},
    }


def _feature_signatures(c: Compilation, sigs: dict[str, Any], base: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, (name, g) in enumerate(c.feature_graphs.items()):
        like = {"features": "infer", "train_features": "train", "eval_features": "eval",
                "infer_features": "infer"}[name]
        feature = tensor_spec(g.inputs[0], "features") if name != "features" else None
        rest = [s for s in sigs[like]["inputs"] if s["role"] not in ("data",)]
        spec: dict[str, Any] = {"kind": "graph", "graph": f"training_info/{base + k}",
                                "updates": dict(c.updates) if name == "train_features" else {}}
        if name == "features":
            spec["inputs"] = list(sigs["infer"]["inputs"])
            spec["outputs"] = [tensor_spec(g.outputs[0], "features")]
        else:
            spec["inputs"] = [feature, *rest]
            spec["outputs"] = list(sigs[like]["outputs"])
        out[name] = spec
    return out


def _steps_signature(c: Compilation, g: ir.Graph, index: int) -> dict[str, Any]:
    """``train_steps``: the train signature's inputs with a leading steps dimension."""
    roles = {c.names.label: "label", c.names.lr: "lr"}
    inputs = [tensor_spec(v, roles.get(str(v.name), "data")) for v in g.inputs]
    return {"kind": "graph", "graph": f"training_info/{index}", "inputs": inputs,
            "outputs": [tensor_spec(g.outputs[0], "loss")], "updates": dict(c.steps_updates)}


def _metadata(c: Compilation, sigs: dict[str, Any]) -> dict[str, Any]:
    assert c.prediction is not None
    state = [str(v.name) for v in c.state_inits] + c.bn_state
    variable = set(c.trainable) | set(state)
    meta: dict[str, Any] = {
        "format_version": fmt.FORMAT_VERSION,
        "producer": f"edgetrain {fmt.producer_version()}",
        "signatures": sigs,
        "trainable": list(c.trainable),
        "frozen": [k for k, v in c.main.initializers.items()
                   if is_float(v.dtype) and k not in variable],
        "state": state,
        "step": c.names.step,
        "output": c.prediction.name,
        "label": c.names.label,
        "labels": c.options.labels,
        "task": c.options.loss.task,
        "classification": c.options.loss.task == "multiclass",
        "loss": c.options.loss.config(),
        "optimizer": c.options.optimizer.config(),
    }
    if c.feature_tensor is not None:
        meta["features"] = {"tensor": c.feature_tensor,
                            **tensor_spec(c.feature_graphs["train_features"].inputs[0])}
    if c.lora is not None:
        meta.update(c.lora.meta)
    return meta


def package(c: Compilation) -> None:
    """Pass: assemble the ModelProto, write the metadata, check the whole file."""
    assert c.model is not None and c.eval is not None
    out = ir.serde.serialize_model(c.model)
    del out.training_info[:]
    main = set(c.main.initializers)
    graphs = [c.step().graph, c.eval.graph, *c.feature_graphs.values()]
    if c.steps_graph is not None:
        graphs.append(c.steps_graph)
    for i, g in enumerate(graphs):
        ti = out.training_info.add()
        ti.algorithm.CopyFrom(_algorithm(g, main))
        bindings = c.steps_updates if g is c.steps_graph else (
            c.updates if i == 0 or g.name == "train_features" else {})
        for k, v in bindings.items():
            ti.update_binding.add(key=k, value=v)
    sigs = _signatures(c)
    sigs.update(_feature_signatures(c, sigs, 2))
    if c.steps_graph is not None:
        sigs["train_steps"] = _steps_signature(c, c.steps_graph, len(graphs) - 1)
    c.meta = _metadata(c, sigs)
    fmt.write_meta(out, c.meta)
    # The lowest IR version the opsets allow: older runtimes (onnxruntime-web, older mobile
    # builds) refuse IR versions newer than they know, though nothing here needs them.
    out.ir_version = max(7, helper.find_min_ir_version_for(list(out.opset_import)))
    fmt.check(out)
    c.result = out
