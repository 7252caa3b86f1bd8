"""Feature caching for ``Model.fit(..., cache_features=True)``.

A model compiled with ``split_features=True`` has a ``features`` signature (the frozen
prefix) and ``train_features`` / ``eval_features`` signatures that start from its output.
The cache runs the prefix once per example and hands the features to the head-only steps,
instead of recomputing the backbone in every step and every evaluation of every epoch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import EdgetrainError


class FeatureCache:
    """Computes features once and estimates the backbone time that caching saves."""

    def __init__(self, model: Any, batch_size: int) -> None:
        missing = [s for s in ("features", "train_features", "eval_features")
                   if s not in model.signatures]
        if missing:
            raise EdgetrainError(f"cache_features needs a model compiled with "
                                 f"split_features=True (missing signatures {missing})")
        self.model = model
        self.batch_size = max(int(batch_size), 64)
        self.seconds: dict[str, float] = {}

    def features(self, xs: Mapping[str, np.ndarray], key: str = "train"
                 ) -> dict[str, np.ndarray]:
        """{"features": …} for every row of ``xs`` (model inputs by name)."""
        t0 = time.perf_counter()
        n = len(next(iter(xs.values())))
        parts = [self.model.run("features", **{k: v[s:s + self.batch_size]
                                               for k, v in xs.items()})["features"]
                 for s in range(0, n, self.batch_size)]
        self.seconds[key] = time.perf_counter() - t0
        return {"features": np.concatenate(parts)}

    def report(self, hist: Any, epochs: int, evaluations_per_epoch: int, progress: bool
               ) -> None:
        """Record (and print) the backbone time: spent once, and saved versus recomputing.

        Without the cache the backbone would run over the training set in every epoch's
        steps and in each of its evaluations, and over the validation set once per epoch.
        """
        train = self.seconds.get("train", 0.0)
        val = self.seconds.get("validation", 0.0)
        spent = train + val
        would = train * epochs * (1 + evaluations_per_epoch) + val * epochs
        hist.feature_seconds = spent
        hist.saved_seconds = max(would - spent, 0.0)
        if progress:
            print(f"feature caching: the frozen backbone ran once ({spent:.2f} s) instead of "
                  f"every epoch; about {hist.saved_seconds:.2f} s saved")
