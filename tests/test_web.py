"""Train in the browser: the web export, its server, and a real headless Chromium run.

The browser test serves an export on 127.0.0.1, drives Debian's Chromium through playwright-core
(web/run-page.mjs), lets the demo page train 20 seeded steps with onnxruntime-web (wasm), and
checks them against the Python runtime on the same file, data and batches. Without Chromium,
node or the npm packages (see .ci/web-setup.sh) these tests skip, or fail when CI=true.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgetrain as et
from edgetrain import format as fmt
from edgetrain.web import (
    Mulberry32,
    add_cli,
    batch_indices,
    export_web,
    read_dataset,
    start_server,
)

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
ARTIFACTS = ROOT / "out" / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
STEPS, SEED, BATCH = 20, 7, 32


def _require(*needs: str) -> None:
    """Skip (or, under CI=true, fail) with the list of missing tools."""
    missing = []
    if "node" in needs and shutil.which("node") is None:
        missing.append("node (Debian package nodejs)")
    if "ort-web" in needs and not (WEB / "node_modules/onnxruntime-web/dist").is_dir():
        missing.append("onnxruntime-web (npm ci --prefix web)")
    if "playwright" in needs and not (WEB / "node_modules/playwright-core").is_dir():
        missing.append("playwright-core (npm ci --prefix web)")
    if "chromium" in needs and not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (Debian package chromium)")
    if missing:
        msg = f"the browser test needs {', '.join(missing)}; run .ci/web-setup.sh"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


def _digits_mlp(seed: int = 0, image: bool = False) -> onnx.ModelProto:
    """64 → 32 → 32 → 10 with ReLUs (``image``: 8×8 input, flattened first)."""
    rng = np.random.default_rng(seed)
    inits = []
    for name, (i, o) in {"fc1": (64, 32), "fc2": (32, 32), "fc3": (32, 10)}.items():
        w = (rng.standard_normal((i, o)) * np.sqrt(2.0 / i)).astype(np.float32)
        b = (rng.standard_normal(o) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]
    nodes = [helper.make_node("Flatten", ["image"], ["x"], axis=1)] if image else []
    nodes += [helper.make_node("Gemm", ["x", "fc1.w", "fc1.b"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "fc2.w", "fc2.b"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "fc3.w", "fc3.b"], ["logits"])]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8, 8]) if image else \
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])
    graph = helper.make_graph(
        nodes, "digits_mlp", [x],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture(scope="module")
def trainable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Adam, index labels, the first layer frozen (a 'pretrained' part kept in frozen.bin)."""
    tm = et.compile(_digits_mlp(), loss="cross_entropy", optimizer=et.optim.Adam(lr=0.01),
                    trainable=["fc2.*", "fc3.*"])
    path = tmp_path_factory.mktemp("web") / "digits.onnx"
    tm.save(path)
    return path


@pytest.fixture(scope="module")
def site(trainable: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require("ort-web")
    return export_web(trainable, tmp_path_factory.mktemp("site"), webgpu=False)


# -- the export, in Python ------------------------------------------------------------------

def test_export_layout(site: Path) -> None:
    manifest = json.loads((site / "edgetrain-web.json").read_text())
    for f in ("index.html", "edgetrain.js", "demo.js", "state.safetensors", "frozen.bin",
              "digits.bin", "infer.onnx", "train.onnx", "eval.onnx", "ort/ort.wasm.min.mjs",
              "ort/ort-wasm-simd-threaded.wasm"):
        assert (site / f).is_file(), f
    assert not (site / "ort/ort.webgpu.min.mjs").exists()  # webgpu=False
    assert set(manifest["signatures"]) == {"infer", "train", "eval", "save", "restore"}
    assert manifest["frozen"] == ["fc1.w", "fc1.b"]
    # The frozen weight is stored once, outside the graphs that use it.
    train = onnx.load(site / "train.onnx", load_external_data=False)
    ext = {t.name: {e.key: e.value for e in t.external_data} for t in train.graph.initializer
           if t.data_location == TensorProto.EXTERNAL}
    assert ext == {"fc1.w": {"location": "frozen.bin", "offset": "0", "length": str(64 * 32 * 4)}}
    assert (site / "frozen.bin").stat().st_size == 64 * 32 * 4
    for sig in ("infer", "train", "eval"):
        m = onnx.load(site / f"{sig}.onnx", load_external_data=False)
        assert m.ir_version <= helper.find_min_ir_version_for(list(m.opset_import))
        assert all(n.domain in ("", "ai.onnx") for n in m.graph.node)


def test_export_graphs_run_in_python(site: Path, trainable: Path) -> None:
    """The exported graphs (external data, state file) step exactly like the runtime."""
    ref = et.load(trainable)
    manifest = json.loads((site / "edgetrain-web.json").read_text())
    state = fmt.load_checkpoint(site / "state.safetensors", ref.meta, ref.state())
    x, y, info = read_dataset(site)
    sess = ort.InferenceSession(str(site / "train.onnx"), providers=["CPUExecutionProvider"])
    spec = manifest["signatures"]["train"]
    for idx in batch_indices(3, 3, 16, int(info["train"])):
        feeds = {"x": x[idx], "y": y[idx], "lr": np.array(0.01, dtype=np.float32)}
        feeds.update({k: state[k] for k in spec["state_inputs"]})
        outs = dict(zip(spec["graph_outputs"], sess.run(spec["graph_outputs"], feeds)))
        for k, o in spec["updates"].items():
            state[k] = outs[o]
        want = ref.run("train", x=x[idx], y=y[idx])["loss"]
        np.testing.assert_allclose(outs["loss"], want, rtol=1e-6)
    for k, v in ref.state().items():
        np.testing.assert_allclose(state[k], v, rtol=1e-6, atol=1e-9, err_msg=k)


def test_export_from_checkpoint_and_cli(trainable: Path, tmp_path: Path) -> None:
    _require("ort-web")
    m = et.load(trainable)
    x, y = np.random.default_rng(1).random((8, 64), dtype=np.float32), np.arange(8) % 10
    m.run("train", x=x, y=y.astype(np.int64))
    ck = m.save(tmp_path / "ck.safetensors")
    parser = argparse.ArgumentParser(prog="edgetrain")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export-web", str(trainable), str(tmp_path / "out"),
                              "--checkpoint", ck, "--no-webgpu", "--no-dataset"])
    assert args.func(args) == 0
    out = tmp_path / "out"
    state = fmt.load_checkpoint(out / "state.safetensors", m.meta, m.state())
    for k, v in m.state().items():
        np.testing.assert_array_equal(state[k], v, err_msg=k)
    assert json.loads((out / "edgetrain-web.json").read_text())["dataset"] is None
    assert not (out / "digits.bin").exists()
    args = parser.parse_args(["serve-web", str(out), "--port", "0"])
    assert args.host == "127.0.0.1" and callable(args.func)


