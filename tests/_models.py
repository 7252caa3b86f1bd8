"""Small inference models built with onnx.helper, for tests that need no torch.

The MLP is the seed's model at digits size (flatten 8x8 -> 128 relu -> 10), exported the way
torch does it: Flatten, Gemm with transB=1 (weights stored [out, in]), a dynamic batch dim.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgetrain.training import Model

IN_SHAPE = (8, 8)
HIDDEN = 128
CLASSES = 10


def mlp(seed: int = 0, dtype: Any = np.float32, dropout: float | None = None,
        hidden: int = HIDDEN, classes: int = CLASSES, opset: int = 18) -> onnx.ModelProto:
    """x [batch, 8, 8] -> logits [batch, classes]; optional Dropout after the hidden ReLU."""
    rng = np.random.default_rng(seed)
    n_in = int(np.prod(IN_SHAPE))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

    def init(name: str, shape: tuple[int, ...], fan_in: int) -> onnx.TensorProto:
        bound = 1.0 / np.sqrt(fan_in)
        return numpy_helper.from_array(rng.uniform(-bound, bound, shape).astype(dtype), name)

    inits = [init("fc1.weight", (hidden, n_in), n_in), init("fc1.bias", (hidden,), n_in),
             init("fc2.weight", (classes, hidden), hidden), init("fc2.bias", (classes,), hidden)]
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["h"], name="fc1",
                         transB=1),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
    ]
    last = "a"
    if dropout is not None:
        inits.append(numpy_helper.from_array(np.array(dropout, dtype=dtype), "drop.ratio"))
        nodes.append(helper.make_node("Dropout", ["a", "drop.ratio"], ["d"], name="drop"))
        last = "d"
    nodes.append(helper.make_node("Gemm", [last, "fc2.weight", "fc2.bias"], ["logits"],
                                  name="fc2", transB=1))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", elem, ["batch", *IN_SHAPE])],
        [helper.make_tensor_value_info("logits", elem, ["batch", classes])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=9)


def data(n: int = 64, seed: int = 1, dtype: Any = np.float32,
         classes: int = CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random images in [0, 1) and learnable class indices (a fixed linear teacher)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, *IN_SHAPE)).astype(dtype)
    teacher = np.random.default_rng(1234).standard_normal((int(np.prod(IN_SHAPE)), classes))
    return x, np.argmax(x.reshape(n, -1) @ teacher, axis=1).astype(np.int64)


def forward(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The MLP in numpy (no dropout): the oracle for inference outputs."""
    h = np.maximum(x.reshape(len(x), -1) @ params["fc1.weight"].T + params["fc1.bias"], 0)
    return h @ params["fc2.weight"].T + params["fc2.bias"]


class Counting(Model):
    """The real model, recording its training calls per signature and their step counts."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[tuple[str, int]] = []

    def run(self, signature: str, **inputs: Any) -> dict[str, Any]:
        if signature in ("train", "train_steps"):
            lr = inputs.get(self.input_name(signature, "lr"))
            self.calls.append((signature, 1 if lr is None or np.ndim(lr) == 0 else len(lr)))
        return super().run(signature, **inputs)
