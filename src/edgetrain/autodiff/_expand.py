"""Function ops without a rule are differentiated through their ONNX function body.

Many ONNX ops are defined by a body of other ONNX ops (``ReduceL2``, ``Selu``, ``Swish``,
``GroupNormalization``, ``RMSNormalization``, ``Attention``, ``SoftmaxCrossEntropyLoss``, …:
the schemas carry it, for some depending on the input types). Where no hand-written rule
exists, the node on the path to the loss is replaced in the graph being differentiated by
that body, and the rules of its ops apply. The inference graph keeps the fused op. Ops whose
schema has no body but edgetrain writes one (``EXPANSIONS``: LSTM, GRU, RNN) are replaced the
same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx.inliner
import onnx_ir as ir
from onnx_ir import _cloner

from .._ir import Builder, Value, const_array, infer_outputs, reads, redirect, static_dims
from ._registry import EXPANSIONS, NON_DIFFERENTIABLE, RULES


def expand_functions(graph: ir.Graph, wrt: Sequence[Value], op: Builder,
                     replaced: dict[int, tuple[Value, Value]] | None = None) -> int:
    """Replace, until none is left, every node that depends on ``wrt``, has no rule and has
    a function body or a registered expansion. Returns how many nodes were expanded;
    ``replaced`` maps the id of each old output to it and the value that took its place."""
    count = 0
    replaced = {} if replaced is None else replaced
    while True:
        dep = {id(v) for v in wrt}
        target: tuple[ir.Node, tuple[ir.Function, list[int]] | None] | None = None
        for node in graph:
            if node.op_type in NON_DIFFERENTIABLE or not any(id(v) in dep for v in reads(node)):
                continue
            dep.update(id(o) for o in node.outputs)
            if node.op_type not in RULES and node.domain in ("", "ai.onnx"):
                body = None if node.op_type in EXPANSIONS else _function(node, op.opset)
                if body is not None or node.op_type in EXPANSIONS:
                    target = (node, body)
                    break
        if target is None:
            return count
        olds = list(target[0].outputs)
        if target[1] is None:
            news = _replace(graph, target[0], op)
        else:
            news = _inline(graph, target[0], *target[1], op)
        replaced.update((id(o), (o, n)) for o, n in zip(olds, news, strict=False)
                        if n is not None)
        count += 1


def _replace(graph: ir.Graph, node: ir.Node, op: Builder) -> list[Value | None]:
    """Replace ``node`` by its registered expansion, built just before it."""
    here = Builder(graph, op.opset, op.namer, before=node)
    news = list(EXPANSIONS[node.op_type](node, here))
    for old, new in zip(node.outputs, news, strict=False):
        if new is not None and (old.uses() or old.is_graph_output()):
            new.type, new.shape = old.type, old.shape
            redirect(old, new, suffix="/fused")
    graph.remove(node, safe=True)
    return news


def _function(node: ir.Node, opset: int) -> tuple[ir.Function, list[int]] | None:
    """The node's usable function body as IR and, for each of its outputs, the node output
    it stands for; or ``None`` (no body, a body that does not type-check for these inputs,
    one the IR cannot represent, or one that leaves out an output the graph reads).

    Context-dependent bodies compute only the outputs the node asks for but still declare
    the others (SoftmaxCrossEntropyLoss's ``log_prob``): those are dropped.
    """
    body = _body(node, opset)
    if body is None:
        return None
    made = set(body.input) | {o for n in body.node for o in n.output}
    slots = [i for i, name in enumerate(body.output) if name in made]
    for i, name in enumerate(body.output):
        out = node.outputs[i] if i < len(node.outputs) else None
        if name not in made and out is not None and (out.uses() or out.is_graph_output()):
            return None
    kept = [body.output[i] for i in slots]
    del body.output[:]
    body.output.extend(kept)
    try:
        return ir.serde.deserialize_function(body), slots
    except Exception:
        return None


def _body(node: ir.Node, opset: int) -> onnx.FunctionProto | None:
    """The node's function body at the model's opset, if its schema defines one."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None
    try:
        raw: bytes | onnx.FunctionProto | None = None
        if getattr(schema, "has_function", False):
            raw = schema.get_function_with_opset_version(opset)  # type: ignore[attr-defined]
        elif getattr(schema, "has_context_dependent_function", False):  # not in the stubs
            # A body is registered for the opsets where its own ops changed; the one for this
            # model is the newest at or below its opset (an exact match is required here).
            registered = schema.context_dependent_function_opset_versions  # type: ignore[attr-defined]
            versions = [int(v) for v in registered if int(v) <= opset]
            if not versions:
                return None
            proto = ir.serde.serialize_node(node)
            types = [_type_proto(v).SerializeToString() for v in node.inputs]
            build = schema.get_context_dependent_function_with_opset_version  # type: ignore[attr-defined]
            raw = build(max(versions), proto.SerializeToString(), types)
        if isinstance(raw, bytes):
            raw = onnx.FunctionProto.FromString(raw) if raw else None
        return raw if raw is not None and len(raw.node) and _typechecks(node, raw, opset) \
            else None
    except Exception:  # a body ONNX cannot build for these inputs: no expansion
        return None


def _typechecks(node: ir.Node, body: onnx.FunctionProto, opset: int) -> bool:
    """Whether the body, instantiated for this node's input types, passes ONNX's strict type
    inference (some bodies are written for float32 only, say)."""
    call = ir.serde.serialize_node(node)
    call.domain = "edgetrain.expand"
    del call.attribute[:]
    call.attribute.extend(ir.serde.serialize_attribute(a)
                          for a in _attributes(node, opset).values())
    fn = onnx.FunctionProto()
    fn.CopyFrom(body)
    fn.domain, fn.name = "edgetrain.expand", node.op_type
    # A body registered for an older opset is valid at the model's (the registry keeps one
    # per opset where its ops changed), and the inliner wants the model's own versions.
    for imp in fn.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = opset
    inputs = [onnx.helper.make_value_info(v.name, _type_proto(v))
              for v in node.inputs if v is not None and v.name]
    outputs = [onnx.helper.make_value_info(o.name, onnx.TypeProto()) for o in node.outputs
               if o.name]
    graph = onnx.helper.make_graph([call], "check", inputs, outputs)
    model = onnx.helper.make_model(graph, functions=[fn], opset_imports=[
        onnx.helper.make_opsetid("", opset), onnx.helper.make_opsetid("edgetrain.expand", 1)])
    try:
        inlined = onnx.shape_inference.infer_shapes(
            onnx.inliner.inline_local_functions(model), strict_mode=True)
    except Exception:
        return False
    return _consistent_types(inlined.graph, opset)


def _consistent_types(graph: onnx.GraphProto, opset: int) -> bool:
    """Every node's inputs and outputs that share a type variable (``T``) have one type —
    the check ONNX's inference leaves out (a float32 constant added to a float64 tensor)."""
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*graph.input, *graph.value_info, *graph.output]}
    for node in graph.node:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        seen: dict[str, set[int]] = {}
        for formal, actual in ((schema.inputs, node.input), (schema.outputs, node.output)):
            for i, name in enumerate(actual):
                spec = formal[min(i, len(formal) - 1)] if formal else None
                if spec is not None and name and types.get(name):
                    seen.setdefault(spec.type_str, set()).add(types[name])
        if any(len(v) > 1 for v in seen.values()):
            return False
    return True


