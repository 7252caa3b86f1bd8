"""The model zoo: timm and transformers models (random init, tiny configs), edgetrain's
gradients against torch.autograd in float64 (method and tolerances: tests/conformance/zoo.py).

Every model is slow (export, compile and a float64 step on the reference backend), so a default
run takes a fixed sample of the zoo; ``EDGETRAIN_CONFORMANCE=full`` runs every model (the run
behind docs/coverage.md; ``_common.sample``). A
``wrong`` or ``crash`` result fails; the known ones are strict xfails below. ``refused`` (a
clear error: a coverage gap) and ``export-failed`` (torch's exporter, before edgetrain) are
xfails with the message. The floor test pins today's count; the goal is beside it.
"""

from __future__ import annotations

import importlib.util

import pytest

from conformance import _common, zoo

#: Models whose gradient is wrong or whose compile/step crashes today (the finding each).
KNOWN_BAD: dict[str, str] = {}

#: Correct models today (all 50; the default sample's 14), and the goal share.
FLOOR_GOOD = 50
FLOOR_GOOD_SAMPLED = 14
GOAL = 0.95
#: The share of the zoo a default run takes.
SHARE = 0.3
MODELS = _common.sample(zoo.model_names(), SHARE)

pytestmark = pytest.mark.slow


def _params(names: list[str]) -> list[object]:
    return [pytest.param(n, id=n, marks=pytest.mark.xfail(reason=KNOWN_BAD[n], strict=True))
            if n in KNOWN_BAD else n for n in names]


INSTALL = "pip install --no-deps -r tests/conformance/requirements.txt"


def _need_timm() -> None:
    if importlib.util.find_spec("timm") is None:
        pytest.skip(f"timm is not installed: {INSTALL}")


@pytest.mark.parametrize("name", _params(MODELS))
def test_zoo_model(name: str) -> None:
    if next(m for m in zoo.MODELS if m.name == name).source == "timm":
        _need_timm()
    r = zoo.result(name)
    if r.status in ("refused", "export-failed"):
        pytest.xfail(f"{r.status}: {r.detail}")
    assert r.status == "correct", f"{r.status}: {r.detail}"


def test_zoo_floor() -> None:
    """No new wrong gradient or crash, no fewer correct models (and the JSON for the report)."""
    _need_timm()
    results = zoo.run_all(MODELS)
    if _common.FULL_RUN:
        _common.write_results(zoo.SUITE, results)
    bad = {r.name for r in results if r.status in ("wrong", "crash")}
    assert bad <= set(KNOWN_BAD), f"new wrong or crashing models: {bad - set(KNOWN_BAD)}"
    good = sum(r.good for r in results)
    floor = FLOOR_GOOD if _common.FULL_RUN else FLOOR_GOOD_SAMPLED
    assert good >= floor, f"{good} of {len(results)} models correct; the floor is " \
                          f"{floor} (goal: {GOAL:.0%})"
