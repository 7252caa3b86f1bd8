"""``edgetrain export-iree FILE OUT_DIR --target …``: ahead-of-time IREE modules for a device.

For each graph signature of a trainable file (``train``, ``eval``, ``infer``, …) one module,
``<signature>.vmfb``, compiled by iree-compile for the target: the host CPU, Android or iOS on
arm64 (llvm-cpu; iOS kernels as a static library ``<signature>.o`` + ``.h`` to link into the
app), or a Vulkan or Metal GPU. Next to them ``state.safetensors``, the file's state (trainable
weights, optimizer state, step) as an edgetrain checkpoint, and ``manifest.json``, which tells a
device driver everything it needs: per signature the module, its function, the inputs in call
order (data, then state) with the dtypes the module takes, the outputs, and which output holds
the new value of which state tensor. The driver follows the same commit rule as every
edgetrain runtime: keep a step's new state only when the step counter advanced.

Frozen weights are constants inside each module. GPU modules take 32-bit integers and floats
where the file has 64-bit ones (GPUs lack them), which the manifest records. Metal needs every
shape static, so its modules are built for one batch size (``--batch``, default 32).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np
import onnx

from . import format as fmt
from .errors import BackendError, EdgetrainError
from .format import validate
from .runtime import _iree
from .runtime._portable import portable, specialize

MANIFEST_KIND = "edgetrain-iree"
MANIFEST_VERSION = 1
DEFAULT_STATIC_BATCH = 32
_DEMOTED = {"int64": "int32", "float64": "float32"}


def export_iree(path: str | os.PathLike[str] | onnx.ModelProto, out_dir: str | os.PathLike[str],
                target: str = "host", batch: int | None = None) -> dict[str, Any]:
    """Build the modules, state and manifest for ``target`` in ``out_dir``; returns the
    manifest. ``batch`` fixes the batch dimension (required by, and defaulted for, Metal)."""
    if target not in _iree.TARGETS:
        raise EdgetrainError(f"unknown target {target!r}; choose one of "
                             f"{', '.join(_iree.TARGETS)}")
    if batch is not None and batch < 1:
        raise EdgetrainError(f"--batch must be a positive integer, got {batch}")
    missing = [m for m in ("iree.compiler", "iree.runtime") if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendError(f"export-iree needs {missing}: pip install 'edgetrain[iree]'")
    if batch is None and target in _iree.STATIC_BATCH_TARGETS:
        batch = DEFAULT_STATIC_BATCH
    proto = fmt.load_model(os.fspath(path) if isinstance(path, os.PathLike) else path)
    meta = fmt.read_metadata(proto)
    validate(proto, meta)
    cache = _iree.module_cache_dir()
    plane = _iree.maxpool_indices_per_plane(cache)
    out_dir = os.fspath(out_dir)
    _check_out_dir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    demote = target in ("vulkan", "metal")
    sigs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgetrain-iree-export-") as tmp:
        for sig, spec in meta.signatures.items():
            if spec.kind == "builtin" or sig == "train_steps":  # K varies: the runtime unrolls it
                continue
            graph, state_inputs, updates = fmt.standalone(proto, meta, sig)
            graph = portable(graph, plane_indices=plane)
            if batch is not None:
                graph = specialize(graph, _batch_shapes(graph, state_inputs, batch))
            graph.graph.name = f"sig_{''.join(c if c.isalnum() else '_' for c in sig)}"
            try:
                files = _iree.compile_graph(graph, target, tmp, name=sig)
            except BackendError as e:
                hint = "" if batch is not None else " (a static batch may help: --batch N)"
                raise BackendError(f"signature {sig!r} for {target}: {e}{hint}") from e
            for f in files:
                shutil.move(f, os.path.join(out_dir, os.path.basename(f)))
            sigs[sig] = {
                "module": f"{sig}.vmfb", "function": graph.graph.name,
                "static_library": [os.path.basename(f) for f in files[1:]] or None,
                "inputs": [_io(vi, demote) for vi in graph.graph.input],
                "outputs": [_io(vi, demote) for vi in graph.graph.output],
                "state_inputs": state_inputs, "updates": updates,
                "module_bytes": os.path.getsize(os.path.join(out_dir, f"{sig}.vmfb")),
            }
    fmt.save_checkpoint(os.path.join(out_dir, "state.safetensors"), meta,
                        fmt.initial_state(proto, meta))
    manifest = {"kind": MANIFEST_KIND, "version": MANIFEST_VERSION, "target": target,
                "iree_flags": _iree.TARGETS[target], "compiler": _iree.versions(),
                "batch": batch, "step": meta.step,
                "state": "state.safetensors", "signatures": sigs,
                "commit_rule": "keep a call's new state only when the step output equals "
                               "the step input plus the number of steps the call ran"}
    fmt.atomic_write(os.path.join(out_dir, "manifest.json"),
                     json.dumps(manifest, indent=2).encode())
    return manifest


def _check_out_dir(out_dir: str) -> None:
    """OUT_DIR must be new, empty or an earlier export: nothing else in it gets overwritten."""
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise EdgetrainError(f"{out_dir!r} exists and is not a folder")
    if not os.listdir(out_dir):
        return
    try:
        with open(os.path.join(out_dir, "manifest.json"), "rb") as f:
            earlier = json.loads(f.read(1 << 20)).get("kind") == MANIFEST_KIND
    except (OSError, ValueError, AttributeError):
        earlier = False
    if not earlier:
        raise EdgetrainError(f"{out_dir!r} is not empty and holds no earlier IREE export; "
                             "choose a new or empty folder (nothing was written)")


def _batch_shapes(graph: onnx.ModelProto, state_inputs: list[str], batch: int
                  ) -> dict[str, list[int]]:
    """Input shapes with the batch dimension (every symbolic leading dim) fixed."""
    shapes: dict[str, list[int]] = {}
    for vi in graph.graph.input:
        if vi.name in state_inputs:
            continue
        dims = []
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif i == 0:
                dims.append(batch)
            else:
                raise EdgetrainError(f"input {vi.name!r} has a symbolic dimension "
                                     f"{d.dim_param or '?'} besides the batch; a static build "
                                     "needs it fixed in the model")
        shapes[vi.name] = dims
    return shapes


def _io(vi: onnx.ValueInfoProto, demote: bool) -> dict[str, Any]:
    """A module input or output as the manifest lists it: name, dtype (numpy's name, float64
    demoted where the target has none), dims (a size, a symbolic name or null)."""
    tt = vi.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
             for d in tt.shape.dim]
    return {"name": vi.name, "dtype": _DEMOTED.get(dtype, dtype) if demote else dtype,
            "shape": shape}


def cmd_export_iree(args: argparse.Namespace) -> int:
    manifest = export_iree(args.file, args.out_dir, args.target, args.batch)
    total = 0
    for sig, spec in manifest["signatures"].items():
        total += spec["module_bytes"]
        lib = f" + static library {', '.join(spec['static_library'])}" \
            if spec["static_library"] else ""
        print(f"  {sig}: {spec['module']} ({spec['module_bytes'] / 1e3:.0f} kB){lib}")
    batch = f", batch {manifest['batch']}" if manifest["batch"] else ""
    print(f"wrote {args.out_dir}: {len(manifest['signatures'])} IREE modules for "
          f"{manifest['target']}{batch} ({total / 1e3:.0f} kB), state.safetensors, "
          f"manifest.json")
    return 0


def add_cli(sub: Any) -> None:
    p = sub.add_parser("export-iree", help="compile every signature into IREE modules for a "
                       "device (host, android-arm64, ios-arm64, vulkan, metal)")
    p.add_argument("file", help="the trainable file (from edgetrain compile)")
    p.add_argument("out_dir", help="folder for the modules, state.safetensors and manifest.json")
    p.add_argument("--target", default="host", choices=list(_iree.TARGETS),
                   help="the device: host (this CPU), android-arm64, ios-arm64 (static "
                        "library kernels), vulkan or metal (default: host)")
    p.add_argument("--batch", type=int, default=None,
                   help=f"fix the batch size (Metal needs one; default {DEFAULT_STATIC_BATCH})")
    p.set_defaults(func=cmd_export_iree)


__all__ = ["export_iree"]
