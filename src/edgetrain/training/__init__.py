"""Training loops over a loaded trainable file: ``fit``, ``evaluate``, ``predict``.

The device runtime (:mod:`edgetrain.runtime`) runs one signature call at a time and knows
nothing of epochs, progress bars or plots; this layer adds them on top: :class:`Model` is the
runtime's model with the loops, and :func:`load` returns one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from ..errors import EdgetrainError, InputError, NonFiniteError
from ..runtime import Model as _RuntimeModel
from ..runtime import _check_lr
from ._history import History

__all__ = ["History", "Model", "load"]


class Model(_RuntimeModel):
    """A loaded trainable file with training loops (see :class:`edgetrain.runtime.Model`)."""

    def fit(self, x: Any, y: np.ndarray, epochs: int = 1, batch_size: int = 32, *,
            shuffle: bool = True, seed: int = 0, validation_data: tuple[Any, Any] | None = None,
            lr: float | None = None, progress: bool = True, on_nonfinite: str = "raise",
            cache_features: bool = False) -> History:
        """Train for ``epochs`` over (x, y) in mini-batches; returns per-epoch metrics.

        ``x`` is an array for single-input models or a dict of arrays by input name.
        ``on_nonfinite``: "raise" stops at a step with a non-finite loss, "skip" skips it.
        ``cache_features`` (models compiled with ``split_features=True``): run the frozen
        backbone once per example and train the head on the cached features.
        """
        if on_nonfinite not in ("raise", "skip"):
            raise EdgetrainError("on_nonfinite must be 'raise' or 'skip'")
        if lr is not None:
            self._check_fit_lr(lr)
        xs = self._as_inputs(x)
        y = np.asarray(y)
        n = len(y)
        if n == 0:
            raise InputError("fit: empty training set")
        for k, v in xs.items():
            if len(v) != n:
                raise InputError(f"fit: input {k!r} has {len(v)} rows but y has {n}")
        train_sig, eval_sig, cache = "train", "eval", None
        if cache_features:
            from ._cache import FeatureCache

            cache = FeatureCache(self, batch_size)
            xs = cache.features(xs)
            if validation_data is not None:
                validation_data = (cache.features(self._as_inputs(validation_data[0]),
                                                  "validation"), validation_data[1])
            train_sig, eval_sig = "train_features", "eval_features"
        rng = np.random.default_rng(seed)
        hist = History()
        t0 = time.perf_counter()
        bar = _progress(epochs * ((n + batch_size - 1) // batch_size), progress)
        try:
            for epoch in range(epochs):
                t_epoch = time.perf_counter()
                order = rng.permutation(n) if shuffle else np.arange(n)
                batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
                losses, weights = self._train_epoch(xs, y, batches, lr, train_sig, on_nonfinite,
                                                    hist, bar, epoch)
                if losses:
                    hist.add("loss", float(np.average(losses, weights=weights)))
                if "accuracy" in {o.name for o in self._sigs[eval_sig].outputs}:
                    hist.add("accuracy", self.evaluate(xs, y, batch_size,
                                                       signature=eval_sig)["accuracy"])
                if validation_data is not None:
                    for k, val in self.evaluate(*validation_data, batch_size=batch_size,
                                                signature=eval_sig).items():
                        hist.add(f"val_{k}", val)
                hist.epoch_seconds.append(time.perf_counter() - t_epoch)
        finally:
            if bar is not None:
                bar.close()
        hist.seconds = time.perf_counter() - t0
        if cache is not None:
            evals = int("accuracy" in {o.name for o in self._sigs[eval_sig].outputs})
            cache.report(hist, epochs, evals, progress)
        return hist

    #: Training steps per runtime call when the file has ``train_steps``: a step of a small
    #: model costs less than the call that runs it, so ``fit`` stacks this many batches.
    steps_per_call: int = 32

    def _train_epoch(self, xs: dict[str, np.ndarray], y: np.ndarray,
                     batches: list[np.ndarray], lr: float | None, sig: str, on_nonfinite: str,
                     hist: History, bar: Any, epoch: int) -> tuple[list[float], list[int]]:
        """One pass over ``batches``; full-size ones go K at a time through ``train_steps``."""
        multi = sig == "train" and "train_steps" in self._sigs and self.steps_per_call > 1
        losses: list[float] = []
        weights: list[int] = []
        i = 0
        while i < len(batches):
            k = 1
            while multi and k < self.steps_per_call and i + k < len(batches) \
                    and len(batches[i + k]) == len(batches[i]):
                k += 1
            chunk = batches[i:i + k]
            for loss, idx in zip(self._run_steps(xs, y, chunk, lr, sig, on_nonfinite), chunk):
                if loss is None:
                    hist.skipped_steps += 1
                else:
                    losses.append(loss)
                    weights.append(len(idx))
            i += k
            if bar is not None:
                bar.update(k)
                if losses:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}")
        return losses, weights

    def _run_steps(self, xs: dict[str, np.ndarray], y: np.ndarray, chunk: list[np.ndarray],
                   lr: float | None, sig: str, on_nonfinite: str) -> list[float | None]:
        """The losses of one training step per batch of ``chunk`` (None: skipped).

        Several batches run in one ``train_steps`` call. When one of its steps does not count,
        the call keeps nothing: the steps before it run again, and the failing batch alone, as
        a single step would (raising, or skipped with ``on_nonfinite="skip"``).
        """
        if len(chunk) == 1:
            feeds = {k: v[chunk[0]] for k, v in xs.items()}
            feeds[self.input_name(sig, "label")] = y[chunk[0]]
            if lr is not None:
                feeds[self.input_name(sig, "lr")] = np.asarray(lr)
            try:
                return [float(self.run(sig, **feeds)["loss"])]
            except NonFiniteError:
                if on_nonfinite == "raise":
                    raise
                return [None]
        stacked = np.stack(chunk)
        feeds = {k: v[stacked] for k, v in xs.items()}
        feeds[self.input_name("train_steps", "label")] = y[stacked]
        feeds[self.input_name("train_steps", "lr")] = np.full(
            len(chunk), self._rate(lr), dtype=self._input_plan(self._sigs["train_steps"])[
                self.input_name("train_steps", "lr")].dtype)
        try:
            out = self.run("train_steps", **feeds)
        except (NonFiniteError, InputError) as e:
            done = e.completed_steps
            head = self._run_steps(xs, y, chunk[:done], lr, sig, on_nonfinite) if done else []
            failed = self._run_steps(xs, y, chunk[done:done + 1], lr, sig, on_nonfinite)
            rest = chunk[done + 1:]
            return head + failed + (self._run_steps(xs, y, rest, lr, sig, on_nonfinite)
                                    if rest else [])
        loss_name = self._sigs["train_steps"].output("loss") or "loss"
        return [float(v) for v in np.asarray(out[loss_name]).reshape(-1)]

    def _rate(self, lr: float | None) -> float:
        """The learning rate of a step: the caller's, else the file's default."""
        if lr is not None:
            return float(lr)
        spec = self._input_plan(self._sigs["train"])[self.input_name("train", "lr")]
        return float(spec.default) if spec.default is not None else 0.0

    def _check_fit_lr(self, lr: Any) -> None:
        """``fit(lr=…)`` before any step, in the dtype the step will see (1e39 is finite in
        float64, infinite in float32)."""
        spec = self._input_plan(self._sigs["train"]).get(self.input_name("train", "lr"))
        try:
            with np.errstate(over="ignore"):
                arr = np.asarray(lr, dtype=spec.dtype if spec else None)
        except (TypeError, ValueError) as e:
            raise InputError(f"fit: lr must be a number, got {lr!r}") from e
        _check_lr(arr, "fit", True)

    def evaluate(self, x: Any, y: np.ndarray, batch_size: int = 256, *,
                 signature: str = "eval") -> dict[str, float]:
        """Mean loss (and accuracy) over a data set, without changing the model.

        ``signature="eval_features"`` evaluates from cached features (``{"features": …}``).
        """
        xs = self._as_inputs(x)
        y = np.asarray(y)
        label = self.input_name("train", "label")
        totals: dict[str, float] = {}
        for start in range(0, len(y), batch_size):
            feeds = {k: v[start:start + batch_size] for k, v in xs.items()}
            feeds[label] = y[start:start + batch_size]
            out = self.run(signature, **feeds)
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(feeds[label])
        return {k: v / len(y) for k, v in totals.items()}

    def predict(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """The model output (the one the loss uses) over a data set, in batches."""
        xs = self._as_inputs(x)
        n = len(next(iter(xs.values())))
        outs = [self.run("infer", **{k: v[s:s + batch_size] for k, v in xs.items()})
                [self.meta.output] for s in range(0, n, batch_size)]
        return np.concatenate(outs)

    def _as_inputs(self, x: Any) -> dict[str, np.ndarray]:
        names = [s.name for s in self._sigs["infer"].inputs]
        if isinstance(x, Mapping):
            return {k: np.asarray(v) for k, v in x.items()}
        if len(names) != 1:
            raise InputError(f"this model has inputs {names}; pass x as a dict")
        return {names[0]: np.asarray(x)}


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but a device build may strip it
        return None
    return tqdm(total=total, unit="step", leave=False, dynamic_ncols=True)


def load(model: onnx.ModelProto | str | os.PathLike[str] | bytes,
         backend: str = "onnxruntime", **backend_options: Any) -> Model:
    """Load a trainable file (path, bytes or ModelProto) on a backend, with training loops."""
    return Model(model, backend=backend, **backend_options)
