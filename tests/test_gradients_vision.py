"""Gradient table of the vision rules (conv, pool, norm, vision): the same method as
tests/test_gradients.py — each row's autodiff gradient (float64, onnx.reference) must match
central finite differences and torch.autograd — plus a float32 run on onnxruntime, the
default runtime, which must agree with the float64 gradients.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from edgetrain.autodiff import RULES
from gradcheck import (
    C,
    Case,
    X,
    away_from,
    check_finite_differences,
    check_onnxruntime_float32,
    check_standard_onnx,
    check_torch,
    params,
    positive,
)

VISION_MODULES = ("conv", "pool", "norm", "vision")


def i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def E32(v: float) -> float:
    """A float attribute as the graph stores it (float32)."""
    return float(np.float32(v))


def f32(*v: float) -> np.ndarray:
    return np.array(v, dtype=np.float32)


CASES: list[Case] = []


def row(op: str, inputs: list, torch_fn=None, variant: str = "", **kw) -> None:  # type: ignore[no-untyped-def]
    CASES.append(Case(op, inputs, torch=torch_fn, variant=variant, **kw))


def padded(x, pads_2d):  # type: ignore[no-untyped-def]
    """ONNX pads [t, l, b, r] (2-D) as torch's F.pad order (l, r, t, b)."""
    t, left, b, r = pads_2d
    return F.pad(x, (left, r, t, b))


# -- Conv ------------------------------------------------------------------------------------
row("Conv", [X((2, 3, 5, 5)), X((4, 3, 3, 3)), X((4,))],
    lambda x, w, b: F.conv2d(x, w, b, padding=1), "pad1", attrs={"pads": [1, 1, 1, 1]})
row("Conv", [X((2, 3, 7, 6)), X((4, 3, 3, 2)), X((4,))],
    lambda x, w, b: F.conv2d(padded(x, (1, 0, 2, 1)), w, b, stride=(2, 3)),
    "strided-asym-pads", attrs={"strides": [2, 3], "pads": [1, 0, 2, 1]})
row("Conv", [X((2, 3, 7, 7)), X((2, 3, 3, 3))],
    lambda x, w: F.conv2d(x, w, padding=(2, 1), dilation=(2, 1)), "dilated-nobias",
    attrs={"dilations": [2, 1], "pads": [2, 1, 2, 1]})
