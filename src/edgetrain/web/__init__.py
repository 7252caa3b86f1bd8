"""Train in the browser: export a trainable file for onnxruntime-web and serve the demo page.

    from edgetrain.web import export_web, serve
    export_web("model.onnx", "site/")          # graphs, state, driver, demo page, onnxruntime-web
    serve("site/")                             # http://127.0.0.1:<port>/

The page's driver (``edgetrain.js``) runs the same standalone graphs the Python runtime runs, so
a training step in the browser and in Python compute the same thing.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import EdgetrainError
from ._batches import Mulberry32, batch_indices, pack_batches, read_dataset, split_indices
from ._export import ORT_WEB_VERSION, export_web, find_ort_web
from ._server import WebServer, serve, start_server

__all__ = [
    "ORT_WEB_VERSION", "Mulberry32", "WebServer", "add_cli", "batch_indices", "export_web",
    "find_ort_web", "pack_batches", "read_dataset", "serve", "split_indices", "start_server",
]


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise EdgetrainError(f"{what} must be numbers separated by commas, got {text!r}") from None


def _cmd_export(args: argparse.Namespace) -> int:
    dataset = None if args.no_dataset else "auto"
    out = export_web(args.file, args.out_dir, checkpoint=args.checkpoint, dataset=dataset,
                     webgpu=not args.no_webgpu, force=args.force,
                     image_mean=_floats(args.image_mean, "--image-mean"),
                     image_std=_floats(args.image_std, "--image-std"),
                     multi_step=args.multi_step)
    print(f"edgetrain: wrote the web export to {out}; serve it with "
          f"`edgetrain serve-web {out}`")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    serve(args.out_dir, host=args.host, port=args.port)
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``export-web`` and ``serve-web`` on an argparse sub-parser collection.

    Each sub-command sets ``func`` (``args.func(args)`` returns the exit code).
    """
    p = subparsers.add_parser("export-web", help="write a folder that trains FILE in a browser",
                              description="Write the standalone graphs, the initial state, the "
                              "manifest, the edgetrain.js driver, the demo page and the vendored "
                              "onnxruntime-web into OUT_DIR.")
    p.add_argument("file", metavar="FILE", help="trainable edgetrain file (.onnx)")
    p.add_argument("out_dir", metavar="OUT_DIR",
                   help="folder to write: new, empty, or an earlier export (created if missing)")
    p.add_argument("--checkpoint", metavar="CK", help="start from this checkpoint's state")
    p.add_argument("--no-dataset", action="store_true",
                   help="do not embed the digits demo data set")
    p.add_argument("--no-webgpu", action="store_true",
                   help="vendor only the wasm build of onnxruntime-web (smaller)")
    p.add_argument("--image-mean", metavar="M[,M,M]",
                   help="per-channel mean the model's images are normalized with, after pixels "
                   "are scaled to [0, 1] (e.g. 0.485,0.456,0.406); the page applies it to images "
                   "you give it")
    p.add_argument("--image-std", metavar="S[,S,S]",
                   help="per-channel standard deviation, as --image-mean")
    p.add_argument("--multi-step", action="store_true",
                   help="also export train_steps (K training steps per call, one ONNX Scan) for "
                   "drivers that batch calls, such as Node.js; the page steps once per call")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty folder that is not an earlier export: only the "
                   "export's own files are replaced, nothing else is touched")
    p.set_defaults(func=_cmd_export)
    s = subparsers.add_parser("serve-web", help="serve a web export on 127.0.0.1",
                              description="Serve OUT_DIR (from export-web) with the headers "
                              "onnxruntime-web's threads need. Only GET and HEAD of regular "
                              "files in OUT_DIR, never through a symbolic link, and only for "
                              "requests addressed to the loopback host it listens on.")
    s.add_argument("out_dir", metavar="OUT_DIR", help="a folder written by export-web")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    s.set_defaults(func=_cmd_serve)
