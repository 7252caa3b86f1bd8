"""Reading files that may be hostile: regular files only, with a size bound, never blocking.

A path handed to edgetrain (a model, a checkpoint, a data file) may name a FIFO, a device such
as ``/dev/zero`` or a file far larger than any model. ``open(path).read()`` would then block
for ever or read until memory runs out. :func:`read_regular_file` opens without blocking,
checks with ``fstat`` on the open descriptor (no race with a rename) that it is a regular file
no larger than the bound, and only then reads it.
"""

from __future__ import annotations

import os
import stat

from .errors import EdgetrainError

#: Largest model or checkpoint file edgetrain reads (bytes): protobuf's own limit is 2 GiB.
MAX_FILE_BYTES = 2 << 30


def read_regular_file(path: str | os.PathLike[str], what: str,
                      error: type[EdgetrainError] = EdgetrainError,
                      max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``, else ``error``.

    ``what`` names the file in messages ("model file", "checkpoint"). A missing file raises
    ``error`` too, with the path, so callers need one ``except`` clause.
    """
    p = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError as e:
        raise error(f"{what} {p!r} does not exist") from e
    except OSError as e:
        raise error(f"cannot open {what} {p!r}: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {p!r} is not a regular file")
        if st.st_size > max_bytes:
            raise error(f"{what} {p!r} is {st.st_size} bytes, more than the {max_bytes} "
                        "bytes edgetrain reads")
        chunks, left = [], st.st_size + 1  # one byte more: notice a file that grew meanwhile
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise error(f"{what} {p!r} grew beyond {max_bytes} bytes while being read")
        return data
    except OSError as e:
        raise error(f"cannot read {what} {p!r}: {e.strerror or e}") from e
    finally:
        os.close(fd)
