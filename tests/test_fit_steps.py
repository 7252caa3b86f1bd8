"""``fit`` running several training steps per call (``train_steps``) with the workflow's
tools: schedules feed the call's rate vector, epoch callbacks fire at epoch ends, a callback
with batch hooks gets single steps unless it allows more, and a failing step inside a call
costs nothing but a re-run. Each run is compared with the same fit one step per call."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgetrain as et
from _models import Counting
from edgetrain import callbacks as cb
from edgetrain.demos._data import digits
from edgetrain.demos._models import seed_mlp
from edgetrain.training import Model


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, y, _, _ = digits()
    return x[:640], y[:640]


@pytest.fixture(scope="module")
def compiled() -> et.TrainableModel:
    return et.compile(seed_mlp(), optimizer="adam", lr=0.01)


def _fit(compiled: et.TrainableModel, k: int, data: Any, callbacks: Any = (),
         **kw: Any) -> tuple[Counting, et.History]:
    m = Counting(compiled.proto)
    m.steps_per_call = k
    x, y = data
    kw.setdefault("epochs", 3)
    h = m.fit(x, y, batch_size=32, progress=False, callbacks=callbacks, **kw)
    return m, h


def _same_state(a: Model, b: Model) -> None:
    sa, sb = a.state(), b.state()
    assert sa.keys() == sb.keys()
    for name in sa:
        np.testing.assert_array_equal(sa[name], sb[name], err_msg=name)


class StepLog(cb.Callback):
    """Batch ends with their steps and losses (it allows multi-step: it reads no weights)."""

    allows_multi_step = True

    def __init__(self) -> None:
        self.ends: list[tuple[int, float]] = []

    def on_batch_end(self, step: int, logs: Any) -> None:
        self.ends.append((step, logs["loss"]))


def test_schedules_and_epoch_callbacks_run_k_steps_per_call(compiled: Any, data: Any,
                                                            tmp_path: Path) -> None:
    """A per-step cosine schedule with warmup, plateau, early stopping, the best checkpoint
    and a CSV log: the K-step fit equals the one-step fit bit for bit, in fewer calls."""
    def tools(tag: str) -> list[Any]:
        return [cb.LearningRateScheduler(cb.CosineDecay(warmup_steps=7)),
                cb.ReduceLROnPlateau(monitor="val_loss", patience=1, factor=0.5),
                cb.EarlyStopping(monitor="val_accuracy", patience=1),
                cb.ModelCheckpoint(tmp_path / f"{tag}.safetensors", monitor="val_loss"),
                cb.CSVLogger(tmp_path / f"{tag}.csv"), StepLog()]

    one_tools, k_tools = tools("one"), tools("k")
    one, h1 = _fit(compiled, 1, data, one_tools, epochs=6, validation_split=0.2)
    k, hk = _fit(compiled, 32, data, k_tools, epochs=6, validation_split=0.2,
                 metrics=["f1", "top_2_accuracy"])
    _same_state(one, k)
    assert {n: v for n, v in hk.history.items() if n in h1.history} == h1.history
    assert "val_f1" in hk.history and "val_top_2_accuracy" in hk.history
    # 512 training examples: 16 full batches per epoch, one call per epoch instead of 16.
    assert {s for s, _ in one.calls} == {"train"}
    epochs = len(h1["loss"])
    assert k.calls == [("train_steps", 16)] * epochs
    assert len(one.calls) == 16 * epochs
    # The rate fell every step (warmup, then cosine), so the call's vector was not constant.
    assert k_tools[-1].ends == one_tools[-1].ends
    assert [s for s, _ in k_tools[-1].ends] == list(range(16 * epochs))
    restored = []
    for tag in ("one", "k"):
        m = Model(compiled.proto)
        m.restore(str(tmp_path / f"{tag}.safetensors"))
        restored.append(m)
    _same_state(*restored)  # the same best epoch, the same weights
    assert restored[0].step > 0
    rows = list(csv.DictReader((tmp_path / "k.csv").open()))
    assert [float(r["lr"]) for r in rows] == hk["lr"]
    assert hk["lr"][0] != hk["lr"][1]


def test_a_callback_with_batch_hooks_gets_single_steps(compiled: Any, data: Any) -> None:
    """A callback that overrides a batch hook may look at the weights between steps, so the
    fit runs one step per call for it; declaring ``allows_multi_step`` lifts that."""
    class Watcher(cb.Callback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_batch_begin(self, step: int) -> None:
            self.steps.append(self.loop.model.step)  # the weights' step before this one

    w = Watcher()
    m, _ = _fit(compiled, 32, data, [w], epochs=1)
    assert {s for s, _ in m.calls} == {"train"}
    assert w.steps == list(range(20))  # 640 / 32 steps, each seen before it ran
    m, _ = _fit(compiled, 32, data, [StepLog()], epochs=1)
    assert m.calls == [("train_steps", 20)]


def test_a_failing_step_inside_a_call(compiled: Any, data: Any) -> None:
    """A batch whose loss overflows in the middle of a call: skipped as a single step would
    be, the steps around it kept, the weights as after the one-step fit; with "raise" the
    error says what failed and the state holds every step before it."""
    x, y = data
    bad = x.copy()
    bad[32 * 5:32 * 6] = 3e38  # finite data, an infinite loss: batch 6 of every epoch
    one, h1 = _fit(compiled, 1, (bad, y), shuffle=False, on_nonfinite="skip")
    k, hk = _fit(compiled, 32, (bad, y), shuffle=False, on_nonfinite="skip")
    _same_state(one, k)
    assert hk.skipped_steps == h1.skipped_steps == 3
    assert hk.history == h1.history
    # per epoch: 20 steps in one call that fails at step 6, the 5 before it again, the
    # failing one alone, then the 14 after it in one call
    assert k.calls == [("train_steps", 20), ("train_steps", 5), ("train", 1),
                       ("train_steps", 14)] * 3
    m = Counting(compiled.proto)
    with pytest.raises(et.NonFiniteError, match="loss"):
        m.fit(bad, y, batch_size=32, shuffle=False, progress=False)
    assert m.step == 5


def test_a_stream_of_batches_stacks_runs_of_one_shape(compiled: Any, data: Any) -> None:
    """Batches from a generator: consecutive ones of one shape share a call; a shorter one
    runs alone; the result is the one-step fit's."""
    x, y = data
    sizes = [32, 32, 32, 20, 32, 32, 12]
    edges = np.cumsum([0, *sizes])

    def batches() -> Any:
        for a, b in itertools.pairwise(edges):
            yield x[a:b], y[a:b]

    runs = {}
    for k in (1, 32):
        m = Counting(compiled.proto)
        m.steps_per_call = k
        m.fit(batches(), progress=False)
        runs[k] = m
    _same_state(runs[1], runs[32])
    assert runs[32].calls == [("train_steps", 3), ("train", 1), ("train_steps", 2),
                              ("train", 1)]
