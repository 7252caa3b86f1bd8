"""Keep learning across app restarts: train, save a checkpoint, "restart", restore, go on.

    pip install -e '.[demo]'
    python examples/resume_after_restart.py [--out resume-example]

An app cannot keep a process alive for a whole personalization; it trains when it can and
stops when the user leaves. The trainable file never changes on the device; what moves on is a
checkpoint (safetensors: weights, optimizer state, step count), written atomically, so a kill
during a save loses at most the steps since the last one. Restoring into a fresh process gives
the same model, bit for bit, as if the process had never stopped — this script checks that by
training a second model without the restart and comparing the weights.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import edgetrain as et
from edgetrain.demos import digits, seed_mlp  # your own ONNX model and data go here


def session(model_path: str, ckpt: str, x: np.ndarray, y: np.ndarray, epochs: int) -> et.Model:
    """One app session: load the file, pick up the last checkpoint if there is one, train, save."""
    m = et.load(model_path)
    if os.path.exists(ckpt):
        m.run("restore", checkpoint_path=ckpt)
        print(f"  restored step {m.step} from {ckpt}")
    m.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, progress=False)
    m.run("save", checkpoint_path=ckpt)
    print(f"  trained to step {m.step}, saved {ckpt}")
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="resume-example", help="folder for the files it writes")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    x, y, x_test, y_test = digits()

    model_path = os.path.join(args.out, "model.onnx")
    et.compile(seed_mlp(), loss="cross_entropy",
               optimizer=et.optim.Adam(lr=1e-3)).save(model_path)
    ckpt = os.path.join(args.out, "personal.ckpt.safetensors")
    if os.path.exists(ckpt):
        os.remove(ckpt)

    for day in (1, 2, 3):  # three sessions, each a fresh process's worth of state
        print(f"session {day}:")
        m = session(model_path, ckpt, x, y, epochs=2)

    straight = et.load(model_path)  # the same six epochs without a restart
    straight.fit(x, y, epochs=6, batch_size=32, shuffle=False, progress=False)
    same = all(np.array_equal(straight.parameters()[k], v) for k, v in m.parameters().items())
    acc = m.evaluate(x_test, y_test)["accuracy"]
    print(f"held-out accuracy {acc:.3f}; identical to training without restarts: {same}")
    return 0 if same and acc > 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
