"""The compiler: inference model → one trainable ONNX file.

import → select trainables → forward copy (dropout on) + loss → autodiff → optimizer → package.
Everything emitted is a standard ONNX op of the default domain.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import format as fmt
from . import losses as _losses
from . import optim as _optim
from . import select as _select
from ._external import load_external_data
from ._graph import Builder, Value, graph_names, is_float, np_dtype, unique_name
from ._io import read_regular_file
from ._validate import DEFAULT_DOMAINS, iter_nodes
from .autodiff import build_gradients
from .errors import EdgetrainError, FormatError

MIN_OPSET = 13
TARGET_OPSET = 18  # older models are converted up; newer ones keep their opset


def load_model(model: onnx.ModelProto | str | os.PathLike[str]) -> onnx.ModelProto:
    """Read, check and normalize an inference model (opset ≥ 18, shapes inferred).

    A path must name a regular file; tensors it keeps as external data are read from its own
    folder only (see :mod:`edgetrain._external`), never by ``onnx.load`` or a runtime.
    """
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        model = _read(path)
        folder: str | None = os.path.dirname(os.path.abspath(path))
        what = f"ONNX model {path!r}"
    elif isinstance(model, onnx.ModelProto):
        folder, what = None, "the ONNX model"
    else:
        raise EdgetrainError(f"expected an onnx.ModelProto or a path, got {type(model).__name__}")
    opset = fmt.default_opset(model)
    if opset is None:
        raise EdgetrainError("the model imports no default-domain ONNX opset")
    _standard_ops_only(model)
    if any(o.domain not in DEFAULT_DOMAINS for o in model.opset_import):
        if folder is None:  # the caller's object stays as it was
            model = _copy(model)
        keep = [o for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
        del model.opset_import[:]
        model.opset_import.extend(keep)
    load_external_data(model, folder, what)
    if opset < MIN_OPSET:
        raise EdgetrainError(f"opset {opset} is too old; edgetrain accepts opsets "
                             f"{MIN_OPSET}..{onnx.defs.onnx_opset_version()}")
    if opset < TARGET_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, TARGET_OPSET)
        except Exception as e:
            raise EdgetrainError(f"cannot convert the model from opset {opset} to "
                                 f"{TARGET_OPSET}: {e}") from e
    if model.ir_version < 7:
        model.ir_version = 7
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as e:
        raise EdgetrainError(f"the model fails ONNX shape inference: {e}") from e
    return model


def _read(path: str) -> onnx.ModelProto:
    try:
        return fmt.load_model(read_regular_file(path, "ONNX model", EdgetrainError))
    except FormatError as e:
        raise EdgetrainError(f"cannot read ONNX model {path!r}: {e}") from e


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _standard_ops_only(model: onnx.ModelProto) -> None:
    """Every node at every depth is a standard op (other opset imports are then unused)."""
    if len(model.functions):
        raise EdgetrainError(f"the model defines local functions ({model.functions[0].name!r}); "
                             "inline them first (onnx.inliner.inline_local_functions)")
    for node, where in iter_nodes(model):
        if node.domain not in DEFAULT_DOMAINS:
            raise EdgetrainError(
                f"node {node.name!r} in {where} uses op {node.domain}::{node.op_type}; "
                "edgetrain compiles standard ONNX ops only (export without custom or contrib "
                "ops)")


class TrainableModel:
    """A compiled trainable model: ``save`` it, or ``load`` it into a runtime directly."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self.meta = fmt.read_meta(proto)

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the single trainable file (atomically)."""
        return fmt.save_model(self.proto, path)

    def load(self, backend: str = "onnxruntime", **kw: Any) -> Any:
        from .runtime import Model

        return Model(self.proto, backend=backend, **kw)

    @property
    def signatures(self) -> dict[str, Any]:
        return dict(self.meta["signatures"])

    def __repr__(self) -> str:
        return (f"TrainableModel(signatures={sorted(self.meta['signatures'])}, "
                f"trainable={len(self.meta['trainable'])}, frozen={len(self.meta['frozen'])})")


def compile(  # noqa: A001 - the public name the API promises
    model: onnx.ModelProto | str | os.PathLike[str],
    loss: str | _losses.Loss = "cross_entropy",
    optimizer: str | _optim.Optimizer | None = None,
    trainable: str | Iterable[str] | _select.Selector | None = None,
    output: str | None = None,
    labels: str = "index",
    *,
    lr: float | None = None,
    batch_norm: str = "frozen",
    split_features: bool = False,
) -> TrainableModel:
    """Compile an inference model into a trainable file with train/infer/eval/save/restore.

    ``batch_norm``: "frozen" normalizes with the running statistics (inference behaviour);
    "train" normalizes with batch statistics in the train step and updates the running
    statistics (see ``edgetrain._batchnorm``). ``split_features`` adds the ``features``,
    ``train_features``, ``infer_features`` and ``eval_features`` signatures that let a head
    train on cached outputs of the frozen prefix (see ``edgetrain._split``).
    """
    if batch_norm not in ("frozen", "train"):
        raise EdgetrainError(f"batch_norm must be 'frozen' or 'train', got {batch_norm!r}")
    proto = load_model(model)
    extra_meta: dict[str, Any] = {}
    rewrite = getattr(trainable, "rewrite", None)
    if callable(rewrite):  # a selector that edits the graph first (select.lora adds adapters)
        proto, trainable, extra_meta = rewrite(proto)
    loss_obj = _losses.get(loss)
    opt = _optim.get(optimizer, lr)
    if labels not in ("index", "onehot"):
        raise EdgetrainError(f"labels must be 'index' or 'onehot', got {labels!r}")
    graph = proto.graph
    opset = fmt.default_opset(proto) or TARGET_OPSET
    outputs = [o.name for o in graph.output]
    pred = output or outputs[0]
    if pred not in outputs:
        raise EdgetrainError(f"output {pred!r} is not a model output; outputs are {outputs}")
    init_names = {t.name for t in graph.initializer}
    model_inputs = [i for i in graph.input if i.name not in init_names]
    trainables = _select.resolve(trainable, graph)
    if not trainables:
        raise EdgetrainError("nothing to train: the model has no float weights selected")

    label_name = "y" if all(i.name != "y" for i in model_inputs) else "label"
    pred_vi = _value_info(graph, pred)
    pred_type = pred_vi.type.tensor_type.elem_type
    pred_shape = _shape_of(pred_vi)
    y_type, y_shape = loss_obj.label_spec(pred_shape, pred_type, labels)
    y_vi = helper.make_tensor_value_info(label_name, y_type, y_shape)

    train, updates, kept, state_inits = _train_graph(
        proto, model_inputs, y_vi, pred, loss_obj, labels, opt, trainables, opset,
        batch_norm=batch_norm)
    bn_state = [k for k in updates if k in _select.running_statistics(graph)]
    frozen = [t.name for t in graph.initializer
              if is_float(t.data_type) and t.name not in kept and t.name not in bn_state]
    evalg = _eval_graph(proto, model_inputs, y_vi, pred, loss_obj, labels, opset)

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.graph.initializer.extend(state_inits)
    del out.training_info[:]
    ti = out.training_info.add()
    ti.algorithm.CopyFrom(train)
    for k, v in updates.items():
        ti.update_binding.add(key=k, value=v)
    te = out.training_info.add()
    te.algorithm.CopyFrom(evalg)

    def spec(vis: Iterable[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
        return [fmt.tensor_spec(v) for v in vis]

    lr_spec = {"name": "lr", "dtype": np_dtype(pred_type).name, "shape": [],
               "default": float(opt.lr), "optional": True}
    meta = {
        "format_version": fmt.FORMAT_VERSION,
        "producer": f"edgetrain {fmt.producer_version()}",
        "signatures": {
            "infer": {"kind": "graph", "graph": "main", "inputs": spec(model_inputs),
                      "outputs": spec(graph.output), "updates": {}},
            "train": {"kind": "graph", "graph": "training_info/0",
                      "inputs": spec(model_inputs) + [fmt.tensor_spec(y_vi)] + [lr_spec],
                      "outputs": spec(train.output[:1]), "updates": updates},
            "eval": {"kind": "graph", "graph": "training_info/1",
                     "inputs": spec(model_inputs) + [fmt.tensor_spec(y_vi)],
                     "outputs": spec(evalg.output), "updates": {}},
            "save": {"kind": "builtin", "inputs": [{"name": "checkpoint_path",
                                                     "dtype": "str", "shape": []}],
                     "outputs": [{"name": "checkpoint_path", "dtype": "str", "shape": []}]},
            "restore": {"kind": "builtin", "inputs": [{"name": "checkpoint_path",
                                                        "dtype": "str", "shape": []}],
                        "outputs": [{"name": "checkpoint_path", "dtype": "str", "shape": []}]},
        },
        "trainable": kept,
        "frozen": frozen,
        "state": [t.name for t in state_inits] + bn_state,
        "step": fmt.STEP_NAME,
        "output": pred,
        "label": label_name,
        "labels": labels,
        "loss": loss_obj.config(),
        "optimizer": opt.config(),
        "classification": bool(loss_obj.classification),
    }
    if split_features:
        from . import _split

        _split.add_feature_signatures(out, meta, y_vi)
    meta.update(extra_meta)
    fmt.write_meta(out, meta)
    # The lowest IR version the opsets allow: older runtimes (onnxruntime-web, older mobile
    # builds) refuse IR versions newer than they know, though nothing here needs them.
    out.ir_version = max(7, helper.find_min_ir_version_for(list(out.opset_import)))
    fmt.check(out)
    return TrainableModel(out)


# -- graphs ----------------------------------------------------------------------------------

def _forward_nodes(graph: onnx.GraphProto, op: Builder, training: bool) -> list[onnx.NodeProto]:
    """The model's nodes; in training, Dropout runs in training mode."""
    nodes = []
    for node in graph.node:
        if training and node.op_type == "Dropout":
            n = onnx.NodeProto()
            n.CopyFrom(node)
            ins = list(n.input) + [""] * (3 - len(n.input))
            if not ins[1]:
                ins[1] = op.const(np.array(0.5, dtype=np.float32), hint="dropout_ratio")
            ins[2] = op.const(np.array(True), hint="training_mode")
            del n.input[:]
            n.input.extend(ins)
            nodes.append(n)
        else:
            nodes.append(node)
    return nodes


