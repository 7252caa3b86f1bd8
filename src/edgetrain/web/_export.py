"""``export-web``: everything a browser needs to train a trainable file with onnxruntime-web.

The browser runs the very graphs the Python runtime runs (:func:`edgetrain.format.standalone`),
so a step in the page and a step in Python are the same computation. Frozen weights go to one
shared external-data file (``frozen.bin``) that every graph references, so a page downloads and
holds them once; the variable state goes to an ordinary edgetrain checkpoint
(``state.safetensors``), which is also the format the page saves and downloads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .. import format as fmt
from ..errors import EdgetrainError
from ..format import validate
from ._files import Folder, is_entry_name
from ._inputs import input_info
from ._jsdriver import driver_files
from ._manifest import check_manifest, check_meta

#: The onnxruntime-web release the export vendors (pinned in web/package.json).
ORT_WEB_VERSION = "1.30.0"
WEB_FORMAT = "edgetrain-web"
#: The manifest's version (js/schema/web-manifest.schema.json holds the same constant).
#: 2: the file's metadata as ``meta``, the graph files under ``graphs``, ``input``.
WEB_FORMAT_VERSION = 2
MANIFEST = "edgetrain-web.json"
FROZEN_FILE = "frozen.bin"
STATE_FILE = "state.safetensors"
DATASET_FILE = "digits.bin"
VENDOR_DIR = "ort"
#: The marker of an export folder: it lists the files the export wrote (and may replace).
MARKER = ".edgetrain-export.json"
MARKER_KIND = "edgetrain-web-export"
MAX_MARKER_BYTES = 1 << 20
GRAPH_SIGNATURES = ("infer", "train", "eval")
#: Metadata fields the manifest leaves out: free text the driver never reads.
META_LEFT_OUT = ("producer", "selection", "lora", "lora_merge")
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


def _dataset_for(meta: fmt.Metadata) -> tuple[list[int], int] | None:
    """Per-sample input shape and class count when the digits demo data fits the model."""
    sig = meta.signatures["infer"]
    if len(sig.inputs) != 1 or not meta.classification:
        return None
    x = sig.inputs[0]
    sample = [d for d in x.shape[1:] if isinstance(d, int) and d > 0]
    if x.dtype != "float32" or len(sample) != len(x.shape) - 1 or int(np.prod(sample)) != 64:
        return None
    out = next((o for o in sig.outputs if o.name == meta.output), None)
    if out is None or len(out.shape) != 2 or out.shape[1] != 10:
        return None
    return sample, 10


def _digits(sample_shape: list[int]) -> tuple[bytes, dict[str, Any]]:
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
    info = {"name": "digits", "file": DATASET_FILE, "count": len(labels), "train": len(y_train),
            "test": len(y_test), "split": "edgetrain demo: seed 0, 20% held out",
            "features": 64, "image": [8, 8], "pixel_max": 16, "scale": 1.0 / 16.0,
            "classes": 10, "sample_shape": sample_shape, "x_offset": 0,
            "y_offset": int(pixels.nbytes), "x_dtype": "uint8", "y_dtype": "uint8"}
    return pixels.tobytes() + labels.tobytes(), info


#: Signatures the browser export leaves out unless asked for: ``train_steps`` repeats the whole
#: train graph inside a Scan (twice the download) for a saving the page's one-step-per-frame
#: loop does not need; a driver that batches calls (Node.js) may ask for it (``multi_step``).
NOT_EXPORTED = frozenset({"train_steps"})


def _exported(meta: fmt.Metadata, multi_step: bool) -> fmt.Metadata:
    """The metadata as the manifest carries it: without the signatures left out, so a driver
    lists only what it can run (an optional signature's absence keeps the metadata valid)."""
    if multi_step:
        return meta
    return dataclasses.replace(meta, signatures={k: v for k, v in meta.signatures.items()
                                                 if k not in NOT_EXPORTED})


def _graphs(proto: onnx.ModelProto, meta: fmt.Metadata, frozen: set[str]
            ) -> tuple[dict[str, bytes], dict[str, Any], bytes]:
    """The standalone graph files, the manifest's ``graphs`` and the shared frozen weights."""
    missing = [s for s in GRAPH_SIGNATURES if s not in meta.signatures]
    if missing:
        raise EdgetrainError(f"the file lacks signatures {missing}; recompile it")
    files: dict[str, bytes] = {}
    blob = bytearray()
    offsets: dict[str, tuple[int, int, str]] = {}
    graphs: dict[str, Any] = {}
    for name, spec in meta.signatures.items():
        if spec.kind != "graph":
            continue
        m, state_inputs, updates = fmt.standalone(proto, meta, name)
        _externalize(m, frozen, blob, offsets)
        # The lowest IR version the opsets allow: onnxruntime-web may lag behind onnx.
        m.ir_version = min(m.ir_version,
                           onnx.helper.find_min_ir_version_for(list(m.opset_import)))
        graph_file = f"{name}.onnx"
        files[graph_file] = m.SerializeToString()
        graphs[name] = {"file": graph_file, "state_inputs": state_inputs, "updates": updates,
                        "outputs": [o.name for o in m.graph.output]}
    return files, graphs, bytes(blob)


def _state_bytes(meta: fmt.Metadata, state: Mapping[str, np.ndarray],
                 identity: Any) -> bytes:
    """The initial state as an edgetrain checkpoint (carrying the model's architecture, which
    the browser driver compares on restore), written where no one else can see it."""
    with tempfile.TemporaryDirectory(prefix="edgetrain-web-") as tmp:
        return Path(fmt.save_checkpoint(Path(tmp) / STATE_FILE, meta, state,
                                        identity=identity)).read_bytes()


def _vendor(dist: Path, webgpu: bool) -> tuple[dict[str, bytes | Path], str, list[str]]:
    """The onnxruntime-web files under ``ort/``, its version and the builds vendored."""
    builds = ["wasm", "webgpu"] if webgpu else ["wasm"]
    files: dict[str, bytes | Path] = {f"{VENDOR_DIR}/{fname}": dist / fname
                                      for build in builds for fname in ORT_FILES[build]}
    version = _ort_web_version(dist) or ORT_WEB_VERSION
    if version != ORT_WEB_VERSION:
        warnings.warn(f"vendoring onnxruntime-web {version} from {dist}; edgetrain is tested "
                      f"with {ORT_WEB_VERSION} (npm ci --prefix web installs it)", stacklevel=3)
    files[f"{VENDOR_DIR}/README.txt"] = (
        f"onnxruntime-web {version} (npm), MIT License, Copyright (c) Microsoft Corporation.\n"
        "Vendored by `edgetrain export-web` so the page needs no CDN.\n").encode()
    return files, version, builds


def _manifest(meta: fmt.Metadata, graphs: dict[str, Any],
              state: Mapping[str, np.ndarray], identity: fmt.Identity,
              vendored: tuple[str, list[str]], batch_size: int, data: dict[str, Any] | None,
              inputs: dict[str, Any]) -> dict[str, Any]:
    """What the driver and the page read (js/schema/web-manifest.schema.json): the file's
    metadata, the graph files, the state's specs, the vendored runtime, the data input."""
    version, builds = vendored
    return {
        "format": WEB_FORMAT,
        "format_version": WEB_FORMAT_VERSION,
        "producer": f"edgetrain {fmt.producer_version()}",
        "meta": {k: v for k, v in meta.to_json().items() if k not in META_LEFT_OUT},
        "graphs": graphs,
        "state": {"file": STATE_FILE,
                  "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape)}
                              for k, v in sorted(state.items())}},
        "nonnegative": sorted(identity.nonnegative),
        "external_data": FROZEN_FILE,
        "onnxruntime_web": {"version": version,
                            "builds": {b: f"{VENDOR_DIR}/{ORT_FILES[b][0]}" for b in builds}},
        "batch_size": batch_size,
        "dataset": data,
        "input": inputs,
    }


