"""Element types and shapes of IR values: the one place that converts between ONNX, onnx-ir
and NumPy type names and reads dimensions.

A dimension is an ``int`` when static, a ``str`` for a named symbol (``"batch"``) and ``None``
when unknown; a shape is a tuple of those, or ``None`` when even the rank is unknown.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

Dim = int | str | None
Dims = tuple[Dim, ...]

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16,
                         ir.DataType.BFLOAT16})


def np_dtype(dtype: ir.DataType | int) -> np.dtype[Any]:
    """The NumPy dtype of an ONNX element type."""
    return np.dtype(ir.DataType(int(dtype)).numpy())


def data_type(dtype: Any) -> ir.DataType:
    """The ONNX element type of a NumPy dtype (or anything ``np.dtype`` accepts)."""
    return ir.DataType.from_numpy(np.dtype(dtype))


def is_float(dtype: ir.DataType | int | None) -> bool:
    return dtype is not None and int(dtype) in {int(t) for t in FLOAT_TYPES}


def dtype_name(dtype: ir.DataType | int) -> str:
    """The NumPy name of an element type (``"float32"``), as the file metadata spells it."""
    return np_dtype(dtype).name


def dims(value: ir.Value | None) -> Dims | None:
    """The shape of ``value`` as plain Python values, or ``None`` if its rank is unknown."""
    if value is None or value.shape is None:
        return None
    out: list[Dim] = []
    for d in value.shape:
        if isinstance(d, int):
            out.append(d)
        else:
            out.append(d.value if isinstance(d.value, str) else None)
    return tuple(out)


def static_dims(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of ``value`` if every dimension is a known integer, else ``None``."""
    shape = dims(value)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(int(d) for d in shape if isinstance(d, int))


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def const_array(value: ir.Value | None, max_elements: int = 1 << 16) -> np.ndarray | None:
    """The value of an initializer or Constant output when statically known and small."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    shape = tuple(int(d) for d in tensor.shape.dims if isinstance(d, int))
    if numel(shape) > max_elements:
        return None
    return tensor.numpy()
