"""What the JavaScript peers (ort-node, ort-web) need, and what a device ships to run them.

Standard library only: run.py imports it too (to report a peer that is not set up, and the
sizes). The tools come from .ci/web-setup.sh: node, the npm packages of js/ (onnxruntime-node)
and web/ (onnxruntime-web, vendored into every web export; playwright-core), Chromium.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "js"
WEB = ROOT / "web"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ORT_NODE = JS / "node_modules" / "onnxruntime-node"
ORT_WEB = WEB / "node_modules" / "onnxruntime-web"
#: onnxruntime-node's native files for one platform (napi-v6/<os>/<arch>/), linux-x64 here.
ORT_NODE_NATIVE = ("onnxruntime_binding.node", "libonnxruntime.so.1")
#: The edgetrain package files its Node entry (js/src/node.js) imports, directly or not.
NODE_JS_FILES = ("node.js", "core.js", "checkpoint.js", "schema.js", "schemas.js",
                 "storage-node.js")


def missing(kind: str) -> list[str]:
    """What the ``node`` (onnxruntime-node) or ``web`` (onnxruntime-web wasm in Chromium)
    peer needs and this machine lacks."""
    out = []
    if shutil.which("node") is None:
        out.append("node (Debian package nodejs)")
    if kind == "node" and not ORT_NODE.is_dir():
        out.append("onnxruntime-node (ONNXRUNTIME_NODE_INSTALL=skip npm ci --prefix js)")
    if not (ORT_WEB / "dist").is_dir():  # export-web vendors it, for node too
        out.append("onnxruntime-web (npm ci --prefix web)")
    if kind == "web":
        if not (WEB / "node_modules" / "playwright-core").is_dir():
            out.append("playwright-core (npm ci --prefix web)")
        if not os.access(CHROMIUM, os.X_OK):
            out.append(f"{CHROMIUM} (Debian package chromium)")
    return out


def _native_dir() -> Path:
    arch = {"x86_64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine,
                                                                      os.uname().machine)
    return ORT_NODE / "bin" / "napi-v6" / "linux" / arch


def shipped(kind: str) -> dict[str, Any]:
    """The files a device ships to train an export with this peer, as installed here:
    ``{"files", "bytes", "runtime_bytes", "driver_bytes", "what"}`` or ``{"error"}``.

    node: the runtime is onnxruntime-node's native binding and onnxruntime library for this
    platform (napi-v6/linux/x64 here; the npm package carries every platform's, an app ships
    one) with its JavaScript and onnxruntime-common's CommonJS build (what
    ``require('onnxruntime-node')`` loads); the driver is the edgetrain package's Node entry
    and the modules it imports. web: the runtime is what ``export-web`` vendors for the wasm
    build (onnxruntime-web's ``.mjs`` loader, its wasm glue module and ``.wasm``); the driver is
    the package's browser entry and its modules, as the export copies them (with
    ``edgetrain.js``). Source maps and type declarations are not counted.
    """
    if missing(kind):
        return {"error": "not set up: " + ", ".join(missing(kind))}
    extra = b""
    if kind == "node":
        native = [_native_dir() / f for f in ORT_NODE_NATIVE]
        ort_js = sorted((ORT_NODE / "dist").glob("*.js"))
        ort_js += sorted((ORT_NODE.parent / "onnxruntime-common" / "dist" / "cjs").glob("*.js"))
        driver = [JS / "src" / f for f in NODE_JS_FILES]
    else:
        from edgetrain.web._export import ORT_FILES
        from edgetrain.web._jsdriver import ENTRY, JS_FILES, SHIM

        native = [ORT_WEB / "dist" / f for f in ORT_FILES["wasm"]]
        ort_js = []
        driver = [JS / "src" / f for f in JS_FILES]
        extra = SHIM
    absent = [str(f) for f in native + ort_js + driver if not f.is_file()]
    if absent:
        return {"error": f"missing {', '.join(absent)}"}

    def size(files: list[Path]) -> int:
        return sum(f.stat().st_size for f in files)

    runtime, driver_bytes = size(native) + size(ort_js), size(driver) + len(extra)
    if kind == "node":
        what = (f"{ORT_NODE.name}/{_native_dir().relative_to(ORT_NODE)}/: "
                f"{' + '.join(f.name for f in native)} ({size(native) / 1e6:.1f} MB); its JS "
                f"and onnxruntime-common's CommonJS ({size(ort_js) / 1e3:.0f} kB); edgetrain's "
                f"js/src/{' + '.join(NODE_JS_FILES)} ({driver_bytes / 1e3:.0f} kB)")
    else:
        what = (f"what export-web vendors: ort/{' + '.join(ORT_FILES['wasm'])} "
                f"({runtime / 1e6:.1f} MB); the driver it copies: {ENTRY} + "
                f"{' + '.join(JS_FILES)} ({driver_bytes / 1e3:.0f} kB)")
    return {"files": [str(f.relative_to(ROOT)) for f in native + ort_js + driver],
            "bytes": runtime + driver_bytes, "runtime_bytes": runtime,
            "driver_bytes": driver_bytes, "what": what}
