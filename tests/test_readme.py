"""The README's quick start runs as written (given the model file and batches it assumes)."""

from __future__ import annotations

import os
import re

import numpy as np
import onnx
import pytest

from edgetrain.demos._data import digits
from edgetrain.demos._models import seed_mlp

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_quick_start_runs(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> None:
    text = open(README, encoding="utf-8").read()
    section = text[text.index("## Quick start"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    monkeypatch.chdir(tmp_path)
    onnx.save(seed_mlp(), "inference.onnx")
    x, y, _, _ = digits()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 640, 32)]
    scope: dict[str, object] = {"batches": batches}
    exec(compile(code, "README.md", "exec"), scope)
    logits = scope["logits"]
    assert isinstance(logits, np.ndarray) and logits.shape == (len(batches[-1][0]), 10)
    assert os.path.getsize("personal.onnx") > 0 and os.path.getsize("ck.safetensors") > 0
    # The restored model predicts the last batch far better than chance after one epoch.
    assert float(np.mean(np.argmax(logits, 1) == batches[-1][1])) > 0.5


def test_fit_workflow_snippet_runs(tmp_path: os.PathLike[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's second snippet (a CSV, callbacks, metrics, weights-only restore) as written,
    given a trained model ``m`` of 64 features and another optimizer's checkpoint."""
    import edgetrain as et

    text = open(README, encoding="utf-8").read()
    section = text[text.index("## Quick start"):]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[1]
    monkeypatch.chdir(tmp_path)
    x, y, _, _ = digits()
    header = ",".join([f"p{i}" for i in range(64)] + ["label"])
    rows = [",".join([*(f"{v:.4f}" for v in xi.reshape(-1)), str(int(yi))])
            for xi, yi in zip(x[:400], y[:400])]
    with open("train.csv", "w") as f:
        f.write("\n".join([header, *rows]) + "\n")
    model = seed_mlp(image_shape=(64,))  # type: ignore[arg-type]
    et.compile(model, optimizer=et.optim.SGD(lr=0.1)).load().run(
        "save", checkpoint_path="other.safetensors")
    m = et.compile(model, optimizer=et.optim.Adam(lr=3e-3)).load()
    scope: dict[str, object] = {"m": m, "et": et}
    exec(compile(code, "README.md", "exec"), scope)
    history = scope["history"]
    assert {"val_loss", "val_f1", "val_top_3_accuracy"} <= set(history.history)  # type: ignore
    assert os.path.exists("best.safetensors")
    assert m.step == 0  # the SGD checkpoint's weights, a fresh optimizer state
