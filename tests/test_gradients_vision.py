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
# Spatial sizes known only at run time (declared "L", "H", "W"): the rules' conv_dynamic forms.
# Strides that leave rows no window reaches ((x + pads − k_eff) mod stride ≠ 0), dilations,
# asymmetric pads, groups; ungrouped im2col, the large-kernel and grouped Conv forms.
row("Conv", [X((2, 3, 12), declared=("N", 3, "L")), X((4, 3, 3)), X((4,))],
    lambda x, w, b: F.conv1d(F.pad(x, (1, 2)), w, b, stride=3, dilation=2), "dynamic-1d",
    attrs={"strides": [3], "pads": [1, 2], "dilations": [2]})
row("Conv", [X((2, 3, 8, 7), declared=("N", 3, "H", "W")), X((4, 3, 3, 3))],
    lambda x, w: F.conv2d(padded(x, (1, 1, 2, 0)), w, stride=2, dilation=(2, 1)),
    "dynamic-2d-dilated", attrs={"strides": [2, 2], "pads": [1, 1, 2, 0], "dilations": [2, 1]})
row("Conv", [X((2, 4, 7, 6), declared=("N", 4, "H", "W")), X((6, 2, 3, 2)), X((6,))],
    lambda x, w, b: F.conv2d(padded(x, (1, 0, 0, 1)), w, b, stride=(2, 3), dilation=(1, 2),
                             groups=2), "dynamic-grouped",
    attrs={"group": 2, "strides": [2, 3], "pads": [1, 0, 0, 1], "dilations": [1, 2]})
row("Conv", [X((2, 4, 10), declared=("N", 4, "L")), X((4, 1, 3))],
    lambda x, w: F.conv1d(x, w, stride=2, padding=1, groups=4), "dynamic-depthwise",
    attrs={"group": 4, "strides": [2], "pads": [1, 1]})
row("Conv", [X((1, 2, 10, 9), declared=(1, 2, "H", "W")), X((2, 2, 8, 7)), X((2,))],
    lambda x, w, b: F.conv2d(padded(x, (0, 1, 1, 0)), w, b, stride=(2, 1)),
    "dynamic-large-kernel", attrs={"strides": [2, 1], "pads": [0, 1, 1, 0]})
row("Conv", [X((1, 2, 5, 4, 5), declared=(1, 2, "D", "H", "W")), X((3, 2, 2, 2, 2))],
    lambda x, w: F.conv3d(F.pad(x, (1, 1, 1, 0, 0, 1)), w, stride=(2, 1, 2)), "dynamic-3d",
    attrs={"strides": [2, 1, 2], "pads": [0, 1, 1, 1, 0, 1]})
row("Conv", [X((2, 8, 5), declared=("N", 8, "L")), X((1, 8, 1)), X((1,))],
    lambda x, w, b: F.conv1d(x, w, b), "dynamic-pointwise")
# SAME with a stride: the pads depend on the size (7 → 1 + 1, 6 → 0 + 1; 9 → 1 + 0).
row("Conv", [X((2, 3, 7, 6), declared=("N", 3, "H", "W")), X((2, 3, 3, 3)), X((2,))],
    lambda x, w, b: F.conv2d(padded(x, (1, 0, 1, 1)), w, b, stride=2), "dynamic-same-upper",
    attrs={"auto_pad": "SAME_UPPER", "strides": [2, 2]})
row("Conv", [X((2, 4, 9), declared=("N", 4, "L")), X((4, 2, 4))],
    lambda x, w: F.conv1d(F.pad(x, (1, 0)), w, stride=3, groups=2), "dynamic-same-lower-grouped",
    attrs={"auto_pad": "SAME_LOWER", "strides": [3], "group": 2})
row("Conv", [X((2, 3, 6), declared=("N", 3, "L")), X((2, 3, 4))],
    lambda x, w: F.conv1d(F.pad(x, (2, 1)), w), "dynamic-same-lower-stride1",
    attrs={"auto_pad": "SAME_LOWER"})

# -- ConvTranspose ---------------------------------------------------------------------------
row("ConvTranspose", [X((2, 3, 4), declared=("N", 3, "L")), X((3, 2, 3)), X((2,))],
    lambda x, w, b: F.conv_transpose1d(x, w, b, stride=2, padding=1, output_padding=1),
    "dynamic-1d", attrs={"strides": [2], "pads": [1, 1], "output_padding": [1]})
