"""One exception family, so an app can catch everything edgetrain refuses with one clause."""

from __future__ import annotations


class EdgetrainError(Exception):
    """Base of every error edgetrain raises on purpose."""


class UnsupportedOpError(EdgetrainError):
    """An op on a path that needs a gradient has no gradient rule."""


class _StepError(EdgetrainError):
    """An error a training step can raise, in a multi-step call too."""

    def __init__(self, *args: object, completed_steps: int = 0) -> None:
        super().__init__(*args)
        #: Of a multi-step call (``train_steps``), how many steps before the failing one
        #: would have counted (none of the call's steps was kept).
        self.completed_steps = completed_steps


class InputError(_StepError, ValueError):
    """A signature was called with wrong names, shapes or dtypes."""


class CheckpointError(EdgetrainError):
    """A checkpoint is corrupt, foreign or from a newer format."""


class FormatError(EdgetrainError):
    """A model file is not a valid edgetrain file (or from a newer format version)."""


class NonFiniteError(_StepError, FloatingPointError):
    """A training step produced a non-finite loss or gradient; the weights were not changed."""


class BackendError(EdgetrainError):
    """A runtime backend is not installed, or refuses or fails to build a signature's graph."""


__all__ = ["BackendError", "CheckpointError", "EdgetrainError", "FormatError", "InputError",
           "NonFiniteError", "UnsupportedOpError"]