def _type_proto(v: Value | None) -> onnx.TypeProto:
    tp = onnx.TypeProto()
    if v is not None and v.type is not None:
        ir.serde.serialize_type_into(tp, v.type)
        if v.shape is not None:
            ir.serde.serialize_shape_into(tp, v.shape)
    return tp


def _attributes(node: ir.Node, opset: int) -> dict[str, ir.Attr]:
    """The node's attributes, with the schema's defaults for those it leaves out."""
    attrs = dict(node.attributes)
    schema = onnx.defs.get_schema(node.op_type, opset, "")
    for name, spec in schema.attributes.items():
        if name not in attrs and spec.default_value.type != onnx.AttributeProto.UNDEFINED:
            attrs[name] = ir.serde.deserialize_attribute(spec.default_value)
    return attrs


def _inline(graph: ir.Graph, node: ir.Node, function: ir.Function, slots: list[int],
            op: Builder) -> list[Value | None]:
    value_map: dict[ir.Value, ir.Value | None] = {}
    for i, formal in enumerate(function.inputs):
        value_map[formal] = node.inputs[i] if i < len(node.inputs) else None

    # Inner nodes are named "<node>/<op>/<inner op>", so an error about one of them (no rule
    # for an inner Scan, say) still names the op and the node it came from.
    origin = f"{node.name}/{node.op_type}" if node.name else node.op_type

    def rename(n: ir.Node) -> None:
        n.name = op.namer.fresh(f"{origin}/{n.op_type}")
        for out in n.outputs:
            out.name = op.namer.fresh(f"{node.name or node.op_type}/{out.name or 'v'}")

    cloner = _cloner.Cloner(attr_map=_attributes(node, op.opset), value_map=value_map,
                            metadata_props={}, post_process=rename, resolve_ref_attrs=True)
    nodes = [cloner.clone_node(n) for n in function]
    pairs = [(node.outputs[i], value_map[o]) for i, o in zip(slots, function.outputs)
             if i < len(node.outputs)]
    for old, new in pairs:
        if new is not None:
            new.type, new.shape = old.type, old.shape
    ir.convenience.replace_nodes_and_values(
        graph, insertion_point=node, old_nodes=[node], new_nodes=nodes,
        old_values=[old for old, new in pairs if new is not None],
        new_values=[new for _, new in pairs if new is not None])
    for n in nodes:
        if not _fold(n, op.opset) and any(o.type is None or o.shape is None
                                          for o in n.outputs):
            infer_outputs(n, op.opset)
    news: list[Value | None] = [None] * len(node.outputs)
    for i, o in zip(slots, function.outputs):
        if i < len(news):
            news[i] = value_map[o]
    return news


