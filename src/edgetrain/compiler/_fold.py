"""Fold constant shape arithmetic so that shape inference sees static sizes.

Exporters leave small constant subgraphs in the model: PyTorch's TorchScript exporter writes
``F.pad`` as Constant → ConstantOfShape → Concat → Reshape → Slice → Transpose → Cast, and
ONNX shape inference cannot see through that, so every tensor after the first padded
convolution has unknown spatial sizes (pool gradients need them, conv gradients run faster
with them). This pass evaluates, with onnx.reference, every node whose inputs are all
constants — outputs of Constant nodes or non-float initializers — and replaces it with a
Constant. Float initializers (the weights) are never inputs of a folded node: folding a
weight would bake it into a new constant and take it out of training.

Exporters also compute sizes from a tensor's shape at run time: ``x.reshape(n, 2, c // 2, h,
w)`` becomes Shape → Gather → Div → Unsqueeze → Concat → Reshape, and Swin's window padding
Shape → Gather → Mod → Concat → Pad. With a dynamic batch, ``Shape(x)`` is no constant, so
nothing of that folds and ONNX's shape inference loses every size after it, the spatial ones
included. So the pass walks the main graph once, in order, with its own per-node shape
inference (ONNX's, fed with the sizes found so far), and follows small integer vectors
element by element: each element is a number or a symbol, the name of a dynamic dim
(``[batch, 16, 4, 4]``). A vector whose elements all become numbers is a constant (Swin's
pads), and a Reshape to a vector with symbols gets a constant target when every symbol is the
input's own dim at that position (written 0: "copy it") but at most one (written -1).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from .._ir import is_float

#: Ops that must run every time (randomness) or that carry subgraphs.
_NEVER = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
          "Multinomial", "Bernoulli", "Dropout", "If", "Loop", "Scan"}
_MAX_ELEMENTS = 1 << 16
#: The largest result folded into a Constant: shape arithmetic is small, and the file keeps
#: the model as it came otherwise (a folded mask or table could make it grow).
_MAX_FOLDED = 1 << 12
#: Vectors followed element by element (shape vectors are short).
_MAX_PARTIAL = 64
#: Data movement: the result's elements are some of the inputs' elements.
_STRUCTURAL = {"Gather", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Identity", "Concat",
               "Flatten"}
#: Elementwise arithmetic: an element is known where its operands are.
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Neg", "Abs", "Floor", "Ceil",
                "Cast", "Equal", "Less", "Greater", "Where", "Sqrt", "Not", "And", "Or"}
_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
#: Names given to unnamed dynamic dims while the pass runs (never written to the model).
_ANON = "__edgetrain_dim_"

Dims = list[int | str]


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


def _graph_attrs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every name a node of ``graph`` reads, at any depth (subgraphs read outer values)."""
    out: set[str] = {o.name for o in graph.output}  # may name an outer value
    for node in graph.node:
        out.update(node.input)
        for sub in _graph_attrs(node):
            out |= _names_read(sub)
    return out


def _is_number(e: object) -> bool:
    return not isinstance(e, str)


