"""The training loop's tools: validation split, early stopping, the best checkpoint, learning-
rate schedules fed through the step's ``lr`` input, CSV and TensorBoard logs, host metrics."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgetrain as et
from edgetrain import callbacks as cb
from edgetrain.demos._data import digits
from edgetrain.demos._models import seed_mlp
from edgetrain.training import metrics as M


def _model(**kw: Any) -> et.Model:
    kw.setdefault("optimizer", et.optim.SGD(lr=0.05, momentum=0.9))
    return et.compile(seed_mlp(), **kw).load()


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y, xt, yt = digits()
    return x[:400], y[:400], xt[:200], yt[:200]


class Recorder(cb.Callback):
    """Records the rate fed to each step and the state after each epoch."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.states: list[dict[str, np.ndarray]] = []

    def on_batch_begin(self, step: int) -> None:
        self.rates.append(self.loop.current_lr)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.states.append(self.loop.model.state())


def test_validation_split_is_seeded_and_disjoint(data: Any) -> None:
    x, y, _, _ = data
    m = _model()
    h = m.fit(x, y, epochs=2, validation_split=0.25, seed=7, progress=False)
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    # The held-out quarter is exactly what evaluate reports on the same seeded split.
    order = np.random.default_rng(7).permutation(len(x))
    val = np.sort(order[:100])
    assert math.isclose(h["val_loss"][-1], m.evaluate(x[val], y[val])["loss"], rel_tol=1e-6)
    same = _model().fit(x, y, epochs=2, validation_split=0.25, seed=7, progress=False)
    assert same.history == h.history
    with pytest.raises(et.InputError, match="not both"):
        m.fit(x, y, validation_split=0.2, validation_data=(x, y), progress=False)


def test_early_stopping_stops_and_restores_the_best_epoch(data: Any) -> None:
    x, y, xt, yt = data
    # lr 0: nothing improves after the first epoch, so patience 2 stops after epoch 3.
    m = _model()
    h = m.fit(x, y, epochs=10, lr=0.0, validation_data=(xt, yt),
              callbacks=[cb.EarlyStopping(patience=2)], progress=False)
    assert h.epochs == 3 and h.stopped_epoch == 2 and m.step == 3 * 13
    # A rate that wrecks the model after epoch 2: the best state (epoch 2's) is put back.
    rec = Recorder()
    m = _model()
    h = m.fit(x, y, epochs=6, validation_data=(xt, yt), progress=False,
              callbacks=[cb.LearningRateScheduler(lambda e: 0.05 if e < 2 else 3.0),
                         cb.EarlyStopping(patience=2, restore_best_weights=True), rec])
    best = int(np.argmin(h["val_loss"]))
    assert best < h.epochs - 1
    final = m.state()
    for k, v in rec.states[best].items():
        np.testing.assert_array_equal(final[k], v, err_msg=k)
    assert any("restored the weights of epoch" in n for n in h.notes)


def test_monitoring_a_metric_the_fit_does_not_compute_fails_before_training(data: Any) -> None:
    x, y, _, _ = data
    m = _model()
    with pytest.raises(et.EdgetrainError, match=r"monitors 'val_loss'.*pass validation data"):
        m.fit(x, y, callbacks=[cb.EarlyStopping()], progress=False)
    assert m.step == 0


def test_model_checkpoint_keeps_the_best_epoch(tmp_path: Path, data: Any) -> None:
    x, y, xt, yt = data
    rec = Recorder()
    saver = cb.ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_accuracy")
    m = _model()
    h = m.fit(x, y, epochs=5, validation_data=(xt, yt), progress=False,
              callbacks=[cb.LearningRateScheduler(lambda e: 0.05 if e < 2 else 3.0), rec,
                         saver])
    best = int(np.argmax(h["val_accuracy"]))  # the first of equal values: "improved" is strict
    assert saver.best_epoch == best and saver.best == h["val_accuracy"][best]
    fresh = _model()
    fresh.restore(tmp_path / "best.safetensors")
    for k, v in rec.states[best].items():
        np.testing.assert_array_equal(fresh.state()[k], v, err_msg=k)
    # A value to beat from an earlier run: nothing worse replaces it.
    before = (tmp_path / "best.safetensors").read_bytes()
    keeper = cb.ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_accuracy",
                                initial_best=1.01)
    _model().fit(x, y, epochs=2, validation_data=(xt, yt), callbacks=[keeper], progress=False)
    assert keeper.best_epoch is None and (tmp_path / "best.safetensors").read_bytes() == before


