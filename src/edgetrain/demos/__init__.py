"""Runnable demos: ``edgetrain demo`` (the seed walkthrough) and friends.

The demos' model and data are public so that examples and tests can start from them:
:func:`seed_mlp` (the seed walkthrough's ONNX model) and :func:`digits` (scikit-learn's 8x8
handwritten digits, split).
"""

from __future__ import annotations

from ._data import digits
from ._models import seed_mlp

__all__ = ["digits", "seed_mlp"]