def test_digits_dataset_refused_for_other_models(tmp_path: Path) -> None:
    _require("ort-web")
    model = _digits_mlp()
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 10
    tm = et.compile(model, loss="mse")
    with pytest.raises(et.EdgetrainError, match="digits"):
        export_web(tm.proto, tmp_path / "out", dataset="digits", webgpu=False)


def test_server_headers(site: Path) -> None:
    with start_server(site) as server:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url + "ort/ort-wasm-simd-threaded.wasm") as r:
            assert r.headers["Content-Type"] == "application/wasm"
            assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        with urllib.request.urlopen(server.url + "edgetrain.js") as r:
            assert r.headers["Content-Type"].startswith("text/javascript")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + "missing.onnx")
        assert e.value.code == 404
    with pytest.raises(et.EdgetrainError, match="not a web export"):
        start_server(site / "ort")


def test_batches_match_javascript(site: Path) -> None:
    """Python's Mulberry32 against the page's own edgetrain.js, run by node."""
    _require("node")
    seeds = [0, 1, 7, 123456789, 2**31, 2**32 - 1]
    module = json.dumps((site / "edgetrain.js").as_uri())
    script = (f"import {{ mulberry32, batchIndices }} from {module};"
              f"const seeds = {json.dumps(seeds)};"
              "const floats = seeds.map((s) => { const r = mulberry32(s); "
              "return Array.from({length: 200}, () => r()); });"
              "const idx = batchIndices(42, 5, 32, 1500).map((b) => Array.from(b));"
              "process.stdout.write(JSON.stringify({floats, idx}));")
    out = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True,
                         text=True, timeout=60, check=True)
    js = json.loads(out.stdout)
    for seed, floats in zip(seeds, js["floats"]):
        rng = Mulberry32(seed)
        assert [rng.random() for _ in range(200)] == floats, seed
    assert batch_indices(42, 5, 32, 1500).tolist() == js["idx"]


# -- the browser --------------------------------------------------------------------------