def test_schedules_feed_the_steps_lr_input(data: Any) -> None:
    """The rates a schedule picks are the ones the steps use: the same run step by step with
    run("train", lr=…) ends in the same state."""
    x, y, _, _ = data
    for schedule, check in [
        (cb.CosineDecay(warmup_steps=5, min_lr=0.001), lambda r: (
            r[0] == pytest.approx(0.01) and r[4] == pytest.approx(0.05)
            and r[-1] == pytest.approx(0.001, abs=2e-3) and max(r) == pytest.approx(0.05))),
        (cb.StepDecay(factor=0.5, every=1), lambda r: (
            r[:13] == pytest.approx([0.05] * 13) and r[13] == pytest.approx(0.025)
            and r[-1] == pytest.approx(0.0125))),
        (cb.LinearWarmup(warmup_steps=10), lambda r: (
            r[0] == pytest.approx(0.005) and r[9:] == pytest.approx([0.05] * 30))),
        (cb.LinearWarmup(), lambda r: (  # a tenth of 39 steps: 3
            r[0] == pytest.approx(0.05 / 3) and r[2:] == pytest.approx([0.05] * 37))),
    ]:
        rec = Recorder()
        m = _model()
        h = m.fit(x, y, epochs=3, shuffle=False, progress=False,
                  callbacks=[cb.LearningRateScheduler(schedule), rec])
        assert len(rec.rates) == 39 and check(rec.rates), (schedule, rec.rates)
        assert h["lr"][-1] == rec.rates[-1]
        by_hand = _model()
        for step, rate in enumerate(rec.rates):
            s = (step % 13) * 32
            by_hand.run("train", x=x[s:s + 32], y=y[s:s + 32], lr=np.float32(rate))
        for k, v in by_hand.state().items():
            np.testing.assert_array_equal(m.state()[k], v, err_msg=f"{schedule}: {k}")


def test_reduce_on_plateau_lowers_the_rate(data: Any) -> None:
    x, y, _, _ = data
    rec = Recorder()
    h = _model().fit(x, y, epochs=6, lr=0.0, progress=False, callbacks=[
        cb.ReduceLROnPlateau("loss", factor=0.5, patience=2, min_lr=0.0), rec])
    # lr 0 never improves after epoch 1: halved after epochs 3 and 5 (0 stays 0, so start
    # from a real rate to see it): the logged rate follows the rule.
    assert h["lr"] == [0.0] * 6
    h = _model().fit(x, y, epochs=6, lr=1e-9, progress=False, callbacks=[
        cb.ReduceLROnPlateau("loss", factor=0.5, patience=2, min_delta=1.0)])
    assert h["lr"] == pytest.approx([1e-9, 1e-9, 5e-10, 5e-10, 2.5e-10, 2.5e-10])
    with pytest.raises(et.EdgetrainError, match="factor"):
        cb.ReduceLROnPlateau(factor=2.0)


