"""``export-web``: everything a browser needs to train a trainable file with onnxruntime-web.

The browser runs the very graphs the Python runtime runs (:func:`edgetrain.format.standalone`),
so a step in the page and a step in Python are the same computation. Frozen weights go to one
shared external-data file (``frozen.bin``) that every graph references, so a page downloads and
holds them once; the variable state goes to an ordinary edgetrain checkpoint
(``state.safetensors``), which is also the format the page saves and downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .. import format as fmt
from ..errors import EdgetrainError

#: The onnxruntime-web release the export vendors (pinned in web/package.json).
ORT_WEB_VERSION = "1.30.0"
WEB_FORMAT = "edgetrain-web"
WEB_FORMAT_VERSION = 1
MANIFEST = "edgetrain-web.json"
FROZEN_FILE = "frozen.bin"
STATE_FILE = "state.safetensors"
DATASET_FILE = "digits.bin"
GRAPH_SIGNATURES = ("infer", "train", "eval")
#: Frozen initializers at least this big move to the shared external-data file.
EXTERNAL_MIN_BYTES = 1024
STATIC = Path(__file__).with_name("static")
#: The runtime files of onnxruntime-web: the wasm build, and the default build with the JSEP
#: WebGPU provider. (The newer ``ort.webgpu`` build lacks CPU kernels the step graphs need, such
#: as Cast int64 → double, so its sessions cannot be created.)
ORT_FILES = {
    "wasm": ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
    "webgpu": ("ort.min.mjs", "ort-wasm-simd-threaded.jsep.mjs",
               "ort-wasm-simd-threaded.jsep.wasm"),
}


def find_ort_web(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The ``dist`` folder of the pinned onnxruntime-web npm package.

    Looked up in ``explicit``, ``$EDGETRAIN_ORT_WEB``, then ``web/node_modules`` of the source
    tree and ``node_modules`` of the working directory. No CDN: the page must work offline.
    """
    here = Path(__file__).resolve()
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(Path(explicit))
    if os.environ.get("EDGETRAIN_ORT_WEB"):
        candidates.append(Path(os.environ["EDGETRAIN_ORT_WEB"]))
    for root in (here.parents[3] / "web", Path.cwd() / "web", Path.cwd()):
        candidates.append(root / "node_modules" / "onnxruntime-web")
    for c in candidates:
        dist = c if (c / ORT_FILES["wasm"][0]).is_file() else c / "dist"
        if (dist / ORT_FILES["wasm"][0]).is_file():
            return dist
    looked = ", ".join(str(c) for c in candidates)
    raise EdgetrainError(
        f"onnxruntime-web {ORT_WEB_VERSION} not found (looked in {looked}); install it with "
        f"`npm ci --prefix web` in the edgetrain source tree (or `.ci/web-setup.sh`), or point "
        f"$EDGETRAIN_ORT_WEB at its package folder")


