"""Side-by-side training-step benchmark: edgetrain against its peers, interleaved in one run.

    bash benchmarks/setup_peers.sh && python benchmarks/run.py [--workloads W1 W2 W3 W4]

For each workload (defined once in ``edgetrain.bench``) this writes the inference model, the
initial weights and the batches to ``<out>/work/<W>/`` once; every peer rebuilds the same network
from them in its own worker process, in its own virtual environment (benchmarks/.venvs/, made by
setup_peers.sh):

- edgetrain: the compiled trainable file on stock onnxruntime (this interpreter)
- pytorch: PyTorch eager (torch==2.13.0)
- ortt: onnxruntime-training 1.19.2 (``generate_artifacts`` + ``training.api``)
- tflite: the seed tutorial's TFLite path (TF 2.18.1 + tf_keras, Flex delegate)

The orchestrator checks that the first losses agree, warms every worker up, then asks each
worker in turn (rotating the order) for a timed block of steps, several repeats, and reports
medians. Afterwards each peer's model file is loaded by a fresh process (cold start: load file
→ first step done, and that process's peak RSS; for edgetrain that process imports only numpy,
onnxruntime and edgetrain). The machine's sgemm peak (numpy float32 matmul, 2 threads) is
measured in the same run. A peer that fails is recorded with its error.

Outputs in ``--out`` (default benchmarks/results/latest): results.json, results.md, and one
PNG chart per workload.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
VENVS = os.path.join(HERE, ".venvs")
PEERS = ("edgetrain", "iree", "openvino", "tract", "pytorch", "ortt", "tflite")
#: The same edgetrain file on other runtimes (edgetrain backends, this interpreter).
NATIVE = ("iree", "openvino", "tract")
PEER_LABEL = {"edgetrain": "edgetrain (onnxruntime)", "iree": "edgetrain on IREE",
              "openvino": "edgetrain on OpenVINO", "tract": "edgetrain on tract",
              "pytorch": "PyTorch eager", "ortt": "onnxruntime-training",
              "tflite": "TFLite + Flex (tutorial)"}
# Which architectures each peer can build; others are reported as "not applicable".
PEER_ARCHS = {"edgetrain": {"mlp", "cnn", "efficientnet_lite0"},
              **{p: {"mlp", "cnn", "efficientnet_lite0"} for p in NATIVE},
              "pytorch": {"mlp", "cnn", "efficientnet_lite0"},
              "ortt": {"mlp", "cnn", "efficientnet_lite0"},
              "tflite": {"mlp", "cnn"}}
# Steps per timed block, chosen so that a block takes ~0.1-1 s on the slowest peer.
BLOCK_STEPS = {"W1": 100, "W2": 15, "W3": 100, "W4": 3}
WARMUP_STEPS = {"W1": 30, "W2": 10, "W3": 30, "W4": 2}
# Install sets measured for the footprint table: (label, interpreter key, distributions).
DEVICE_DISTS = ["numpy", "onnxruntime", "onnx", "safetensors", "tqdm", "edgetrain"]
# onnxruntime-training's Python package imports torch (onnxruntime/training/__init__.py), so
# torch counts toward its install although its metadata does not require it.
PEER_DISTS = {"iree": ["iree-base-runtime", *DEVICE_DISTS], "openvino": ["openvino", *DEVICE_DISTS],
              "tract": ["tract", *DEVICE_DISTS],
              "pytorch": ["torch", "numpy"],
              "ortt": ["onnxruntime-training", "numpy", "onnx", "torch"],
              "tflite": ["tensorflow-cpu", "tf_keras"]}
DOCS_BEGIN, DOCS_END = "<!-- results:begin -->", "<!-- results:end -->"
THREADS: int | None = None  # intra-op threads forced on every system (--threads); None: defaults
LOSS_RTOL = 1e-4  # losses of the first steps agree to this, relative to max(1, |loss|)


def peer_python(peer: str) -> str | None:
    """The interpreter a peer runs in; None when its venv has not been set up."""
    if peer == "edgetrain" or peer in NATIVE:
        return sys.executable
    venv = {"pytorch": "torch", "ortt": "ortt", "tflite": "tflite"}[peer]
    py = os.path.join(VENVS, venv, "bin", "python")
    return py if os.path.exists(py) else None


# -- sgemm peak ---------------------------------------------------------------------------------

SGEMM = r"""
import json, time, numpy as np
best = {}
for n, reps in ((1024, 20), (2048, 8), (4096, 3)):
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    a @ b
    t = min((lambda t0: (a @ b, time.perf_counter() - t0)[1])(time.perf_counter())
            for _ in range(reps))
    best[n] = 2 * n ** 3 / t / 1e9
