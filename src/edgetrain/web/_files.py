"""Files of a web export, opened by name inside one folder and never through a symbolic link.

``export-web`` writes into a folder the user names, which may already hold other files and
symbolic links, and ``serve-web`` serves a folder to a browser. Both go through :class:`Folder`:
a folder opened once (a directory descriptor where the platform has them, so a name is looked
up in *that* folder even if a parent is renamed meanwhile); entries are opened with
``O_NOFOLLOW``, so a symbolic link is never followed, never written through and never chmod-ed,
and a name never leaves the folder. Writes are atomic: a new private temporary file, ``fsync``,
then a rename over the name (which replaces a link itself, not its target).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path

#: Names of entries :class:`Folder` touches: one path component (never "." or "..").
_ENTRY = re.compile(r"\.?[A-Za-z0-9_][A-Za-z0-9_.+@-]{0,254}")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BINARY = getattr(os, "O_BINARY", 0)
#: Directory descriptors (``openat`` and friends) where the platform has them.
DIR_FD = bool(_DIRECTORY and _NOFOLLOW and os.open in os.supports_dir_fd
              and os.stat in os.supports_dir_fd and os.unlink in os.supports_dir_fd
              and os.mkdir in os.supports_dir_fd)


def is_entry_name(name: str) -> bool:
    """True for a name :class:`Folder` accepts: one component of plain characters."""
    return bool(_ENTRY.fullmatch(name))


class Folder:
    """An open folder whose entries are reached by name only, never through a link."""

    def __init__(self, path: str | os.PathLike[str], fd: int | None = None) -> None:
        self.path = os.fspath(path)
        if fd is None and DIR_FD:
            fd = os.open(self.path, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        self.fd = fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _at(self, name: str, check: bool = True) -> tuple[str, dict[str, int]]:
        if check and not is_entry_name(name):
            raise ValueError(f"not a plain file name: {name!r}")
        if self.fd is not None:
            return name, {"dir_fd": self.fd}
        return os.path.join(self.path, name), {}

    def lstat(self, name: str) -> os.stat_result | None:
        """The entry's own status (a link is reported as a link), or None if it is missing."""
        target, kw = self._at(name)
        try:
            return os.stat(target, follow_symlinks=False, **kw)
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd if self.fd is not None else self.path))

    def subfolder(self, name: str, create: bool = False) -> Folder:
        """The sub-folder ``name`` (created if ``create``); OSError if it is a link or a file."""
        target, kw = self._at(name)
        if create and self.lstat(name) is None:
            os.mkdir(target, 0o755, **kw)
        if self.fd is not None:
            return Folder(os.path.join(self.path, name),
                          os.open(target, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, **kw))
        st = self.lstat(name)
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{os.path.join(self.path, name)} is not a folder")
        return Folder(target)

    def open_regular(self, name: str) -> int | None:
        """A read descriptor of the regular file ``name``, or None (missing, link, folder, …)."""
        target, kw = self._at(name)
        try:
            fd = os.open(target, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC | _BINARY, **kw)
        except OSError:
            return None
        st = os.fstat(fd)
        own = st if self.fd is not None else self.lstat(name)  # no O_NOFOLLOW: compare inodes
        if not stat.S_ISREG(st.st_mode) or own is None or own.st_ino != st.st_ino:
            os.close(fd)
            return None
        return fd

    def write(self, name: str, data: bytes | Path, mode: int = 0o644) -> None:
        """Atomically make ``name`` a regular file holding ``data`` (bytes, or a file to copy).

        The temporary file is created exclusively and chmod-ed through its own descriptor, so
        no other file's mode ever changes; the rename replaces whatever entry had the name.
        """
        target, kw = self._at(name)
        tmp_target, _ = self._at(f".edgetrain-{secrets.token_hex(8)}.tmp", check=False)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY
        fd = os.open(tmp_target, flags, 0o600, **kw)
        try:
            with os.fdopen(fd, "wb") as f:
                if hasattr(os, "fchmod"):
                    os.fchmod(f.fileno(), mode)
                if isinstance(data, Path):
                    with open(data, "rb") as src:
                        while chunk := src.read(1 << 22):
                            f.write(chunk)
                else:
                    f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if not hasattr(os, "fchmod"):
                os.chmod(tmp_target, mode, dir_fd=self.fd)
            os.replace(tmp_target, target, **({"src_dir_fd": self.fd, "dst_dir_fd": self.fd}
                                               if self.fd is not None else {}))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_target, **kw)
            raise

    def remove(self, name: str) -> bool:
        """Delete ``name`` if it is a regular file (never a link or a folder); True if deleted."""
        st = self.lstat(name)
        if st is None or not stat.S_ISREG(st.st_mode):
            return False
        target, kw = self._at(name)
        os.unlink(target, **kw)
        return True

    def sync(self) -> None:
        """Make renames durable (where a folder can be fsync-ed)."""
        with contextlib.suppress(OSError):
            fd = self.fd if self.fd is not None else os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                if fd != self.fd:
                    os.close(fd)
