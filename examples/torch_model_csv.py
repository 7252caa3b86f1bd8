"""Your own PyTorch model on your own CSV: from_torch, fit with callbacks, then the device file.

    pip install -e '.[torch,demo]'
    python examples/torch_model_csv.py [--out torch-csv-example]

What a user does on day one: a small classifier defined in PyTorch, data in a CSV file with a
label column. The script writes such a CSV first (scikit-learn's wine table stands in for
yours), then: export + compile in one call, read the CSV with the same casting rules the
command line uses, train with a validation split, a cosine schedule, early stopping and a
best-checkpoint callback, and write the two files an app ships — the trainable file (to keep
learning on the device) and a plain inference model with the best weights.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from sklearn.datasets import load_wine

import edgetrain as et
from edgetrain import callbacks as cb


def write_csv(path: str) -> None:
    """Stand-in for your data: 178 wines, 13 measurements, a 'cultivar' label column."""
    wine = load_wine()
    names = [n.replace("/", "_") for n in wine.feature_names]
    with open(path, "w") as f:
        f.write(",".join([*names, "cultivar"]) + "\n")
        for row, label in zip(wine.data, wine.target):
            f.write(",".join([*(f"{v:g}" for v in row), wine.target_names[label]]) + "\n")


class Classifier(torch.nn.Module):
    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(features, 32), torch.nn.ReLU(), torch.nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="torch-csv-example", help="folder for the files it writes")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    csv = os.path.join(args.out, "wine.csv")
    write_csv(csv)

    ds = et.data.read(csv, target="cultivar")  # label names become class indices
    print(f"read {len(ds)} rows, {ds.x.shape[1]} features, classes {ds.classes}")
    # Standardize with statistics a device would ship along with the model.
    mean, std = ds.x.mean(0), ds.x.std(0) + 1e-6
    x = ((ds.x - mean) / std).astype(np.float32)

    torch.manual_seed(0)
    net = Classifier(x.shape[1], len(ds.classes or []))
    tm = et.from_torch(net, torch.zeros(1, x.shape[1]), loss="cross_entropy",
                       optimizer=et.optim.Adam(lr=1e-2))
    m = tm.load()
    best = os.path.join(args.out, "best.safetensors")
    history = m.fit(x, ds.y, epochs=60, batch_size=16, validation_split=0.25, seed=0,
                    metrics=["f1"], progress=False, callbacks=[
                        cb.LearningRateScheduler(cb.CosineDecay()),
                        cb.EarlyStopping(monitor="val_loss", patience=8),
                        cb.ModelCheckpoint(best, monitor="val_accuracy")])
    m.restore(best)  # the best epoch, not the last
    val_acc = max(history.history["val_accuracy"])
    print(f"trained {len(history.history['loss'])} epochs; best validation accuracy "
          f"{val_acc:.3f}, F1 {max(history.history['val_f1']):.3f}")
    tm.save(os.path.join(args.out, "trainable.onnx"))
    m.export(os.path.join(args.out, "inference.onnx"))
    history.plot(os.path.join(args.out, "curve.png"))
    print(f"wrote {args.out}/trainable.onnx, inference.onnx, best.safetensors, curve.png")
    return 0 if val_acc >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