print(json.dumps(best))
"""


def sgemm_peak() -> dict[str, float]:
    """GFLOP/s of numpy float32 matmul on the benchmark's threads (best of several sizes)."""
    n = str(THREADS or os.cpu_count() or 1)
    env = dict(os.environ, OPENBLAS_NUM_THREADS=n, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
    out = subprocess.run([sys.executable, "-c", SGEMM], env=env, capture_output=True, text=True,
                         check=True)
    return {str(k): v for k, v in json.loads(out.stdout).items()}


# -- workers ------------------------------------------------------------------------------------

class WorkerError(RuntimeError):
    pass


@dataclass
class Worker:
    """A serving worker process; ``ask`` sends one command and waits for its reply."""

    peer: str
    proc: subprocess.Popen[str]
    hello: dict[str, Any] = field(default_factory=dict)
    log: str = ""

    @classmethod
    def start(cls, peer: str, python: str, workdir: str, outdir: str, log: str,
              timeout: float) -> Worker:
        script = os.path.join(HERE, "peers", f"{'torch' if peer == 'pytorch' else peer}"
                              "_worker.py")
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2",
                   EDGETRAIN_BENCH_THREADS=str(THREADS or ""))
        with open(log, "w") as errf:
            proc = subprocess.Popen([python, script, "serve", "--workdir", workdir,
                                     "--outdir", outdir], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=errf, text=True, env=env)
        w = cls(peer, proc, log=log)
        w.hello = w._read(timeout)
        return w

    def _read(self, timeout: float) -> dict[str, Any]:
        import selectors

        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.proc.kill()
            raise WorkerError(f"no answer within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise WorkerError(f"worker exited with code {self.proc.returncode}: "
                              f"{_tail(self.log)}")
        return json.loads(line)

    def ask(self, timeout: float = 600.0, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        reply = self._read(timeout)
        if not reply.get("ok"):
            raise WorkerError(reply.get("error", "failed"))
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask(timeout=30, cmd="quit")
            except (WorkerError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _tail(path: str, n: int = 600) -> str:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-4:])[-n:]


def cold_start(peer: str, python: str, workdir: str, outdir: str, steps: int, log: str,
               timeout: float) -> dict[str, Any]:
    script = os.path.join(HERE, "peers", f"{'torch' if peer == 'pytorch' else peer}_worker.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", EDGETRAIN_BENCH_THREADS=str(THREADS or ""))
    with open(log, "a") as errf:
        out = subprocess.run([python, script, "cold", "--workdir", workdir, "--outdir", outdir,
                              "--steps", str(steps)], capture_output=False,
                             stdout=subprocess.PIPE, stderr=errf, text=True, env=env,
                             timeout=timeout)
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    if not lines:
        return {"ok": False, "error": f"exit code {out.returncode}: {_tail(log)}"}
    return json.loads(lines[-1])


# -- one workload -------------------------------------------------------------------------------

def write_workload(w: Any, workdir: str, seed: int) -> None:
    os.makedirs(workdir, exist_ok=True)
    onnx.save(w.model, os.path.join(workdir, "model.onnx"))
    arrays = {f"w:{k}": v for k, v in w.weights.items()}
    for i, (x, y) in enumerate(w.batches):
        arrays[f"x:{i}"] = x
        arrays[f"y:{i}"] = y
    np.savez(os.path.join(workdir, "data.npz"), **arrays)
    with open(os.path.join(workdir, "spec.json"), "w") as f:
        json.dump({"workload": w.name, "arch": w.arch, "optimizer": w.optimizer,
                   "trainable": w.trainable, "batch": w.batch, "seed": seed}, f, indent=2)


