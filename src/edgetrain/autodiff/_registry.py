"""Gradient rules, one per ONNX op type, registered by name, and what a rule may know.

A rule receives a :class:`GradContext` (the forward node, the gradients of its outputs, the
static facts its values carry) and the builder ``op``; it returns one gradient or ``None`` per
input of the node. It asks ``ctx.needs_grad(i)`` before building work nobody uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from .._ir import Builder, Dims, Value, const_array, dims
from ..errors import UnsupportedOpError

Rule = Callable[["GradContext", Builder], Sequence[Value | None]]
#: Builds, with a builder that inserts before ``node``, values equal to ``node``'s outputs
#: (``None`` for an output it leaves out) from ops that have rules.
Expansion = Callable[[ir.Node, Builder], Sequence[Value | None]]

RULES: dict[str, Rule] = {}
#: Ops differentiated through an equivalent graph of other ops (LSTM as a Scan of its cell),
#: which replaces them in the graph being differentiated only (see ``_expand.py``).
EXPANSIONS: dict[str, Expansion] = {}

#: Ops whose outputs never carry a gradient (integer/boolean results, constants, randomness,
#: piecewise-constant functions). OneHot is not among them: its output is linear in its float
#: ``values`` input.
NON_DIFFERENTIABLE: frozenset[str] = frozenset({
    "Shape", "Size", "Constant", "ConstantOfShape", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "ArgMax", "ArgMin",
    "NonZero", "Range", "RandomNormal", "RandomUniform", "RandomNormalLike",
    "RandomUniformLike", "EyeLike", "Sign", "Floor", "Ceil", "Round", "Hardmax",
})


def grad_rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register the decorated function as the gradient rule of each op type."""

    def register(fn: Rule) -> Rule:
        for t in op_types:
            if t in RULES:
                raise ValueError(f"gradient rule for {t} registered twice")
            RULES[t] = fn
        return fn

    return register


def expansion(*op_types: str) -> Callable[[Expansion], Expansion]:
    """Register the decorated function as the expansion of each op type."""

    def register(fn: Expansion) -> Expansion:
        for t in op_types:
            if t in EXPANSIONS or t in RULES:
                raise ValueError(f"gradient rule or expansion for {t} registered twice")
            EXPANSIONS[t] = fn
        return fn

    return register


def supported_ops() -> list[str]:
    return sorted({*RULES, *EXPANSIONS})


class GradContext:
    """The forward node a rule differentiates, and the gradients flowing into it."""

    def __init__(self, node: ir.Node, douts: Sequence[Value | None], needs: Sequence[bool],
                 differentiable: set[int], op: Builder, implicit: Sequence[Value] = ()) -> None:
        self.node = node
        self.inputs: list[Value | None] = list(node.inputs)
        #: Outer values the node's subgraphs read; a rule may return their gradients after
        #: those of the inputs, in this order.
        self.implicit: list[Value] = list(implicit)
        self.outputs: list[Value] = list(node.outputs)
        self.opset = op.opset
        self._douts = list(douts)
        self._needs = list(needs)
        self._differentiable = differentiable
        self._op = op

    # -- the node ----------------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute as a plain Python value (ints, floats, str, lists), or ``default``."""
        a = self.node.attributes.get(name)
        if a is None:
            return default
        v = a.value
        return list(v) if isinstance(v, tuple) else v

    def x(self, i: int) -> Value:
        """Input ``i``, which must be present."""
        v = self.input(i)
        if v is None:
            raise UnsupportedOpError(f"{self.where()}: input {i} is absent")
        return v

    def input(self, i: int) -> Value | None:
        """Input ``i``, or ``None`` when the optional input is absent."""
        return self.inputs[i] if i < len(self.inputs) else None

    def has_dy(self, i: int = 0) -> bool:
        """Whether anything downstream needs the gradient of output ``i``."""
        return i < len(self._douts) and self._douts[i] is not None

    def dy(self, i: int = 0) -> Value:
        """The gradient of output ``i``: zeros shaped like the output when nothing uses it."""
        g = self._douts[i] if i < len(self._douts) else None
        if g is None:
            g = self._op.zeros_like(self.outputs[i])
            if i < len(self._douts):
                self._douts[i] = g
        return g

    def needs_grad(self, i: int) -> bool:
        """Whether input ``i`` (the implicit inputs follow the explicit ones) needs a gradient."""
        return i < len(self._needs) and self._needs[i]

    def differentiable(self, v: Value | None) -> bool:
        """Whether ``v`` depends on a trainable parameter (it may carry a gradient)."""
        return v is not None and id(v) in self._differentiable

    def forward_output(self, i: int, hint: str, dtype: ir.DataType) -> Value:
        """Output ``i`` of the forward node, adding it when the model left it out.

        Some backward passes need a by-product the model did not request: Dropout's mask (the
        forward drew it at random; it cannot be recomputed). Adding an output to the forward
        node is the one change a rule may make to the forward graph.
        """
        node = self.node
        if i < len(node.outputs) and node.outputs[i].name:
            return node.outputs[i]
        node.resize_outputs(max(i + 1, len(node.outputs)))
        out = node.outputs[i]
        out.name = self._op.namer.fresh(hint)
        out.type = ir.TensorType(dtype)
        self.outputs = list(node.outputs)
        return out

    # -- static facts ------------------------------------------------------------------------
    def shape(self, v: Value | None) -> Dims | None:
        """Static shape (``None`` or a symbol for unknown dims), ``None`` if the rank is unknown."""
        return dims(v)

    def rank(self, v: Value) -> int:
        s = dims(v)
        if s is None:
            raise UnsupportedOpError(f"{self.where()}: the rank of {v.name!r} is unknown; "
                                     "give the model static ranks")
        return len(s)

    def const_value(self, v: Value | None) -> np.ndarray | None:
        """The value of a constant input (axes, shapes, ratios), if known at compile time.

        Values that depend on a trainable parameter are never constants, even when they are
        small initializers.
        """
        if v is None or id(v) in self._differentiable:
            return None
        return const_array(v)

    def where(self) -> str:
        return f"{self.node.op_type} node {self.node.name or '<unnamed>'!r}"
