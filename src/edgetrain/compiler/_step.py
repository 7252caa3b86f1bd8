"""The train step: a copy of the inference graph in training mode, the loss, the backward
pass and the optimizer update, built pass by pass on one IR graph."""

from __future__ import annotations

import warnings

import numpy as np
import onnx_ir as ir

from .._ir import Builder, Value, find, np_dtype, static_dims
from ..autodiff import build_gradients
from ..errors import EdgetrainError
from ._batchnorm import use_batch_statistics
from ._state import Compilation, StepGraph


def step_graph(c: Compilation, name: str) -> StepGraph:
    """A copy of the inference graph (same names, shared weights) to build a step on, with
    the label as an extra input."""
    g = c.main.clone()
    g.name = name
    for v in [v for v in g.inputs if v.is_initializer()]:
        g.inputs.remove(v)  # old-IR files list initializers as inputs too
    step = StepGraph(g, Builder(g, c.opset, c.namer))
    label = ir.Value(name=c.names.label, type=ir.TensorType(c.label_type),
                     shape=ir.Shape(c.label_shape))
    g.inputs.append(label)
    step.inputs["label"] = label
    return step


def train_graph(c: Compilation) -> None:
    """Pass: the train graph — Dropout in training mode, batch norms on batch statistics
    (``batch_norm="train"``), and the learning rate as an input."""
    if c.options.batch_norm not in ("frozen", "train"):
        raise EdgetrainError(f"batch_norm must be 'frozen' or 'train', got "
                             f"{c.options.batch_norm!r}")
    c.train = t = step_graph(c, "train")
    for node in t.graph:
        if node.op_type == "Dropout":
            _dropout_on(t.op, node)
    if c.options.batch_norm == "train":
        c.new_state.update(use_batch_statistics(t.graph, t.op))
        c.bn_state = list(c.new_state)
    dtype = c.main.initializers[c.selected[0]].dtype or ir.DataType.FLOAT
    lr = ir.Value(name=c.names.lr, type=ir.TensorType(dtype), shape=ir.Shape([]))
    t.graph.inputs.append(lr)
    t.inputs["lr"] = lr


def _dropout_on(op: Builder, node: ir.Node) -> None:
    """Switch a Dropout node to training mode (ratio 0.5 unless the model gives one)."""
    if len(node.inputs) < 3:
        node.resize_inputs(3)
    if node.inputs[1] is None:
        node.replace_input_with(1, op.const(np.array(0.5, dtype=np.float32), hint="ratio"))
    node.replace_input_with(2, op.const(np.array(True), hint="training_mode"))


def add_loss(c: Compilation, step: StepGraph) -> None:
    """Pass (train and eval): the loss of the prediction against the label, as ``loss``."""
    assert c.prediction is not None
    pred = find(step.graph, str((c.loss_input or c.prediction).name))
    assert pred is not None
    loss, c.pred_gradient = c.options.loss.build_with_gradient(
        step.op, pred, step.inputs["label"], c.options.labels)
    step.outputs["loss"] = loss
    step.outputs["prediction"] = pred


def train_loss(c: Compilation) -> None:
    add_loss(c, c.step())


def differentiate(c: Compilation) -> None:
    """Pass: the backward pass from the loss to the selected weights (only those reached)."""
    t = c.step()
    seed = c.options.optimizer.backward_seed(t.op, t.inputs["lr"])
    weights = [t.graph.initializers[n] for n in c.selected]
    if c.pred_gradient is not None:  # the loss's closed form: start at the prediction
        c.grads = build_gradients(t.graph, t.outputs["prediction"], weights, t.op,
                                  seed=c.pred_gradient(t.op, seed))
    else:
        c.grads = build_gradients(t.graph, t.outputs["loss"], weights, t.op, seed=seed)
    missing = [p for p in c.selected if p not in c.grads]
    if missing:
        warnings.warn(f"{len(missing)} selected parameter(s) do not affect the loss and stay "
                      f"frozen: {', '.join(missing[:10])}", stacklevel=4)
    c.trainable = [p for p in c.selected if p in c.grads]
    if not c.trainable:
        raise EdgetrainError("no selected parameter affects the loss; nothing to train")


def apply_optimizer(c: Compilation) -> None:
    """Pass: optimizer state as new initializers, and every weight's update."""
    t, opt = c.step(), c.options.optimizer
    step = _state_value(c, c.names.step, np.array(0, dtype=np.int64))
    step_f = t.op.Cast(t.op.Add(step, np.array(1, dtype=np.int64)), to=ir.DataType.DOUBLE)
    grads = _clipped(c, opt.clip_norm) if opt.clip_norm is not None else c.grads
    for p in c.trainable:
        w = t.graph.initializers[p]
        slots = {s: _state_value(c, c.namer.fresh(f"{p}.{s}"),
                                 np.zeros(static_dims(w) or (), dtype=np_dtype(w.dtype or 1)))
                 for s in opt.slots()}
        p_new, s_new = opt.update(t.op, w, grads[p], slots, t.inputs["lr"], step_f)
        c.new_state[p] = p_new
        c.new_state.update((str(slots[s].name), v) for s, v in s_new.items())


def _state_value(c: Compilation, name: str, init: np.ndarray) -> Value:
    """A new state tensor: an initializer of the inference graph, read by the train graph."""
    for graph in (c.main, c.step().graph):
        v = ir.Value(name=name, shape=ir.Shape(init.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(init.dtype)),
                     const_value=ir.tensor(init, name=name))
        graph.register_initializer(v)
        if graph is c.main:
            c.state_inits.append(v)
    c.namer.taken.add(name)
    return c.step().graph.initializers[name]


def _clipped(c: Compilation, clip_norm: float) -> dict[str, Value]:
    """Gradients scaled so their global norm is at most ``clip_norm`` (torch's
    ``clip_grad_norm_``: coefficient clip / (norm + 1e-6), capped at 1)."""
    op = c.step().op
    squares = [op.ReduceSumSquare(c.grads[p], keepdims=0) for p in c.trainable]
    norm = op.Sqrt(op.Sum(*squares) if len(squares) > 1 else squares[0])
    coef = op.Min(op.Div(op.scalar(clip_norm, norm), op.Add(norm, 1e-6)), 1.0)
    return {p: op.Mul(g, coef) for p, g in c.grads.items()}


def guard(c: Compilation) -> None:
    """Pass: the step counter, which advances only when everything the step commits is
    finite — new weights, optimizer slots, running statistics — and so are the loss and the
    rate; drivers keep a step's new state only when the counter advanced.

    A sum is non-finite whenever one of its terms is, and ``x − x`` is 0 for finite x and NaN
    otherwise: one ReduceSum per committed tensor (reading it once, with no temporary) and
    one Sum decide. A non-finite gradient makes its new weight non-finite, so the new values
    cover the gradients, and they also catch an update that overflows from finite gradients
    (a huge rate). Unlike a sum of squares, a plain sum does not overflow on large finite
    values (Adam's second moments are squared gradients already).
    """
    t = c.step()
    op = t.op
    terms = [op.ReduceSum(v, keepdims=0) for v in c.new_state.values()]
    total = op.Sum(t.outputs["loss"], *terms, t.inputs["lr"])
    ok = op.Equal(op.Sub(total, total), 0.0)
    step = t.graph.initializers[c.names.step]
    c.new_state[c.names.step] = op.Add(step, op.Cast(ok, to=ir.DataType.INT64))
