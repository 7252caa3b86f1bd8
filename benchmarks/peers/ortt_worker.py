"""onnxruntime-training 1.19.2: ``artifacts.generate_artifacts`` on the workload's inference
ONNX (offline), then ``training.api`` (CheckpointState, Module, Optimizer) to train.

Three ports make it train what the other systems train:

- LoRA (W6): onnxruntime-training has no adapters of its own, so it trains the model with
  the adapters written out (``model_lora.onnx``, the graph ``edgetrain.select.lora`` makes,
  with the same initial A and B) and ``requires_grad`` on the adapters and the head.
- Frozen batch norm (W4, W8): ``generate_artifacts`` turns every ``BatchNormalization`` into a
  training-mode one (batch statistics), frozen layers included. Where the workload keeps the
  running statistics, each batch norm is first written as the same affine function in
  element-wise ops: ``x·s + t`` (s, t constants) where scale and bias are frozen, and
  ``(x - mean)·inv·scale + bias`` (mean, inv constants) where they train.
- LayerNormalization (W6): its gradient in onnxruntime-training reads the node's optional
  ``Mean`` and ``InvStdDev`` outputs, which exported models leave out; the port names them.
- Adam/AdamW: onnxblock builds Hugging Face's AdamW (``adam_mode=1``); the port switches the
  node to PyTorch's (``adam_mode=0``).
- Its on-device optimizers are AdamW and SGD without momentum: a workload with SGD momentum
  (W5, W7) runs with plain SGD, which is reported as a note (its losses differ from the
  third step on, so it does not count as the fastest system).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from _common import Peer, main, threads

ARTIFACTS = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint")


def affine_batch_norms(model: Any, trainable: set[str]) -> Any:
    """Each inference-mode BatchNormalization as Mul/Add (see the module docstring)."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    shapes = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*shapes.graph.value_info, *shapes.graph.input]}
    nodes, new_inits = [], []
    for k, node in enumerate(model.graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "BatchNormalization" or attrs.get("training_mode", 0):
            nodes.append(node)
            continue
        x, scale, bias, mean, var = node.input[:5]
        rank = ranks.get(x, 4)
        arr = {n: numpy_helper.to_array(inits[n]).astype(np.float32)
               for n in (scale, bias, mean, var)}
        inv = 1.0 / np.sqrt(arr[var] + np.float32(attrs.get("epsilon", 1e-5)))
        bshape = [-1] + [1] * (rank - 2)
        p = f"bn_affine_{k}"
        y = node.output[0]

        def const(name: str, v: np.ndarray, p: str = p, bshape: list[int] = bshape) -> str:
            new_inits.append(numpy_helper.from_array(
                v.astype(np.float32).reshape(bshape), f"{p}_{name}"))
            return f"{p}_{name}"

        if scale not in trainable and bias not in trainable:
            s = arr[scale] * inv
            nodes += [helper.make_node("Mul", [x, const("s", s)], [f"{p}_xs"]),
                      helper.make_node("Add", [f"{p}_xs", const("t", arr[bias] - arr[mean] * s)],
                                       [y])]
            continue
        axes = f"{p}_axes"
        new_inits.append(numpy_helper.from_array(np.arange(1, rank - 1, dtype=np.int64), axes))
        nodes += [helper.make_node("Sub", [x, const("mean", arr[mean])], [f"{p}_xc"]),
                  helper.make_node("Mul", [f"{p}_xc", const("inv", inv)], [f"{p}_xn"]),
                  helper.make_node("Unsqueeze", [scale, axes], [f"{p}_g"]),
                  helper.make_node("Unsqueeze", [bias, axes], [f"{p}_b"]),
                  helper.make_node("Mul", [f"{p}_xn", f"{p}_g"], [f"{p}_xg"]),
                  helper.make_node("Add", [f"{p}_xg", f"{p}_b"], [y])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(new_inits)
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def layer_norm_statistics(model: Any) -> Any:
    """Give every LayerNormalization its optional Mean and InvStdDev outputs (see above)."""
    for k, node in enumerate(model.graph.node):
        if node.op_type == "LayerNormalization" and len(node.output) == 1:
            node.output.extend([f"layer_norm_{k}_mean", f"layer_norm_{k}_inv_std_dev"])
    return model


def torch_adam_mode(path: str) -> None:
    """onnxblock's AdamW uses ``adam_mode=1`` (Hugging Face's AdamW: ε added to √v before
    the bias correction); ``adam_mode=0`` is PyTorch's Adam/AdamW, which the others compute."""
    import onnx

    model = onnx.load(path)
    for node in model.graph.node:
        if node.op_type == "AdamWOptimizer":
            for a in node.attribute:
                if a.name == "adam_mode":
                    a.i = 0
    onnx.save(model, path)


class OrtTrainingPeer(Peer):
    name = "ortt"

    def import_runtime(self) -> str:
        import onnxruntime
        from onnxruntime.training import api

        self.api = api
        return f"onnxruntime-training {onnxruntime.__version__}"

    def build(self, spec: dict[str, Any], weights: dict[str, np.ndarray],
              batches: list[tuple[np.ndarray, np.ndarray]], outdir: str) -> list[str]:
        import onnx
        from onnxruntime.training import artifacts, onnxblock

        work = os.path.dirname(outdir)
        model = onnx.load(os.path.join(work, "model_lora.onnx" if spec.get("lora")
                                       else "model.onnx"))
        floats = [t.name for t in model.graph.initializer
                  if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)]
        running = {i for n in model.graph.node if n.op_type == "BatchNormalization"
                   for i in n.input[3:5]}  # statistics, not parameters
        trainable = spec.get("trainable") or [n for n in floats if n not in running]
        model = layer_norm_statistics(model)
        if spec.get("batch_norm", "frozen") == "frozen":
            model = affine_batch_norms(model, set(trainable))
            floats = [n for n in floats if n in {t.name for t in model.graph.initializer}]
        frozen = [n for n in floats if n not in set(trainable)]
        o = spec["optimizer"]
        if o["name"] == "sgd":
            opt: Any = artifacts.OptimType.SGD
        else:  # Adam = AdamW without weight decay; eps as the other systems use
            opt = onnxblock.optim.AdamW(betas=tuple(o["betas"]), eps=o["eps"],
                                        weight_decay=o.get("weight_decay", 0.0))
        artifacts.generate_artifacts(model, requires_grad=trainable, frozen_params=frozen,
                                     loss=artifacts.LossType.CrossEntropyLoss, optimizer=opt,
                                     artifact_directory=outdir)
        if o["name"] != "sgd":
            torch_adam_mode(os.path.join(outdir, "optimizer_model.onnx"))
        return [os.path.join(outdir, f) for f in ARTIFACTS]

    def load(self, spec: dict[str, Any], outdir: str) -> None:
        import onnxruntime

        if spec["optimizer"].get("momentum"):
            self.note = "plain SGD: its SGD has no momentum"
        api = self.api
        so = onnxruntime.SessionOptions()
        if threads() is not None:
            so.intra_op_num_threads = threads()
        state = api.CheckpointState.load_checkpoint(os.path.join(outdir, "checkpoint"))
        self.module = api.Module(os.path.join(outdir, "training_model.onnx"), state,
                                 os.path.join(outdir, "eval_model.onnx"), device="cpu",
                                 session_options=so)
        self.opt = api.Optimizer(os.path.join(outdir, "optimizer_model.onnx"), self.module)
        self.opt.set_learning_rate(spec["optimizer"]["lr"])
        self.module.train()

    def prepare(self, batches: list[tuple[Any, np.ndarray]]) -> list[Any]:
        return [((*x.values(),) if isinstance(x, dict) else (x,), y) for x, y in batches]

    def step(self, batch: Any) -> float:
        x, y = batch
        loss = self.module(*x, y)
        self.opt.step()
        self.module.lazy_reset_grad()
        return float(loss)


if __name__ == "__main__":
    main(OrtTrainingPeer)
