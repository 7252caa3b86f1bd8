"""Adam's bias corrections in a float32 model need no float64 and lose no precision.

Runtimes that compute float64 in float32 (IREE by default, OpenVINO's CPU plugin, GPUs) made
1 − Pow(β, t) cancel: one ulp of β₂ᵗ is 6e-5 of the result at the first step, and Adam runs
drifted from onnxruntime's. The step graph of a float32 model now does no float64 arithmetic,
and its bias corrections are within a few float32 ulps of torch's doubles for t up to 10⁷.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto

import edgetrain as et
from _models import mlp
from edgetrain import format as fmt
from edgetrain._ir import Builder, Namer
from edgetrain.optim import _bias_corrections

BETAS = [(0.9, 0.999), (0.8, 0.99), (0.85, 0.995), (0.5, 0.9999)]
STEPS = np.unique(np.concatenate([np.arange(1, 300), np.geomspace(300, 1e7, 300).astype(int)]))


def _graph() -> onnx.ModelProto:
    t = ir.Value(name="t", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([]))
    g = ir.Graph([t], [], nodes=[], opset_imports={"": 18}, name="bc")
    op = Builder(g, 18, Namer({"t"}))
    g.outputs.extend(v for b in BETAS for v in _bias_corrections(op, t, b, ir.DataType.FLOAT))
    return ir.serde.serialize_model(ir.Model(g, ir_version=8))


def _ulps(run: object) -> float:
    exact = np.array([[1 - b ** float(t) for bb in BETAS for b in bb] for t in STEPS])
    got = np.array([run(np.array(t, np.int64)) for t in STEPS], np.float64)  # type: ignore[operator]
    spacing = np.spacing(exact.astype(np.float32)).astype(np.float64)
    return float(np.max(np.abs(got - exact) / spacing))


def test_bias_corrections_are_float32_accurate_on_onnxruntime() -> None:
    sess = ort.InferenceSession(_graph().SerializeToString())
    assert _ulps(lambda t: [float(v) for v in sess.run(None, {"t": t})]) <= 4


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino")
def test_bias_corrections_are_float32_accurate_on_openvino() -> None:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(_graph().SerializeToString()), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    assert _ulps(lambda t: [float(compiled({"t": t})[o]) for o in compiled.outputs]) <= 4


@pytest.mark.parametrize("optimizer", [et.optim.Adam(lr=1e-3), et.optim.AdamW(lr=1e-3),
                                       et.optim.SGD(lr=0.1, momentum=0.9, dampening=0.1)],
                         ids=["adam", "adamw", "sgd_dampening"])
def test_float32_step_graph_does_no_float64_arithmetic(optimizer: et.optim.Optimizer) -> None:
    """Only casts and comparisons touch float64 (the step counter, exact in either width);
    no arithmetic does."""
    tm = et.compile(mlp(), loss="cross_entropy", optimizer=optimizer)
    graph, _, _ = fmt.standalone(tm.proto, tm.meta, "train")
    inferred = onnx.shape_inference.infer_shapes(graph)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    f64 = [n.op_type for n in inferred.graph.node if n.op_type not in ("Cast", "Equal")
           and any(types.get(v) == TensorProto.DOUBLE for v in [*n.input, *n.output])]
    assert f64 == []


def test_float64_models_keep_float64_bias_corrections() -> None:
    tm = et.compile(mlp(dtype=np.float64), loss="cross_entropy",
                    optimizer=et.optim.Adam(lr=1e-3))
    graph, _, _ = fmt.standalone(tm.proto, tm.meta, "train")
    assert sum(n.op_type == "Pow" for n in graph.graph.node) == 2  # once per step, not per weight
