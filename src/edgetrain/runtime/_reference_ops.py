"""Kernels that replace onnx.reference's own where those are inexact or broken.

- Erf: onnx.reference computes it with ``np.vectorize(math.erf, otypes=["f"])``, so every
  result is rounded to float32, also for float64 models; Gelu (a function op expanded into Erf)
  inherits it. The reference backend is the exact oracle of the tests and the fallback runtime,
  so both run in the input's own precision here.
- GatherElements: onnx.reference uses ``np.choose``, which takes at most 32 choices, and its
  fallback fails on a [1, 16] index into a [1, 512] table (BERT's position/token-type ids);
  ``np.take_along_axis`` is the exact equivalent.
- MaxUnpool: onnx.reference sizes its output from the kernel, strides and pads and ignores the
  ``output_shape`` input, so it fails when a floor-mode pool dropped trailing rows (an 11×11
  input pooled 2×2 to 5×5). Placing each value at its index in a zero tensor of
  ``output_shape`` is the operator's definition.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_loop import Loop as _Loop

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _erf_like(x: np.ndarray) -> np.ndarray:
    return np.asarray(_erf(x.astype(np.float64)), dtype=x.dtype).reshape(x.shape)


class Erf(OpRun):
    op_domain = ""

    def _run(self, x: np.ndarray) -> tuple[np.ndarray]:
        return (_erf_like(x),)


class Gelu(OpRun):
    op_domain = ""

    def _run(self, x: np.ndarray, approximate: Any = "none") -> tuple[np.ndarray]:
        mode = approximate.decode() if isinstance(approximate, bytes) else approximate or "none"
        if mode == "tanh":
            k = math.sqrt(2.0 / math.pi)
            y = 0.5 * x * (1.0 + np.tanh(k * (x + 0.044715 * x ** 3)))
        else:
            y = 0.5 * x * (1.0 + _erf_like(x / math.sqrt(2.0)))
        return (np.asarray(y, dtype=x.dtype),)


class GatherElements(OpRun):
    op_domain = ""

    def _run(self, data: np.ndarray, indices: np.ndarray, axis: Any = 0
             ) -> tuple[np.ndarray]:
        axis = int(axis or 0)
        idx = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(data, idx.astype(np.int64), axis=axis),)


class MaxUnpool(OpRun):
    op_domain = ""

    def _run(self, x: np.ndarray, indices: np.ndarray, output_shape: np.ndarray | None = None,
             kernel_shape: Any = None, pads: Any = None, strides: Any = None
             ) -> tuple[np.ndarray]:
        if output_shape is None:
            raise ValueError("MaxUnpool here needs its output_shape input")
        out = np.zeros(int(np.prod(output_shape)), dtype=x.dtype)
        out[indices.reshape(-1)] = x.reshape(-1)
        return (out.reshape(tuple(int(d) for d in output_shape)),)


class Loop(_Loop):
    op_domain = ""

    def _run(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        out = list(super()._run(*args, **kwargs))
        body = self.onnx_node.attribute[0].g if self.onnx_node.attribute else None
        scans = list(body.output)[len(body.output) - self.K:] if body is not None else []
        for k, vi in enumerate(scans):
            i = len(out) - self.K + k
            scalar = vi.type.tensor_type.HasField("shape") and not vi.type.tensor_type.shape.dim
            if scalar and out[i].ndim == 2 and out[i].shape[1] == 1:
                out[i] = out[i].reshape(-1)
        return tuple(out)


#: Pass as ``ReferenceEvaluator(model, new_ops=EXACT_OPS)``.
EXACT_OPS: list[type[OpRun]] = [Erf, Gelu, GatherElements, MaxUnpool, Loop]
