"""The benchmark workloads W5-W8: the networks are the ones they claim to be, the ONNX every
system trains computes what the PyTorch peer computes, and the ports the peers need keep the
function (the LoRA wrapper of the PyTorch peer, the affine batch norm of the
onnxruntime-training peer)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

import edgetrain as et  # noqa: E402
from edgetrain import bench  # noqa: E402
from edgetrain._torch_nets import add_lora, copy_weights, mobilenet_v2, resnet18  # noqa: E402

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
PEERS = os.path.join(BENCH, "peers")


@pytest.fixture(autouse=True)
def _one_torch_thread():  # type: ignore[no-untyped-def]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _infer(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def test_networks_have_torchvisions_sizes() -> None:
    # torchvision.models.mobilenet_v2() / resnet18(): 3,504,872 and 11,689,512 parameters
    # in 314 and 122 state-dict entries (with num_batches_tracked), 1000 classes.
    for net, params, entries in ((mobilenet_v2(), 3_504_872, 314), (resnet18(), 11_689_512, 122)):
        assert sum(p.numel() for p in net.parameters()) == params
        assert len(net.state_dict()) == entries


def test_workload_names_cover_w1_to_w8() -> None:
    assert [bench.workload_name(f"w{i}") for i in range(1, 9)] == list(bench.WORKLOADS)
    with pytest.raises(argparse.ArgumentTypeError, match="W1, W2, W3, W4, W5, W6, W7, W8"):
        bench.workload_name("W9")


@pytest.mark.slow
def test_w7_trains_the_function_pytorch_trains() -> None:
    """The exported ONNX infers as the module does, and edgetrain's first training loss (batch
    statistics) is PyTorch's in train() mode."""
    w = bench.workload("W7")
    assert w.batch_norm == "train" and w.optimizer["momentum"] == 0.9 and w.batch == 16
    net = resnet18(w.arch["classes"], 0)
    assert copy_weights(net, w.weights) == len(w.weights)
    x, y = w.batches[0]
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_infer(w.model, {"x": x}), want, rtol=1e-4, atol=1e-4)
    m = bench.compile_workload(w).load()
    loss = float(m.run("train", x=x, y=y)["loss"])
    with torch.no_grad():
        torch_loss = float(torch.nn.functional.cross_entropy(net.train()(torch.from_numpy(x)),
                                                             torch.from_numpy(y)))
    assert abs(loss - torch_loss) <= 1e-5 * abs(torch_loss)


@pytest.mark.slow
def test_w6_lora_wrapper_computes_the_rewritten_graph() -> None:
    """The PyTorch peer's LoRALinear layers (W6) compute what the graph that select.lora makes
    computes, with non-zero adapters (B starts at zero, which would hide a wrong branch)."""
    pytest.importorskip("transformers")
    w = bench.workload("W6")
    lora_model = w.extra["lora_model"]
    rng = np.random.default_rng(1)
    weights = dict(w.weights)
    for a in w.arch["adapters"]:
        weights[a["B"]] = rng.normal(0, 0.05, weights[a["B"]].shape).astype(np.float32)
    for t in lora_model.graph.initializer:
        if t.name in weights:
            t.CopyFrom(onnx.numpy_helper.from_array(weights[t.name], t.name))
    from edgetrain._torch_nets import bert_classifier

    net = bert_classifier(w.arch["model_dir"], w.arch["classes"], 0)
    copy_weights(net, weights)
    add_lora(net, w.arch["adapters"], weights)
    x, _ = w.batches[0]
    with torch.no_grad():
        want = net(*(torch.from_numpy(x[k]) for k in w.inputs)).numpy()
        plain = bert_classifier(w.arch["model_dir"], w.arch["classes"], 0)
        copy_weights(plain, weights)
        base = plain(*(torch.from_numpy(x[k]) for k in w.inputs)).numpy()
    got = _infer(lora_model, x)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    assert np.abs(want - base).max() > 1e-2  # the adapters change the output


def test_ortt_affine_batch_norm_keeps_the_function() -> None:
    """The onnxruntime-training peer's rewrite of inference-mode batch norms into Mul/Add
    (frozen and trainable scale/bias) computes what BatchNormalization computes."""
    sys.path.insert(0, PEERS)
    try:
        from ortt_worker import affine_batch_norms
    finally:
        sys.path.remove(PEERS)
    from edgetrain.frontends import torch_to_onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 4, 1), torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    x = np.random.default_rng(0).random((2, 3, 9, 9), dtype=np.float32)
    model = torch_to_onnx(net, (torch.from_numpy(x),))
    want = _infer(model, {"x": x})
    trainable = {"4.weight", "4.bias"}
    rewritten = affine_batch_norms(model, trainable)
    assert "BatchNormalization" not in {n.op_type for n in rewritten.graph.node}
    assert trainable <= {t.name for t in rewritten.graph.initializer}
    np.testing.assert_allclose(_infer(rewritten, {"x": x}), want, rtol=1e-5, atol=1e-5)