def _infer(proto: onnx.ModelProto, graph: onnx.GraphProto) -> onnx.GraphProto:
    """Shape-infer ``graph`` in the context of the model's initializers."""
    g = onnx.GraphProto()
    g.CopyFrom(graph)
    known = {i.name for i in g.initializer}
    # Large weights enter inference by type and shape only (as graph inputs): copying their
    # data made each inference serialize the whole model (seconds for a 90 MB text encoder).
    # Small tensors keep their values, which shape computations (data_prop) may read.
    outer = [t for t in proto.graph.initializer if t.name not in known]
    big = {t.name for t in outer if int(np.prod(t.dims)) > 4096}
    g.initializer.extend(t for t in outer if t.name not in big)
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in outer if t.name in big)
    m = helper.make_model(g, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    try:
        out = onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True).graph
    except Exception as e:
        raise EdgetrainError(f"internal error: the step graph fails shape inference: {e}") from e
    # The model's own initializers stay in the main graph (visible to training_info graphs).
    own = [t for t in out.initializer if t.name in known]
    del out.initializer[:]
    out.initializer.extend(own)
    inputs = [i for i in out.input if i.name not in big]
    del out.input[:]
    out.input.extend(inputs)
    return out


def _loss_part(proto: onnx.ModelProto, op: Builder, model_inputs: list[onnx.ValueInfoProto],
               y_vi: onnx.ValueInfoProto, pred: Value, loss_obj: _losses.Loss, labels: str,
               training: bool) -> tuple[onnx.GraphProto, _losses.PredGradient | None]:
    nodes = _forward_nodes(proto.graph, op, training)
    op.types[y_vi.name] = y_vi.type.tensor_type.elem_type  # constants next to y take its type
    # Static shapes the losses may specialize on (read with getattr: a plain Builder has none).
    try:
        op.static_shapes = {  # type: ignore[attr-defined]
            pred: _shape_of(_value_info(proto.graph, pred))}
    except EdgetrainError:
        pass
    loss_v, pred_grad = loss_obj.build_with_gradient(op, pred, y_vi.name, labels)
    op.Identity(loss_v, _names=["loss"])
    g = helper.make_graph(nodes + op.nodes, "step", list(model_inputs) + [y_vi],
                          [helper.make_tensor_value_info("loss", op.types[pred], [])],
                          initializer=list(op.initializers))
    return _infer(proto, g), pred_grad


