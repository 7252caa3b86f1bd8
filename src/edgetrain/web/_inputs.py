"""What the page needs to turn the user's own files into the model's input.

A web export records the geometry of the model's data input (an image layout, when the shape
says it is one) and the normalization it knows, so the page can feed images dropped on it:
resized to the input's height and width, pixel values times ``scale`` (1/255, so [0, 1]), then,
when the export was given them, ``(value - mean[c]) / std[c]`` per channel. Tabular (CSV) data
needs no record: the page standardizes each feature with the statistics of the user's own
training rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import EdgetrainError
from ..format import Metadata, TensorSpec

PIXEL_SCALE = 1.0 / 255.0
MAX_SIDE = 4096


def data_input(meta: Metadata) -> TensorSpec:
    """The infer signature's data input: by role (a version-1 file's roles are derived when
    read), else its first input."""
    infer = meta.signatures["infer"]
    return infer.input("data") or infer.inputs[0]


def _side(d: Any) -> bool:
    return isinstance(d, int) and 0 < d <= MAX_SIDE


def image_geometry(sample: Sequence[Any]) -> dict[str, Any] | None:
    """The image layout a per-sample shape implies, or None (not an image)."""
    dims = list(sample)
    if len(dims) == 3 and dims[0] in (1, 3) and _side(dims[1]) and _side(dims[2]):
        return {"layout": "NCHW", "channels": dims[0], "height": dims[1], "width": dims[2]}
    if len(dims) == 3 and dims[2] in (1, 3) and _side(dims[0]) and _side(dims[1]):
        return {"layout": "NHWC", "channels": dims[2], "height": dims[0], "width": dims[1]}
    if len(dims) == 2 and _side(dims[0]) and _side(dims[1]):
        return {"layout": "NHW", "channels": 1, "height": dims[0], "width": dims[1]}
    if len(dims) == 1 and isinstance(dims[0], int) and dims[0] >= 4:
        side = math.isqrt(dims[0])
        if side * side == dims[0]:
            return {"layout": "flat", "channels": 1, "height": side, "width": side}
    return None


def _per_channel(values: Sequence[float] | None, channels: int, what: str,
                 positive: bool) -> list[float] | None:
    if values is None:
        return None
    out = [float(v) for v in values]
    if len(out) not in (1, channels) or not all(math.isfinite(v) and abs(v) <= 1e6 for v in out):
        raise EdgetrainError(f"{what} must be 1 or {channels} finite numbers (one per channel), "
                             f"got {list(values)}")
    if positive and not all(v > 0 for v in out):
        raise EdgetrainError(f"{what} must be positive, got {out}")
    return out


def input_info(meta: Metadata, image_mean: Sequence[float] | None = None,
               image_std: Sequence[float] | None = None) -> dict[str, Any]:
    """The manifest's ``input``: name, dtype, per-sample shape, image layout, normalization."""
    x = data_input(meta)
    sample = list(x.shape[1:])
    image = image_geometry(sample) if x.dtype == "float32" else None
    if image is None and (image_mean is not None or image_std is not None):
        raise EdgetrainError(f"image_mean / image_std need an image input; input {x.name!r} "
                             f"has the per-sample shape {sample}")
    channels = image["channels"] if image else 1
    return {"name": x.name, "dtype": x.dtype, "sample_shape": sample, "image": image,
            "scale": PIXEL_SCALE,
            "mean": _per_channel(image_mean, channels, "image_mean", positive=False),
            "std": _per_channel(image_std, channels, "image_std", positive=True)}
