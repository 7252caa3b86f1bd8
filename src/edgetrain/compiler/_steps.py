"""The ``train_steps`` signature: K training steps in one runtime call.

A small model's step costs less than the call that runs it (the Python driver's checks and
bindings, a runtime's dispatch), so ``fit`` runs K steps per call: the train graph becomes the
body of one ONNX ``Loop`` over K stacked batches, the weights and optimizer state carried from
one iteration to the next. It stays a plain ONNX graph every runtime runs.

    inputs   x: [K, B, …]   y: [K, B]   lr: [K]  (a rate per step: schedules need no new call)
    outputs  losses: [K']   and the new state, as the single-step signature's
    Loop     body = the train graph, reading x[i], y[i], lr[i]; stops after a step that did
             not count (the counter did not advance: something was not finite)

The commit rule is the single step's, counted in steps: a driver keeps the call's new state
only when the counter advanced by exactly K. When it did not, the state the call returns is
that of a failed step and is dropped; the driver re-runs the steps before the failure and
handles the failing batch alone (``fit`` does), so no per-tensor select is paid on the good
path.
"""

from __future__ import annotations

import onnx_ir as ir

from .._ir import Builder, Value, find, prune
from ._state import Compilation, StepGraph


def train_steps(c: Compilation) -> None:
    """Pass: the ``train_steps`` graph (see the module docstring)."""
    if not c.options.multi_step:
        return
    outer = c.main.clone()  # the weights and state as outer values the body reads
    for node in list(outer):
        outer.remove(node, safe=False)
    outer.outputs.clear()
    outer.inputs.clear()
    outer.name = "train_steps"
    op = Builder(outer, c.opset, c.namer)
    step = c.step()
    stacked = {role: _stacked(v) for role, v in _data_inputs(c, step).items()}
    outer.inputs.extend(stacked.values())
    body, carried = _body(c, outer, stacked)
    count = op.Size(stacked["lr"])
    loop = op.node("Loop", [count, op.const(True)] + list(carried.values()), {"body": body},
                   outputs=len(carried) + 1)
    for out, v in zip(loop, carried.values()):
        out.type, out.shape = v.type, v.shape
    losses = loop[-1]
    losses.name = c.namer.fresh("losses")
    losses.type, losses.shape = body.outputs[-1].type, ir.Shape(["steps"])
    outer.outputs.append(losses)
    for key, value in zip(carried, loop[:-1]):
        value.name = c.namer.fresh(f"{key}.steps")
        c.steps_updates[key] = str(value.name)
        outer.outputs.append(value)
    prune(outer)
    c.steps_graph = outer


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


def _body(c: Compilation, outer: ir.Graph, stacked: dict[str, Value]
          ) -> tuple[ir.Graph, dict[str, Value]]:
    """The Loop body: a clone of the train graph whose state comes in as loop-carried
    values, whose inputs are slices of the stacked ones, whose weights are the outer ones."""
    body = c.step().graph.clone()
    body.name = "train_step"
    iteration = ir.Value(name=c.namer.fresh("i"), type=ir.TensorType(ir.DataType.INT64),
                         shape=ir.Shape([]))
    cond = ir.Value(name=c.namer.fresh("cond"), type=ir.TensorType(ir.DataType.BOOL),
                    shape=ir.Shape([]))
    op = Builder(body, c.opset, c.namer)
    first = next(iter(body))
    at = op.at(before=first)
    for role, v in _data_inputs(c, c.step()).items():
        mine = find(body, str(v.name))
        assert mine is not None
        mine.replace_all_uses_with(at.Gather(stacked[role], iteration, axis=0))
    body.inputs.clear()
    carried = _carry(c, body, outer)
    new_step = find(body, c.updates[c.names.step])
    assert new_step is not None
    ok = op.Greater(new_step, carried[c.names.step])
    loss = find(body, c.names.loss)
    assert loss is not None
    news = [find(body, c.updates[k]) for k in carried]
    body.outputs.clear()
    body.outputs.extend([ok, *[v for v in news if v is not None], loss])
    body.inputs.extend([iteration, cond, *carried.values()])
    prune(body)
    return body, {k: outer.initializers[k] for k in carried}


def _carry(c: Compilation, body: ir.Graph, outer: ir.Graph) -> dict[str, Value]:
    """The state tensors become the body's loop-carried inputs; every other weight the body
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
