"""The compiler: inference model → one trainable ONNX file, as a pipeline of small passes.

Each pass reads and extends one :class:`Compilation` (see ``_state``); all of them work on the
same IR (``edgetrain._ir``, onnx-ir). Everything emitted is a standard ONNX op of the default
domain.

    import_model        read, check standard ops, convert to opset ≥ 18, infer shapes, bring
                        into the IR
    apply_lora          LoRA adapters (when trainable=select.lora(...))
    select_trainables   which weights train; the prediction and the label's type
    loss_on_logits      a final Softmax / Sigmoid: the loss reads the logits before it
    train_graph         a copy of the inference graph: Dropout on, batch statistics, lr input
    train_loss          the loss (with its closed-form gradient where it has one)
    differentiate       the backward pass, pruned to what reaches the selected weights
    apply_optimizer     optimizer state and every weight's update (Optimizer.update)
    guard               the step counter, advanced only when everything committed is finite
    fuse_gemm_updates   p − g folded into the GEMM computing g (plain SGD)
    finish_train        outputs (loss, <state>.new) and dead-node removal
    train_steps         K steps per call: the train graph as the body of one Loop
    eval_graph          the inference graph, loss and metrics
    split_features      the feature signatures (split_features=True)
    package             the ModelProto: main graph, training_info, metadata, full check
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import onnx

from .. import losses as _losses
from .. import optim as _optim
from .. import select as _select
from .._lora import LoRA
from ._finish import eval_graph, finish_train, fuse_gemm_updates, split_features
from ._import import MIN_OPSET, TARGET_OPSET, import_model, normalize, read_model
from ._logits import loss_on_logits
from ._package import package
from ._select import apply_lora, select_trainables
from ._state import Compilation, Options
from ._step import apply_optimizer, differentiate, guard, train_graph, train_loss
from ._steps import train_steps

Pass = Callable[[Compilation], None]

PIPELINE: tuple[Pass, ...] = (
    import_model, apply_lora, select_trainables, loss_on_logits, train_graph, train_loss,
    differentiate, apply_optimizer, guard, fuse_gemm_updates, finish_train, train_steps,
    eval_graph, split_features, package,
)


def compile_model(
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
    multi_step: bool = True,
) -> onnx.ModelProto:
    """Run the pipeline; returns the trainable file as a ModelProto (see edgetrain.compile)."""
    options = Options(source=model, loss=_losses.get(loss), optimizer=_optim.get(optimizer, lr),
                      trainable=trainable, output=output, labels=labels,
                      batch_norm=batch_norm, split_features=split_features,
                      multi_step=multi_step)
    c = run_pipeline(options)
    assert c.result is not None
    return c.result


def run_pipeline(options: Options) -> Compilation:
    """Every pass in order over one :class:`Compilation` (its ``result`` and ``notes``)."""
    c = Compilation(options)
    for p in PIPELINE:
        p(c)
    return c


__all__ = ["MIN_OPSET", "PIPELINE", "TARGET_OPSET", "Compilation", "Options", "Pass",
           "compile_model", "normalize", "read_model", "run_pipeline"]
