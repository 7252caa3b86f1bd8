"""Fixtures of the JavaScript driver's tests: exports, data and Python's own results.

``python tests/js_fixtures.py OUT`` (or :func:`write_fixtures`) writes, per model, into
``OUT/<model>/``:

* ``model.onnx`` — the trainable file, and ``site/`` — its ``edgetrain export-web`` folder;
* ``data.bin`` — the 50 training batches (x float32 then y, C order) and a probe batch;
* ``python.json`` — Python's 50 losses (onnxruntime backend), the probe's outputs before
  training and after 50 steps, and the shapes and dtypes of the arrays in ``data.bin``;
* ``python.safetensors`` — Python's checkpoint after ``RESTORE_AT`` steps; a driver that restores
  it and trains on with batches ``RESTORE_AT..49`` must see ``losses[RESTORE_AT:]``.

``js/test/contract.test.js`` reads them (``$EDGETRAIN_JS_FIXTURES``), and writes its own losses,
probe outputs and checkpoint into ``$EDGETRAIN_JS_OUT`` for ``tests/test_js.py`` to check in
Python. Run alone, the Node tests call this script to make the fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STEPS, BATCH, RESTORE_AT, PROBE = 50, 16, 20, 12
ROOT = Path(__file__).resolve().parents[1]


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...],
          scale: float) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def mlp(seed: int = 0) -> onnx.ModelProto:
    """64 → 32 → 32 → 10 with ReLUs; the input named ``pixels`` (not ``x``)."""
    rng = np.random.default_rng(seed)
    inits = []
    for name, (i, o) in {"fc1": (64, 32), "fc2": (32, 32), "fc3": (32, 10)}.items():
        inits += [_init(rng, f"{name}.w", (i, o), np.sqrt(2.0 / i)),
                  _init(rng, f"{name}.b", (o,), 0.01)]
    nodes = [helper.make_node("Gemm", ["pixels", "fc1.w", "fc1.b"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "fc2.w", "fc2.b"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "fc3.w", "fc3.b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def cnn(seed: int = 1) -> onnx.ModelProto:
    """[N, 1, 8, 8] → Conv 3×3 (8) → BatchNorm → Relu → Flatten → Gemm → 10."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "conv.w", (8, 1, 3, 3), np.sqrt(2.0 / 9)), _init(rng, "conv.b", (8,), 0.01),
             numpy_helper.from_array(np.ones(8, np.float32), "bn.scale"),
             numpy_helper.from_array(np.zeros(8, np.float32), "bn.bias"),
             numpy_helper.from_array(np.zeros(8, np.float32), "bn.mean"),
             numpy_helper.from_array(np.ones(8, np.float32), "bn.var"),
             _init(rng, "fc.w", (8 * 8 * 8, 10), np.sqrt(2.0 / 512)),
             _init(rng, "fc.b", (10,), 0.01)]
    nodes = [helper.make_node("Conv", ["image", "conv.w", "conv.b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean",
                                                     "bn.var"], ["b"]),
             helper.make_node("Relu", ["b"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _compile(name: str) -> Any:
    import edgetrain as et

    if name == "mlp":  # Adam, index labels, the first layer frozen (external data)
        return et.compile(mlp(), loss="cross_entropy", optimizer=et.optim.Adam(lr=0.01),
                          trainable=["fc2.*", "fc3.*"])
    # SGD with Nesterov momentum, one-hot labels, batch norm training (running statistics)
    return et.compile(cnn(), labels="onehot", batch_norm="train",
                      optimizer=et.optim.SGD(lr=0.05, momentum=0.9, nesterov=True))


def _data(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 50 batches and a probe batch, from scikit-learn's digits."""
    from edgetrain.demos._data import digits

    x_train, y_train, x_test, _ = digits(test_fraction=0.2, seed=0)
    rng = np.random.default_rng(7)
    idx = rng.integers(0, len(y_train), size=(STEPS, BATCH))
    shape = (-1, 64) if name == "mlp" else (-1, 1, 8, 8)
    x = x_train[idx.reshape(-1)].reshape(STEPS, BATCH, *shape[1:]).astype(np.float32)
    y = y_train[idx]
    y_out: np.ndarray = y.astype(np.int64) if name == "mlp" else \
        np.eye(10, dtype=np.float32)[y]
    probe = x_test[:PROBE].reshape(shape).astype(np.float32)
    return x, y_out, probe


def _python_run(path: Path, x: np.ndarray, y: np.ndarray, probe: np.ndarray,
                ck: Path) -> dict[str, Any]:
    import edgetrain as et

    m = et.load(path)
    data = m.signatures["infer"].inputs[0].name
    label = m.input_name("train", "label")
    before = m.run("infer", **{data: probe})["logits"]
    losses = []
    for s in range(STEPS):
        if s == RESTORE_AT:
            m.save(ck)
        losses.append(float(m.run("train", **{data: x[s], label: y[s]})["loss"]))
    after = m.run("infer", **{data: probe})["logits"]
    return {"losses": losses, "probe_before": before.ravel().tolist(),
            "probe_after": after.ravel().tolist(), "data": data, "label": label}


def write_model(name: str, out: Path) -> Path:
    """Everything for one model under ``out/name``."""
    where = out / name
    where.mkdir(parents=True, exist_ok=True)
    model = where / "model.onnx"
    _compile(name).save(model)
    _export(model, where / "site", "--multi-step")  # the Node tests run train_steps too
    x, y, probe = _data(name)
    (where / "data.bin").write_bytes(x.tobytes() + y.tobytes() + probe.tobytes())
    info = _python_run(model, x, y, probe, where / "python.safetensors")
    info.update(steps=STEPS, batch=BATCH, restore_at=RESTORE_AT,
                arrays=[{"name": "x", "dtype": str(x.dtype), "shape": list(x.shape)},
                        {"name": "y", "dtype": str(y.dtype), "shape": list(y.shape)},
                        {"name": "probe", "dtype": str(probe.dtype), "shape": list(probe.shape)}])
    (where / "python.json").write_text(json.dumps(info))
    return where


def _export(model: Path, site: Path, *flags: str) -> None:
    """``edgetrain export-web`` as a user runs it (this source tree's edgetrain)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    subprocess.run([sys.executable, "-m", "edgetrain.cli", "export-web", str(model), str(site),
                    "--no-webgpu", "--no-dataset", *flags], check=True, env=env,
                   capture_output=True, timeout=300)


def write_v1(out: Path) -> Path:
    """tests/fixtures/format_v1 (a file without input roles, a checksum-version-1 checkpoint)
    exported, with the outputs it must give after the restore."""
    src = ROOT / "tests" / "fixtures" / "format_v1"
    where = out / "v1"
    where.mkdir(parents=True, exist_ok=True)
    _export(src / "model.onnx", where / "site")
    expected = np.load(src / "expected.npz")
    (where / "checkpoint.safetensors").write_bytes((src / "checkpoint.safetensors").read_bytes())
    (where / "expected.json").write_text(json.dumps(
        {k: {"dtype": str(v.dtype), "shape": list(v.shape), "values": v.ravel().tolist()}
         for k, v in expected.items()}))
    return where


MODELS = ("mlp", "cnn")


def write_fixtures(out: Path) -> Path:
    for name in MODELS:
        write_model(name, out)
    write_v1(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/js_fixtures.py OUT_DIR")
    sys.path.insert(0, str(ROOT / "src"))
    print(write_fixtures(Path(sys.argv[1])))
