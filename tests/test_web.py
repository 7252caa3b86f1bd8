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
import re
import select
import shutil
import socket
import stat
import subprocess
import threading
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
    WebServer,
    add_cli,
    batch_indices,
    export_web,
    read_dataset,
    start_server,
)
from edgetrain.web._export import MARKER
from edgetrain.web._server import CONTENT_SECURITY_POLICY, MAX_HANDLERS, REQUEST_TIMEOUT

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

def test_export_multi_step_adds_train_steps(trainable: Path, tmp_path: Path) -> None:
    """Asked for, the export carries train_steps (for drivers that batch calls) as a graph
    whose state updates are the train graph's."""
    _require("ort-web")
    site = export_web(trainable, tmp_path / "site", webgpu=False, dataset=None, multi_step=True)
    manifest = json.loads((site / "edgetrain-web.json").read_text())
    steps, train = manifest["graphs"]["train_steps"], manifest["graphs"]["train"]
    assert steps["file"] == "train_steps.onnx" and (site / "train_steps.onnx").is_file()
    assert set(steps["updates"]) == set(train["updates"])
    assert manifest["meta"]["signatures"]["train_steps"]["inputs"][-1]["shape"] == ["steps"]


def test_export_layout(site: Path) -> None:
    manifest = json.loads((site / "edgetrain-web.json").read_text())
    for f in ("index.html", "edgetrain.js", "demo.js", "state.safetensors", "frozen.bin",
              "digits.bin", "infer.onnx", "train.onnx", "eval.onnx", "ort/ort.wasm.min.mjs",
              "ort/ort-wasm-simd-threaded.wasm"):
        assert (site / f).is_file(), f
    assert not (site / "ort/ort.webgpu.min.mjs").exists()  # webgpu=False
    # train_steps (K steps per call) is left out: the page steps once per call.
    assert set(manifest["meta"]["signatures"]) == {"infer", "train", "eval", "save", "restore"}
    assert set(manifest["graphs"]) == {"infer", "train", "eval"}
    assert not (site / "train_steps.onnx").exists()
    assert manifest["meta"]["frozen"] == ["fc1.w", "fc1.b"]
    assert manifest["nonnegative"] == sorted(f"{p}.exp_avg_sq"
                                             for p in manifest["meta"]["trainable"])
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
    # The marker lists exactly the files written, each readable by any web server (0644).
    listed = json.loads((site / MARKER).read_text())["files"]
    written = sorted(str(p.relative_to(site)) for p in site.rglob("*")
                     if p.is_file() and p.name != MARKER)
    assert listed == written
    assert {stat.S_IMODE((site / f).stat().st_mode) for f in listed} == {0o644}


def test_export_graphs_run_in_python(site: Path, trainable: Path) -> None:
    """The exported graphs (external data, state file) step exactly like the runtime."""
    ref = et.load(trainable)
    manifest = json.loads((site / "edgetrain-web.json").read_text())
    state = fmt.load_checkpoint(site / "state.safetensors", ref.meta, ref.state())
    x, y, info = read_dataset(site)
    sess = ort.InferenceSession(str(site / "train.onnx"), providers=["CPUExecutionProvider"])
    spec = manifest["graphs"]["train"]
    for idx in batch_indices(3, 3, 16, int(info["train"])):
        feeds = {"x": x[idx], "y": y[idx], "lr": np.array(0.01, dtype=np.float32)}
        feeds.update({k: state[k] for k in spec["state_inputs"]})
        outs = dict(zip(spec["outputs"], sess.run(spec["outputs"], feeds)))
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


def _headers_of(url: str) -> tuple[int, Any, bytes]:
    try:
        r = urllib.request.urlopen(url)
    except urllib.error.HTTPError as e:
        r = e
    with r:
        return r.status, r.headers, r.read()


