"""``train_steps``: K training steps in one runtime call (an ONNX Scan over K stacked batches).

The contract: K steps through ``train_steps`` leave exactly the state K ``train`` calls leave
(bit for bit on onnxruntime), the commit rule counts steps (one that does not count keeps
nothing of the call), small models have it by default, and ``fit`` uses it by default.
(The form the native runtimes run, unrolled: test_steps_unrolled.py.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import edgetrain as et
from _models import Counting, data, mlp
from edgetrain.errors import InputError, NonFiniteError
from test_training_state import STEP_CONFIGS

K = 5
BATCH = 8


def _batches(n: int = K, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    x, y = data(n * BATCH, seed=seed)
    return x.reshape(n, BATCH, *x.shape[1:]), y.reshape(n, BATCH)


def _single_steps(m: Any, xs: np.ndarray, ys: np.ndarray, lrs: np.ndarray) -> list[float]:
    return [float(m.run("train", x=x, y=y, lr=lr)["loss"]) for x, y, lr in zip(xs, ys, lrs)]


@pytest.mark.parametrize("config", sorted(STEP_CONFIGS))
def test_k_steps_equal_k_single_steps_bit_for_bit(config: str, tmp_path: Any) -> None:
    tm = STEP_CONFIGS[config]()
    assert "train_steps" in tm.meta.signatures
    path = tmp_path / "m.onnx"
    tm.save(path)
    xs, ys = _batches()
    lrs = np.array([1e-3, 2e-3, 5e-4, 1e-3, 3e-3], dtype=np.float32)
    one, many = et.load(path), et.load(path)
    single = _single_steps(one, xs, ys, lrs)
    out = many.run("train_steps", x=xs, y=ys, lr=lrs)
    losses = np.asarray(next(iter(out.values())))
    assert losses.shape == (K,)
    np.testing.assert_array_equal(losses, np.asarray(single, dtype=losses.dtype))
    a, b = one.state(), many.state()
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert many.step == one.step == K


def test_a_step_that_does_not_count_keeps_nothing_of_the_call(tmp_path: Any) -> None:
    tm = et.compile(mlp(hidden=16), optimizer=et.optim.SGD(lr=0.1))
    tm.save(tmp_path / "m.onnx")
    m = et.load(tmp_path / "m.onnx")
    before = {k: v.copy() for k, v in m.state().items()}
    xs, ys = _batches()
    xs[3, 0, 0, 0] = np.nan  # the fourth step's data
    with pytest.raises(InputError, match=r"step 4 of 5") as err:
        m.run("train_steps", x=xs, y=ys, lr=np.full(K, 0.1, np.float32))
    assert err.value.completed_steps == 3
    for k, v in m.state().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_an_infinite_rate_in_the_vector_is_refused(tmp_path: Any) -> None:
    tm = et.compile(mlp(hidden=16), optimizer=et.optim.SGD(lr=0.1))
    tm.save(tmp_path / "m.onnx")
    m = et.load(tmp_path / "m.onnx")
    xs, ys = _batches()
    lrs = np.full(K, 0.1, np.float32)
    lrs[2] = np.inf
    with pytest.raises((InputError, NonFiniteError)):
        m.run("train_steps", x=xs, y=ys, lr=lrs)
    assert m.step == 0


def test_fit_uses_train_steps_and_matches_single_step_fit(tmp_path: Any) -> None:
    """fit stacks full-size batches K at a time; the result equals fit one step per call."""
    tm = et.compile(mlp(hidden=16), optimizer=et.optim.Adam(lr=1e-3))
    tm.save(tmp_path / "m.onnx")
    x, y = data(100, seed=5)  # 12 full batches of 8 and one of 4
    fast, slow = Counting(tmp_path / "m.onnx"), et.load(tmp_path / "m.onnx")
    fast.steps_per_call = 5
    slow.steps_per_call = 1
    h1 = fast.fit(x, y, epochs=2, batch_size=8, progress=False)
    h2 = slow.fit(x, y, epochs=2, batch_size=8, progress=False)
    # per epoch: 12 full batches as 5 + 5 + 2 stacked, then the short batch alone
    assert fast.calls == [("train_steps", 5), ("train_steps", 5), ("train_steps", 2),
                          ("train", 1)] * 2
    assert fast.step == slow.step == 26
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-6)
    for k, v in slow.state().items():
        np.testing.assert_array_equal(fast.state()[k], v, err_msg=k)


def test_fit_keeps_the_steps_before_a_bad_batch_inside_a_chunk(tmp_path: Any) -> None:
    """A chunk whose third batch holds NaN: the call keeps nothing, fit runs the two good
    batches again as steps that count, then reports the bad one (data is an input error)."""
    tm = et.compile(mlp(hidden=16), optimizer=et.optim.SGD(lr=0.05))
    tm.save(tmp_path / "m.onnx")
    x, y = data(40, seed=6)
    x[17] = np.nan  # in the third batch of 8
    m = et.load(tmp_path / "m.onnx")
    with pytest.raises(InputError, match="NaN"):
        m.fit(x, y, epochs=1, batch_size=8, shuffle=False, progress=False)
    assert m.step == 2
    ref = et.load(tmp_path / "m.onnx")
    for i in range(2):
        ref.run("train", x=x[8 * i:8 * i + 8], y=y[8 * i:8 * i + 8])
    for k, v in ref.state().items():
        np.testing.assert_array_equal(m.state()[k], v, err_msg=k)


def test_multi_step_false_leaves_the_signature_out() -> None:
    tm = et.compile(mlp(hidden=16), optimizer=et.optim.SGD(lr=0.1), multi_step=False)
    assert "train_steps" not in tm.meta.signatures
    assert "train" in tm.meta.signatures


def test_train_steps_runs_on_the_reference_backend(tmp_path: Any) -> None:
    """Still a plain ONNX graph: onnx.reference runs the Scan and agrees with onnxruntime."""
    tm = et.compile(mlp(hidden=16), optimizer=et.optim.SGD(lr=0.1, momentum=0.9))
    tm.save(tmp_path / "m.onnx")
    xs, ys = _batches(3)
    lrs = np.full(3, 0.1, np.float32)
    a = et.load(tmp_path / "m.onnx")
    b = et.load(tmp_path / "m.onnx", backend="reference")
    la = np.asarray(next(iter(a.run("train_steps", x=xs, y=ys, lr=lrs).values())))
    lb = np.asarray(next(iter(b.run("train_steps", x=xs, y=ys, lr=lrs).values())))
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for k, v in a.state().items():
        np.testing.assert_allclose(b.state()[k], v, rtol=1e-5, atol=1e-7, err_msg=k)


def test_train_steps_is_one_scan_whose_steps_read_the_weights_once() -> None:
    """One Scan node; the weights are read from the enclosing graph (not copied into the
    body), so the file grows by a train graph's nodes and metadata, not by the weights."""
    tm = et.compile(mlp(), optimizer=et.optim.SGD(lr=0.1))
    where = int(str(tm.meta.signatures["train_steps"].graph).split("/")[1])
    g = tm.proto.training_info[where].algorithm
    assert [n.op_type for n in g.node].count("Scan") == 1
    body = next(a.g for n in g.node if n.op_type == "Scan" for a in n.attribute)
    assert not {t.name for t in body.initializer} & {t.name for t in tm.proto.graph.initializer}
    plain = et.compile(mlp(), optimizer=et.optim.SGD(lr=0.1), multi_step=False)
    weights = sum(t.ByteSize() for t in tm.proto.graph.initializer)
    growth = tm.proto.ByteSize() - plain.proto.ByteSize()
    assert growth < 3 * tm.proto.training_info[0].algorithm.ByteSize() < weights  # + metadata


