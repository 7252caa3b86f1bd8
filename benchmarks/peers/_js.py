"""The JavaScript peers: the edgetrain file trained by the npm package in js/ (the driver that
Node.js apps, web pages and React Native apps use), on onnxruntime-node or onnxruntime-web.

The worker compiles and saves the workload's file exactly as the edgetrain worker does, writes
its ``edgetrain export-web`` folder (wasm build only, no data set) and the workload's batches
into it (``bench/batches.json`` + ``bench/batches.bin``, the conformance matrix's batch format),
then starts one JavaScript process that loads the export with the package's ``load(dir,
{ ort })`` and answers commands (js/scripts/bench-jobs.mjs): ``node js/scripts/bench-node.mjs``
for onnxruntime-node, or the export served on 127.0.0.1 and ``js/scripts/bench.html`` opened in
headless Chromium by ``node web/serve-page.mjs``, which relays the commands to the page. Steps
are timed inside JavaScript (performance.now() around the block of ``train`` calls); the
losses come back for run.py's agreement check.

Memory is the JavaScript side's: the node process's peak RSS, or the summed PSS of the
browser's processes (not a peak). A cold run starts a fresh node process or browser: its import
time is the import of onnxruntime (and, in node, the package), its cold start the export's load
plus the first step, both measured in JavaScript.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _common import threads
from _js_tools import CHROMIUM, JS, ORT_NODE, ORT_WEB, WEB, missing
from edgetrain_worker import EdgetrainPeer

SCRIPTS = JS / "scripts"
#: What the web peer copies into the export next to the package's own files.
PAGE_FILES = ("bench.html", "bench-page.mjs", "bench-jobs.mjs", "matrix-jobs.mjs")
NODE_FILES = ("bench-jobs.mjs", "matrix-jobs.mjs")
TIMEOUT = float(os.environ.get("EDGETRAIN_BENCH_JS_TIMEOUT", "600"))


def write_batches(batches: list[tuple[Any, np.ndarray]], where: Path) -> None:
    """``batches.json`` + ``batches.bin``: each batch's inputs by the train signature's names
    (the data input(s), ``y``), every array in C order at an 8-byte aligned offset."""
    from edgetrain.web import pack_batches

    where.mkdir(parents=True, exist_ok=True)
    blob, specs = pack_batches([{**(x if isinstance(x, dict) else {"x": x}), "y": y}
                                for x, y in batches])
    (where / "batches.bin").write_bytes(blob)
    (where / "batches.json").write_text(json.dumps({"batches": specs}))


def _package_version(folder: Path) -> str:
    return str(json.loads((folder / "package.json").read_text())["version"])


class JsPeer(EdgetrainPeer):
    """One loaded export in a JavaScript process; ``kind`` is "node" or "web"."""

    kind = "node"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.server: Any = None
        self.hello: dict[str, Any] = {}

    def import_runtime(self) -> str:
        lacking = missing(self.kind)
        if lacking:
            raise RuntimeError(f"not set up: needs {', '.join(lacking)} (sh .ci/web-setup.sh)")
        import edgetrain

        self.et = edgetrain
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        if self.kind == "node":
            return f"onnxruntime-node {_package_version(ORT_NODE)} (Node.js {node})"
        browser = subprocess.run([CHROMIUM, "--version"], capture_output=True,
                                 text=True).stdout.strip()
        return f"onnxruntime-web {_package_version(ORT_WEB)} wasm ({browser})"

    def build(self, spec: dict[str, Any], weights: dict[str, np.ndarray],
              batches: list[tuple[Any, np.ndarray]], outdir: str) -> list[str]:
        from edgetrain.web import export_web

        model = super().build(spec, weights, batches, outdir)[0]
        site = export_web(model, Path(outdir) / "site", webgpu=False, dataset=None)
        write_batches(batches, site / "bench")
        for name in PAGE_FILES if self.kind == "web" else ():
            shutil.copyfile(SCRIPTS / name, site / name)
        manifest = json.loads((site / "edgetrain-web.json").read_text())
        graphs = [g["file"] if isinstance(g, dict) else g for g in manifest["graphs"].values()]
        return [str(site / f) for f in ["edgetrain-web.json", manifest["state"]["file"],
                                        manifest["external_data"], *graphs]]

    def load(self, spec: dict[str, Any], outdir: str) -> None:
        site = Path(outdir) / "site"
        n = threads()
        if self.kind == "node":
            cmd = ["node", str(SCRIPTS / "bench-node.mjs"), str(site), *([str(n)] if n else [])]
            env, cwd = dict(os.environ), JS
        else:
            from edgetrain.web import start_server

            self.server = start_server(site)
            url = f"{self.server.url}bench.html" + (f"?threads={n}" if n else "")
            cmd = ["node", str(WEB / "serve-page.mjs"), url, str(int(TIMEOUT * 1e3))]
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("CHROMIUM")},
                   "CHROMIUM": CHROMIUM}
            cwd = WEB
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        self.hello = self._read()
        if not self.hello.get("ok"):
            raise RuntimeError(f"{self.kind}: {self.hello.get('error')}\n"
                               f"{self.hello.get('stack', '')}")
        t = self.hello.get("threads")
        if self.kind == "web":
            self.note = (f"{t} wasm thread{'s' * (t != 1)}" + ("" if n else " (its default)") +
                         "; memory: the PSS of the browser's processes")

    def _read(self) -> dict[str, Any]:
        """The next reply line; other lines on the process's stdout go to the log."""
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        while True:
            if not sel.select(TIMEOUT):
                self.proc.kill()
                raise RuntimeError(f"{self.kind}: no answer within {TIMEOUT:.0f} s")
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                raise RuntimeError(f"the {self.kind} process exited with code {code} (its "
                                   "messages are in this peer's log)")
            try:
                reply = json.loads(line)
            except ValueError:
                reply = None
            if isinstance(reply, dict) and "ok" in reply:
                return reply
            print(line, end="", file=sys.stderr)

    def _ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if not reply.get("ok"):
            raise RuntimeError(f"{self.kind}: {reply.get('error')}\n{reply.get('stack', '')}")
        return reply

    def prepare(self, batches: list[tuple[Any, np.ndarray]]) -> list[Any]:
        return list(range(len(batches)))  # the JavaScript side holds the batches

    def _train(self, indices: list[int]) -> dict[str, Any]:
        return self._ask(cmd="train", batches=indices)

    def step(self, batch: Any) -> float:
        return float(self._train([batch])["losses"][0])

    def steps(self, batches: list[Any]) -> list[float]:
        return [float(v) for v in self._train(batches)["losses"]]

    def timed_steps(self, batches: list[Any]) -> float:
        return float(self._train(batches)["ms"]) / len(batches)

    def _memory(self, reply: dict[str, Any]) -> float:
        return float(reply["peak_rss_mb"] if self.kind == "node" else reply["pss_mb"] or 0.0)

    def rss_mb(self) -> float:
        return self._memory(self._ask(cmd="stats")) if self.proc else 0.0

    def cold(self, spec: dict[str, Any], outdir: str, batches: list[tuple[Any, np.ndarray]],
             steps: int, batch: int | None) -> dict[str, Any] | None:
        if batch:
            raise NotImplementedError("the JavaScript peers train the exported batches only")
        self.load(spec, outdir)
        at_load = self.hello["rss_mb"] if self.kind == "node" else self.hello["pss_mb"]
        first = self._train([0])
        self._train([(i + 1) % len(batches) for i in range(steps)])
        return {"import_s": self.hello["import_ms"] / 1e3,
                "cold_ms": self.hello["load_ms"] + first["ms"], "first_loss": first["losses"][0],
                "rss_mb": self.rss_mb(), "load_rss_mb": at_load,
                "load_peak_mb": self._memory(self.hello), "train_peak_mb": None,
                "saved_activation_mb": None, "batch": None, "heavy_modules": []}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self._ask(cmd="quit")
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (RuntimeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.proc = None
        if self.server is not None:
            self.server.close()
            self.server = None