def test_server_headers(site: Path) -> None:
    with start_server(site) as server:
        assert server.url.startswith("http://127.0.0.1:")
        code, headers, _ = _headers_of(server.url + "ort/ort-wasm-simd-threaded.wasm")
        assert code == 200 and headers["Content-Type"] == "application/wasm"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert _headers_of(server.url + "edgetrain.js")[1]["Content-Type"].startswith(
            "text/javascript")
        assert _headers_of(server.url + "missing.onnx")[0] == 404
        for path in ("", "state.safetensors", "missing.onnx"):
            code, headers, body = _headers_of(server.url + path)
            assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Referrer-Policy"] == "no-referrer"
            assert headers["Cross-Origin-Resource-Policy"] == "same-origin"
        code, headers, body = _headers_of(server.url)
        assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    # The page carries the same policy (minus frame-ancestors, which a <meta> cannot set), so it
    # holds on any static host: scripts from the export only, wasm allowed, no inline script.
    meta = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">',
                     body.decode())
    assert meta and meta.group(1) + "; frame-ancestors 'none'" == CONTENT_SECURITY_POLICY
    assert "script-src 'self' 'wasm-unsafe-eval';" in meta.group(1)
    assert "unsafe-inline" not in meta.group(1)
    assert "'unsafe-eval'" not in meta.group(1)
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


# -- hostile metadata -------------------------------------------------------------------------

XSS = '<img src=x onerror="window.__pwned=(window.__pwned||[]).concat(1)">'


def _edit_meta(proto: onnx.ModelProto, edit: Any) -> onnx.ModelProto:
    """A copy of ``proto`` whose metadata ``edit(meta)`` changed, written past every loader."""
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    meta = fmt.read_meta(bad)
    edit(meta)
    fmt.write_meta(bad, meta)
    return bad


def _rename_signature(meta: dict[str, Any], new: str) -> None:
    meta["signatures"][new] = meta["signatures"]["eval"]


METADATA_ATTACKS = {
    "loss name": (lambda m: m["loss"].update(name="cross_entropy" + XSS), "loss.name"),
    "optimizer name": (lambda m: m["optimizer"].update(name=XSS), "optimizer.name"),
    "optimizer key": (lambda m: m["optimizer"].update({XSS: 1}), "a key of manifest.optimizer"),
    "output": (lambda m: m.update(output="logits" + XSS), "manifest.output"),
    "input name": (lambda m: m["signatures"]["infer"]["inputs"][0].update(name=XSS),
                   "signatures.infer.inputs[0].name"),
    "dim name": (lambda m: m["signatures"]["train"]["inputs"][0]["shape"].__setitem__(0, XSS),
                 "signatures.train.inputs[0].shape[0]"),
    "trainable": (lambda m: m["trainable"].append("a b"), "manifest.trainable[4]"),
    "signature name": (lambda m: _rename_signature(m, XSS), "a signature name"),
    "signature path": (lambda m: _rename_signature(m, "../../escape"), "a signature name"),
    "non-finite number": (lambda m: m["optimizer"].update(lr=float("nan")),
                          "manifest.optimizer.lr"),
}


@pytest.mark.parametrize("attack", sorted(METADATA_ATTACKS))
def test_export_refuses_unsafe_metadata(trainable: Path, tmp_path: Path, attack: str) -> None:
    """Every string that reaches the manifest (and so the page) must be a plain name."""
    _require("ort-web")
    edit, field = METADATA_ATTACKS[attack]
    bad = _edit_meta(fmt.load_model(trainable), edit)
    out = tmp_path / "a" / "out"
    with pytest.raises(et.FormatError) as e:
        export_web(bad, out, webgpu=False)
    # Refused by the file's own metadata validation (as edgetrain.load refuses it) or, for
    # what that allows, by the export's stricter check of the strings the page shows.
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(("invalid edgetrain file:", "the edgetrain metadata")) or (
        "web export allows only" in msg and field in msg), msg
    assert not (tmp_path / "a").exists()  # refused before anything was written
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


# -- the output folder --------------------------------------------------------------------------

def _outside(tmp_path: Path) -> Path:
    """A private file outside the export folder, which the export must never touch."""
    outside = tmp_path / "elsewhere" / "secret.txt"
    outside.parent.mkdir()
    outside.write_text("the user's own")
    outside.chmod(0o600)
    return outside


def _untouched(path: Path, text: str, mode: int = 0o600) -> None:
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == mode, path
    assert path.read_text() == text, path


