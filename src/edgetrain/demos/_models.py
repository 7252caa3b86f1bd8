"""Inference models built directly with onnx.helper (no framework needed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _linear_init(rng: np.random.Generator, fan_in: int, fan_out: int, torch_layout: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias; the
    weight [fan_out, fan_in] as torch stores it (read with Gemm transB=1), or [fan_in, fan_out]."""
    bound = 1.0 / np.sqrt(fan_in)
    shape = (fan_out, fan_in) if torch_layout else (fan_in, fan_out)
    w = rng.uniform(-bound, bound, size=shape).astype(np.float32)
    b = rng.uniform(-bound, bound, size=(fan_out,)).astype(np.float32)
    return w, b


def seed_mlp(image_shape: tuple[int, ...] = (8, 8), hidden: int = 128, classes: int = 10,
             seed: int = 0, *, names: tuple[str, str] = ("dense1", "dense2"),
             torch_layout: bool = False) -> onnx.ModelProto:
    """The seed walkthrough's model: flatten → dense(hidden, relu) → dense(classes) logits.

    Weights use PyTorch's default ``nn.Linear`` initialisation, drawn from a seeded generator
    so every process builds the same starting point; ``names`` name the two layers, and
    ``torch_layout`` stores the weights as torch does ([out, in], Gemm with transB=1).
    """
    rng = np.random.default_rng(seed)
    n_in = int(np.prod(image_shape))
    (w1, b1), (w2, b2) = (_linear_init(rng, n_in, hidden, torch_layout),
                          _linear_init(rng, hidden, classes, torch_layout))
    l1, l2 = names
    t: dict[str, Any] = {"transB": 1} if torch_layout else {}
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["flat", f"{l1}.weight", f"{l1}.bias"], ["h"], name=l1, **t),
        helper.make_node("Relu", ["h"], ["h_relu"], name="relu1"),
        helper.make_node("Gemm", ["h_relu", f"{l2}.weight", f"{l2}.bias"], ["logits"], name=l2,
                         **t),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w1, f"{l1}.weight"), (b1, f"{l1}.bias"), (w2, f"{l2}.weight"), (b2, f"{l2}.bias")]]
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
