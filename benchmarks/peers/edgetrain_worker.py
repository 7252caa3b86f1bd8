"""edgetrain's worker: compile the workload's inference ONNX, save the one trainable file,
load it on stock onnxruntime and call its ``train`` signature."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from _common import Peer, main, threads


class EdgetrainPeer(Peer):
    name = "edgetrain"
    backend = "onnxruntime"  # the edgetrain backend that runs the file (see the other workers)

    def import_runtime(self) -> str:
        import onnxruntime

        import edgetrain

        self.et = edgetrain
        if self.backend != "onnxruntime":
            return f"edgetrain {edgetrain.__version__} on {runtime_version(self.backend)}"
        return f"edgetrain {edgetrain.__version__} on onnxruntime {onnxruntime.__version__}"

    def build(self, spec: dict[str, Any], weights: dict[str, np.ndarray],
              batches: list[tuple[np.ndarray, np.ndarray]], outdir: str) -> list[str]:
        from edgetrain.bench import optimizer_from_spec, trainable_from_spec

        # W6: select.lora with the workload's seed makes the same adapters as the other peers'
        tm = self.et.compile(os.path.join(os.path.dirname(outdir), "model.onnx"),
                             loss="cross_entropy", optimizer=optimizer_from_spec(spec["optimizer"]),
                             trainable=trainable_from_spec(spec.get("trainable"),
                                                           spec.get("lora")),
                             batch_norm=spec.get("batch_norm", "frozen"))
        path = os.path.join(outdir, "model.et.onnx")
        tm.save(path)
        return [path]

    def load(self, spec: dict[str, Any], outdir: str) -> None:
        options = {"threads": threads()} if self.backend != "tract" else {}
        self.model = self.et.load(os.path.join(outdir, "model.et.onnx"), backend=self.backend,
                                  **options)

    def prepare(self, batches: list[tuple[Any, np.ndarray]]) -> list[Any]:
        return [(x if isinstance(x, dict) else {"x": x}, y) for x, y in batches]

    def step(self, batch: Any) -> float:
        x, y = batch
        return float(self.model.run("train", **x, y=y)["loss"])


def runtime_version(backend: str) -> str:
    import importlib.metadata as md

    dist = {"iree": "iree-base-runtime", "openvino": "openvino", "tract": "tract"}[backend]
    return f"{dist} {md.version(dist)}"


if __name__ == "__main__":
    main(EdgetrainPeer)
