"""The command line's files: default checkpoints, training progress, backups, output guards.

``edgetrain train FILE`` keeps its training in ``FILE``'s *default checkpoint*
(``FILE.ckpt.safetensors`` next to ``FILE.onnx``) and resumes from it on the next run, so
rerunning a command never silently throws weeks of training away. Next to every checkpoint the
CLI writes a small *progress file* (``FILE.ckpt.json``: step and epoch count) so epoch numbers
go on where they stopped; the checkpoint itself carries the step, and the progress file counts
only when its step agrees with the checkpoint's (a crash between the two writes leaves it stale).

No command may write over one of its own inputs (``export -o FILE``, ``infer -o DATA``, …):
:func:`refuse_overwrite` compares the real files, so links and ``./`` spellings are caught too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from . import format as fmt
from ._io import read_regular_file
from .errors import EdgetrainError

__all__ = ["best_checkpoint", "default_checkpoint", "keep_backup", "progress_path",
           "read_classes", "read_progress", "read_progress_doc", "refuse_folder_holding",
           "refuse_overwrite", "same_file", "say", "writable", "write_progress", "writing"]

_PROGRESS_KIND = "edgetrain-progress"
#: Largest progress file read: class names make it grow, but never beyond this.
_MAX_PROGRESS = 8 << 20
_SUFFIX = ".safetensors"


def say(text: object) -> None:
    """``print``, except that a reader that went away (``| head``) does not stop the command.

    A closed pipe would otherwise raise in the middle of ``train`` and skip the checkpoint
    save that follows; the rest of the output goes to /dev/null instead.
    """
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def default_checkpoint(model_path: str) -> str:
    """Where ``train`` keeps its training: ``model.onnx`` → ``model.ckpt.safetensors``."""
    return os.path.splitext(model_path)[0] + ".ckpt" + _SUFFIX


def best_checkpoint(model_path: str) -> str:
    """Where ``train --save-best`` keeps the best checkpoint: ``model.best.safetensors``."""
    return os.path.splitext(model_path)[0] + ".best" + _SUFFIX


def progress_path(checkpoint: str) -> str:
    """The progress file next to a checkpoint: ``x.safetensors`` → ``x.json``."""
    stem = checkpoint[:-len(_SUFFIX)] if checkpoint.endswith(_SUFFIX) else checkpoint
    return stem + ".json"


def read_progress(checkpoint: str, step: int) -> int | None:
    """The epoch count recorded for ``checkpoint`` at ``step``, or None if there is none."""
    doc = read_progress_doc(checkpoint, step)
    epoch = doc.get("epoch") if doc else None
    return epoch if isinstance(epoch, int) and epoch >= 0 else None


def read_progress_doc(checkpoint: str, step: int | None) -> dict[str, Any] | None:
    """The progress file of ``checkpoint`` if it is one and (``step`` given) agrees with the
    checkpoint's step; else None (a stale or unreadable record is no record)."""
    path = progress_path(checkpoint)
    if not os.path.isfile(path):
        return None
    try:
        doc = json.loads(read_regular_file(path, "progress file", max_bytes=_MAX_PROGRESS))
    except (EdgetrainError, ValueError, RecursionError):
        return None  # unreadable: the epoch count is estimated instead
    if not isinstance(doc, dict) or doc.get("kind") != _PROGRESS_KIND:
        return None
    if step is not None and doc.get("step") != step:
        return None
    return doc


def read_classes(doc: Mapping[str, Any] | None) -> list[str] | None:
    """The class names a progress record keeps (a list of short strings), else None."""
    classes = doc.get("classes") if doc else None
    if isinstance(classes, list) and 0 < len(classes) <= 100_000 and all(
            isinstance(c, str) and 0 < len(c) <= 256 for c in classes) \
            and len(set(classes)) == len(classes):
        return list(classes)
    return None


