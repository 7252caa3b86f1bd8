"""The JavaScript columns of the runtime conformance matrix (tests/test_runtimes.py).

Both train the ``edgetrain export-web`` folder of a matrix model with the npm package in ``js/``:

* onnxruntime-node: ``node js/scripts/matrix-node.mjs SITE RUN`` (the package's Node entry,
  onnxruntime-node from ``js/node_modules``);
* onnxruntime-web (wasm): the export served on 127.0.0.1 with ``js/scripts/matrix.html`` and its
  modules copied in, opened in Debian's Chromium by ``web/run-page.mjs`` (playwright-core); the
  page uses the export's ``edgetrain.js`` (the package's browser entry) with the vendored
  onnxruntime-web.

One process (one node, one browser) runs all jobs of a call: Python writes ``RUN/plan.json``
(the jobs, each a list of batch indices, the checkpoint to restore first, whether to save after)
and ``RUN/batches.bin`` (every distinct batch once, each input's array in C order at a byte
offset), and the checkpoints to restore; the jobs' losses and saved checkpoints come back
(files from node, base64 through the page's result from the browser).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetrain.web import pack_batches

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "js"
WEB = ROOT / "web"
SCRIPTS = JS / "scripts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
#: What the browser column copies into the export folder next to the package's own files.
PAGE_FILES = ("matrix.html", "matrix-page.mjs", "matrix-jobs.mjs")


@dataclass(frozen=True)
class Job:
    """Train ``steps`` steps on batches ``start, start + 1, …`` (``MatrixModel.batch``) from the
    file's initial state, after restoring ``restore`` if given; save to ``save`` if given."""

    steps: int
    start: int = 0
    restore: str | None = None
    save: str | None = None


def missing_node() -> list[str]:
    """What the onnxruntime-node column needs and this machine lacks."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node (Debian package nodejs)")
    if not (JS / "node_modules" / "onnxruntime-node").is_dir():
        missing.append("onnxruntime-node (ONNXRUNTIME_NODE_INSTALL=skip npm ci --prefix js)")
    if not (WEB / "node_modules" / "onnxruntime-web" / "dist").is_dir():  # export-web vendors it
        missing.append("onnxruntime-web (npm ci --prefix web)")
    return missing


def missing_wasm() -> list[str]:
    """What the onnxruntime-web (wasm) column needs and this machine lacks."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node (Debian package nodejs)")
    if not (WEB / "node_modules" / "onnxruntime-web" / "dist").is_dir():
        missing.append("onnxruntime-web (npm ci --prefix web)")
    if not (WEB / "node_modules" / "playwright-core").is_dir():
        missing.append("playwright-core (npm ci --prefix web)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (Debian package chromium)")
    return missing


class Exports:
    """One ``export-web`` folder per matrix model, made on first use under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._sites: dict[str, Path] = {}
        self._runs = itertools.count()

    def site(self, mm: Any) -> Path:
        if mm.name not in self._sites:
            from edgetrain.web import export_web

            site = export_web(mm.proto, self.root / mm.name / "site", webgpu=False,
                              dataset=None)
            for name in PAGE_FILES:
                shutil.copyfile(SCRIPTS / name, site / name)
            self._sites[mm.name] = site
        return self._sites[mm.name]

    def run_dir(self, mm: Any) -> tuple[str, Path]:
        """A new folder inside the model's export for one run's plan, batches and checkpoints."""
        name = f"run-{next(self._runs)}"
        where = self.site(mm) / name
        where.mkdir()
        return name, where


def write_plan(mm: Any, jobs: Sequence[Job], run: Path) -> None:
    """``run/plan.json`` and ``run/batches.bin`` for ``jobs``, and their checkpoints to restore."""
    order: list[int] = []  # ids of mm.batches' dicts, in the order written
    index: dict[int, int] = {}
    plan_jobs = []
    for n, job in enumerate(jobs):
        steps = []
        for s in range(job.start, job.start + job.steps):
            b = mm.batch(s)
            if id(b) not in index:
                index[id(b)] = len(order)
                order.append(id(b))
            steps.append(index[id(b)])
        restore = None
        if job.restore:
            restore = f"restore-{n}.safetensors"
            shutil.copyfile(job.restore, run / restore)
        plan_jobs.append({"batches": steps, "restore": restore, "save": job.save is not None})
    by_id = {id(b): b for b in mm.batches}
    blob, batches = pack_batches([by_id[i] for i in order])
    (run / "batches.bin").write_bytes(blob)
    (run / "plan.json").write_text(json.dumps({"batches": batches, "jobs": plan_jobs}))


def _check(result: dict[str, Any], jobs: Sequence[Job]) -> list[list[float]]:
    assert len(result["jobs"]) == len(jobs)
    for job, got in zip(jobs, result["jobs"]):
        # Every step counted (the commit rule), from the restored counter on.
        assert got["step"] == got["step_before"] + job.steps, got
        assert len(got["losses"]) == job.steps
    return [[float(v) for v in got["losses"]] for got in result["jobs"]]


def node_train(exports: Exports, mm: Any, jobs: Sequence[Job]) -> list[list[float]]:
    """The jobs in one ``node`` process (onnxruntime-node, CPU)."""
    _, run = exports.run_dir(mm)
    write_plan(mm, jobs, run)
    proc = subprocess.run(["node", str(SCRIPTS / "matrix-node.mjs"), str(exports.site(mm)),
                           str(run)], cwd=JS, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"matrix-node.mjs failed:\n{proc.stderr[-4000:]}"
    result = json.loads((run / "result.json").read_text())
    assert result["providers"] == ["cpu"], result["providers"]
    for n, (job, got) in enumerate(zip(jobs, result["jobs"])):
        if job.save:
            assert got["checkpoint"] == str(run / f"job-{n}.safetensors")
            shutil.copyfile(got["checkpoint"], job.save)
    return _check(result, jobs)


def wasm_train(exports: Exports, mm: Any, jobs: Sequence[Job]) -> list[list[float]]:
    """The jobs in one headless Chromium page (onnxruntime-web, wasm)."""
    from edgetrain.web import start_server

    name, run = exports.run_dir(mm)
    write_plan(mm, jobs, run)
    with start_server(exports.site(mm)) as server:
        proc = subprocess.run(["node", str(WEB / "run-page.mjs"),
                               f"{server.url}matrix.html?run={name}", str(run / "page.png"),
                               "300000"], capture_output=True, text=True, timeout=600,
                              env={**{k: v for k, v in os.environ.items()
                                      if not k.startswith(("RUN_PAGE_", "CHROMIUM"))},
                                   "CHROMIUM": CHROMIUM})
    assert proc.returncode == 0, f"the page run failed:\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(proc.stdout)
    assert result.get("ok"), f"the page failed: {result.get('error')}\n{result.get('stack')}"
    assert result["backend"] == "wasm" and result["providers"] == ["wasm"], result["providers"]
    assert result["crossOriginIsolated"] and result["csp_violations"] == []
    for job, got in zip(jobs, result["jobs"]):
        if job.save:
            Path(job.save).write_bytes(base64.b64decode(got.pop("checkpoint")))
    (run / "result.json").write_text(json.dumps(result))  # as node leaves it: for a look later
    return _check(result, jobs)
