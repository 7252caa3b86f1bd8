"""Whole CNNs against PyTorch: MobileNetV2- and ResNet-style nets exported with from_torch,
compiled all-trainable with batch_norm="train", trained 20 Adam steps from the same weights;
batch norm modes, checkpoints and export of running statistics; the selectors."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import edgetrain as et
from _vision_nets import Backbone, TinyMobileNetV2, TinyResNet
from edgetrain.frontends import torch_to_onnx

# full CNNs against torch in float64
pytestmark = pytest.mark.slow

STEPS = 20


@pytest.fixture(autouse=True)
def _one_torch_thread():  # type: ignore[no-untyped-def]
    """Tiny tensors: torch's thread pool only adds contention on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomize_bn(net: torch.nn.Module, seed: int) -> None:
    """Non-trivial batch-norm parameters and running statistics (fresh ones are 0 and 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(0.5 + torch.rand(n, generator=g))
                mod.bias.copy_(0.2 * torch.randn(n, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))


def _net(cls: type[torch.nn.Module], dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = cls()
    _randomize_bn(net, seed)
    return net.to(dtype)


def _data(dtype: np.dtype, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((STEPS, 4, 3, 16, 16)).astype(dtype)
    ys = rng.integers(0, 5, (STEPS, 4))
    return xs, ys


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _train_both(cls: type[torch.nn.Module], dtype: torch.dtype, backend: str
                ) -> tuple[list[float], list[float], dict[str, np.ndarray], dict[str, Any]]:
    npdt = np.float64 if dtype == torch.float64 else np.float32
    net = _net(cls, dtype)
    xs, ys = _data(npdt)
    tm = et.from_torch(net, torch.tensor(xs[0]), optimizer=et.optim.Adam(lr=1e-2),
                       batch_norm="train")
    m = tm.load(backend=backend)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    ours, theirs = [], []
    for i in range(STEPS):
        ours.append(float(m.run("train", x=xs[i], y=ys[i])["loss"]))
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.tensor(xs[i])), torch.tensor(ys[i]))
        loss.backward()
        opt.step()
        theirs.append(loss.item())
    want = {k: v.detach().numpy() for k, v in net.state_dict().items()
            if not k.endswith("num_batches_tracked")}
    return ours, theirs, m.state(), want



@pytest.mark.parametrize("cls", [TinyMobileNetV2, TinyResNet], ids=["mobilenetv2", "resnet"])
def test_adam_steps_match_torch_float64(cls: type[torch.nn.Module]) -> None:
    """Losses, every weight and every running statistic within 1e-4 relative (float64).

    float64 because the MobileNetV2 bottleneck's batch-norm shifts before a conv + batch norm
    have an exactly zero gradient: in float32 Adam normalizes rounding noise there into
    full-size steps in both frameworks (differently), which no implementation can match.
    """
    ours, theirs, state, want = _train_both(cls, torch.float64, "reference")
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert set(want) <= set(state), f"missing in the model state: {set(want) - set(state)}"
    errors = {k: _rel(state[k], v) for k, v in want.items()}
    bad = {k: e for k, e in errors.items() if e > 1e-4}
    assert not bad, f"weights/statistics differ from PyTorch after {STEPS} steps: {bad}"
    stats = [k for k in want if k.endswith(("running_mean", "running_var"))]
    assert stats and all(k in errors for k in stats)


def test_resnet_float32_onnxruntime_matches_torch() -> None:
    """The default runtime in float32: losses, weights and running statistics within 1e-4."""
    ours, theirs, state, want = _train_both(TinyResNet, torch.float32, "onnxruntime")
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    bad = {k: _rel(state[k], v) for k, v in want.items() if _rel(state[k], v) > 1e-4}
    assert not bad, f"weights/statistics differ from PyTorch: {bad}"


def test_mobilenet_float32_onnxruntime_losses_match_torch() -> None:
    ours, theirs, state, want = _train_both(TinyMobileNetV2, torch.float32, "onnxruntime")
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    # The statistics of the first block are not downstream of any zero-gradient shift.
    for k in ("features.1.running_mean", "features.1.running_var",
              "features.3.block.1.running_var"):
        assert _rel(state[k], want[k]) < 1e-4, k


def test_batch_norm_frozen_uses_running_statistics_and_keeps_them() -> None:
    """batch_norm="frozen" (default) trains like PyTorch in eval mode; stats never move."""
    net = _net(TinyResNet, torch.float32, seed=3)
    xs, ys = _data(np.float32, seed=4)
    tm = et.from_torch(net, torch.tensor(xs[0]), optimizer=et.optim.SGD(lr=0.05))
    assert not any(k.endswith("running_mean") for k in tm.meta.state + tm.meta.trainable)
    m = tm.load()
    before = {k: v.copy() for k, v in m.state().items() if "running" in k}
    assert not before, "frozen running statistics must not be runtime state"
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    net.eval()
    for i in range(5):
        ours = float(m.run("train", x=xs[i], y=ys[i])["loss"])
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.tensor(xs[i])), torch.tensor(ys[i]))
        loss.backward()
        opt.step()
        assert ours == pytest.approx(loss.item(), rel=1e-5)
    params = m.parameters()
    for k, v in net.state_dict().items():
        if k in params:
            assert _rel(params[k], v.numpy()) < 1e-5, k


def test_running_statistics_in_checkpoints_and_export(tmp_path: Any) -> None:
    net = _net(TinyMobileNetV2, torch.float32, seed=5)
    xs, ys = _data(np.float32, seed=6)
    tm = et.from_torch(net, torch.tensor(xs[0]), optimizer=et.optim.Adam(lr=1e-2),
                       batch_norm="train")
    stats = [k for k in tm.meta.state if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 2 * sum(isinstance(mod, torch.nn.BatchNorm2d)
                                 for mod in net.modules())
    path = tmp_path / "mnv2.onnx"
    tm.save(path)
    m = et.load(path)
    initial = m.state()
    for i in range(3):
        m.run("train", x=xs[i], y=ys[i])
    trained = m.state()
    for k in stats:
        assert not np.array_equal(trained[k], initial[k]), f"{k} was not updated"
    ck = tmp_path / "ck.safetensors"
    m.save(ck)
    fresh = et.load(path)
    fresh.restore(ck)
    restored = fresh.state()
    for k in stats:
        np.testing.assert_array_equal(restored[k], trained[k])
    x_test = xs[10]
    out = fresh.run("infer", x=x_test)["logits"]
    np.testing.assert_array_equal(out, m.run("infer", x=x_test)["logits"])
    plain = tmp_path / "plain.onnx"
    m.export(plain)
    sess = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x_test})[0], out, rtol=1e-5, atol=1e-6)
    baked = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(plain)).graph.initializer}
    for k in stats:
        np.testing.assert_array_equal(baked[k], trained[k])


def test_from_torch_keeps_batch_norm_and_untied_parameters() -> None:
    """Fresh BatchNorm weight and running_var are both ones: they must stay two tensors."""
    torch.manual_seed(0)
    net = TinyResNet()
    model = torch_to_onnx(net, torch.zeros(2, 3, 16, 16))
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" in ops
    names = {t.name for t in model.graph.initializer}
    assert {"stem.1.weight", "stem.1.running_var", "stem.1.bias",
            "stem.1.running_mean"} <= names
    assert not any(n.op_type == "Identity" and n.input[0] in names for n in model.graph.node)


# -- selectors ---------------------------------------------------------------------------------

def _proto() -> onnx.ModelProto:
    torch.manual_seed(0)
    return torch_to_onnx(TinyMobileNetV2(), torch.zeros(2, 3, 16, 16))


def test_selectors_pick_the_documented_parameters() -> None:
    g = et.compile(_proto()).proto.graph  # shape-inferred, as compile sees it
    assert et.select.head()(g) == ["classifier.weight", "classifier.bias"]
    assert et.select.last(1)(g) == ["classifier.weight", "classifier.bias"]
    last2 = et.select.last(2)(g)
    assert last2[:3] == ["features.6.weight", "features.7.weight", "features.7.bias"]
    assert last2[3:] == ["classifier.weight", "classifier.bias"]
    biases = et.select.bias_only()(g)
    assert "classifier.bias" in biases and "features.1.bias" in biases
    assert all(not b.endswith(("weight", "running_mean", "running_var")) for b in biases)


@pytest.mark.parametrize("sel", [et.select.last(2), et.select.bias_only(), et.select.head(),
                                 [et.select.head(), "features.0.*"]],
                         ids=["last2", "bias_only", "head", "head+glob"])
def test_selectors_compile_to_valid_files(sel: Any, tmp_path: Any) -> None:
    tm = et.compile(_proto(), trainable=sel, optimizer=et.optim.SGD(lr=0.1))
    onnx.checker.check_model(tm.proto, full_check=True)
    path = tmp_path / "m.onnx"
    tm.save(path)
    onnx.checker.check_model(str(path), full_check=True)
    m = et.load(path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 5, 4)
    before = m.parameters()
    m.run("train", x=x, y=y)
    after = m.parameters()
    assert set(after) == set(tm.meta.trainable)
    assert any(not np.array_equal(before[k], after[k]) for k in after)


def test_frozen_backbone_gets_no_backward() -> None:
    """With head() selected, the train graph has no Conv beyond the forward ones (backward
    convolutions are Conv, ConvTranspose for input gradients, Gemm for im2col weight
    gradients)."""
    proto = _proto()
    n_conv = sum(n.op_type == "Conv" for n in proto.graph.node)
    n_gemm = sum(n.op_type in ("Gemm", "MatMul") for n in proto.graph.node)

    def counts(g: onnx.GraphProto) -> tuple[int, int, int]:
        return (sum(n.op_type == "Conv" for n in g.node),
                sum(n.op_type == "ConvTranspose" for n in g.node),
                sum(n.op_type in ("Gemm", "MatMul") for n in g.node))

    tm = et.compile(proto, trainable=et.select.head())
    conv, conv_t, _ = counts(tm.proto.training_info[0].algorithm)
    assert (conv, conv_t) == (n_conv, 0)
    tm_all = et.compile(proto)
    conv, conv_t, gemm = counts(tm_all.proto.training_info[0].algorithm)
    head = counts(tm.proto.training_info[0].algorithm)[2]
    # every conv gets a weight gradient (a Conv or a Gemm) and all but the first an input one
    assert (conv - n_conv) + conv_t + (gemm - head) >= 2 * n_conv - 1
    assert gemm > n_gemm


def test_selector_that_selects_nothing_is_an_error() -> None:
    with pytest.raises(et.EdgetrainError, match="selects no parameter"):
        et.compile(_proto(), trainable=et.select.Selector("none()", lambda g: []))
    with pytest.raises(et.EdgetrainError, match="positive"):
        et.select.last(0)


def test_backbone_net_compiles_with_head_selector() -> None:
    torch.manual_seed(0)
    tm = et.from_torch(Backbone(), torch.zeros(2, 3, 12, 12), trainable=et.select.head())
    assert tm.meta.trainable == ("head.weight", "head.bias")


class _PaddedUpsampleNet(torch.nn.Module):
    """TF-style static "same" padding (ZeroPad2d, as EfficientNet-Lite exports it), nearest
    and bilinear upsampling, Hardswish, PReLU, average pooling."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(
            nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 6, 3, 2), nn.BatchNorm2d(6), nn.Hardswish(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(6, 6, 3, padding=1),
            nn.PReLU(6), nn.Upsample(scale_factor=0.5, mode="bilinear"),
            nn.ReflectionPad2d(1), nn.Conv2d(6, 4, 3), nn.AvgPool2d(2), nn.Flatten())
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def test_padded_upsampling_net_matches_torch() -> None:
    """The exported padding arithmetic folds to static shapes; every layer trains like torch."""
    net = _net(_PaddedUpsampleNet, torch.float32, seed=7)
    with torch.no_grad():
        net.body[6].weight.uniform_(0.1, 0.4)
    rng = np.random.default_rng(8)
    xs = rng.standard_normal((5, 4, 3, 16, 16)).astype(np.float32)
    ys = rng.integers(0, 3, (5, 4))
    tm = et.from_torch(net, torch.tensor(xs[0]), optimizer=et.optim.SGD(lr=0.05),
                       batch_norm="train")
    ops = {n.op_type for n in tm.proto.graph.node}
    assert {"Pad", "Resize", "HardSwish", "PRelu", "AveragePool"} <= ops, ops
    m = tm.load()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    net.train()
    for i in range(5):
        ours = float(m.run("train", x=xs[i], y=ys[i])["loss"])
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.tensor(xs[i])), torch.tensor(ys[i]))
        loss.backward()
        opt.step()
        assert ours == pytest.approx(loss.item(), rel=1e-4)
    state = m.state()
    for k, v in net.state_dict().items():
        if not k.endswith("num_batches_tracked"):  # (the PReLU slope is exported [C, 1, 1])
            assert _rel(state[k].reshape(v.shape), v.numpy()) < 1e-4, k