row("Conv", [X((2, 4, 6, 6)), X((6, 2, 3, 3)), X((6,))],
    lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2), "grouped",
    attrs={"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]})
row("Conv", [X((2, 4, 7, 7)), X((4, 1, 3, 3))],
    lambda x, w: F.conv2d(x, w, stride=2, padding=1, groups=4), "depthwise-strided",
    attrs={"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]})
row("Conv", [X((2, 4, 5, 5)), X((8, 1, 3, 3))],
    lambda x, w: F.conv2d(x, w, padding=2, dilation=2, groups=4), "depthwise-multiplier-dilated",
    attrs={"group": 4, "dilations": [2, 2], "pads": [2, 2, 2, 2]})
row("Conv", [X((2, 3, 6, 5)), X((2, 3, 3, 3)), X((2,))],
    lambda x, w, b: F.conv2d(padded(x, (0, 1, 1, 1)), w, b, stride=2), "same-upper",
    attrs={"auto_pad": "SAME_UPPER", "strides": [2, 2]})
row("Conv", [X((2, 3, 6, 5)), X((2, 3, 3, 3)), X((2,))],
    lambda x, w, b: F.conv2d(padded(x, (1, 1, 0, 1)), w, b, stride=2), "same-lower",
    attrs={"auto_pad": "SAME_LOWER", "strides": [2, 2]})
row("Conv", [X((2, 3, 6, 5)), X((2, 3, 2, 2))],
    lambda x, w: F.conv2d(x, w, stride=2), "valid", attrs={"auto_pad": "VALID",
                                                           "strides": [2, 2]})
row("Conv", [X((2, 3, 9)), X((4, 3, 3)), X((4,))],
    lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1, dilation=2), "1d",
    attrs={"strides": [2], "pads": [1, 1], "dilations": [2]})
row("Conv", [X((2, 3, 5, 5), declared=("N", 3, 5, 5)), X((4, 3, 1, 1)), X((4,))],
    lambda x, w, b: F.conv2d(x, w, b), "pointwise-dynamic-batch")
row("Conv", [X((2, 2, 4, 4)), X((3, 2, 3, 3), grad=False), X((3,))],
    lambda x, w, b: F.conv2d(x, w, b, padding=1), "frozen-kernel",
    attrs={"pads": [1, 1, 1, 1]})
row("Conv", [X((2, 2, 5, 5)), X((3, 2, 2, 2))],
    lambda x, w: F.conv2d(x, w, stride=3, padding=2), "stride-exceeds-kernel",
    attrs={"strides": [3, 3], "pads": [2, 2, 2, 2]})

# -- ConvTranspose ---------------------------------------------------------------------------
row("ConvTranspose", [X((2, 3, 4, 4)), X((3, 2, 3, 3)), X((2,))],
    lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1),
    "strided-outpad", attrs={"strides": [2, 2], "pads": [1, 1, 1, 1],
                             "output_padding": [1, 1]})
row("ConvTranspose", [X((2, 3, 4, 5)), X((3, 2, 2, 3))],
    lambda x, w: F.conv_transpose2d(x, w, stride=(1, 2), dilation=(2, 1)), "dilated",
    attrs={"strides": [1, 2], "dilations": [2, 1]})
row("ConvTranspose", [X((2, 2, 7)), X((2, 3, 4)), X((3,))],
    lambda x, w, b: F.conv_transpose1d(x, w, b, stride=3, padding=2), "1d",
    attrs={"strides": [3], "pads": [2, 2]})
row("ConvTranspose", [X((2, 3, 3, 3)), X((3, 2, 3, 3))],
    lambda x, w: F.conv_transpose2d(x, w, stride=2)[:, :, :6, :6], "same-upper",
    attrs={"strides": [2, 2], "auto_pad": "SAME_UPPER"})
row("ConvTranspose", [X((2, 4, 3, 3)), X((4, 1, 3, 3))],
    lambda x, w: F.conv_transpose2d(x, w, stride=2, groups=2), "grouped",
    attrs={"strides": [2, 2], "group": 2},
    xfail="onnx.reference's ConvTranspose mis-handles group > 1 (its forward is wrong); "
          "the rule is checked on onnxruntime against torch in test_grouped_conv_transpose")

# -- pooling ---------------------------------------------------------------------------------
row("MaxPool", [X((2, 2, 7, 7))], lambda x: F.max_pool2d(x, 3, 2, 1), "overlapping-padded",
    attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]})
row("MaxPool", [X((2, 2, 6, 6))], lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True), "ceil",
    attrs={"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1})
row("MaxPool", [X((2, 2, 7, 7))], lambda x: F.max_pool2d(x, 2, 1, dilation=2),
    "dilated-stride1", attrs={"kernel_shape": [2, 2], "dilations": [2, 2]})
row("MaxPool", [X((2, 3, 8))], lambda x: F.max_pool1d(x, 2, 2), "1d",
    attrs={"kernel_shape": [2], "strides": [2]})
# Windows that never overlap take MaxUnpool in float32 (the onnxruntime rows): floor mode
# leaving a trailing row out, ceil mode running past the end, padding, stride > kernel.
row("MaxPool", [X((2, 2, 7, 7))], lambda x: F.max_pool2d(x, 2, 2), "disjoint-floor",
    attrs={"kernel_shape": [2, 2], "strides": [2, 2]})
row("MaxPool", [X((2, 2, 5, 5))], lambda x: F.max_pool2d(x, 2, 2, ceil_mode=True),
    "disjoint-ceil", attrs={"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1})
row("MaxPool", [X((2, 2, 6, 6))], lambda x: F.max_pool2d(x, 2, 2, padding=1),
    "disjoint-padded", attrs={"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1]})
row("MaxPool", [X((2, 2, 8, 7))], lambda x: F.max_pool2d(x, (2, 1), (3, 2)),
    "disjoint-stride-gt-kernel", attrs={"kernel_shape": [2, 1], "strides": [3, 2]})
row("MaxPool", [X((2, 2, 5, 5))],
    lambda x: F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=-np.inf), 2, 2), "same-upper",
    attrs={"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"})
row("AveragePool", [X((2, 2, 7, 7))],
    lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), "exclude-pad",
    attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]})