def test_small_models_have_train_steps_by_default_and_larger_ones_do_not() -> None:
    """The rule (compiler/_steps.py): a forward pass of at most 1 M multiply-adds per example
    gets ``train_steps``; above it, a note says why not and ``multi_step=True`` adds it."""
    from edgetrain.compiler._steps import SMALL_STEP_MACS

    small = et.compile(mlp(hidden=16))  # 64·16 + 16·10 multiply-adds per example
    assert "train_steps" in small.meta.signatures and not small.notes
    wide = mlp(hidden=SMALL_STEP_MACS // 64)  # 64·h + 10·h: just above
    large = et.compile(wide)
    assert "train_steps" not in large.meta.signatures
    assert any("train_steps" in n and "multi_step=True" in n for n in large.notes)
    assert "train_steps" in et.compile(wide, multi_step=True).meta.signatures


def test_fit_uses_train_steps_by_default(tmp_path: Any) -> None:
    tm = et.compile(mlp(hidden=16), optimizer=et.optim.SGD(lr=0.1))
    m = Counting(tm.proto)
    assert m.steps_per_call is None and m.multi_step  # the backend's: 32 on onnxruntime
    x, y = data(512, seed=7)
    m.fit(x, y, epochs=1, batch_size=8, progress=False)  # 64 batches: two calls of 32
    assert m.calls == [("train_steps", 32), ("train_steps", 32)]
    assert m.step == 64
