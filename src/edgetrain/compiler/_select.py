"""Selection: apply a graph rewrite (LoRA) if asked, then decide which weights train."""

from __future__ import annotations

from .. import select as _select
from .._ir import Builder, dims, find
from .._lora import LoRA
from ..errors import EdgetrainError
from ._state import Compilation


def apply_lora(c: Compilation) -> None:
    """Pass: add LoRA adapters to the inference graph when ``trainable`` is ``select.lora``."""
    lora = c.options.trainable
    if not isinstance(lora, LoRA):
        return
    c.lora = lora.rewrite(c.main, Builder(c.main, c.opset, c.namer))
    c.selected = list(c.lora.trainable)
    if lora.also:
        c.selected += [n for n in _select.resolve(lora.also, c.main) if n not in c.selected]


def select_trainables(c: Compilation) -> None:
    """Pass: resolve ``trainable`` into initializer names; find the prediction and label."""
    if c.lora is None:
        c.selected = _select.resolve(c.options.trainable, c.main)
    if not c.selected:
        raise EdgetrainError("nothing to train: the model has no float weights selected")
    outputs = [str(o.name) for o in c.main.outputs]
    pred = c.options.output or outputs[0]
    if pred not in outputs:
        raise EdgetrainError(f"output {pred!r} is not a model output; outputs are {outputs}")
    c.prediction = find(c.main, pred)
    if c.prediction is None or c.prediction.dtype is None:
        raise EdgetrainError(f"no type information for the output {pred!r}")
    if c.options.labels not in ("index", "onehot"):
        raise EdgetrainError(f"labels must be 'index' or 'onehot', got {c.options.labels!r}")
    c.label_type, c.label_shape = c.options.loss.label_spec(
        dims(c.prediction), c.prediction.dtype, c.options.labels)