def test_workloads_train_without_dropout() -> None:
    """The workloads export through torch_to_onnx, which keeps nn.Dropout for compile to switch
    on; bench takes it out (PyTorch trains them in eval() mode), so that the first losses of
    every system agree (W4/W8: EfficientNet-Lite0's classifier dropout)."""
    from edgetrain.frontends import torch_to_onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                              torch.nn.Linear(8, 3))
    x = np.random.default_rng(0).random((4, 6), dtype=np.float32)
    y = np.array([0, 1, 2, 1])
    model = torch_to_onnx(net, (torch.from_numpy(x),))
    assert "Dropout" in {n.op_type for n in model.graph.node}
    plain = bench.without_dropout(model)
    assert "Dropout" not in {n.op_type for n in plain.graph.node}
    used = {i for n in plain.graph.node for i in n.input}
    assert all(n.output[0] in used for n in plain.graph.node if n.op_type == "Constant")
    np.testing.assert_allclose(_infer(plain, {"x": x}), _infer(model, {"x": x}), rtol=1e-6)
    losses = [float(et.compile(plain, optimizer=et.optim.SGD(lr=0.1)).load()
                    .run("train", x=x, y=y)["loss"]) for _ in range(2)]
    with torch.no_grad():
        want = float(torch.nn.functional.cross_entropy(net.eval()(torch.from_numpy(x)),
                                                       torch.from_numpy(y)))
    assert losses[0] == losses[1] == pytest.approx(want, rel=1e-6)


def _bench_run() -> Any:
    """benchmarks/run.py as a module."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    import run

    return run


def _tiny_workload() -> bench.Workload:
    """A W1 in miniature: 6 → 8 relu → 3, SGD momentum, batch 4, 3 batches."""
    return bench.mlp_workload("W1", "tiny", (6,), 8, 3, 4,
                              {"name": "sgd", "lr": 0.1, "momentum": 0.9}, n_batches=3)


@pytest.mark.parametrize("peer", [
    "ort-node", pytest.param("ort-web", marks=pytest.mark.slow)])
def test_js_peer_speaks_the_worker_protocol(peer: str, tmp_path: Any) -> None:
    """A JavaScript peer (benchmarks/peers/_js.py) serves the harness: its first losses are
    onnxruntime's on the same file and batches, a timed block reports ms/step measured in
    JavaScript, and a fresh process reports a cold start. Without node (or the npm packages,
    or Chromium: .ci/web-setup.sh) it skips naming what is missing; under CI=true it fails."""
    run = _bench_run()
    missing = run.js_tools().missing(run.JS_PEERS[peer])
    if missing:
        msg = f"{peer} needs {', '.join(missing)}; run .ci/web-setup.sh"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    w = _tiny_workload()
    workdir = str(tmp_path / "W1")
    run.write_workload(w, workdir, seed=0)
    outdir = os.path.join(workdir, peer)
    wk = run.Worker.start(peer, sys.executable, workdir, outdir, str(tmp_path / "log"), 300)
    try:
        assert wk.hello.get("ok"), wk.hello
        losses = wk.ask(cmd="losses", n=4)["losses"]
        ms = wk.ask(cmd="run", n=3)["ms_per_step"]
        rss = wk.ask(cmd="stats")["rss_mb"]
    finally:
        wk.close()
    assert wk.proc.returncode == 0
    m = et.load(os.path.join(outdir, "model.et.onnx"))  # the file the peer compiled
    want = [float(m.run("train", x=x, y=y)["loss"]) for x, y in
            (w.batches[i % len(w.batches)] for i in range(4))]
    np.testing.assert_allclose(losses, want, rtol=1e-5)
    assert 0 < ms < 10_000 and rss > 10
    cold = run.cold_start(peer, sys.executable, workdir, outdir, 2, str(tmp_path / "log"), 300)
    assert cold["ok"], cold
    assert cold["first_loss"] == pytest.approx(want[0], rel=1e-5)
    assert cold["cold_ms"] > 0 and cold["import_s"] > 0 and cold["rss_mb"] > 10


def test_missing_js_tools_say_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JS peer whose tools are missing is "not set up", naming them (not a crash)."""
    run = _bench_run()
    tools = run.js_tools()
    monkeypatch.setattr(run, "js_tools", lambda: tools)
    monkeypatch.setattr(tools.shutil, "which", lambda name: None)
    monkeypatch.setattr(tools, "CHROMIUM", "/nonexistent/chromium")
    assert run.peer_python("ort-web") is None
    msg = run.not_set_up("ort-web")
    assert "node (Debian package nodejs)" in msg and "/nonexistent/chromium" in msg
    assert ".ci/web-setup.sh" in msg
    assert "error" in tools.shipped("node")
