"""The names and version numbers every part of the format shares (a leaf module)."""

from __future__ import annotations

from typing import Any

#: Version of the trainable file format. 2: every driver commits a training step's new state
#: only when the step counter advanced by one, and signature inputs and outputs carry roles.
#: Files of version 1 keep loading.
FORMAT_VERSION = 1
META_KEY = "edgetrain"
STEP_NAME = "edgetrain.step"
CHECKPOINT_KIND = "edgetrain-checkpoint"


def producer_version() -> str:
    from .. import __version__

    return __version__


def committed(old_step: Any, new_step: Any, steps: int = 1) -> bool:
    """The commit rule every driver follows: keep a call's new state only when the step
    counter advanced by exactly the number of steps the call ran (one for ``train``, K for
    ``train_steps``). A step whose loss, rate or committed values were not finite does not
    count, so its call advances less and its outputs are dropped."""
    return int(new_step) == int(old_step) + steps