def run_workload(name: str, peers: list[str], args: argparse.Namespace, out: str
                 ) -> dict[str, Any]:
    from edgetrain.bench import WorkloadUnavailable, workload

    res: dict[str, Any] = {"workload": name, "peers": {}}
    print(f"\n== {name}", flush=True)
    try:
        w = workload(name, seed=args.seed)
    except WorkloadUnavailable as e:
        res["unavailable"] = str(e)
        print(f"   unavailable: {e}")
        return res
    res.update(title=w.title, flops_per_step=w.flops, batch=w.batch, optimizer=w.optimizer)
    workdir = os.path.join(out, "work", name)
    write_workload(w, workdir, args.seed)
    block = max(1, round(BLOCK_STEPS.get(name, 20) * args.scale))
    warm = max(1, round(WARMUP_STEPS.get(name, 5) * args.scale))
    cold_steps = min(args.cold_steps, 2 * block)
    cold_runs = args.cold_runs if block >= 10 else 1  # slow workloads: one fresh process
    res.update(block_steps=block, warmup_steps=warm, repeats=args.repeats, cold_steps=cold_steps)

    workers: dict[str, Worker] = {}
    for peer in peers:
        r: dict[str, Any] = {"system": PEER_LABEL[peer]}
        res["peers"][peer] = r
        if w.arch["kind"] not in PEER_ARCHS[peer]:
            r["error"] = "not applicable: this peer has no port of the model"
            continue
        py = peer_python(peer)
        if py is None:
            r["error"] = "not set up: run bash benchmarks/setup_peers.sh"
            continue
        log = os.path.join(workdir, f"{peer}.log")
        t0 = time.perf_counter()
        try:
            wk = Worker.start(peer, py, workdir, os.path.join(workdir, peer), log,
                              args.timeout)
        except (WorkerError, OSError) as e:
            r["error"] = str(e)
            continue
        if not wk.hello.get("ok"):
            r["error"] = wk.hello.get("error", "failed")
            r["traceback"] = wk.hello.get("traceback")
            wk.close()
            print(f"   {peer}: FAILED {r['error'][:200]}", flush=True)
            continue
        r.update({k: wk.hello[k] for k in ("version", "import_s", "build_s", "files",
                                           "file_bytes")})
        print(f"   {peer}: ready in {time.perf_counter() - t0:.1f} s ({wk.hello['version']})",
              flush=True)
        workers[peer] = wk

    def drop(peer: str, e: Exception) -> None:
        res["peers"][peer]["error"] = str(e)
        print(f"   {peer}: FAILED {e}", flush=True)
        workers.pop(peer).close()

    try:
        # Same weights, same batches: the first losses must agree.
        for peer in list(workers):
            try:
                res["peers"][peer]["losses"] = workers[peer].ask(cmd="losses",
                                                                 n=args.loss_steps)["losses"]
            except WorkerError as e:
                drop(peer, e)
        for peer in list(workers):
            try:
                workers[peer].ask(cmd="run", n=warm)
            except WorkerError as e:
                drop(peer, e)
        times: dict[str, list[float]] = {p: [] for p in workers}
        order = list(workers)
        for rep in range(args.repeats):
            rot = order[rep % len(order):] + order[:rep % len(order)] if order else []
            for peer in rot:
                if peer not in workers:
                    continue
                try:
                    times[peer].append(workers[peer].ask(cmd="run", n=block)["ms_per_step"])
                except WorkerError as e:
                    drop(peer, e)
        for peer in list(workers):
            r = res["peers"][peer]
            r["block_ms_per_step"] = times[peer]
            r["ms_per_step"] = statistics.median(times[peer])
            r["serve_rss_mb"] = workers[peer].ask(cmd="stats")["rss_mb"]
    finally:
        for wk in list(workers.values()):
            wk.close()

    # Cold start and device-process RSS: a fresh process per run, median of several.
    for peer, r in res["peers"].items():
        if "ms_per_step" not in r:
            continue
        colds = []
        for _ in range(cold_runs):
            c = cold_start(peer, peer_python(peer) or sys.executable, workdir,
                           os.path.join(workdir, peer), cold_steps,
                           os.path.join(workdir, f"{peer}.log"), args.timeout)
            if not c.get("ok"):
                r["cold_error"] = c.get("error")
                break
            colds.append(c)
        if colds:
            r["cold_ms"] = statistics.median(c["cold_ms"] for c in colds)
            r["cold_import_s"] = statistics.median(c["import_s"] for c in colds)
            r["process_rss_mb"] = max(c["rss_mb"] for c in colds)
            r["process_heavy_modules"] = colds[0]["heavy_modules"]
    _summarize(res)
    return res


