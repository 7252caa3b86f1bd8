"""edgetrain's file on onnxruntime, K steps per call: the ``train_steps`` signature (one ONNX
Scan over K stacked batches), K = ``Model.steps_per_call`` (16), as ``fit`` runs it. A timed
block of N steps is N / K calls; each call's batches are stacked inside the timed block, as
``fit`` stacks them (fit gathers shuffled array batches straight into the stack)."""

from __future__ import annotations

from typing import Any

import numpy as np
from _common import main
from edgetrain_worker import EdgetrainPeer


class Peer(EdgetrainPeer):
    name = "edgetrain_k"

    def load(self, spec: dict[str, Any], outdir: str) -> None:
        super().load(spec, outdir)
        self.spec = spec
        self.lr_name = self.model.input_name("train_steps", "lr")
        self.loss_name = self.model.signatures["train_steps"].output("loss")

    def steps(self, batches: list[Any]) -> list[float]:
        k = int(self.model.steps_per_call)
        rate = float(self.spec["optimizer"]["lr"])
        losses: list[float] = []
        for start in range(0, len(batches), k):
            chunk = batches[start:start + k]
            if len(chunk) == 1:
                losses.append(self.step(chunk[0]))
                continue
            xs = {name: np.stack([b[0][name] for b in chunk]) for name in chunk[0][0]}
            ys = np.stack([b[1] for b in chunk])
            out = self.model.run("train_steps", **xs, y=ys,
                                 **{self.lr_name: np.full(len(chunk), rate, np.float32)})
            losses += [float(v) for v in np.asarray(out[self.loss_name]).reshape(-1)]
        return losses


if __name__ == "__main__":
    main(Peer)
