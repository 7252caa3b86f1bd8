"""tract (Sonos' ONNX runtime in Rust, ``tract`` from PyPI): each signature's graph loaded with
its ONNX front end, optimized and run.

tract types ``Cast(bool → int64)`` as its symbolic dimension type, which its API cannot return;
the portable form (:mod:`._portable`) computes the step counter with ``Where`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from .. import format as fmt
from ._native import NativeBackend, Runner


class TractBackend(NativeBackend):
    name = "tract"
    requires = ("tract",)
    shapes = "fallback"
    decompose_bn = True
    extra = "tract"

    def __init__(self, model: onnx.ModelProto, meta: fmt.Metadata) -> None:
        super().__init__(model, meta)
        import tract

        self._tract = tract

    def compile(self, sig: str, graph: onnx.ModelProto) -> Runner:
        import os
        import tempfile

        fd, path = tempfile.mkstemp(suffix=".onnx", prefix="edgetrain-tract-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(graph.SerializeToString())
            runnable = self._tract.onnx().load(path).into_model().into_runnable()
        finally:
            os.unlink(path)

        def run(args: Sequence[Any]) -> Sequence[Any]:
            tensors = runnable.run([np.require(a, requirements="C") for a in args])
            return [t.to_numpy() for t in tensors]

        return run
