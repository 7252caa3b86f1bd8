"""Execution backends: onnxruntime (default) and onnx.reference (pure NumPy, always there).

Both run the standalone graphs of :func:`edgetrain.format.standalone`: state (trainables,
optimizer state, step) goes in as inputs and comes back as outputs. The onnxruntime backend
keeps the state as ``OrtValue`` s and binds them with IOBinding; each step writes the new state
into a second set of buffers and the two sets swap, so no state crosses into NumPy per step.
Frozen weights are handed to every session as one shared ``OrtValue`` each.

A training step commits its new state only by the format's commit rule,
:func:`edgetrain.format.committed` (the step counter advanced by exactly the number of steps
the call ran): a skipped step leaves every state value as it was, without a per-tensor select
in the graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

from .. import format as fmt


class Backend:
    name = "backend"
    #: Whether this backend runs ``train_steps`` (K steps in one call).
    multi_step = True
    #: Whether it runs ``train_steps`` unrolled, built once for each K it is called with
    #: (then ``fit`` calls it with one K only).
    unrolls_steps = False
    #: The K ``fit`` runs per ``train_steps`` call unless ``Model.steps_per_call`` says: one
    #: Scan runs any K (docs/benchmarks.md, "K steps per call").
    steps_per_call = 32

    def __init__(self, model: onnx.ModelProto, meta: fmt.Metadata) -> None:
        self.model = model
        self.meta = meta
        self.step_name = meta.step

    def run(self, sig: str, feeds: Mapping[str, np.ndarray], steps: int = 1
            ) -> tuple[dict[str, np.ndarray], bool]:
        """Public outputs, and whether the step's state updates were committed."""
        raise NotImplementedError

    def get_state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def read(self, name: str) -> np.ndarray:
        """One state value (a copy), e.g. the step counter, without copying the whole state."""
        raise NotImplementedError

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError


class ReferenceBackend(Backend):
    """onnx.reference: slow, exact, dependency-free; the oracle in tests."""

    name = "reference"

    def __init__(self, model: onnx.ModelProto, meta: fmt.Metadata) -> None:
        super().__init__(model, meta)
        from functools import partial

        from onnx.reference import ReferenceEvaluator

        from ._reference_ops import EXACT_OPS  # see _reference_ops: exact Erf, Gelu, GatherElements

        self._evaluator = partial(ReferenceEvaluator, new_ops=EXACT_OPS)
        self._state = {k: np.array(v) for k, v in fmt.initial_state(model, meta).items()}
        self._sessions: dict[str, tuple[Any, list[str], dict[str, str], list[str]]] = {}

    def _session(self, sig: str) -> tuple[Any, list[str], dict[str, str], list[str]]:
        if sig not in self._sessions:
            m, state_inputs, updates = fmt.standalone(self.model, self.meta, sig)
            outs = [o.name for o in m.graph.output]
            self._sessions[sig] = (self._evaluator(m), state_inputs, updates, outs)
        return self._sessions[sig]

    def run(self, sig: str, feeds: Mapping[str, np.ndarray], steps: int = 1
            ) -> tuple[dict[str, np.ndarray], bool]:
        sess, state_inputs, updates, outs = self._session(sig)
        all_feeds = dict(feeds)
        all_feeds.update({k: self._state[k] for k in state_inputs})
        results = dict(zip(outs, sess.run(None, all_feeds)))
        step_out = updates.get(self.step_name)
        commit = step_out is None or fmt.committed(self._state[self.step_name],
                                                   results[step_out], steps)
        if commit:
            for k, out in updates.items():
                self._state[k] = np.asarray(results[out])
        produced = set(updates.values())
        return {k: np.asarray(v) for k, v in results.items() if k not in produced}, commit

    def get_state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._state.items()}

    def read(self, name: str) -> np.ndarray:
        return np.array(self._state[name])

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        for k, v in state.items():
            self._state[k] = np.array(v, dtype=self._state[k].dtype)


