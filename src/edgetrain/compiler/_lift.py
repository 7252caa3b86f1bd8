"""Import normalizations for files as they are shipped: weights kept in Constant nodes,
half-precision weights, and inputs whose sizes the file leaves open.

* Some exporters store every weight as a Constant node instead of an initializer (silero-vad,
  OpenVINO's ONNX output), even inside If branches. Selection trains initializers, so such a
  file has "nothing to train". When the main graph holds no float initializer of more than
  one element — the file keeps its weights in Constant nodes — every float Constant of more
  than one element, at any depth, whose values are finite and not all equal (masks, fills and
  ramps of one value stay constants) and that some op reads as a differentiable input (not a
  Resize's scales) becomes an initializer of the main graph under the same name (a subgraph
  reads it as an outer value). A file that has initializers keeps its
  Constants as constants: there they are masks and tables, not weights.
* float16 and bfloat16 weights or inputs are refused at compile with what to do, instead of a
  failure when a runtime loads the step graph.
* A file may leave its input sizes open (``[batch, 3, height, width]``), and gradients of
  pooling need static spatial sizes (those of convolutions are faster with them): the caller
  can fix them (``input_shapes``), and the
  file's own shape annotations of intermediate values, computed for the open sizes, are
  dropped so that they are inferred again for the fixed ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .._ir import is_float
from ..errors import EdgetrainError
from ..format._validate import iter_graphs, iter_nodes
from ..select import differentiable_slot

_HALF: dict[int, str] = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}


def one_line(e: BaseException | str) -> str:
    """An error text squeezed onto one line (ONNX's checkers report over several)."""
    return " ".join(str(e).split())


def _weight_value(node: onnx.NodeProto, reads: dict[str, list[tuple[str, int]]], opset: int
                  ) -> np.ndarray | None:
    """The tensor of a Constant node that looks like a weight, else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) \
            != 1 or node.attribute[0].name != "value" or not any(
                differentiable_slot(op, i, opset) for op, i in reads.get(node.output[0], [])):
        return None
    t = node.attribute[0].t
    if not is_float(t.data_type) or int(np.prod(t.dims)) < 2 or t.data_location == \
            TensorProto.EXTERNAL:
        return None
    value = numpy_helper.to_array(t)
    flat = value.reshape(-1)
    if not np.all(np.isfinite(flat)) or np.all(flat == flat[0]):
        return None
    return value


def lift_constant_weights(model: onnx.ModelProto) -> list[str]:
    """Constant-node weights of a file that has no float initializers become initializers of
    the main graph (module docstring), in place; returns their names."""
    if any(is_float(t.data_type) and int(np.prod(t.dims)) >= 2 for t in model.graph.initializer):
        return []
    lifted: list[TensorProto] = []
    reads: dict[str, list[tuple[str, int]]] = {}
    for node, _ in iter_nodes(model):
        for i, name in enumerate(node.input):
            reads.setdefault(name, []).append((node.op_type, i))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    for graph, _ in iter_graphs(model):
        keep = []
        for node in graph.node:
            value = _weight_value(node, reads, opset)
            if value is None:
                keep.append(node)
            else:
                lifted.append(numpy_helper.from_array(value, node.output[0]))
        if len(keep) != len(graph.node):
            del graph.node[:]
            graph.node.extend(keep)
    model.graph.initializer.extend(lifted)
    return [t.name for t in lifted]


def _typed_values(model: onnx.ModelProto) -> Iterator[tuple[str, int]]:
    """(what, element type) of every stored tensor and every graph input."""
    for graph, where in iter_graphs(model):
        for t in graph.initializer:
            yield f"initializer {t.name!r}", t.data_type
        for v in graph.input:
            yield f"input {v.name!r} of the {where} graph", v.type.tensor_type.elem_type
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield f"the {a.name!r} of node {node.name or node.op_type!r}", a.t.data_type


def refuse_half_precision(model: onnx.ModelProto) -> None:
    """float16/bfloat16 weights or inputs: a clear refusal now, not a runtime's later."""
    for what, dtype in _typed_values(model):
        if dtype in _HALF:
            raise EdgetrainError(
                f"{what} is {_HALF[dtype]}: edgetrain trains float32 or float64 models; convert "
                "the model to float32 first (e.g. onnxconverter_common's "
                "float16.convert_float16_to_float32, or export it in float32)")


def set_input_shapes(model: onnx.ModelProto,
                     shapes: Mapping[str, Sequence[int | str | None]]) -> None:
    """Fix the sizes of graph inputs (a name keeps a dim dynamic), in place."""
    graph = model.graph
    inputs = {v.name: v for v in graph.input} if graph.input else {}
    weights = {t.name for t in graph.initializer}
    for name, dims in shapes.items():
        v = inputs.get(name)
        if v is None or name in weights:
            data = [k for k in inputs if k not in weights]
            raise EdgetrainError(f"input_shapes names {name!r}, which is not an input of the "
                                 f"model; its inputs are {data}")
        _set_dims(v, list(dims))
    del graph.value_info[:]  # computed for the open sizes: inferred again


def _set_dims(v: onnx.ValueInfoProto, dims: list[int | str | None]) -> None:
    tt = v.type.tensor_type
    old = list(tt.shape.dim) if tt.HasField("shape") else None
    if old is not None and len(old) != len(dims):
        raise EdgetrainError(f"input_shapes gives {v.name!r} {len(dims)} dims, but the model's "
                             f"input has {len(old)}")
    for i, d in enumerate(dims):
        if isinstance(d, bool) or not (d is None or isinstance(d, str) or (
                isinstance(d, (int, np.integer)) and d > 0)):
            raise EdgetrainError(f"input_shapes[{v.name!r}]: dim {i} must be a positive size "
                                 f"or a name (dynamic), got {d!r}")
        if old is not None and old[i].HasField("dim_value") and isinstance(d, (int, np.integer)) \
                and old[i].dim_value != d:
            raise EdgetrainError(f"input_shapes[{v.name!r}]: dim {i} is {old[i].dim_value} in "
                                 f"the model, not {d}")
    tt.shape.Clear()
    for d in dims:
        dim = tt.shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        elif d is not None:
            dim.dim_value = int(d)


def clear_invalid_dims(model: onnx.ModelProto) -> None:
    """Negative sizes in the main graph's declared shapes (some converters write -1 for a
    dynamic dim) become unknown dims, in place."""
    g = model.graph
    for v in [*g.input, *g.output, *g.value_info]:
        if not v.type.tensor_type.HasField("shape"):
            continue
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                d.ClearField("dim_value")
