"""Shared pytest set-up. Kept minimal: the test modules own their fixtures and data."""

from __future__ import annotations

import sys
from pathlib import Path

# Test helper modules (e.g. gradcheck.py) live next to the tests and are imported by name.
sys.path.insert(0, str(Path(__file__).parent))