def _train_graph(proto: onnx.ModelProto, model_inputs: list[onnx.ValueInfoProto],
                 y_vi: onnx.ValueInfoProto, pred: Value, loss_obj: _losses.Loss, labels: str,
                 opt: _optim.Optimizer, trainables: list[str], opset: int,
                 batch_norm: str = "frozen",
                 ) -> tuple[onnx.GraphProto, dict[str, str], list[str], list[onnx.TensorProto]]:
    graph = proto.graph
    taken = graph_names(graph) | {"loss", "lr", y_vi.name}
    op = Builder(prefix="t/", taken=taken)
    op.types.update(_types(graph))
    src, bn_updates = proto, dict[str, str]()
    if batch_norm == "train":
        from ._batchnorm import use_batch_statistics

        src, bn_updates = use_batch_statistics(proto, taken)
        taken |= graph_names(src.graph)
    fwd, pred_grad = _loss_part(src, op, model_inputs, y_vi, pred, loss_obj, labels,
                                training=True)

    inits = {t.name: t for t in graph.initializer}
    dtype = inits[trainables[0]].data_type
    lr_in = helper.make_tensor_value_info("lr", dtype, [])
    bop = Builder(prefix="t/", types=op.types, taken=taken | graph_names(fwd))
    bop.types["lr"] = dtype
    # Plain SGD: seeding the backward with lr makes every gradient lr * g (see linear_in_lr).
    scaled = opt.linear_in_lr
    seed = "lr" if scaled else bop.const(np.array(1.0, dtype=np_dtype(dtype)))
    if pred_grad is not None:  # the loss's closed-form gradient: start at the prediction
        grads = build_gradients(fwd, pred, trainables, bop, opset, seed=pred_grad(bop, seed),
                                initializers=graph.initializer)
    else:
        grads = build_gradients(fwd, "loss", trainables, bop, opset, seed=seed,
                                initializers=graph.initializer)
    missing = [p for p in trainables if p not in grads]
    if missing:
        warnings.warn(f"{len(missing)} selected parameter(s) do not affect the loss and stay "
                      f"frozen: {', '.join(missing[:10])}", stacklevel=3)
    kept = [p for p in trainables if p in grads]
    if not kept:
        raise EdgetrainError("no selected parameter affects the loss; nothing to train")

    # Step counter and per-parameter optimizer state, stored as initializers.
    state_inits: list[onnx.TensorProto] = [
        numpy_helper.from_array(np.array(0, dtype=np.int64), fmt.STEP_NAME)]
    bop.types[fmt.STEP_NAME] = TensorProto.INT64
    slot_names: dict[str, dict[str, str]] = {}
    for p in kept:
        slot_names[p] = {}
        shape = tuple(inits[p].dims)
        for slot in opt.slots():
            name = unique_name(f"{p}.{slot}", taken)
            slot_names[p][slot] = name
            state_inits.append(numpy_helper.from_array(
                np.zeros(shape, dtype=np_dtype(inits[p].data_type)), name))
            bop.types[name] = inits[p].data_type

    # Guard: the step counts (and every driver commits the new state) only when the loss, the
    # learning rate and everything the step commits — new weights, optimizer slots, running
    # statistics — are finite: a sum is non-finite whenever one of its terms is. A non-finite
    # gradient makes its new weight non-finite, so the new values cover the gradients too, and
    # they also catch an update that overflows from finite gradients (a huge rate, say).
    # ReduceSum reads each tensor once with no temporary; unlike a sum of squares it does not
    # overflow on large finite values (Adam's second moments are squared gradients already).
    if opt.clip_norm is not None:
        sq = [bop.ReduceSumSquare(grads[p], keepdims=0) for p in kept]
        gsq = bop.Sum(*sq) if len(sq) > 1 else sq[0]
        norm = bop.Sqrt(gsq)
        coef = bop.Min(bop.Div(bop.const(np.array(opt.clip_norm, dtype=np_dtype(dtype))),
                               bop.Add(norm, 1e-6)), 1.0)
        grads = {p: bop.Mul(g, coef) for p, g in grads.items()}
    else:
        sq = []

    step_f = bop.Cast(bop.Add(fmt.STEP_NAME, np.array(1, dtype=np.int64)),
                      to=TensorProto.DOUBLE)
    updates: dict[str, str] = {}
    outputs = [helper.make_tensor_value_info("loss", dtype, [])]
    new_values: dict[str, Value] = {}
    read: set[str] = set()
    if scaled:  # what the graph reads so far: a gradient read elsewhere cannot be fused away
        for n in list(fwd.node) + bop.nodes:
            read.update(n.input)
            read.update(_subgraph_names(n))
    for p in kept:
        if scaled:
            fused = _fuse_into_gemm(bop, read, p, grads[p])
            p_new, s_new = fused or bop.Sub(p, grads[p]), dict[str, Value]()
        else:
            state = {s: n for s, n in slot_names[p].items()}
            p_new, s_new = opt.update(bop, p, grads[p], state, "lr", step_f)
        new_values[p] = p_new
        new_values.update((slot_names[p][s], v) for s, v in s_new.items())
    new_values.update(bn_updates)  # running statistics (batch_norm="train")
    terms = [bop.ReduceSum(v, keepdims=0) for v in new_values.values()]
    check = bop.Sum("loss", *sq, *terms, "lr")  # one node for all the terms (clip's are free)
    ok = bop.Equal(bop.Sub(check, check), 0.0)  # x − x is 0 for finite x, NaN for ±inf and NaN
    step_out = unique_name(f"{fmt.STEP_NAME}.new", taken)
    bop.Add(fmt.STEP_NAME, bop.Cast(ok, to=TensorProto.INT64), _names=[step_out])

    all_nodes = list(fwd.node) + bop.nodes
    for key in new_values:
        updates[key] = unique_name(f"{key}.new", taken)
    _name_outputs(all_nodes, bop, {new_values[k]: updates[k] for k in new_values}, fwd)
    for key in new_values:
        name = updates[key]
        t = inits[key] if key in inits else next(s for s in state_inits if s.name == key)
        outputs.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    updates[fmt.STEP_NAME] = step_out
    outputs.append(helper.make_tensor_value_info(step_out, TensorProto.INT64, []))

    nodes = _live(all_nodes, [o.name for o in outputs])
    used = {i for n in nodes for i in n.input}
    consts = [t for t in list(fwd.initializer) + bop.initializers if t.name in used]
    g = helper.make_graph(nodes, "train", list(model_inputs) + [y_vi, lr_in], outputs,
                          initializer=consts)
    return g, updates, kept, state_inits