def export_web(file: str | os.PathLike[str] | onnx.ModelProto, out_dir: str | os.PathLike[str],
               checkpoint: str | os.PathLike[str] | None = None, *,
               dataset: str | None = "auto", webgpu: bool = True,
               ort_web: str | os.PathLike[str] | None = None,
               batch_size: int = 32, force: bool = False,
               image_mean: Sequence[float] | None = None,
               image_std: Sequence[float] | None = None, multi_step: bool = False) -> Path:
    """Write a self-contained web folder that trains ``file`` in the browser.

    ``checkpoint`` (an edgetrain checkpoint) becomes the initial state. ``dataset`` "auto"
    embeds scikit-learn's digits when the model takes 64 floats and predicts 10 classes
    ("digits" requires it, None never embeds). ``webgpu`` also vendors the WebGPU build of
    onnxruntime-web. ``image_mean`` / ``image_std`` (one value, or one per channel) record the
    normalization an image model expects after pixels are scaled to [0, 1], for the page's
    own-images path. ``out_dir`` must be new, empty or an earlier export (whose files are
    replaced); ``force`` writes into any other folder, touching only the export's own files.
    ``multi_step`` also exports ``train_steps`` (K steps per call) for drivers that batch calls.
    Returns the output folder, which ``serve`` can serve.
    """
    if dataset not in ("auto", "digits", None):
        raise EdgetrainError(f"dataset must be 'auto', 'digits' or None, got {dataset!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or \
            not 1 <= batch_size <= 65536:
        raise EdgetrainError(f"batch_size must be an integer in [1, 65536], got {batch_size!r}")
    proto = fmt.load_model(file if not isinstance(file, os.PathLike) else os.fspath(file))
    meta = fmt.read_metadata(proto)
    check_meta(meta)  # the strings the manifest copies, before anything is built or written
    validate(proto, meta)  # and the file's own consistency, as edgetrain.load checks it
    inputs = input_info(meta, image_mean, image_std)
    dist = find_ort_web(ort_web)
    driver = driver_files()

    state = fmt.initial_state(proto, meta)
    identity = fmt.identify(proto, meta)
    if checkpoint is not None:
        state = fmt.load_checkpoint(checkpoint, meta, state, identity=identity)
    shown = _exported(meta, multi_step)
    graph_files, graphs, blob = _graphs(proto, shown, {t.name for t in proto.graph.initializer}
                                        - set(state))
    files: dict[str, bytes | Path] = {STATE_FILE: _state_bytes(meta, state, identity),
                                      FROZEN_FILE: blob, **graph_files}
    data = None
    fit = _dataset_for(meta)
    if dataset == "digits" and fit is None:
        raise EdgetrainError("the digits data set needs a classifier with one float32 input "
                             "of 64 values per sample and 10 classes")
    if dataset is not None and fit is not None:
        files[DATASET_FILE], data = _digits(fit[0])
    vendored, version, builds = _vendor(dist, webgpu)
    files.update(vendored)
    files.update({f.name: f for f in sorted(STATIC.iterdir()) if f.is_file()})
    files.update(driver)
    manifest = _manifest(shown, graphs, state, identity, (version, builds), batch_size, data,
                         inputs)
    check_manifest(manifest)
    files[MANIFEST] = json.dumps(manifest, indent=1, allow_nan=False).encode()
    out = Path(out_dir)
    write_export(out, files, force)
    return out


# -- writing into the output folder ------------------------------------------------------------

def _listed_name(name: object) -> bool:
    """A file name an export can have written: ``NAME`` or ``ort/NAME``, never hidden."""
    if not isinstance(name, str):
        return False
    parts = name.split("/")
    return (len(parts) == 1 or (len(parts) == 2 and parts[0] == VENDOR_DIR)) and \
        all(is_entry_name(p) and not p.startswith(".") for p in parts)


def _read_marker(root: Folder) -> set[str] | None:
    """The files an earlier export wrote, from its marker; None if there is no valid marker."""
    fd = root.open_regular(MARKER)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_MARKER_BYTES + 1)
    try:
        marker = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if len(raw) > MAX_MARKER_BYTES or not isinstance(marker, dict) or \
            marker.get("kind") != MARKER_KIND or not isinstance(marker.get("files"), list) or \
            not all(_listed_name(n) for n in marker["files"]):
        return None
    return set(marker["files"])