row("AveragePool", [X((2, 2, 7, 7))],
    lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=True), "include-pad",
    attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
           "count_include_pad": 1})
row("AveragePool", [X((2, 2, 6, 6))],
    lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
    "ceil-exclude-pad", attrs={"kernel_shape": [3, 3], "strides": [2, 2],
                               "pads": [1, 1, 1, 1], "ceil_mode": 1})
row("AveragePool", [X((2, 2, 6, 6))], None, "ceil-include-pad",
    attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
           "count_include_pad": 1})
row("AveragePool", [X((2, 3, 9))], lambda x: F.avg_pool1d(x, 2, 2), "1d",
    attrs={"kernel_shape": [2], "strides": [2]})
row("AveragePool", [X((2, 2, 5, 5))], None, "same-upper",
    attrs={"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"})
row("GlobalAveragePool", [X((2, 3, 4, 5))], lambda x: x.mean(dim=(2, 3), keepdim=True))
row("GlobalAveragePool", [X((2, 3, 4, 5), declared=("N", 3, "H", "W"))],
    lambda x: x.mean(dim=(2, 3), keepdim=True), "dynamic")
row("GlobalMaxPool", [X((2, 3, 4, 5))], lambda x: x.amax(dim=(2, 3), keepdim=True))

# -- normalization ---------------------------------------------------------------------------


def t_bn_eval(eps: float):  # type: ignore[no-untyped-def]
    def f(x, s, b, m, v):  # type: ignore[no-untyped-def]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return ((x - m.reshape(shape)) / torch.sqrt(v.reshape(shape) + eps) * s.reshape(shape)
                + b.reshape(shape))
    return f


row("BatchNormalization", [X((2, 3, 4, 4)), X((3,)), X((3,)), X((3,)), X((3,), positive)],
    t_bn_eval(E32(1e-3)), "inference", attrs={"epsilon": 1e-3})
row("BatchNormalization", [X((5, 4)), X((4,)), X((4,)), X((4,)), X((4,), positive)],
    t_bn_eval(E32(1e-5)), "inference-2d")
row("BatchNormalization",
    [X((3, 2, 3, 3)), X((2,)), X((2,)), C(np.zeros(2)), C(np.ones(2))],
    lambda x, s, b: F.batch_norm(x, None, None, s, b, training=True, eps=E32(1e-5)),
    "training-mode", attrs={"training_mode": 1}, n_out=3, loss_outputs=[0])
row("InstanceNormalization", [X((2, 3, 4, 5)), X((3,)), X((3,))],
    lambda x, s, b: F.instance_norm(x, weight=s, bias=b, eps=E32(1e-4)), attrs={"epsilon": 1e-4})

# -- activations -----------------------------------------------------------------------------
row("HardSigmoid", [X((3, 4), lambda v: away_from(-2.5, 2.5)(v * 2.0))],
    lambda x: torch.clamp(E32(0.2) * x + 0.5, 0.0, 1.0))
row("HardSigmoid", [X((3, 4), lambda v: away_from(-3.0, 3.0)(v * 3.0))],
    lambda x: torch.clamp(x * E32(1 / 6) + 0.5, 0.0, 1.0), "torch-constants",
    attrs={"alpha": 1 / 6, "beta": 0.5})
row("HardSwish", [X((3, 5), lambda v: away_from(-3.0, 3.0)(v * 3.0))],
    lambda x: x * torch.clamp(x * E32(1 / 6) + 0.5, 0.0, 1.0))
row("Mish", [X((3, 4))], F.mish)
row("PRelu", [X((2, 3, 2, 2), away_from(0.0)), X((3, 1, 1))],
    lambda x, a: torch.where(x > 0, x, a * x), "per-channel")
