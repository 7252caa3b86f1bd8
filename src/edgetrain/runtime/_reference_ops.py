"""Kernels that replace onnx.reference's own where those are inexact or broken.

- Erf: onnx.reference computes it with ``np.vectorize(math.erf, otypes=["f"])``, so every
  result is rounded to float32, also for float64 models; Gelu (a function op expanded into Erf)
  inherits it. The reference backend is the exact oracle of the tests and the fallback runtime,
  so both run in the input's own precision here.
- GatherElements: onnx.reference uses ``np.choose``, which takes at most 32 choices, and its
  fallback fails on a [1, 16] index into a [1, 512] table (BERT's position/token-type ids);
  ``np.take_along_axis`` is the exact equivalent.
- GlobalLpPool: onnx.reference has no kernel for it; (Σ |x|ᵖ over space)^(1/p).
- LRN: onnx.reference loops its channel windows over the batch size instead of the channel
  count (right only when they are equal) and takes 4-D inputs only; here the definition, for
  any rank.
- LpNormalization: for p = 1 onnx.reference divides by ``Σ x`` instead of ``Σ |x|`` (the L1
  norm, and what onnxruntime computes); 0 where the norm is 0, as the reference.
- MaxPool: with unit strides and dilations (overlapping windows: a 2×2 kernel at stride 1)
  onnx.reference takes a vectorized path whose ``Indices`` output points at elements that are
  not their window's maximum, and whose ``pads``/``SAME_*`` handling fails on some inputs;
  its general loop (taken for other strides) is right. Here every pool that outputs indices
  takes the loop, with ``auto_pad`` resolved to explicit pads (the loop's ``SAME_LOWER``
  puts the larger half at the end).
- MaxUnpool: onnx.reference places the values one at a time in a Python loop. The same
  definition — each value at its index in the shape inferred from the kernel, strides and
  pads, that tensor at the start of ``output_shape`` — vectorized.
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
from onnx.reference.ops.op_max_pool import MaxPool as _RefMaxPool

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


class GlobalLpPool(OpRun):
    op_domain = ""

    def _run(self, x: np.ndarray, p: Any = 2) -> tuple[np.ndarray]:
        axes = tuple(range(2, x.ndim))
        y = np.sum(np.abs(x) ** int(p), axis=axes, keepdims=True) ** (1.0 / int(p))
        return (y.astype(x.dtype),)


class LRN(OpRun):
    op_domain = ""

    def _run(self, x: np.ndarray, alpha: Any = 1e-4, beta: Any = 0.75, bias: Any = 1.0,
             size: Any = None) -> tuple[np.ndarray]:
        lo, hi = (int(size) - 1) // 2, int(size) - 1 - (int(size) - 1) // 2
        sq = np.moveaxis(x.astype(np.float64) ** 2, 1, 0)
        window = np.zeros_like(sq)
        for c in range(sq.shape[0]):
            window[c] = sq[max(0, c - lo): c + hi + 1].sum(axis=0)
        d = float(bias) + float(alpha) / int(size) * np.moveaxis(window, 0, 1)
        return ((x / d ** float(beta)).astype(x.dtype),)


class LpNormalization(OpRun):
    op_domain = ""

    def _run(self, x: np.ndarray, axis: Any = -1, p: Any = 2) -> tuple[np.ndarray]:
        norm = np.sum(np.abs(x) ** int(p), axis=int(axis), keepdims=True) ** (1.0 / int(p))
        with np.errstate(all="ignore"):
            return (np.where(norm == 0, 0, x / norm).astype(x.dtype),)


class MaxPool(_RefMaxPool):
    op_domain = ""

    def _run(  # type: ignore[override]
            self, x: np.ndarray, auto_pad: Any = None, ceil_mode: Any = None,
            dilations: Any = None, kernel_shape: Any = None, pads: Any = None,
            storage_order: Any = None, strides: Any = None) -> tuple[np.ndarray, ...]:
        attrs = {"ceil_mode": ceil_mode, "dilations": dilations, "kernel_shape": kernel_shape,
                 "storage_order": storage_order, "strides": strides}
        if len(self.output) < 2 or not self.output[1]:  # no indices: the fast path is right
            return super()._run(x, auto_pad=auto_pad, pads=pads, **attrs)  # type: ignore[no-any-return,no-untyped-call]
        n = len(kernel_shape)
        mode = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad or "NOTSET"
        if mode != "NOTSET":
            pads = _auto_pads(mode, x.shape[2:], kernel_shape, strides or [1] * n,
                              dilations or [1] * n)
        return self._max_pool(x, auto_pad=None, pads=pads, **attrs)  # type: ignore[no-any-return,no-untyped-call]


def _auto_pads(mode: str, size: tuple[int, ...], kernel: list[int], strides: list[int],
               dilations: list[int]) -> list[int]:
    """Explicit pads of ``auto_pad`` (SAME_* keeps ceil(size/stride) outputs)."""
    begin, end = [], []
    for x, k, s, d in zip(size, kernel, strides, dilations):
        total = 0 if mode == "VALID" else max((-(-x // s) - 1) * s + (k - 1) * d + 1 - x, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if mode != "SAME_LOWER" else big)
        end.append(big if mode != "SAME_LOWER" else small)
    return begin + end


class MaxUnpool(OpRun):
    op_domain = ""

    def _run(self, x: np.ndarray, indices: np.ndarray, output_shape: np.ndarray | None = None,
             kernel_shape: Any = None, pads: Any = None, strides: Any = None
             ) -> tuple[np.ndarray]:
        n = len(kernel_shape)
        pads = pads or [0] * (2 * n)
        strides = strides or [1] * n
        inferred = [*x.shape[:2], *((x.shape[2 + i] - 1) * strides[i] - pads[i] - pads[n + i]
                                    + kernel_shape[i] for i in range(n))]
        flat = np.zeros(int(np.prod(inferred)), dtype=x.dtype)
        flat[indices.reshape(-1)] = x.reshape(-1)
        shape = inferred if output_shape is None else [int(d) for d in output_shape]
        out = np.zeros(shape, dtype=x.dtype)
        out[tuple(slice(0, d) for d in inferred)] = flat.reshape(inferred)
        return (out,)


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
EXACT_OPS: list[type[OpRun]] = [Erf, Gelu, GatherElements, GlobalLpPool, LRN, Loop,
                                 LpNormalization, MaxPool, MaxUnpool, Scan, *RECURRENT_OPS]