def write_progress(checkpoint: str, step: int, epoch: int,
                   extra: Mapping[str, Any] | None = None) -> str:
    """Record the step and epoch count of ``checkpoint`` (atomically, after the checkpoint),
    and ``extra`` facts about it (the class names, the best value of a monitored metric)."""
    path = progress_path(checkpoint)
    doc = {**(extra or {}), "kind": _PROGRESS_KIND, "checkpoint": os.path.basename(checkpoint),
           "step": step, "epoch": epoch}
    with writing(path, "progress file"):
        fmt.atomic_write(path, (json.dumps(doc, indent=1) + "\n").encode())
    return path


def keep_backup(checkpoint: str) -> str:
    """Keep ``checkpoint`` (and its progress file) under a new name before it is replaced.

    The backup is a hard link where the file system allows one (no copy, and the later atomic
    replace of ``checkpoint`` leaves it intact), else a copy. Its name ends in ``.safetensors``
    so it can be passed back with ``--checkpoint``. Returns the backup's path.
    """
    stem = checkpoint[:-len(_SUFFIX)] if checkpoint.endswith(_SUFFIX) else checkpoint
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        backup = f"{stem}.bak-{stamp}{'' if n == 1 else f'-{n}'}{_SUFFIX}"
        if not os.path.lexists(backup) and not os.path.lexists(progress_path(backup)):
            break
    else:
        raise EdgetrainError(f"cannot find a free backup name for {checkpoint!r}")
    _link_or_copy(checkpoint, backup, "checkpoint backup")
    if os.path.isfile(progress_path(checkpoint)):
        _link_or_copy(progress_path(checkpoint), progress_path(backup), "progress file backup")
    return backup


def _link_or_copy(src: str, dst: str, what: str) -> None:
    with writing(dst, what):
        try:
            os.link(src, dst)
        except OSError:  # no hard links here (FAT, some network file systems): copy
            fmt.atomic_write(dst, read_regular_file(src, "checkpoint"))


def refuse_overwrite(outputs: Mapping[str, str | None], inputs: Mapping[str, str | None]) -> None:
    """Refuse an output path that is a folder, one of ``inputs``, or another output.

    Keys are how the user named each path ("-o", "FILE", "--data"), so the message points at
    the argument to change.
    """
    seen = [(label, path) for label, path in inputs.items() if path]
    for label, out in outputs.items():
        if not out:
            continue
        if os.path.isdir(out):
            raise EdgetrainError(f"{label} {out!r} is a folder; give a file name")
        for other, path in seen:
            if same_file(out, path):
                raise EdgetrainError(f"{label} {out!r} is the same file as {other} {path!r}; "
                                     "refusing to overwrite it (choose another path)")
        seen.append((label, out))


def refuse_folder_holding(label: str, folder: str, inputs: Mapping[str, str | None]) -> None:
    """Refuse to write into ``folder`` (or a folder inside it) when it holds one of ``inputs``."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise EdgetrainError(f"{label} {folder!r} exists and is not a folder")
    top = os.path.realpath(folder)
    for other, path in inputs.items():
        if path and os.path.commonpath([top, os.path.realpath(path)]) == top:
            raise EdgetrainError(f"{label} {folder!r} holds {other} {path!r}; writing the "
                                 "export there could overwrite it (choose a new folder)")


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def writable(path: str, what: str) -> None:
    """Fail now, before any long work, if ``path``'s folder cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)  # atomic_write creates missing folders
    if not os.path.isdir(folder):
        raise EdgetrainError(f"cannot write {what} {path!r}: {folder!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EdgetrainError(f"cannot write {what} {path!r}: the folder {folder!r} is not "
                             "writable (read-only file system or no permission)")


@contextlib.contextmanager
def writing(path: str, what: str) -> Iterator[None]:
    """Turn a failed write (disk full, read-only folder, no permission) into a clear error."""
    try:
        yield
    except OSError as e:
        raise EdgetrainError(f"cannot write {what} {path!r}: {e.strerror or e}") from e