class OrtBackend(Backend):
    """Stock onnxruntime with state kept as OrtValues between steps."""

    name = "onnxruntime"

    def __init__(self, model: onnx.ModelProto, meta: fmt.Metadata,
                 providers: list[str] | None = None, threads: int | None = None,
                 graph_optimizations: bool = True) -> None:
        super().__init__(model, meta)
        import onnxruntime as ort

        self._ort = ort
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        #: False runs the graphs as written: onnxruntime's graph optimizer fails on some
        #: step graphs (a fusion that does not apply), which then still run unoptimized.
        self.graph_optimizations = bool(graph_optimizations)
        init = fmt.initial_state(model, meta)
        self._front = {k: ort.OrtValue.ortvalue_from_numpy(np.require(v, requirements="C"))
                       for k, v in init.items()}
        self._back: dict[str, Any] = {}
        variable = set(init)
        # Frozen weights: one buffer each, shared by every session.
        self._frozen_np = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
                           if t.name not in variable}
        self._frozen = {k: ort.OrtValue.ortvalue_from_numpy(np.require(v, requirements="C"))
                        for k, v in self._frozen_np.items()}
        self._sessions: dict[str, tuple[Any, list[str], dict[str, str], list[str]]] = {}
        self._static: dict[str, dict[str, tuple[list[int], Any] | None]] = {}
        self._bindings: dict[tuple[Any, ...], _Binding] = {}
        self._keys: dict[str, list[str]] = {}
        self._lr: tuple[float, np.ndarray, Any] | None = None

    def _options(self) -> Any:
        so = self._ort.SessionOptions()
        level = self._ort.GraphOptimizationLevel
        so.graph_optimization_level = (level.ORT_ENABLE_ALL if self.graph_optimizations
                                       else level.ORT_DISABLE_ALL)
        so.log_severity_level = 3
        # onnxruntime's memory pattern plans one block per run sized for the whole step: on a
        # MobileNetV2 train step it held ~740 MiB beyond the step's live values (peak 1755 →
        # 1008 MiB without it) and the step was not slower (docs/benchmarks.md).
        so.enable_mem_pattern = False
        if self.threads:
            so.intra_op_num_threads = self.threads
        return so

    def _session(self, sig: str) -> tuple[Any, list[str], dict[str, str], list[str]]:
        if sig not in self._sessions:
            m, state_inputs, updates = fmt.standalone(self.model, self.meta, sig)
            so = self._options()
            for t in m.graph.initializer:
                if t.name in self._frozen:
                    so.add_initializer(t.name, self._frozen[t.name])
            sess = self._ort.InferenceSession(m.SerializeToString(), so,
                                              providers=self.providers)
            outs = [o.name for o in m.graph.output]
            self._sessions[sig] = (sess, state_inputs, updates, outs)
            self._keys[sig] = list(dict.fromkeys([*state_inputs, *updates]))
            self._static[sig] = {o.name: _static_shape(o) for o in m.graph.output}
        return self._sessions[sig]

    def _back_buffer(self, name: str) -> Any:
        buf = self._back.get(name)
        if buf is None:
            front = self._front[name]
            buf = self._ort.OrtValue.ortvalue_from_shape_and_type(
                front.shape(), _np_type(front.data_type()))
            self._back[name] = buf
        return buf

    def _binding(self, sig: str) -> _Binding:
        """The IOBinding of ``sig`` for the current front/back buffers, reused across steps.

        A step swaps the two state buffer sets, so a signature alternates between two
        bindings; each is built once, and afterwards a step binds only its data inputs and the
        outputs whose shape follows the batch (binding everything anew and wrapping every
        output cost about as much as a small step's arithmetic).
        """
        sess, state_inputs, updates, outs = self._session(sig)
        # Each state value has two buffers for good, so the front ones fix the binding.
        front = self._front
        key = (sig, *[id(front[k]) for k in self._keys[sig]])
        b = self._bindings.get(key)
        if b is None:
            for k in updates:
                self._back_buffer(k)
            io = sess.io_binding()
            for k in state_inputs:
                io.bind_ortvalue_input(k, self._front[k])
            produced = {out: k for k, out in updates.items()}
            fixed: dict[str, Any] = {}
            dynamic: list[str] = []
            for o in outs:
                if o in produced:
                    io.bind_ortvalue_output(o, self._back[produced[o]])
                elif (shape := self._static[sig][o]) is not None:
                    fixed[o] = self._ort.OrtValue.ortvalue_from_shape_and_type(shape[0],
                                                                               shape[1])
                    io.bind_ortvalue_output(o, fixed[o])
                else:
                    dynamic.append(o)
            b = _Binding(sess, io, fixed, dynamic, list(updates), len(outs) - len(dynamic),
                         self.step_name in updates)
            self._bindings[key] = b
        return b

    def run(self, sig: str, feeds: Mapping[str, np.ndarray], steps: int = 1
            ) -> tuple[dict[str, np.ndarray], bool]:
        b = self._binding(sig)
        io = b.io
        for k, v in feeds.items():
            if k == "lr" and v.ndim == 0:  # nearly always the same scalar: one OrtValue
                lr = self._lr
                if lr is None or lr[0] != v or lr[1].dtype != v.dtype:
                    arr = np.array(v)
                    lr = self._lr = (v.item(), arr, self._ort.OrtValue.ortvalue_from_numpy(arr))
                io.bind_ortvalue_input(k, lr[2])
            else:
                io.bind_cpu_input(k, v if v.flags.c_contiguous else np.ascontiguousarray(v))
        for o in b.dynamic:  # unallocated every time: their shapes follow the batch
            io.bind_output(o, "cpu")
        b.sess.run_with_iobinding(io)
        result = {o: v.numpy().copy() for o, v in b.fixed.items()}
        if b.dynamic:
            # Outputs come in binding order: the fixed ones first, then the dynamic ones.
            values = io.get_outputs()[b.n_fixed:]
            result.update((o, v.numpy()) for o, v in zip(b.dynamic, values))
        front, back = self._front, self._back
        step = self.step_name
        commit = not b.counted or fmt.committed(front[step].numpy(), back[step].numpy(), steps)
        if commit:
            for k in b.updated:
                front[k], back[k] = back[k], front[k]
        return result, commit

    def get_state(self) -> dict[str, np.ndarray]:
        return {k: v.numpy().copy() for k, v in self._front.items()}

    def read(self, name: str) -> np.ndarray:
        return np.array(self._front[name].numpy())

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        for k, v in state.items():
            front = self._front[k]
            want = _np_type(front.data_type())
            front.update_inplace(np.require(v, dtype=want, requirements="C"))


