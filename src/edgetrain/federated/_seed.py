"""The seed tutorial's model (flatten → 128 relu → 10) for 8x8 digits, built with onnx.helper.

Built from ONNX directly rather than through torch so that the ``federated`` extra (and a
device) never needs torch to get a model to federate.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .._api import TrainableModel
from .._api import compile as et_compile
from ..optim import SGD

__all__ = ["SEED_NAME", "seed_mlp", "seed_trainable"]

SEED_NAME = "seed-mlp"


def seed_mlp(image_shape: tuple[int, ...] = (8, 8), hidden: int = 128, classes: int = 10,
             seed: int = 0) -> onnx.ModelProto:
    """An inference ONNX model: x[N, *image_shape] → Flatten → Gemm → Relu → Gemm → logits.

    Weights use PyTorch's default ``nn.Linear`` initialisation (uniform ±1/sqrt(fan_in)),
    drawn from a seeded generator so every process builds the same starting point.
    """
    rng = np.random.default_rng(seed)
    n_in = int(np.prod(image_shape))

    def linear(fan_in: int, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
        bound = 1.0 / np.sqrt(fan_in)
        w = rng.uniform(-bound, bound, size=(fan_out, fan_in)).astype(np.float32)
        b = rng.uniform(-bound, bound, size=(fan_out,)).astype(np.float32)
        return w, b

    w1, b1 = linear(n_in, hidden)
    w2, b2 = linear(hidden, classes)
    inits = [numpy_helper.from_array(a, name) for a, name in
             ((w1, "fc1.weight"), (b1, "fc1.bias"), (w2, "fc2.weight"), (b2, "fc2.bias"))]
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "fc2.weight", "fc2.bias"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "seed_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *image_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="edgetrain.federated")
    onnx.checker.check_model(model, full_check=True)
    return model


def seed_trainable(path: str | os.PathLike[str] | None = None, lr: float = 0.2,
                   seed: int = 0) -> TrainableModel:
    """The seed MLP compiled for cross-entropy with plain SGD (no optimizer state to federate).

    Plain SGD keeps FedAvg's textbook form: a client's update depends only on the global
    weights and its own data, never on momentum left over from an earlier round.
    """
    tm = et_compile(seed_mlp(seed=seed), loss="cross_entropy", optimizer=SGD(lr=lr))
    if path is not None:
        tm.save(os.fspath(path))
    return tm
