"""A TensorBoard event file writer for scalars, with no dependency.

An event file is a TFRecord stream of ``Event`` protocol buffers: each record is its length
(uint64, little-endian), the masked CRC-32C of those 8 bytes, the bytes, and their masked
CRC-32C. Scalars are ``Event{wall_time=1, step=2, summary=5{value=1{tag=1, simple_value=2}}}``;
the first event carries ``file_version=3 "brain.Event:2"``. Writing these few fields by hand
spares a device TensorFlow or the tensorboard package, which are needed only to view the file.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Mapping
from typing import IO

__all__ = ["EventWriter", "crc32c"]


def _table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord files."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(data: bytes) -> bytes:
    c = crc32c(data)
    return struct.pack("<I", (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + body


class EventWriter:
    """Appends scalar events to a new ``events.out.tfevents.*`` file in ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        folder = os.fspath(log_dir)
        os.makedirs(folder, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
                f"{os.getpid()}.edgetrain")
        self.path = os.path.join(folder, name)
        self._file: IO[bytes] | None = open(self.path, "ab")
        self._record(_event(time.time(), 0, _field(3, b"brain.Event:2")))

    def _record(self, data: bytes) -> None:
        assert self._file is not None, "the writer is closed"
        head = struct.pack("<Q", len(data))
        self._file.write(head + _masked(head) + data + _masked(data))

    def scalars(self, values: Mapping[str, float], step: int,
                wall_time: float | None = None) -> None:
        """One event holding every ``tag: value`` at ``step``; flushed at once."""
        summary = b"".join(
            _field(1, _field(1, tag.encode("utf-8")) + b"\x15" + struct.pack("<f", float(v)))
            for tag, v in values.items())
        self._record(_event(time.time() if wall_time is None else wall_time, int(step),
                            _field(5, summary)))
        assert self._file is not None
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
