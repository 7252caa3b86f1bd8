"""The names, version numbers and the commit rule every part of the format shares (a leaf)."""

from __future__ import annotations

from typing import SupportsInt

#: Version of the trainable file format. 2: every driver commits a training step's new state
#: only when the step counter advanced by exactly one (:func:`committed`), and signature
#: inputs and outputs carry roles. Files of version 1 keep loading.
FORMAT_VERSION = 2
META_KEY = "edgetrain"
STEP_NAME = "edgetrain.step"
CHECKPOINT_KIND = "edgetrain-checkpoint"


def committed(old_step: SupportsInt, new_step: SupportsInt) -> bool:
    """The commit rule: keep a training step's new state only if this is true.

    The step graph advances its counter by one exactly when the loss, the learning rate and
    every value the step commits (new weights, optimizer slots, running statistics) are
    finite; otherwise it returns the old counter. Any other change of the counter (a graph
    that jumps or wraps it) is not a step either. A driver that finds no counter among a
    signature's updates commits unconditionally.
    """
    return int(new_step) == int(old_step) + 1


def producer_version() -> str:
    from .. import __version__

    return __version__
