"""The code base stays ruff- and mypy-clean (both configured in pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name: str) -> list[str]:
    if shutil.which(name) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (the test extra installs it)")
        pytest.skip(f"{name} is not installed")
    return [sys.executable, "-m", name]


def test_ruff_clean() -> None:
    r = subprocess.run([*_tool("ruff"), "check", "src", "tests", "benchmarks", "examples"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_clean() -> None:
    r = subprocess.run(_tool("mypy"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
