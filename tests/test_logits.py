"""Models that end in Softmax, LogSoftmax or Sigmoid: the loss that expects logits reads the
logits before that node (the compiler says so), ``infer`` still returns probabilities — and
such a model trains exactly like the same network without the final activation."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

import edgetrain as et
from edgetrain.demos._data import digits
from edgetrain.demos._models import seed_mlp


def ending_in(op: str, base: onnx.ModelProto | None = None, identity: bool = False,
              **attrs: Any) -> onnx.ModelProto:
    """``base`` with ``op`` applied to its logits (through an Identity if asked)."""
    m = onnx.ModelProto()
    m.CopyFrom(base if base is not None else seed_mlp())
    out = m.graph.output[0]
    last = "act_out" if identity else "probs"
    m.graph.node.append(helper.make_node(op, [out.name], [last], name="final_act", **attrs))
    if identity:
        m.graph.node.append(helper.make_node("Identity", [last], ["probs"], name="id"))
    out.name = "probs"
    onnx.checker.check_model(m, full_check=True)
    return m


def _pair(op: str, loss: str = "cross_entropy", **kw: Any) -> tuple[et.TrainableModel,
                                                                   et.TrainableModel]:
    base = kw.pop("base", None) or seed_mlp()
    opt = et.optim.SGD(lr=0.1, momentum=0.9)
    return (et.compile(ending_in(op, base, **kw), loss=loss, optimizer=opt),
            et.compile(base, loss=loss, optimizer=opt))


@pytest.mark.parametrize("op,identity", [("Softmax", False), ("LogSoftmax", False),
                                         ("Softmax", True)])
def test_a_final_softmax_trains_exactly_like_its_logits(op: str, identity: bool) -> None:
    tm, ref = _pair(op, identity=identity)
    assert len(tm.notes) == 1 and f"ends in {op}" in tm.notes[0] and "'logits'" in tm.notes[0]
    assert ref.notes == []
    m, r = tm.load(), ref.load()
    x, y, xt, yt = digits()
    hm = m.fit(x, y, epochs=3, progress=False)
    hr = r.fit(x, y, epochs=3, progress=False)
    assert hm.history == hr.history  # same losses and accuracies, bit for bit
    for k, v in r.parameters().items():
        np.testing.assert_array_equal(m.parameters()[k], v, err_msg=k)
    logits = r.predict(xt)
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    if op == "LogSoftmax":
        want = np.log(want)
    np.testing.assert_allclose(m.predict(xt), want, rtol=1e-5, atol=1e-6)
    # The eval loss is the cross-entropy of the probabilities infer returns.
    probs = np.exp(m.predict(xt)) if op == "LogSoftmax" else m.predict(xt)
    ce = float(np.mean(-np.log(probs[np.arange(len(yt)), yt])))
    assert m.evaluate(xt, yt)["loss"] == pytest.approx(ce, rel=1e-4)
    assert hm["accuracy"][-1] > 0.9


def test_a_final_sigmoid_with_bce_trains_like_its_logits() -> None:
    base = seed_mlp(classes=1)
    tm, ref = _pair("Sigmoid", "bce_with_logits", base=base)
    assert "ends in Sigmoid" in tm.notes[0]
    x, y, xt, yt = digits()
    t, tt = (y >= 5).astype(np.float32)[:, None], (yt >= 5).astype(np.float32)[:, None]
    m, r = tm.load(), ref.load()
    hm = m.fit(x, t, epochs=2, progress=False, metrics=["f1"])
    hr = r.fit(x, t, epochs=2, progress=False, metrics=["f1"])
    assert hm.history == hr.history  # f1 too: probabilities cut at 0.5, logits at 0
    np.testing.assert_allclose(m.predict(xt), 1 / (1 + np.exp(-r.predict(xt))), rtol=1e-5,
                               atol=1e-6)
    assert m.evaluate(xt, tt, metrics=["precision"]) == r.evaluate(xt, tt,
                                                                     metrics=["precision"])


def test_other_losses_and_other_axes_keep_the_output() -> None:
    """MSE on probabilities is a choice (no note, the loss reads them); a Softmax over the
    batch axis is not a classifier's, so it is left alone."""
    tm = et.compile(ending_in("Softmax"), loss="mse")
    assert tm.notes == []
    m = tm.load()
    x, y, _, _ = digits()
    onehot = np.eye(10, dtype=np.float32)[y[:64]]
    probs = m.predict(x[:64])
    assert m.evaluate(x[:64], onehot)["loss"] == pytest.approx(
        float(np.mean((probs - onehot) ** 2)), rel=1e-5)
    assert et.compile(ending_in("Softmax", axis=0)).notes == []


@pytest.mark.slow
def test_keras_classifier_ending_in_softmax() -> None:
    """A Keras model as keras.applications builds them (a final Dense with softmax): the
    batch dim is called batch, the loss reads the logits, and it learns the digits."""
    pytest.importorskip("tf2onnx")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(),
                              keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tm = et.from_keras(model, loss="cross_entropy", optimizer=et.optim.SGD(lr=0.1,
                                                                               momentum=0.9))
    assert "ends in Softmax" in tm.notes[0]
    sigs = tm.signatures
    assert list(sigs["train"].inputs[0].shape) == ["batch", 8, 8]
    assert list(sigs["train"].inputs[1].shape) == ["batch"]
    assert list(sigs["infer"].outputs[0].shape) == ["batch", 10]
    m = tm.load()
    x, y, xt, yt = digits()
    m.fit(x, y, epochs=5, progress=False)
    probs = m.predict(xt)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    ev = m.evaluate(xt, yt)
    assert ev["accuracy"] > 0.9
    assert ev["loss"] == pytest.approx(float(np.mean(-np.log(probs[np.arange(len(yt)), yt]))),
                                       rel=1e-4)
