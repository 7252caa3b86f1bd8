"""The on-device runtime: load a trainable file, call its signatures by name."""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

from .. import format as fmt
from .._casting import DataConversionWarning, conform, to_numpy
from ..errors import BackendError, EdgetrainError, FormatError, InputError, NonFiniteError
from ..format import _integrity as _ckpt
from ..format import validate
from ._backends import BACKENDS, Backend
from ._native import NATIVE_BACKENDS

BACKENDS.update(NATIVE_BACKENDS)  # iree, openvino, tract: each imports its runtime when used

__all__ = ["Model", "Signature", "load"]


@dataclass(frozen=True)
class Signature:
    """A named entry point: its inputs and outputs (name, dtype, shape, role)."""

    name: str
    kind: str
    inputs: tuple[fmt.TensorSpec, ...]
    outputs: tuple[fmt.TensorSpec, ...]
    updates: tuple[str, ...] = ()

    def __repr__(self) -> str:
        def fmt_io(specs: tuple[fmt.TensorSpec, ...]) -> str:
            return ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in specs)

        return f"{self.name}({fmt_io(self.inputs)}) -> ({fmt_io(self.outputs)})"

    def role(self, role: str) -> str | None:
        """The name of the first input, else output, that plays ``role``."""
        return self.input(role) or self.output(role)

    def input(self, role: str) -> str | None:
        """The name of the first input that plays ``role``."""
        return next((s.name for s in self.inputs if s.role == role), None)

    def output(self, role: str) -> str | None:
        """The name of the first output that plays ``role``."""
        return next((s.name for s in self.outputs if s.role == role), None)


class _InputSpec(NamedTuple):
    dtype: np.dtype
    shape: list[Any]
    optional: bool
    default: np.ndarray | None
    role: str | None = None


def _training_start(proto: onnx.ModelProto, meta: fmt.Metadata, weights: set[str]
                    ) -> dict[str, np.ndarray | tuple[tuple[int, ...], np.dtype[Any]]]:
    """The training-only state as the file starts it (what a weights-only restore starts
    afresh): zeros, the usual start of optimizer slots and the step, kept as a shape."""
    out: dict[str, np.ndarray | tuple[tuple[int, ...], np.dtype[Any]]] = {}
    variable = meta.variables
    for t in fmt.stored_tensors(proto, meta):
        if t.name in variable and t.name not in weights:
            a = numpy_helper.to_array(t)
            out[t.name] = (a.shape, a.dtype) if not a.any() else a
    return out


