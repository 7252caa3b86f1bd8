"""The top of the library: ``compile`` returns a :class:`TrainableModel`, which saves the file
or loads it into the runtime. It sits above both the compiler and the runtime, which know
nothing of each other."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import onnx

from . import format as fmt
from . import losses as _losses
from . import optim as _optim
from . import select as _select
from ._lora import LoRA
from .compiler import Options, run_pipeline
from .training import Model


class TrainableModel:
    """A compiled trainable file in memory: ``save`` it, or ``load`` it into a runtime."""

    def __init__(self, proto: onnx.ModelProto, notes: Iterable[str] = ()) -> None:
        self.proto = proto
        self.meta: fmt.Metadata = fmt.read_metadata(proto)
        #: What the compiler decided that the caller should know (e.g. that the loss reads
        #: the logits before the model's final Softmax).
        self.notes: list[str] = list(notes)

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the single trainable file (atomically); returns the path."""
        return fmt.save_model(self.proto, path)

    def load(self, backend: str = "onnxruntime", **backend_options: Any) -> Model:
        """The runtime :class:`~edgetrain.Model` of this file, without writing it to disk."""
        return Model(self.proto, backend=backend, **backend_options)

    @property
    def signatures(self) -> dict[str, fmt.SignatureSpec]:
        """The entry points of the file by name (train, infer, eval, save, restore, …), as
        the metadata declares them."""
        return dict(self.meta.signatures)

    def __repr__(self) -> str:
        return (f"TrainableModel(signatures={sorted(self.meta.signatures)}, "
                f"trainable={len(self.meta.trainable)}, frozen={len(self.meta.frozen)})")


def compile(  # noqa: A001 - the public name the API promises
    model: onnx.ModelProto | str | os.PathLike[str],
    loss: str | _losses.Loss = "cross_entropy",
    optimizer: str | _optim.Optimizer | None = None,
    trainable: str | Iterable[str] | _select.Selector | LoRA | None = None,
    output: str | None = None,
    labels: str = "index",
    *,
    lr: float | None = None,
    batch_norm: str = "frozen",
    split_features: bool = False,
    multi_step: bool | None = None,
    input_shapes: Mapping[str, Sequence[int | str | None]] | None = None,
) -> TrainableModel:
    """Compile an inference model into one trainable file (train, infer, eval, save, restore).

    Args:
        model: an ONNX ``ModelProto`` or the path of a ``.onnx`` file (opset 7 or newer,
            converted up to 18; standard ops only; float32 or float64).
        loss: ``"cross_entropy"`` (softmax cross-entropy on logits), ``"mse"``, ``"l1"``,
            ``"huber"``, ``"bce_with_logits"``, or an ``edgetrain.losses`` object such as
            ``et.losses.CrossEntropy(label_smoothing=0.1)``.
        optimizer: ``"sgd"`` (default), ``"adam"``, ``"adamw"``, or an ``edgetrain.optim``
            object such as ``et.optim.SGD(lr=0.05, momentum=0.9)`` or
            ``et.optim.AdamW(lr=1e-3, weight_decay=0.01, clip_norm=1.0)``.
        trainable: which weights train — ``None`` for every float weight; a name or glob
            pattern (``"head.*"``) or a list of them; a selector: ``et.select.last(n)``,
            ``et.select.bias_only()``, ``et.select.head()``; or LoRA adapters,
            ``et.select.lora(rank=8, alpha=16, targets=["*query*", "*value*"])``.
        output: the model output the loss is on (default: the first output). When it is
            the result of a final Softmax / LogSoftmax (``cross_entropy``) or Sigmoid
            (``bce_with_logits``), the loss reads the logits before it and ``infer`` keeps
            returning the probabilities; ``notes`` says so.
        labels: ``"index"`` (int64 class indices ``[B]``) or ``"onehot"`` (rows like the
            output) for cross-entropy; other losses take targets shaped like the output.
        lr: the learning rate when ``optimizer`` is a name.
        batch_norm: ``"frozen"`` (normalize with running statistics, as at inference) or
            ``"train"`` (batch statistics in the train step; running statistics updated).
        split_features: add ``features``/``train_features``/``eval_features``/
            ``infer_features`` signatures, so a head can train on cached backbone features
            (``Model.fit(..., cache_features=True)``).
        multi_step: add ``train_steps``, K training steps in one call (one ONNX ``Scan``
            over K stacked batches), which ``Model.fit`` uses ``Model.steps_per_call`` at a
            time: by default (None) when the model is small, its forward pass at most a
            million multiply-adds per example (the seed MLP: 0.1 M), where a call's own cost
            is a visible part of a step; True or False to have it or not.
        input_shapes: sizes for inputs the file leaves open, ``{"x": ["batch", 3, 224,
            224]}`` (a name keeps a dim dynamic): convolution gradients are faster with static
            spatial sizes (pooling gradients need them), and a dynamic batch is always fine.

    Returns:
        A :class:`TrainableModel`; ``.save(path)`` writes the file, ``.load()`` runs it.
    """
    c = run_pipeline(Options(
        source=model, loss=_losses.get(loss), optimizer=_optim.get(optimizer, lr),
        trainable=trainable, output=output, labels=labels, batch_norm=batch_norm,
        split_features=split_features, multi_step=multi_step,
        input_shapes=None if input_shapes is None else {
            k: list(v) for k, v in input_shapes.items()}))
    assert c.result is not None
    return TrainableModel(c.result, c.notes)


__all__ = ["TrainableModel", "compile"]
