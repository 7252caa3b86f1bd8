"""The seed tutorial's model (flatten → 128 relu → 10) for 8x8 digits, built with onnx.helper.

Built from ONNX directly rather than through torch so that the ``federated`` extra (and a
device) never needs torch to get a model to federate.
"""

from __future__ import annotations

import os

import onnx

from .._api import TrainableModel
from .._api import compile as et_compile
from ..demos._models import seed_mlp as demo_mlp
from ..optim import SGD

__all__ = ["SEED_NAME", "seed_mlp", "seed_trainable"]

SEED_NAME = "seed-mlp"


def seed_mlp(image_shape: tuple[int, ...] = (8, 8), hidden: int = 128, classes: int = 10,
             seed: int = 0) -> onnx.ModelProto:
    """An inference ONNX model: x[N, *image_shape] → Flatten → Gemm → Relu → Gemm → logits,
    layers ``fc1`` and ``fc2`` with torch's weight layout (the demos' seed model otherwise)."""
    return demo_mlp(image_shape, hidden, classes, seed, names=("fc1", "fc2"), torch_layout=True)


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
