"""Training-loop tools for :meth:`edgetrain.Model.fit`: stop early, keep the best checkpoint,
schedule the learning rate, log to CSV or TensorBoard.

    import edgetrain as et
    from edgetrain import callbacks as cb

    m.fit(x, y, epochs=50, validation_split=0.2, callbacks=[
        cb.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True),
        cb.ModelCheckpoint("best.safetensors", monitor="val_accuracy"),
        cb.LearningRateScheduler(cb.CosineDecay(warmup_steps=100)),
        cb.CSVLogger("training.csv"),
    ])

A callback sees the loop through ``self.loop`` (a :class:`edgetrain.training.Loop`): the model,
the epoch and step, ``lr`` — the rate fed to every training step through the step's ``lr``
input, which a schedule sets — and ``stop_training``. Each epoch's ``logs`` hold ``loss``, the
in-graph ``accuracy`` of classifiers, the metrics asked for, and ``val_``-prefixed values when
there is validation data. Schedules span one ``fit`` call (a resumed run starts them over).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from .errors import EdgetrainError

__all__ = [
    "CSVLogger",
    "Callback",
    "CosineDecay",
    "EarlyStopping",
    "LearningRateScheduler",
    "LinearWarmup",
    "ModelCheckpoint",
    "Progress",
    "ReduceLROnPlateau",
    "Schedule",
    "StepDecay",
    "TensorBoard",
    "schedule",
]

Logs = Mapping[str, float]


class Callback:
    """Base class: override the hooks you need; ``self.loop`` is set before training."""

    loop: Any = None
    #: Whether ``fit`` may run several steps per runtime call with this callback: its batch
    #: hooks then run for every step of a call before it (``on_batch_begin``) and after it
    #: (``on_batch_end``), not between the steps. None: allowed when the callback overrides
    #: neither batch hook (see :class:`edgetrain.training.Loop`).
    allows_multi_step: bool | None = None

    def set_loop(self, loop: Any) -> None:
        self.loop = loop

    def on_train_begin(self, logs: Logs) -> None:
        """Before the first step. Check here what the callback needs (a monitored metric)."""

    def on_epoch_begin(self, epoch: int) -> None:
        """``epoch`` counts from 0 (plus ``fit(initial_epoch=…)``)."""

    def on_batch_begin(self, step: int) -> None:
        """Before each training step; ``step`` counts the steps of this fit from 0."""

    def on_batch_end(self, step: int, logs: Logs) -> None:
        """After each committed step; ``logs["loss"]`` is its loss."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """After an epoch and its evaluations; ``logs`` may be extended (e.g. with ``lr``)."""

    def on_train_end(self, logs: Logs) -> None:
        """After the last epoch, also when training stopped early or failed."""


class _Monitor:
    """The best value of one logged metric, and whether a new one improves on it."""

    def __init__(self, owner: str, monitor: str, mode: str, min_delta: float) -> None:
        if mode not in ("auto", "min", "max"):
            raise EdgetrainError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":
            mode = "max" if any(w in monitor for w in ("acc", "f1", "precision", "recall")) \
                else "min"
        self.owner, self.monitor, self.mode = owner, monitor, mode
        self.min_delta = abs(float(min_delta))
        self.best = math.inf if mode == "min" else -math.inf

    def check(self, loop: Any) -> None:
        names = list(getattr(loop, "metric_names", []))
        if names and self.monitor not in names:
            hint = " (pass validation data: validation_split or validation_data)" \
                if self.monitor.startswith("val_") else ""
            raise EdgetrainError(f"{self.owner} monitors {self.monitor!r}, which this fit does "
                                 f"not compute{hint}; it computes {', '.join(names)}")

    def improved(self, logs: Logs) -> bool:
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(value):
            return False
        better = value < self.best - self.min_delta if self.mode == "min" \
            else value > self.best + self.min_delta
        if better:
            self.best = float(value)
        return better


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs in a
    row (``patience=0``: at the first epoch that does not improve).

    ``restore_best_weights`` puts back the model state (weights, optimizer state, step) of
    the best epoch when training ends on a worse one.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False) -> None:
        if patience < 0:
            raise EdgetrainError(f"EarlyStopping: patience must be ≥ 0, got {patience}")
        self.watch = _Monitor("EarlyStopping", monitor, mode, min_delta)
        self.patience, self.restore_best_weights = patience, restore_best_weights
        self.wait, self.stopped_epoch, self.best_epoch = 0, -1, -1
        self._best_state: dict[str, np.ndarray] | None = None

    def on_train_begin(self, logs: Logs) -> None:
        self.watch.check(self.loop)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.watch.improved(logs):
            self.wait, self.best_epoch = 0, epoch
            if self.restore_best_weights:
                self._best_state = self.loop.model.state()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.loop.stop_training = True

    def on_train_end(self, logs: Logs) -> None:
        if self._best_state is not None and self.best_epoch != self.loop.epoch:
            self.loop.model._load_state(self._best_state)
            self.loop.notes.append(f"restored the weights of epoch {self.best_epoch + 1} "
                                   f"({self.watch.monitor} {self.watch.best:.4f})")


class ModelCheckpoint(Callback):
    """Save a checkpoint whenever ``monitor`` improves (``save_best_only``), or every epoch.

    ``path`` may hold ``{epoch}`` (1-based). ``initial_best`` is the value to beat, e.g. that
    of the best checkpoint of an earlier run, so a resumed run never replaces a better one.
    """

    def __init__(self, path: str | os.PathLike[str], monitor: str = "val_loss",
                 mode: str = "auto", save_best_only: bool = True,
                 initial_best: float | None = None, key: bytes | None = None) -> None:
        self.path, self.save_best_only, self.key = os.fspath(path), save_best_only, key
        self.watch = _Monitor("ModelCheckpoint", monitor, mode, 0.0)
        if initial_best is not None:
            self.watch.best = float(initial_best)
        self.best_epoch: int | None = None
        self.saved: list[str] = []

    @property
    def best(self) -> float:
        return self.watch.best

    def on_train_begin(self, logs: Logs) -> None:
        if self.save_best_only:
            self.watch.check(self.loop)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.watch.improved(logs) or not self.save_best_only:
            path = self.path.format(epoch=epoch + 1)
            self.loop.model.save(path, key=self.key)
            self.best_epoch = epoch
            self.saved.append(path)
            self.on_save(path, epoch, logs)

    def on_save(self, path: str, epoch: int, logs: Logs) -> None:
        """Called after each save (for subclasses that record it somewhere)."""


# -- learning-rate schedules -------------------------------------------------------------------

@dataclass(frozen=True)
class Progress:
    """Where training is, for a schedule: ``step`` and ``epoch`` count from 0 in this fit;
    ``total_steps`` is None when the data's length is unknown."""

    step: int
    epoch: int
    steps_per_epoch: int | None
    total_steps: int | None


