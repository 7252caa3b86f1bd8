"""Metrics beyond the loss, computed on the host from the model's predictions.

The ``eval`` signature of a trainable file reports the loss (and the accuracy of classifiers),
computed inside the graph. Everything else — top-k accuracy, precision, recall, F1, MAE, RMSE —
is computed here, in NumPy, from the ``infer`` signature's output and the labels, so that the
file format need not change for a new metric and every runtime gets the same numbers.
``fit(..., metrics=["f1", "top_3_accuracy"])`` and ``evaluate(..., metrics=…)`` use them.

Conventions (those of scikit-learn): precision, recall and F1 of a multi-class model are
macro averages over the classes that occur in the labels or the predictions, 0 where a class
has no predicted (or no true) example; of a binary model, those of the positive class.
Predictions of a binary model are positive above 0 (logits) or above 0.5 when the model's
output is a probability.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EdgetrainError

__all__ = ["Metric", "Task", "accuracy", "compute", "f1", "get", "mae", "precision", "recall",
           "rmse", "top_k_accuracy"]


@dataclass(frozen=True)
class Task:
    """What a model's output means: ``kind`` "multiclass" | "binary" | "regression";
    ``labels`` "index" | "onehot" (multi-class); ``threshold`` of a positive binary output."""

    kind: str
    labels: str = "index"
    threshold: float = 0.0


@dataclass(frozen=True)
class Metric:
    """A named metric: ``fn(predictions, labels, task) -> float``, for the given tasks."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray, Task], float]
    tasks: tuple[str, ...]

    def __call__(self, pred: np.ndarray, y: np.ndarray, task: Task) -> float:
        if task.kind not in self.tasks:
            raise EdgetrainError(f"metric {self.name!r} applies to {' or '.join(self.tasks)} "
                                 f"models; this one is {task.kind}")
        return float(self.fn(np.asarray(pred), np.asarray(y), task))


def _classes(pred: np.ndarray, y: np.ndarray, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) class labels as integer arrays."""
    if task.kind == "multiclass":
        truth = np.argmax(y, axis=1) if y.ndim == 2 else y.astype(np.int64)
        return np.argmax(pred, axis=1), truth
    return ((pred > task.threshold).astype(np.int64).reshape(-1),
            (y > 0.5).astype(np.int64).reshape(-1))


def _accuracy(pred: np.ndarray, y: np.ndarray, task: Task) -> float:
    guess, truth = _classes(pred, y, task)
    return float(np.mean(guess == truth))


def _top_k(k: int) -> Callable[[np.ndarray, np.ndarray, Task], float]:
    def fn(pred: np.ndarray, y: np.ndarray, task: Task) -> float:
        truth = np.argmax(y, axis=1) if y.ndim == 2 else y.astype(np.int64)
        kk = min(k, pred.shape[1])
        top = np.argpartition(-pred, kk - 1, axis=1)[:, :kk]
        return float(np.mean(np.any(top == truth[:, None], axis=1)))

    return fn


def _counts(pred: np.ndarray, y: np.ndarray, task: Task
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, predicted positives and actual positives per class considered."""
    guess, truth = _classes(pred, y, task)
    labels = np.array([1]) if task.kind == "binary" else np.union1d(guess, truth)
    tp = np.array([np.sum((guess == c) & (truth == c)) for c in labels], dtype=np.float64)
    predicted = np.array([np.sum(guess == c) for c in labels], dtype=np.float64)
    actual = np.array([np.sum(truth == c) for c in labels], dtype=np.float64)
    return tp, predicted, actual


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.divide(a, b, out=np.zeros_like(a), where=b > 0)
    return out


def _precision(pred: np.ndarray, y: np.ndarray, task: Task) -> float:
    tp, predicted, _ = _counts(pred, y, task)
    return float(np.mean(_ratio(tp, predicted)))


def _recall(pred: np.ndarray, y: np.ndarray, task: Task) -> float:
    tp, _, actual = _counts(pred, y, task)
    return float(np.mean(_ratio(tp, actual)))


def _f1(pred: np.ndarray, y: np.ndarray, task: Task) -> float:
    tp, predicted, actual = _counts(pred, y, task)
    return float(np.mean(_ratio(2 * tp, predicted + actual)))


def _mae(pred: np.ndarray, y: np.ndarray, task: Task) -> float:
    return float(np.mean(np.abs(pred.astype(np.float64) - y.reshape(pred.shape))))


def _rmse(pred: np.ndarray, y: np.ndarray, task: Task) -> float:
    d = pred.astype(np.float64) - y.reshape(pred.shape)
    return float(np.sqrt(np.mean(d * d)))


_CLASSIFY = ("multiclass", "binary")
accuracy = Metric("accuracy", _accuracy, _CLASSIFY)
precision = Metric("precision", _precision, _CLASSIFY)
recall = Metric("recall", _recall, _CLASSIFY)
f1 = Metric("f1", _f1, _CLASSIFY)
mae = Metric("mae", _mae, ("regression",))
rmse = Metric("rmse", _rmse, ("regression",))


def top_k_accuracy(k: int) -> Metric:
    """The share of examples whose label is among the ``k`` highest outputs."""
    if not isinstance(k, int) or k < 1:
        raise EdgetrainError(f"top_k_accuracy needs k ≥ 1, got {k!r}")
    return Metric(f"top_{k}_accuracy", _top_k(k), ("multiclass",))


_BY_NAME = {m.name: m for m in (accuracy, precision, recall, f1, mae, rmse)}
_TOP_K = re.compile(r"top_?(\d+)(?:_accuracy)?")


def get(metric: str | Metric) -> Metric:
    """A metric from its name (``"f1"``, ``"top_5_accuracy"``, ``"rmse"``, …) or itself."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric in _BY_NAME:
            return _BY_NAME[metric]
        m = _TOP_K.fullmatch(metric)
        if m:
            return top_k_accuracy(int(m.group(1)))
    names = [*_BY_NAME, "top_K_accuracy"]
    raise EdgetrainError(f"unknown metric {metric!r}; choose from {', '.join(names)}")


def compute(metrics: Sequence[Metric], pred: np.ndarray, y: np.ndarray, task: Task
            ) -> dict[str, float]:
    """Every metric of ``metrics`` over one data set's predictions and labels."""
    return {m.name: m(pred, y, task) for m in metrics}
