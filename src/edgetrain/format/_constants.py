"""The names and version numbers every part of the format shares (a leaf module)."""

from __future__ import annotations

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
