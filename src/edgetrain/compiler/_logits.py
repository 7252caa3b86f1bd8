"""Pass: losses that expect logits read the logits of a model that ends in an activation.

Exported classifiers usually end in the activation that turns scores into probabilities:
every ``keras.applications`` model and most Keras classifiers end in Softmax, binary ones in
Sigmoid. Softmax cross-entropy applied to probabilities computes the softmax twice: the loss
saturates near log(C) and its gradients shrink by orders of magnitude, so such a model trains
badly and nothing says why. When the output the loss reads is produced by Softmax or
LogSoftmax over the class axis (``loss="cross_entropy"``) or by Sigmoid
(``loss="bce_with_logits"``), perhaps through Identity nodes, the train and eval graphs apply
the loss to that node's input instead — exactly the logits the loss is defined on — while
``infer`` still returns the probabilities. The compiler says so in a note
(``TrainableModel.notes``, printed by ``edgetrain compile``). To apply a loss to the
probabilities on purpose, pick another loss (``mse``) or another ``output``.
"""

from __future__ import annotations

import onnx_ir as ir

from ._state import Compilation

#: Activation op → the losses that expect its input (the logits) rather than its output.
ACTIVATIONS = {"Softmax": ("cross_entropy",), "LogSoftmax": ("cross_entropy",),
               "Sigmoid": ("bce_with_logits",)}


def loss_on_logits(c: Compilation) -> None:
    """Pass: point the loss at the input of a final Softmax / LogSoftmax / Sigmoid."""
    assert c.prediction is not None, "select_trainables runs first"
    node = c.prediction.producer()
    while node is not None and node.op_type == "Identity" and node.domain in ("", "ai.onnx") \
            and node.inputs and node.inputs[0] is not None:
        node = node.inputs[0].producer()
    if node is None or node.domain not in ("", "ai.onnx") \
            or c.options.loss.name not in ACTIVATIONS.get(node.op_type, ()):
        return
    logits = node.inputs[0]
    if logits is None or logits.dtype is None or not _over_classes(node, logits):
        return
    c.loss_input = logits
    c.notes.append(
        f"the model ends in {node.op_type} (node {node.name!r}): the {c.options.loss.name} "
        f"loss reads its input {logits.name!r}, the logits it is defined on, while infer "
        f"still returns {c.prediction.name!r} (to apply a loss to {c.prediction.name!r} "
        "itself, choose another loss)")


def _over_classes(node: ir.Node, logits: ir.Value) -> bool:
    """Softmax and LogSoftmax must normalize the class axis of [batch, classes] logits, the
    axis the cross-entropy uses; Sigmoid is element-wise."""
    if node.op_type == "Sigmoid":
        return True
    rank = len(logits.shape) if logits.shape is not None else None
    attr = node.attributes.get("axis")
    axis = attr.as_int() if attr is not None else -1
    return rank == 2 and axis in (1, -1)
