"""The seed walkthrough, end to end, on a real data set (scikit-learn's digits).

Mirrors the TFLite on-device training tutorial step by step: build the model
(flatten → 128 relu → 10), turn it into one trainable file with train / infer / save / restore,
train a few epochs, save a checkpoint, load the file into a *new* model, restore, infer on
held-out data. Prints the test accuracy and writes a loss/accuracy plot.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import numpy as np
import onnx

from .. import compile as et_compile
from .. import optim
from .._args import Parser, non_negative_int, positive_float, positive_int
from ..errors import EdgetrainError
from ..training import load
from ._data import digits
from ._models import seed_mlp


def run(out_dir: str = "edgetrain-demo", epochs: int = 10, batch_size: int = 32,
        lr: float = 0.05, backend: str = "onnxruntime", seed: int = 0,
        progress: bool | None = None) -> dict[str, float]:
    os.makedirs(out_dir, exist_ok=True)
    x_train, y_train, x_test, y_test = digits(seed=seed)
    print(f"data: scikit-learn digits, {len(y_train)} train / {len(y_test)} held-out images "
          f"of 8x8")

    # 1. The inference model, as an app would ship it.
    base = seed_mlp(seed=seed)
    base_path = os.path.join(out_dir, "inference.onnx")
    onnx.save(base, base_path)

    # 2. One trainable file: train / infer / eval / save / restore.
    tm = et_compile(base_path, loss="cross_entropy",  # labels: int64 class indices [B]
                    optimizer=optim.SGD(lr=lr, momentum=0.9))
    model_path = os.path.join(out_dir, "model.onnx")
    tm.save(model_path)
    print(f"compiled {model_path} ({os.path.getsize(model_path) / 1024:.0f} KiB), signatures:")
    m = load(model_path, backend=backend)
    for sig in m.signatures.values():
        print(f"  {sig!r}")

    # 3. Train on the device: x float32 [B, 8, 8], y int64 class indices [B], as in the
    # README's quick start (one-hot rows would be converted, with a warning).
    t0 = time.perf_counter()
    hist = m.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, seed=seed,
                 validation_data=(x_test, y_test), progress=progress)
    train_s = time.perf_counter() - t0
    for e, (loss, acc) in enumerate(zip(hist["loss"], hist["val_accuracy"]), 1):
        print(f"epoch {e:2d}: loss {loss:.4f}  held-out accuracy {acc:.4f}")
    print(f"trained {epochs} epochs in {train_s:.2f} s")

    # 4. Save the weights to the file system.
    ckpt = os.path.join(out_dir, "checkpoint.safetensors")
    m.run("save", checkpoint_path=ckpt)
    print(f"saved checkpoint {ckpt} ({os.path.getsize(ckpt) / 1024:.0f} KiB)")

    # 5. A new interpreter: load the file, restore, infer on held-out data.
    fresh = load(model_path, backend=backend)
    fresh.run("restore", checkpoint_path=ckpt)
    logits = fresh.predict(x_test)
    acc = float(np.mean(np.argmax(logits, axis=1) == y_test))
    plot = hist.plot(os.path.join(out_dir, "training.png"),
                     title="edgetrain demo: seed MLP on digits")
    print(f"wrote {plot}")
    print(f"test accuracy: {acc:.4f}")
    return {"test_accuracy": acc, "train_seconds": train_s}


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="edgetrain demo", description=__doc__)
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="edgetrain-demo", help="output folder")
    p.add_argument("--epochs", type=positive_int, default=10, help="epochs (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    p.add_argument("--lr", type=positive_float, default=0.05, help="SGD rate (default 0.05)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "reference"],
                   help="the runtime that executes the graphs (default onnxruntime)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the data split and the weights")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: only on a terminal)")


def run_from_args(args: argparse.Namespace) -> int:
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise EdgetrainError(f"--out {args.out!r} exists and is not a folder")
    try:
        import matplotlib  # noqa: F401  (the demo ends with a plot: fail now, not after)
    except ImportError as e:
        raise EdgetrainError("the demo needs matplotlib: pip install 'edgetrain[demo]'") from e
    res = run(args.out, args.epochs, args.batch_size, args.lr, args.backend, args.seed,
              progress=args.progress)
    return 0 if res["test_accuracy"] > 0 else 1
