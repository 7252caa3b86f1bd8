"""Gradient rules, one per ONNX op type, registered by name.

A rule receives a :class:`GradContext` (the forward node, the gradients of its outputs, static
shape facts) and the graph builder ``op``; it returns one gradient value name or ``None`` per
input of the node. Rules ask ``ctx.needs_grad(i)`` before building work nobody uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .._graph import Builder, Value

Shape = tuple[int | str | None, ...]
Rule = Callable[["GradContext", Builder], Sequence[Value | None]]

RULES: dict[str, Rule] = {}

#: Ops whose outputs never carry a gradient (integer/boolean results or constants).
NON_DIFFERENTIABLE: set[str] = {
    "Shape", "Size", "Constant", "ConstantOfShape", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "ArgMax", "ArgMin",
    "NonZero", "Range", "RandomNormal", "RandomUniform", "RandomNormalLike",
    "RandomUniformLike", "EyeLike", "OneHot", "Sign", "Floor", "Ceil", "Round",
}


def grad_rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the gradient rule of each op type in ``op_types``."""

    def register(fn: Rule) -> Rule:
        for t in op_types:
            if t in RULES:
                raise ValueError(f"gradient rule for {t} registered twice")
            RULES[t] = fn
        return fn

    return register


def supported_ops() -> list[str]:
    return sorted(RULES)


class GradContext:
    """What a rule may know about the forward node it differentiates."""

    def __init__(self, node: onnx.NodeProto, douts: list[Value | None], needs: list[bool],
                 shapes: dict[str, Shape | None], types: dict[str, int],
                 consts: dict[str, np.ndarray], opset: int) -> None:
        self.node = node
        self.inputs: list[str] = list(node.input)
        self.outputs: list[str] = list(node.output)
        self._douts = douts
        self._needs = needs
        self._shapes = shapes
        self._types = types
        self._consts = consts
        self.opset = opset
        self._attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    # -- the node --------------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        v = self._attrs.get(name, default)
        return v.decode() if isinstance(v, bytes) else v

    def dout(self, i: int = 0) -> Value | None:
        """Gradient of output ``i`` (``None`` when nothing downstream needs it)."""
        return self._douts[i] if i < len(self._douts) else None

    @property
    def dy(self) -> Value:
        """Gradient of output 0 of a single-output op (present whenever such a rule runs)."""
        g = self._douts[0] if self._douts else None
        if g is None:
            raise ValueError(f"{self.where()}: output 0 has no gradient; use ctx.dout(i)")
        return g

    def needs_grad(self, i: int) -> bool:
        return i < len(self._needs) and self._needs[i]

    def input(self, i: int) -> Value | None:
        return self.inputs[i] if i < len(self.inputs) and self.inputs[i] else None

    def forward_output(self, i: int, op: Builder, hint: str, elem_type: int) -> Value:
        """Name of the forward node's output ``i``, adding it to the node if the model left it out.

        Some backward passes need a by-product of the forward op that a model usually does not
        request: Dropout's mask (the forward drew it at random; it cannot be recomputed). The
        forward node is edited in place (the graph given to ``build_gradients``), which is the
        one change a rule may make to the forward graph.
        """
        if i < len(self.node.output) and self.node.output[i]:
            return self.node.output[i]
        name = op.fresh(hint)
        while len(self.node.output) <= i:
            self.node.output.append("")
        self.node.output[i] = name
        self.outputs = list(self.node.output)
        op.types[name] = elem_type
        return name

    # -- static facts ----------------------------------------------------------------------
    def shape(self, name: str) -> Shape | None:
        """Static shape, with ``None`` or a symbol for unknown dims; ``None`` if rank unknown."""
        return self._shapes.get(name)

    def rank(self, name: str) -> int:
        s = self.shape(name)
        if s is None:
            raise ValueError(
                f"rank of {name!r} (input of {self.node.op_type} node {self.node.name!r}) is "
                "unknown; give the model static ranks")
        return len(s)

    def dtype(self, name: str) -> int:
        return self._types[name]

    def const_value(self, name: str | None) -> np.ndarray | None:
        """The value of an initializer or Constant output, if statically known."""
        if not name:
            return None
        return self._consts.get(name)

    def where(self) -> str:
        return f"{self.node.op_type} node {self.node.name or '<unnamed>'!r}"


def unbroadcast(ctx: GradContext, op: Builder, g: Value, like: str, out: str) -> Value:
    """Sum ``g`` (shaped like ``out``) down to the shape of ``like`` under numpy broadcasting.

    Static shapes decide which axes to reduce; where they cannot, the axes are computed in
    the graph from the runtime shapes (as JAX's ``_unbroadcast``, made dynamic).
    """
    xs, ys = ctx.shape(like), ctx.shape(out)
    if xs is not None and ys is not None and tuple(xs) == tuple(ys) and all(
            d is not None for d in xs):
        return g
    if xs is None or ys is None:
        return _unbroadcast_dynamic(op, g, like)
    lead = len(ys) - len(xs)
    axes: list[int] = list(range(lead))
    unknown = False
    for i, d in enumerate(xs):
        e = ys[lead + i]
        if d == 1 and e != 1:
            axes.append(lead + i)  # summing an axis that turns out to be 1 is harmless
        elif d is None or (isinstance(d, str) and d != e):
            unknown = True
    if unknown:
        return _unbroadcast_dynamic(op, g, like)
    if not axes:
        return g
    if lead:
        g = op.ReduceSum(g, list(range(lead)), keepdims=0)
        axes = [a - lead for a in axes if a >= lead]
    if axes:
        g = op.ReduceSum(g, axes, keepdims=1)
    return g


def _unbroadcast_dynamic(op: Builder, g: Value, like: str) -> Value:
    gshape = op.Shape(g)
    xshape = op.Shape(like)
    # Left-pad x's shape with ones to g's rank, then reduce every axis where x has 1 and g not.
    pad = op.Sub(op.Size(gshape), op.Size(xshape))
    ones = op.Expand(op.const(np.array([1], dtype=np.int64)), op.Reshape(pad, [1]))
    xfull = op.Concat(ones, xshape, axis=0)
    mask = op.And(op.Equal(xfull, [1]), op.Not(op.Equal(gshape, [1])))
    axes = op.Reshape(op.NonZero(mask), [-1])
    summed = op.ReduceSum(g, axes, keepdims=1, noop_with_empty_axes=1)
    return op.Reshape(summed, xshape)