def _eval_graph(proto: onnx.ModelProto, model_inputs: list[onnx.ValueInfoProto],
                y_vi: onnx.ValueInfoProto, pred: Value, loss_obj: _losses.Loss, labels: str,
                opset: int) -> onnx.GraphProto:
    graph = proto.graph
    taken = graph_names(graph) | {"loss", "accuracy", y_vi.name}
    op = Builder(prefix="e/", taken=taken)
    op.types.update(_types(graph))
    fwd, _ = _loss_part(proto, op, model_inputs, y_vi, pred, loss_obj, labels, training=False)
    dtype = op.types[pred]
    outputs = [helper.make_tensor_value_info("loss", dtype, [])]
    extra = Builder(prefix="e/", types=op.types, taken=taken | graph_names(fwd))
    if isinstance(loss_obj, _losses.CrossEntropy):
        guess = extra.ArgMax(pred, axis=1, keepdims=0)
        truth = y_vi.name if labels == "index" else extra.ArgMax(y_vi.name, axis=1, keepdims=0)
        hit = extra.Cast(extra.Equal(guess, truth), to=dtype)
        extra.ReduceMean(hit, keepdims=0, _names=["accuracy"])
        outputs.append(helper.make_tensor_value_info("accuracy", dtype, []))
    elif isinstance(loss_obj, _losses.BCEWithLogits):
        hit = extra.Cast(extra.Equal(extra.Greater(pred, 0.0), extra.Greater(y_vi.name, 0.5)),
                         to=dtype)
        extra.ReduceMean(hit, keepdims=0, _names=["accuracy"])
        outputs.append(helper.make_tensor_value_info("accuracy", dtype, []))
    return helper.make_graph(list(fwd.node) + extra.nodes, "eval",
                             list(model_inputs) + [y_vi], outputs,
                             initializer=list(fwd.initializer) + extra.initializers)