row("PRelu", [X((4, 3), away_from(0.0)), X((1,))],
    lambda x, a: torch.where(x > 0, x, a * x), "shared")


def n_swish(ins: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    return [helper.make_node("Sigmoid", [ins[0]], ["s"]),
            helper.make_node("Mul", [ins[0], "s"], ["out0"])], ["out0"]


row("Mul", [X((3, 4))], F.silu, "swish-pattern", nodes=n_swish)

# -- Pad -------------------------------------------------------------------------------------
row("Pad", [X((2, 3, 4, 4)), C(i64(0, 0, 1, 2, 0, 0, 2, 0))],
    lambda x: F.pad(x, (2, 0, 1, 2)), "constant")
row("Pad", [X((2, 3, 4, 4)), C(i64(0, 1, 0, 2, 0, 0, 1, 0)), C(np.array(0.5))],
    lambda x: F.pad(x, (2, 0, 0, 1, 1, 0), value=0.5), "constant-value-channels")
row("Pad", [X((2, 3, 4, 5)), C(i64(0, 0, 2, 1, 0, 0, 1, 3))],
    lambda x: F.pad(x, (1, 3, 2, 1), mode="reflect"), "reflect", attrs={"mode": "reflect"})
row("Pad", [X((2, 3, 4, 5)), C(i64(0, 0, 2, 1, 0, 0, 1, 3))],
    lambda x: F.pad(x, (1, 3, 2, 1), mode="replicate"), "edge", attrs={"mode": "edge"})
row("Pad", [X((2, 3, 5)), C(i64(2, 1)), None, C(i64(-1))],
    lambda x: F.pad(x, (2, 1), mode="reflect"), "reflect-axes", attrs={"mode": "reflect"})
row("Pad", [X((2, 3, 4, 4), declared=("N", 3, 4, 4)), C(i64(0, 0, 1, 1, 0, 0, 1, 1))],
    lambda x: F.pad(x, (1, 1, 1, 1), mode="replicate"), "edge-dynamic-batch",
    attrs={"mode": "edge"})

# -- Resize ----------------------------------------------------------------------------------
row("Resize", [X((2, 2, 3, 4)), None, C(f32(1, 1, 2, 2))],
    lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), "nearest-upsample",
    attrs={"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
           "nearest_mode": "floor"})
row("Resize", [X((2, 2, 3, 4)), None, C(f32(1, 1, 2, 2))],
    lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False),
    "linear-half-pixel", attrs={"mode": "linear",
                                "coordinate_transformation_mode": "half_pixel"})
row("Resize", [X((2, 2, 3, 4)), None, None, C(i64(2, 2, 5, 7))],
    lambda x: F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=True),
    "linear-align-corners-sizes", attrs={"mode": "linear",
                                         "coordinate_transformation_mode": "align_corners"})
row("Resize", [X((2, 2, 6, 8)), None, None, C(i64(2, 2, 4, 3))],
    lambda x: F.interpolate(x, size=(4, 3), mode="bilinear", align_corners=False),
    "linear-downsample-sizes", attrs={"mode": "linear"})
row("Resize", [X((2, 3, 5)), None, C(f32(1, 1, 1.5))], None, "nearest-1d-fractional",
    attrs={"mode": "nearest"})

# -- Expand, Tile ----------------------------------------------------------------------------
row("Expand", [X((3, 1)), C(i64(2, 3, 4))], lambda x: x.expand(2, 3, 4))
row("Expand", [X((1, 3, 1, 1)), C(i64(2, 1, 2, 2))], lambda x: x.expand(2, 3, 2, 2), "4d")
row("Tile", [X((2, 3)), C(i64(2, 3))], lambda x: x.repeat(2, 3))
row("Tile", [X((2, 1, 3), declared=("N", 1, 3)), C(i64(1, 4, 2))],
    lambda x: x.repeat(1, 4, 2), "dynamic")

IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS), "row ids must be unique"


# -- the checks ------------------------------------------------------------------------------

@pytest.mark.parametrize("case", params(CASES))
def test_matches_finite_differences(case: Case) -> None:
    check_finite_differences(case)


@pytest.mark.parametrize("case", [p for p, c in zip(params(CASES), CASES, strict=True)
                                  if c.torch is not None])
