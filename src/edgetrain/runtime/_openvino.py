"""OpenVINO: each signature's graph read by OpenVINO's ONNX front end and compiled for its CPU
plugin (``openvino`` from PyPI).

The CPU plugin computes in bfloat16 by default on processors that have it (AVX-512 BF16, AMX),
which costs training its precision (losses 1e-3 off onnxruntime's on the seed MLP); this
backend asks for float32 (``INFERENCE_PRECISION_HINT=f32``) unless told otherwise. OpenVINO's
CPU plugin has no float64 arithmetic (it lowers float64 to float32), so a float64 model trains
at float32 precision here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from .. import format as fmt
from ._native import NativeBackend, Runner


class OpenVinoBackend(NativeBackend):
    """OpenVINO Runtime, CPU plugin (or ``device=`` another plugin), float32 by default."""

    name = "openvino"
    requires = ("openvino",)
    shapes = "static"
    extra = "openvino"

    def __init__(self, model: onnx.ModelProto, meta: fmt.Metadata,
                 threads: int | None = None, precision: str = "f32", device: str = "CPU",
                 config: Mapping[str, Any] | None = None) -> None:
        super().__init__(model, meta)
        import openvino as ov

        self._core = ov.Core()
        self.device = device
        self.config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision,
                                       "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.config.update(config or {})

    def compile(self, sig: str, graph: onnx.ModelProto) -> Runner:
        ov_model = self._core.read_model(graph.SerializeToString())
        compiled = self._core.compile_model(ov_model, self.device, self.config)
        request = compiled.create_infer_request()
        n_in = len(graph.graph.input)
        outputs = list(compiled.outputs)

        def run(args: Sequence[Any]) -> Sequence[Any]:
            for i in range(n_in):
                request.set_input_tensor(i, _tensor(args[i]))
            request.infer()
            # The request reuses its output buffers on the next call: keep copies.
            return [request.get_tensor(o).data.copy() for o in outputs]

        return run


def _tensor(value: Any) -> Any:
    import openvino as ov

    arr = np.require(value, requirements="C")
    return ov.Tensor(arr, shared_memory=True) if arr.ndim else ov.Tensor(arr)
