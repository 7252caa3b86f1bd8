"""The names, version numbers and the commit rule every part of the format shares (a leaf)."""

from __future__ import annotations

from typing import SupportsInt

#: Version of the trainable file format. 2: every driver commits a training step's new state
#: only when the step counter advanced by exactly the number of steps the call ran
#: (:func:`committed`), and signature inputs and outputs carry roles. 3: state that only
#: training reads (optimizer slots, the step counter) is stored with the train graph
#: (training_info[0].algorithm), not in the inference graph. Files of versions 1 and 2 keep
#: loading.
FORMAT_VERSION = 3
META_KEY = "edgetrain"
STEP_NAME = "edgetrain.step"
CHECKPOINT_KIND = "edgetrain-checkpoint"


def committed(old_step: SupportsInt, new_step: SupportsInt, steps: int = 1) -> bool:
    """The commit rule: keep a call's new state only if this is true.

    Each training step advances the step counter by one exactly when the loss, the learning
    rate and every value the step commits (new weights, optimizer slots, running statistics)
    are finite; otherwise it returns the old counter. A call that runs ``steps`` steps
    (one for ``train``, K for ``train_steps``) is kept only when the counter advanced by
    exactly ``steps``: a step that did not count makes the call advance less, and any other
    change (a graph that jumps or wraps the counter) is not a step either. A driver that
    finds no counter among a signature's updates commits unconditionally.
    """
    return int(new_step) == int(old_step) + steps


def producer_version() -> str:
    from .. import __version__

    return __version__

