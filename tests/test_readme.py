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
