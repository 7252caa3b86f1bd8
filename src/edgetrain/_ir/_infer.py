"""Type and shape of a new node's outputs, from ONNX's own per-node inference.

Every value the builder creates carries its element type and, where ONNX can tell, its shape,
so that later passes and gradient rules read facts off the value itself instead of running
shape inference over whole graphs in between.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx import shape_inference

from ._types import numel

#: Constant inputs up to this many elements are handed to inference as data (Reshape shapes,
#: Slice starts, axes), which lets it compute static output shapes.
_DATA_ELEMENTS = 1 << 12


def infer_outputs(node: ir.Node, opset: int) -> None:
    """Set ``type`` and ``shape`` of ``node``'s outputs where ONNX can infer them.

    Nodes with subgraphs and ops ONNX does not know keep what they have; a fallback gives
    every still-untyped output the element type of the first typed input.
    """
    try:
        _infer_with_onnx(node, opset)
    except (onnx.shape_inference.InferenceError, onnx.defs.SchemaError, ValueError, KeyError,
            TypeError, RuntimeError):
        pass
    like = next((v.type for v in node.inputs if v is not None and v.type is not None), None)
    for out in node.outputs:
        if out.type is None and like is not None:
            out.type = like


def _infer_with_onnx(node: ir.Node, opset: int) -> None:
    if node.domain not in ("", "ai.onnx") or any(
            a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for a in node.attributes.values()):
        return
    schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    proto = ir.serde.serialize_node(node)
    types: dict[str, onnx.TypeProto] = {}
    data: dict[str, onnx.TensorProto] = {}
    for v in node.inputs:
        if v is None or not v.name or v.type is None:
            continue
        tp = onnx.TypeProto()
        ir.serde.serialize_type_into(tp, v.type)
        if v.shape is not None:
            ir.serde.serialize_shape_into(tp, v.shape)
        types[v.name] = tp
        tensor = ir.convenience.get_const_tensor(v)
        if tensor is not None and numel(tuple(int(d) for d in tensor.shape.dims
                                              if isinstance(d, int))) <= _DATA_ELEMENTS:
            data[v.name] = ir.serde.serialize_tensor(tensor)
    result = shape_inference.infer_node_outputs(
        schema, proto, types, data, opset_imports=[onnx.helper.make_opsetid("", opset)])
    for out in node.outputs:
        found = result.get(out.name or "")
        if found is None or not found.HasField("tensor_type"):
            continue
        tt = found.tensor_type
        if tt.elem_type:
            out.type = ir.TensorType(ir.DataType(tt.elem_type))
        if tt.HasField("shape"):
            out.shape = ir.serde.deserialize_type_proto_for_shape(found)
