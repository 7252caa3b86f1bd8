"""What the backends on other native runtimes (IREE, OpenVINO, tract) share.

Each runs the standalone graphs of :func:`edgetrain.format.standalone` after the rewrites of
:mod:`._portable`, with the state as graph inputs and its new values as outputs, and follows the
commit rule of every driver: a step's new state is kept only when the step counter advanced
(the step graph counts a step only when its loss, rate and gradients are finite). A subclass
says how to turn a graph into a callable and how to turn that callable's outputs into NumPy;
state values stay in the runtime's own form between steps where it has one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import onnx

from .. import format as fmt
from ..errors import BackendError
from ._backends import Backend
from ._portable import portable, specialize
from ._unroll import unroll_steps

Runner = Callable[[Sequence[Any]], Sequence[Any]]


class _Session(NamedTuple):
    run: Runner
    inputs: list[str]  # graph inputs in order: data inputs and state inputs
    state_inputs: list[str]
    updates: dict[str, str]  # state name → output holding its new value
    outputs: list[str]


class NativeBackend(Backend):
    """A backend that compiles each signature's graph for a runtime other than onnxruntime."""

    #: ``train_steps`` runs as its Scan unrolled for the K of the call (:mod:`._unroll`):
    #: IREE lowers no Scan, and the portable rewrites do not reach into a Scan body.
    multi_step = True
    unrolls_steps = True
    #: Fewer than onnxruntime's 32: the unrolled graph's build time grows with K (IREE, W3:
    #: 2 s for one step, 6 s for 16, 14 s for 32; cached after the first).
    steps_per_call = 16
    #: Python modules the runtime needs, and the extra that installs them.
    requires: tuple[str, ...] = ()
    extra = ""

    def __init__(self, model: onnx.ModelProto, meta: fmt.Metadata) -> None:
        super().__init__(model, meta)
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise BackendError(f"backend {self.name!r} needs the Python module(s) {missing}: "
                               f"pip install 'edgetrain[{self.extra}]'")
        self._state: dict[str, Any] = {k: np.array(v) for k, v in
                                       fmt.initial_state(model, meta).items()}
        self._dtypes = {k: v.dtype for k, v in self._state.items()}
        self._sessions: dict[tuple[Any, ...], _Session] = {}
        self._needs_static: set[str] = set()

    # -- what a runtime provides -----------------------------------------------------------
    def compile(self, sig: str, graph: onnx.ModelProto) -> Runner:
        """A callable that takes the graph's inputs in order and returns its outputs."""
        raise NotImplementedError

    def to_numpy(self, value: Any) -> np.ndarray:
        """A runtime value (an output kept as state) as a NumPy array."""
        return np.asarray(value)

    # -- shared ----------------------------------------------------------------------------
    #: MaxPool's Indices count within each (n, c) plane on this runtime (see _portable).
    plane_indices = False
    #: Batch norms with computed statistics become arithmetic (see _portable).
    decompose_bn = False
    #: How graphs meet the runtime's demands on shapes: "dynamic" builds each signature once;
    #: "static" builds it per set of input shapes, with the shape arithmetic folded
    #: (:func:`._portable.specialize`); "fallback" builds it once and per shape only when the
    #: runtime refused the dynamic graph.
    shapes = "dynamic"

    def graph(self, sig: str, static: Mapping[str, Sequence[int]] | None = None,
              steps: int | None = None) -> tuple[onnx.ModelProto, list[str], dict[str, str]]:
        """The standalone graph of ``sig`` in the portable form the runtime is given (a
        multi-step signature with its Scan unrolled for ``steps`` steps)."""
        m, state_inputs, updates = fmt.standalone(self.model, self.meta, sig)
        if steps is not None:
            m = unroll_steps(m, steps)
        m = portable(m, plane_indices=self.plane_indices, decompose_bn=self.decompose_bn)
        if static is not None:
            m = specialize(m, static)
        m.graph.name = f"sig_{''.join(c if c.isalnum() else '_' for c in sig)}"
        return m, state_inputs, updates

    def _session(self, sig: str, feeds: Mapping[str, np.ndarray]) -> _Session:
        static = self.shapes == "static" or (self.shapes == "fallback"
                                             and sig in self._needs_static)
        steps = self._unrolled_steps(sig, feeds)
        key = (sig, tuple((k, v.shape) for k, v in feeds.items()) if static else (), steps)
        s = self._sessions.get(key)
        if s is not None:
            return s
        try:
            s = self._build(sig, {k: v.shape for k, v in feeds.items()} if static else None,
                            steps)
        except BackendError:
            if static or self.shapes != "fallback":
                raise
            self._needs_static.add(sig)
            return self._session(sig, feeds)
        self._sessions[key] = s
        return s

    def _unrolled_steps(self, sig: str, feeds: Mapping[str, np.ndarray]) -> int | None:
        """K of a multi-step call (its rate is a vector, one per step), else None."""
        spec = self.meta.signatures[sig]
        lr = next((s.name for s in spec.inputs if s.role == "lr"), None)
        rate = feeds.get(lr) if lr is not None else None
        return int(rate.shape[0]) if rate is not None and rate.ndim == 1 else None

    def _build(self, sig: str, static: Mapping[str, Sequence[int]] | None,
               steps: int | None = None) -> _Session:
        m, state_inputs, updates = self.graph(sig, static, steps)
        try:
            run = self.compile(sig, m)
        except BackendError:
            raise
        except Exception as e:  # the runtime refused the graph: name it and the signature
            raise BackendError(f"{self.name} cannot build signature {sig!r}: "
                               f"{_gist(e)}") from e
        return _Session(run, [i.name for i in m.graph.input], state_inputs, updates,
                        [o.name for o in m.graph.output])

    def run(self, sig: str, feeds: Mapping[str, np.ndarray], steps: int = 1
            ) -> tuple[dict[str, np.ndarray], bool]:
        s = self._session(sig, feeds)
        state = self._state
        args = [feeds[k] if k in feeds else state[k] for k in s.inputs]
        try:
            values = s.run(args)
        except Exception:
            # A dynamic module whose shape checks fail at run time (IREE's Expand on a
            # broadcast it could not prove): build it for these shapes and run that instead.
            if self.shapes != "fallback" or sig in self._needs_static:
                raise
            self._needs_static.add(sig)
            s = self._session(sig, feeds)
            values = s.run(args)
        results = dict(zip(s.outputs, values))
        step_out = s.updates.get(self.step_name)
        commit = step_out is None or fmt.committed(self.to_numpy(state[self.step_name]),
                                                   self.to_numpy(results[step_out]), steps)
        if commit:
            for k, out in s.updates.items():
                state[k] = results[out]
        produced = set(s.updates.values())
        return {k: np.array(self.to_numpy(v)) for k, v in results.items()
                if k not in produced}, commit

    def get_state(self) -> dict[str, np.ndarray]:
        return {k: np.array(self.to_numpy(v)) for k, v in self._state.items()}

    def read(self, name: str) -> np.ndarray:
        return np.array(self.to_numpy(self._state[name]))

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        for k, v in state.items():
            self._state[k] = np.array(v, dtype=self._dtypes[k])


def _gist(e: Exception) -> str:
    """The informative lines of a runtime's multi-line error (not its source locations)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '", "Stack "))
              and not ln[:1].isdigit()]
    return " ".join(useful[:3])[:500] or type(e).__name__


def _lazy(module: str, cls: str) -> type[Backend]:
    """A backend class that imports its module (and so its runtime) only when constructed."""

    def make(model: onnx.ModelProto, meta: fmt.Metadata, **options: Any) -> Backend:
        import importlib

        backend: type[Backend] = getattr(importlib.import_module(module, __package__), cls)
        return backend(model, meta, **options)

    return make  # type: ignore[return-value]


NATIVE_BACKENDS: dict[str, type[Backend]] = {
    "iree": _lazy("._iree", "IreeBackend"),
    "openvino": _lazy("._openvino", "OpenVinoBackend"),
    "tract": _lazy("._tract", "TractBackend"),
}
