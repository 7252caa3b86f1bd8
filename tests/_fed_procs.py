"""Processes of a real Flower deployment started by a test (SuperLink, SuperNodes, the edgetrain
server), each in its own session, and stopped by id when the test ends."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


class Procs:
    """Processes this test starts (each in its own session), stopped by id at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.ports: list[int] = []

    def start(self, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        with open(log, "wb") as f:
            p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
        self.procs.append(p)
        return p

    def kill(self, p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=15)

    def stop_all(self) -> None:
        for p in self.procs:
            self.kill(p, signal.SIGTERM)
        # Flower detaches its SuperExec helpers into their own sessions; they exit when their
        # parent does. Anything of ours still serving one of our ports is stopped by pid.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self._leftovers():
            time.sleep(0.5)
        for pid in self._leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _leftovers(self) -> list[int]:
        marks = [f"127.0.0.1:{port}" for port in self.ports]
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "flwr" in cmd or "flower" in cmd:
                if any(mark in cmd for mark in marks):
                    found.append(int(entry))
        return found


def running_procs() -> Iterator[Procs]:
    """The body of a ``procs`` fixture: whatever the test started is stopped afterwards."""
    p = Procs()
    try:
        yield p
    finally:
        p.stop_all()


def wait_for(cond: object, timeout: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")