# -- small helpers ---------------------------------------------------------------------------

def _fuse_into_gemm(op: Builder, read: set[str], p: str, g: Value) -> Value | None:
    """``p - g`` folded into the GEMM that computes ``g`` (an lr-scaled weight gradient).

    Gemm computes ``alpha * A' B' + beta * C``; with ``C = p``, ``beta = 1`` and ``alpha``
    negated it writes the updated weight directly. Returns the new weight, or None when ``g``
    does not come straight from a two-input Gemm that nothing else reads (``read``: every
    value some node reads, subgraphs included).
    """
    producer = next((n for n in op.nodes if g in n.output), None)
    if producer is None or producer.op_type != "Gemm" or len([i for i in producer.input if i]) != 2:
        return None
    if g in read:
        return None
    alpha = next((a.f for a in producer.attribute if a.name == "alpha"), 1.0)
    kept = [a for a in producer.attribute if a.name not in ("alpha", "beta")]
    del producer.attribute[:]
    producer.attribute.extend(kept + [helper.make_attribute("alpha", -alpha),
                                      helper.make_attribute("beta", 1.0)])
    del producer.input[2:]
    producer.input.append(p)
    return g


def _name_outputs(nodes: list[onnx.NodeProto], op: Builder, names: dict[Value, str],
                  fwd: onnx.GraphProto) -> None:
    """Make each value of ``names`` available as the graph output it maps to: rename the node
    output that produces it (an Identity would copy the whole tensor every step), or add an
    Identity when the value is no node's own output (an input passed through, say)."""
    produced = {o for n in nodes for o in n.output}
    outer = {v.name for v in list(fwd.input) + list(fwd.output)}
    outer |= {t.name for t in fwd.initializer}
    implicit = set().union(*(_subgraph_names(n) for n in nodes))
    rename = {v: out for v, out in names.items()
              if v in produced and v not in outer and v not in implicit}
    for n in nodes:
        for field in (n.input, n.output):
            for i, v in enumerate(field):
                if v in rename:
                    field[i] = rename[v]
    for v, out in rename.items():
        op.types[out] = op.types.get(v, 0)
    for v, out in names.items():
        if v not in rename:
            op.Identity(v, _names=[out])
            nodes.append(op.nodes[-1])


def _live(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes that the outputs depend on, in order: values no output needs (the float64
    step number of an optimizer without bias correction, say) cost a kernel call per step."""
    needed = set(outputs)
    keep = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output if o):
            keep.append(n)
            needed.update(i for i in n.input if i)
            needed.update(_subgraph_names(n))  # outer values a subgraph reads implicitly
    return keep[::-1]


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                  list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []):
            for n in g.node:
                names.update(n.input)
                names.update(_subgraph_names(n))
    return names



def _types(graph: onnx.GraphProto) -> dict[str, int]:
    t = {v.name: v.type.tensor_type.elem_type
         for v in list(graph.input) + list(graph.value_info) + list(graph.output)}
    t.update({i.name: i.data_type for i in graph.initializer})
    return t


def _value_info(graph: onnx.GraphProto, name: str) -> onnx.ValueInfoProto:
    for v in list(graph.output) + list(graph.value_info) + list(graph.input):
        if v.name == name:
            return v
    raise EdgetrainError(f"no type information for {name!r}")


def _shape_of(vi: onnx.ValueInfoProto) -> tuple[Any, ...] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in tt.shape.dim)


