"""What the compiler's passes read and write: the options, and the graphs they build.

Each pass is a function ``(Compilation) -> None`` that reads what earlier passes produced and
adds its own product; :data:`edgetrain.compiler.PIPELINE` lists them in order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx_ir as ir

from .. import losses as _losses
from .. import optim as _optim
from .._ir import Builder, Namer, Value
from .._lora import LoRA, LoRAResult
from ..format import Metadata
from ..select import Selector

Trainable = str | list[str] | Selector | LoRA | None


@dataclass
class Options:
    """What the caller asked for (see :func:`edgetrain.compile`)."""

    source: onnx.ModelProto | str | os.PathLike[str]
    loss: _losses.Loss
    optimizer: _optim.Optimizer
    trainable: Any = None
    output: str | None = None
    labels: str = "index"
    batch_norm: str = "frozen"
    split_features: bool = False
    multi_step: bool | None = None  # None: when the step is small (see _steps)
    input_shapes: dict[str, list[int | str | None]] | None = None


@dataclass
class PublicNames:
    """Names of the inputs and outputs edgetrain adds, chosen clear of the model's own."""

    label: str = "y"
    lr: str = "lr"
    loss: str = "loss"
    step: str = "edgetrain.step"


@dataclass
class StepGraph:
    """A training-info graph being built: a copy of the inference graph plus new nodes."""

    graph: ir.Graph
    op: Builder
    inputs: dict[str, Value] = field(default_factory=dict)  # public name → graph input
    outputs: dict[str, Value] = field(default_factory=dict)  # public name → value


@dataclass
class Compilation:
    options: Options
    model: ir.Model | None = None
    opset: int = 18
    namer: Namer = field(default_factory=Namer)
    names: PublicNames = field(default_factory=PublicNames)
    prediction: Value | None = None  # the inference output the loss is on
    #: The value the loss reads when it is not the prediction itself: the logits before a
    #: final Softmax / Sigmoid (see ``_logits``).
    loss_input: Value | None = None
    #: What the compiler decided for the caller that the caller should hear about.
    notes: list[str] = field(default_factory=list)
    label_type: ir.DataType = ir.DataType.INT64
    label_shape: list[Any] = field(default_factory=list)
    lora: LoRAResult | None = None
    selected: list[str] = field(default_factory=list)  # what the caller selected to train
    trainable: list[str] = field(default_factory=list)  # those that reach the loss
    train: StepGraph | None = None
    eval: StepGraph | None = None
    feature_graphs: dict[str, ir.Graph] = field(default_factory=dict)
    feature_tensor: str | None = None
    pred_gradient: _losses.PredGradient | None = None
    grads: dict[str, Value] = field(default_factory=dict)
    #: New initializers of the inference graph: the step counter and optimizer slots.
    state_inits: list[ir.Value] = field(default_factory=list)
    #: state tensor name → the value of its new content in the train graph.
    new_state: dict[str, Value] = field(default_factory=dict)
    #: state tensor name → the train graph output that holds its new content.
    updates: dict[str, str] = field(default_factory=dict)
    bn_state: list[str] = field(default_factory=list)
    #: The ``train_steps`` graph (K steps per call) and its outputs' names per state tensor.
    steps_graph: ir.Graph | None = None
    steps_updates: dict[str, str] = field(default_factory=dict)
    meta: Metadata | None = None
    result: onnx.ModelProto | None = None

    @property
    def main(self) -> ir.Graph:
        assert self.model is not None, "the import pass runs first"
        return self.model.graph

    def step(self) -> StepGraph:
        assert self.train is not None, "the train-graph pass runs first"
        return self.train