class Schedule:
    """A learning rate as a function of training progress. ``lr=None`` starts from the rate
    the fit uses (``fit(lr=…)`` or the file's)."""

    lr: float | None = None

    def __call__(self, base: float, p: Progress) -> float:
        raise NotImplementedError

    def check(self, p: Progress) -> None:
        """Refuse progress the schedule cannot follow (before training starts)."""


@dataclass
class StepDecay(Schedule):
    """The rate times ``factor`` every ``every`` epochs."""

    factor: float = 0.1
    every: int = 10
    lr: float | None = None

    def __call__(self, base: float, p: Progress) -> float:
        return (self.lr or base) * self.factor ** (p.epoch // max(1, self.every))


@dataclass
class CosineDecay(Schedule):
    """Cosine from the rate down to ``min_lr`` over the whole fit, after an optional linear
    warmup of ``warmup_steps`` from 0."""

    min_lr: float = 0.0
    warmup_steps: int = 0
    lr: float | None = None

    def check(self, p: Progress) -> None:
        if p.total_steps is None:
            raise EdgetrainError("CosineDecay needs the number of steps: the data has no "
                                 "length, so pass steps_per_epoch")

    def __call__(self, base: float, p: Progress) -> float:
        top = self.lr or base
        if p.step < self.warmup_steps:
            return top * (p.step + 1) / self.warmup_steps
        total = max(1, (p.total_steps or 1) - self.warmup_steps)
        t = min(1.0, (p.step - self.warmup_steps) / total)
        return self.min_lr + (top - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class LinearWarmup(Schedule):
    """A linear ramp from 0 to the rate over ``warmup_steps`` (default: the first tenth of
    the fit's steps), then the rate."""

    warmup_steps: int | None = None
    lr: float | None = None

    def check(self, p: Progress) -> None:
        if self.warmup_steps is None and p.total_steps is None:
            raise EdgetrainError("LinearWarmup without warmup_steps ramps over a tenth of the "
                                 "steps, but the data has no length: give warmup_steps")

    def __call__(self, base: float, p: Progress) -> float:
        top = self.lr or base
        steps = self.warmup_steps if self.warmup_steps is not None \
            else max(1, (p.total_steps or 10) // 10)
        return top * min(1.0, (p.step + 1) / max(1, steps))


def schedule(name: str, **kw: Any) -> Schedule:
    """A schedule by name: ``"step"``, ``"cosine"``, ``"warmup"`` (the command line's
    ``--schedule``)."""
    table: dict[str, Callable[..., Schedule]] = {"step": StepDecay, "cosine": CosineDecay,
                                                 "warmup": LinearWarmup}
    if name not in table:
        raise EdgetrainError(f"unknown schedule {name!r}; choose from {', '.join(table)} "
                             "(or the ReduceLROnPlateau callback)")
    return table[name](**kw)


class LearningRateScheduler(Callback):
    """Set the rate of every step from a :class:`Schedule`, or from ``fn(epoch) -> rate``
    (once per epoch, epochs counted from 0 in this fit)."""

    #: A schedule's rate depends on the step's number only: ``fit`` asks for the rates of a
    #: call's steps before the call.
    allows_multi_step = True

    def __init__(self, schedule: Schedule | Callable[[int], float]) -> None:
        self.schedule = schedule

    def on_train_begin(self, logs: Logs) -> None:
        if isinstance(self.schedule, Schedule):
            self.schedule.check(self._progress(0))

    def _progress(self, step: int) -> Progress:
        spe = self.loop.steps_per_epoch
        return Progress(step, self.loop.epoch - self.loop.initial_epoch, spe,
                        spe * self.loop.epochs if spe else None)

    def on_batch_begin(self, step: int) -> None:
        if isinstance(self.schedule, Schedule):
            self.loop.set_lr(self.schedule(self.loop.base_lr, self._progress(step)))

    def on_epoch_begin(self, epoch: int) -> None:
        if not isinstance(self.schedule, Schedule):
            self.loop.set_lr(float(self.schedule(epoch - self.loop.initial_epoch)))

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        logs["lr"] = self.loop.current_lr


class ReduceLROnPlateau(Callback):
    """Multiply the rate by ``factor`` when ``monitor`` has not improved for ``patience``
    epochs (then wait ``cooldown`` epochs); never below ``min_lr``."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 2,
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0,
                 mode: str = "auto") -> None:
        if not 0 < factor < 1:
            raise EdgetrainError(f"ReduceLROnPlateau: factor must lie in (0, 1), got {factor}")
        self.watch = _Monitor("ReduceLROnPlateau", monitor, mode, min_delta)
        self.factor, self.patience, self.cooldown = factor, patience, cooldown
        self.min_lr = min_lr
        self.wait = self.cooling = 0

    def on_train_begin(self, logs: Logs) -> None:
        self.watch.check(self.loop)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.watch.improved(logs):
            self.wait = 0
        elif self.cooling > 0:
            self.cooling -= 1
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.loop.set_lr(max(self.loop.current_lr * self.factor, self.min_lr))
                self.wait, self.cooling = 0, self.cooldown
        logs["lr"] = self.loop.current_lr


# -- logs --------------------------------------------------------------------------------------

class CSVLogger(Callback):
    """One row per epoch (``epoch`` 1-based, then the logs' keys) in a CSV file, flushed
    each epoch so a crash loses at most the epoch in progress. ``append`` continues a file."""

    def __init__(self, path: str | os.PathLike[str], append: bool = False,
                 separator: str = ",") -> None:
        self.path, self.append, self.separator = os.fspath(path), append, separator
        self.keys: list[str] | None = None
        self._file: IO[str] | None = None

    def on_train_begin(self, logs: Logs) -> None:
        old = self.append and os.path.isfile(self.path) and os.path.getsize(self.path) > 0
        if old:
            with open(self.path, encoding="utf-8") as f:
                first = f.readline().rstrip("\n")
            self.keys = first.split(self.separator)[1:] or None
        self._file = open(self.path, "a" if self.append else "w", encoding="utf-8")

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        assert self._file is not None, "on_train_begin opens the file"
        if self.keys is None:
            self.keys = list(logs)
            self._file.write(self.separator.join(["epoch", *self.keys]) + "\n")
        row = [str(epoch + 1)] + [repr(float(logs[k])) if k in logs else "" for k in self.keys]
        self._file.write(self.separator.join(row) + "\n")
        self._file.flush()

    def on_train_end(self, logs: Logs) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoard(Callback):
    """Scalars for TensorBoard (``tensorboard --logdir DIR``): every epoch's logs, and with
    ``update_freq=N`` the loss of every N-th step. The event file is written by edgetrain
    itself, so TensorBoard is needed only to look at it."""

    allows_multi_step = True  # it logs each step's loss, not the weights

    def __init__(self, log_dir: str | os.PathLike[str] = "logs",
                 update_freq: str | int = "epoch") -> None:
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq > 0):
            raise EdgetrainError(f"TensorBoard: update_freq must be 'epoch' or a positive "
                                 f"number of steps, got {update_freq!r}")
        self.log_dir, self.update_freq = os.fspath(log_dir), update_freq
        self.writer: Any = None

    def on_train_begin(self, logs: Logs) -> None:
        from .training._tensorboard import EventWriter

        self.writer = EventWriter(self.log_dir)

    def on_batch_end(self, step: int, logs: Logs) -> None:
        if isinstance(self.update_freq, int) and step % self.update_freq == 0:
            self.writer.scalars({"batch_loss": logs["loss"]}, self.loop.global_step)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.writer.scalars({f"epoch_{k}": v for k, v in logs.items()}, epoch + 1, time.time())

    def on_train_end(self, logs: Logs) -> None:
        if self.writer is not None:
            self.writer.close()
