"""A typed graph builder over onnx-ir, so that rules, losses and optimizers read like math.

``op.Mul(dy, op.Cos(x))`` appends a node to the graph being built and returns its output, an
``ir.Value`` that already carries its element type and (where ONNX can infer it) its shape.
Python numbers become constants of the element type of the first value argument, so
``op.Mul(g, 0.5)`` works in float32 and float64 graphs alike; lists of ints become int64
tensors (axes, shapes). Each ONNX op is a method with a signature, so mypy checks the bodies
of gradient rules; attributes are keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from ._infer import infer_outputs
from ._types import data_type, np_dtype

Value = ir.Value
#: What an op accepts as an input: a value, a Python number or int list (a constant), an
#: array (a constant), or None for an absent optional input.
Arg = ir.Value | float | int | bool | Sequence[int] | np.ndarray | None
#: What an attribute accepts.
AttrValue = (int | float | str | Sequence[int] | Sequence[float] | Sequence[str] | ir.Graph
             | ir.TensorProtocol | ir.DataType)


class Namer:
    """Fresh, collision-free value and node names for one model (every scope of it)."""

    def __init__(self, taken: Iterable[str] = (), prefix: str = "") -> None:
        self.taken: set[str] = set(taken)
        self.prefix = prefix
        self._counts: dict[str, int] = {}

    def fresh(self, hint: str) -> str:
        base = f"{self.prefix}{hint}"
        n = self._counts.get(base, 0)
        name = base if n == 0 else f"{base}_{n}"
        while name in self.taken:
            n += 1
            name = f"{base}_{n}"
        self._counts[base] = n + 1
        self.taken.add(name)
        return name


def _reduce(op_type: str) -> Callable[..., Value]:
    """The builder method of a Reduce* op: ``op.ReduceSum(x, axes, keepdims=0)``."""

    def method(self: Builder, x: Arg, axes: Arg = None, **a: Any) -> Value:
        return self.op(op_type, x, axes, **a)

    method.__name__ = op_type
    return method


class Builder:
    """Appends nodes (or inserts them before ``before``) and constants to ``graph``."""

    def __init__(self, graph: ir.Graph, opset: int, namer: Namer,
                 before: ir.Node | None = None, after: ir.Node | None = None) -> None:
        self.graph = graph
        self.opset = opset
        self.namer = namer
        self.before = before
        self._after = after
        self.nodes: list[ir.Node] = []  # every node this builder made, in order
        self._consts: dict[tuple[str, tuple[int, ...], bytes], ir.Value] = {}

    def at(self, before: ir.Node | None = None, after: ir.Node | None = None) -> Builder:
        """A builder on the same graph and names that inserts its nodes, in order, before
        ``before`` or after ``after`` (appends when both are None)."""
        b = Builder(self.graph, self.opset, self.namer, before, after)
        b._consts = self._consts
        return b

    # -- constants ---------------------------------------------------------------------------
    def const(self, value: Any, dtype: Any = None, hint: str = "const") -> ir.Value:
        """A constant (an initializer of the graph); equal constants are one value."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        found = self._consts.get(key)
        if found is not None:
            return found
        name = self.namer.fresh(hint)
        tensor = ir.tensor(arr, name=name)
        v = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(tensor.dtype),
                     const_value=tensor)
        self.graph.register_initializer(v)
        self._consts[key] = v
        return v

    def scalar(self, x: float, like: ir.Value) -> ir.Value:
        """A rank-0 constant of ``like``'s element type."""
        return self.const(np.array(x, dtype=np_dtype(like.dtype or ir.DataType.FLOAT)))

    def _value(self, arg: Arg, like: ir.DataType | None) -> ir.Value | None:
        if arg is None or isinstance(arg, ir.Value):
            return arg
        if isinstance(arg, np.ndarray):
            return self.const(arg)
        if isinstance(arg, bool):
            return self.const(np.array(arg))
        if isinstance(arg, (int, float, np.number)):
            if like is not None:
                return self.const(np.array(arg, dtype=np_dtype(like)))
            return self.const(np.array(arg, dtype=np.int64 if isinstance(arg, int)
                                       else np.float32))
        if isinstance(arg, (list, tuple)):
            arr = np.asarray(arg)
            if arr.dtype.kind in "iu" or arr.size == 0:
                return self.const(arr.astype(np.int64))
            return self.const(arr.astype(np_dtype(like) if like is not None else np.float32))
        raise TypeError(f"cannot use {type(arg).__name__} as an ONNX value")

    # -- nodes -------------------------------------------------------------------------------
    def node(self, op_type: str, args: Sequence[Arg], attrs: Mapping[str, AttrValue | None],
             outputs: int = 1, names: Sequence[str] | None = None) -> list[ir.Value]:
        """Add one node; returns its outputs (typed and, where possible, shaped)."""
        like = next((a.dtype for a in args if isinstance(a, ir.Value) and a.dtype is not None),
                    None)
        inputs = [self._value(a, like) for a in args]
        while inputs and inputs[-1] is None:
            inputs.pop()
        kept = {k: (int(v) if isinstance(v, ir.DataType) else v)
                for k, v in attrs.items() if v is not None}
        outs = [ir.Value(name=names[i] if names else self.namer.fresh(op_type.lower()))
                for i in range(len(names) if names else outputs)]
        node = ir.Node("", op_type, inputs, ir.convenience.convert_attributes(kept),
                       outputs=outs, name=self.namer.fresh(f"{op_type}_node"))
        if self._after is not None:
            self.graph.insert_after(self._after, node)
            self._after = node  # the next node goes after this one
        elif self.before is not None:
            self.graph.insert_before(self.before, node)
        else:
            self.graph.append(node)
        self.nodes.append(node)
        infer_outputs(node, self.opset)
        return list(node.outputs)

    def op(self, op_type: str, *args: Arg, **attrs: AttrValue | None) -> ir.Value:
        """A single-output op by name (the typed methods below are preferred)."""
        return self.node(op_type, args, attrs)[0]

    def multi(self, op_type: str, *args: Arg, outputs: int, **attrs: AttrValue | None
              ) -> tuple[ir.Value, ...]:
        """A multi-output op by name."""
        return tuple(self.node(op_type, args, attrs, outputs))

    def named(self, op_type: str, name: str, *args: Arg, **attrs: AttrValue | None
              ) -> ir.Value:
        """A single-output op whose output gets exactly ``name`` (a graph output)."""
        self.namer.taken.add(name)
        return self.node(op_type, args, attrs, names=[name])[0]

    # -- helpers used everywhere ----------------------------------------------------------
    def filled_like(self, x: ir.Value, fill: float) -> ir.Value:
        """A tensor of x's shape and type filled with ``fill`` (no arithmetic on x: NaN-safe)."""
        return self.Expand(self.scalar(fill, x), self.Shape(x))

    def zeros_like(self, x: ir.Value) -> ir.Value:
        return self.filled_like(x, 0.0)

    def cast(self, x: ir.Value, to: ir.DataType | None) -> ir.Value:
        """``x`` in element type ``to`` (no node when it already is)."""
        if to is None or x.dtype == to:
            return x
        return self.Cast(x, to=to)

    # -- typed ops (alphabetical) -----------------------------------------------------------
    def Abs(self, x: Arg) -> Value: return self.op("Abs", x)
    def Acos(self, x: Arg) -> Value: return self.op("Acos", x)
    def Add(self, a: Arg, b: Arg) -> Value: return self.op("Add", a, b)
    def And(self, a: Arg, b: Arg) -> Value: return self.op("And", a, b)
    def ArgMax(self, x: Arg, **a: Any) -> Value: return self.op("ArgMax", x, **a)
    def Asin(self, x: Arg) -> Value: return self.op("Asin", x)
    def Atan(self, x: Arg) -> Value: return self.op("Atan", x)
    def AveragePool(self, x: Arg, **a: Any) -> Value: return self.op("AveragePool", x, **a)
    def BatchNormalization(self, x: Arg, s: Arg, b: Arg, m: Arg, v: Arg, **a: Any) -> Value:
        return self.op("BatchNormalization", x, s, b, m, v, **a)
    def Cast(self, x: Arg, *, to: ir.DataType | int) -> Value: return self.op("Cast", x, to=to)
    def CastLike(self, x: Arg, like: Arg) -> Value: return self.op("CastLike", x, like)
    def Ceil(self, x: Arg) -> Value: return self.op("Ceil", x)
    def Concat(self, *xs: Arg, axis: int) -> Value: return self.op("Concat", *xs, axis=axis)
    def ConstantOfShape(self, shape: Arg, **a: Any) -> Value:
        return self.op("ConstantOfShape", shape, **a)
    def Conv(self, x: Arg, w: Arg, b: Arg = None, **a: Any) -> Value:
        return self.op("Conv", x, w, b, **a)
    def ConvTranspose(self, x: Arg, w: Arg, b: Arg = None, **a: Any) -> Value:
        return self.op("ConvTranspose", x, w, b, **a)
    def Cos(self, x: Arg) -> Value: return self.op("Cos", x)
    def Cosh(self, x: Arg) -> Value: return self.op("Cosh", x)
    def CumSum(self, x: Arg, axis: Arg, **a: Any) -> Value: return self.op("CumSum", x, axis, **a)
    def DepthToSpace(self, x: Arg, **a: Any) -> Value: return self.op("DepthToSpace", x, **a)
    def Div(self, a: Arg, b: Arg) -> Value: return self.op("Div", a, b)
    def Einsum(self, *xs: Arg, equation: str) -> Value:
        return self.op("Einsum", *xs, equation=equation)
    def Equal(self, a: Arg, b: Arg) -> Value: return self.op("Equal", a, b)
    def Erf(self, x: Arg) -> Value: return self.op("Erf", x)
    def Exp(self, x: Arg) -> Value: return self.op("Exp", x)
    def Expand(self, x: Arg, shape: Arg) -> Value: return self.op("Expand", x, shape)
    def Flatten(self, x: Arg, **a: Any) -> Value: return self.op("Flatten", x, **a)
    def Floor(self, x: Arg) -> Value: return self.op("Floor", x)
    def Gather(self, x: Arg, i: Arg, **a: Any) -> Value: return self.op("Gather", x, i, **a)
    def GatherElements(self, x: Arg, i: Arg, **a: Any) -> Value:
        return self.op("GatherElements", x, i, **a)
    def GatherND(self, x: Arg, i: Arg, **a: Any) -> Value: return self.op("GatherND", x, i, **a)
    def Gemm(self, a: Arg, b: Arg, c: Arg = None, **at: Any) -> Value:
        return self.op("Gemm", a, b, c, **at)
    def Greater(self, a: Arg, b: Arg) -> Value: return self.op("Greater", a, b)
    def GreaterOrEqual(self, a: Arg, b: Arg) -> Value: return self.op("GreaterOrEqual", a, b)
    def Identity(self, x: Arg) -> Value: return self.op("Identity", x)
    def IsInf(self, x: Arg, **a: Any) -> Value: return self.op("IsInf", x, **a)
    def IsNaN(self, x: Arg) -> Value: return self.op("IsNaN", x)
    def Less(self, a: Arg, b: Arg) -> Value: return self.op("Less", a, b)
    def LessOrEqual(self, a: Arg, b: Arg) -> Value: return self.op("LessOrEqual", a, b)
    def Log(self, x: Arg) -> Value: return self.op("Log", x)
    def LogSoftmax(self, x: Arg, **a: Any) -> Value: return self.op("LogSoftmax", x, **a)
    def MatMul(self, a: Arg, b: Arg) -> Value: return self.op("MatMul", a, b)
    def Max(self, *xs: Arg) -> Value: return self.op("Max", *xs)
    def MaxPool(self, x: Arg, **a: Any) -> Value: return self.op("MaxPool", x, **a)
    def MaxUnpool(self, x: Arg, i: Arg, shape: Arg = None, **a: Any) -> Value:
        return self.op("MaxUnpool", x, i, shape, **a)
    def Min(self, *xs: Arg) -> Value: return self.op("Min", *xs)
    def Mod(self, a: Arg, b: Arg, **at: Any) -> Value: return self.op("Mod", a, b, **at)
    def Mul(self, a: Arg, b: Arg) -> Value: return self.op("Mul", a, b)
    def Neg(self, x: Arg) -> Value: return self.op("Neg", x)
    def NonZero(self, x: Arg) -> Value: return self.op("NonZero", x)
    def Not(self, x: Arg) -> Value: return self.op("Not", x)
    def OneHot(self, i: Arg, depth: Arg, values: Arg, **a: Any) -> Value:
        return self.op("OneHot", i, depth, values, **a)
    def Or(self, a: Arg, b: Arg) -> Value: return self.op("Or", a, b)
    def Pad(self, x: Arg, pads: Arg, value: Arg = None, axes: Arg = None, **a: Any) -> Value:
        return self.op("Pad", x, pads, value, axes, **a)
    def Pow(self, a: Arg, b: Arg) -> Value: return self.op("Pow", a, b)
    def Range(self, start: Arg, limit: Arg, delta: Arg) -> Value:
        return self.op("Range", start, limit, delta)
    def Reciprocal(self, x: Arg) -> Value: return self.op("Reciprocal", x)
    ReduceL1 = _reduce("ReduceL1")
    ReduceL2 = _reduce("ReduceL2")
    ReduceMax = _reduce("ReduceMax")
    ReduceMean = _reduce("ReduceMean")
    ReduceProd = _reduce("ReduceProd")
    ReduceSum = _reduce("ReduceSum")
    ReduceSumSquare = _reduce("ReduceSumSquare")
    def Relu(self, x: Arg) -> Value: return self.op("Relu", x)
    def Reshape(self, x: Arg, shape: Arg, **a: Any) -> Value:
        return self.op("Reshape", x, shape, **a)
    def Resize(self, x: Arg, roi: Arg, scales: Arg, sizes: Arg = None, **a: Any) -> Value:
        return self.op("Resize", x, roi, scales, sizes, **a)
    def Round(self, x: Arg) -> Value: return self.op("Round", x)
    def ScatterElements(self, x: Arg, i: Arg, u: Arg, **a: Any) -> Value:
        return self.op("ScatterElements", x, i, u, **a)
    def ScatterND(self, x: Arg, i: Arg, u: Arg, **a: Any) -> Value:
        return self.op("ScatterND", x, i, u, **a)
    def Shape(self, x: Arg, **a: Any) -> Value: return self.op("Shape", x, **a)
    def Sigmoid(self, x: Arg) -> Value: return self.op("Sigmoid", x)
    def Sign(self, x: Arg) -> Value: return self.op("Sign", x)
    def Sin(self, x: Arg) -> Value: return self.op("Sin", x)
    def Sinh(self, x: Arg) -> Value: return self.op("Sinh", x)
    def Size(self, x: Arg) -> Value: return self.op("Size", x)
    def Slice(self, x: Arg, starts: Arg, ends: Arg, axes: Arg = None, steps: Arg = None
              ) -> Value:
        return self.op("Slice", x, starts, ends, axes, steps)
    def Softmax(self, x: Arg, **a: Any) -> Value: return self.op("Softmax", x, **a)
    def Softplus(self, x: Arg) -> Value: return self.op("Softplus", x)
    def SpaceToDepth(self, x: Arg, **a: Any) -> Value: return self.op("SpaceToDepth", x, **a)
    def Split(self, x: Arg, sizes: Arg = None, *, outputs: int, **a: Any) -> tuple[Value, ...]:
        return self.multi("Split", x, sizes, outputs=outputs, **a)
    def Sqrt(self, x: Arg) -> Value: return self.op("Sqrt", x)
    def Squeeze(self, x: Arg, axes: Arg = None) -> Value: return self.op("Squeeze", x, axes)
    def Sub(self, a: Arg, b: Arg) -> Value: return self.op("Sub", a, b)
    def Sum(self, *xs: Arg) -> Value: return self.op("Sum", *xs)
    def Tan(self, x: Arg) -> Value: return self.op("Tan", x)
    def Tanh(self, x: Arg) -> Value: return self.op("Tanh", x)
    def Tile(self, x: Arg, repeats: Arg) -> Value: return self.op("Tile", x, repeats)
    def TopK(self, x: Arg, k: Arg, **a: Any) -> tuple[Value, ...]:
        return self.multi("TopK", x, k, outputs=2, **a)
    def Transpose(self, x: Arg, **a: Any) -> Value: return self.op("Transpose", x, **a)
    def Trilu(self, x: Arg, k: Arg = None, **a: Any) -> Value: return self.op("Trilu", x, k, **a)
    def Unsqueeze(self, x: Arg, axes: Arg) -> Value: return self.op("Unsqueeze", x, axes)
    def Where(self, c: Arg, a: Arg, b: Arg) -> Value: return self.op("Where", c, a, b)
    def Xor(self, a: Arg, b: Arg) -> Value: return self.op("Xor", a, b)


__all__ = ["Arg", "AttrValue", "Builder", "Namer", "Value", "data_type"]
