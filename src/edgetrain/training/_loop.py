"""The epoch loop of ``fit``: steps, per-epoch evaluations, callbacks and the progress bar."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError, NonFiniteError
from ..runtime import _check_lr
from ._feed import ArraySource, StreamSource
from ._history import History
from .metrics import Metric

#: Least seconds between two redraws of the progress bar: a few per second on a terminal, and
#: a few hundred bytes, not one line per step, when the output goes to a file.
PROGRESS_INTERVAL = 0.5


class Loop:
    """One ``fit`` in progress, as callbacks see it.

    ``epoch`` counts from ``initial_epoch``; ``step`` counts this fit's steps from 0 and
    ``global_step`` the model's (its step counter when the fit began, plus ``step``).
    ``lr`` is the rate fed to every step (None: the file's own rate, ``base_lr``); set it
    with :meth:`set_lr`. ``stop_training`` ends the fit after the current epoch.
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
        self.steps_per_epoch = source.steps
        self.stop_training = False
        self.history = History()
        self.notes: list[str] = self.history.notes
        self.evaluate_training = isinstance(source, ArraySource) and (
            bool(self.metrics) or "accuracy" in model._eval_outputs(self.eval_sig))
        self.metric_names = self._metric_names()

    @property
    def global_step(self) -> int:
        return self.start_step + self.step

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
        losses, weights = [], []
        for xs, y in self.source.batches(self.rng):
            self._each("on_batch_begin", self.step)
            feeds = {**xs, self.label: y}
            if self.lr is not None:
                feeds[self.lr_name] = np.asarray(self.lr, dtype=self.lr_dtype)
            try:
                out = self.model.run(self.train_sig, **feeds)
            except NonFiniteError:
                if self.on_nonfinite == "raise":
                    raise
                self.history.skipped_steps += 1
                continue
            finally:
                if bar is not None:
                    bar.update(1)
            loss = float(out[self.model._loss_output(self.train_sig)])
            assert y is not None
            losses.append(loss)
            weights.append(len(y))
            self.step += 1
            self._each("on_batch_end", self.step - 1, {"loss": loss})
            if bar is not None:
                bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.4f}", refresh=False)
        if not losses and isinstance(self.source, StreamSource) and self.step == 0 \
                and not self.history.skipped_steps:
            raise InputError("the training data yielded no batches")
        return float(np.average(losses, weights=weights)) if losses else math.nan

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