def test_export_refuses_a_foreign_folder(trainable: Path, tmp_path: Path) -> None:
    _require("ort-web")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "notes.txt").chmod(0o600)
    (out / "index.html").write_text("my page")
    with pytest.raises(et.EdgetrainError, match=r"not empty and is not an edgetrain web export"
                       r".*--force \(force=True\)"):
        export_web(trainable, out, webgpu=False, dataset=None)
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "notes.txt"]
    _untouched(out / "notes.txt", "mine")
    assert (out / "index.html").read_text() == "my page"
    # A file is not a folder either.
    with pytest.raises(et.EdgetrainError, match="not a folder"):
        export_web(trainable, out / "notes.txt", webgpu=False, dataset=None)


def test_export_force_touches_only_its_own_files(trainable: Path, tmp_path: Path) -> None:
    """--force: the export's files are replaced (links too, never followed); nothing else."""
    _require("ort-web")
    outside = _outside(tmp_path)
    out = tmp_path / "out"
    (out / "ort").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "notes.txt").chmod(0o600)
    (out / "ort" / "mine.js").write_text("my script")
    (out / "ort" / "mine.js").chmod(0o600)
    (out / "demo.js").symlink_to(outside)  # a name the export writes, pointing outside
    (out / "link.txt").symlink_to(outside)  # a name it does not write
    parser = argparse.ArgumentParser(prog="edgetrain")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export-web", str(trainable), str(out), "--no-webgpu",
                              "--no-dataset", "--force"])
    assert args.func(args) == 0
    _untouched(outside, "the user's own")
    _untouched(out / "notes.txt", "mine")
    _untouched(out / "ort" / "mine.js", "my script")
    assert (out / "link.txt").is_symlink() and os.readlink(out / "link.txt") == str(outside)
    assert not (out / "demo.js").is_symlink()  # the link itself was replaced
    assert "batchIndices" in (out / "demo.js").read_text()
    assert (out / MARKER).is_file() and (out / "edgetrain-web.json").is_file()


