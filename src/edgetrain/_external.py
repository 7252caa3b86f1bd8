"""External data of the compiler's *input* models, read only from inside the model's folder.

ONNX lets a model keep tensors in side files named by a path stored in the tensor
(``external_data``: ``location``, ``offset``, ``length``); a model over 2 GiB has to. That path
is data from the file, and ``onnx.load`` or a runtime would follow whatever it says. So the
compiler reads external data itself, and only when every rule holds:

* the location is a plain relative path: not absolute, no drive, no ``..`` and no empty
  component, no NUL;
* resolved with every symlink followed, it is still inside the model's own folder -- the
  folder of the path the caller gave, never the working directory;
* it is a regular file (opened without following a final symlink and without blocking, then
  checked with ``fstat``: no FIFO, device or directory);
* ``offset`` and ``length`` are decimal integers that lie inside the file, and ``length`` is the
  tensor's declared size; in all, at most 2 GiB are read (a compiled file is one protobuf).

Trainable files, unlike input models, never hold external data (:mod:`edgetrain._validate`).
"""

from __future__ import annotations

import os
import re
import stat

import numpy as np
import onnx
from onnx import TensorProto, helper

from ._io import MAX_FILE_BYTES
from ._validate import count_elements, iter_tensors
from .errors import EdgetrainError

_KEYS = {"location", "offset", "length", "checksum"}
_DRIVE = re.compile(r"^[A-Za-z]:")


def has_external_data(t: TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL or len(t.external_data) > 0


def load_external_data(model: onnx.ModelProto, folder: str | None, what: str) -> None:
    """Replace every external-data reference in ``model`` by the bytes it names, in place.

    ``folder`` is the model file's folder, or None for a model given as an object (then any
    external reference is refused: there is no folder it could be confined to). ``what``
    names the model in messages.
    """
    root = os.path.realpath(folder) if folder is not None else None
    budget = MAX_FILE_BYTES
    for t, where in iter_tensors(model):
        if not has_external_data(t):
            continue
        label = f"{what}: tensor {t.name!r} in {where}"
        if root is None:
            raise EdgetrainError(f"{label} keeps its data in an external file; pass the model "
                                 "as a path, so that edgetrain reads it from the model's folder")
        budget -= _inline(t, label, root, budget)


def _entries(t: TensorProto, label: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in t.external_data:
        if e.key not in _KEYS or e.key in out:
            raise EdgetrainError(f"{label} has an unexpected or repeated external-data key "
                                 f"{e.key!r}")
        out[e.key] = e.value
    return out


def _resolve(location: str, root: str, label: str) -> str:
    """The real path of ``location`` inside ``root``, or an error."""
    parts = re.split(r"[\\/]", location)
    if not location or "\x00" in location or len(location) > 4096 \
            or os.path.isabs(location) or _DRIVE.match(location) \
            or any(p in ("", "..") for p in parts):
        raise EdgetrainError(f"{label} names external data at {location[:200]!r}; only a "
                             "plain relative path inside the model's folder is read")
    path = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, path]) != root or path == root:
        raise EdgetrainError(f"{label} names external data {location[:200]!r} that resolves "
                             "outside the model's folder; it is not read")
    return path


def _number(entries: dict[str, str], key: str, default: int | None, label: str) -> int | None:
    v = entries.get(key)
    if v is None:
        return default
    if not (v.isascii() and v.isdigit()) or len(v) > 18:
        raise EdgetrainError(f"{label} has an invalid external-data {key} {v[:40]!r}")
    return int(v)


def _inline(t: TensorProto, label: str, root: str, budget: int) -> int:
    """Read the bytes of one external tensor into it; returns how many were read."""
    entries = _entries(t, label)
    path = _resolve(entries.get("location", ""), root, label)
    if t.data_type == TensorProto.STRING:
        raise EdgetrainError(f"{label}: string tensors cannot be stored externally")
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError) as e:
        raise EdgetrainError(f"{label} has unknown data type {t.data_type}") from e
    size = count_elements(t.dims, label, EdgetrainError) * itemsize
    offset = _number(entries, "offset", 0, label) or 0
    length = _number(entries, "length", size, label)
    if length != size:
        raise EdgetrainError(f"{label} declares {size} bytes but its external data is "
                             f"{length} bytes long")
    if size > budget:
        raise EdgetrainError(f"{label}: the model's external data exceeds the "
                             f"{MAX_FILE_BYTES} bytes edgetrain reads")
    t.raw_data = read_range(path, offset, size, label)
    del t.external_data[:]
    t.data_location = TensorProto.DEFAULT
    return size


def read_range(path: str, offset: int, length: int, label: str) -> bytes:
    """``length`` bytes at ``offset`` of the regular file ``path`` (no symlink, no blocking)."""
    flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_BINARY", 0))
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise EdgetrainError(f"{label}: cannot open its external data: "
                             f"{e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise EdgetrainError(f"{label}: its external data is not a regular file")
        if offset + length > st.st_size:
            raise EdgetrainError(f"{label}: its external data ends at byte {offset + length} "
                                 f"of a {st.st_size}-byte file")
        os.lseek(fd, offset, os.SEEK_SET)
        chunks, left = [], length
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                raise EdgetrainError(f"{label}: its external data file shrank while being read")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise EdgetrainError(f"{label}: cannot read its external data: {e.strerror or e}") from e
    finally:
        os.close(fd)
