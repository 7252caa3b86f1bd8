"""from_keras (TensorFlow backend through tf2onnx): one SGD step equals tf.GradientTape's."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
keras = pytest.importorskip("keras")

import edgetrain as et  # noqa: E402


def _cnn(seed: int = 0) -> Any:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(8, 1)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(4)(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    bn = next(layer for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization))
    bn.moving_mean.assign(0.1 * rng.standard_normal(6).astype(np.float32))
    bn.moving_variance.assign((0.5 + rng.random(6)).astype(np.float32))
    bn.gamma.assign((0.5 + rng.random(6)).astype(np.float32))
    return model


def test_one_sgd_step_matches_gradient_tape() -> None:
    model = _cnn()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 10, 10, 3)).astype(np.float32)
    y = rng.integers(0, 4, 8)
    lr = 0.1
    tm = et.from_keras(model, optimizer=et.optim.SGD(lr=lr))
    onnx.checker.check_model(tm.proto, full_check=True)
    assert set(tm.meta.trainable) == {v.path for v in model.trainable_variables}
    assert "batch_normalization/moving_mean" in tm.meta.frozen
    m = tm.load()
    np.testing.assert_allclose(m.run("infer", x=x)["logits"], model(x, training=False).numpy(),
                               rtol=1e-5, atol=1e-5)
    ours = float(m.run("train", x=x, y=y)["loss"])

    with tf.GradientTape() as tape:
        logits = model(x, training=False)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
            y, logits, from_logits=True))
    grads = tape.gradient(loss, model.trainable_variables)
    assert ours == pytest.approx(float(loss), rel=1e-5)
    got = m.parameters()
    for v, g in zip(model.trainable_variables, grads, strict=True):
        want = v.numpy() - lr * g.numpy()
        np.testing.assert_allclose(got[v.path], want, rtol=1e-5, atol=1e-6, err_msg=v.path)


def test_frozen_keras_layers_stay_frozen() -> None:
    model = _cnn(2)
    for layer in model.layers[:-1]:
        layer.trainable = False
    tm = et.from_keras(model)
    head = model.layers[-1]
    assert tm.meta.trainable == (head.kernel.path, head.bias.path)


def test_other_backends_are_refused_with_a_clear_message() -> None:
    from edgetrain.frontends._keras import keras_to_onnx

    with pytest.raises(et.EdgetrainError, match="built functional"):
        keras_to_onnx(keras.Sequential([keras.layers.Dense(2)]))
