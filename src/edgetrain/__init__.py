"""edgetrain: compile an inference model into one trainable ONNX file; train it on the device.

    import edgetrain as et
    tm = et.compile("model.onnx", loss="cross_entropy", optimizer=et.optim.SGD(lr=0.01))
    tm.save("trainable.onnx")
    m = et.load("trainable.onnx")
    m.run("train", x=xb, y=yb)
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import callbacks, data, losses, optim, select
from ._api import TrainableModel, compile
from .errors import (
    CheckpointError,
    EdgetrainError,
    FormatError,
    InputError,
    NonFiniteError,
    UnsupportedOpError,
)
from .frontends import from_keras, from_torch
from .runtime import Signature
from .training import History, Model, load, metrics

__all__ = [
    "CheckpointError", "EdgetrainError", "FormatError", "History", "InputError", "Model",
    "NonFiniteError", "Signature", "TrainableModel", "UnsupportedOpError", "__version__",
    "callbacks", "compile", "data", "from_keras", "from_torch", "load", "losses", "metrics",
    "optim", "select",
]
