"""onnxruntime-training 1.19.2: ``artifacts.generate_artifacts`` on the workload's inference
ONNX (offline), then ``training.api`` (CheckpointState, Module, Optimizer) to train."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from _common import Peer, main, threads

ARTIFACTS = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint")


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

        model = onnx.load(os.path.join(os.path.dirname(outdir), "model.onnx"))
        floats = [t.name for t in model.graph.initializer
                  if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)]
        trainable = spec.get("trainable") or floats
        frozen = [n for n in floats if n not in set(trainable)]
        o = spec["optimizer"]
        if o["name"] == "sgd":
            opt: Any = artifacts.OptimType.SGD
        else:  # Adam = AdamW without weight decay; eps as the other systems use
            opt = onnxblock.optim.AdamW(betas=tuple(o["betas"]), eps=o["eps"], weight_decay=0.0)
        artifacts.generate_artifacts(model, requires_grad=trainable, frozen_params=frozen,
                                     loss=artifacts.LossType.CrossEntropyLoss, optimizer=opt,
                                     artifact_directory=outdir)
        return [os.path.join(outdir, f) for f in ARTIFACTS]

    def load(self, spec: dict[str, Any], outdir: str) -> None:
        import onnxruntime

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

    def step(self, batch: Any) -> float:
        x, y = batch
        loss = self.module(x, y)
        self.opt.step()
        self.module.lazy_reset_grad()
        return float(loss)


if __name__ == "__main__":
    main(OrtTrainingPeer)
