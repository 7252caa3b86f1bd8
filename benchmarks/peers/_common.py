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
           (load file → first step done), then a few more steps, and its memory: peak RSS
           of the whole process, RSS after loading (before the first step), and the peak RSS
           while training alone (the high-water mark is reset after loading). ``--batch``
           trains on the first rows of each batch only: run.py compares the training peaks at
           two batch sizes to isolate the memory that grows with the batch (activations).
           For edgetrain this is the device process: numpy + onnxruntime + edgetrain only.

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


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process image, in MiB.

    VmHWM, not ru_maxrss: ru_maxrss survives exec, so a worker forked from a big
    orchestrator would report the orchestrator's peak instead of its own.
    """
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float | None:
    """Current resident set size, in MiB."""
    return _status_mb("VmRSS")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0), so that a later peak_rss_mb() is the
    peak since now; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rows(x: Any, n: int) -> Any:
    """The first ``n`` rows of a batch's inputs (an array or a dict of named arrays)."""
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def load_inputs(workdir: str) -> tuple[dict[str, Any], dict[str, np.ndarray],
                                       list[tuple[Any, np.ndarray]]]:
    """spec, initial weights (by ONNX initializer name), batches.

    A batch's inputs are one array (``x:<i>``, the model's only input) or, for models with
    several inputs, a dict by input name (``x:<i>:<name>``, spec["inputs"] gives the order).
    """
    with open(os.path.join(workdir, "spec.json")) as f:
        spec = json.load(f)
    with np.load(os.path.join(workdir, "data.npz")) as z:
        weights = {k[2:]: z[k] for k in z.files if k.startswith("w:")}
        n = sum(1 for k in z.files if k.startswith("y:"))
        names = spec.get("inputs") or ["x"]
        batches = [(z[f"x:{i}"] if f"x:{i}" in z.files else
                    {name: z[f"x:{i}:{name}"] for name in names}, z[f"y:{i}"])
                   for i in range(n)]
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
    note: str | None = None  # how this system's run departs from the workload, if it does

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

    def steps(self, batches: list[Any]) -> list[float]:
        """Consecutive training steps, one per batch; returns their losses. A system that can
        run several steps per call (edgetrain's ``train_steps``) overrides this."""
        return [self.step(b) for b in batches]

    def timed_steps(self, batches: list[Any]) -> float:
        """Milliseconds per step of consecutive training steps (``steps``), timed here; a
        system in another process (the JavaScript peers) times them itself."""
        t0 = time.perf_counter()
        self.steps(batches)
        return (time.perf_counter() - t0) * 1e3 / len(batches)

    def rss_mb(self) -> float:
        """MiB of memory the system's process holds at its peak (this process's VmHWM)."""
        return peak_rss_mb()

    def cold(self, spec: dict[str, Any], outdir: str, batches: list[tuple[Any, np.ndarray]],
             steps: int, batch: int | None) -> dict[str, Any] | None:
        """The ``cold`` mode's measurements taken by the system itself (the keys ``_cold``
        replies with), or None: this process measures them (``_cold``)."""
        return None

    def close(self) -> None:
        """Release what ``load`` started (another process, a server)."""

    def saved_activation_mb(self, batch: Any) -> float | None:
        """MiB of the activations the system keeps for the backward of one forward pass on
        ``batch`` (measured by the system itself), or None where it cannot tell."""
        return None

    def float64_losses(self, data: list[Any], n: int) -> list[float] | None:
        """The first ``n`` losses of the same training in float64, from the current (initial)
        weights, leaving this system's own state alone; None where not supported. The
        reference system's float32-vs-float64 gap measures how far rounding alone moves the
        losses of a workload (run.py's agreement test)."""
        return None


def _reply(out: Any, obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


def main(make_peer: Callable[[], Peer]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["serve", "cold"])
    ap.add_argument("--workdir", required=True, help="folder with spec.json and data.npz")
    ap.add_argument("--outdir", required=True, help="this peer's folder for its model files")
    ap.add_argument("--steps", type=int, default=20, help="cold: steps after the first")
    ap.add_argument("--batch", type=int, default=None,
                    help="cold: train on the first BATCH rows of each batch")
    args = ap.parse_args()
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    peer = make_peer()
    try:
        _run(peer, args, proto)
    finally:
        peer.close()


def _run(peer: Peer, args: argparse.Namespace, proto: Any) -> None:
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
                   "file_bytes": file_bytes(files), "rss_mb": peer.rss_mb(),
                   "note": peer.note})
    i = 0
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "losses":
                ref64 = peer.float64_losses(data, cmd["n"]) if cmd.get("float64") else None
                losses = peer.steps([data[(i + j) % len(data)] for j in range(cmd["n"])])
                i += cmd["n"]
                _reply(proto, {"ok": True, "losses": losses, "losses_float64": ref64})
            elif cmd["cmd"] == "run":
                n = cmd["n"]
                block = [data[(i + j) % len(data)] for j in range(n)]
                ms = peer.timed_steps(block)
                i += n
                _reply(proto, {"ok": True, "ms_per_step": ms})
            elif cmd["cmd"] == "stats":
                _reply(proto, {"ok": True, "rss_mb": peer.rss_mb()})
            elif cmd["cmd"] == "quit":
                _reply(proto, {"ok": True})
                return
            else:
                _reply(proto, {"ok": False, "error": f"unknown command {cmd['cmd']!r}"})
        except Exception as e:
            _reply(proto, {"ok": False, "error": f"{type(e).__name__}: {e}",
                           "traceback": traceback.format_exc()[-4000:]})


def _cold(peer: Peer, spec: dict[str, Any], batches: list[tuple[Any, np.ndarray]],
          args: argparse.Namespace, proto: Any, version: str, import_s: float) -> None:
    if args.batch:
        batches = [(rows(x, args.batch), y[:args.batch]) for x, y in batches]
    try:
        own = peer.cold(spec, args.outdir, batches, args.steps, args.batch)
        if own is not None:
            _reply(proto, {"ok": True, "version": version, **own})
            return
        t0 = time.perf_counter()
        peer.load(spec, args.outdir)
        data = peer.prepare(batches[:1])
        load_rss, load_peak = rss_mb(), peak_rss_mb()
        reset = reset_peak_rss()
        loss0 = peer.step(data[0])
        cold_ms = (time.perf_counter() - t0) * 1e3
        data = peer.prepare(batches)
        for i in range(args.steps):
            peer.step(data[(i + 1) % len(data)])
        train_peak = peak_rss_mb()
        saved = peer.saved_activation_mb(data[0])  # after the peaks: may allocate
    except Exception as e:
        _reply(proto, {"ok": False, "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()[-4000:]})
        return
    _reply(proto, {"ok": True, "version": version, "import_s": import_s, "cold_ms": cold_ms,
                   "first_loss": loss0, "rss_mb": max(load_peak, train_peak),
                   "load_rss_mb": load_rss, "load_peak_mb": load_peak,
                   "train_peak_mb": train_peak if reset else None,
                   "saved_activation_mb": saved,
                   "batch": args.batch or None,
                   "heavy_modules": sorted(m for m in HEAVY if m in sys.modules)})