def _marker(names: set[str]) -> bytes:
    return json.dumps({"kind": MARKER_KIND, "version": 1,
                       "producer": f"edgetrain {fmt.producer_version()}",
                       "files": sorted(names)}, indent=1).encode()


def _previous_files(root: Folder, out: Path, force: bool) -> set[str]:
    """What an earlier export in ``out`` wrote; refuses a foreign non-empty folder unless force."""
    if not root.names():
        return set()
    listed = _read_marker(root)
    if listed is not None:
        return listed
    if force:
        return set()
    raise EdgetrainError(
        f"{out} is not empty and is not an edgetrain web export (it has no {MARKER}); "
        "refusing to write into it. Choose a new or empty folder, or pass --force "
        "(force=True) to add the export's files to it: files of the same names are replaced, "
        "nothing else is touched")


def _check_targets(root: Folder, out: Path, names: list[str]) -> None:
    """Every name is free or a file (never a folder), and ``ort`` is a real folder or missing."""
    st = root.lstat(VENDOR_DIR)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a folder"
        raise EdgetrainError(f"{out / VENDOR_DIR} is {kind}; the export writes onnxruntime-web "
                             "into a folder of that name and never through a link. Remove it "
                             "or choose another folder")
    vendor = root.subfolder(VENDOR_DIR) if st is not None else None
    try:
        for name in names:
            parent, _, base = name.rpartition("/")
            folder = vendor if parent else root
            entry = folder.lstat(base) if folder is not None else None
            if entry is not None and stat.S_ISDIR(entry.st_mode):
                raise EdgetrainError(f"{out / name} is a folder; the export writes a file of "
                                     "that name. Remove it or choose another folder")
    finally:
        if vendor is not None:
            vendor.close()