def test_csv_logger_writes_every_epoch(tmp_path: Path, data: Any) -> None:
    x, y, xt, yt = data
    path = tmp_path / "log.csv"
    h = _model().fit(x, y, epochs=3, validation_data=(xt, yt), metrics=["f1"], progress=False,
                     callbacks=[cb.CSVLogger(path)])
    rows = list(csv.DictReader(path.open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    for key, values in h.history.items():
        assert [float(r[key]) for r in rows] == values, key
    _model().fit(x, y, epochs=2, initial_epoch=3, progress=False,
                 callbacks=[cb.CSVLogger(path, append=True)])
    rows = list(csv.DictReader(path.open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5"]


def test_crc32c_is_castagnolis() -> None:
    from edgetrain.training._tensorboard import crc32c

    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert crc32c(b"") == 0


@pytest.mark.slow
def test_tensorboard_events_read_back_with_tensorflow(tmp_path: Path, data: Any) -> None:
    """The event file parses with TensorFlow's own reader, CRCs checked, values equal."""
    tf = pytest.importorskip("tensorflow")
    x, y, xt, yt = data
    h = _model().fit(x, y, epochs=3, validation_data=(xt, yt), progress=False,
                     callbacks=[cb.TensorBoard(tmp_path / "tb", update_freq=5)])
    (event_file,) = list((tmp_path / "tb").iterdir())
    scalars: dict[str, list[tuple[int, float]]] = {}
    for raw in tf.data.TFRecordDataset(str(event_file)):  # verifies the CRCs
        event = tf.compat.v1.Event.FromString(raw.numpy())
        for v in event.summary.value:
            scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    for key, values in h.history.items():
        got = scalars[f"epoch_{key}"]
        assert [s for s, _ in got] == [1, 2, 3]
        np.testing.assert_allclose([v for _, v in got], values, rtol=1e-6)
    # Every fifth step's loss, at the model's step count after it.
    assert [s for s, _ in scalars["batch_loss"]] == list(range(1, 40, 5))


# -- host metrics -----------------------------------------------------------------------------

def test_host_metrics_agree_with_scikit_learn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((300, 6)).astype(np.float32)
    y = np.where(rng.random(300) < 0.6, logits.argmax(1), rng.integers(0, 6, 300))
    y[:3] = 5  # a class the model never predicts: precision 0 there, as scikit-learn says
    logits[:, 5] -= 10
    task = M.Task("multiclass")
    pred = logits.argmax(1)
    assert M.accuracy(logits, y, task) == pytest.approx(sk.accuracy_score(y, pred))
    for name, fn in [("precision", sk.precision_score), ("recall", sk.recall_score),
                     ("f1", sk.f1_score)]:
        want = fn(y, pred, average="macro", zero_division=0)
        assert M.get(name)(logits, y, task) == pytest.approx(want), name
        assert M.get(name)(logits, np.eye(6)[y], M.Task("multiclass", "onehot")) == \
            pytest.approx(want)
    for k in (1, 3):
        want = sk.top_k_accuracy_score(y, logits, k=k, labels=range(6))
        assert M.get(f"top_{k}_accuracy")(logits, y, task) == pytest.approx(want)
    binary = rng.standard_normal((200, 1))
    t = (rng.random((200, 1)) < 0.5).astype(np.float32)
    for threshold, scores in [(0.0, binary), (0.5, 1 / (1 + np.exp(-binary)))]:
        bt = M.Task("binary", threshold=threshold)
        assert M.f1(scores, t, bt) == pytest.approx(sk.f1_score(t.ravel(), binary.ravel() > 0))
        assert M.precision(scores, t, bt) == pytest.approx(
            sk.precision_score(t.ravel(), binary.ravel() > 0))
    reg = M.Task("regression")
    p, q = rng.standard_normal((50, 2)), rng.standard_normal((50, 2))
    assert M.mae(p, q, reg) == pytest.approx(sk.mean_absolute_error(q, p))
    assert M.rmse(p, q, reg) == pytest.approx(math.sqrt(sk.mean_squared_error(q, p)))
    with pytest.raises(et.EdgetrainError, match="applies to regression"):
        M.mae(logits, y, task)
    with pytest.raises(et.EdgetrainError, match="unknown metric 'f2'"):
        M.get("f2")


def test_fit_reports_host_metrics_on_training_and_validation_data(data: Any) -> None:
    x, y, xt, yt = data
    m = _model()
    h = m.fit(x, y, epochs=2, validation_data=(xt, yt), progress=False,
              metrics=["f1", "top_3_accuracy"])
    assert set(h.history) == {"loss", "accuracy", "f1", "top_3_accuracy", "val_loss",
                              "val_accuracy", "val_f1", "val_top_3_accuracy"}
    pred = m.predict(xt)
    assert h["val_f1"][-1] == pytest.approx(M.f1(pred, yt, M.Task("multiclass")))
    assert m.evaluate(xt, yt, metrics=["f1"])["f1"] == h["val_f1"][-1]
    with pytest.raises(et.EdgetrainError, match="metric 'rmse' applies to regression"):
        m.fit(x, y, metrics=["rmse"], progress=False)
