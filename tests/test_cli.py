"""The command line, run as a user runs it (a real subprocess per command)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgetrain.demos._data import digits
from edgetrain.demos._models import seed_mlp


def cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgetrain.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("cli")
    onnx.save(seed_mlp(), str(d / "base.onnx"))
    x_tr, y_tr, x_te, y_te = digits()
    np.savez(d / "train.npz", x=x_tr, y=y_tr)
    np.savez(d / "test.npz", x=x_te, y=y_te)
    return str(d)


def test_compile_info_train_infer_export(workdir: str) -> None:
    j = lambda name: os.path.join(workdir, name)  # noqa: E731
    r = cli("compile", j("base.onnx"), "-o", j("model.onnx"), "--optimizer", "sgd",
            "--lr", "0.05", "--momentum", "0.9")
    assert r.returncode == 0, r.stderr
    assert "4 trainable" in r.stdout

    r = cli("info", j("model.onnx"))
    assert r.returncode == 0, r.stderr
    for word in ("train(", "infer(", "eval(", "save(", "restore(", "trainable: 4 tensors",
                 "optimizer: sgd"):
        assert word in r.stdout, r.stdout

    r = cli("train", j("model.onnx"), "--data", j("train.npz"), "--epochs", "5",
            "--checkpoint", j("ck.safetensors"), "--plot", j("train.png"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert os.path.exists(j("ck.safetensors")) and os.path.getsize(j("train.png")) > 1000
    losses = [float(v) for v in re.findall(r"loss (\d+\.\d+)", r.stdout)]
    assert len(losses) == 5 and losses[-1] < losses[0] / 3, r.stdout

    r = cli("infer", j("model.onnx"), "--data", j("test.npz"), "--checkpoint",
            j("ck.safetensors"), "-o", j("pred.npz"))
    assert r.returncode == 0, r.stderr
    acc = float(re.search(r"accuracy: (\d\.\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    assert acc > 0.9

    r = cli("export", j("model.onnx"), "--checkpoint", j("ck.safetensors"), "-o",
            j("plain.onnx"))
    assert r.returncode == 0, r.stderr
    plain = onnx.load(j("plain.onnx"))
    assert len(plain.training_info) == 0
    sess = ort.InferenceSession(j("plain.onnx"))
    logits = sess.run(None, {"x": np.load(j("test.npz"))["x"]})[0]
    np.testing.assert_array_equal(logits, np.load(j("pred.npz"))["logits"])

    # Training resumes from the checkpoint: the step count goes on.
    r = cli("train", j("model.onnx"), "--data", j("train.npz"), "--epochs", "1",
            "--checkpoint", j("ck.safetensors"), "--no-progress")
    assert r.returncode == 0 and "restored" in r.stdout, r.stderr
    steps = [int(s) for s in re.findall(r"step (\d+)", r.stdout)]
    assert steps[-1] > steps[0] > 0


def test_cli_errors_are_clear(workdir: str) -> None:
    j = lambda name: os.path.join(workdir, name)  # noqa: E731
    r = cli("info", j("base.onnx"))
    assert r.returncode == 2 and "not an edgetrain trainable file" in r.stderr
    r = cli("train", j("nope.onnx"), "--data", j("train.npz"))
    assert r.returncode == 2 and "no such file" in r.stderr
    np.savez(j("bad.npz"), features=np.zeros(3))
    cli("compile", j("base.onnx"), "-o", j("m2.onnx"))
    r = cli("train", j("m2.onnx"), "--data", j("bad.npz"))
    assert r.returncode == 2 and "lacks array(s) ['x', 'y']" in r.stderr
    r = cli("compile", j("base.onnx"), "-o", j("m3.onnx"), "--trainable", "nothing*")
    assert r.returncode == 2 and "matches no float initializer" in r.stderr


def test_demo_reaches_accuracy(tmp_path: os.PathLike[str]) -> None:
    r = cli("demo", "--out", str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr
    acc = float(re.search(r"test accuracy: (\d\.\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    assert acc >= 0.95, r.stdout
    for f in ("model.onnx", "checkpoint.safetensors", "training.png", "inference.onnx"):
        assert os.path.getsize(os.path.join(tmp_path, f)) > 0
