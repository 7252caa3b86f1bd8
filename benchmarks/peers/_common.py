"""What every benchmark worker shares: the command loop, the data, the measurements.

A worker is one process running one system (edgetrain, PyTorch, onnxruntime-training, TFLite)
in that system's own interpreter. It imports only the standard library, numpy and its system,
so this module uses nothing else. Two modes:

``serve``  builds the system's model from ``spec.json`` + ``data.npz`` (written once by
           ``run.py``), writes the model file(s), loads them back as a device would, and then
           answers JSON commands on stdin, one per line, while the orchestrator interleaves the
           workers: ``losses`` (the first steps, from the initial weights), ``run`` (a timed block
           of steps), ``stats`` (peak RSS), ``quit``.
``cold``   a fresh process that loads the written file(s) and trains: import time, cold start
           (load file → first step done), then a few more steps, and its peak RSS. For
           edgetrain this is the device process: numpy + onnxruntime + edgetrain only.

Protocol replies go to a private copy of the original stdout; the process's own fd 1 is sent
to stderr so that a library printing to stdout cannot corrupt the protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

# Modules that a device process must not pull in; cold runs report which ones are loaded.
HEAVY = ("torch", "tensorflow", "keras", "tf_keras", "matplotlib", "scipy", "sympy", "pandas",
         "onnxruntime.training", "jax")


def threads() -> int | None:
    """Intra-op threads forced on every system (run.py --threads), or None: the system's own
    defaults (onnxruntime pins one thread per physical core, which an explicit count does not).
    """
    value = os.environ.get("EDGETRAIN_BENCH_THREADS", "")
    return int(value) if value else None


def peak_rss_mb() -> float:
    """Peak resident set size of this process image, in MiB.

    VmHWM, not ru_maxrss: ru_maxrss survives exec, so a worker forked from a big
    orchestrator would report the orchestrator's peak instead of its own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_inputs(workdir: str) -> tuple[dict[str, Any], dict[str, np.ndarray],
                                       list[tuple[np.ndarray, np.ndarray]]]:
    """spec, initial weights (by ONNX initializer name), batches."""
    with open(os.path.join(workdir, "spec.json")) as f:
        spec = json.load(f)
    with np.load(os.path.join(workdir, "data.npz")) as z:
        weights = {k[2:]: z[k] for k in z.files if k.startswith("w:")}
        n = sum(1 for k in z.files if k.startswith("x:"))
        batches = [(z[f"x:{i}"], z[f"y:{i}"]) for i in range(n)]
    return spec, weights, batches


def file_bytes(paths: list[str]) -> int:
    total = 0
    for p in paths:
        if os.path.isdir(p):
            for root, _, files in os.walk(p):
                total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        else:
            total += os.path.getsize(p)
    return total


class Peer:
    """One system. Subclasses implement the four methods below."""

    name = "peer"

    def import_runtime(self) -> str:
        """Import the system's runtime (timed separately); returns its version."""
        raise NotImplementedError

    def build(self, spec: dict[str, Any], weights: dict[str, np.ndarray],
              batches: list[tuple[np.ndarray, np.ndarray]], outdir: str) -> list[str]:
        """Build the model with the given weights and write its file(s); returns the paths."""
        raise NotImplementedError

    def load(self, spec: dict[str, Any], outdir: str) -> None:
        """Load the written file(s) as a device would; after this, ``step`` trains."""
        raise NotImplementedError

    def prepare(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[Any]:
        """Batches in the system's own form (done once, outside the timed steps)."""
        return list(batches)

    def step(self, batch: Any) -> float:
        """One training step; returns the loss."""
        raise NotImplementedError


def _reply(out: Any, obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


def main(make_peer: Callable[[], Peer]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["serve", "cold"])
    ap.add_argument("--workdir", required=True, help="folder with spec.json and data.npz")
    ap.add_argument("--outdir", required=True, help="this peer's folder for its model files")
    ap.add_argument("--steps", type=int, default=20, help="cold: steps after the first")
    args = ap.parse_args()
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    peer = make_peer()
    try:
        t0 = time.perf_counter()
        version = peer.import_runtime()
        import_s = time.perf_counter() - t0
        spec, weights, batches = load_inputs(args.workdir)
        os.makedirs(args.outdir, exist_ok=True)
        if args.mode == "cold":
            _cold(peer, spec, batches, args, proto, version, import_s)
            return
        t0 = time.perf_counter()
        files = peer.build(spec, weights, batches, args.outdir)
        build_s = time.perf_counter() - t0
        peer.load(spec, args.outdir)
        data = peer.prepare(batches)
    except Exception as e:  # a peer that cannot run is a result, not a crash
        _reply(proto, {"ok": False, "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()[-4000:]})
        return
    _reply(proto, {"ok": True, "version": version, "import_s": import_s, "build_s": build_s,
                   "files": [os.path.basename(p) for p in files],
                   "file_bytes": file_bytes(files), "rss_mb": peak_rss_mb()})
    i = 0
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "losses":
                losses = []
                for _ in range(cmd["n"]):
                    losses.append(peer.step(data[i % len(data)]))
                    i += 1
                _reply(proto, {"ok": True, "losses": losses})
            elif cmd["cmd"] == "run":
                n = cmd["n"]
                t0 = time.perf_counter()
                for _ in range(n):
                    peer.step(data[i % len(data)])
                    i += 1
                ms = (time.perf_counter() - t0) * 1e3 / n
                _reply(proto, {"ok": True, "ms_per_step": ms})
            elif cmd["cmd"] == "stats":
                _reply(proto, {"ok": True, "rss_mb": peak_rss_mb()})
            elif cmd["cmd"] == "quit":
                _reply(proto, {"ok": True})
                return
            else:
                _reply(proto, {"ok": False, "error": f"unknown command {cmd['cmd']!r}"})
        except Exception as e:
            _reply(proto, {"ok": False, "error": f"{type(e).__name__}: {e}",
                           "traceback": traceback.format_exc()[-4000:]})


def _cold(peer: Peer, spec: dict[str, Any], batches: list[tuple[np.ndarray, np.ndarray]],
          args: argparse.Namespace, proto: Any, version: str, import_s: float) -> None:
    try:
        t0 = time.perf_counter()
        peer.load(spec, args.outdir)
        data = peer.prepare(batches[:1])
        loss0 = peer.step(data[0])
        cold_ms = (time.perf_counter() - t0) * 1e3
        data = peer.prepare(batches)
        for i in range(args.steps):
            peer.step(data[(i + 1) % len(data)])
    except Exception as e:
        _reply(proto, {"ok": False, "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()[-4000:]})
        return
    _reply(proto, {"ok": True, "version": version, "import_s": import_s, "cold_ms": cold_ms,
                   "first_loss": loss0, "rss_mb": peak_rss_mb(),
                   "heavy_modules": sorted(m for m in HEAVY if m in sys.modules)})
