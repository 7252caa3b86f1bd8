"""Rewrites that make a standalone step graph acceptable to runtimes other than onnxruntime.

The compiler emits the forms that are fastest on onnxruntime. Some of them are standard ONNX
that other runtimes do not implement; each rewrite here replaces one such form by an equivalent
one they do, after the fact, so onnxruntime keeps its fast form and the file stays the same:

- ``MaxUnpool`` (MaxPool's gradient over disjoint windows) → ``ScatterElements`` into zeros of
  the output shape: neither IREE's ONNX importer nor OpenVINO converts MaxUnpool. The pooling
  indices are flat over N·C·H·W for both ops, so one scatter over the flattened tensor places
  every value where MaxUnpool would.
- ``Cast(bool → int64)`` → ``Where(b, 1, 0)``: tract types the cast's result as its symbolic
  dimension type (TDim), which its public API cannot hand back, so a step counter computed that
  way cannot be read. ``Where`` on int64 constants stays int64.
- ``ReduceSum/ReduceMean(Neg(x))`` → ``Neg(ReduceSum/ReduceMean(x))`` where nothing else reads
  the negation (exact either way): IREE folds the Neg into the reduction as ``acc − x``, a
  reduction without an identity value that its Metal code generation rejects (the
  cross-entropy of an ``eval`` graph is written this way).
- every node gets a new name, ``node<i>``: tract keys nodes, inputs and initializers by name in
  one namespace and derives names of its own from node names (Conv ``c`` with an input bias
  makes ``c.bias``), which collide with the parameters a model names after its layers.
- with ``decompose_bn=True``, a BatchNormalization whose parameters are not all constants
  (batch statistics in training mode, or a trainable scale and shift) becomes its arithmetic,
  (x − μ)·γ/√(σ² + ε) + β: tract implements the op only with constant parameters.
- with ``plane_indices=True``, MaxPool's ``Indices`` are turned from a runtime's per-(n, c)
  plane offsets into the flat N·C·H·W offsets that ONNX specifies and the gradient scatters by
  (IREE's importer lowers MaxPool to torch's ``max_pool2d_with_indices``, which counts within
  each plane; see ``_iree.maxpool_indices_per_plane``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def portable(model: onnx.ModelProto, plane_indices: bool = False,
             decompose_bn: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` (a standalone signature graph) with the rewrites above applied."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    types, ranks = _elem_types(out)
    taken = graph_names(g)
    opset = next((int(o.version) for o in out.opset_import if o.domain in ("", "ai.onnx")), 13)
    nodes: list[onnx.NodeProto] = []
    consts: dict[str, str] = {}

    def const(key: str, tensor: onnx.TensorProto) -> str:
        if key not in consts:
            tensor.name = unique_name(f"portable.{key}", taken)
            g.initializer.append(tensor)
            consts[key] = tensor.name
        return consts[key]

    for n in g.node:
        if n.op_type == "MaxUnpool" and n.domain in ("", "ai.onnx") and len(n.input) >= 3:
            nodes.extend(_scatter_unpool(n, types.get(n.input[0], TensorProto.FLOAT), taken,
                                         const, opset))
        elif n.op_type == "Cast" and types.get(n.input[0]) == TensorProto.BOOL \
                and _cast_to(n) == TensorProto.INT64:
            one = const("one64", numpy_helper.from_array(np.array(1, np.int64)))
            zero = const("zero64", numpy_helper.from_array(np.array(0, np.int64)))
            nodes.append(helper.make_node("Where", [n.input[0], one, zero], list(n.output),
                                          name=n.name))
        elif decompose_bn and n.op_type == "BatchNormalization" and len(n.output) == 1 \
                and not set(n.input[1:5]) <= {t.name for t in g.initializer} \
                and ranks.get(n.input[0]) is not None:
            nodes.extend(_batch_norm(n, int(ranks[n.input[0]]), types.get(n.input[0], 1), taken,
                                     const))
        elif plane_indices and n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1]:
            flat_idx = n.output[1]
            n.output[1] = unique_name(f"{flat_idx}.plane", taken)
            nodes.append(n)
            nodes.extend(_flat_indices(n.input[0], n.output[1], flat_idx, taken, const))
        else:
            nodes.append(n)
    nodes = _negate_after_reduce(nodes, {o.name for o in g.output}, taken)
    for i, n in enumerate(nodes):
        n.name = unique_name(f"node{i}", taken)
    del g.node[:]
    g.node.extend(nodes)
    return out


def _negate_after_reduce(nodes: list[onnx.NodeProto], outputs: set[str], taken: set[str]
                         ) -> list[onnx.NodeProto]:
    readers: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    negs = {n.output[0]: n for n in nodes if n.op_type == "Neg"}
    dropped: set[int] = set()
    out: list[onnx.NodeProto] = []
    for n in nodes:
        neg = negs.get(n.input[0]) if n.op_type in ("ReduceSum", "ReduceMean") and n.input \
            else None
        if neg is None or readers.get(neg.output[0], 0) != 1 or neg.output[0] in outputs:
            out.append(n)
            continue
        dropped.add(id(neg))
        reduced = unique_name(f"{n.output[0]}.unnegated", taken)
        inner = onnx.NodeProto()
        inner.CopyFrom(n)
        inner.input[0] = neg.input[0]
        inner.output[0] = reduced
        out += [inner, helper.make_node("Neg", [reduced], [n.output[0]])]
    return [n for n in out if id(n) not in dropped]


def _flat_indices(x: str, plane: str, flat: str, taken: set[str],
                  const: Callable[[str, onnx.TensorProto], str]) -> list[onnx.NodeProto]:
    """flat = plane + (n·C + c)·H·W, from X's runtime shape (any spatial rank)."""
    def fresh(hint: str) -> str:
        return unique_name(f"{flat}/{hint}", taken)

    def i64(key: str, v: list[int] | int) -> str:
        return const(key, numpy_helper.from_array(np.array(v, np.int64)))

    shape, nc, hw, n_planes, plane_size, planes, offsets, rank_sp, ones_sp, off_shape, off = (
        fresh(h) for h in ("shape", "nc", "hw", "n_planes", "plane_size", "planes", "offsets",
                           "spatial_rank", "spatial_ones", "offsets_shape", "offsets_nc"))
    one = helper.make_tensor("value", TensorProto.INT64, [1], [1])
    return [
        helper.make_node("Shape", [x], [shape]),
        helper.make_node("Slice", [shape, i64("zero1", [0]), i64("two1", [2])], [nc]),
        helper.make_node("Slice", [shape, i64("two1", [2]), i64("big1", [2**62])], [hw]),
        helper.make_node("ReduceProd", [nc], [n_planes], keepdims=0),
        helper.make_node("ReduceProd", [hw], [plane_size], keepdims=0),
        helper.make_node("Range", [i64("zero0", 0), n_planes, i64("one0", 1)], [planes]),
        helper.make_node("Mul", [planes, plane_size], [offsets]),
        helper.make_node("Shape", [hw], [rank_sp]),
        helper.make_node("ConstantOfShape", [rank_sp], [ones_sp], value=one),
        helper.make_node("Concat", [nc, ones_sp], [off_shape], axis=0),
        helper.make_node("Reshape", [offsets, off_shape], [off]),
        helper.make_node("Add", [plane, off], [flat]),
    ]


