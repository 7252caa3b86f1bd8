"""A small static server for a web export, on 127.0.0.1 by default.

It sends the cross-origin-isolation headers (COOP/COEP) that let onnxruntime-web use
SharedArrayBuffer and wasm threads, the right MIME types for ``.mjs``/``.wasm``, and no-cache
headers so a re-export is picked up on reload.

It is meant for one developer's browser on the same machine, and is careful anyway: it serves
only GET and HEAD of regular files inside the folder (never through a symbolic link, never a
folder listing, never a hidden file); it answers only requests whose ``Host`` is the loopback
address it listens on (so a web site cannot reach it by DNS rebinding); a client has
``timeout`` seconds to send a request's head, and at most ``max_handlers`` connections are
handled at once (more are told 503 and closed), so idle or half-sent requests cannot pile up
threads; every response carries a Content-Security-Policy that forbids inline script.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..errors import EdgetrainError
from ._files import Folder

#: Seconds a client has to send a request line and headers (and for each send or receive).
REQUEST_TIMEOUT = 5.0
#: Connections handled at once; more are answered 503 and closed.
MAX_HANDLERS = 32
#: The page's policy: scripts and workers only from the export itself, WebAssembly allowed
#: (onnxruntime-web compiles its .wasm), no inline script or handler, no plugin, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; style-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Embedder-Policy", "require-corp"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".wasm": "application/wasm", ".png": "image/png",
    ".txt": "text/plain; charset=utf-8"}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n"
         b"Retry-After: 1\r\n\r\n")


class BadRequestPath(ValueError):
    """A request target that is not a plain absolute path (NUL, backslash, dot segments, …)."""


def request_path(target: str) -> list[str] | None:
    """The path segments a request target names; None for a folder; BadRequestPath if malformed.

    ``/`` is the page (``index.html``). Query and fragment are ignored. Percent-escapes must
    decode to UTF-8 without control characters or backslashes, and ``.``, ``..`` and empty
    segments are refused rather than normalised.
    """
    if not target.startswith("/"):
        raise BadRequestPath("not an absolute path")
    path = target.split("?", 1)[0].split("#", 1)[0]
    try:
        text = urllib.parse.unquote(path, errors="strict")
    except UnicodeDecodeError as e:
        raise BadRequestPath("not UTF-8") from e
    if any(ord(c) < 0x20 or c in "\x7f\\" for c in text):
        raise BadRequestPath("control character or backslash")
    if text == "/":
        return ["index.html"]
    parts = text[1:].split("/")
    if parts[-1] == "":
        parts.pop()
        if any(p in ("", ".", "..") for p in parts):
            raise BadRequestPath("empty or dot segment")
        return None
    if any(p in ("", ".", "..") for p in parts):
        raise BadRequestPath("empty or dot segment")
    return parts


def open_under(root: str, parts: list[str]) -> int | None:
    """A read descriptor of the regular file ``root/parts…``; None unless every step is plain.

    No step may be a symbolic link or a hidden name, and the last must be a regular file, so
    nothing outside ``root`` (and no folder) is ever opened.
    """
    if any(p.startswith(".") for p in parts):
        return None
    folders: list[Folder] = []
    try:
        folder = Folder(root)
        folders.append(folder)
        for p in parts[:-1]:
            folder = folder.subfolder(p)
            folders.append(folder)
        return folder.open_regular(parts[-1])
    except (OSError, ValueError):
        return None
    finally:
        for f in folders:
            f.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "edgetrain"
    sys_version = ""

    raw_requestline: bytes

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)  # every send and receive

    def handle_one_request(self) -> None:
        self.server.watch(self.connection)  # the head must arrive before the deadline
        try:
            super().handle_one_request()
        finally:
            self.server.unwatch(self.connection)

    def parse_request(self) -> bool:
        if not self.raw_requestline.endswith(b"\n"):  # cut off by the deadline or the client
            self.close_connection = True
            return False
        ok = super().parse_request()
        if not self.server.unwatch(self.connection):  # the head came too late: say nothing
            self.close_connection = True
            return False
        if not ok:
            return False
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or hosts[0].strip().lower() not in self.server.allowed_hosts:
            self.send_error(403, "this server answers only requests for its loopback address")
            return False
        if self.command not in ("GET", "HEAD"):
            self._extra = [("Allow", "GET, HEAD")]
            self.send_error(405, "only GET and HEAD")
            return False
        if self.headers.get("Content-Length", "0").strip() != "0" or \
                "Transfer-Encoding" in self.headers:
            self.send_error(400, "a GET or HEAD request has no body")
            return False
        return True

    def end_headers(self) -> None:
        for key, value in (*SECURITY_HEADERS, *getattr(self, "_extra", ())):
            self.send_header(key, value)
        self._extra = []
        super().end_headers()

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        try:
            parts = request_path(self.path)
        except BadRequestPath as e:
            self.send_error(400, f"malformed path ({e})")
            return
        fd = None if parts is None else open_under(self.server.root, parts)
        if fd is None:
            self.send_error(404)
            return
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPES.get(
                Path(parts[-1] if parts else "").suffix.lower(), "application/octet-stream"))
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if body and size:
                self.connection.sendfile(f, 0, size)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        if self.server.verbose:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # handler threads end on their own, within the timeout
    request_queue_size = 128  # the listen backlog: a burst of connections waits, not retries

    def __init__(self, root: str, host: str, port: int, verbose: bool, timeout: float,
                 max_handlers: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.root, self.verbose, self.request_timeout = root, verbose, timeout
        self.allowed_hosts = _allowed_hosts(host, int(self.server_address[1]))
        self._slots = threading.BoundedSemaphore(max_handlers)
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="edgetrain-web-reaper",
                                        daemon=True)
        self._reaper.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # busy: answer at once, hold no thread
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.verbose:  # a client that went away mid-response is not worth a traceback
            super().handle_error(request, client_address)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._deadlines[sock] = time.monotonic() + self.request_timeout

    def unwatch(self, sock: socket.socket) -> bool:
        """Stop the deadline; False if it had already passed (and the socket was shut)."""
        with self._lock:
            return self._deadlines.pop(sock, None) is not None

    def _reap(self) -> None:
        """Shut connections whose request head is late: a slow trickle counts as idle."""
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                for sock in [s for s, t in self._deadlines.items() if t <= now]:
                    del self._deadlines[sock]
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def server_close(self) -> None:
        self._stop.set()
        super().server_close()


def _allowed_hosts(host: str, port: int) -> frozenset[str]:
    """``Host`` values this server answers: loopback names (and the address it was bound to)."""
    names = set(LOOPBACK_NAMES)
    if host not in ("", "0.0.0.0", "::"):  # a specific address the user chose
        names.add(f"[{host}]" if ":" in host else host)
    return frozenset({f"{n}:{port}" for n in names} | (names if port == 80 else set()))


class WebServer:
    """A running server in a background thread; a context manager that stops it on exit."""

    def __init__(self, out_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0,
                 verbose: bool = False, *, timeout: float = REQUEST_TIMEOUT,
                 max_handlers: int = MAX_HANDLERS) -> None:
        root = os.path.abspath(os.fspath(out_dir))
        fd = open_under(root, ["index.html"])
        if fd is None:
            raise EdgetrainError(f"{out_dir} is not a web export (no index.html); create one "
                                 "with `edgetrain export-web FILE OUT_DIR`")
        os.close(fd)
        if not (timeout > 0 and max_handlers > 0):
            raise EdgetrainError("the server needs timeout > 0 and max_handlers > 0")
        try:
            self.httpd = _Server(root, host, port, verbose, timeout, max_handlers)
        except OSError as e:
            raise EdgetrainError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
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