class _Walk:
    """One in-order walk over the main graph: constants, partial vectors and shapes."""

    def __init__(self, model: onnx.ModelProto, opset: int) -> None:
        self.opset = opset
        self.known: dict[str, np.ndarray] = {}
        self.partial: dict[str, np.ndarray] = {}   # object arrays: numbers and symbols
        self.types: dict[str, int] = {}
        self.shapes: dict[str, Dims] = {}
        self.fallback: dict[str, onnx.TypeProto] = {}
        self._anon = itertools.count()
        self.changed = False
        graph = model.graph
        self.taken = _names_read(graph) | {o for n in graph.node for o in n.output} | {
            v.name for v in [*graph.input, *graph.output]} | {t.name for t in graph.initializer}
        self.targets: dict[tuple[str, tuple[int, ...]], str] = {}
        try:
            inferred = shape_inference.infer_shapes(model, data_prop=True).graph
            self.fallback = {v.name: v.type for v in inferred.value_info}
        except Exception:  # the walk infers node by node; this is only a fallback
            pass
        for v in [*graph.input, *graph.value_info]:
            self._record_type(v.name, v.type)
        for t in graph.initializer:
            self.types[t.name] = t.data_type
            self.shapes[t.name] = [int(d) for d in t.dims]
            if not is_float(t.data_type) and int(np.prod(t.dims)) <= _MAX_ELEMENTS:
                self.known[t.name] = numpy_helper.to_array(t)

    # -- bookkeeping -------------------------------------------------------------------------

    def _fresh(self) -> str:
        return f"{_ANON}{next(self._anon)}"

    def _record_type(self, name: str, tp: onnx.TypeProto) -> None:
        if not tp.HasField("tensor_type"):
            return
        tt = tp.tensor_type
        if tt.elem_type:
            self.types[name] = tt.elem_type
        if tt.HasField("shape"):
            self.shapes[name] = [d.dim_value if d.HasField("dim_value") else
                                 (d.dim_param or self._fresh()) for d in tt.shape.dim]

    def _record_known(self, name: str, value: np.ndarray) -> None:
        self.known[name] = value
        self.types[name] = helper.np_dtype_to_tensor_dtype(value.dtype)
        self.shapes[name] = [int(d) for d in value.shape]

    def _type_proto(self, name: str) -> onnx.TypeProto | None:
        if name not in self.types:
            return None
        shape = self.shapes.get(name)
        dims = None if shape is None else [
            None if isinstance(d, str) and d.startswith(_ANON) else d for d in shape]
        return helper.make_tensor_type_proto(self.types[name], dims)

    # -- the walk ----------------------------------------------------------------------------

    def visit(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """The nodes that replace ``node`` (itself, Constants, or a new target and itself)."""
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            v = _constant_value(node)
            if v is not None:
                self._record_known(node.output[0], v)
            else:
                self._infer(node)
            return [node]
        folded = self._fold(node)
        if folded is not None:
            return folded
        extra = self._static_target(node)
        self._infer(node)
        if node.domain in ("", "ai.onnx") and node.op_type not in _NEVER:
            self._follow(node)
            done = self._known_outputs(node)
            if done is not None:
                return [*extra, *done]
        return [*extra, node]

    def _fold(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        ins = [i for i in node.input if i]
        if (node.domain not in ("", "ai.onnx") or node.op_type in _NEVER or not ins
                or not all(i in self.known for i in ins)):
            return None
        res = _evaluate(node, self.known, self.opset)
        if res is None or any(r.size > _MAX_FOLDED for r in res):
            return None
        return self._constants(node, res)

    def _constants(self, node: onnx.NodeProto, res: list[np.ndarray]) -> list[onnx.NodeProto]:
        self.changed = True
        out = []
        for name, r in zip([o for o in node.output if o], res, strict=True):
            self._record_known(name, r)
            out.append(helper.make_node("Constant", [], [name], name=f"{name}_folded",
                                        value=numpy_helper.from_array(r, name)))
        return out

    def _known_outputs(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """Constants for a node whose partial outputs turned out to be all numbers."""
        outs = [o for o in node.output if o]
        if not outs or not all(o in self.partial for o in outs):
            return None
        values = [self.partial[o] for o in outs]
        if not all(all(_is_number(e) for e in v.reshape(-1)) for v in values):
            return None
        res = []
        for o, v in zip(outs, values, strict=True):
            dtype = helper.tensor_dtype_to_np_dtype(self.types.get(o, onnx.TensorProto.INT64))
            res.append(np.array(v.tolist(), dtype=dtype).reshape(v.shape))
            del self.partial[o]
        return self._constants(node, res)

    def _infer(self, node: onnx.NodeProto) -> None:
        """Output types and shapes from ONNX's inference of this one node."""
        types = {i: self._type_proto(i) for i in node.input if i}
        result: dict[str, onnx.TypeProto] = {}
        if (node.domain in ("", "ai.onnx") and not any(True for _ in _graph_attrs(node))
                and all(t is not None for t in types.values())):
            data = {i: numpy_helper.from_array(self.known[i], i) for i in types
                    if i in self.known and self.known[i].size <= _MAX_ELEMENTS}
            try:
                schema = onnx.defs.get_schema(node.op_type, self.opset, node.domain)
                result = dict(shape_inference.infer_node_outputs(
                    schema, node, {k: v for k, v in types.items() if v is not None}, data,
                    opset_imports=[helper.make_opsetid("", self.opset)]))
            except Exception:
                result = {}
        for o in node.output:
            tp = result.get(o) or self.fallback.get(o)
            if o and tp is not None:
                self._record_type(o, tp)

    # -- partial vectors ---------------------------------------------------------------------

    def _entries(self, name: str) -> np.ndarray | None:
        if name in self.partial:
            return self.partial[name]
        v = self.known.get(name)
        if v is not None and v.ndim <= 1 and v.size <= _MAX_PARTIAL:
            return np.array(v.tolist(), dtype=object).reshape(v.shape)
        return None

    def _follow(self, node: onnx.NodeProto) -> None:
        """Partial outputs of Shape, data movement and elementwise arithmetic."""
        out: np.ndarray | None = None
        if node.op_type == "Shape":
            out = self._shape_entries(node)
        elif node.op_type == "Size":
            dims = self.shapes.get(node.input[0])
            sizes = [d for d in dims or () if isinstance(d, int)]
            if dims is not None and len(sizes) == len(dims):
                out = np.array(math.prod(sizes), dtype=object)
        elif node.op_type in _STRUCTURAL or (node.op_type == "Cast" and self._int_cast(node)):
            out = self._moved(node)
        elif node.op_type in _ELEMENTWISE:
            out = self._elementwise(node)
        if out is not None and out.size <= _MAX_PARTIAL:
            self.partial[node.output[0]] = out

    def _shape_entries(self, node: onnx.NodeProto) -> np.ndarray | None:
        dims = self.shapes.get(node.input[0])
        if dims is None:
            return None
        attrs = {a.name: a.i for a in node.attribute}
        picked = dims[slice(attrs.get("start", 0), attrs.get("end"))]
        return np.array(picked, dtype=object).reshape(len(picked))

    def _int_cast(self, node: onnx.NodeProto) -> bool:
        to = next((a.i for a in node.attribute if a.name == "to"), 0)
        return to in _INT_TYPES and self.types.get(node.input[0]) in _INT_TYPES

    def _moved(self, node: onnx.NodeProto) -> np.ndarray | None:
        """Run the node on element codes instead of values: the codes that come out say
        which input element each output element is (numbers and symbols alike)."""
        data = list(node.input) if node.op_type == "Concat" else node.input[:1]
        if not any(i in self.partial for i in data):
            return None
        table: list[object] = []
        values = dict(self.known)
        for name in data:
            entries = self._entries(name)
            if entries is None:
                return None
            values[name] = np.arange(len(table), len(table) + entries.size,
                                     dtype=np.int64).reshape(entries.shape)
            table.extend(entries.reshape(-1).tolist())
        if not all(i in values for i in node.input if i):
            return None
        res = _evaluate(node, values, self.opset)
        if res is None:
            return None
        codes = res[0]
        return np.array([table[int(c)] for c in codes.reshape(-1)],
                        dtype=object).reshape(codes.shape)

    def _elementwise(self, node: onnx.NodeProto) -> np.ndarray | None:
        """Known elements computed by the op itself (on placeholders where unknown)."""
        ins = [i for i in node.input if i]
        if not any(i in self.partial for i in ins):
            return None
        values = dict(self.known)
        masks = []
        for name in ins:
            entries = self._entries(name)
            if entries is None:
                return None
            unknown = np.array([isinstance(e, str) for e in entries.reshape(-1)],
                               dtype=bool).reshape(entries.shape)
            dtype = helper.tensor_dtype_to_np_dtype(self.types.get(name,
                                                                   onnx.TensorProto.INT64))
            values[name] = np.array([1 if isinstance(e, str) else e
                                     for e in entries.reshape(-1)],
                                    dtype=dtype).reshape(entries.shape)
            masks.append(unknown)
        res = _evaluate(node, values, self.opset)
        if res is None:
            return None
        mask = np.broadcast_to(np.logical_or.reduce(np.broadcast_arrays(*masks)), res[0].shape)
        return np.array([self._fresh() if m else v for v, m in zip(
            res[0].reshape(-1).tolist(), mask.reshape(-1), strict=True)],
            dtype=object).reshape(res[0].shape)

    # -- targets with symbols ----------------------------------------------------------------

    def _static_target(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """A constant target for a Reshape, Expand or Resize whose target has symbols only
        where the input keeps its own dim (Reshape: 0, Expand: 1, Resize: the axis is left
        out of ``axes``) and at most one other (Reshape: -1)."""
        slot = {"Reshape": 1, "Expand": 1, "Resize": 3 if self.opset >= 18 else -1}.get(
            node.op_type, -1)
        if slot < 0 or len(node.input) <= slot or node.input[slot] not in self.partial:
            return []
        entries = self.partial[node.input[slot]].reshape(-1).tolist()
        dims = self.shapes.get(node.input[0])
        if dims is None:
            return []
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Reshape":
            target = _reshape_target(entries, dims, "allowzero" in attrs and
                                     attrs["allowzero"].i != 0)
        elif node.op_type == "Expand":
            target = _expand_target(entries, dims)
        else:
            target = self._resize_target(node, entries, dims)
        if target is None:
            return []
        return self._target_constant(node, slot, target)

    def _resize_target(self, node: onnx.NodeProto, entries: list[object], dims: Dims
                       ) -> list[int] | None:
        """Resize ``sizes`` for the axes it really resizes (the others leave ``axes``)."""
        attrs = {a.name: a for a in node.attribute}
        policy = attrs.get("keep_aspect_ratio_policy")
        if policy is not None and policy.s not in (b"", b"stretch"):
            return None
        axes = [int(a) % len(dims) for a in attrs["axes"].ints] if "axes" in attrs else list(
            range(len(dims)))
        keep = [(a, e) for a, e in zip(axes, entries, strict=True) if dims[a] != e]
        if not keep or not all(_is_number(e) for _, e in keep):
            return None
        for a in [a for a in node.attribute if a.name == "axes"]:
            node.attribute.remove(a)
        node.attribute.append(helper.make_attribute("axes", [a for a, _ in keep]))
        return [int(e) for _, e in keep]  # type: ignore[call-overload]

    def _target_constant(self, node: onnx.NodeProto, slot: int, target: list[int]
                         ) -> list[onnx.NodeProto]:
        key = (node.input[slot], tuple(target))
        self.changed = True
        if key in self.targets:
            node.input[slot] = self.targets[key]
            return []
        name = f"{node.input[slot]}_static"
        while name in self.taken:
            name = f"{node.input[slot]}_static_{len(self.taken)}"
        self.taken.add(name)
        self.targets[key] = name
        value = np.array(target, dtype=np.int64)
        self._record_known(name, value)
        node.input[slot] = name
        return [helper.make_node("Constant", [], [name], name=name,
                                 value=numpy_helper.from_array(value, name))]


def _reshape_target(entries: list[object], dims: Dims, allowzero: bool) -> list[int] | None:
    out: list[int] = []
    for i, e in enumerate(entries):
        if _is_number(e):
            out.append(int(e))  # type: ignore[call-overload]
        elif not allowzero and i < len(dims) and dims[i] == e:
            out.append(0)
        else:
            out.append(-1)
    return out if out.count(-1) <= 1 else None


def _expand_target(entries: list[object], dims: Dims) -> list[int] | None:
    out: list[int] = []
    lead = len(entries) - len(dims)
    for i, e in enumerate(entries):
        if _is_number(e):
            out.append(int(e))  # type: ignore[call-overload]
        elif i >= lead and dims[i - lead] == e:
            out.append(1)
        else:
            return None
    return out


def _drop_dead(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The nodes some output of which is read (at any depth) or is a graph output."""
    reads = {o.name for o in graph.output}
    live: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(o in reads for o in node.output if o):
            live.append(node)
            reads.update(node.input)
            for sub in _graph_attrs(node):
                reads |= _names_read(sub)
    return live[::-1]


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace constant-only nodes (shape arithmetic) by Constant nodes and give Reshape
    targets with dynamic dims a constant form, in place."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        return model
    walk = _Walk(model, int(opset))
    nodes = [new for node in model.graph.node for new in walk.visit(node)]
    if not walk.changed:
        return model
    nodes = _drop_dead(model.graph, nodes)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