def _scatter_unpool(n: onnx.NodeProto, elem: int, taken: set[str],
                    const: Callable[[str, onnx.TensorProto], str], opset: int
                    ) -> list[onnx.NodeProto]:
    """MaxUnpool(Y, I, shape) as Reshape(ScatterElements(zeros[1, Πshape], I, Y), shape)."""
    y, idx, shape = n.input[0], n.input[1], n.input[2]
    flat = const("flat_shape", numpy_helper.from_array(np.array([1, -1], np.int64)))

    def fresh(hint: str) -> str:
        return unique_name(f"{n.name or 'maxunpool'}/{hint}", taken)

    zeros, zflat, iflat, yflat, scat = (fresh(h) for h in ("zeros", "zeros_flat", "idx_flat",
                                                             "dy_flat", "scatter"))
    zero = helper.make_tensor("value", elem, [1], [0])
    attrs: dict[str, Any] = {"axis": 1}
    if opset >= 16:  # windows never overlap: "add" and "none" agree; IREE/OpenVINO take both
        attrs["reduction"] = "none"
    return [
        helper.make_node("ConstantOfShape", [shape], [zeros], value=zero),
        helper.make_node("Reshape", [zeros, flat], [zflat]),
        helper.make_node("Reshape", [idx, flat], [iflat]),
        helper.make_node("Reshape", [y, flat], [yflat]),
        helper.make_node("ScatterElements", [zflat, iflat, yflat], [scat], **attrs),
        helper.make_node("Reshape", [scat, shape], list(n.output), name=n.name),
    ]


def _cast_to(n: onnx.NodeProto) -> int | None:
    return next((int(a.i) for a in n.attribute if a.name == "to"), None)


def _batch_norm(n: onnx.NodeProto, rank: int, elem: int, taken: set[str],
                const: Callable[[str, onnx.TensorProto], str]) -> list[onnx.NodeProto]:
    """BatchNormalization (inference form) as Sub, Div, Mul, Add over [C, 1, …] parameters."""
    x, scale, bias, mean, var = n.input[:5]
    eps = next((float(a.f) for a in n.attribute if a.name == "epsilon"), 1e-5)

    def fresh(hint: str) -> str:
        return unique_name(f"{n.output[0]}/{hint}", taken)

    shape = const(f"bn_shape{rank}", numpy_helper.from_array(
        np.array([-1] + [1] * (rank - 2), np.int64)))
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    eps_c = const(f"bn_eps{eps!r}{elem}", numpy_helper.from_array(np.array(eps, dtype)))
    r = {v: fresh(f"{k}_r") for k, v in (("scale", scale), ("bias", bias), ("mean", mean),
                                         ("var", var))}
    var_eps, std, gain, centered, scaled = (fresh(h) for h in ("var_eps", "std", "gain",
                                                              "centered", "scaled"))
    return [*(helper.make_node("Reshape", [v, shape], [rv]) for v, rv in r.items()),
            helper.make_node("Add", [r[var], eps_c], [var_eps]),
            helper.make_node("Sqrt", [var_eps], [std]),
            helper.make_node("Div", [r[scale], std], [gain]),
            helper.make_node("Sub", [x, r[mean]], [centered]),
            helper.make_node("Mul", [centered, gain], [scaled]),
            helper.make_node("Add", [scaled, r[bias]], list(n.output))]


