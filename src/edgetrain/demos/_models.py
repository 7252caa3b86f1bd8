"""Inference models built directly with onnx.helper (no framework needed)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _linear_init(rng: np.random.Generator, fan_in: int, fan_out: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / np.sqrt(fan_in)
    w = rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(np.float32)
    b = rng.uniform(-bound, bound, size=(fan_out,)).astype(np.float32)
    return w, b


def seed_mlp(image_shape: tuple[int, int] = (8, 8), hidden: int = 128, classes: int = 10,
             seed: int = 0) -> onnx.ModelProto:
    """The seed walkthrough's model: flatten → dense(hidden, relu) → dense(classes) logits."""
    rng = np.random.default_rng(seed)
    n_in = int(np.prod(image_shape))
    w1, b1 = _linear_init(rng, n_in, hidden)
    w2, b2 = _linear_init(rng, hidden, classes)
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["flat", "dense1.weight", "dense1.bias"], ["h"], name="dense1"),
        helper.make_node("Relu", ["h"], ["h_relu"], name="relu1"),
        helper.make_node("Gemm", ["h_relu", "dense2.weight", "dense2.bias"], ["logits"],
                         name="dense2"),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w1, "dense1.weight"), (b1, "dense1.bias"), (w2, "dense2.weight"),
              (b2, "dense2.bias")]]
    graph = helper.make_graph(
        nodes, "seed_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *image_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="edgetrain")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