def _run_page(site: Path, query: str, shot: Path, extra_args: str = "") -> dict[str, Any]:
    """Serve ``site``, open ``?query`` in headless Chromium, return window.edgetrainResult."""
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with start_server(site) as server:
        proc = subprocess.run(["node", str(WEB / "run-page.mjs"), server.url + query, str(shot),
                               "120000"], capture_output=True, text=True, timeout=240,
                              env={**os.environ, "CHROMIUM": CHROMIUM,
                                   "CHROMIUM_EXTRA_ARGS": extra_args})
    assert proc.returncode == 0, f"the page run failed:\n{proc.stderr[-4000:]}"
    res: dict[str, Any] = json.loads(proc.stdout)
    assert res.get("ok"), f"the page reported an error: {res.get('error')}\n{res.get('stack')}"
    print(f"browser run: {time.perf_counter() - t0:.1f} s, {res['ms_per_step']:.1f} ms/step "
          f"({res['backend']}, {res['threads']} thread(s)), accuracy "
          f"{res['accuracy_before']:.3f} → {res['accuracy']:.3f}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    return res


def _check_against_python(res: dict[str, Any], site: Path, trainable: Path,
                          tmp_path: Path) -> None:
    """The page's run must be the Python runtime's run, and its save/restore must be exact."""
    steps, seed, batch = res["steps"], res["seed"], res["batch_size"]
    # The same batches, drawn in Python.
    x, y, info = read_dataset(site)
    idx = batch_indices(seed, steps, batch, int(info["train"]))
    assert np.array_equal(np.array(res["indices"]), idx), "JS and Python batches differ"

    # The same training, in the Python runtime from the same file.
    ref = et.load(trainable)
    probe = x[np.array(res["probe"]["indices"])]
    name = ref.signatures["infer"].inputs[0]["name"]
    label = ref.meta["label"]
    np.testing.assert_allclose(np.array(res["probe"]["before"]).reshape(len(probe), 10),
                               ref.run("infer", **{name: probe})["logits"], rtol=1e-5, atol=1e-6)
    losses = [float(ref.run("train", **{name: x[i], label: y[i]})["loss"]) for i in idx]
    assert len(res["losses"]) == steps
    np.testing.assert_allclose(res["losses"], losses, rtol=1e-4, atol=0)
    assert res["step"] == steps
    after = ref.run("infer", **{name: probe})["logits"]
    np.testing.assert_allclose(np.array(res["probe"]["after"]).reshape(after.shape), after,
                               rtol=1e-4, atol=1e-5)
    test = slice(int(info["train"]), None)
    py_acc = ref.evaluate({name: x[test]}, y[test])["accuracy"]
    assert abs(res["accuracy"] - py_acc) <= 1.5 / int(info["test"])

    # A NaN learning rate: refused with NonFiniteError, the step count and the weights kept.
    nf = res["nonfinite"]
    assert nf["refused"] and nf["refused"]["name"] == "NonFiniteError", nf
    assert nf["step_before"] == nf["step_after"] == steps and nf["unchanged"], nf

    # Save / restore in the browser reproduces the inference outputs exactly.
    sr = {k: np.array(v, dtype=np.float32) for k, v in res["save_restore"].items()}
    assert np.abs(sr["perturbed"] - sr["saved"]).max() > 1e-3  # training on changed them
    np.testing.assert_array_equal(sr["restored_idb"], sr["saved"])
    np.testing.assert_array_equal(sr["restored_file"], sr["saved"])

    # The browser's checkpoint is an edgetrain checkpoint: Python verifies and restores it.
    ck = tmp_path / "browser.safetensors"
    ck.write_bytes(base64.b64decode(res["checkpoint_b64"]))
    fresh = et.load(trainable)
    fresh.restore(ck)
    assert fresh.step == steps
    for k, v in ref.parameters().items():
        np.testing.assert_allclose(fresh.parameters()[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(fresh.run("infer", **{name: probe})["logits"],
                               sr["saved"].reshape(after.shape), rtol=1e-5, atol=1e-6)


def test_browser_trains_like_python(site: Path, trainable: Path, tmp_path: Path) -> None:
    _require("node", "playwright", "chromium")
    res = _run_page(site, f"?autorun=1&steps={STEPS}&seed={SEED}&batch={BATCH}",
                    ARTIFACTS / "web-demo.png")
    assert res["backend"] == "wasm" and res["steps"] == STEPS and res["batch_size"] == BATCH
    _check_against_python(res, site, trainable, tmp_path)
    assert res["accuracy"] > res["accuracy_before"] + 0.1  # it learned


def test_browser_onehot_sgd_image_input(tmp_path: Path) -> None:
    """The seed's set-up: one-hot labels, SGD with momentum, 8×8 input, everything trained."""
    _require("ort-web", "node", "playwright", "chromium")
    tm = et.compile(_digits_mlp(seed=1, image=True), labels="onehot",
                    optimizer=et.optim.SGD(lr=0.05, momentum=0.9))
    trainable = Path(tm.save(tmp_path / "onehot.onnx"))
    site = export_web(trainable, tmp_path / "site", webgpu=False)
    manifest = json.loads((site / "edgetrain-web.json").read_text())
    assert manifest["dataset"]["sample_shape"] == [8, 8] and manifest["labels"] == "onehot"
    assert (site / "frozen.bin").stat().st_size == 0
    res = _run_page(site, "?autorun=1&steps=20&seed=11&batch=16",
                    ARTIFACTS / "web-demo-onehot.png")
    _check_against_python(res, site, trainable, tmp_path)


@pytest.mark.skipif(os.environ.get("EDGETRAIN_TEST_WEBGPU") != "1",
                    reason="WebGPU on SwiftShader takes ~40 s; set EDGETRAIN_TEST_WEBGPU=1")
def test_browser_trains_on_webgpu(trainable: Path, tmp_path: Path) -> None:
    """The WebGPU provider (software adapter), state kept in GPU buffers between steps."""
    _require("ort-web", "node", "playwright", "chromium")
    site = export_web(trainable, tmp_path / "site", webgpu=True)
    res = _run_page(site, "?autorun=1&steps=8&seed=3&ep=webgpu",
                    ARTIFACTS / "web-demo-webgpu.png",
                    "--enable-unsafe-webgpu --enable-unsafe-swiftshader "
                    "--use-webgpu-adapter=swiftshader --use-angle=swiftshader")
    assert res["backend"] == "webgpu"
    _check_against_python(res, site, trainable, tmp_path)
