"""The epoch loop of ``fit``: steps, per-epoch evaluations, callbacks and the progress bar."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import InputError, NonFiniteError
from ..runtime import _check_lr
from ._feed import ArraySource, Batch, Grouped, StreamSource
from ._history import History
from .metrics import Metric

#: Least seconds between two redraws of the progress bar: a few per second on a terminal, and
#: a few hundred bytes, not one line per step, when the output goes to a file.
PROGRESS_INTERVAL = 0.5
#: Most bytes of batches (inputs and labels) that ``fit`` stacks into one ``train_steps``
#: call: a group of shuffled array batches is gathered into one of two such buffers.
STACK_BYTES = 8 << 20


class Loop:
    """One ``fit`` in progress, as callbacks see it.

    ``epoch`` counts from ``initial_epoch``; ``step`` counts this fit's steps from 0 and
    ``global_step`` the model's (its step counter when the fit began, plus ``step``).
    ``lr`` is the rate fed to every step (None: the file's own rate, ``base_lr``); set it
    with :meth:`set_lr`. ``stop_training`` ends the fit after the current epoch.

    Several steps per call: when the file has ``train_steps``, full-size batches of one shape
    run ``model.steps_per_call`` at a time in one call (one ONNX Scan; at most
    :data:`STACK_BYTES` of batches), with one rate per step. A backend that builds
    ``train_steps`` per K (the native runtimes unroll it) gets whole groups only: the
    batches that do not fill one run one per call. Callbacks keep their meaning:
    ``on_batch_begin`` runs for each step of a call before the call (a schedule's rate for
    each step fills the call's rate vector),
    ``on_batch_end`` for each committed step after it, in order, with that step's loss;
    epoch hooks (early stopping, checkpoints, plateaus, logs) at epoch ends as always. What
    a callback cannot see is the weights between the steps of one call, so a callback that
    overrides a batch hook runs ``fit`` one step per call unless it declares
    ``allows_multi_step = True`` (the schedules and the TensorBoard writer do). A step that
    fails inside a call keeps nothing of the call: the steps before it run again, the failing
    batch runs alone (raising, or skipped with ``on_nonfinite="skip"``), and the batches
    after it run next, with their rates asked for again.
    """

    def __init__(self, model: Any, source: ArraySource | StreamSource, *, epochs: int,
                 signatures: tuple[str, str, str], lr: float | None,
                 validation: ArraySource | StreamSource | None, callbacks: Sequence[Any],
                 metrics: Sequence[Metric], progress: bool | None, on_nonfinite: str,
                 seed: int, initial_epoch: int = 0) -> None:
        self.model, self.source, self.validation = model, source, validation
        self.train_sig, self.eval_sig, self.infer_sig = signatures
        self.epochs, self.initial_epoch, self.epoch = epochs, initial_epoch, initial_epoch
        self.callbacks, self.metrics = list(callbacks), list(metrics)
        self.on_nonfinite, self.progress = on_nonfinite, _wants_progress(progress)
        self.rng = np.random.default_rng(seed)
        self.label = model.input_name(self.train_sig, "label")
        self.lr_name = model.input_name(self.train_sig, "lr")
        spec = model._input_plan(model.signatures[self.train_sig])[self.lr_name]
        self.lr_dtype = spec.dtype
        self.base_lr = float(lr) if lr is not None else float(spec.default)
        self.lr: float | None = None if lr is None else float(lr)
        self.step, self.start_step = 0, model.step
        self.steps_per_call = self._steps_per_call()
        self._buffers: dict[tuple[Any, ...], np.ndarray] = {}  # see _stacked
        #: A backend that builds ``train_steps`` once per K (unrolled: the native runtimes)
        #: gets only whole groups of ``steps_per_call``; fewer batches run one per call.
        self.whole_groups = bool(getattr(getattr(model, "_backend", None), "unrolls_steps",
                                         False))
        if self.steps_per_call > 1:
            self.steps_label = model.input_name("train_steps", "label")
            self.steps_lr = model.input_name("train_steps", "lr")
            self.steps_loss = model._loss_output("train_steps")
        self.steps_per_epoch = source.steps
        self.stop_training = False
        self.history = History()
        self.notes: list[str] = self.history.notes
        self.evaluate_training = isinstance(source, ArraySource) and (
            bool(self.metrics) or "accuracy" in model._eval_outputs(self.eval_sig))
        self.metric_names = self._metric_names()

    def _steps_per_call(self) -> int:
        """K of the rule in the class docstring: the model's ``steps_per_call`` when the file
        has ``train_steps`` and every callback allows it, else 1."""
        k = getattr(self.model, "steps_per_call", 1)
        if k is None:
            k = getattr(getattr(self.model, "_backend", None), "steps_per_call", 1)
        k = int(k)
        if isinstance(self.source, ArraySource):
            k = min(k, STACK_BYTES // max(1, self.source.batch_bytes))
        if self.train_sig != "train" or not self.model.multi_step or k < 2:
            return 1
        return k if all(multi_step_allowed(cb) for cb in self.callbacks) else 1

    @property
    def global_step(self) -> int:
        return int(self.start_step + self.step)

    @property
    def current_lr(self) -> float:
        return self.base_lr if self.lr is None else self.lr

    def set_lr(self, value: float) -> None:
        """The rate of the following steps: finite and ≥ 0, in the step's dtype."""
        with np.errstate(over="ignore"):
            arr = np.asarray(value, dtype=self.lr_dtype)
        _check_lr(arr, "learning-rate schedule", True)
        self.lr = float(arr)

    def _metric_names(self) -> list[str]:
        evaluated = [k for k in self.model._eval_outputs(self.eval_sig) if k != "loss"]
        hosted = [m.name for m in self.metrics]
        names = ["loss"]
        if self.evaluate_training:
            names += evaluated + hosted
        if self.validation is not None:
            names += [f"val_{k}" for k in ["loss", *evaluated, *hosted]]
        return names

    def run(self) -> History:
        hist, t0 = self.history, time.perf_counter()
        bar = _bar(self.steps_per_epoch * self.epochs if self.steps_per_epoch else None,
                   self.progress)
        logs: dict[str, float] = {}
        for cb in self.callbacks:
            cb.set_loop(self)
        try:
            self._each("on_train_begin", {})
            for e in range(self.epochs):
                self.epoch = self.initial_epoch + e
                t_epoch = time.perf_counter()
                self._each("on_epoch_begin", self.epoch)
                logs = self._epoch_logs(self._train_epoch(bar))
                self._each("on_epoch_end", self.epoch, logs)
                for k, v in logs.items():
                    hist.add(k, v)
                hist.epoch_seconds.append(time.perf_counter() - t_epoch)
                if self.stop_training or getattr(self.source, "exhausted", False):
                    if self.stop_training and e + 1 < self.epochs:
                        hist.stopped_epoch = self.epoch
                    break
        finally:
            if bar is not None:
                bar.close()
            self._each("on_train_end", logs)
        hist.seconds = time.perf_counter() - t0
        return hist

    def _each(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def _train_epoch(self, bar: Any) -> float:
        """Mean loss of the epoch's committed steps, weighted by batch size."""
        losses: list[float] = []
        weights: list[int] = []
        pending: list[Batch] = []
        batches = self.source.batches(self.rng, self.steps_per_call) \
            if isinstance(self.source, ArraySource) else self.source.batches(self.rng)
        while True:
            chunk = self._next_chunk(batches, pending)
            if not chunk:
                break
            rates = []
            for j in range(len(chunk)):
                self._each("on_batch_begin", self.step + j)
                rates.append(self.current_lr)
            results = self._run(chunk, rates)
            if len(results) < len(chunk):  # a step of the call failed: the rest go again
                pending[:0] = [_copied(b) for b in chunk[len(results):]]
            for (_, y), loss in zip(chunk, results):
                if loss is None:
                    self.history.skipped_steps += 1
                    continue
                assert y is not None
                losses.append(loss)
                weights.append(len(y))
                self.step += 1
                self._each("on_batch_end", self.step - 1, {"loss": loss})
            if bar is not None:
                bar.update(len(results))
                if losses:
                    bar.set_postfix(epoch=self.epoch + 1, loss=f"{losses[-1]:.4f}",
                                    refresh=False)
        if not losses and isinstance(self.source, StreamSource) and self.step == 0 \
                and not self.history.skipped_steps:
            raise InputError("the training data yielded no batches")
        return float(np.average(losses, weights=weights)) if losses else math.nan

    def _next_chunk(self, batches: Iterator[Batch], pending: list[Batch]) -> list[Batch]:
        """The batches of the next call: up to ``steps_per_call`` in a row of one shape (the
        stacked input of ``train_steps``), or one."""
        chunk: list[Batch] = []
        while len(chunk) < self.steps_per_call:
            if not pending:
                item = next(batches, None)
                if item is None:
                    break
                pending.append(item)
            if chunk and (not _same_shapes(chunk[0], pending[0])
                          or (len(chunk) + 1) * _nbytes(chunk[0]) > STACK_BYTES):
                break
            chunk.append(pending.pop(0))
        return chunk

    def _run(self, chunk: list[Batch], rates: list[float]) -> list[float | None]:
        """The losses of the first steps of ``chunk`` (None: a skipped step); all of them
        unless a step of a ``train_steps`` call failed, in which case the steps before it ran
        again in one call and the failing batch ran alone, as :meth:`_single` runs it, and
        the result stops there (the caller runs the rest with their rates recomputed)."""
        if len(chunk) == 1 or (self.whole_groups and len(chunk) < self.steps_per_call):
            return self._singles(chunk, rates)
        stacked = self._stacked(chunk)
        stacked[self.steps_lr] = np.asarray(rates, dtype=self.lr_dtype)
        try:
            out = self.model.run("train_steps", **stacked)
        except (NonFiniteError, InputError) as e:
            done = getattr(e, "completed_steps", 0)
            head = self._run(chunk[:done], rates[:done]) if done else []
            if len(head) < done:  # the re-run failed sooner (a nondeterministic backend)
                return head
            return head + [self._single(chunk[done], rates[done])]
        return [float(v) for v in np.asarray(out[self.steps_loss]).reshape(-1)]

    def _stacked(self, chunk: list[Batch]) -> dict[str, np.ndarray]:
        """The inputs of ``train_steps`` for ``chunk``: the batches' own stack when they are
        consecutive rows of one group (:class:`Grouped`), else copied into buffers kept for
        the next call of the same shape (a fresh array costs a page fault per 4 KiB)."""
        first = chunk[0][0]
        if isinstance(first, Grouped) and first.labels is not None and all(
                isinstance(xs, Grouped) and xs.stacked is first.stacked
                and xs.index == first.index + j for j, (xs, _) in enumerate(chunk)):
            rows = slice(first.index, first.index + len(chunk))
            return {**{k: v[rows] for k, v in first.stacked.items()},
                    self.steps_label: first.labels[rows]}
        arrays = {k: [xs[k] for xs, _ in chunk] for k in first}
        arrays[self.steps_label] = [y for _, y in chunk]  # type: ignore[misc]
        out = {}
        for k, parts in arrays.items():
            shape = (len(parts), *parts[0].shape)
            buf = self._buffers.get((k, shape))
            if buf is None or buf.dtype != parts[0].dtype:
                buf = self._buffers[k, shape] = np.empty(shape, parts[0].dtype)
            out[k] = np.stack(parts, out=buf)
        return out

    def _singles(self, chunk: list[Batch], rates: list[float]) -> list[float | None]:
        """``chunk`` one ``train`` call per batch, up to a skipped one (the batches after it
        go again, with their rates asked for again, as after a failed call)."""
        out: list[float | None] = []
        for batch, rate in zip(chunk, rates):
            out.append(self._single(batch, rate))
            if out[-1] is None:
                break
        return out

    def _single(self, batch: Batch, rate: float) -> float | None:
        """One ``train`` step; a non-finite one raises, or is skipped (None)."""
        xs, y = batch
        feeds = {**xs, self.label: y}
        feeds[self.lr_name] = np.asarray(rate, dtype=self.lr_dtype)
        try:
            out = self.model.run(self.train_sig, **feeds)
        except NonFiniteError:
            if self.on_nonfinite == "raise":
                raise
            return None
        return float(out[self.model._loss_output(self.train_sig)])

    def _epoch_logs(self, loss: float) -> dict[str, float]:
        logs = {"loss": loss}
        sigs = (self.eval_sig, self.infer_sig)
        if self.evaluate_training:
            assert isinstance(self.source, ArraySource)
            found = self.model._evaluate_batches(self.source.batches(), sigs, self.metrics)
            logs.update((k, v) for k, v in found.items() if k != "loss")
        if self.validation is not None:
            found = self.model._evaluate_batches(self.validation.batches(), sigs, self.metrics)
            logs.update((f"val_{k}", v) for k, v in found.items())
        return logs


def _nbytes(batch: Batch) -> int:
    xs, y = batch
    return sum(v.nbytes for v in xs.values()) + (0 if y is None else y.nbytes)


def _copied(batch: Batch) -> Batch:
    """A batch that outlives the buffers its arrays may view (:meth:`ArraySource.batches`)."""
    xs, y = batch
    return {k: np.array(v) for k, v in xs.items()}, None if y is None else np.array(y)


def _same_shapes(a: Batch, b: Batch) -> bool:
    """Whether two batches stack into one ``train_steps`` input (every array alike)."""
    if a[0].keys() != b[0].keys() or a[1] is None or b[1] is None:
        return False
    return a[1].shape == b[1].shape and all(
        v.shape == b[0][k].shape and v.dtype == b[0][k].dtype for k, v in a[0].items())


def multi_step_allowed(callback: Any) -> bool:
    """Whether ``callback`` lets ``fit`` run several steps per call (see :class:`Loop`)."""
    declared = getattr(callback, "allows_multi_step", None)
    if declared is not None:
        return bool(declared)
    from ..callbacks import Callback

    cls = type(callback)
    return all(getattr(cls, hook, None) is getattr(Callback, hook)
               for hook in ("on_batch_begin", "on_batch_end"))


def _wants_progress(progress: bool | None) -> bool:
    """``None``: a bar only on a terminal (a log file gets none); True or False: as told."""
    if progress is None:
        stream = sys.stderr
        return bool(getattr(stream, "isatty", lambda: False)())
    return bool(progress)


def _bar(total: int | None, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but a device build may strip it
        return None
    return tqdm(total=total, unit="step", leave=False, dynamic_ncols=True,
                mininterval=PROGRESS_INTERVAL)
