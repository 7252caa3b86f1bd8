"""Shared pytest set-up. Kept minimal: the test modules own their fixtures and data."""

from __future__ import annotations

import sys
from pathlib import Path

# Test helper modules (e.g. gradcheck.py) live next to the tests and are imported by name.
sys.path.insert(0, str(Path(__file__).parent))

import os

import pytest

#: The long fuzz tiers (ten times the default cases) run when EDGETRAIN_FUZZ_LONG=1: they take
#: minutes, and the default tiers already run every mutation kind in every test run.
long_fuzz = pytest.mark.skipif(not os.environ.get("EDGETRAIN_FUZZ_LONG"),
                               reason="long fuzz tier: set EDGETRAIN_FUZZ_LONG=1")
