"""edgetrain's file on onnxruntime, K steps per call: the ``train_steps`` signature (one ONNX
Scan over K stacked batches), K as ``fit`` chooses it (the backend's 32, at most 8 MiB of
batches per call: 26 for W1). A timed block of N steps is about N / K calls; each call's
batches are stacked inside the timed block into buffers kept for the next call, as ``fit``
stacks them (fit gathers shuffled array batches straight into such a buffer)."""

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
        from edgetrain.training._loop import STACK_BYTES  # (edgetrain's import is timed)

        self.stack_bytes = STACK_BYTES

    def steps(self, batches: list[Any]) -> list[float]:
        k = int(self.model.steps_per_call or self.model._backend.steps_per_call)
        first = batches[0]
        k = min(k, self.stack_bytes // sum(a.nbytes for a in (*first[0].values(), first[1])))
        rate = float(self.spec["optimizer"]["lr"])
        losses: list[float] = []
        for start in range(0, len(batches), k):
            chunk = batches[start:start + k]
            if len(chunk) == 1:
                losses.append(self.step(chunk[0]))
                continue
            xs = {name: self._stack(name, [b[0][name] for b in chunk]) for name in chunk[0][0]}
            ys = self._stack("", [b[1] for b in chunk])
            out = self.model.run("train_steps", **xs, y=ys,
                                 **{self.lr_name: np.full(len(chunk), rate, np.float32)})
            losses += [float(v) for v in np.asarray(out[self.loss_name]).reshape(-1)]
        return losses

    def _stack(self, name: str, arrays: list[np.ndarray]) -> np.ndarray:
        """Into a buffer kept per shape, as fit does (a fresh stack page-faults every call)."""
        buffers = self.__dict__.setdefault("buffers", {})
        key = (name, len(arrays), arrays[0].shape, arrays[0].dtype.str)
        if key not in buffers:
            buffers[key] = np.empty((len(arrays), *arrays[0].shape), arrays[0].dtype)
        return np.stack(arrays, out=buffers[key])


if __name__ == "__main__":
    main(Peer)
