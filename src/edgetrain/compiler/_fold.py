"""Fold constant shape arithmetic so that shape inference sees static sizes.

Exporters leave small constant subgraphs in the model: PyTorch's TorchScript exporter writes
``F.pad`` as Constant → ConstantOfShape → Concat → Reshape → Slice → Transpose → Cast, and
ONNX shape inference cannot see through that, so every tensor after the first padded
convolution has unknown spatial sizes (and the conv gradients need them). This pass evaluates,
with onnx.reference, every node whose inputs are all constants — outputs of Constant nodes
or non-float initializers — and replaces it with a Constant. Float initializers (the weights)
are never inputs of a folded node: folding a weight would bake it into a new constant and
take it out of training.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .._ir import is_float

#: Ops that must run every time (randomness) or that carry subgraphs.
_NEVER = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
          "Multinomial", "Bernoulli", "Dropout", "If", "Loop", "Scan"}
_MAX_ELEMENTS = 1 << 16


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    if not node.attribute:
        return None
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name in ("value_float", "value_int"):
        return np.array(a.f if a.name == "value_float" else a.i,
                        dtype=np.float32 if a.name == "value_float" else np.int64)
    if a.name in ("value_floats", "value_ints"):
        return np.array(list(a.floats) if a.name == "value_floats" else list(a.ints),
                        dtype=np.float32 if a.name == "value_floats" else np.int64)
    return None


def _evaluate(node: onnx.NodeProto, values: dict[str, np.ndarray], opset: int
              ) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator

    inits = [numpy_helper.from_array(np.asarray(values[i]), i) for i in dict.fromkeys(node.input)
             if i]
    outs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
            for o in node.output if o]
    g = helper.make_graph([node], "fold", [], outs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    try:
        res = ReferenceEvaluator(m).run(None, {})
    except Exception:  # anything the reference cannot run stays in the graph
        return None
    return [np.asarray(r) for r in res]


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace constant-only nodes (shape arithmetic) by Constant nodes, in place."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        return model
    graph = model.graph
    values: dict[str, np.ndarray] = {
        t.name: numpy_helper.to_array(t) for t in graph.initializer
        if not is_float(t.data_type) and int(np.prod(t.dims)) <= _MAX_ELEMENTS}
    nodes: list[onnx.NodeProto] = []
    changed = False
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            v = _constant_value(node)
            if v is not None:
                values[node.output[0]] = v
            nodes.append(node)
            continue
        ins = [i for i in node.input if i]
        if (node.domain not in ("", "ai.onnx") or node.op_type in _NEVER or not ins
                or not all(i in values for i in ins)):
            nodes.append(node)
            continue
        res = _evaluate(node, values, opset)
        if res is None or any(r.size > _MAX_ELEMENTS for r in res):
            nodes.append(node)
            continue
        for name, r in zip([o for o in node.output if o], res, strict=True):
            values[name] = r
            nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_folded",
                                          value=numpy_helper.from_array(r, name)))
        changed = True
    if not changed:
        return model
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    live = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(live)
    return model
