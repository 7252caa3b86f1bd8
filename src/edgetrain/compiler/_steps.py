"""The ``train_steps`` signature: K training steps in one runtime call.

A small model's step costs little more than the call that runs it (the driver's checks and
bindings, a runtime's dispatch), so ``fit`` runs K steps per call: the train graph becomes the
body of one ONNX ``Scan`` over K stacked batches, the weights and optimizer state carried from
one step to the next. It stays a plain ONNX graph every runtime with ``Scan`` runs.

    inputs   x: [K, B, …]   y: [K, B]   lr: [K]  (a rate per step: schedules need no new call)
    outputs  losses: [K']   and the new state, as the single-step signature's
    Scan     body = the train graph, reading x[i], y[i], lr[i] as its scan inputs; its scan
             outputs are each step's loss and whether the step counted (the counter advanced)
    K'       the steps up to the first that did not count (all K when every step counted)

Why ``Scan`` and not ``Loop`` (the first form of this signature): onnxruntime hands a Scan
body each step's slice of the stacked inputs without copying it, where a Loop body's
``Gather(x, i)`` copies it, and keeps the carried state in two buffers it alternates, so a
Scan step costs what a ``train`` call's arithmetic costs (docs/benchmarks.md, "K steps per
call"). A step after one that did not count still runs (a Scan cannot stop early), on state
that is dropped anyway.

The commit rule is the single step's, counted in steps: a driver keeps the call's new state
only when the counter advanced by exactly K. When it did not, the state the call returns is
that of a failed step and is dropped; the driver re-runs the steps before the failure and
handles the failing batch alone (``fit`` does), so no per-tensor select is paid on the good
path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from .._ir import Builder, Value, dims, find, numel, prune
from ._state import Compilation, StepGraph

#: ``multi_step=None`` (the default) adds ``train_steps`` when the model's forward pass costs
#: at most this many multiply-adds per example: where a call's own cost (the driver's checks
#: and bindings, ~0.05-0.1 ms in Python) is a visible part of a step. Above it (the small
#: CNN of benchmark W2, 2.6 M, a 10 ms step) K steps per call gain nothing measurable, and
#: the stacked batches and, on the native runtimes, K unrolled copies of the step cost memory
#: and compile time.
SMALL_STEP_MACS = 1_000_000


def train_steps(c: Compilation) -> None:
    """Pass: the ``train_steps`` graph (see the module docstring), when asked for or, by
    default, when the step is small (:data:`SMALL_STEP_MACS`)."""
    if c.options.multi_step is None:
        macs = forward_macs(c.main)
        if macs is None or macs > SMALL_STEP_MACS:
            about = "an unknown number of" if macs is None else f"{macs / 1e6:.1f} M"
            c.notes.append(f"train_steps (K steps per call) left out: the forward pass costs "
                           f"{about} multiply-adds per example, so a call's own cost is lost "
                           "in the step's; compile(multi_step=True) adds it")
            return
    elif not c.options.multi_step:
        return
    outer = c.main.clone()  # the weights and state as outer values the body reads
    for node in list(outer):
        outer.remove(node, safe=False)
    outer.outputs.clear()
    outer.inputs.clear()
    outer.name = "train_steps"
    op = Builder(outer, c.opset, c.namer)
    stacked = [_stacked(v) for v in _data_inputs(c, c.step()).values()]
    outer.inputs.extend(stacked)
    body, carried = _body(c, outer)
    scan = op.node("Scan", [*carried.values(), *stacked],
                   {"body": body, "num_scan_inputs": len(stacked)}, outputs=len(carried) + 2)
    for out, v in zip(scan, carried.values()):
        out.type, out.shape = v.type, v.shape
    losses, counted = scan[-2], scan[-1]
    for out, v in zip((losses, counted), body.outputs[-2:]):
        out.type, out.shape = v.type, ir.Shape(["steps"])
    outer.outputs.append(_until_not_counted(op, losses, counted, c.namer.fresh("losses")))
    for key, value in zip(carried, scan[:-2]):
        value.name = c.namer.fresh(f"{key}.steps")
        c.steps_updates[key] = str(value.name)
        outer.outputs.append(value)
    prune(outer)
    c.steps_graph = outer


def forward_macs(graph: ir.Graph) -> int | None:
    """Multiply-adds per example of ``graph``'s matrix products and convolutions (the first
    dimension of a value is its batch), or None when a shape they need is not known."""
    total = 0
    for node in graph:
        if node.op_type in ("Gemm", "MatMul", "Conv", "ConvTranspose"):
            macs = _macs(node)
            if macs is None:
                return None
            total += macs
    return total


def _macs(node: ir.Node) -> int | None:
    """One node's multiply-adds per example: for each element of its output (a transposed
    convolution: of its input), a row of A (a kernel's worth of weights)."""
    a, w, y = (dims(v) for v in (node.inputs[0], node.inputs[1], node.outputs[0]))
    inner: Any
    if node.op_type == "Gemm":
        inner = None if a is None else a[0] if node.attributes.get_int("transA", 0) else a[-1]
        rows = _known(y)
    elif node.op_type == "MatMul":
        inner, rows = None if a is None else a[-1], _known(y)
    else:
        inner, rows = _known(w), _known(y if node.op_type == "Conv" else a)
    return inner * rows if isinstance(inner, int) and rows is not None else None


def _known(shape: tuple[Any, ...] | None) -> int | None:
    """The element count of ``shape`` past its first (batch) dimension, when it is known."""
    if shape is None or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return numel(tuple(int(d) for d in shape[1:]))


def _data_inputs(c: Compilation, step: StepGraph) -> dict[str, Value]:
    """The train graph's per-step inputs, by role: every model input, the label, the rate."""
    names = {str(v.name): v for v in step.graph.inputs}
    roles = {str(v.name): str(v.name) for v in c.main.inputs if not v.is_initializer()}
    roles["label"], roles["lr"] = c.names.label, c.names.lr
    return {role: names[name] for role, name in roles.items()}


def _stacked(v: Value) -> Value:
    """An input like ``v`` with a leading steps dimension."""
    dims = list(v.shape.dims) if v.shape is not None else []
    return ir.Value(name=v.name, type=v.type, shape=ir.Shape(["steps", *dims]))


def _until_not_counted(op: Builder, losses: Value, counted: Value, name: str) -> Value:
    """``losses`` up to and including the first step that did not count: the first 0 of
    ``counted`` (1 for a step that counted), found after a 0 appended past the end."""
    first = op.op("ArgMin", op.Concat(counted, op.const(np.zeros(1, np.int64)), axis=0),
                  axis=0, keepdims=1)
    out = op.Slice(losses, op.const(np.zeros(1, np.int64)),
                   op.Min(op.Add(first, op.const(np.ones(1, np.int64))), op.Shape(losses)))
    out.name, out.type, out.shape = name, losses.type, ir.Shape(["steps"])
    return out


def _body(c: Compilation, outer: ir.Graph) -> tuple[ir.Graph, dict[str, Value]]:
    """The Scan body: a clone of the train graph whose state comes in as carried values and
    whose weights are the outer ones; its inputs are the state, then one step's data; its
    outputs the new state, then the step's loss and 1 if it counted (else 0)."""
    body = c.step().graph.clone()
    body.name = "train_step"
    data = [find(body, str(v.name)) for v in _data_inputs(c, c.step()).values()]
    body.inputs.clear()
    carried = _carry(c, body, outer)
    new_step = find(body, c.updates[c.names.step])
    loss = find(body, c.names.loss)
    assert new_step is not None and loss is not None and all(v is not None for v in data)
    counted = Builder(body, c.opset, c.namer).Sub(new_step, carried[c.names.step])
    news = [find(body, c.updates[k]) for k in carried]
    body.outputs.clear()
    body.outputs.extend([*[v for v in news if v is not None], loss, counted])
    body.inputs.extend([*carried.values(), *[v for v in data if v is not None]])
    prune(body)
    return body, {k: outer.initializers[k] for k in carried}


def _carry(c: Compilation, body: ir.Graph, outer: ir.Graph) -> dict[str, Value]:
    """The state tensors become the body's carried inputs; every other weight the body
    reads is the outer graph's own value (read from the enclosing scope, stored once)."""
    carried: dict[str, Value] = {}
    for key in c.updates:
        old = body.initializers[key]
        new = ir.Value(name=c.namer.fresh(f"{key}.in"), type=old.type, shape=old.shape)
        old.replace_all_uses_with(new)
        del body.initializers[key]
        carried[key] = new
    for name, v in list(body.initializers.items()):
        if name in outer.initializers:
            v.replace_all_uses_with(outer.initializers[name])
            del body.initializers[name]
    return carried
