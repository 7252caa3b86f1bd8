"""A small ONNX graph builder so that gradient rules, losses and optimizers read like math.

``op.Mul(dy, op.Cos(x))`` appends a node and returns the name of its output. Python numbers
become constants of the element type of the first tensor argument, so ``op.Mul(g, 0.5)`` works
in float32 and float64 graphs alike; lists of ints become int64 tensors (axes, shapes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Value = str
Arg = Any  # Value | float | int | list[int] | np.ndarray | None

_BOOL_OUT = {
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor",
    "IsNaN", "IsInf",
}
_INT64_OUT = {"Shape", "Size", "ArgMax", "ArgMin", "NonZero"}


def np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def elem_type(dtype: Any) -> int:
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def is_float(elem: int | None) -> bool:
    return elem in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
                    TensorProto.BFLOAT16)


def graph_names(graph: onnx.GraphProto) -> set[str]:
    """Every value and node name a graph uses, so that new ones can avoid them."""
    names = {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
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


class Builder:
    """Accumulates nodes and constant initializers; tracks element types of the values."""

    def __init__(self, prefix: str = "", types: dict[str, int] | None = None,
                 taken: Iterable[str] = ()) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.types: dict[str, int] = dict(types or {})
        self._taken: set[str] = set(taken) | set(self.types)
        self._consts: dict[tuple[Any, ...], str] = {}
        self._counter = 0

    # -- names ---------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A value name not used anywhere in the graph being built."""
        base = f"{self.prefix}{hint}"
        name = base
        while name in self._taken:
            self._counter += 1
            name = f"{base}_{self._counter}"
        self._taken.add(name)
        return name

    def reserve(self, names: Iterable[str]) -> None:
        self._taken.update(names)

    # -- constants -----------------------------------------------------------------------
    def const(self, value: Any, dtype: Any = None, hint: str = "c") -> Value:
        """A constant initializer; equal constants are shared."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key in self._consts:
            return self._consts[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        self.types[name] = elem_type(arr.dtype)
        self._consts[key] = name
        return name

    def _to_value(self, arg: Arg, like: int | None) -> str:
        if arg is None:
            return ""
        if isinstance(arg, str):
            return arg
        if isinstance(arg, np.ndarray):
            return self.const(arg)
        if isinstance(arg, (list, tuple)):
            arr = np.asarray(arg)
            if arr.dtype.kind in "iu" or arr.size == 0:
                return self.const(arr.astype(np.int64))
            return self.const(arr.astype(np_dtype(like) if like else np.float32))
        if isinstance(arg, bool):
            return self.const(np.array(arg))
        if isinstance(arg, (int, float, np.number)):
            if like is not None:
                return self.const(np.array(arg, dtype=np_dtype(like)))
            return self.const(np.array(arg, dtype=np.int64 if isinstance(arg, int)
                                       else np.float32))
        raise TypeError(f"cannot use {type(arg).__name__} as an ONNX value")

    # -- nodes ---------------------------------------------------------------------------
    def node(self, op_type: str, args: Sequence[Arg], n_out: int = 1,
             outputs: Sequence[str] | None = None, **attrs: Any) -> list[str]:
        like = next((self.types.get(a) for a in args if isinstance(a, str) and a in self.types),
                    None)
        inputs = [self._to_value(a, like) for a in args]
        while inputs and inputs[-1] == "":
            inputs.pop()
        if outputs is None:
            outputs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        else:
            self.reserve(outputs)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, inputs, list(outputs),
                                           name=self.fresh(f"{op_type}_node"), **attrs))
        for i, out in enumerate(outputs):
            t = self._out_type(op_type, inputs, i, attrs)
            if t is not None:
                self.types[out] = t
        return list(outputs)

    def _out_type(self, op_type: str, inputs: list[str], i: int,
                  attrs: dict[str, Any]) -> int | None:
        if op_type in _BOOL_OUT or (op_type == "Dropout" and i == 1):
            return TensorProto.BOOL
        if op_type in _INT64_OUT or (op_type == "MaxPool" and i == 1):
            return TensorProto.INT64
        if op_type == "Cast":
            return int(attrs["to"])
        if op_type == "CastLike":
            return self.types.get(inputs[1])
        if op_type == "ConstantOfShape":
            v = attrs.get("value")
            return int(v.data_type) if v is not None else TensorProto.FLOAT
        if op_type == "Where":
            return self.types.get(inputs[1])
        if op_type == "OneHot":
            return self.types.get(inputs[2])
        if op_type == "Constant":
            v = attrs.get("value")
            return int(v.data_type) if v is not None else None
        return self.types.get(inputs[0]) if inputs and inputs[0] else None

    def __getattr__(self, op_type: str) -> Any:
        if not op_type[:1].isupper():
            raise AttributeError(op_type)

        def make(*args: Arg, _outputs: int = 1, _names: Sequence[str] | None = None,
                 **attrs: Any) -> Any:
            outs = self.node(op_type, args, _outputs, _names, **attrs)
            return outs[0] if len(outs) == 1 and _outputs == 1 else tuple(outs)

        make.__name__ = op_type
        return make

    # -- helpers used by many rules ------------------------------------------------------
    def filled_like(self, x: Value, fill: float) -> Value:
        """A tensor of x's shape and type filled with ``fill`` (no arithmetic on x: NaN-safe)."""
        scalar = self.const(np.array(fill, dtype=np_dtype(self.types.get(x, 1))))
        return self.node("Expand", [scalar, self.node("Shape", [x])[0]])[0]

    def zeros_like(self, x: Value) -> Value:
        return self.filled_like(x, 0.0)

    def ones_like(self, x: Value) -> Value:
        return self.filled_like(x, 1.0)
