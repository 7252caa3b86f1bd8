"""``train_steps`` unrolled: the Scan as K copies of the step in one plain graph, as the native
runtimes (IREE, OpenVINO, tract) run it (``edgetrain.runtime._unroll``).

A backend that runs the native path on onnxruntime (``OrtUnrolled``: the same standalone graphs,
the portable rewrites, the Scan unrolled for each K, the commit rule) checks it here without a
native runtime: K unrolled steps leave the state of K single steps bit for bit, a step that does
not count in the middle keeps nothing of the call and is named, and ``fit`` runs whole groups of
K through it, the batches that do not fill one one per call, and goes around a bad batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import edgetrain as et
from _models import Counting, data, mlp
from edgetrain.errors import InputError, NonFiniteError
from edgetrain.runtime import BACKENDS
from edgetrain.runtime._native import NativeBackend, Runner
from edgetrain.runtime._unroll import unroll_steps
from edgetrain.training import Model
from test_training_state import STEP_CONFIGS

K = 5
BATCH = 8


class OrtUnrolled(NativeBackend):
    """The native backends' path, with onnxruntime as the runtime."""

    name = "ort-unrolled"

    def compile(self, sig: str, graph: onnx.ModelProto) -> Runner:
        sess = ort.InferenceSession(graph.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        names = [i.name for i in graph.graph.input]

        def run(args: Sequence[Any]) -> Sequence[Any]:
            return sess.run(None, dict(zip(names, args)))

        return run


@pytest.fixture(autouse=True)
def _backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS, "ort-unrolled", OrtUnrolled)


def _batches(n: int = K, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    x, y = data(n * BATCH, seed=seed)
    return x.reshape(n, BATCH, *x.shape[1:]), y.reshape(n, BATCH)


def _same_state(a: Any, b: Any) -> None:
    sa, sb = a.state(), b.state()
    assert sa.keys() == sb.keys()
    for name in sa:
        np.testing.assert_array_equal(sa[name], sb[name], err_msg=name)


def test_the_unrolled_graph_has_no_scan_and_k_copies_of_the_step() -> None:
    tm = et.compile(mlp(hidden=16), optimizer=et.optim.SGD(lr=0.1))
    steps, _, _ = et.format.standalone(tm.proto, tm.meta, "train_steps")
    train, _, _ = et.format.standalone(tm.proto, tm.meta, "train")
    assert [n.op_type for n in steps.graph.node].count("Scan") == 1
    for k in (1, 3):
        flat = unroll_steps(steps, k)
        ops = [n.op_type for n in flat.graph.node]
        assert "Scan" not in ops
        assert ops.count("Gemm") == k * [n.op_type for n in train.graph.node].count("Gemm")
        onnx.checker.check_model(flat, full_check=True)


@pytest.mark.parametrize("config", sorted(STEP_CONFIGS))
def test_k_unrolled_steps_equal_k_single_steps_bit_for_bit(config: str) -> None:
    tm = STEP_CONFIGS[config]()
    xs, ys = _batches()
    lrs = np.array([1e-3, 2e-3, 5e-4, 1e-3, 3e-3], dtype=np.float32)
    one, many = et.load(tm.proto), et.load(tm.proto, backend="ort-unrolled")
    assert many.multi_step
    single = [float(one.run("train", x=x, y=y, lr=lr)["loss"])
              for x, y, lr in zip(xs, ys, lrs)]
    name = many.signatures["train_steps"].output("loss")
    losses = np.asarray(many.run("train_steps", x=xs, y=ys, lr=lrs)[name])
    np.testing.assert_array_equal(losses, np.asarray(single, dtype=losses.dtype))
    _same_state(one, many)
    assert many.step == K


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("bad", ["nan_data", "overflow"])
def test_a_step_in_the_middle_that_does_not_count_keeps_nothing(bad: str) -> None:
    """The third of five steps does not count (NaN data; finite data whose loss overflows):
    the call keeps nothing, and names the step; the steps before it counted (two)."""
    tm = et.compile(mlp(hidden=16), optimizer=et.optim.SGD(lr=0.1, momentum=0.9))
    m = et.load(tm.proto, backend="ort-unrolled")
    before = m.state()
    xs, ys = _batches()
    if bad == "nan_data":
        xs[2, 0, 0, 0] = np.nan
    else:
        xs[2] = np.finfo(np.float32).max
    error = InputError if bad == "nan_data" else NonFiniteError
    with pytest.raises(error, match=r"step 3 of 5") as err:
        m.run("train_steps", x=xs, y=ys, lr=np.full(K, 0.1, np.float32))
    assert err.value.completed_steps == 2
    for k, v in m.state().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_fit_runs_whole_groups_and_the_rest_one_per_call() -> None:
    """100 examples in batches of 8: 12 full batches and a short one. With 5 steps per call an
    epoch is two calls of 5 (the unrolled graph is built for K = 5 only), then the last two
    full batches and the short one one per call; the state is that of one step per call."""
    tm = et.compile(mlp(hidden=16), optimizer=et.optim.Adam(lr=1e-3))
    x, y = data(100, seed=5)
    fast = Counting(tm.proto, backend="ort-unrolled")
    slow = Model(tm.proto, backend="ort-unrolled")
    fast.steps_per_call, slow.steps_per_call = 5, 1
    h1 = fast.fit(x, y, epochs=2, batch_size=8, progress=False)
    h2 = slow.fit(x, y, epochs=2, batch_size=8, progress=False)
    epoch = [("train_steps", 5), ("train_steps", 5), ("train", 1), ("train", 1), ("train", 1)]
    assert fast.calls == epoch * 2
    assert h1.history["loss"] == h2.history["loss"]
    _same_state(fast, slow)
    built = fast._backend._sessions  # (signature, shapes, K of an unrolled train_steps)
    assert {key[2] for key in built if key[0] == "train_steps"} == {5}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fit_goes_around_a_bad_batch_inside_a_group() -> None:
    """Ten batches, the fourth overflows: the first call (batches 1-5) keeps nothing, the
    three before the bad one run again one per call (no graph is built for K = 3), the bad
    one is skipped, the fifth to ninth make a whole group again and the tenth runs alone; the
    same state as the one-step-per-call fit that skips it."""
    tm = et.compile(mlp(hidden=16), optimizer=et.optim.SGD(lr=0.05))
    x, y = data(80, seed=6)
    x[24:32] = np.finfo(np.float32).max  # the fourth batch of 8: its activations overflow
    fast = Counting(tm.proto, backend="ort-unrolled")
    slow = Model(tm.proto, backend="ort-unrolled")
    fast.steps_per_call, slow.steps_per_call = 5, 1
    kw: dict[str, Any] = {"epochs": 1, "batch_size": 8, "shuffle": False, "progress": False,
                          "on_nonfinite": "skip"}
    h1, h2 = fast.fit(x, y, **kw), slow.fit(x, y, **kw)
    assert h1.skipped_steps == h2.skipped_steps == 1
    assert fast.calls == [("train_steps", 5), ("train", 1), ("train", 1), ("train", 1),
                          ("train", 1), ("train_steps", 5), ("train", 1)]
    assert fast.step == slow.step == 9
    _same_state(fast, slow)