def test_export_never_writes_through_a_linked_folder(trainable: Path, tmp_path: Path) -> None:
    _require("ort-web")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "ort").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(et.EdgetrainError, match=r"ort is a symbolic link"):
        export_web(trainable, out, webgpu=False, dataset=None, force=True)
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == ["ort"]
    (out / "ort").unlink()
    (out / "index.html").mkdir()  # a folder where the export writes a file
    with pytest.raises(et.EdgetrainError, match=r"index.html is a folder"):
        export_web(trainable, out, webgpu=False, dataset=None, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["index.html"]


def test_reexport_replaces_only_what_it_wrote(trainable: Path, tmp_path: Path) -> None:
    """A re-export replaces the files its marker lists and deletes those it no longer writes;
    the user's files (and modes, and link targets) stay as they are."""
    _require("ort-web")
    out = tmp_path / "out"
    export_web(trainable, out, webgpu=False)
    assert (out / "digits.bin").is_file()
    outside = _outside(tmp_path)
    (out / "notes.txt").write_text("mine")
    (out / "notes.txt").chmod(0o600)
    (out / "ort" / "mine.js").write_text("my script")
    (out / "ort" / "link.js").symlink_to(outside)
    (out / "index.html").write_text("edited")  # an export file: replaced again
    (out / "README.md").write_text("the user's readme")
    export_web(trainable, out, webgpu=False, dataset=None)
    assert not (out / "digits.bin").exists()  # written before, not now: deleted
    assert "Content-Security-Policy" in (out / "index.html").read_text()
    _untouched(out / "notes.txt", "mine")
    _untouched(out / "ort" / "mine.js", "my script", 0o644)
    _untouched(outside, "the user's own")
    assert (out / "ort" / "link.js").is_symlink()
    assert (out / "README.md").read_text() == "the user's readme"
    assert "digits.bin" not in json.loads((out / MARKER).read_text())["files"]
    # A marker that is a link (or names files outside) is no marker.
    (out / MARKER).unlink()
    (out / MARKER).symlink_to(tmp_path / "elsewhere" / "secret.txt")
    with pytest.raises(et.EdgetrainError, match="not an edgetrain web export"):
        export_web(trainable, out, webgpu=False, dataset=None)
    (out / MARKER).unlink()
    (out / MARKER).write_text(json.dumps({"kind": "edgetrain-web-export", "version": 1,
                                          "files": ["../elsewhere/secret.txt", "index.html"]}))
    with pytest.raises(et.EdgetrainError, match="not an edgetrain web export"):
        export_web(trainable, out, webgpu=False, dataset=None)
    _untouched(outside, "the user's own")


# -- the server under attack ------------------------------------------------------------------

def _raw(server: WebServer, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str],
                                                                            bytes]:
    """Send raw bytes, read until the server closes: (status, headers, body); 0 if no reply."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    if not data:
        return 0, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _get(server: WebServer, path: str, host: str | None = None, method: str = "GET",
         extra: str = "") -> int:
    host = f"127.0.0.1:{server.port}" if host is None else host
    request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    return _raw(server, request.encode("latin-1"))[0]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """A served folder with a sub-folder, hidden files and links to a secret outside it."""
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>t</title>")
    (root / "sub" / "a.txt").write_text("a")
    (root / ".hidden").write_text("hidden")
    (root / MARKER).write_text("{}")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "state.safetensors").write_text("secret")
    (root / "state.safetensors").symlink_to(secret / "state.safetensors")
    (root / "linked").symlink_to(secret, target_is_directory=True)
    return root


def test_server_refuses_malformed_paths_and_stays_up(folder: Path) -> None:
    with start_server(folder) as server:
        for path in ("/%00", "/index.html%00.txt", "/%00/../index.html", "/../secret/x",
                     "/sub/../index.html", "/%2e%2e/secret/state.safetensors", "/./index.html",
                     "/sub//a.txt", "/a%5cb", "/%ff", "/%0d%0aX:%20y",
                     "http://evil.example/index.html", "*"):
            assert _get(server, path) == 400, path
        assert _get(server, "/") == 200 and _get(server, "/sub/a.txt") == 200
        assert _get(server, "/index.html?x=%00#y") == 200  # the query is not a path


def test_server_no_links_listings_or_hidden_files(folder: Path) -> None:
    with start_server(folder) as server:
        for path in ("/state.safetensors", "/linked/state.safetensors", "/linked/", "/sub/",
                     "/sub", "/linked", "/.hidden", f"/{MARKER}", "/missing"):
            status, _, body = _raw(server, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:"
                                   f"{server.port}\r\n\r\n".encode())
            assert status == 404 and b"secret" not in body and b"a.txt" not in body, path
        assert _get(server, "/sub/a.txt", method="HEAD") == 200


def test_server_answers_only_its_loopback_host(folder: Path) -> None:
    with start_server(folder) as server:
        port = server.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}",
                     f"[::1]:{port}"):
            assert _get(server, "/", host=host) == 200, host
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}",
                     "127.0.0.1", f"localhost.evil.example:{port}", f"127.0.0.2:{port}", ""):
            assert _get(server, "/", host=host) == 403, host
        assert _raw(server, b"GET / HTTP/1.0\r\n\r\n")[0] == 403  # no Host at all
        two = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n\r\n"
        assert _raw(server, two.encode())[0] == 403


def test_server_serves_only_get_and_head(folder: Path) -> None:
    with start_server(folder) as server:
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "FOO"):
            status, headers, _ = _raw(server, f"{method} / HTTP/1.1\r\nHost: 127.0.0.1:"
                                      f"{server.port}\r\nContent-Length: 0\r\n\r\n".encode())
            assert status == 405 and headers["Allow"] == "GET, HEAD", method
        assert _get(server, "/", extra="Content-Length: 5\r\n") == 400  # a GET with a body
        assert (folder / "index.html").read_text() == "<!doctype html><title>t</title>"


@pytest.mark.slow
def test_server_closes_half_sent_requests_with_few_threads(folder: Path) -> None:
    """300 idle half-sent requests and a slow trickle: every connection is closed within the
    timeout, handler threads stay bounded, and the server still answers afterwards."""
    baseline = threading.active_count()
    with start_server(folder) as server:
        trickle = socket.create_connection((server.host, server.port), timeout=30)
        trickle.sendall(b"GET / HTTP/1.1\r\n")
        t0 = time.monotonic()
        half = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode()
        socks = []
        for _ in range(300):
            s = socket.create_connection((server.host, server.port), timeout=30)
            s.sendall(half)
            socks.append(s)
        opened = time.monotonic()
        peak = threading.active_count()
        while time.monotonic() - t0 < 15:  # a byte every 0.1 s never completes the head
            peak = max(peak, threading.active_count())
            try:
                if select.select([trickle], [], [], 0)[0] and not trickle.recv(1 << 16):
                    break
                trickle.sendall(b"X")
            except OSError:
                break
            time.sleep(0.1)
        trickle_closed = time.monotonic() - t0
        trickle.close()
        assert trickle_closed < REQUEST_TIMEOUT + 1.5, trickle_closed
        # the server thread, its reaper, and at most MAX_HANDLERS handlers
        assert peak - baseline <= MAX_HANDLERS + 2, peak - baseline
        for s in socks:
            while s.recv(1 << 16):  # a 503 for the connections beyond the bound, then EOF
                pass
            s.close()
        assert time.monotonic() - opened < REQUEST_TIMEOUT + 1.5
        assert _get(server, "/") == 200
        assert threading.active_count() - baseline <= 3


# -- the browser --------------------------------------------------------------------------

def _run_page(site: Path, query: str, shot: Path, extra_args: str = "",
              probe: str = "", files: dict[str, Any] | None = None,
              drop: list[str] | None = None, expect_ok: bool = True) -> dict[str, Any]:
    """Serve ``site``, open ``?query`` in headless Chromium, return window.edgetrainResult.

    ``probe`` is a JavaScript expression evaluated in the page afterwards (``res["probe"]``);
    ``files`` maps file inputs (CSS selectors) to the paths a user chooses in them, ``drop``
    lists files dropped on the page. ``expect_ok=False`` returns a page's error result.
    """
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with start_server(site) as server:
        proc = subprocess.run(["node", str(WEB / "run-page.mjs"), server.url + query, str(shot),
                               "120000"], capture_output=True, text=True, timeout=240,
                              env={**os.environ, "CHROMIUM": CHROMIUM,
                                   "CHROMIUM_EXTRA_ARGS": extra_args, "RUN_PAGE_PROBE": probe,
                                   "RUN_PAGE_FILES": json.dumps(files or {}),
                                   "RUN_PAGE_DROP": json.dumps(drop or [])})
    assert proc.returncode == 0, f"the page run failed:\n{proc.stderr[-4000:]}"
    res: dict[str, Any] = json.loads(proc.stdout)
    if not expect_ok:
        return res
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
    name = ref.signatures["infer"].inputs[0].name
    label = ref.meta.label
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

    # A NaN learning rate: refused as Python refuses it, the step count and the weights kept.
    nf = res["nonfinite"]
    with pytest.raises(et.InputError, match="learning rate 'lr' must be finite"):
        ref.run("train", **{name: x[idx[0]], label: y[idx[0]], "lr": np.float32("nan")})
    assert nf["refused"] and nf["refused"]["name"] == "InputError", nf
    assert "learning rate 'lr' must be finite" in nf["refused"]["message"], nf
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


@pytest.mark.slow
def test_browser_trains_like_python(site: Path, trainable: Path, tmp_path: Path) -> None:
    _require("node", "playwright", "chromium")
    res = _run_page(site, f"?autorun=1&steps={STEPS}&seed={SEED}&batch={BATCH}",
                    ARTIFACTS / "web-demo.png")
    assert res["backend"] == "wasm" and res["steps"] == STEPS and res["batch_size"] == BATCH
    assert res["crossOriginIsolated"] and res["csp_violations"] == []
    _check_against_python(res, site, trainable, tmp_path)
    assert res["accuracy"] > res["accuracy_before"] + 0.1  # it learned
    # The header follows training: it shows the held-out accuracy reached, not the first one.
    assert res["header"].endswith(f"held-out accuracy {100 * res['accuracy']:.1f}% after "
                                  f"{STEPS} step(s)"), res["header"]


#: Read back, after the page ran: did a handler run, what does the header show, and does the
#: policy itself stop a handler in markup injected now?
PAGE_PROBE = """(async () => {
  const out = { pwned: window.__pwned ?? null, images: document.images.length,
    status: document.getElementById('status').textContent };
  document.body.insertAdjacentHTML('beforeend', '<img src="x" onerror="window.__pwned = 1">');
  await new Promise((r) => setTimeout(r, 500));
  out.injected_ran = window.__pwned ?? null;
  return out;
})()"""


@pytest.mark.slow
def test_browser_refuses_hostile_metadata(site: Path, tmp_path: Path) -> None:
    """Markup in the manifest (written directly, past export's checks) is refused by the
    driver's schema check before anything uses it; the page shows the refusal as text and no
    handler runs. (Names from the user's own files: tests/test_web_userdata.py.)"""
    _require("node", "playwright", "chromium")
    hostile = tmp_path / "site"
    shutil.copytree(site, hostile, symlinks=True)
    manifest = json.loads((hostile / "edgetrain-web.json").read_text())
    manifest["meta"]["loss"]["name"] = "cross_entropy" + XSS
    manifest["meta"]["optimizer"]["name"] = XSS
    manifest["meta"]["signatures"][XSS] = {"kind": "builtin", "inputs": [], "outputs": []}
    manifest["onnxruntime_web"]["version"] += XSS
    (hostile / "edgetrain-web.json").write_text(json.dumps(manifest))
    res = _run_page(hostile, "?autorun=1&steps=3&seed=1", ARTIFACTS / "web-demo-hostile.png",
                    probe=PAGE_PROBE, expect_ok=False)
    assert res["ok"] is False
    assert re.fullmatch(r"invalid edgetrain metadata: (a key of )?manifest\.meta\."
                        r"(signatures|loss|optimizer)\S* .*", res["error"]), res["error"]
    page = res["probe"]
    assert page["pwned"] is None and page["images"] == 0, page
    assert page["status"] == f"error: {res['error']}" and "<img" in page["status"], page
    # The policy blocks a handler in markup that got in anyway (here: injected by the test).
    assert page["injected_ran"] is None
    assert res["csp_violations"] and all("script-src-attr" in v or "inline event handler" in v
                                         for v in res["csp_violations"]), res["csp_violations"]
    # Each edit alone is refused as well, by the same driver code, run by node.
    for edit in ("loss", "optimizer", "signature", "version"):
        one = json.loads((site / "edgetrain-web.json").read_text())
        {"loss": lambda m: m["meta"]["loss"].update(name=XSS),
         "optimizer": lambda m: m["meta"]["optimizer"].update(name=XSS),
         "signature": lambda m: m["meta"]["signatures"].update({XSS: {}}),
         "version": lambda m: m["onnxruntime_web"].update(version=XSS)}[edit](one)
        script = (f"import {{ validateManifest }} from {json.dumps((site / 'core.js').as_uri())};"
                  f"try {{ validateManifest({json.dumps(one)}); }} catch (e) {{ "
                  "process.stdout.write(e.name + ': ' + e.message); }")
        out = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True,
                             text=True, timeout=60).stdout
        assert out.startswith("FormatError: invalid") and "does not match" in out, (edit, out)


@pytest.mark.slow
def test_browser_onehot_sgd_image_input(tmp_path: Path) -> None:
    """The seed's set-up: one-hot labels, SGD with momentum, 8×8 input, everything trained."""
    _require("ort-web", "node", "playwright", "chromium")
    tm = et.compile(_digits_mlp(seed=1, image=True), labels="onehot",
                    optimizer=et.optim.SGD(lr=0.05, momentum=0.9))
    trainable = Path(tm.save(tmp_path / "onehot.onnx"))
    site = export_web(trainable, tmp_path / "site", webgpu=False)
    manifest = json.loads((site / "edgetrain-web.json").read_text())
    assert manifest["dataset"]["sample_shape"] == [8, 8] and manifest["meta"]["labels"] == "onehot"
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
    assert res["backend"] == "webgpu" and res["csp_violations"] == []
    _check_against_python(res, site, trainable, tmp_path)
