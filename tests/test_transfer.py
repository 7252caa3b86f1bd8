"""Transfer learning: the frozen-prefix split (features / train_features / eval_features /
infer_features), fit(cache_features=True), and the EfficientNet-Lite0 demo end to end."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
import torch

import edgetrain as et
from _vision_nets import Backbone, TinyResNet

# the pretrained EfficientNet-Lite0
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_torch_thread():  # type: ignore[no-untyped-def]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _backbone_model(**kw: Any) -> et.TrainableModel:
    torch.manual_seed(0)
    return et.from_torch(Backbone(), torch.zeros(2, 3, 24, 24), trainable=et.select.head(),
                         split_features=True, **kw)


def _data(n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 24, 24)).astype(np.float32)
    y = rng.integers(0, 4, n)
    return x, y


def test_split_signatures_pass_the_full_checker(tmp_path: Any) -> None:
    tm = _backbone_model(optimizer=et.optim.Adam(lr=1e-2))
    sigs = tm.meta.signatures
    assert {"features", "train_features", "eval_features", "infer_features"} <= set(sigs)
    assert sigs["train_features"].updates == sigs["train"].updates
    assert [s.name for s in sigs["train_features"].inputs] == ["features", "y", "lr"]
    assert sigs["features"].outputs[0].shape == ("batch", 48)
    onnx.checker.check_model(tm.proto, full_check=True)
    path = tmp_path / "split.onnx"
    tm.save(path)
    onnx.checker.check_model(str(path), full_check=True)
    for ti in onnx.load(str(path)).training_info:
        assert {n.domain for n in ti.algorithm.node} <= {"", "ai.onnx"}


@pytest.mark.parametrize("backend", ["onnxruntime", "reference"])
def test_cached_steps_equal_full_steps(backend: str) -> None:
    """train_features on features(x) is the train step on x; infer/eval likewise."""
    tm = _backbone_model(optimizer=et.optim.Adam(lr=1e-2))
    full, split = tm.load(backend=backend), tm.load(backend=backend)
    x, y = _data(64)
    for i in range(0, 64, 16):
        xb, yb = x[i:i + 16], y[i:i + 16]
        f = split.run("features", x=xb)["features"]
        a = full.run("train", x=xb, y=yb)["loss"]
        b = split.run("train_features", features=f, y=yb)["loss"]
        np.testing.assert_allclose(b, a, rtol=1e-6)
    for k, v in full.parameters().items():
        np.testing.assert_allclose(split.parameters()[k], v, rtol=1e-6, atol=1e-7)
    f = split.run("features", x=x[:8])["features"]
    np.testing.assert_allclose(split.run("infer_features", features=f)["logits"],
                               full.run("infer", x=x[:8])["logits"], rtol=1e-5, atol=1e-6)
    ev_full = full.run("eval", x=x[:8], y=y[:8])
    ev_split = split.run("eval_features", features=f, y=y[:8])
    assert set(ev_full) == set(ev_split) == {"loss", "accuracy"}
    np.testing.assert_allclose(ev_split["loss"], ev_full["loss"], rtol=1e-5)


def test_fit_with_cached_features_is_the_same_training_and_10x_faster_per_epoch() -> None:
    tm = _backbone_model(optimizer=et.optim.Adam(lr=1e-2))
    x, y = _data(256)
    # One intra-op thread each: a spinning thread pool on a shared machine stalls small steps
    # far more than big ones, which would measure the machine's load instead of the cache.
    plain, cached = tm.load(threads=1), tm.load(threads=1)
    h_plain = plain.fit(x, y, epochs=4, batch_size=32, progress=False)
    h_cached = cached.fit(x, y, epochs=4, batch_size=32, progress=False, cache_features=True)
    np.testing.assert_allclose(h_cached["loss"], h_plain["loss"], rtol=1e-5)
    np.testing.assert_allclose(h_cached["accuracy"], h_plain["accuracy"], rtol=1e-6)
    for k, v in plain.parameters().items():
        np.testing.assert_allclose(cached.parameters()[k], v, rtol=1e-5, atol=1e-6)
    assert h_cached.feature_seconds > 0 and h_cached.saved_seconds > h_cached.feature_seconds
    assert len(h_plain.epoch_seconds) == len(h_cached.epoch_seconds) == 4
    # Per epoch, as timeit does: the fastest epoch of each, which leaves out one-time session
    # set-up and the moments another process held the core.
    plain_epoch, cached_epoch = min(h_plain.epoch_seconds), min(h_cached.epoch_seconds)
    assert plain_epoch >= 10 * cached_epoch, (
        f"per epoch: {plain_epoch:.3f} s recomputing the backbone vs {cached_epoch:.3f} s "
        "with cached features")


def test_fit_cache_reports_time_saved(capsys: pytest.CaptureFixture[str]) -> None:
    tm = _backbone_model()
    x, y = _data(64)
    tm.load().fit(x, y, epochs=2, batch_size=32, progress=True, cache_features=True,
                  validation_data=(x[:16], y[:16]))
    assert "feature caching" in capsys.readouterr().out


def test_cache_features_needs_a_split_model() -> None:
    torch.manual_seed(0)
    tm = et.from_torch(Backbone(), torch.zeros(2, 3, 24, 24), trainable=et.select.head())
    x, y = _data(8)
    with pytest.raises(et.EdgetrainError, match="split_features=True"):
        tm.load().fit(x, y, cache_features=True, progress=False)


def test_split_needs_a_frozen_prefix() -> None:
    torch.manual_seed(0)
    with pytest.raises(et.EdgetrainError, match="reads the model input directly"):
        et.from_torch(Backbone(), torch.zeros(2, 3, 24, 24), split_features=True)
    # Trainable layers on both sides of a residual add: no single tensor to cache.
    with pytest.raises(et.EdgetrainError, match="exactly one feature tensor"):
        et.from_torch(TinyResNet(), torch.zeros(2, 3, 16, 16),
                      trainable=["layer2.conv2.weight", "fc.*"], split_features=True)


def test_efficientnet_lite0_transfer_demo(tmp_path: Any) -> None:
    """The pretrained EfficientNet-Lite0 example, small: 300 images, 32×32, 10 epochs."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from edgetrain.demos.transfer import run

    r = run(str(tmp_path), epochs=10, image_size=32, limit=300, progress=False)
    assert r["accuracy_before"] < 0.3
    assert r["accuracy_after"] > r["majority"] + 0.4, r
    assert r["speedup"] >= 10, r
    for name in ("efficientnet_lite0_trainable.onnx", "personal.onnx", "transfer.png",
                 "personal.safetensors"):
        assert (tmp_path / name).exists(), name
    onnx.checker.check_model(str(tmp_path / "efficientnet_lite0_trainable.onnx"),
                             full_check=True)
