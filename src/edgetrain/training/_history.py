"""What ``fit`` reports: per-epoch metrics, timings, and a plot of them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np


@dataclass
class History:
    """Per-epoch metrics of :meth:`Model.fit`."""

    history: dict[str, list[float]] = field(default_factory=dict)
    skipped_steps: int = 0
    seconds: float = 0.0
    #: Wall-clock seconds of each epoch (its steps and evaluations).
    epoch_seconds: list[float] = field(default_factory=list)
    #: With ``fit(cache_features=True)``: seconds spent computing the cached features, and the
    #: estimated backbone seconds that recomputing them every epoch would have cost on top.
    feature_seconds: float = 0.0
    saved_seconds: float = 0.0
    #: The epoch (0-based, counting ``initial_epoch``) after which a callback stopped
    #: training early, else None.
    stopped_epoch: int | None = None
    #: What callbacks did that a reader should know ("restored the weights of epoch 4 …").
    notes: list[str] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        """Epochs actually trained (fewer than asked for when stopped early)."""
        return len(self.epoch_seconds)

    def add(self, key: str, value: float) -> None:
        self.history.setdefault(key, []).append(float(value))

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def plot(self, path: str | os.PathLike[str], title: str = "edgetrain training") -> str:
        """Write a PNG of the loss (and accuracy) curves."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys_loss = [k for k in self.history if "loss" in k]
        keys_acc = [k for k in self.history if "accuracy" in k]
        fig, axes = plt.subplots(1, 2 if keys_acc else 1, figsize=(10 if keys_acc else 5, 3.6))
        axes = np.atleast_1d(axes)
        for k in keys_loss:
            axes[0].plot(range(1, len(self.history[k]) + 1), self.history[k], marker="o", label=k)
        axes[0].set_xlabel("epoch")
        axes[0].set_ylabel("loss")
        axes[0].legend()
        axes[0].grid(alpha=0.3)
        if keys_acc:
            for k in keys_acc:
                axes[1].plot(range(1, len(self.history[k]) + 1), self.history[k], marker="o",
                             label=k)
            axes[1].set_xlabel("epoch")
            axes[1].set_ylabel("accuracy")
            axes[1].set_ylim(0, 1.02)
            axes[1].legend()
            axes[1].grid(alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(os.fspath(path), dpi=110)
        plt.close(fig)
        return os.fspath(path)
