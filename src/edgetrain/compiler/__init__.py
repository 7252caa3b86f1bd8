"""The compiler: inference model → one trainable ONNX file, as a pipeline of small passes.

Each pass reads and extends one :class:`Compilation` (see ``_state``); all of them work on the
same IR (``edgetrain._ir``, onnx-ir). Everything emitted is a standard ONNX op of the default
domain.

    import_model        read, check standard ops, convert to opset ≥ 18, lift Constant-node
                        weights, fix input sizes, fold shape arithmetic, infer shapes, IR
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
    train_steps         K steps per call: the train graph as the body of one Scan
    eval_graph          the inference graph, loss and metrics
    split_features      the feature signatures (split_features=True)
    package             the ModelProto: main graph, training_info, metadata, full check
"""

from __future__ import annotations

from collections.abc import Callable

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


def run_pipeline(options: Options) -> Compilation:
    """Every pass in order over one :class:`Compilation` (its ``result`` and ``notes``)."""
    c = Compilation(options)
    for p in PIPELINE:
        p(c)
    return c


__all__ = ["MIN_OPSET", "PIPELINE", "TARGET_OPSET", "Compilation", "Options", "Pass",
           "normalize", "read_model", "run_pipeline"]