#: Ops whose outputs are not a function of their inputs alone.
_RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Bernoulli", "Multinomial", "Dropout"})


def _fold(node: ir.Node, opset: int) -> bool:
    """Give ``node``'s outputs their constant values where its inputs are constants or
    static shapes (a body's shape arithmetic: CenterCropPad's pads, RotaryEmbedding's
    reshapes), so that rules see constants and later nodes get static shapes. The node
    stays; only its outputs learn their values."""
    if node.op_type in _RANDOM or node.domain not in ("", "ai.onnx") or any(
            a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for a in node.attributes.values()):
        return False
    arrays: list[np.ndarray | None]
    if node.op_type in ("Shape", "Size"):
        shape = static_dims(node.inputs[0])
        if shape is None:
            return False
        arrays = [np.zeros(shape, dtype=np.int8)]
    else:
        arrays = [None if v is None else const_array(v) for v in node.inputs]
        if any(v is not None and a is None for v, a in zip(node.inputs, arrays)):
            return False
    try:
        results = _evaluate(node, arrays, opset)
    except Exception:
        return False
    for out, value in zip(node.outputs, results):
        tensor = ir.tensor(np.asarray(value))
        out.const_value = tensor
        out.type, out.shape = ir.TensorType(tensor.dtype), ir.Shape(np.asarray(value).shape)
    return True


def _evaluate(node: ir.Node, arrays: list[np.ndarray | None], opset: int) -> list[object]:
    """``node`` run by onnx.reference on constant inputs."""
    from onnx.reference import ReferenceEvaluator

    proto = ir.serde.serialize_node(node)
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(arrays)]
    outs = [f"out{i}" if o else "" for i, o in enumerate(proto.output)]
    del proto.input[:], proto.output[:]
    proto.input.extend(names)
    proto.output.extend(outs)
    inits = [onnx.numpy_helper.from_array(a, n) for a, n in zip(arrays, names)
             if a is not None]
    graph = onnx.helper.make_graph([proto], "fold", [], [
        onnx.helper.make_value_info(o, onnx.TypeProto()) for o in outs if o],
        initializer=inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    return list(ReferenceEvaluator(model).run(None, {}))
