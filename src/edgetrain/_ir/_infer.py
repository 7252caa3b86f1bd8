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

#: Integer constant inputs up to this many elements are handed to inference as data (Reshape
#: shapes, Slice starts, axes), which lets it compute static output shapes.
_DATA_ELEMENTS = 64
_INDEX_TYPES = frozenset({ir.DataType.INT64, ir.DataType.INT32})


def infer_outputs(node: ir.Node, opset: int) -> None:
    """Set ``type`` and ``shape`` of ``node``'s outputs where ONNX can infer them.

    Nodes with subgraphs and ops ONNX does not know keep what they have; a fallback gives
    every still-untyped output the element type of the first typed input.
    """
    try:
        if not _infer_elementwise(node):
            _infer_with_onnx(node, opset)
    except Exception:
        pass
    if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
           for a in node.attributes.values()):
        return  # the subgraphs decide the outputs' types: the caller sets them
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
        if v.dtype not in _INDEX_TYPES:
            continue
        tensor = ir.convenience.get_const_tensor(v)
        if tensor is not None and numel(tuple(int(d) for d in tensor.shape.dims
                                              if isinstance(d, int))) <= _DATA_ELEMENTS:
            data[v.name] = onnx.numpy_helper.from_array(tensor.numpy(), v.name)
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
            out.shape = ir.Shape([d.dim_value if d.HasField("dim_value")
                                  else (d.dim_param or None) for d in tt.shape.dim])


_UNARY = frozenset({"Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Abs", "Relu", "Sigmoid", "Tanh",
                    "Erf", "Softplus", "Identity", "Sin", "Cos", "Floor", "Ceil", "Sign"})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum"})
_PREDICATES = frozenset({"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And",
                         "Or", "Not"})


def _infer_elementwise(node: ir.Node) -> bool:
    """The common elementwise ops, inferred in Python (numpy broadcasting over known and
    named dims), as ONNX would: most backward nodes are these, and the round trip through
    ONNX's C++ inference costs more than the node's construction."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1 or not (
            op in _UNARY or op in _BINARY or op in _PREDICATES or op in ("Cast", "Where")):
        return False
    ins = [v for v in node.inputs if v is not None]
    if not ins or any(v.type is None or v.shape is None for v in ins):
        return False
    shape = _broadcast([v.shape for v in ins if v.shape is not None])
    if shape is None:
        return False
    out = node.outputs[0]
    if op in _PREDICATES:
        out.type = ir.TensorType(ir.DataType.BOOL)
    elif op == "Cast":
        out.type = ir.TensorType(ir.DataType(node.attributes["to"].as_int()))
    else:
        out.type = ins[1].type if op == "Where" else ins[0].type
    out.shape = shape
    return True


def _broadcast(shapes: list[ir.Shape]) -> ir.Shape | None:
    rank = max(len(s) for s in shapes)
    dims: list[int | str | None] = []
    for i in range(rank):
        here = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        known = {d if isinstance(d, int) else d.value for d in here}
        known.discard(1)
        if len(known) == 0:
            dims.append(1)
        elif len(known) == 1:
            dims.append(known.pop())
        else:
            dims.append(None)  # unknown, or sizes that only run time can reconcile
    return ir.Shape(dims)