def _summarize(res: dict[str, Any]) -> None:
    """Ratios to the fastest peer, GFLOP/s, loss agreement."""
    ok = {p: r for p, r in res["peers"].items() if "ms_per_step" in r}
    if not ok:
        return
    fastest = min(r["ms_per_step"] for r in ok.values())
    ref_peer = "pytorch" if "losses" in res["peers"].get("pytorch", {}) else next(
        (p for p, r in res["peers"].items() if "losses" in r), None)
    res["loss_reference"] = ref_peer
    for r in ok.values():
        r["ratio_to_fastest"] = r["ms_per_step"] / fastest
        r["gflops"] = res["flops_per_step"] / (r["ms_per_step"] * 1e-3) / 1e9
    for r in res["peers"].values():
        if ref_peer and "losses" in r:
            ref = res["peers"][ref_peer]["losses"]
            diffs = [abs(a - b) / max(1.0, abs(b)) for a, b in zip(r["losses"], ref)]
            r["loss_max_rel_diff"] = max(diffs)
            r["losses_agree"] = bool(max(diffs) <= LOSS_RTOL)


# -- footprint ----------------------------------------------------------------------------------

def footprint(peers: list[str]) -> dict[str, Any]:
    script = os.path.join(HERE, "peers", "_sizes.py")
    fp: dict[str, Any] = {}

    def measure(python: str, dists: list[str]) -> dict[str, Any]:
        out = subprocess.run([python, script, *dists], capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-300:]}

    fp["edgetrain (device install)"] = measure(sys.executable, DEVICE_DISTS)
    for peer in peers:
        py = peer_python(peer)
        if peer in PEER_DISTS and py:
            m = measure(py, PEER_DISTS[peer])
            venv = os.path.dirname(os.path.dirname(py))
            if os.path.isdir(venv) and venv.startswith(VENVS):
                m["venv_bytes"] = _du(venv)
                m["system_site_packages"] = _system_site(venv)
            fp[PEER_LABEL[peer]] = m
    return fp


#: The native libraries a device app links or loads to train an edgetrain file, per runtime
#: (package, file globs inside it): the runtime proper, not its Python bindings or tools.
#: onnxruntime: its C library. IREE: the runtime (VM, HAL, CPU drivers) is the extension
#: module; the compiler stays on the build machine. OpenVINO: core, CPU plugin, the ONNX front
#: end that reads the file, and TBB. tract: the one library of its Python package.
DEVICE_LIBS = {
    "onnxruntime": ("onnxruntime", ["capi/libonnxruntime.so*"]),
    "iree": ("iree", ["_runtime_libs/_runtime*.so"]),
    "openvino": ("openvino", ["libs/libopenvino.so.*", "libs/libopenvino_intel_cpu_plugin.so",
                              "libs/libopenvino_onnx_frontend.so.*", "libs/libtbb.so.*"]),
    "tract": ("tract", ["tract*.so"]),
}


