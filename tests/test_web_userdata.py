"""The page trains any exported model on the user's own data, in real headless Chromium.

A CSV file (scikit-learn's wine measurements, written by the test) and image folders (striped
images written with Pillow) reach the page through its file inputs (playwright's setInputFiles,
as a user choosing them) or a drop. The page builds the model's input (standardized features;
images resized to the model's input on a canvas and normalized as the export declares), splits
and batches it, trains, and shows the held-out accuracy in its header. Python recomputes the
same inputs, trains on them and checks the page's losses, accuracy and checkpoint.
"""

from __future__ import annotations

import base64
import csv
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgetrain as et
from edgetrain.web import batch_indices, export_web, split_indices
from edgetrain.web._inputs import image_geometry
from test_web import ARTIFACTS, XSS, _require, _run_page

STRIPES = ("horizontal", "vertical", "diagonal")
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
CULTIVARS = ("barolo", "grignolino", "barbera")  # the wine data's three cultivars, in order


def _gemm_mlp(name: str, n_in: int, hidden: int, n_out: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((n_in, hidden)) *
                                      np.sqrt(2 / n_in)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((hidden, n_out)) *
                                      np.sqrt(2 / hidden)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(n_out, np.float32), "b2")]
    nodes = [helper.make_node("Gemm", [name, "w1", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tabular", [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_out])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _stripes_cnn() -> onnx.ModelProto:
    """[N, 3, 20, 20] → Conv 3×3 stride 2 (6) → Relu → Flatten → Gemm → 3."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((6, 3, 3, 3)) *
                                      np.sqrt(2 / 27)).astype(np.float32), "conv.w"),
             numpy_helper.from_array(np.zeros(6, np.float32), "conv.b"),
             numpy_helper.from_array((rng.standard_normal((600, 3)) *
                                      np.sqrt(2 / 600)).astype(np.float32), "fc.w"),
             numpy_helper.from_array(np.zeros(3, np.float32), "fc.b")]
    nodes = [helper.make_node("Conv", ["image", "conv.w", "conv.b"], ["c"], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "stripes",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 20, 20])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _write_stripes(root: Path, classes: tuple[str, ...] = STRIPES, n_per: int = 30,
                   size: int = 40, seed: int = 0, flat: bool = False) -> list[Path]:
    """Striped RGB PNGs, a folder per class (``flat``: one folder, ``<class>_<k>.png``)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    written = []
    for k_cls, cls in enumerate(classes):
        kind = STRIPES[k_cls % len(STRIPES)]
        folder = root if flat else root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n_per):
            period = int(rng.integers(6, 12))
            coord = {"horizontal": yy, "vertical": xx, "diagonal": xx + yy}[kind]
            on = ((coord + int(rng.integers(0, period))) % period) < period // 2
            img = np.where(on[..., None], rng.integers(140, 256, 3), rng.integers(0, 100, 3))
            img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            path = folder / (f"{cls}_{k:03d}.png" if flat else f"{k:03d}.png")
            Image.fromarray(img, "RGB").save(path)
            written.append(path)
    return written


def _write_wine(path: Path) -> tuple[list[str], list[list[str]]]:
    """scikit-learn's wine data as a CSV: the target column in the middle, one quoted header."""
    from sklearn.datasets import load_wine

    d = load_wine()
    names = [n.replace("od280/od315_of_diluted_wines", "od280/od315, diluted")
             for n in d.feature_names]
    columns = [*names[:6], "cultivar", *names[6:]]
    rows = [[*map(repr, x[:6].tolist()), CULTIVARS[t], *map(repr, x[6:].tolist())]
            for x, t in zip(d.data, d.target)]
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerows([columns, *rows])
    return columns, rows


def _site(model: onnx.ModelProto, where: Path, **export: Any) -> tuple[Path, Path]:
    tm = et.compile(model, optimizer=et.optim.Adam(lr=0.01))
    trainable = Path(tm.save(where / "model.onnx"))
    return export_web(trainable, where / "site", webgpu=False, **export), trainable


def _page_x(res: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(res["data"]["x_b64"]), dtype=np.float32)


def _train_like_page(res: dict[str, Any], trainable: Path, x: np.ndarray, y: np.ndarray,
                     name: str) -> et.Model:
    """Python trains on the page's own inputs and batches; the losses must be the page's."""
    train, test = np.array(res["split"]["train"]), np.array(res["split"]["test"])
    ref = et.load(trainable)
    before = ref.evaluate({name: x[test]}, y[test])["accuracy"]
    assert abs(res["accuracy_before"] - before) <= 1.5 / len(test)
    idx = batch_indices(res["seed"], res["steps"], res["batch_size"], len(train))
    assert np.array_equal(np.array(res["indices"]), idx)
    losses = [float(ref.run("train", **{name: x[train[b]], "y": y[train[b]]})["loss"])
              for b in idx]
    np.testing.assert_allclose(res["losses"], losses, rtol=1e-4, atol=0)
    acc = ref.evaluate({name: x[test]}, y[test])["accuracy"]
    assert abs(res["accuracy"] - acc) <= 1.5 / len(test)
    return ref


def _check_checkpoint(res: dict[str, Any], trainable: Path, ref: et.Model, tmp: Path) -> None:
    ck = tmp / "page.safetensors"
    ck.write_bytes(base64.b64decode(res["checkpoint_b64"]))
    fresh = et.load(trainable)
    fresh.restore(ck)
    assert fresh.step == res["steps"]
    for k, v in ref.parameters().items():
        np.testing.assert_allclose(fresh.parameters()[k], v, rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.slow
def test_browser_trains_on_a_csv_file(tmp_path: Path) -> None:
    _require("ort-web", "node", "playwright", "chromium")
    columns, rows = _write_wine(tmp_path / "wine.csv")
    site, trainable = _site(_gemm_mlp("features", 13, 16, 3), tmp_path)
    assert json.loads((site / "edgetrain-web.json").read_text())["input"]["image"] is None
    steps, seed = 60, 3
    res = _run_page(site, f"?autorun=1&data=user&target=cultivar&steps={steps}&seed={seed}"
                    "&batch=16", ARTIFACTS / "web-csv.png",
                    files={"#csv": str(tmp_path / "wine.csv")})
    assert res["kind"] == "csv" and res["csp_violations"] == []
    # Python computes the page's inputs: the same split, features standardized with the
    # training rows' mean and population standard deviation, classes numbered in sorted order.
    train, test = split_indices(seed, len(rows))
    assert res["split"] == {"train": train.tolist(), "test": test.tolist()}
    t = columns.index("cultivar")
    raw = np.array([[float(v) for j, v in enumerate(r) if j != t] for r in rows])
    mean, std = raw[train].mean(0), raw[train].std(0)
    x = ((raw - mean) / std).astype(np.float32)
    np.testing.assert_allclose(_page_x(res).reshape(x.shape), x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res["data"]["stats"]["mean"], mean, rtol=1e-12)
    names = sorted(CULTIVARS)
    assert res["data"]["class_names"] == names
    y = np.array([names.index(r[t]) for r in rows], dtype=np.int64)
    assert res["data"]["labels"] == y.tolist()
    ref = _train_like_page(res, trainable, x, y, "features")
    assert res["accuracy"] >= 0.9 and res["accuracy"] > res["accuracy_before"] + 0.3
    assert res["header"].endswith(f"CSV: {len(rows)} rows, 13 features, target cultivar · "
                                  f"held-out accuracy {100 * res['accuracy']:.1f}% after {steps} "
                                  "step(s)"), res["header"]
    _check_checkpoint(res, trainable, ref, tmp_path)


def _pillow_inputs(paths: list[Path]) -> np.ndarray:
    """What the page should feed: 20×20 RGB, [0, 1], normalized, NCHW. Chromium's canvas
    shrinks an image by an integer factor with an area average, Pillow's BOX filter."""
    from PIL import Image

    out = []
    for p in paths:
        img = Image.open(p).convert("RGB").resize((20, 20), Image.Resampling.BOX)
        a = (np.asarray(img, dtype=np.float32) / 255 - np.array(MEAN)) / np.array(STD)
        out.append(a.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


@pytest.mark.slow
def test_browser_trains_on_an_image_folder(tmp_path: Path) -> None:
    _require("ort-web", "node", "playwright", "chromium")
    folder = tmp_path / "my pictures"
    _write_stripes(folder)
    site, trainable = _site(_stripes_cnn(), tmp_path, image_mean=MEAN, image_std=STD)
    info = json.loads((site / "edgetrain-web.json").read_text())["input"]
    assert info["image"] == {"layout": "NCHW", "channels": 3, "height": 20, "width": 20}
    assert (info["mean"], info["std"]) == (MEAN, STD)
    steps, seed = 40, 5
    res = _run_page(site, f"?autorun=1&data=user&steps={steps}&seed={seed}&batch=16",
                    ARTIFACTS / "web-images.png", files={"#image-folder": str(folder)})
    assert res["kind"] == "images" and res["csp_violations"] == []
    # The label of each image is its folder; classes are numbered in sorted order.
    paths = res["data"]["paths"]
    assert paths == sorted(paths) and len(paths) == 90
    assert all(p.startswith("my pictures/") for p in paths)
    names = sorted(STRIPES)
    assert res["data"]["class_names"] == names
    y = np.array([names.index(p.split("/")[1]) for p in paths], dtype=np.int64)
    assert res["data"]["labels"] == y.tolist()
    # Resized on a canvas: Pillow's area average to within the canvas's 8-bit rounding, and
    # normalized as the export declares (in another layout the pixels would be far off).
    x = _page_x(res).reshape(-1, 3, 20, 20)
    want = _pillow_inputs([tmp_path / p for p in paths])
    gap = np.abs(x - want) * STD[0]  # in [0, 1] pixel units
    swapped = float(np.abs(x - want.transpose(0, 1, 3, 2)).mean() * STD[0])
    print(f"canvas vs Pillow: mean |Δ| {gap.mean():.4f}, max {gap.max():.4f} (H↔W swapped: "
          f"{swapped:.4f})")
    assert gap.max() <= 1.5 / 255 and swapped > 0.05
    ref = _train_like_page(res, trainable, x, y, "image")
    assert res["accuracy"] > res["accuracy_before"] + 0.2
    assert res["header"].endswith(f"held-out accuracy {100 * res['accuracy']:.1f}% after "
                                  f"{steps} step(s)"), res["header"]
    _check_checkpoint(res, trainable, ref, tmp_path)


@pytest.mark.slow
def test_browser_trains_on_dropped_images(tmp_path: Path) -> None:
    """Loose files dropped on the page: the label is the start of the file name."""
    _require("ort-web", "node", "playwright", "chromium")
    files = _write_stripes(tmp_path / "loose", n_per=8, flat=True, seed=2)
    site, trainable = _site(_stripes_cnn(), tmp_path)
    res = _run_page(site, "?autorun=1&data=user&steps=6&seed=1&batch=8",
                    ARTIFACTS / "web-drop.png", drop=[str(p) for p in files])
    assert res["kind"] == "images"
    assert res["data"]["paths"] == sorted(p.name for p in files)
    names = sorted(STRIPES)
    y = np.array([names.index(p.split("_")[0]) for p in res["data"]["paths"]], dtype=np.int64)
    assert res["data"]["class_names"] == names and res["data"]["labels"] == y.tolist()
    x = _page_x(res).reshape(-1, 3, 20, 20)
    assert 0 <= x.min() and x.max() <= 1  # no normalization declared: plain [0, 1]
    _train_like_page(res, trainable, x, y, "image")


#: After the page ran on hostile names: did a handler run, what do the gallery and the header
#: show, and does the policy stop a handler in markup injected now?
NAMES_PROBE = """(async () => {
  const out = { pwned: window.__pwned ?? null, images: document.images.length,
    gallery: [...document.querySelectorAll('#gallery .digit div')].map((d) => d.textContent),
    header: document.getElementById('status').textContent };
  document.body.insertAdjacentHTML('beforeend', '<img src="x" onerror="window.__pwned = 1">');
  await new Promise((r) => setTimeout(r, 500));
  out.injected_ran = window.__pwned ?? null;
  return out;
})()"""


@pytest.mark.slow
def test_browser_shows_the_users_names_as_text(tmp_path: Path) -> None:
    """Folder names carrying markup become class names on the page, shown as text; the page
    trains under its policy with onnxruntime-web's worker threads."""
    _require("ort-web", "node", "playwright", "chromium")
    classes = (XSS + "a", XSS + "b", "plain")
    _write_stripes(tmp_path / "pics", classes=classes, n_per=6)
    site, _ = _site(_stripes_cnn(), tmp_path)
    res = _run_page(site, "?autorun=1&data=user&steps=3&seed=1&batch=8&threads=2",
                    ARTIFACTS / "web-hostile-names.png", probe=NAMES_PROBE,
                    files={"#image-folder": str(tmp_path / "pics")})
    page = res["probe"]
    assert page["pwned"] is None and page["images"] == 0, page
    assert res["data"]["class_names"] == sorted(classes)
    assert any(XSS in g for g in page["gallery"]), page["gallery"]
    assert page["injected_ran"] is None
    assert res["csp_violations"] and all("script-src-attr" in v or "inline event handler" in v
                                         for v in res["csp_violations"]), res["csp_violations"]
    assert res["threads"] == 2 and res["crossOriginIsolated"] and res["step"] == 3
    assert any(w.endswith("/ort/ort-wasm-simd-threaded.mjs") for w in res["workers"]), res


@pytest.mark.slow
def test_browser_refuses_a_csv_that_does_not_fit(tmp_path: Path) -> None:
    """Wrong data is a one-line message on the page, naming what is wrong; nothing trains."""
    _require("ort-web", "node", "playwright", "chromium")
    (tmp_path / "bad.csv").write_text("a,b,label\n1,2,x\n3,oops,y\n5,6,x\n")
    site, _ = _site(_gemm_mlp("features", 2, 4, 3), tmp_path)
    res = _run_page(site, "?autorun=1&data=user", ARTIFACTS / "web-bad-csv.png",
                    files={"#csv": str(tmp_path / "bad.csv")}, expect_ok=False)
    assert res == {**res, "ok": False}
    assert res["error"] == 'CSV row 3, column "b": "oops" is not a number', res



#: Node script exercising static/userdata.js (MODULE: its file URL, as JSON).
USERDATA_SCRIPT = r'''import * as u from MODULE;
const out = {};
out.quoted = u.parseCsv('a,"b, ""c"""\r\n1,2\r\n\r\n3,4');
out.semicolon = u.parseCsv('a;b\n1,5;2\n');
out.table = u.readTable('\uFEFFx, y ,label\n1,2,cat\n3,4,dog\n');
out.target = [u.defaultTarget(['a', 'Species', 'b']), u.defaultTarget(['a', 'b'])];
out.ints = Array.from(u.classLabels(['2', '0', '1'], 3).labels);
out.names = u.classLabels(['dog', 'cat', 'Émile', 'cat'], 3);
out.names.labels = Array.from(out.names.labels);
out.stats = u.featureStats(Float64Array.from([1, 10, 3, 10, 100, 100]), 2, [0, 1]);
out.label = [u.imageLabel('root/cats/a.png'), u.imageLabel('dog_01.png'), u.imageLabel('x.png')];
const errors = [];
for (const f of [() => u.readTable('a,b\n1,2,3\n4,5\n'), () => u.parseCsv('a,"b'),
  () => u.classLabels(['a', 'b', 'c', 'd'], 3), () => u.readTable('a\n1\n2\n')]) {
  try { f(); errors.push(null); } catch (e) { errors.push(e.message); }
}
out.errors = errors;
process.stdout.write(JSON.stringify(out));'''


def test_userdata_functions_in_node(tmp_path: Path) -> None:
    """The page's CSV parsing, labels and statistics (static/userdata.js), run by node."""
    _require("ort-web", "node")
    site, _ = _site(_gemm_mlp("features", 2, 4, 3), tmp_path, dataset=None)
    module = json.dumps((site / "userdata.js").as_uri())
    script = USERDATA_SCRIPT.replace("MODULE", module)
    r = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["quoted"] == [["a", 'b, "c"'], ["1", "2"], ["3", "4"]]
    assert out["semicolon"] == [["a", "b"], ["1,5", "2"]]
    assert out["table"] == {"columns": ["x", "y", "label"], "rows": [["1", "2", "cat"],
                                                                     ["3", "4", "dog"]]}
    assert out["target"] == ["Species", "b"]
    assert out["ints"] == [2, 0, 1]
    assert out["names"] == {"labels": [1, 0, 2, 0], "names": ["cat", "dog", "Émile"]}
    assert out["stats"] == {"mean": [2, 10], "std": [1, 1]}  # a constant column: std 1
    assert out["label"] == ["cats", "dog", "x"]
    assert out["errors"] == ["CSV row 2 has 3 fields, the header has 2",
                             "the CSV ends inside a quoted field",
                             "the target has 4 different values; the model predicts 3 classes",
                             "the CSV has 1 columns; it needs 2 to 4096"]


def test_export_records_the_input(tmp_path: Path) -> None:
    """The manifest says how to build the model's input from images, and refuses nonsense."""
    _require("ort-web")
    assert image_geometry([3, 20, 24]) == {"layout": "NCHW", "channels": 3, "height": 20,
                                           "width": 24}
    assert image_geometry([32, 32, 1])["layout"] == "NHWC"
    assert image_geometry([28, 28]) == {"layout": "NHW", "channels": 1, "height": 28,
                                        "width": 28}
    assert image_geometry([64])["layout"] == "flat"
    assert image_geometry([13]) is None and image_geometry(["H", 3]) is None
    tm = et.compile(_stripes_cnn())
    with pytest.raises(et.EdgetrainError, match="image_mean must be 1 or 3 finite numbers"):
        export_web(tm.proto, tmp_path / "a", webgpu=False, image_mean=[0.5, 0.5])
    with pytest.raises(et.EdgetrainError, match="image_std must be positive"):
        export_web(tm.proto, tmp_path / "b", webgpu=False, image_std=[0.0])
    with pytest.raises(et.EdgetrainError, match="need an image input"):
        export_web(et.compile(_gemm_mlp("f", 13, 4, 3)).proto, tmp_path / "c", webgpu=False,
                   image_mean=[0.5])
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    from edgetrain.cli import main

    assert main(["export-web", str(tm.save(tmp_path / "m.onnx")), str(tmp_path / "d"),
                 "--no-webgpu", "--image-mean", "0.5", "--image-std", "0.2,0.3,0.4"]) == 0
    info = json.loads((tmp_path / "d" / "edgetrain-web.json").read_text())["input"]
    assert (info["mean"], info["std"], info["scale"]) == ([0.5], [0.2, 0.3, 0.4], 1 / 255)
    assert main(["export-web", str(tmp_path / "m.onnx"), str(tmp_path / "e"),
                 "--image-mean", "a,b"]) == 2