def test_matches_torch(case: Case) -> None:
    check_torch(case)


@pytest.mark.parametrize("case", [p for p, c in zip(params(CASES), CASES, strict=True)
                                  if not c.xfail])
def test_onnxruntime_float32(case: Case) -> None:
    check_onnxruntime_float32(case)


@pytest.mark.parametrize("case", params(CASES))
def test_rule_graph_is_valid_standard_onnx(case: Case) -> None:
    check_standard_onnx(case)


def test_every_vision_rule_has_a_row() -> None:
    mine = {op for op, fn in RULES.items()
            if fn.__module__.rsplit(".", 1)[-1] in VISION_MODULES}
    assert mine, "the vision rule modules registered nothing"
    missing = sorted(mine - {c.op for c in CASES})
    assert not missing, f"vision rules without a row: {missing}"


def test_grouped_conv_transpose() -> None:
    """Grouped ConvTranspose (which onnx.reference cannot run) on onnxruntime vs torch."""
    from gradcheck import differentiate

    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    r = rng.standard_normal((2, 6, 7, 7)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], group=2,
                            pads=[1, 0, 0, 1], output_padding=[1, 1])
    g = helper.make_graph(
        [node, helper.make_node("Mul", ["y", "r"], ["yr"]),
         helper.make_node("ReduceSum", ["yr"], ["loss"], keepdims=0)], "ct",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, w.shape)],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
        initializer=[numpy_helper.from_array(r, "r")])
    m = onnx.shape_inference.infer_shapes(helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 18)]), strict_mode=True)
    model, _ = differentiate(m, ["x", "w"])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    loss, gx, gw = sess.run(None, {"x": x, "w": w})
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ty = F.conv_transpose2d(tx, tw, stride=2, groups=2, output_padding=1)[:, :, 1:, :-1]
    tl = (ty * torch.tensor(r)).sum()
    tl.backward()
    np.testing.assert_allclose(loss, tl.item(), rtol=1e-4)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("dtype", "kernel", "stride", "scatter"), [
    (TensorProto.FLOAT, 2, 2, "MaxUnpool"), (TensorProto.FLOAT, 3, 2, "ScatterElements"),
    (TensorProto.DOUBLE, 2, 2, "ScatterElements")])
def test_max_pool_backward_kernel(dtype: int, kernel: int, stride: int, scatter: str) -> None:
    """Disjoint float32 windows scatter with MaxUnpool; overlapping windows (a position can
    be the maximum of two windows, so contributions add) and float64 (no onnxruntime kernel)
    keep ScatterElements with reduction="add"; the table rows check both numerically."""
    from gradcheck import differentiate

    g = helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[kernel, kernel],
                          strides=[stride, stride]),
         helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)], "pool",
        [helper.make_tensor_value_info("x", dtype, [2, 3, 9, 9])],
        [helper.make_tensor_value_info("loss", dtype, [])])
    m = onnx.shape_inference.infer_shapes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), strict_mode=True)
    model, _ = differentiate(m, ["x"])
    ops = {n.op_type for n in model.graph.node}
    assert scatter in ops and not {"MaxUnpool", "ScatterElements"} - {scatter} & ops
    # Both backends (onnx.reference with edgetrain's MaxUnpool kernel) against torch; the
    # 9×9 input leaves a trailing row and column out of every window.
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 9)).astype(
        np.float32 if dtype == TensorProto.FLOAT else np.float64)
    xt = torch.tensor(x, requires_grad=True)
    F.max_pool2d(xt, kernel, stride).sum().backward()
    from onnx.reference import ReferenceEvaluator

    from edgetrain.runtime._reference_ops import EXACT_OPS

    sessions = [ort.InferenceSession(model.SerializeToString(),
                                     providers=["CPUExecutionProvider"]),
                ReferenceEvaluator(model, new_ops=EXACT_OPS)]
    for sess in sessions:
        grad = sess.run(["grad_x"], {"x": x})[0]
        np.testing.assert_array_equal(grad, xt.grad.numpy(), err_msg=type(sess).__name__)
