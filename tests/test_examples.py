"""Every example runs, as a user would run it, and reports success through its exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_resume_after_restart(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    r = _run([str(ROOT / "examples" / "resume_after_restart.py"), "--out", "out"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "identical to training without restarts: True" in r.stdout
    assert "restored step 180" in r.stdout
    assert (tmp_path / "out" / "personal.ckpt.safetensors").exists()