row("ConvTranspose", [X((2, 2, 3, 4), declared=("N", 2, "H", "W")), X((2, 3, 2, 3))],
    lambda x, w: F.conv_transpose2d(x, w, stride=(1, 2), dilation=(2, 1)), "dynamic-dilated",
    attrs={"strides": [1, 2], "dilations": [2, 1]})
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

# -- rules added for ONNX's operator test cases ------------------------------------------------
# MaxPool at stride 1 without dilation: onnx.reference takes a path whose Indices point at
# elements that are not their window's maximum (the reference backend replaces it).
row("MaxPool", [X((2, 2, 5, 6))], lambda x: F.max_pool2d(x, 2, 1), "overlapping-stride1",
    attrs={"kernel_shape": [2, 2]})
row("MaxPool", [X((2, 2, 5, 6))], lambda x: F.max_pool2d(x, 3, 1, 1), "overlapping-same-upper",
    attrs={"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER"})
row("MaxPool", [X((2, 2, 6, 6))], lambda x: F.max_pool2d(x, 2, 2), "storage-order-1",
    attrs={"kernel_shape": [2, 2], "strides": [2, 2], "storage_order": 1})
# Grouped Conv whose pads exceed the kernel: the input gradient's full correlation crops.
row("Conv", [X((1, 4, 5, 5)), X((4, 2, 2, 2))],
    lambda x, w: F.conv2d(x, w, padding=2, groups=2), "grouped-pads-past-kernel",
    attrs={"pads": [2, 2, 2, 2], "group": 2})
# ConvTranspose with an output_shape past its natural size (a trailing zero row and column).
row("ConvTranspose", [X((1, 1, 3, 3)), X((1, 2, 3, 3))],
    lambda x, w: F.conv_transpose2d(x, w, stride=(3, 2), output_padding=(1, 1)),
    "output-shape-past-natural", attrs={"output_shape": [10, 8], "strides": [3, 2]})
row("LpPool", [X((2, 2, 5, 5), away_from(0.0))],
    lambda x: F.lp_pool2d(x, 2, 2, 1), "p2", attrs={"kernel_shape": [2, 2], "p": 2})
row("LpPool", [X((2, 2, 6, 6), away_from(0.0))], None, "p3-pads-strides",
    attrs={"kernel_shape": [3, 3], "p": 3, "pads": [1, 1, 1, 1], "strides": [2, 2]})
row("LpPool", [X((1, 2, 7), away_from(0.0))], lambda x: F.lp_pool1d(x, 2, 3, 2), "1d",
    attrs={"kernel_shape": [3], "p": 2, "strides": [2]})
row("GlobalLpPool", [X((2, 3, 4, 4), away_from(0.0))],
    lambda x: x.pow(2).sum((2, 3), keepdim=True).sqrt(), "p2")
row("GlobalLpPool", [X((2, 3, 5), away_from(0.0))],
    lambda x: x.abs().pow(3).sum(2, keepdim=True).pow(1 / 3), "p3-1d", attrs={"p": 3})
row("GroupNormalization", [X((2, 4, 3, 3)), X((4,)), X((4,))],
    lambda x, s, b: F.group_norm(x, 2, s, b, eps=E32(1e-5)), "opset21",
    attrs={"num_groups": 2, "stash_type": TensorProto.DOUBLE}, opset=21)
row("GroupNormalization", [X((2, 6, 4)), X((6,)), X((6,))],
    lambda x, s, b: F.group_norm(x, 3, s, b, eps=E32(1e-3)), "1d-epsilon",
    attrs={"num_groups": 3, "epsilon": 1e-3, "stash_type": TensorProto.DOUBLE}, opset=21)
row("LpNormalization", [X((3, 4), away_from(0.0))], lambda x: F.normalize(x, 2, -1), "p2")
row("LpNormalization", [X((3, 4), away_from(0.0))], lambda x: F.normalize(x, 1, 0),
    "p1-axis0", attrs={"axis": 0, "p": 1})
row("LRN", [X((2, 5, 3, 3))],
    lambda x: F.local_response_norm(x, 3, E32(1e-2), E32(0.75), 2.0), "size3",
    attrs={"size": 3, "alpha": 1e-2, "beta": 0.75, "bias": 2.0}, opset=13)
row("LRN", [X((3, 4, 2, 2))],
    lambda x: F.local_response_norm(x, 5, E32(0.5), E32(0.5), 1.0), "window-past-channels",
    attrs={"size": 5, "alpha": 0.5, "beta": 0.5}, opset=13)