class _Binding(NamedTuple):
    sess: Any
    io: Any
    fixed: dict[str, Any]  # public outputs of static shape, bound to our own OrtValues
    dynamic: list[str]  # public outputs bound to the device afresh each step
    updated: list[str]  # state keys whose front and back buffers swap after a step
    n_fixed: int  # outputs bound once (state and fixed), which come first in get_outputs
    counted: bool  # the step counter is among the updates: commit only if it advanced


def _static_shape(vi: onnx.ValueInfoProto) -> tuple[list[int], Any] | None:
    """(shape, numpy type) of a graph output whose shape is fully known, else None."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape") or tt.elem_type not in _ONNX_NP:
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
    return None if any(d < 0 for d in dims) else (dims, _ONNX_NP[tt.elem_type])


_ONNX_NP: dict[int, Any] = {
    int(onnx.TensorProto.FLOAT): np.float32, int(onnx.TensorProto.DOUBLE): np.float64,
    int(onnx.TensorProto.INT64): np.int64, int(onnx.TensorProto.INT32): np.int32,
    int(onnx.TensorProto.BOOL): np.bool_, int(onnx.TensorProto.FLOAT16): np.float16}


def _np_type(ort_type: str) -> Any:
    table = {"tensor(float)": np.float32, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
             "tensor(float16)": np.float16, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}
    return table[ort_type]


BACKENDS: dict[str, type[Backend]] = {"onnxruntime": OrtBackend, "reference": ReferenceBackend}
