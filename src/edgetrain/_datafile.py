"""Reading data files (``.npz`` / ``.npy``) that may be hostile, without trusting their sizes.

``np.load`` allocates what an array's header declares before it reads a byte of data, so a
few-hundred-byte ``.npz`` whose ``x.npy`` header claims a shape of 36 TiB ends in a
``MemoryError`` (or worse, the kernel's OOM killer). Here every array header is read first and
checked against the bytes that can actually follow it: the size stored in the file, the zip
member's uncompressed size, and for a deflated member, the most that deflate can expand its
compressed bytes to. Only then is the array read. A ``.npy`` file is one array, taken as ``x``.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Sequence
from typing import IO

import numpy as np
from numpy.lib import format as npformat

from ._io import read_regular_file
from .errors import EdgetrainError

__all__ = ["load_arrays"]

#: Deflate expands at most ~1032:1; a member claiming more than this is lying about its size.
_DEFLATE_RATIO = 1100
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def load_arrays(path: str, required: Sequence[str], optional: Sequence[str] = (),
                what: str = "data file") -> dict[str, np.ndarray]:
    """The arrays ``required`` (and those of ``optional`` present) of an .npz or .npy file.

    A ``.npy`` file holds one array, returned as ``x``; it serves only when ``required`` is
    just ``x``. Every failure is an :class:`EdgetrainError` naming the file.
    """
    data = read_regular_file(path, what)
    if data.startswith(_NPY_MAGIC):
        if list(required) != ["x"]:
            raise EdgetrainError(
                f"{path!r} is an .npy file holding one array; this command needs an .npz with "
                f"arrays {', '.join(required)} (np.savez(file, x=x, y=y))")
        return {"x": _read_npy(io.BytesIO(data), len(data), path, "x")}
    if not data.startswith(_ZIP_MAGICS):
        raise EdgetrainError(f"{path!r} is neither an .npz nor an .npy file")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return _read_members(zf, path, required, optional)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError,
            zlib.error, OSError) as e:
        raise EdgetrainError(f"cannot read {path!r} as .npz: {e}") from e


def _read_members(zf: zipfile.ZipFile, path: str, required: Sequence[str],
                  optional: Sequence[str]) -> dict[str, np.ndarray]:
    members = {n[:-4] if n.endswith(".npy") else n: n for n in zf.namelist()}
    missing = [k for k in required if k not in members]
    if missing:
        raise EdgetrainError(f"{path!r} lacks array(s) {missing}; it has {sorted(members)}")
    budget = _memory_bytes()
    out: dict[str, np.ndarray] = {}
    for key in [*required, *(k for k in optional if k in members)]:
        info = zf.getinfo(members[key])
        if info.compress_type == zipfile.ZIP_STORED:
            limit = min(info.file_size, info.compress_size)
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            limit = min(info.file_size, info.compress_size * _DEFLATE_RATIO + 1024)
        else:
            raise EdgetrainError(f"{path!r}: array {key!r} uses zip compression method "
                                 f"{info.compress_type}; edgetrain reads .npz files written by "
                                 "np.savez or np.savez_compressed")
        with zf.open(info) as f:
            out[key] = _read_npy(f, limit, path, key, budget)
        budget -= out[key].nbytes
    return out


def _read_npy(f: IO[bytes], available: int, path: str, key: str,
              budget: int | None = None) -> np.ndarray:
    """One .npy array from ``f``, whose header must fit in the ``available`` bytes."""
    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(f)
        else:
            raise EdgetrainError(f"{path!r}: array {key!r} uses .npy format version "
                                 f"{version[0]}.{version[1]}; edgetrain reads 1.0 and 2.0")
        if dtype.hasobject:
            raise EdgetrainError(f"{path!r}: array {key!r} holds Python objects, which "
                                 "edgetrain does not load (no pickles)")
        if any(int(d) < 0 for d in shape):
            raise EdgetrainError(f"{path!r}: array {key!r} declares a negative dimension "
                                 f"{list(shape)}")
        count = 1
        for d in shape:
            count *= int(d)
        need = count * dtype.itemsize
        left = available - f.tell()
        if need > left:
            raise EdgetrainError(
                f"{path!r}: array {key!r} declares shape {list(shape)} of {dtype} "
                f"({need:,} bytes) but the file holds at most {max(left, 0):,} bytes for it")
        budget = _memory_bytes() if budget is None else budget
        if need > budget:
            raise EdgetrainError(f"{path!r}: array {key!r} needs {need:,} bytes, more than "
                                 f"this machine's memory allows ({budget:,} bytes)")
        buf = bytearray(need)
        got = f.readinto(buf) if need else 0  # type: ignore[attr-defined]
        if got != need:
            raise EdgetrainError(f"{path!r}: array {key!r} is truncated ({got:,} of "
                                 f"{need:,} bytes)")
        arr = np.frombuffer(buf, dtype=dtype, count=count)
        return arr.reshape(shape, order="F" if fortran else "C")
    except EdgetrainError:
        raise
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise EdgetrainError(f"{path!r}: cannot read array {key!r}: {e}") from e


def _memory_bytes() -> int:
    """Physical memory: no array larger than this can be loaded, whatever a header says."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 1 << 40
