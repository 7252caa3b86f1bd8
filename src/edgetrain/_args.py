"""Command-line argument checking shared by ``edgetrain`` and the demos.

A bad number on the command line (``--epochs 0``, ``--batch-size -1``, ``--lr nan``) must stop
the command before it loads anything, with one line that names the flag — not a traceback from
deep inside training. The types below refuse such values while argparse parses, and
:class:`Parser` reports every argparse error as one ``edgetrain: error: …`` line (exit 2).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn

__all__ = ["Parser", "fraction", "input_shape", "non_negative_float", "non_negative_int",
           "positive_float", "positive_int"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, so a script can show or log them as they are."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"edgetrain: error: {message} (see `{self.prog} --help`)\n")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise SystemExit(status)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _checked(parse: Callable[[str], float], ok: Callable[[float], bool], what: str,
             name: str) -> Callable[[str], float]:
    def convert(text: str) -> float:
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    convert.__name__ = name  # argparse names the type in some messages
    return convert


positive_int = _checked(_int, lambda v: v >= 1, "a positive integer", "positive_int")
non_negative_int = _checked(_int, lambda v: v >= 0, "an integer ≥ 0", "non_negative_int")
positive_float = _checked(_float, lambda v: v > 0, "a positive number", "positive_float")
non_negative_float = _checked(_float, lambda v: v >= 0, "a number ≥ 0", "non_negative_float")
def int_at_least(low: int) -> Callable[[str], float]:
    """An integer of at least ``low``: ``type=int_at_least(2)``."""
    return _checked(_int, lambda v: v >= low, f"at least {low}", f"int_at_least_{low}")


fraction = _checked(_float, lambda v: 0 <= v < 1, "a number in [0, 1)", "fraction")


def input_shape(text: str) -> tuple[str, list[int | str]]:
    """``NAME=D,D,…`` (``x=batch,3,224,224``): each D a positive size or a name (dynamic)."""
    name, sep, dims = text.partition("=")
    if not sep or not name or not dims:
        raise argparse.ArgumentTypeError(f"expected NAME=D,D,… (e.g. x=batch,3,224,224), got "
                                         f"{text!r}")
    out: list[int | str] = []
    for d in dims.split(","):
        d = d.strip()
        if d.isdigit() and int(d) > 0:
            out.append(int(d))
        elif d.isidentifier():
            out.append(d)
        else:
            raise argparse.ArgumentTypeError(f"{text!r}: each dim must be a positive size or a "
                                             f"name, got {d!r}")
    return name, out
