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
- Loop: onnx.reference stacks the scan outputs with ``np.vstack``, which concatenates slices of
  rank 2 and more along their first axis ([T·a, b] instead of [T, a, b]) and gives rank-0
  slices an extra axis, and it runs no iteration at all when the condition input is left out.
  ONNX stacks along a new first axis and runs until the trip count when there is no condition.
- Scan: onnx.reference refuses ``scan_input_axes``, ``scan_*_directions`` and
  ``scan_output_axes`` other than 0.
- LSTM, GRU, RNN: onnx.reference ignores most of their attributes (``_reference_rnn``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from onnx import helper
from onnx.reference.op_run import OpRun

from ._reference_rnn import RECURRENT_OPS

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


def _stacked(slices: list[np.ndarray], body: Any, index: int) -> np.ndarray:
    """Per-iteration slices stacked along a new first axis (empty: zero iterations)."""
    if slices:
        return np.stack([np.asarray(s) for s in slices], axis=0)
    elem = body.proto_.output[index].type.tensor_type.elem_type
    return np.zeros((0,), dtype=helper.tensor_dtype_to_np_dtype(elem) if elem else np.float32)


class _Body(OpRun):
    """A kernel with a ``body`` subgraph (onnx.reference sets these from the attributes)."""

    body: Any
    _run_body: Any


class Loop(_Body):
    op_domain = ""

    def need_context(self) -> bool:
        return True  # the body reads outer values

    def _run(self, trip: np.ndarray | None, cond: np.ndarray | None, *states: np.ndarray,
             context: Any = None, body: Any = None, attributes: Any = None,
             bindings: Any = None) -> tuple[np.ndarray, ...]:
        names_in, names_out = self.body.input_names, self.body.output_names
        n = len(names_in) - 2
        values, go = list(states), True if cond is None else bool(cond)
        scans: list[list[np.ndarray]] = [[] for _ in names_out[1 + n:]]
        it = 0
        while go and (trip is None or it < int(trip)):
            feeds = dict(context or {})
            feeds.update({names_in[0]: np.array(it, dtype=np.int64), names_in[1]: np.array(go)})
            feeds.update(zip(names_in[2:], values))
            outs = self._run_body(feeds, attributes=attributes, bindings=bindings)
            go, values = bool(outs[0]), list(outs[1:1 + n])
            for acc, v in zip(scans, outs[1 + n:]):
                acc.append(v)
            it += 1
        return tuple(values) + tuple(_stacked(acc, self.body, 1 + n + k)
                                     for k, acc in enumerate(scans))


class Scan(_Body):
    op_domain = ""
    num_scan_inputs: Any
    scan_input_axes: Any
    scan_input_directions: Any
    scan_output_axes: Any
    scan_output_directions: Any

    def need_context(self) -> bool:
        return True

    def _run(self, *args: np.ndarray, context: Any = None, body: Any = None,
             num_scan_inputs: Any = None, scan_input_axes: Any = None,
             scan_input_directions: Any = None, scan_output_axes: Any = None,
             scan_output_directions: Any = None, attributes: Any = None,
             bindings: Any = None) -> tuple[np.ndarray, ...]:
        m = int(self.num_scan_inputs)
        n = len(args) - m
        names_in, names_out = self.body.input_names, self.body.output_names
        k = len(names_out) - n
        in_axes = list(self.scan_input_axes or [0] * m)
        in_dirs = list(self.scan_input_directions or [0] * m)
        xs = []
        for x, axis, d in zip(args[n:], in_axes, in_dirs):
            x = np.moveaxis(x, int(axis) % max(x.ndim, 1), 0)
            xs.append(x[::-1] if d else x)
        values = list(args[:n])
        scans: list[list[np.ndarray]] = [[] for _ in range(k)]
        for t in range(xs[0].shape[0]):
            feeds = dict(context or {})
            feeds.update(zip(names_in[:n], values))
            feeds.update((name, x[t]) for name, x in zip(names_in[n:], xs))
            outs = self._run_body(feeds, attributes=attributes, bindings=bindings)
            values = list(outs[:n])
            for acc, v in zip(scans, outs[n:]):
                acc.append(v)
        axes = list(self.scan_output_axes or [0] * k)
        dirs = list(self.scan_output_directions or [0] * k)
        stacked = []
        for j, acc in enumerate(scans):
            out = _stacked(acc[::-1] if dirs[j] else acc, self.body, n + j)
            stacked.append(np.moveaxis(out, 0, int(axes[j]) % out.ndim) if axes[j] else out)
        return tuple(values) + tuple(stacked)


#: Pass as ``ReferenceEvaluator(model, new_ops=EXACT_OPS)``.
EXACT_OPS: list[type[OpRun]] = [Erf, Gelu, GatherElements, Loop, MaxUnpool, Scan,
                                *RECURRENT_OPS]