def _ort_web_version(dist: Path) -> str | None:
    try:
        return str(json.loads((dist.parent / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _externalize(model: onnx.ModelProto, names: set[str], blob: bytearray,
                 offsets: dict[str, tuple[int, int, str]]) -> None:
    """Move the named initializers of ``model`` into ``blob`` (shared between graphs)."""
    for t in model.graph.initializer:
        if t.name not in names:
            continue
        arr = numpy_helper.to_array(t)
        if arr.nbytes < EXTERNAL_MIN_BYTES:
            continue
        data = np.ascontiguousarray(arr).tobytes()
        digest = hashlib.sha256(data).hexdigest()
        if t.name not in offsets:
            pad = (-len(blob)) % 64  # aligned, so the runtime may map it without a copy
            blob.extend(b"\0" * pad)
            offsets[t.name] = (len(blob), len(data), digest)
            blob.extend(data)
        offset, length, known = offsets[t.name]
        if known != digest:
            raise EdgetrainError(f"internal error: initializer {t.name!r} differs between "
                                 "signature graphs")
        t.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            t.ClearField(field)
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        for k, v in (("location", FROZEN_FILE), ("offset", str(offset)),
                     ("length", str(length))):
            t.external_data.add(key=k, value=v)


def _dataset_for(meta: Mapping[str, Any]) -> tuple[list[int], int] | None:
    """Per-sample input shape and class count when the digits demo data fits the model."""
    sig = meta["signatures"]["infer"]
    if len(sig["inputs"]) != 1 or not meta.get("classification") or \
            meta.get("labels") not in ("index", "onehot"):
        return None
    x = sig["inputs"][0]
    sample = list(x["shape"][1:])
    if x["dtype"] != "float32" or not all(isinstance(d, int) and d > 0 for d in sample) or \
            int(np.prod(sample)) != 64:
        return None
    out = next((o for o in sig["outputs"] if o["name"] == meta["output"]), None)
    if out is None or len(out["shape"]) != 2 or out["shape"][1] != 10:
        return None
    return sample, 10


def _write_digits(out: Path, sample_shape: list[int]) -> dict[str, Any]:
    """scikit-learn's 8×8 digits as bytes (pixels 0..16, then labels): training rows first.

    The split is the one ``edgetrain demo`` trains on (seeded, 20 % held out), so a page that
    fine-tunes the demo's checkpoint reports accuracy on digits that model never saw.
    """
    try:
        from ..demos._data import digits
    except ImportError as e:
        raise EdgetrainError("the digits demo data needs scikit-learn (pip install "
                             "'edgetrain[demo]'), or export with dataset=None") from e
    x_train, y_train, x_test, y_test = digits(test_fraction=0.2, seed=0)
    pixels = np.rint(np.concatenate([x_train, x_test]).reshape(-1, 64) * 16).astype(np.uint8)
    labels = np.concatenate([y_train, y_test]).astype(np.uint8)
    (out / DATASET_FILE).write_bytes(pixels.tobytes() + labels.tobytes())
    return {"name": "digits", "file": DATASET_FILE, "count": len(labels), "train": len(y_train),
            "test": len(y_test), "split": "edgetrain demo's: seed 0, 20% held out",
            "features": 64, "image": [8, 8], "pixel_max": 16, "scale": 1.0 / 16.0,
            "classes": 10, "sample_shape": sample_shape, "x_offset": 0,
            "y_offset": int(pixels.nbytes), "x_dtype": "uint8", "y_dtype": "uint8"}


def export_web(file: str | os.PathLike[str] | onnx.ModelProto, out_dir: str | os.PathLike[str],
               checkpoint: str | os.PathLike[str] | None = None, *,
               dataset: str | None = "auto", webgpu: bool = True,
               ort_web: str | os.PathLike[str] | None = None,
               batch_size: int = 32) -> Path:
    """Write a self-contained web folder that trains ``file`` in the browser.

    ``checkpoint`` (an edgetrain checkpoint) becomes the initial state. ``dataset`` "auto"
    embeds scikit-learn's digits when the model takes 64 floats and predicts 10 classes
    ("digits" requires it, None never embeds). ``webgpu`` also vendors the WebGPU build of
    onnxruntime-web. Returns the output folder, which ``serve`` can serve.
    """
    if dataset not in ("auto", "digits", None):
        raise EdgetrainError(f"dataset must be 'auto', 'digits' or None, got {dataset!r}")
    proto = fmt.load_model(file if not isinstance(file, os.PathLike) else os.fspath(file))
    meta = fmt.read_meta(proto)
    dist = find_ort_web(ort_web)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    state = fmt.initial_state(proto, meta)
    if checkpoint is not None:
        state = fmt.load_checkpoint(checkpoint, meta, state)
    fmt.save_checkpoint(out / STATE_FILE, meta, state)

    frozen = {t.name for t in proto.graph.initializer} - set(state)
    blob = bytearray()
    offsets: dict[str, tuple[int, int, str]] = {}
    signatures: dict[str, Any] = {}
    for name, spec in meta["signatures"].items():
        entry: dict[str, Any] = {"kind": spec["kind"], "inputs": spec["inputs"],
                                 "outputs": spec["outputs"]}
        if spec["kind"] == "graph":
            m, state_inputs, updates = fmt.standalone(proto, meta, name)
            _externalize(m, frozen, blob, offsets)
            # The lowest IR version the opsets allow: onnxruntime-web may lag behind onnx.
            m.ir_version = min(m.ir_version,
                               onnx.helper.find_min_ir_version_for(list(m.opset_import)))
            graph_file = f"{name}.onnx"
            fmt.save_model(m, out / graph_file)
            entry.update(graph=graph_file, state_inputs=state_inputs, updates=updates,
                         graph_outputs=[o.name for o in m.graph.output])
        signatures[name] = entry
    missing = [s for s in GRAPH_SIGNATURES if s not in signatures]
    if missing:
        raise EdgetrainError(f"the file lacks signatures {missing}; recompile it")
    fmt.atomic_write(out / FROZEN_FILE, bytes(blob))

    data = None
    fit = _dataset_for(meta)
    if dataset == "digits" and fit is None:
        raise EdgetrainError("the digits data set needs a classifier with one float32 input "
                             "of 64 values per sample and 10 classes")
    if dataset is not None and fit is not None:
        data = _write_digits(out, fit[0])

    vendor = out / "ort"
    vendor.mkdir(exist_ok=True)
    builds = ["wasm", "webgpu"] if webgpu else ["wasm"]
    wanted = {fname for build in builds for fname in ORT_FILES[build]} | {"README.txt"}
    for stale in vendor.iterdir():  # e.g. the WebGPU build of an earlier export
        if stale.is_file() and stale.name not in wanted:
            stale.unlink()
    for build in builds:
        for fname in ORT_FILES[build]:
            src, dst = dist / fname, vendor / fname
            if not dst.exists() or dst.stat().st_size != src.stat().st_size or \
                    dst.stat().st_mtime < src.stat().st_mtime:
                shutil.copy2(src, dst)
    version = _ort_web_version(dist) or ORT_WEB_VERSION
    if version != ORT_WEB_VERSION:
        warnings.warn(f"vendoring onnxruntime-web {version} from {dist}; edgetrain is tested "
                      f"with {ORT_WEB_VERSION} (npm ci --prefix web installs it)", stacklevel=2)
    (vendor / "README.txt").write_text(
        f"onnxruntime-web {version} (npm), MIT License, Copyright (c) Microsoft Corporation.\n"
        "Vendored by `edgetrain export-web` so the page needs no CDN.\n")
    for f in sorted(STATIC.iterdir()):
        if f.is_file():
            shutil.copy2(f, out / f.name)

    manifest = {
        "format": WEB_FORMAT,
        "format_version": WEB_FORMAT_VERSION,
        "producer": f"edgetrain {fmt.producer_version()}",
        "onnxruntime_web": {"version": version,
                            "builds": {b: f"ort/{ORT_FILES[b][0]}" for b in builds}},
        "signatures": signatures,
        "state": {"file": STATE_FILE,
                  "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape)}
                              for k, v in sorted(state.items())}},
        "external_data": FROZEN_FILE,
        "trainable": meta["trainable"],
        "frozen": meta["frozen"],
        "step": meta.get("step", fmt.STEP_NAME),
        "output": meta["output"],
        "label": meta.get("label", "y"),
        "labels": meta.get("labels"),
        "classification": bool(meta.get("classification")),
        "loss": meta.get("loss"),
        "optimizer": meta.get("optimizer"),
        "batch_size": batch_size,
        "dataset": data,
    }
    fmt.atomic_write(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    for f in out.iterdir():  # atomic writes create 0600 files; any web server must read them
        if f.is_file():
            f.chmod(0o644)
    return out
