"""Deterministic batches that Python and the page's JavaScript draw identically.

mulberry32 is a 32-bit PRNG small enough to write the same way in both languages (its JS twin
is ``mulberry32`` in ``edgetrain.js``): a step's batch is ``batch_size`` indices drawn with
replacement as ``floor(u * n)`` with ``u = next_u32 / 2**32``, exact in IEEE doubles on both
sides. So a browser run and a Python run of ``?seed=S`` see the same examples in the same order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgetrainError

_MASK = 0xFFFFFFFF


def _imul(a: int, b: int) -> int:
    """JavaScript's ``Math.imul`` on unsigned 32-bit patterns."""
    return (a * b) & _MASK


class Mulberry32:
    """The mulberry32 generator with JavaScript's 32-bit integer semantics."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK

    def next_u32(self) -> int:
        self.state = (self.state + 0x6D2B79F5) & _MASK
        a = self.state
        t = _imul(a ^ (a >> 15), 1 | a)
        t = ((t + _imul(t ^ (t >> 7), 61 | t)) & _MASK) ^ t
        return (t ^ (t >> 14)) & _MASK

    def random(self) -> float:
        """A float in [0, 1), the value ``mulberry32`` returns in JavaScript."""
        return self.next_u32() / 4294967296.0


def batch_indices(seed: int, steps: int, batch_size: int, n: int) -> np.ndarray:
    """``[steps, batch_size]`` indices into the ``n`` training examples (with replacement)."""
    if n <= 0 or steps < 0 or batch_size <= 0:
        raise EdgetrainError("batch_indices needs n > 0, steps >= 0 and batch_size > 0")
    rng = Mulberry32(seed)
    return np.array([[int(rng.random() * n) for _ in range(batch_size)] for _ in range(steps)],
                    dtype=np.int64).reshape(steps, batch_size)


def split_indices(seed: int, n: int, test_fraction: float = 0.2
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices of ``n`` rows, as the page's ``splitIndices`` draws them.

    The rows are shuffled (Fisher-Yates, from the last row down, ``j = floor(u * (i + 1))``) and
    the first ``round(n * test_fraction)`` (half rounds up, at least one, at most ``n - 1``)
    are held out.
    """
    rng = Mulberry32(seed)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        perm[i], perm[j] = perm[j], perm[i]
    n_test = 0 if n < 2 else min(n - 1, max(1, int(np.floor(n * test_fraction + 0.5))))
    return np.array(perm[n_test:], dtype=np.int64), np.array(perm[:n_test], dtype=np.int64)


def read_dataset(out_dir: str | os.PathLike[str]
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """The demo data set of a web export as the page feeds it: (x, y, info).

    ``x`` (float32) has the model's input shape per sample and is scaled exactly as the page
    scales it (``pixel * scale``); ``y`` holds int64 class indices, or float32 one-hot rows for
    a model compiled with ``labels="onehot"``. The first ``info["train"]`` rows are the
    training split, the rest are held out.
    """
    out = Path(out_dir)
    manifest = json.loads((out / "edgetrain-web.json").read_text())
    info = manifest.get("dataset")
    if not info:
        raise EdgetrainError(f"the web export in {out} embeds no data set")
    raw = (out / info["file"]).read_bytes()
    n, f = int(info["count"]), int(info["features"])
    pixels = np.frombuffer(raw, dtype=np.uint8, count=n * f, offset=int(info["x_offset"]))
    labels = np.frombuffer(raw, dtype=np.uint8, count=n, offset=int(info["y_offset"]))
    x = (pixels.astype(np.float32) * np.float32(info["scale"])).reshape(
        [n, *info["sample_shape"]])
    y: np.ndarray = labels.astype(np.int64)
    if manifest["meta"].get("labels") == "onehot":
        y = np.eye(int(info["classes"]), dtype=np.float32)[y]
    return x, y, info


def pack_batches(batches: list[dict[str, np.ndarray]]) -> tuple[bytes, list[dict[str, Any]]]:
    """Batches as the JavaScript runners read them (``js/scripts/matrix-jobs.mjs``): one blob
    with every array in C order at an 8-byte aligned offset, and per batch, per input name,
    its ``dtype``, ``shape``, ``offset`` and ``bytes``."""
    blob = bytearray()
    specs: list[dict[str, Any]] = []
    for batch in batches:
        spec = {}
        for name, value in batch.items():
            a = np.ascontiguousarray(value)
            blob += b"\0" * (-len(blob) % 8)
            spec[name] = {"dtype": str(a.dtype), "shape": list(a.shape), "offset": len(blob),
                          "bytes": a.nbytes}
            blob += a.tobytes()
        specs.append(spec)
    return bytes(blob), specs
