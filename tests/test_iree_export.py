"""``edgetrain export-iree``: every target builds here; the host build trains like onnxruntime.

The host check is a device driver in a few lines, reading only what the export wrote: the
manifest, the modules and state.safetensors, run with iree-base-runtime and the commit rule.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import numpy as np
import pytest

import edgetrain as et
from _matrix_models import MODELS, MatrixModel
from edgetrain.cli import main as cli_main
from edgetrain.errors import EdgetrainError

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("iree.compiler", "iree.runtime")),
    reason="needs iree-base-compiler and iree-base-runtime (the iree extra)")

TARGETS = ["host", "android-arm64", "ios-arm64", "vulkan", "metal"]


@pytest.fixture(scope="module", autouse=True)
def _private_module_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["EDGETRAIN_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgetrain-cache"))


@pytest.fixture(scope="module")
def cnn() -> MatrixModel:
    return MODELS["cnn_adam"]()


def _drive(out_dir: str, mm: MatrixModel, steps: int) -> list[float]:
    """Train ``steps`` steps from an export folder alone, as a device driver would."""
    import iree.runtime as rt
    from safetensors.numpy import load_file

    with open(os.path.join(out_dir, "manifest.json")) as f:
        manifest = json.load(f)
    spec = manifest["signatures"]["train"]
    config = rt.Config("local-task")
    with open(os.path.join(out_dir, spec["module"]), "rb") as f:
        module = rt.VmModule.copy_buffer(config.vm_instance, f.read())
    fn = rt.SystemContext(vm_modules=[module], config=config).modules.module[spec["function"]]
    state = load_file(os.path.join(out_dir, manifest["state"]))
    outputs = [o["name"] for o in spec["outputs"]]
    step = manifest["step"]
    losses = []
    for i in range(steps):
        feeds = dict(mm.batch(i))
        args = [feeds[s["name"]] if s["name"] in feeds else state.get(s["name"])
                for s in spec["inputs"]]
        lr = next(s for s in spec["inputs"] if s["name"] == "lr")
        args[spec["inputs"].index(lr)] = np.array(_default_lr(mm), np.float32)
        result = dict(zip(outputs, [v.to_host() for v in fn(*args)]))
        losses.append(float(result["loss"]))
        if int(result[spec["updates"][step]]) > int(state[step]):
            for k, out in spec["updates"].items():
                state[k] = result[out]
    return losses


def _default_lr(mm: MatrixModel) -> float:
    meta = et.load(mm.proto).meta
    return float(next(s.default for s in meta.signatures["train"].inputs
                      if s.name == "lr"))


def _ort_losses(mm: MatrixModel, steps: int) -> list[float]:
    m = et.load(mm.proto)
    return [float(m.run("train", **mm.batch(i))["loss"]) for i in range(steps)]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp_adam", "cnn_adam"])
def test_host_export_trains_like_onnxruntime(model: str, tmp_path: Any) -> None:
    mm = MODELS[model]()
    path = str(tmp_path / "model.onnx")
    with open(path, "wb") as f:
        f.write(mm.proto.SerializeToString())
    assert cli_main(["export-iree", path, str(tmp_path / "out"), "--target", "host"]) == 0
    got, want = _drive(str(tmp_path / "out"), mm, 50), _ort_losses(mm, 50)
    diff = np.abs(np.array(got) - want) / np.maximum(1.0, np.abs(want))
    assert diff.max() <= 1e-5, f"step {int(diff.argmax())} differs by {diff.max():.2e}"
    assert np.mean(want[-10:]) < np.mean(want[:10])


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_every_target_builds(target: str, cnn: MatrixModel, tmp_path: Any) -> None:
    """The CNN (convolutions, MaxPool and its gradient, Adam) for each device target."""
    out = tmp_path / target
    manifest = et_export(cnn, str(out), target)
    assert set(manifest["signatures"]) == {"train", "eval", "infer"}
    for spec in manifest["signatures"].values():
        data = (out / spec["module"]).read_bytes()
        assert data[:2] == b"PK" and b"IREE" in data[:4096], "not an IREE module"
        assert spec["module_bytes"] == len(data) > 1000
    train = manifest["signatures"]["train"]
    y = next(s for s in train["inputs"] if s["name"] == "y")
    assert y["dtype"] == ("int32" if target in ("vulkan", "metal") else "int64")
    assert manifest["batch"] == (32 if target == "metal" else None)
    if target == "ios-arm64":  # kernels as a Mach-O arm64 object to link into the app
        obj = (out / "train.o").read_bytes()
        assert obj[:4] == bytes.fromhex("cffaedfe") and (out / "train.h").exists()
    if target == "android-arm64":
        assert b"aarch64" in (out / "train.vmfb").read_bytes()
    restored = et.load(cnn.proto)
    restored.restore(str(out / "state.safetensors"))  # the state is an edgetrain checkpoint
    assert restored.step == 0


def et_export(mm: MatrixModel, out: str, target: str) -> dict[str, Any]:
    from edgetrain.iree_export import export_iree

    return export_iree(mm.proto, out, target)


def test_bad_target_and_batch_are_refused(tmp_path: Any, capsys: Any) -> None:
    from edgetrain.iree_export import export_iree

    mm = MODELS["mlp_sgd"]()
    with pytest.raises(EdgetrainError, match="unknown target 'webgpu'"):
        export_iree(mm.proto, str(tmp_path), "webgpu")
    with pytest.raises(EdgetrainError, match="positive"):
        export_iree(mm.proto, str(tmp_path), "host", batch=0)
    assert cli_main(["export-iree", str(tmp_path / "missing.onnx"), str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    # A folder with other files (a checkpoint, say) is not written into.
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "state.safetensors").write_bytes(b"my training")
    with pytest.raises(EdgetrainError, match="not empty"):
        export_iree(mm.proto, str(busy), "host")
    assert (busy / "state.safetensors").read_bytes() == b"my training"