row("Col2Im", [X((1, 8, 6)), C(i64(3, 4)), C(i64(2, 2))],
    lambda x: F.fold(x, (3, 4), (2, 2)), "2x2")
row("Col2Im", [X((2, 4, 12)), C(i64(5, 5)), C(i64(1, 2))],
    lambda x: F.fold(x, (5, 5), (1, 2), dilation=(1, 2), padding=(1, 0), stride=(2, 1)),
    "strides-pads-dilations", attrs={"strides": [2, 1], "pads": [1, 0, 1, 0],
                                     "dilations": [1, 2]})
# Multiples of 1/64: onnx.reference maps grid points to pixel coordinates in float32, exactly
# for these (torch, in float64, then samples the very same points).
GRID = np.round(np.random.default_rng(11).uniform(-1.1, 1.1, (2, 3, 4, 2)) * 64) / 64
for mode, tmode in (("linear", "bilinear"), ("nearest", "nearest"), ("cubic", "bicubic")):
    for pad_mode in ("zeros", "border", "reflection"):
        for corners in (0, 1):
            # torch's bicubic weights differ from onnx.reference's in the 7th digit.
            row("GridSample", [X((2, 2, 4, 5)), C(GRID)],
                None if mode == "cubic" else lambda x, tm=tmode, pm=pad_mode, c=corners:
                F.grid_sample(x, torch.as_tensor(GRID), tm, pm, align_corners=bool(c)),
                f"{mode}-{pad_mode}-corners{corners}", opset=20,
                attrs={"mode": mode, "padding_mode": pad_mode, "align_corners": corners})
# align_corners with scales that leave a fractional size: onnx.reference and onnxruntime
# interpolate differently; each runtime's gradient follows its own forward (the onnxruntime
# side against torch: test_resize_align_corners_downsampling_on_onnxruntime).
for mode in ("linear", "cubic"):
    row("Resize", [X((1, 2, 5, 6)), None, C(f32(1, 1, 0.6, 0.7))], None,
        f"{mode}-align-corners-downsample",
        attrs={"mode": mode, "coordinate_transformation_mode": "align_corners"})
row("Resize", [X((1, 1, 4, 4)), C(f32(0, 0, 0.4, 0.6, 1, 1, 0.6, 0.8)), None,
               C(i64(1, 1, 3, 3))], None, "tf-crop-and-resize",
    attrs={"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
           "extrapolation_value": 10.0})

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


#: Rows whose forward onnxruntime computes differently from onnx.reference (each gradient is
#: its runtime's own, so they cannot agree).
ORT_DIFFERS = {*(f"GridSample-cubic-border-corners{c}" for c in (0, 1)),
               *(f"Resize-{m}-align-corners-downsample" for m in ("linear", "cubic"))}


@pytest.mark.parametrize("case", [p for p, c in zip(params(CASES), CASES, strict=True)
                                  if not c.xfail and c.id not in ORT_DIFFERS])
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


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_align_corners_downsampling_on_onnxruntime(mode: str) -> None:
    """onnxruntime downsamples with align_corners as torch does (the corners map onto the
    corners), onnx.reference otherwise: the rule takes the interpolation weights from the
    runtime's own Resize, so the onnxruntime gradient is torch's."""
    from gradcheck import differentiate

    rng = np.random.default_rng(13)
    x = rng.standard_normal((1, 2, 5, 6)).astype(np.float32)
    r = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode,
                          coordinate_transformation_mode="align_corners"),
         helper.make_node("Mul", ["y", "r"], ["yr"]),
         helper.make_node("ReduceSum", ["yr"], ["loss"], keepdims=0)], "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
        initializer=[numpy_helper.from_array(f32(1, 1, 0.6, 0.7), "scales"),
                     numpy_helper.from_array(r, "r")])
    m = onnx.shape_inference.infer_shapes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)]), strict_mode=True)
    model, _ = differentiate(m, ["x"])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    loss, grad = sess.run(["loss", "grad_x"], {"x": x})
    xt = torch.tensor(x, requires_grad=True)
    y = F.interpolate(xt, size=(3, 4), mode="bilinear" if mode == "linear" else "bicubic",
                      align_corners=True)
    tl = (y * torch.as_tensor(r)).sum()
    tl.backward()
    np.testing.assert_allclose(loss, tl.item(), rtol=1e-5)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
