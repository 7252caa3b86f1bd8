"""Package: the IR graphs and the metadata become one ONNX file (see ``edgetrain.format``).

The inference graph is the main graph; each step graph becomes a ``training_info`` algorithm
whose ``update_binding`` maps state tensors to the outputs holding their new values. Weights
and state live once, as initializers of the main graph, which the step graphs read.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import onnx
import onnx_ir as ir
from onnx import helper

from .. import format as fmt
from .._ir import dims, dtype_name, is_float
from ..format import (
    FeatureSpec,
    LossConfig,
    Metadata,
    OptimizerConfig,
    SignatureSpec,
    TensorSpec,
)
from ..format._spec import DType, Role, Task
from ._state import Compilation


def tensor_spec(v: ir.Value, role: Role | None = None, **kw: Any) -> TensorSpec:
    return TensorSpec(name=str(v.name), dtype=cast(DType, dtype_name(v.dtype or 1)),
                      shape=tuple(dims(v) or ()), role=role, **kw)


def _algorithm(graph: ir.Graph, main: set[str]) -> onnx.GraphProto:
    """A step graph as stored: the main graph's initializers are read from there."""
    g = ir.serde.serialize_graph(graph)
    own = [t for t in g.initializer if t.name not in main]
    del g.initializer[:]
    g.initializer.extend(own)
    del g.value_info[:]
    return g


def _signatures(c: Compilation) -> dict[str, SignatureSpec]:
    t, e = c.step(), c.eval
    assert e is not None and c.prediction is not None
    data = tuple(tensor_spec(v, "data") for v in c.main.inputs if not v.is_initializer())
    label = tensor_spec(t.inputs["label"], "label")
    lr = tensor_spec(t.inputs["lr"], "lr", default=float(c.options.optimizer.lr),
                     optional=True)
    builtin = (TensorSpec(name="checkpoint_path", dtype="str", shape=()),)
    return {
        "infer": SignatureSpec(kind="graph", graph="main", inputs=data, outputs=tuple(
            tensor_spec(o, "prediction" if o.name == c.prediction.name else "output")
            for o in c.main.outputs)),
        "train": SignatureSpec(kind="graph", graph="training_info/0",
                               inputs=(*data, label, lr),
                               outputs=(tensor_spec(t.graph.outputs[0], "loss"),),
                               updates=dict(c.updates)),
        "eval": SignatureSpec(kind="graph", graph="training_info/1", inputs=(*data, label),
                              outputs=tuple(tensor_spec(o, "loss" if i == 0 else "metric")
                                            for i, o in enumerate(e.graph.outputs))),
        "save": SignatureSpec(kind="builtin", inputs=builtin, outputs=builtin),
        "restore": SignatureSpec(kind="builtin", inputs=builtin, outputs=builtin),
    }


_LIKE = {"features": "infer", "train_features": "train", "eval_features": "eval",
         "infer_features": "infer"}


def _feature_signatures(c: Compilation, sigs: dict[str, SignatureSpec], base: int
                        ) -> dict[str, SignatureSpec]:
    out: dict[str, SignatureSpec] = {}
    for k, (name, g) in enumerate(c.feature_graphs.items()):
        like = sigs[_LIKE[name]]
        where = f"training_info/{base + k}"
        if name == "features":
            out[name] = SignatureSpec(kind="graph", graph=where, inputs=sigs["infer"].inputs,
                                      outputs=(tensor_spec(g.outputs[0], "features"),))
            continue
        rest = tuple(s for s in like.inputs if s.role != "data")
        out[name] = SignatureSpec(
            kind="graph", graph=where, inputs=(tensor_spec(g.inputs[0], "features"), *rest),
            outputs=like.outputs, updates=dict(c.updates) if name == "train_features" else {})
    return out


def _steps_signature(c: Compilation, g: ir.Graph, index: int) -> SignatureSpec:
    """``train_steps``: the train signature's inputs with a leading steps dimension (the rate
    one value per step), the losses of the steps that ran, the same state updates."""
    roles: dict[str, Role] = {c.names.label: "label", c.names.lr: "lr"}
    inputs = tuple(tensor_spec(v, roles.get(str(v.name), "data")) for v in g.inputs)
    return SignatureSpec(kind="graph", graph=f"training_info/{index}", inputs=inputs,
                         outputs=(tensor_spec(g.outputs[0], "loss"),),
                         updates=dict(c.steps_updates))


def _metadata(c: Compilation, sigs: dict[str, SignatureSpec]) -> Metadata:
    assert c.prediction is not None
    state = [str(v.name) for v in c.state_inits] + c.bn_state
    variable = set(c.trainable) | set(state)
    features = None
    if c.feature_tensor is not None:
        spec = tensor_spec(c.feature_graphs["train_features"].inputs[0])
        features = FeatureSpec(tensor=c.feature_tensor, name=spec.name, dtype=spec.dtype,
                               shape=spec.shape)
    lora = c.lora
    loss, opt = c.options.loss.config(), c.options.optimizer.config()
    return Metadata(
        format_version=fmt.FORMAT_VERSION,
        producer=f"edgetrain {fmt.producer_version()}",
        signatures=sigs,
        trainable=tuple(c.trainable),
        frozen=tuple(k for k, v in c.main.initializers.items()
                     if is_float(v.dtype) and k not in variable),
        state=tuple(state),
        step=c.names.step,
        output=str(c.prediction.name),
        label=c.names.label,
        labels=cast(Literal["index", "onehot"], c.options.labels),
        task=cast(Task, c.options.loss.task),
        classification=c.options.loss.task == "multiclass",
        loss=LossConfig(name=loss.pop("name"), params=_params(loss)),
        optimizer=OptimizerConfig(name=opt.pop("name"), lr=opt.pop("lr"), params=_params(opt)),
        selection=lora.selection if lora else None,
        lora=lora.config if lora else None,
        lora_merge=tuple(lora.adapters) if lora else (),
        features=features,
    )


def _params(config: dict[str, Any]) -> dict[str, Any]:
    """A config's values as the metadata holds them (lists as tuples)."""
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in config.items()}


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
    fmt.store_training_state(out, c.meta)
    # The lowest IR version the opsets allow: older runtimes (onnxruntime-web, older mobile
    # builds) refuse IR versions newer than they know, though nothing here needs them.
    out.ir_version = max(7, helper.find_min_ir_version_for(list(out.opset_import)))
    fmt.check(out)
    c.result = out