def write_export(out: Path, files: Mapping[str, bytes | Path], force: bool = False) -> None:
    """Write ``files`` (``name`` or ``ort/name``) into ``out``, touching nothing else.

    A new or empty folder, or an earlier export (recognised by its marker file, which lists
    what it wrote), is written; any other folder only with ``force``. Each file is replaced
    atomically (a link of that name is replaced, never followed); files an earlier export
    wrote and this one does not are deleted; every other entry is left as it was.
    """
    try:
        if out.is_symlink() or out.exists():
            if not out.is_dir():
                raise EdgetrainError(f"{out} exists and is not a folder")
        else:
            out.mkdir(parents=True)
        _write_files(out, files, force)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise EdgetrainError(f"cannot write the web export into {out}: "
                             f"{e.strerror or e}{where}") from e


def _write_files(out: Path, files: Mapping[str, bytes | Path], force: bool) -> None:
    with Folder(out) as root:
        previous = _previous_files(root, out, force)
        _check_targets(root, out, sorted([*files, MARKER]))
        root.write(MARKER, _marker(previous | set(files)))  # covers a crash midway
        with root.subfolder(VENDOR_DIR, create=True) as vendor:
            folders = {"": root, VENDOR_DIR: vendor}
            for name, data in files.items():
                parent, _, base = name.rpartition("/")
                folders[parent].write(base, data)
            for name in sorted(previous - set(files)):  # e.g. the WebGPU build of an earlier run
                parent, _, base = name.rpartition("/")
                folders[parent].remove(base)
            vendor.sync()
        root.write(MARKER, _marker(set(files)))
        root.sync()
