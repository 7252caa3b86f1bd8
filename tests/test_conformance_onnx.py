"""ONNX's own operator test cases, each a training problem whose gradient must equal float64
finite differences (method, scope rule and tolerances: tests/conformance/onnx_ops.py).

Tiers: one in-scope case per op runs in the fast tier; the slow tier (``-m slow``) adds a fixed
sample of the other cases, or all of them with ``EDGETRAIN_CONFORMANCE=full`` (the run behind
docs/coverage.md; ``_common.sample``).
A ``wrong`` or ``crash`` result fails its test; the known ones are listed below as strict
xfails, so fixing one turns its test red until it leaves the list. A ``refused`` result (a
clear error for an op that has a gradient: a coverage gap) is an xfail with the message.
The floor tests pin today's numbers so coverage cannot regress; the goal is beside them.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgetrain as et
from conformance import _common, onnx_ops

#: Cases whose gradient is wrong or whose compile/step crashes today (the finding each).
KNOWN_BAD: dict[str, str] = {}

#: Correct plus refused-correctly in-scope cases today (of all 882 / the fast tier's 143 /
#: the fast tier and the default sample's 357), and the goal share; raise the floors as
#: coverage grows.
FLOOR_GOOD_ALL = 859
FLOOR_GOOD_FAST = 140
FLOOR_GOOD_SAMPLED = 348
GOAL = 0.95
#: The share of the slow tier's cases a default run takes.
SHARE = 0.3


def _in_scope(names: list[str]) -> list[str]:
    return [n for n in names if onnx_ops.scope(onnx_ops.collect()[n]) is None]


FAST = onnx_ops.representatives()
FULL = _common.sample([n for n in _in_scope(onnx_ops.case_names()) if n not in set(FAST)],
                      SHARE)


def _params(names: list[str]) -> list[object]:
    return [pytest.param(n, id=n, marks=pytest.mark.xfail(reason=KNOWN_BAD[n], strict=True))
            if n in KNOWN_BAD else n for n in names]


def check(name: str) -> None:
    r = onnx_ops.result(name)
    if r.status == "out-of-scope":  # decided while evaluating (e.g. non-finite data)
        pytest.skip(r.detail)
    if r.status == "refused":
        pytest.xfail(f"coverage gap: {r.detail}")
    assert r.status in _common.GOOD, f"{r.status}: {r.detail}"


@pytest.mark.parametrize("name", _params(FAST))
def test_operator_case(name: str) -> None:
    check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", _params(FULL))
def test_operator_case_full(name: str) -> None:
    check(name)


def _floor(names: list[str], floor: int) -> None:
    results = onnx_ops.run_all(names)
    c = _common.counts(results)
    bad = sorted(r.name for r in results if r.status in ("wrong", "crash"))
    assert set(bad) <= set(KNOWN_BAD), f"new wrong or crashing cases: {set(bad) - set(KNOWN_BAD)}"
    good = c["correct"] + c["refused-correctly"]
    in_scope = len(results) - c["out-of-scope"]
    assert good >= floor, f"{good} of {in_scope} in-scope cases correct; the floor is {floor} " \
                          f"(goal: {GOAL:.0%})"


def test_operator_floor_fast() -> None:
    """The default tier's cases: no new wrong gradient or crash, no fewer correct ones."""
    _floor(FAST, FLOOR_GOOD_FAST)


@pytest.mark.slow
def test_operator_floor_all() -> None:
    """Every case (and its JSON for ``tools/coverage.py --from-results``) in a full run; the
    fast tier and the sample otherwise."""
    if not _common.FULL_RUN:
        _floor(FAST + FULL, FLOOR_GOOD_SAMPLED)
        return
    names = onnx_ops.case_names()
    _common.write_results(onnx_ops.SUITE, onnx_ops.run_all(names))
    _floor(_in_scope(names), FLOOR_GOOD_ALL)


# -- findings of the suite, kept as their own small tests -----------------------------------

def _named_model(middle: str) -> object:
    w = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], [middle], name="mm"),
         helper.make_node("Tanh", [middle], ["out"], name="tanh")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("backend", ["reference", "onnxruntime"])
def test_inner_value_named_like_the_label(backend: str) -> None:
    """Renaming an inner value must not change training (ONNX's tests name most values y)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y = rng.standard_normal((5, 2)).astype(np.float32)
    runs = []
    for middle in ("h", "y"):
        m = et.load(et.compile(_named_model(middle), loss="mse",
                               optimizer=et.optim.SGD(lr=0.1)).proto, backend=backend)
        label = m.input_name("train", "label")  # "y" unless the model uses that name
        assert (label == "y") == (middle != "y")
        loss = float(m.run("train", **{"x": x, label: y})["loss"])
        runs.append((loss, m.parameters()["w"]))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-6)
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-6)


def test_harness_catches_a_one_percent_error() -> None:
    """The comparison is sharp: edgetrain's own gradient passes, the same off by 1% fails."""
    p = onnx_ops.build_problem(onnx_ops.collect()["test_tanh"])
    tm, _ = onnx_ops.compile_problem(p)
    t = onnx_ops.edgetrain_gradient(p, tm)
    d = onnx_ops.finite_differences(p)
    assert onnx_ops.compare(p, d, t) == []
    t.grads = {k: g * 1.01 for k, g in t.grads.items()}
    assert len(onnx_ops.compare(p, d, t)) == len(d.checks)