def device_runtime_bytes() -> dict[str, dict[str, Any]]:
    """Bytes of each runtime's native libraries (``DEVICE_LIBS``) as installed here."""
    import glob
    import importlib.util

    out: dict[str, dict[str, Any]] = {}
    for name, (pkg, globs) in DEVICE_LIBS.items():
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            out[name] = {"error": "not installed"}
            continue
        root = next(iter(spec.submodule_search_locations))
        files = sorted({f for g in globs for f in glob.glob(os.path.join(root, g))
                        if not os.path.islink(f)})
        out[name] = {"files": [os.path.relpath(f, os.path.dirname(root)) for f in files],
                     "bytes": sum(os.path.getsize(f) for f in files)}
    return out


def _system_site(venv: str) -> bool:
    try:
        with open(os.path.join(venv, "pyvenv.cfg")) as f:
            return "include-system-site-packages = true" in f.read()
    except OSError:
        return False


def _du(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


# -- reporting ----------------------------------------------------------------------------------

def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _mb(b: float | None) -> str:
    return "–" if b is None else f"{b / 1e6:.2f} MB" if b < 1e8 else f"{b / 1e6:.0f} MB"


def _threads_text(threads: int | None) -> str:
    if threads:
        return f"every system forced to {threads} intra-op threads (`--threads`)"
    return ("every system with its own thread-pool defaults, which use every core: "
            "onnxruntime (edgetrain, onnxruntime-training) one intra-op thread per physical "
            "core, pinned; PyTorch one per physical core; TensorFlow one per logical core")


def markdown(report: dict[str, Any], images: str = "", level: int = 1) -> str:
    """The report as markdown; ``images`` prefixes chart paths, ``level`` is the title's."""
    peak = report["sgemm_peak_gflops"]
    h1, h2 = "#" * level, "#" * (level + 1)
    lines = [f"{h1} edgetrain benchmark ({report['date']})", "",
             f"Machine: {report['machine']}; {_threads_text(report['threads'])}. "
             f"sgemm peak (numpy float32 matmul, {report['threads'] or os.cpu_count()} threads, "
             f"measured in this run): **{peak:.0f} GFLOP/s**. Command: `{report['command']}`",
             "", "ms/step is the median over interleaved blocks; x fastest is the ratio to the "
             "fastest system of the same run; cold start = load the file + first step done, "
             "in a fresh process after imports (median of the fresh processes); process RSS = peak "
             "RSS of that fresh process after the first step and a few more (count per workload). "
             f"Losses: the first {report['loss_steps']} "
             f"steps against the reference system named per workload, max relative difference "
             f"(agree ≤ {LOSS_RTOL:g}). Load average (1 min) at start / end: "
             f"{report['loadavg'][0]:.1f} / {report['loadavg'][1]:.1f} on {os.cpu_count()} "
             "cores (the machine is shared; ratios within one run are what to compare).", ""]
    if max(report["loadavg"]) > (os.cpu_count() or 1):
        lines += [f"**Warning: the machine was busy with other work during this run (load "
                  f"above {os.cpu_count()}).** Step times are inflated and noisy, and thread "
                  "pools that spin-wait (PyTorch's OpenMP pool above all) can stall for a "
                  "scheduler time slice per parallel region; rerun on a quiet machine, or "
                  "compare with `--threads 1`.", ""]
    for res in report["workloads"]:
        lines.append(f"{h2} {res.get('title', res['workload'])}")
        lines.append("")
        if "unavailable" in res:
            lines += [f"unavailable: {res['unavailable']}", ""]
            continue
        lines.append(f"{res['flops_per_step'] / 1e6:.1f} MFLOP per step; blocks of "
                     f"{res['block_steps']} steps x {res['repeats']} repeats after "
                     f"{res['warmup_steps']} warm-up steps; {res['cold_steps']} steps after the "
                     f"cold start for RSS; losses compared with "
                     f"{PEER_LABEL.get(res.get('loss_reference') or '', '–')}.")
        lines.append("")
        lines.append("| system | ms/step | x fastest | GFLOP/s | % of peak | model file | "
                     "cold start | process RSS | import | losses |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in res["peers"].values():
            if "ms_per_step" not in r:
                err = r.get("error", "failed").splitlines()[0][:160].replace("|", "/")
                lines.append(f"| {r['system']} | {err} | | | | | | | | |")
                continue
            loss = ("–" if "loss_max_rel_diff" not in r else
                    f"{'agree' if r['losses_agree'] else 'DIFFER'} "
                    f"({r['loss_max_rel_diff']:.1e})")
            cold = f"{r['cold_ms']:.0f} ms" if "cold_ms" in r else r.get("cold_error", "–")
            rss = f"{r['process_rss_mb']:.0f} MB" if "process_rss_mb" in r else "–"
            imp = f"{r['cold_import_s']:.2f} s" if "cold_import_s" in r else "–"
            lines.append(
                f"| {r['system']} | {_ms(r['ms_per_step'])} | {r['ratio_to_fastest']:.2f} | "
                f"{r['gflops']:.1f} | {100 * r['gflops'] / peak:.1f} % | "
                f"{_mb(r['file_bytes'])} | {cold} | {rss} | {imp} | {loss} |")
        lines += ["", f"![{res['workload']}]({images}{res['workload']}.png)", ""]
    libs = report.get("device_runtimes") or {}
    if libs:
        lines += [f"{h2} Runtime a device ships", "",
                  "Native libraries that train the file on a device, as installed here "
                  "(x86-64 Linux wheels; see `DEVICE_LIBS` in benchmarks/run.py).", "",
                  "| runtime | MB | files |", "|---|---:|---|"]
        for name, m in libs.items():
            if "error" in m:
                lines.append(f"| {name} | {m['error']} | |")
            else:
                lines.append(f"| {name} | {m['bytes'] / 1e6:.1f} | "
                             f"{', '.join(m['files'])} |")
        lines.append("")
    lines += [f"{h2} Install footprint", "",
              "| install | named packages | with dependencies | whole venv |",
              "|---|---:|---:|---:|"]
    for label, m in report["footprint"].items():
        if "error" in m:
            lines.append(f"| {label} | {m['error'][:100]} | | |")
            continue
        names = ", ".join(m["packages"])
        venv = _mb(m.get("venv_bytes"))
        if m.get("system_site_packages"):
            venv += " + torch from the main interpreter"
        lines.append(f"| {label} ({names}) | {_mb(m['total_bytes'])} | "
                     f"{_mb(m['closure_bytes'])} | {venv} |")
    lines.append("")
    return "\n".join(lines)


def chart(res: dict[str, Any], path: str, peak: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(res["peers"].items())
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * len(items) + 1.6))
    names = [r["system"] for _, r in items]
    ms = [r.get("ms_per_step", 0.0) for _, r in items]
    rss = [r.get("process_rss_mb", 0.0) for _, r in items]
    colors = ["#d95f02" if p == "edgetrain" else "#7570b3" for p, _ in items]
    ax = axes[0]
    ax.barh(names, ms, color=colors)
    for i, (_, r) in enumerate(items):
        label = (f" {_ms(r['ms_per_step'])} ms  (x{r['ratio_to_fastest']:.2f}, "
                 f"{100 * r['gflops'] / peak:.0f} % peak)" if "ms_per_step" in r
                 else " " + r.get("error", "failed").splitlines()[0][:48])
        ax.text(ms[i], i, label, va="center", fontsize=8)
    ax.set_xlabel("ms per training step (median, lower is better)")
    ax.set_xlim(0, max(ms + [1e-3]) * 1.9)
    ax.invert_yaxis()
    ax = axes[1]
    ax.barh(names, rss, color=colors)
    for i, v in enumerate(rss):
        if v:
            ax.text(v, i, f" {v:.0f} MB", va="center", fontsize=8)
    ax.set_xlabel("peak RSS of a process that loads the file and trains (MB)")
    ax.set_xlim(0, max(rss + [1.0]) * 1.3)
    ax.invert_yaxis()
    ax.set_yticklabels([])
    fig.suptitle(res.get("title", res["workload"]))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render_only(args: argparse.Namespace) -> int:
    out = os.path.abspath(args.out)
    with open(os.path.join(out, "results.json")) as f:
        report = json.load(f)
    report["footprint"] = footprint(list(args.peers))
    report["device_runtimes"] = device_runtime_bytes()
    write_report(report, out, args.docs)
    return 0


def write_report(report: dict[str, Any], out: str, docs: str | None) -> str:
    """results.json, results.md, one chart per workload, and the docs section if asked."""
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    md = markdown(report)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    for res in report["workloads"]:
        if res.get("peers"):
            chart(res, os.path.join(out, f"{res['workload']}.png"), report["sgemm_peak_gflops"])
    if docs:
        update_docs(docs, report, out)
    return md


def update_docs(path: str, report: dict[str, Any], out: str) -> None:
    """Replace the results section of a markdown file (charts linked relative to it)."""
    with open(path) as f:
        text = f.read()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise SystemExit(f"{path} has no {DOCS_BEGIN} ... {DOCS_END} section")
    rel = os.path.relpath(out, os.path.dirname(os.path.abspath(path)))
    body = markdown(report, images=f"{rel}/", level=3)
    head, rest = text.split(DOCS_BEGIN, 1)
    tail = rest.split(DOCS_END, 1)[1]
    with open(path, "w") as f:
        f.write(f"{head}{DOCS_BEGIN}\n{body}\n{DOCS_END}{tail}")


# -- main ---------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", nargs="+", default=["W1", "W2", "W3", "W4"])
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks per peer")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the steps per block")
    ap.add_argument("--loss-steps", type=int, default=5, help="first steps whose losses agree")
    ap.add_argument("--cold-runs", type=int, default=3, help="fresh processes per peer")
    ap.add_argument("--cold-steps", type=int, default=20, help="steps after the first (RSS)")
    ap.add_argument("--threads", type=int, default=None,
                    help="force this many intra-op threads on every system (default: each "
                         "system's own thread-pool defaults, which use every core)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per worker command")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "latest"))
    ap.add_argument("--docs", default=None, metavar="MD",
                    help="also put the table into this markdown file, between the lines "
                         f"{DOCS_BEGIN} and {DOCS_END} (e.g. docs/benchmarks.md)")
    ap.add_argument("--render-only", action="store_true",
                    help="re-render results.md, charts and --docs from <out>/results.json "
                         "(footprint measured again), without running the workloads")
    args = ap.parse_args()
    if args.render_only:
        return render_only(args)
    global THREADS
    THREADS = args.threads
    out = os.path.abspath(args.out)
    if os.path.isdir(os.path.join(out, "work")):
        shutil.rmtree(os.path.join(out, "work"))
    os.makedirs(out, exist_ok=True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    peak_before = sgemm_peak()
    print(f"sgemm peak ({THREADS or os.cpu_count()} threads): "
          f"{max(peak_before.values()):.0f} GFLOP/s "
          f"{ {k: round(v) for k, v in peak_before.items()} }", flush=True)
    results = [run_workload(w.upper(), list(args.peers), args, out) for w in args.workloads]
    peak_after = sgemm_peak()
    peak = max(*peak_before.values(), *peak_after.values())
    cmd = "python benchmarks/run.py" + "".join(
        f" {a}" for a in sys.argv[1:])
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": cmd,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
        "sgemm_peak_gflops": peak, "sgemm_before": peak_before, "sgemm_after": peak_after,
        "threads": THREADS, "loss_steps": args.loss_steps, "cold_steps": args.cold_steps,
        "loss_rtol": LOSS_RTOL, "loadavg": [load_start, os.getloadavg()[0]],
        "workloads": results, "footprint": footprint(list(args.peers)),
        "device_runtimes": device_runtime_bytes(),
        "seconds": time.perf_counter() - t_start,
    }
    md = write_report(report, out, args.docs)
    print()
    print(md)
    print(f"wrote {out}/results.md, results.json and charts in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
