"""Small real data sets that ship with a PyPI package (no downloads at run time)."""

from __future__ import annotations

import numpy as np


def digits(test_fraction: float = 0.2, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits (1797 images), scaled to [0, 1], split seeded."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - the demo extra installs it
        from ..errors import EdgetrainError

        raise EdgetrainError("the digits data set comes with scikit-learn: "
                             "pip install 'edgetrain[demo]'") from e
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = round(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]