class Model:
    """A loaded trainable file. ``run(name, **inputs)`` calls a signature.

    ``proto`` is the file as parsed. Loaded from a path or bytes, its state tensors (the
    trainables, optimizer state and step counter) keep their names, types and shapes but not
    their values, which the backend holds (:meth:`state`): a device holds the weights once
    for the file and twice for the step (current and next), not three times.
    """

    def __init__(self, model: onnx.ModelProto | str | os.PathLike[str] | bytes,
                 backend: str = "onnxruntime", **backend_options: Any) -> None:
        proto = fmt.load_model(model if not isinstance(model, os.PathLike) else os.fspath(model))
        self.meta = fmt.read_metadata(proto)
        validate(proto, self.meta)  # untrusted file: everything it declares is checked first
        self.proto = proto
        if backend not in BACKENDS:
            raise EdgetrainError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
        self.backend_name = backend
        try:
            self._backend: Backend = BACKENDS[backend](proto, self.meta, **backend_options)
        except EdgetrainError:
            raise
        except Exception as e:  # a backend refusing the graphs: the file is at fault
            raise FormatError(f"the {backend} backend cannot load this file: "
                              f"{_first_line(e)}") from e
        self._start = _training_start(proto, self.meta, set(self.weight_names()))
        if not isinstance(model, onnx.ModelProto):
            # The backend holds the state's values; the parsed file keeps the rest, so the
            # weights are not held twice (a caller's ModelProto is theirs, and shared as is).
            self.proto = fmt.without_state_values(proto, self.meta)
            self._backend.model = self.proto
        self._lock = threading.RLock()
        self._identity: fmt.Identity | None = None
        self._plans: dict[str, dict[str, _InputSpec]] = {}
        self._conversions: set[str] = set()  # casting-policy conversions already reported
        self._sigs = {name: Signature(name, spec.kind, spec.inputs, spec.outputs,
                                      tuple(spec.updates))
                      for name, spec in self.meta.signatures.items()}

    # -- introspection ---------------------------------------------------------------------
    @property
    def signatures(self) -> dict[str, Signature]:
        """The file's signatures by name (``train``, ``train_steps``, ``infer``, ``eval``,
        ``save``, ``restore``, …), each with its inputs and outputs."""
        return dict(self._sigs)

    def input_name(self, signature: str, role: str) -> str:
        """The name of ``signature``'s input that plays ``role`` (``"label"``, ``"lr"``,
        ``"features"``): the compiler picks names clear of the model's own, so drivers look
        them up by role (a format version 1 file's roles are derived when it is read)."""
        sig = self._sigs.get(signature)
        if sig is None:
            raise InputError(f"unknown signature {signature!r}; this model has "
                             f"{sorted(self._sigs)}")
        for s in sig.inputs:
            if s.role == role:
                return s.name
        raise InputError(f"signature {signature!r} has no {role} input")

    @property
    def trainable(self) -> list[str]:
        """Names of the weights the training step updates (LoRA: the adapters)."""
        return list(self.meta.trainable)

    def parameters(self) -> dict[str, np.ndarray]:
        """Current trainable values (copies)."""
        with self._lock:
            state = self._backend.get_state()
        return {k: state[k] for k in self.meta.trainable}

    def weight_names(self) -> list[str]:
        """The trainable tensors and the state the inference graph reads (batch-norm running
        statistics in training mode): what the network computes with, without the optimizer's
        slots and step count. A weights-only restore and :meth:`set_parameters` take these."""
        if not hasattr(self, "_weight_names"):
            reads = fmt.graph_reads(self.proto.graph)
            self._weight_names = [*self.meta.trainable,
                                  *(s for s in self.meta.state if s in reads)]
        return list(self._weight_names)

    def weights(self) -> dict[str, np.ndarray]:
        """Current values of :meth:`weight_names` (copies)."""
        with self._lock:
            state = self._backend.get_state()
        return {k: state[k] for k in self.weight_names()}

    def set_parameters(self, params: Mapping[str, Any], strict: bool = True) -> None:
        """Replace trainable values (e.g. from a federated server); shapes and dtypes must match.

        Batch-norm running statistics (see :meth:`weight_names`) may be given too. With
        ``strict`` every trainable must be given. Nothing changes if any value is refused.
        """
        with self._lock:
            current = self._backend.get_state()
            trainable = set(self.meta.trainable)
            unknown = sorted(set(params) - set(self.weight_names()))
            if unknown:
                raise InputError(f"set_parameters: not trainable parameters of this model: "
                                 f"{unknown[:5]}")
            missing = sorted(trainable - set(params))
            if strict and missing:
                raise InputError(f"set_parameters: missing parameters {missing[:5]}")
            new = {}
            for k, v in params.items():
                arr = np.asarray(v)
                want = current[k]
                if arr.shape != want.shape or arr.dtype != want.dtype:
                    raise InputError(f"set_parameters: {k!r} is {arr.dtype}{list(arr.shape)}, "
                                     f"expected {want.dtype}{list(want.shape)}")
                if arr.dtype.kind == "f" and not _all_finite(arr):
                    raise InputError(f"set_parameters: {k!r} contains NaN or infinity")
                if k not in trainable and k in self.identity.nonnegative and arr.size \
                        and float(arr.min()) < 0:
                    raise InputError(f"set_parameters: {k!r} is a running variance and "
                                     "cannot be negative")
                new[k] = arr
            self._backend.set_state(new)

    def state(self) -> dict[str, np.ndarray]:
        """Everything a checkpoint holds: parameters, optimizer state, step (copies)."""
        with self._lock:
            return self._backend.get_state()

    @property
    def multi_step(self) -> bool:
        """Whether :meth:`run` can run ``train_steps`` on this backend (every backend can:
        onnxruntime and onnx.reference run its Scan, the native runtimes its Scan unrolled
        for the call's K)."""
        return "train_steps" in self._sigs and self._backend.multi_step

    @property
    def step(self) -> int:
        """Training steps counted so far (a skipped step does not count); saved and restored
        with the checkpoint."""
        return int(self.state()[self.meta.step])

    # -- calling ---------------------------------------------------------------------------
    def run(self, signature: str, **inputs: Any) -> dict[str, Any]:
        """Call a signature by name with its inputs as keyword arguments."""
        sig = self._sigs.get(signature)
        if sig is None:
            raise InputError(f"unknown signature {signature!r}; this model has "
                             f"{sorted(self._sigs)}")
        if sig.kind == "builtin":
            return self._builtin(sig, inputs)
        if signature == "train_steps" and not self._backend.multi_step:
            raise BackendError(f"train_steps: the {self.backend_name} backend runs one step per "
                               "call; call train (fit does so on this backend)")
        feeds = self._check_inputs(sig, inputs)
        steps = self._steps(sig, feeds)
        # The step graph counts only a step whose loss, rate and every new state value (weights,
        # optimizer slots, running statistics) are finite, and the backend commits the new
        # state only when the count advanced by the number of steps run: a skipped step leaves
        # every weight as it was, even when only the update overflowed.
        with self._lock:
            try:
                out, committed = self._backend.run(signature, feeds, steps)
            except EdgetrainError:
                raise
            except Exception as e:  # the backend refused the graph or the data
                raise EdgetrainError(f"{signature}: the {self.backend_name} backend failed: "
                                     f"{_first_line(e)}") from e
        if committed:
            return out
        raise self._failure(sig, feeds, out, steps)

    def _steps(self, sig: Signature, feeds: Mapping[str, np.ndarray]) -> int:
        """How many training steps one call of ``sig`` runs: the length of its rate input when
        that is a vector (``train_steps``: one rate per step), else one."""
        lr = sig.input("lr")
        value = feeds.get(lr) if lr is not None else None
        return int(value.shape[0]) if value is not None and value.ndim == 1 else 1

    def _failure(self, sig: Signature, feeds: Mapping[str, np.ndarray],
                 out: Mapping[str, np.ndarray], steps: int) -> EdgetrainError:
        """The error of a call whose steps did not all count (nothing was committed)."""
        loss_name = sig.output("loss") or "loss"
        losses = np.asarray(out.get(loss_name, np.full(1, np.nan))).reshape(-1)
        done = max(len(losses) - 1, 0)  # the losses stop at the step that did not count
        where = f" (step {done + 1} of {steps}; no step of this call was kept)" \
            if steps > 1 else ""
        for name, arr in feeds.items():  # name the culprit when it was the data
            if arr.dtype.kind == "f" and not _all_finite(arr[done] if steps > 1 else arr):
                return InputError(f"{sig.name}: input {name!r} contains NaN or infinity{where}; "
                                  "the weights are unchanged", completed_steps=done)
        loss = float(losses[-1]) if len(losses) else math.nan
        if not math.isfinite(loss):
            return NonFiniteError(f"{sig.name}: the loss is {loss}{where}; the step was skipped "
                                  "and the weights are unchanged", completed_steps=done)
        return NonFiniteError(f"{sig.name}: the gradients or the updated weights or optimizer "
                              f"state are not finite (loss {loss}){where}; the step was "
                              "skipped and the weights are unchanged", completed_steps=done)

    def _builtin(self, sig: Signature, inputs: Mapping[str, Any]) -> dict[str, Any]:
        allowed = {"checkpoint_path", "key"} | ({"parts"} if sig.name == "restore" else set())
        unknown = set(inputs) - allowed
        if unknown or "checkpoint_path" not in inputs:
            raise InputError(f"{sig.name} takes checkpoint_path and optionally "
                             f"{' and '.join(sorted(allowed - {'checkpoint_path'}))}; got "
                             f"{sorted(inputs)}")
        path = os.fspath(inputs["checkpoint_path"])
        key = inputs.get("key")
        if key is not None:
            key = _ckpt.key_bytes(key)
        if sig.name == "save":
            with self._lock:
                state = self._backend.get_state()
            fmt.save_checkpoint(path, self.meta, state, identity=self.identity, key=key)
        elif sig.name == "restore":
            self._restore(path, key, inputs.get("parts"))
        else:
            raise EdgetrainError(f"unknown builtin signature {sig.name!r}")
        return {"checkpoint_path": path}

    def _restore(self, path: str, key: bytes | None, parts: Any) -> None:
        """A full restore, or (``parts=("weights",)``) the weights alone with the optimizer
        state (slots, step count) started afresh: verified in full before anything changes."""
        parts = _parts(parts)
        with self._lock:
            current = self._backend.get_state()
            if parts == ("weights",):
                frozen_names = set(self.meta.frozen)
                frozen = {t.name: t for t in self.proto.graph.initializer
                          if t.name in frozen_names}
                expected = {k: current[k] for k in self.weight_names()}
                loaded = fmt.load_checkpoint(path, self.meta, expected, identity=self.identity,
                                             key=key, parts=parts, frozen=frozen)
                fresh = {k: np.zeros(*v) if isinstance(v, tuple) else v.copy()
                         for k, v in self._start.items()}
                loaded = {**{k: v for k, v in fresh.items() if k not in expected}, **loaded}
            else:
                loaded = fmt.load_checkpoint(path, self.meta, current, identity=self.identity,
                                             key=key)
            self._backend.set_state(loaded)

    @property
    def identity(self) -> fmt.Identity:
        """The model's architecture hash and value constraints that checkpoints must match."""
        if self._identity is None:
            self._identity = fmt.identify(self.proto, self.meta)
        return self._identity

    def save(self, checkpoint_path: str | os.PathLike[str], *, key: bytes | None = None) -> str:
        """Write a checkpoint (atomic). With ``key`` (≥ 16 random bytes) it carries an
        HMAC-SHA256 that :meth:`restore` with the same key requires (see docs/format.md)."""
        keyed = {} if key is None else {"key": key}
        return str(self.run("save", checkpoint_path=checkpoint_path, **keyed)["checkpoint_path"])

    def restore(self, checkpoint_path: str | os.PathLike[str], *,
                key: bytes | None = None, parts: tuple[str, ...] | None = None) -> str:
        """Load a checkpoint, verified in full first; on any failure the state is unchanged.

        Without ``key`` the checksum proves integrity only (anyone can write a valid file);
        with ``key`` a checkpoint without a valid MAC made with that key is refused.
        ``parts=("weights",)`` restores only the weights (:meth:`weight_names`) and starts the
        optimizer afresh: the checkpoint may come from the same network trained with another
        optimizer or other trainable weights (a weight this model keeps frozen must hold its
        frozen value). The default restores everything, from this very model's checkpoints.
        """
        extra: dict[str, Any] = {} if key is None else {"key": key}
        if parts is not None:
            extra["parts"] = parts
        return str(self.run("restore", checkpoint_path=checkpoint_path, **extra)
                   ["checkpoint_path"])

    def _input_plan(self, sig: Signature) -> dict[str, _InputSpec]:
        """The input specs of ``sig`` parsed once (a step pays for checks, not for parsing)."""
        plan = self._plans.get(sig.name)
        if plan is None:
            plan = {}
            for s in sig.inputs:
                dtype = np.dtype(s.dtype)
                default = np.asarray(s.default, dtype=dtype) if s.optional else None
                plan[s.name] = _InputSpec(dtype, list(s.shape), s.optional, default, s.role)
            self._plans[sig.name] = plan
        return plan

    def _check_inputs(self, sig: Signature, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        specs = self._input_plan(sig)
        unknown = [k for k in inputs if k not in specs]
        if unknown:
            raise InputError(f"{sig.name}: unknown input(s) {unknown}; expected "
                             f"{list(specs)}")
        feeds: dict[str, np.ndarray] = {}
        dims: dict[str, tuple[int, str]] = {}
        converted: list[str] = []
        for name, spec in specs.items():
            shape = spec.shape
            if name not in inputs:
                if spec.default is not None:
                    feeds[name] = spec.default
                    continue
                raise InputError(f"{sig.name}: missing input {name!r} "
                                 f"({spec.dtype}{shape})")
            value = inputs[name]
            if isinstance(value, np.ndarray) and value.dtype == spec.dtype \
                    and value.ndim == len(shape):
                arr = value
            else:
                arr = self._conform(sig.name, name, value, spec, converted)
            if arr.ndim != len(shape):
                raise InputError(f"{sig.name}: input {name!r} has shape {list(arr.shape)} "
                                 f"(rank {arr.ndim}), expected rank {len(shape)}: {shape}")
            for i, (d, want) in enumerate(zip(arr.shape, shape)):
                if isinstance(want, int) and want > 0 and d != want:
                    raise InputError(f"{sig.name}: input {name!r} has shape {list(arr.shape)}, "
                                     f"expected {shape} (dim {i} must be {want})")
                if isinstance(want, str):
                    if want in dims and dims[want][0] != d:
                        other = dims[want][1]
                        raise InputError(f"{sig.name}: input {name!r} dim {i} is {d} but "
                                         f"{other!r} has {dims[want][0]} for {want!r}")
                    dims.setdefault(want, (d, name))
            if arr.ndim and arr.shape[0] == 0:
                raise InputError(f"{sig.name}: input {name!r} is an empty batch")
            feeds[name] = arr
        self._report_conversions(sig.name, converted)
        lr = sig.input("lr")
        # The file's default too: a file may be hostile.
        if sig.updates and lr is not None and lr in feeds:
            _check_lr(feeds[lr], sig.name, lr in inputs, lr)
        if sig.updates or sig.name == "eval":  # defaults are valid: check what was given
            self._check_values(sig, {k: feeds[k] for k in inputs})
        return feeds

    def _conform(self, where: str, name: str, value: Any, spec: _InputSpec,
                 converted: list[str]) -> np.ndarray:
        """``value`` under the casting policy (``edgetrain._casting``); what was converted is
        added to ``converted``."""
        if spec.optional:  # the rate: any real scalar
            arr = to_numpy(value, f"{where}: input {name!r}")
            if arr.ndim == 0 and arr.dtype.kind in "fi":
                return arr.astype(spec.dtype)
        labels = self.meta.labels if spec.role == "label" \
            and self.meta.classification else None
        try:
            arr, notes = conform(value, spec.dtype, spec.shape, name, labels=labels)
        except InputError as e:
            raise InputError(f"{where}: {e}") from e
        converted.extend(notes)
        return arr

    def _report_conversions(self, where: str, notes: list[str]) -> None:
        """One warning per call naming the conversions not reported before: a loop over
        float64 batches warns once, not once per step."""
        new = [n for n in notes if n not in self._conversions]
        if new:
            self._conversions.update(new)
            warnings.warn(f"{where}: converted {', '.join(new)} (edgetrain's casting policy; "
                          "see the edgetrain.data documentation)", DataConversionWarning,
                          stacklevel=4)

    def _check_values(self, sig: Signature, feeds: Mapping[str, np.ndarray]) -> None:
        """Training data must be finite and labels in range: bad data must not reach weights.

        A training step's large inputs are not scanned here: non-finite data makes the step's
        loss or gradients non-finite, the step is not committed, and :meth:`run` then names
        the input (scanning a batch up front cost more than a tenth of a small model's step).
        """
        label = self.meta.label
        for name, arr in feeds.items():
            if arr.dtype.kind == "f" and (not sig.updates or arr.size <= _SCAN_UP_FRONT) \
                    and not _all_finite(arr):
                raise _nonfinite_input(sig, name, arr)
        y = feeds.get(label)
        if y is not None and y.size and self.meta.labels == "index" \
                and y.dtype.kind in "iu":
            n_classes = self._n_classes()
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or (n_classes is not None and hi >= n_classes):
                raise InputError(f"{sig.name}: labels in {label!r} must lie in "
                                 f"[0, {n_classes}); got min {lo}, max {hi}")

    def _n_classes(self) -> int | None:
        """The class count of the model output, if the file fixes it (cached)."""
        if not hasattr(self, "_classes"):
            out = next((o for o in self._sigs["infer"].outputs
                        if o.name == self.meta.output), None)
            n = out.shape[1] if out and len(out.shape) > 1 else None
            self._classes = n if isinstance(n, int) and n > 0 else None
        return self._classes

    # -- high level ------------------------------------------------------------------------
    def export(self, path: str | os.PathLike[str], merge_lora: bool = True) -> str:
        """A plain inference ONNX file with the current weights baked in (LoRA adapters merged
        into their weights unless ``merge_lora=False``)."""
        with self._lock:
            state = self._backend.get_state()
        return fmt.save_model(fmt.plain_inference(self.proto, self.meta, state, merge_lora),
                              path)

    def __repr__(self) -> str:
        return (f"Model(backend={self.backend_name!r}, signatures={sorted(self._sigs)}, "
                f"trainable={len(self.meta.trainable)})")


def _parts(parts: Any) -> tuple[str, ...]:
    """``restore``'s parts: ``("weights",)`` or everything (None, or both parts)."""
    if parts is None:
        return fmt.CHECKPOINT_PARTS
    if isinstance(parts, str):
        parts = (parts,)
    try:
        found = tuple(dict.fromkeys(str(p) for p in parts))
    except TypeError:
        found = ()
    if set(found) == {"weights"}:
        return ("weights",)
    if set(found) == set(fmt.CHECKPOINT_PARTS):
        return fmt.CHECKPOINT_PARTS
    raise InputError(f"restore: parts must be ('weights',) or {fmt.CHECKPOINT_PARTS}, got "
                     f"{parts!r}")


def _nonfinite_input(sig: Signature, name: str, arr: np.ndarray) -> InputError:
    """The error for non-finite data found before running; of a multi-step call, it names the
    first step whose batch holds it (the steps before it would have counted)."""
    spec = next((s for s in sig.inputs if s.name == name), None)
    if spec is None or not spec.shape or spec.shape[0] != "steps" or arr.ndim == 0:
        return InputError(f"{sig.name}: input {name!r} contains NaN or infinity")
    done = next(i for i in range(len(arr)) if not _all_finite(arr[i]))
    return InputError(f"{sig.name}: input {name!r} contains NaN or infinity (step {done + 1} of "
                      f"{len(arr)}; no step of this call was kept)", completed_steps=done)


def _first_line(e: BaseException) -> str:
    """A backend's message on one line (onnxruntime's span several, with C++ signatures)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:500]


#: Float inputs of a training step up to this size (rates, labels) are checked before it runs.
_SCAN_UP_FRONT = 4096


def _all_finite(arr: np.ndarray) -> bool:
    """Whether every element is finite, in one reduction without a temporary array.

    max − min is finite exactly when every element is, unless the range of finite values
    overflows; only then does it fall back to the element-wise test.
    """
    if arr.size == 1:
        return math.isfinite(float(arr.reshape(-1)[0]))
    if arr.size and arr.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            if math.isfinite(float(np.ptp(arr))):
                return True
    return bool(np.all(np.isfinite(arr)))


def _check_lr(lr: np.ndarray, where: str, given: bool, name: str = "lr") -> None:
    """A learning rate must be finite and nonnegative: a negative one ascends the loss, an
    infinite one writes infinite weights. ``train_steps`` takes one rate per step."""
    values = np.asarray(lr, dtype=np.float64).reshape(-1)
    bad: list[float] = [float(v) for v in values if not (math.isfinite(v) and v >= 0)]
    if values.size == 0:
        bad = [math.nan]
    if bad:
        source = "" if given else " (the model file's default)"
        raise InputError(f"{where}: the learning rate {name!r}{source} must be finite and ≥ 0, "
                         f"got {float(bad[0])}")


def load(model: onnx.ModelProto | str | os.PathLike[str] | bytes,
         backend: str = "onnxruntime", **backend_options: Any) -> Model:
    """Load a trainable file (path, bytes or ModelProto) on a backend."""
    return Model(model, backend=backend, **backend_options)
