"""What the three conformance suites share: the result record, its statuses, error triage and
a per-item time limit.

Statuses (every suite uses the same words, so the report can add them up):

- ``correct``: edgetrain trained it and its gradient equals the independent oracle's;
- ``refused-correctly``: edgetrain refused with a clear error, and there is nothing to
  differentiate (the op is not differentiable w.r.t. the trained inputs);
- ``refused``: a clear edgetrain error, but the gradient exists: a coverage gap;
- ``wrong``: edgetrain trained it with a gradient (or forward value) that differs: a bug;
- ``crash``: anything else (a traceback from inside, a compiled file that does not run, a
  time-out): a bug;
- ``export-failed`` (zoo only): the PyTorch exporter could not produce ONNX, so edgetrain was
  never asked;
- ``out-of-scope``: excluded by the suite's written scope rule (``detail`` says which).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import edgetrain as et

STATUSES = ("correct", "refused-correctly", "refused", "wrong", "crash", "export-failed",
            "out-of-scope")
#: Results that count as meeting the goal.
GOOD = ("correct", "refused-correctly")

ROOT = Path(__file__).resolve().parents[2]
#: Where the suites write their JSON results (``tools/coverage.py`` reads them back).
RESULTS_DIR = Path(os.environ.get("EDGETRAIN_CONFORMANCE_RESULTS",
                                  ROOT / "build" / "conformance"))


#: ``EDGETRAIN_CONFORMANCE=full`` runs every operator case and zoo model as tests. The default
#: run takes a fixed sample of them (it has to fit CI's time budget); the figures in
#: docs/coverage.md always come from the full run (``tools/coverage.py``).
FULL_RUN = os.environ.get("EDGETRAIN_CONFORMANCE", "") == "full"


def sample(names: list[str], share: float) -> list[str]:
    """Every name in a full run, else the names whose SHA-256 falls in the first ``share`` of
    its range: deterministic, and one name's membership does not depend on the others."""
    if FULL_RUN:
        return list(names)
    return [n for n in names
            if int(hashlib.sha256(n.encode()).hexdigest()[:8], 16) < share * 2 ** 32]


@dataclass
class Result:
    """One item of a suite (an operator test case, a zoo model, a shipped file)."""

    name: str
    group: str            # the op type, the model family, the package
    status: str
    detail: str = ""      # the error message, the mismatch, the scope rule that excludes it
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")

    @property
    def good(self) -> bool:
        return self.status in GOOD


class CaseTimeout(Exception):
    """An item ran past its time limit (reported as a crash: edgetrain must not hang)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CaseTimeout` after ``seconds`` (SIGALRM; a no-op off the main thread)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal,
                                                                                 "SIGALRM"):
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"no result within {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def one_line(text: str, limit: int = 400) -> str:
    """A message squeezed onto one line (tables and test ids)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def is_clear_error(e: BaseException) -> bool:
    """An error edgetrain raised on purpose: its own exception family, one line of text."""
    return isinstance(e, et.EdgetrainError) and "\n" not in str(e).strip()


def names_op_and_node(message: str, op_type: str, node_name: str) -> bool:
    """Whether a refusal names the op type and the node (the project's error standard)."""
    return op_type in message and (not node_name or node_name in message)


def crash_detail(e: BaseException) -> str:
    """The exception and the innermost frame it came from (enough to find the bug)."""
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return one_line(f"{type(e).__name__}: {e}{where}")


def write_results(suite: str, results: list[Result], meta: dict[str, Any] | None = None,
                  directory: Path | None = None) -> Path:
    """Store a suite's results as JSON (read back by :func:`read_results`)."""
    out = Path(directory or RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{suite}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"suite": suite, "meta": meta or {},
                               "results": [asdict(r) for r in results]}, indent=1))
    tmp.replace(path)
    return path


def read_results(suite: str, directory: Path | None = None
                 ) -> tuple[list[Result], dict[str, Any]] | None:
    path = Path(directory or RESULTS_DIR) / f"{suite}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return [Result(**r) for r in data["results"]], data.get("meta", {})


def counts(results: list[Result]) -> dict[str, int]:
    out = dict.fromkeys(STATUSES, 0)
    for r in results:
        out[r.status] += 1
    return out
