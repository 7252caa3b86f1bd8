"""Training loops over a loaded trainable file: ``fit``, ``evaluate``, ``predict``.

The device runtime (:mod:`edgetrain.runtime`) runs one signature call at a time and knows
nothing of epochs, progress bars or plots; this layer adds them on top: :class:`Model` is the
runtime's model with the loops, and :func:`load` returns one.

Data may be arrays (or lists, or dicts of them by input name) with labels ``y``, or a stream of
``(x, y)`` batches — a torch ``DataLoader``, a generator, a list — passed as ``x`` alone. It is
fitted to the model under the casting policy described in :mod:`edgetrain.data`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from ..errors import EdgetrainError, InputError
from ..runtime import Model as _RuntimeModel
from ..runtime import _check_lr
from . import metrics as _metrics
from ._feed import ArraySource, Batch, Feeder, StreamSource, is_stream
from ._history import History
from ._loop import Loop

__all__ = ["History", "Loop", "Model", "load"]


class Model(_RuntimeModel):
    """A loaded trainable file with training loops (see :class:`edgetrain.runtime.Model`)."""

    #: Training steps per runtime call when the file has ``train_steps`` (which ``compile``
    #: adds by default to small models) and the backend runs it; 1: one step per call; None:
    #: the backend's choice (32 on onnxruntime, 16 on OpenVINO and tract, which build the
    #: step unrolled for K; 1 on IREE, where that does not pay). What it saves is the
    #: per-call cost: docs/benchmarks.md, "K steps per call". ``fit`` stacks at most 8 MiB
    #: of batches per call (fewer steps for larger batches), and runs single steps where
    #: :class:`edgetrain.training.Loop` says.
    steps_per_call: int | None = None

    def fit(self, x: Any, y: Any = None, epochs: int = 1, batch_size: int = 32, *,
            validation_data: Any = None, validation_split: float = 0.0,
            shuffle: bool = True, seed: int = 0, lr: float | None = None,
            callbacks: Sequence[Any] = (), metrics: Sequence[str | _metrics.Metric] = (),
            progress: bool | None = None, on_nonfinite: str = "raise",
            cache_features: bool = False, steps_per_epoch: int | None = None,
            initial_epoch: int = 0) -> History:
        """Train for ``epochs`` over the data in mini-batches; returns per-epoch metrics.

        ``x``: an array (single-input models) or a dict of arrays by input name, with labels
        ``y``; or, without ``y``, an iterable of ``(x, y)`` batches (a torch DataLoader, a
        generator — one epoch unless ``steps_per_epoch`` — or a list).
        ``validation_split``: a seeded random fraction of array data held out for validation
        (``val_loss``, ``val_accuracy``, …); ``validation_data``: ``(x, y)`` or batches.
        ``callbacks``: :mod:`edgetrain.callbacks` objects (early stopping, checkpoints,
        learning-rate schedules, CSV and TensorBoard logs).
        ``metrics``: host-side metrics (:mod:`edgetrain.training.metrics`: ``"f1"``,
        ``"top_5_accuracy"``, ``"rmse"``, …) on the validation data, and on array training
        data, each epoch.
        ``progress``: None shows a bar only on a terminal; True or False force it.
        ``on_nonfinite``: "raise" stops at a step with a non-finite loss, "skip" skips it.
        ``cache_features`` (models compiled with ``split_features=True``): run the frozen
        backbone once per example and train the head on the cached features.
        ``initial_epoch``: the number of epochs trained before (callbacks count from it).

        Files with ``train_steps`` run full-size batches :attr:`steps_per_call` at a time in
        one call, with the same result as one step per call; a callback that overrides a
        batch hook without ``allows_multi_step = True`` gets one step per call (the rule:
        :class:`edgetrain.training.Loop`).
        """
        if on_nonfinite not in ("raise", "skip"):
            raise EdgetrainError("on_nonfinite must be 'raise' or 'skip'")
        if lr is not None:
            self._check_fit_lr(lr)
        if not isinstance(epochs, int) or epochs < 1:
            raise InputError(f"fit: epochs must be a positive integer, got {epochs!r}")
        found = [_metrics.get(m) for m in metrics]
        task = self._task()
        for m in found:
            if task.kind not in m.tasks:
                raise EdgetrainError(f"metric {m.name!r} applies to {' or '.join(m.tasks)} "
                                     f"models; this one is {task.kind}")
        feeder = Feeder(self)
        train, val = self._sources(feeder, x, y, validation_data, validation_split,
                                   batch_size=batch_size, shuffle=shuffle, seed=seed,
                                   epochs=epochs, steps_per_epoch=steps_per_epoch)
        feeder.warn("fit")
        sigs = ("train", "eval", "infer")
        cache = None
        if cache_features:
            train, val, cache = self._cached(train, val, batch_size)
            sigs = ("train_features", "eval_features", "infer_features")
        loop = Loop(self, train, epochs=epochs, signatures=sigs, lr=lr, validation=val,
                    callbacks=callbacks, metrics=found, progress=progress,
                    on_nonfinite=on_nonfinite, seed=seed, initial_epoch=initial_epoch)
        hist = loop.run()
        if cache is not None:
            evals = int(loop.evaluate_training)
            cache.report(hist, len(hist.epoch_seconds), evals, loop.progress)
        return hist

    def _sources(self, feeder: Feeder, x: Any, y: Any, validation_data: Any,
                 validation_split: float, *, batch_size: int, shuffle: bool, seed: int,
                 epochs: int, steps_per_epoch: int | None
                 ) -> tuple[ArraySource | StreamSource, ArraySource | StreamSource | None]:
        """The training batches and the validation batches (if any) of ``fit``."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        train: ArraySource | StreamSource
        if is_stream(x, y):
            if validation_split:
                raise InputError("validation_split needs array data; with batches from an "
                                 "iterable pass validation_data")
            train = StreamSource(x, feeder, steps_per_epoch=steps_per_epoch, epochs=epochs)
        else:
            if y is None:
                raise InputError("fit needs labels y (or x as an iterable of (x, y) batches)")
            train = ArraySource(feeder.x(x), feeder.y(y), batch_size, shuffle)
            if steps_per_epoch is not None:
                raise InputError("steps_per_epoch applies to iterables; arrays make "
                                 "ceil(N / batch_size) steps per epoch")
        val = self._validation(feeder, validation_data, batch_size)
        if validation_split:
            if val is not None:
                raise InputError("pass validation_data or validation_split, not both")
            assert isinstance(train, ArraySource)
            train, val = train.split(validation_split, seed)
        return train, val

    def _validation(self, feeder: Feeder, data: Any, batch_size: int
                    ) -> ArraySource | StreamSource | None:
        if data is None:
            return None
        if isinstance(data, tuple) and len(data) == 2 and not is_stream(*data):
            return ArraySource(feeder.x(data[0]), feeder.y(data[1]), batch_size)
        if is_stream(data, None):
            return StreamSource(data, feeder, epochs=1)
        raise InputError("validation_data must be (x, y) arrays or an iterable of batches")

    def _cached(self, train: ArraySource | StreamSource, val: ArraySource | StreamSource | None,
                batch_size: int) -> tuple[ArraySource, ArraySource | None, Any]:
        """The sources with the backbone's features in place of the inputs."""
        from ._cache import FeatureCache

        if not isinstance(train, ArraySource) or isinstance(val, StreamSource):
            raise InputError("cache_features needs array data (it computes every example's "
                             "features once)")
        cache = FeatureCache(self, batch_size)
        train = ArraySource(cache.features(train.xs), train.y, batch_size, train.shuffle)
        if val is not None:
            val = ArraySource(cache.features(val.xs, "validation"), val.y, batch_size)
        return train, val, cache

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

    def evaluate(self, x: Any, y: Any = None, batch_size: int = 256, *,
                 metrics: Sequence[str | _metrics.Metric] = (),
                 signature: str = "eval") -> dict[str, float]:
        """Mean loss (and accuracy) over a data set, without changing the model, plus the
        host-side ``metrics`` asked for (see :mod:`edgetrain.training.metrics`).

        ``x, y`` as for :meth:`fit` (arrays, or ``x`` an iterable of batches).
        ``signature="eval_features"`` evaluates from cached features (``{"features": …}``).
        """
        found = [_metrics.get(m) for m in metrics]
        infer = "infer_features" if signature == "eval_features" else "infer"
        return self._evaluate_batches(self._batches(x, y, batch_size, signature),
                                      (signature, infer), found)

    def _batches(self, x: Any, y: Any, batch_size: int, signature: str = "eval",
                 need_y: bool = True) -> Iterable[Batch]:
        feeder = Feeder(self)
        if signature.endswith("_features"):  # features come from the model: nothing to fit
            xs = {k: np.asarray(v) for k, v in dict(x).items()}
            return ArraySource(xs, None if y is None else feeder.y(y), batch_size).batches()
        if is_stream(x, y):
            return StreamSource(x, feeder, need_y=need_y).batches()
        if need_y and y is None:
            raise InputError("evaluate needs labels y (or x as an iterable of (x, y) batches)")
        src = ArraySource(feeder.x(x), None if y is None else feeder.y(y), batch_size)
        feeder.warn("evaluate" if need_y else "predict", stacklevel=4)
        return src.batches()

    def _evaluate_batches(self, batches: Iterable[Batch], signatures: tuple[str, str],
                          metrics: Sequence[_metrics.Metric]) -> dict[str, float]:
        """Eval outputs averaged over examples, then host metrics over all predictions."""
        eval_sig, infer_sig = signatures
        label = self.input_name(eval_sig, "label")
        loss_name = self._loss_output(eval_sig)
        totals: dict[str, float] = {}
        preds, labels, n = [], [], 0
        for xs, y in batches:
            assert y is not None
            out = self.run(eval_sig, **xs, **{label: y})
            for k, v in out.items():
                key = "loss" if k == loss_name else k
                totals[key] = totals.get(key, 0.0) + float(v) * len(y)
            if metrics:
                preds.append(self.run(infer_sig, **xs)[self.meta.output])
                labels.append(y)
            n += len(y)
        if n == 0:
            raise InputError("the evaluation data yielded no examples")
        result = {k: v / n for k, v in totals.items()}
        if metrics:
            result.update(_metrics.compute(metrics, np.concatenate(preds),
                                           np.concatenate(labels), self._task()))
        return result

    def predict(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """The model output (the one the loss uses) over a data set, in batches; ``x`` as
        for :meth:`fit` (labels in a stream's batches are ignored)."""
        output = self.meta.output
        outs = [self.run("infer", **xs)[output]
                for xs, _ in self._batches(x, None, batch_size, "eval", need_y=False)]
        if not outs:
            raise InputError("predict: the data yielded no examples")
        return np.concatenate(outs)

    # -- what the file says, looked up once ------------------------------------------------
    def _loss_output(self, signature: str) -> str:
        """The output of ``signature`` that holds the loss (found by role)."""
        return self._sigs[signature].output("loss") or "loss"

    def _eval_outputs(self, signature: str = "eval") -> list[str]:
        """The names ``evaluate`` reports for ``signature``: "loss", then its metrics."""
        loss = self._loss_output(signature)
        return ["loss" if o.name == loss else o.name
                for o in self._sigs[signature].outputs]

    def _task(self) -> _metrics.Task:
        """What the output means, for host metrics: the loss's task, the label form, and
        where a binary output turns positive (0 for logits, 0.5 for a Sigmoid's output)."""
        kind = self.meta.task or ("multiclass" if self.meta.classification else "regression")
        output = self.meta.output
        producer = next((n for n in self.proto.graph.node if output in n.output), None)
        threshold = 0.5 if producer is not None and producer.op_type == "Sigmoid" else 0.0
        return _metrics.Task(kind, self.meta.labels, threshold)

    def _load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Put back a full state taken with :meth:`state` (early stopping's best epoch)."""
        with self._lock:
            self._backend.set_state(state)


def load(model: onnx.ModelProto | str | os.PathLike[str] | bytes,
         backend: str = "onnxruntime", **backend_options: Any) -> Model:
    """Load a trainable file (path, bytes or ModelProto) on a backend, with training loops."""
    return Model(model, backend=backend, **backend_options)
