"""A tiny static server for a web export, on 127.0.0.1 by default.

It sends the cross-origin-isolation headers (COOP/COEP) that let onnxruntime-web use
SharedArrayBuffer and wasm threads, the right MIME types for ``.mjs``/``.wasm``, and no-cache
headers so a re-export is picked up on reload.
"""

from __future__ import annotations

import functools
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..errors import EdgetrainError


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {  # noqa: RUF012 - the base class's attribute, extended
        **SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
        ".json": "application/json", ".onnx": "application/octet-stream",
        ".bin": "application/octet-stream", ".safetensors": "application/octet-stream"}

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)


class WebServer:
    """A running server in a background thread; a context manager that stops it on exit."""

    def __init__(self, out_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0,
                 verbose: bool = False) -> None:
        root = Path(out_dir)
        if not (root / "index.html").is_file():
            raise EdgetrainError(f"{root} is not a web export (no index.html); create one with "
                                 "`edgetrain export-web FILE OUT_DIR`")
        handler = functools.partial(_Handler, directory=os.fspath(root))
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.httpd.verbose = verbose  # type: ignore[attr-defined]
        address = self.httpd.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="edgetrain-web",
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> WebServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_server(out_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0,
                 verbose: bool = False) -> WebServer:
    """Serve ``out_dir`` in the background; ``port=0`` picks a free port (see ``.url``)."""
    return WebServer(out_dir, host, port, verbose)


def serve(out_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve ``out_dir`` until interrupted (Ctrl-C), printing the page's address."""
    server = WebServer(out_dir, host, port, verbose=True)
    print(f"edgetrain: serving {os.fspath(out_dir)} at {server.url} (Ctrl-C stops)", flush=True)
    try:
        server._thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
