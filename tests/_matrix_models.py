"""The models of the runtime conformance matrix, each compiled once with its optimizer and its
batches: the seed MLP with SGD and with Adam, a CNN with MaxPool (Adam), a MobileNetV2-style
net with batch norm in training mode (SGD), and a tiny BERT with LoRA adapters (AdamW).

The torch-built ones need torch (and transformers for BERT); they return None without them so
that the matrix marks those rows as not available instead of failing to import.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

import edgetrain as et

Batch = dict[str, np.ndarray]


@dataclass
class MatrixModel:
    name: str
    proto: onnx.ModelProto  # the compiled trainable file
    batches: list[Batch]  # feeds of the train signature, label included

    def batch(self, i: int) -> Batch:
        return self.batches[i % len(self.batches)]


def mlp_sgd() -> MatrixModel:
    import _models

    tm = et.compile(_models.mlp(), loss="cross_entropy", optimizer=et.optim.SGD(lr=0.05))
    x, y = _models.data(64)
    return MatrixModel("mlp_sgd", tm.proto, [{"x": x[i:i + 16], "y": y[i:i + 16]}
                                             for i in range(0, 64, 16)])


def mlp_adam() -> MatrixModel:
    import _models

    tm = et.compile(_models.mlp(), loss="cross_entropy", optimizer=et.optim.Adam(lr=3e-3))
    x, y = _models.data(64, seed=2)
    return MatrixModel("mlp_adam", tm.proto, [{"x": x[i:i + 16], "y": y[i:i + 16]}
                                              for i in range(0, 64, 16)])


def cnn_adam() -> MatrixModel:
    """The W2 benchmark CNN's layout at a size the pure-NumPy reference trains in seconds:
    conv3x3(8) relu MaxPool2 → conv3x3(16) relu MaxPool2 → dense 32 relu → dense 10 on 1x14x14
    images, batch 8 (MaxPool's gradient is the op runtimes disagree on)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def u(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.uniform(-1, 1, shape) / np.sqrt(fan_in)).astype(np.float32)

    w = {"conv1.weight": u((8, 1, 3, 3), 9), "conv1.bias": u((8,), 9),
         "conv2.weight": u((16, 8, 3, 3), 72), "conv2.bias": u((16,), 72),
         "fc1.weight": u((32, 64), 64), "fc1.bias": u((32,), 64),
         "fc2.weight": u((10, 32), 32), "fc2.bias": u((10,), 32)}
    mk = helper.make_node
    nodes = [mk("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], kernel_shape=[3, 3]),
             mk("Relu", ["c1"], ["r1"]),
             mk("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             mk("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], kernel_shape=[3, 3]),
             mk("Relu", ["c2"], ["r2"]),
             mk("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             mk("Flatten", ["p2"], ["flat"], axis=1),
             mk("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["h"], transB=1),
             mk("Relu", ["h"], ["hr"]),
             mk("Gemm", ["hr", "fc2.weight", "fc2.bias"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                     ["batch", 1, 14, 14])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              ir_version=8)
    tm = et.compile(model, loss="cross_entropy", optimizer=et.optim.Adam(lr=3e-3))
    xs = rng.random((4, 8, 1, 14, 14), dtype=np.float32)
    teacher = rng.standard_normal((196, 10))
    ys = np.argmax(xs.reshape(4, 8, 196) @ teacher, axis=-1).astype(np.int64)
    return MatrixModel("cnn_adam", tm.proto, [{"x": x, "y": y} for x, y in zip(xs, ys)])


def mobilenet_bn_sgd() -> MatrixModel | None:
    """TinyMobileNetV2 (inverted residuals, depthwise convs, ReLU6), batch norm in train mode,
    SGD with momentum.

    Not Adam: the bias of a block's last batch norm feeds a convolution whose own batch norm
    subtracts the batch mean again, so its gradient is exactly zero and what a runtime computes
    for it is rounding noise (1e-9); Adam divides by that noise's own magnitude and takes a
    full step of random sign, so two runtimes that sum in different orders part by 2·lr at
    once. SGD moves such a weight by lr times the noise.
    """
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    from _vision_nets import TinyMobileNetV2

    torch.manual_seed(0)
    net = TinyMobileNetV2()
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((4, 4, 3, 16, 16)).astype(np.float32)
    ys = rng.integers(0, 5, (4, 4)).astype(np.int64)
    tm = et.from_torch(net, torch.tensor(xs[0]),
                       optimizer=et.optim.SGD(lr=0.05, momentum=0.9), batch_norm="train")
    return MatrixModel("mobilenet_bn_sgd", tm.proto,
                       [{"x": x, "y": y} for x, y in zip(xs, ys)])


def bert_lora_adamw() -> MatrixModel | None:
    """A two-layer BERT (transformers' BertModel, random weights) + mean pooling + a linear
    head; LoRA adapters on the query and value projections, and the head, train."""
    if any(importlib.util.find_spec(p) is None for p in ("torch", "transformers")):
        return None
    import torch
    from transformers import BertConfig, BertModel

    from edgetrain.demos.text import export_onnx

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=32, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0)
            self.encoder = BertModel(cfg, add_pooling_layer=False)
            self.head = torch.nn.Linear(32, 3)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask
                             ).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return self.head((h * m).sum(1) / m.sum(1).clamp(min=1e-9))

    torch.manual_seed(0)
    net = Classifier().eval()
    model = export_onnx(net, seq_len=12)
    tm = et.compile(model, loss="cross_entropy", optimizer=et.optim.AdamW(lr=5e-3),
                    trainable=et.select.lora(rank=4, alpha=8, targets=["*query*", "*value*"],
                                             also=["head.*"], seed=0))
    rng = np.random.default_rng(3)
    batches = []
    for _ in range(4):
        ids = rng.integers(1, 64, (4, 12)).astype(np.int64)
        lengths = rng.integers(5, 13, 4)
        mask = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int64)
        batches.append({"input_ids": ids * mask, "attention_mask": mask,
                        "y": rng.integers(0, 3, 4).astype(np.int64)})
    return MatrixModel("bert_lora_adamw", tm.proto, batches)


MODELS: dict[str, Callable[[], MatrixModel | None]] = {
    "mlp_sgd": mlp_sgd, "mlp_adam": mlp_adam, "cnn_adam": cnn_adam,
    "mobilenet_bn_sgd": mobilenet_bn_sgd, "bert_lora_adamw": bert_lora_adamw,
}
