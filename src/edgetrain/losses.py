"""Losses, built from differentiable standard ops so autodiff handles them like the model.

Each loss appends nodes ``(prediction, target) -> scalar`` to a builder; the compiler
differentiates through them. Formulas and reductions follow ``torch.nn.functional``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from ._ir import Builder, Dims, Value
from .errors import EdgetrainError

#: Builds d(loss)/d(prediction) into a builder, given the seed d(loss) (1, or the lr).
PredGradient = Callable[[Builder, Value], Value]


@dataclass
class Loss:
    """Base class: ``reduction`` is ``"mean"`` or ``"sum"``."""

    reduction: str = "mean"
    name: ClassVar[str] = "loss"
    #: "multiclass" (one label per row among C classes), "binary" (independent 0/1 targets)
    #: or "regression": what the model's output means, for drivers and reports.
    task: ClassVar[str] = "regression"

    def __post_init__(self) -> None:
        if self.reduction not in ("mean", "sum"):
            raise EdgetrainError(f"reduction must be 'mean' or 'sum', got {self.reduction!r}")

    def label_spec(self, pred_shape: Dims | None, pred_type: ir.DataType,
                   labels: str) -> tuple[ir.DataType, list[Any]]:
        """Element type and shape of the label input ``y``."""
        return pred_type, list(pred_shape) if pred_shape is not None else []

    def build(self, op: Builder, pred: Value, y: Value, labels: str) -> Value:
        raise NotImplementedError

    def build_with_gradient(self, op: Builder, pred: Value, y: Value, labels: str
                            ) -> tuple[Value, PredGradient | None]:
        """The loss, and optionally a builder of d(loss)/d(pred) from the seed d(loss).

        A loss whose gradient has a short closed form returns one, and the compiler starts
        the backward pass at the prediction instead of differentiating the loss nodes one by
        one (softmax cross-entropy: 7 nodes instead of 17, which shows on small models).
        """
        return self.build(op, pred, y, labels), None

    def metrics(self, op: Builder, pred: Value, y: Value, labels: str) -> dict[str, Value]:
        """Scalar metrics the ``eval`` signature reports besides the loss."""
        return {}

    def _reduce(self, op: Builder, per_elem: Value) -> Value:
        if self.reduction == "sum":
            return op.ReduceSum(per_elem, keepdims=0)
        return op.ReduceMean(per_elem, keepdims=0)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


@dataclass
class CrossEntropy(Loss):
    """Softmax cross-entropy on logits ``[B, C]``; labels as class indices or one-hot rows.

    ``label_smoothing`` mixes the target with the uniform distribution, as torch does.
    """

    label_smoothing: float = 0.0
    name: ClassVar[str] = "cross_entropy"
    task: ClassVar[str] = "multiclass"

    def label_spec(self, pred_shape: Dims | None, pred_type: ir.DataType,
                   labels: str) -> tuple[ir.DataType, list[Any]]:
        batch = pred_shape[0] if pred_shape else "batch"
        if labels == "index":
            return ir.DataType.INT64, [batch]
        return pred_type, list(pred_shape) if pred_shape is not None else [batch, None]

    def metrics(self, op: Builder, pred: Value, y: Value, labels: str) -> dict[str, Value]:
        guess = op.ArgMax(pred, axis=1, keepdims=0)
        truth = y if labels == "index" else op.ArgMax(y, axis=1, keepdims=0)
        return {"accuracy": op.ReduceMean(op.cast(op.Equal(guess, truth), pred.dtype),
                                          keepdims=0)}

    def build(self, op: Builder, pred: Value, y: Value, labels: str) -> Value:
        return self.build_with_gradient(op, pred, y, labels)[0]

    def build_with_gradient(self, op: Builder, pred: Value, y: Value, labels: str
                            ) -> tuple[Value, PredGradient | None]:
        """d(loss)/d(logits) = (softmax · Σ target − target) · seed / n, per row. Plain index
        targets are exact one-hot rows, so Σ target = 1 drops the row sum; smoothed ones sum
        to 1 only up to rounding, and training runs long enough to show the difference."""
        logp = op.LogSoftmax(pred, axis=1)
        if labels == "index":
            # one_hot(y) as Equal(y[:, None], arange(C)): OneHot has no float64 kernel in
            # onnxruntime, and Equal/Range/Cast run on every runtime in every float type.
            # A class count known at compile time makes arange(C) a constant: four nodes
            # fewer per step, which shows on small models where each node's dispatch counts.
            shape = pred.shape
            if shape is not None and len(shape) == 2 and isinstance(shape[1], int) \
                    and shape[1] > 0:
                classes = op.const(np.arange(shape[1], dtype=np.int64), hint="classes")
            else:
                depth = op.Reshape(op.Slice(op.Shape(pred), [1], [2]), op.const(
                    np.zeros(0, dtype=np.int64)))  # a scalar: Range wants one
                classes = op.Range(op.const(np.array(0, dtype=np.int64)), depth,
                                   op.const(np.array(1, dtype=np.int64)))
            target = op.cast(op.Equal(op.Unsqueeze(y, [1]), classes), pred.dtype)
        else:
            target = y
        if self.label_smoothing:
            eps = float(self.label_smoothing)
            n = op.cast(op.Slice(op.Shape(pred), [1], [2]), pred.dtype)
            target = op.Add(op.Mul(target, 1.0 - eps), op.Div(op.scalar(eps, pred), n))
        per_row = op.Neg(op.ReduceSum(op.Mul(target, logp), [1], keepdims=0))
        loss = self._reduce(op, per_row)
        normalized = labels == "index" and not self.label_smoothing
        mean = self.reduction == "mean"

        def gradient(bop: Builder, seed: Value) -> Value:
            # In torch's rounding order: g = −target·k for the log-probabilities, then the
            # LogSoftmax backward g − softmax·Σg (k = seed / n for the mean).
            k = bop.Div(seed, bop.cast(bop.Size(per_row), pred.dtype)) if mean else seed
            p = bop.Exp(logp)
            total = k if normalized else bop.Mul(bop.ReduceSum(target, [1], keepdims=1), k)
            return bop.Sub(bop.Mul(p, total), bop.Mul(target, k))

        return loss, gradient


@dataclass
class MSE(Loss):
    """Mean squared error over all elements."""

    name: ClassVar[str] = "mse"

    def build(self, op: Builder, pred: Value, y: Value, labels: str) -> Value:
        d = op.Sub(pred, y)
        return self._reduce(op, op.Mul(d, d))


@dataclass
class L1(Loss):
    """Mean absolute error over all elements."""

    name: ClassVar[str] = "l1"

    def build(self, op: Builder, pred: Value, y: Value, labels: str) -> Value:
        return self._reduce(op, op.Abs(op.Sub(pred, y)))


@dataclass
class Huber(Loss):
    """Quadratic below ``delta``, linear above (torch's ``huber_loss``)."""

    delta: float = 1.0
    name: ClassVar[str] = "huber"

    def build(self, op: Builder, pred: Value, y: Value, labels: str) -> Value:
        d = op.Sub(pred, y)
        a = op.Abs(d)
        quad = op.Mul(op.Mul(d, d), 0.5)
        lin = op.Mul(op.Sub(a, 0.5 * self.delta), self.delta)
        return self._reduce(op, op.Where(op.Less(a, self.delta), quad, lin))


@dataclass
class BCEWithLogits(Loss):
    """Binary cross-entropy on logits: max(x,0) - x·y + log(1 + e^-|x|), numerically stable."""

    name: ClassVar[str] = "bce_with_logits"
    task: ClassVar[str] = "binary"

    def metrics(self, op: Builder, pred: Value, y: Value, labels: str) -> dict[str, Value]:
        hit = op.Equal(op.Greater(pred, 0.0), op.Greater(y, 0.5))
        return {"accuracy": op.ReduceMean(op.cast(hit, pred.dtype), keepdims=0)}

    def build(self, op: Builder, pred: Value, y: Value, labels: str) -> Value:
        per = op.Add(op.Sub(op.Relu(pred), op.Mul(pred, y)), op.Softplus(op.Neg(op.Abs(pred))))
        return self._reduce(op, per)


_BY_NAME: dict[str, type[Loss]] = {
    c.name: c for c in (CrossEntropy, MSE, L1, Huber, BCEWithLogits)
}


def get(loss: str | Loss) -> Loss:
    """A loss object from a name or an instance."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in _BY_NAME:
        return _BY_NAME[loss]()
    raise EdgetrainError(f"unknown loss {loss!r}; choose one of {sorted(_BY_NAME)} or pass an "
                         "edgetrain.losses object")


def from_config(cfg: dict[str, Any]) -> Loss:
    cfg = dict(cfg)
    cls = _BY_NAME[cfg.pop("name")]
    return cls(**cfg)



__all__ = ["L1", "MSE", "BCEWithLogits", "CrossEntropy", "Huber", "Loss", "from_config", "get"]
