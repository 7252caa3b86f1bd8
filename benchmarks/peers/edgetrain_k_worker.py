"""edgetrain's file on onnxruntime, K steps per call: the ``train_steps`` signature (one ONNX
Loop over K stacked batches), as ``fit`` runs it. A timed block of N steps is one call; the
batches are stacked inside the timed block, as ``fit`` stacks them."""

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

    def steps(self, batches: list[Any]) -> list[float]:
        if len(batches) == 1:
            return [self.step(batches[0])]
        xs = {k: np.stack([b[0][k] for b in batches]) for k in batches[0][0]}
        ys = np.stack([b[1] for b in batches])
        lr = self.model.input_name("train_steps", "lr")
        rate = float(self.spec["optimizer"]["lr"])
        out = self.model.run("train_steps", **xs, y=ys,
                             **{lr: np.full(len(batches), rate, np.float32)})
        return [float(v) for v in np.asarray(next(iter(out.values()))).reshape(-1)]


if __name__ == "__main__":
    main(Peer)