def _elem_types(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """Element type and rank of every value, from shape inference where the graph does not
    say."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a help, not a requirement
        inferred = model
    g = inferred.graph
    types = {t.name: int(t.data_type) for t in g.initializer}
    ranks = {t.name: len(t.dims) for t in g.initializer}
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = int(vi.type.tensor_type.elem_type)
            if vi.type.tensor_type.HasField("shape"):
                ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    for n in g.node:
        if n.op_type in ("Equal", "Less", "Greater", "Not", "And", "Or", "IsNaN", "IsInf",
                         "LessOrEqual", "GreaterOrEqual", "Xor"):
            types.setdefault(n.output[0], TensorProto.BOOL)
    return types, ranks


#: Folded values up to this many elements become initializers (shapes, axes, small constants).
_FOLD_LIMIT = 4096


def specialize(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy of ``model`` for inputs of the given shapes, with what they decide folded away.

    Some runtimes compile only graphs whose shape arithmetic is static: OpenVINO's CPU plugin
    wants a grouped convolution's weights (a depthwise weight gradient's) of static shape, and
    OpenVINO and IREE want ReduceSum's axes static, while the gradient of a broadcast whose
    shapes the compiler could not see computes its axes from runtime shapes. With every input
    shape fixed, shape inference knows every shape; ``Shape`` and ``Size`` of those values, and
    then every node whose inputs are all small constants, are evaluated here and replaced by
    initializers (no float arithmetic on tensors larger than ``_FOLD_LIMIT`` is folded, so the
    training arithmetic itself stays in the graph, untouched).
    """
    from onnx.reference import ReferenceEvaluator

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for vi in g.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, size in zip(dims, shapes[vi.name]):
                d.Clear()
                d.dim_value = int(size)
    static = _static_shapes(out)
    known = {t.name: numpy_helper.to_array(t) for t in g.initializer
             if int(np.prod(t.dims)) <= _FOLD_LIMIT}
    kept: list[onnx.NodeProto] = []
    folded: list[onnx.TensorProto] = []
    for n in g.node:
        value = None
        if n.op_type == "Shape" and n.input[0] in static and len(n.attribute) == 0:
            value = [np.array(static[n.input[0]], np.int64)]
        elif n.op_type == "Size" and n.input[0] in static:
            value = [np.array(int(np.prod(static[n.input[0]])), np.int64)]
        elif all(i in known or i == "" for i in n.input) and n.op_type not in (
                "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                "Multinomial", "Bernoulli", "Dropout"):
            value = _evaluate(ReferenceEvaluator, n, known, out.opset_import)
        if value is not None and all(v.size <= _FOLD_LIMIT for v in value):
            for name, v in zip(n.output, value):
                known[name] = v
                folded.append(numpy_helper.from_array(v, name))
        else:
            kept.append(n)
    outputs = {o.name for o in g.output}
    used = {i for n in kept for i in n.input} | outputs
    taken = graph_names(g)
    kept = _negate_after_reduce(kept, outputs, taken)  # folding may have freed a negation
    for n in kept:
        if not n.name:
            n.name = unique_name("node", taken)
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(t for t in folded if t.name in used)
    return out


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # nothing known is nothing folded
        return {}
    shapes: dict[str, list[int]] = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = [int(d.dim_value) for d in tt.shape.dim]
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def _evaluate(evaluator: Any, n: onnx.NodeProto, known: Mapping[str, np.ndarray],
              opsets: Sequence[onnx.OperatorSetIdProto]) -> list[np.ndarray] | None:
    """One node on constant inputs, with onnx.reference; None if it cannot be evaluated."""
    ins = [i for i in n.input if i]
    graph = helper.make_graph(
        [n], "fold", [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(
            known[i].dtype), list(known[i].shape)) for i in dict.fromkeys(ins)],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in n.output])
    try:
        model = helper.make_model(graph, opset_imports=list(opsets))
        result = evaluator(model).run(None, {i: known[i] for i in dict.fromkeys(ins)})
    except Exception:  # an op the evaluator lacks stays in the graph
        return None
    return [np.asarray(v) for v in result]


def graph_names(graph: onnx.GraphProto) -> set[str]:
    """Every value and node name a graph uses, so that new ones can avoid them."""
    names = {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
    names |= {t.name for t in graph.initializer}
    for n in graph.node:
        names.update(n.input)
        names.update(n.output)
        names.add(n.name)
    names.discard("")
    return names


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``… whichever is not taken yet; marks it taken."""
    base, i = name, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name
