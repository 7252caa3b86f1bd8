"""Side-by-side training-step benchmark: edgetrain against its peers, interleaved in one run.

    bash benchmarks/setup_peers.sh && python benchmarks/run.py [--workloads W1 ... W8]

For each workload (defined once in ``edgetrain.bench``) this writes the inference model, the
initial weights and the batches to ``<out>/work/<W>/`` once; every peer rebuilds the same network
from them in its own worker process, in its own virtual environment (benchmarks/.venvs/, made by
setup_peers.sh):

- edgetrain: the compiled trainable file on stock onnxruntime (this interpreter)
- pytorch: PyTorch eager (torch==2.13.0)
- ortt: onnxruntime-training 1.19.2 (``generate_artifacts`` + ``training.api``)
- tflite: the seed tutorial's TFLite path (TF 2.18.1 + tf_keras, Flex delegate)
- iree, openvino, tract: the same compiled file on edgetrain's other backends (this interpreter)
- ort-node, ort-web: the same file's ``edgetrain export-web`` folder trained by the JS package
  (js/) on onnxruntime-node, or on onnxruntime-web's wasm build in headless Chromium
  (peers/_js.py; node, the npm packages and Chromium from .ci/web-setup.sh)

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
PEERS = ("edgetrain", "edgetrain_k", "iree", "openvino", "tract", "ort-node", "ort-web",
         "pytorch", "ortt", "tflite")
#: The same edgetrain file on other runtimes (edgetrain backends, this interpreter).
NATIVE = ("iree", "openvino", "tract")
#: The same file's web export trained by the JS package (js/) in node or in Chromium
#: (peers/_js.py; the tools come from .ci/web-setup.sh).
JS_PEERS = {"ort-node": "node", "ort-web": "web"}
#: edgetrain itself, however it runs the file: the goals compare the best of these to the others.
EDGETRAIN = ("edgetrain", "edgetrain_k", *NATIVE, *JS_PEERS)
PEER_LABEL = {"edgetrain": "edgetrain (onnxruntime)",
              "edgetrain_k": "edgetrain, K steps per call (train_steps)",
              "iree": "edgetrain on IREE",
              "openvino": "edgetrain on OpenVINO", "tract": "edgetrain on tract",
              "ort-node": "edgetrain JS on onnxruntime-node",
              "ort-web": "edgetrain JS on onnxruntime-web (wasm, Chromium)",
              "pytorch": "PyTorch eager", "ortt": "onnxruntime-training",
              "tflite": "TFLite + Flex (tutorial)"}
# Which architectures each peer runs; others are reported as "not applicable" (no port), or
# for the same file on other runtimes "not run" (not measured beyond these).
BIG = {"efficientnet_lite0", "mobilenet_v2", "resnet18", "minilm_lora"}
PEER_ARCHS = {"edgetrain": {"mlp", "cnn", *BIG},
              # train_steps is compiled into small models only (W2's CNN has none by default)
              "edgetrain_k": {"mlp"},
              **{p: {"mlp", "cnn", "efficientnet_lite0"} for p in (*NATIVE, *JS_PEERS)},
              "pytorch": {"mlp", "cnn", *BIG},
              "ortt": {"mlp", "cnn", *BIG},
              "tflite": {"mlp", "cnn"}}
# Steps per timed block, chosen so that a block takes ~0.1-1 s on the slowest peer.
BLOCK_STEPS = {"W1": 100, "W2": 15, "W3": 100, "W4": 3, "W5": 2, "W6": 2, "W7": 3, "W8": 2}
WARMUP_STEPS = {"W1": 30, "W2": 10, "W3": 30, "W4": 2, "W5": 2, "W6": 2, "W7": 2, "W8": 2}
# Workloads whose memory is a goal: a second fresh process per system at half the batch
# isolates the memory that grows with the batch (activations).
ACTIVATION_MEMORY = {"W5", "W6", "W7", "W8"}
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
LOSS_RTOL = 1e-4  # losses of the first steps agree to this, relative to max(1, |loss|) ...
# ... or to this multiple of the reference's own float32-vs-float64 gap, whichever is larger:
# in deep networks with batch statistics and ReLU, float32 rounding alone moves the losses of
# later steps by more than LOSS_RTOL (a pre-activation within rounding of zero flips its ReLU
# and, through the batch statistics, shifts its whole channel's gradient).
LOSS_NOISE_FACTOR = 2.0


def peer_python(peer: str) -> str | None:
    """The interpreter a peer runs in; None when its venv (or, for a JS peer, its tools) has
    not been set up."""
    if peer in JS_PEERS:
        return None if js_tools().missing(JS_PEERS[peer]) else sys.executable
    if peer in EDGETRAIN:
        return sys.executable
    venv = {"pytorch": "torch", "ortt": "ortt", "tflite": "tflite"}[peer]
    py = os.path.join(VENVS, venv, "bin", "python")
    return py if os.path.exists(py) else None


def not_set_up(peer: str) -> str:
    """Why a peer whose ``peer_python`` is None cannot run, and how to set it up."""
    if peer in JS_PEERS:
        return (f"not set up: needs {', '.join(js_tools().missing(JS_PEERS[peer]))}; "
                "run sh .ci/web-setup.sh")
    return "not set up: run bash benchmarks/setup_peers.sh"


def js_tools() -> Any:
    """peers/_js_tools.py (standard library only): the JS peers' tools and shipped files."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_js_tools",
                                                  os.path.join(HERE, "peers", "_js_tools.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker_script(peer: str) -> str:
    name = {"pytorch": "torch", "ort-node": "ort_node", "ort-web": "ort_web"}.get(peer, peer)
    return os.path.join(HERE, "peers", f"{name}_worker.py")


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
        script = worker_script(peer)
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
               timeout: float, batch: int | None = None) -> dict[str, Any]:
    script = worker_script(peer)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", EDGETRAIN_BENCH_THREADS=str(THREADS or ""))
    more = ["--batch", str(batch)] if batch else []
    with open(log, "a") as errf:
        out = subprocess.run([python, script, "cold", "--workdir", workdir, "--outdir", outdir,
                              "--steps", str(steps), *more], capture_output=False,
                             stdout=subprocess.PIPE, stderr=errf, text=True, env=env,
                             timeout=timeout)
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    if not lines:
        return {"ok": False, "error": f"exit code {out.returncode}: {_tail(log)}"}
    return json.loads(lines[-1])


# -- one workload -------------------------------------------------------------------------------

def write_workload(w: Any, workdir: str, seed: int) -> None:
    """model.onnx (+ model_lora.onnx), data.npz and spec.json: what every peer builds from."""
    import edgetrain

    os.makedirs(workdir, exist_ok=True)
    onnx.save(w.model, os.path.join(workdir, "model.onnx"))
    if "lora_model" in w.extra:
        onnx.save(w.extra["lora_model"], os.path.join(workdir, "model_lora.onnx"))
    arrays = {f"w:{k}": v for k, v in w.weights.items()}
    for i, (x, y) in enumerate(w.batches):
        if isinstance(x, dict):
            arrays.update({f"x:{i}:{k}": v for k, v in x.items()})
        else:
            arrays[f"x:{i}"] = x
        arrays[f"y:{i}"] = y
    np.savez(os.path.join(workdir, "data.npz"), **arrays)
    nets = os.path.join(os.path.dirname(os.path.abspath(edgetrain.__file__)), "_torch_nets.py")
    with open(os.path.join(workdir, "spec.json"), "w") as f:
        json.dump({"workload": w.name, "arch": w.arch, "optimizer": w.optimizer,
                   "trainable": w.trainable, "batch": w.batch, "seed": seed,
                   "inputs": w.inputs, "batch_norm": w.batch_norm, "lora": w.lora,
                   "torch_nets": nets}, f, indent=2)


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
            r["error"] = ("not run: this runtime runs the MLP, CNN and EfficientNet "
                          "workloads only (PEER_ARCHS)" if peer in (*NATIVE, *JS_PEERS) else
                          "not applicable: this peer has no port of the model")
            continue
        py = peer_python(peer)
        if py is None:
            r["error"] = not_set_up(peer)
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
        if wk.hello.get("note"):
            r["note"] = wk.hello["note"]
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
                reply = workers[peer].ask(cmd="losses", n=args.loss_steps,
                                          float64=peer == "pytorch")
                res["peers"][peer]["losses"] = reply["losses"]
                if reply.get("losses_float64"):
                    res["peers"][peer]["losses_float64"] = reply["losses_float64"]
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
        if "ms_per_step" in r:
            _cold_runs(peer, r, workdir, cold_runs, cold_steps, args.timeout,
                       w.batch // 2 if name in ACTIVATION_MEMORY and w.batch >= 2 else None)
    _summarize(res)
    return res


def _cold_runs(peer: str, r: dict[str, Any], workdir: str, runs: int, steps: int,
               timeout: float, half: int | None) -> None:
    """Cold start, import time and memory from fresh processes (see peers/_common.py).

    With ``half``, one more fresh process trains on that many rows of each batch: the
    activation memory is twice the difference of the training peaks (full batch − half), the
    memory that grows with the batch.
    """
    colds = []
    log = os.path.join(workdir, f"{peer}.log")
    py = peer_python(peer) or sys.executable
    for _ in range(runs):
        c = cold_start(peer, py, workdir, os.path.join(workdir, peer), steps, log, timeout)
        if not c.get("ok"):
            r["cold_error"] = c.get("error")
            return
        colds.append(c)
    r["cold_ms"] = statistics.median(c["cold_ms"] for c in colds)
    r["cold_import_s"] = statistics.median(c["import_s"] for c in colds)
    r["process_rss_mb"] = max(c["rss_mb"] for c in colds)
    r["process_heavy_modules"] = colds[0]["heavy_modules"]
    r["load_rss_mb"] = statistics.median(c["load_rss_mb"] for c in colds)
    r["saved_activation_mb"] = colds[0].get("saved_activation_mb")
    if peer == "edgetrain" and r["saved_activation_mb"] is None:
        r["saved_activation_mb"] = _edgetrain_saved(workdir)
    peaks = [c["train_peak_mb"] for c in colds if c.get("train_peak_mb") is not None]
    r["train_peak_mb"] = max(peaks) if peaks else None
    if not half or not peaks:
        return
    c = cold_start(peer, py, workdir, os.path.join(workdir, peer), steps, log, timeout,
                   batch=half)
    if not c.get("ok") or c.get("train_peak_mb") is None:
        r["activation_error"] = c.get("error", "no training peak")
        return
    r["half_batch"] = half
    r["half_train_peak_mb"] = c["train_peak_mb"]
    r["activation_mb"] = 2 * (r["train_peak_mb"] - c["train_peak_mb"])


def _edgetrain_saved(workdir: str) -> float | None:
    """edgetrain's activation memory counted from its train graph (profile_step.py)."""
    from profile_step import saved_for_backward_mib

    with open(os.path.join(workdir, "spec.json")) as f:
        spec = json.load(f)
    with np.load(os.path.join(workdir, "data.npz")) as z:
        names = spec["inputs"]
        x = ({"x": z["x:0"]} if "x:0" in z.files else
             {n: z[f"x:0:{n}"] for n in names})
        y = z["y:0"]
    try:
        return saved_for_backward_mib(os.path.join(workdir, "edgetrain", "model.et.onnx"), x, y)
    except Exception as e:  # a measurement that fails is reported as missing, not fatal
        print(f"   edgetrain: saved activations not counted: {e}", flush=True)
        return None


def _summarize(res: dict[str, Any]) -> None:
    """Loss agreement, ratios to the fastest peer, GFLOP/s.

    The fastest is taken among the systems whose losses agree with the reference: a system
    that computes something else (e.g. without the workload's momentum) does not set the bar.
    """
    ok = {p: r for p, r in res["peers"].items() if "ms_per_step" in r}
    if not ok:
        return
    ref_peer = "pytorch" if "losses" in res["peers"].get("pytorch", {}) else next(
        (p for p, r in res["peers"].items() if "losses" in r), None)
    res["loss_reference"] = ref_peer

    def max_rel(a: list[float], b: list[float]) -> float:
        return max(abs(u - v) / max(1.0, abs(v)) for u, v in zip(a, b))

    tol = LOSS_RTOL
    ref64 = res["peers"].get(ref_peer or "", {}).get("losses_float64")
    if ref_peer and ref64:
        res["loss_float32_noise"] = max_rel(res["peers"][ref_peer]["losses"], ref64)
        tol = max(tol, LOSS_NOISE_FACTOR * res["loss_float32_noise"])
    res["loss_tolerance"] = tol
    for r in res["peers"].values():
        if ref_peer and "losses" in r:
            r["loss_max_rel_diff"] = max_rel(r["losses"], res["peers"][ref_peer]["losses"])
            r["losses_agree"] = bool(r["loss_max_rel_diff"] <= tol)
    same = [r for r in ok.values() if r.get("losses_agree", True)] or list(ok.values())
    fastest = min(r["ms_per_step"] for r in same)
    for r in ok.values():
        r["ratio_to_fastest"] = r["ms_per_step"] / fastest
        r["gflops"] = res["flops_per_step"] / (r["ms_per_step"] * 1e-3) / 1e9


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


#: The runtime each peer of the runtimes table runs on (a key of ``device_runtime_bytes``).
DEVICE_RUNTIME = {"edgetrain": "onnxruntime", "iree": "iree", "openvino": "openvino",
                  "tract": "tract", "ort-node": "onnxruntime-node",
                  "ort-web": "onnxruntime-web (wasm)"}


def device_runtime_bytes() -> dict[str, dict[str, Any]]:
    """Bytes of each runtime's native libraries (``DEVICE_LIBS``) as installed here, and of
    the files a Node.js app or a web page ships with the JS peers (peers/_js_tools.py)."""
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
    tools = js_tools()
    for peer, kind in JS_PEERS.items():
        out[DEVICE_RUNTIME[peer]] = tools.shipped(kind)
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


def _system(r: dict[str, Any]) -> str:
    return f"{r['system']} ({r['note']})" if r.get("note") else r["system"]


def _memory_table(res: dict[str, Any]) -> list[str]:
    """Peak RSS, RSS after loading, training peak and activation memory, with the ratio of
    the peak to PyTorch's (the memory goal); empty without a half-batch measurement."""
    rows = [r for r in res["peers"].values() if "half_train_peak_mb" in r
            or "activation_error" in r]
    if not rows:
        return []
    torch_peak = res["peers"].get("pytorch", {}).get("process_rss_mb")
    half = next((r["half_batch"] for r in rows if "half_batch" in r), res["batch"] // 2)
    lines = [f"Memory (MiB) of a fresh process that loads the file and trains "
             f"{res['cold_steps'] + 1} steps: peak RSS over the whole process, RSS after "
             "loading (before the first step), the peak while training, and the activation "
             f"memory = 2 × (training peak at batch {res['batch']} − training peak at batch "
             f"{half}), the part of the peak that grows with the batch; saved for backward = "
             "the activations kept from the forward pass for the backward (PyTorch: autograd's "
             "saved tensors, measured; edgetrain: the forward values its train graph's "
             "backward reads, from the graph's shapes).", "",
             "| system | peak RSS | x PyTorch | after load | training peak | "
             "training − load | activations | saved for backward |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    def mib(r: dict[str, Any], key: str) -> str:
        return f"{r[key]:.0f}" if r.get(key) is not None else "–"

    for r in rows:
        ratio = (f"{r['process_rss_mb'] / torch_peak:.2f}" if torch_peak and
                 r.get("process_rss_mb") else "–")
        step = (f"{r['train_peak_mb'] - r['load_rss_mb']:.0f}"
                if r.get("train_peak_mb") is not None and r.get("load_rss_mb") else "–")
        act = (mib(r, "activation_mb") if "activation_mb" in r
               else r.get("activation_error", "–")[:80].replace("|", "/"))
        lines.append(f"| {_system(r)} | {mib(r, 'process_rss_mb')} | {ratio} | "
                     f"{mib(r, 'load_rss_mb')} | {mib(r, 'train_peak_mb')} | {step} | {act} | "
                     f"{mib(r, 'saved_activation_mb')} |")
    return lines + [""]


STEP_GOAL = 0.8  # edgetrain's step ≤ this × the fastest peer's (whose losses agree)
MEMORY_GOAL = 0.6  # edgetrain's peak process RSS ≤ this × PyTorch's, on ACTIVATION_MEMORY


def _goals_table(report: dict[str, Any]) -> list[str]:
    """Per workload: edgetrain against the fastest peer whose losses agree, and its peak RSS
    against PyTorch's where memory is a goal."""
    lines = ["| workload | edgetrain ms/step (best) | fastest peer | x that peer | step goal "
             f"(≤ {STEP_GOAL:g}×) | peak RSS x PyTorch | memory goal (≤ {MEMORY_GOAL:g}×) |",
             "|---|---:|---|---:|---|---:|---|"]
    for res in report["workloads"]:
        peers = res.get("peers", {})
        ours = [r for p, r in peers.items() if p in EDGETRAIN and "ms_per_step" in r
                and r.get("losses_agree", True)]
        if not ours:
            et = peers.get("edgetrain", {})
            lines.append(f"| {res['workload']} | {et.get('error', 'not run')[:60]} | | | | | |")
            continue
        et = dict(min(ours, key=lambda r: r["ms_per_step"]))
        et["process_rss_mb"] = peers.get("edgetrain", {}).get("process_rss_mb")
        others = [(r["ms_per_step"], r) for p, r in peers.items() if p not in EDGETRAIN
                  and "ms_per_step" in r and r.get("losses_agree", True)]
        if others:
            ms, best = min(others, key=lambda t: t[0])
            ratio = et["ms_per_step"] / ms
            step = (f"{best['system']} {_ms(ms)}", f"{ratio:.2f}",
                    "met" if ratio <= STEP_GOAL else "not met")
        else:
            step = ("–", "–", "–")
        torch_rss = peers.get("pytorch", {}).get("process_rss_mb")
        if res["workload"] in ACTIVATION_MEMORY and torch_rss and et.get("process_rss_mb"):
            mem_ratio = et["process_rss_mb"] / torch_rss
            mem = (f"{mem_ratio:.2f}", "met" if mem_ratio <= MEMORY_GOAL else "not met")
        else:
            mem = ("–", "–")
        lines.append(f"| {res['workload']} | {_ms(et['ms_per_step'])} | {step[0]} | {step[1]} | "
                     f"{step[2]} | {mem[0]} | {mem[1]} |")
    return lines + [""]


#: The runtimes table's rows: the peers that train the same file, their label, and what their
#: device size adds to the runtime's bytes.
RUNTIME_ROWS = {"edgetrain": ("onnxruntime", ""),
                "iree": ("IREE (host modules)", " + modules (25–200 kB each)"),
                "openvino": ("OpenVINO (CPU, float32)", ""), "tract": ("tract", ""),
                "ort-node": ("onnxruntime-node (Node.js)", ""),
                "ort-web": ("onnxruntime-web wasm (Chromium)", "")}


def _runtimes_table(report: dict[str, Any], h2: str) -> list[str]:
    """The same file on each runtime that ran: what a device ships (MB) and ms/step per
    workload (the README's runtimes table); empty unless two of them ran."""
    ran = [p for p in RUNTIME_ROWS if any(p in res.get("peers", {})
                                          for res in report["workloads"])]
    if len(ran) < 2:
        return []
    libs = report.get("device_runtimes") or {}
    names = [res["workload"] for res in report["workloads"]]
    lines = [f"{h2} Runtimes", "", "The same file on each runtime: what a device ships (see "
             "below) and the median ms/step of this run.", "",
             f"| runtime | a device ships (MB) | {' | '.join(n + ' ms/step' for n in names)} |",
             "|---|---:|" + "---:|" * len(names)]
    for peer in ran:
        label, more = RUNTIME_ROWS[peer]
        lib = libs.get(DEVICE_RUNTIME[peer], {})
        cells = [f"{lib['bytes'] / 1e6:.1f}{more}" if "bytes" in lib else lib.get("error", "–")]
        for res in report["workloads"]:
            r = res.get("peers", {}).get(peer, {})
            if "ms_per_step" in r:
                cells.append(_ms(r["ms_per_step"]) +
                             ("" if r.get("losses_agree", True) else " (losses DIFFER)"))
            else:
                cells.append(r.get("error", "not run").splitlines()[0][:80].replace("|", "/"))
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines + [""]


def markdown(report: dict[str, Any], images: str = "", level: int = 1) -> str:
    """The report as markdown; ``images`` prefixes chart paths, ``level`` is the title's."""
    peak = report["sgemm_peak_gflops"]
    h1, h2 = "#" * level, "#" * (level + 1)
    lines = [f"{h1} edgetrain benchmark ({report['date']})", "",
             f"Machine: {report['machine']}; {_threads_text(report['threads'])}. "
             f"sgemm peak (numpy float32 matmul, {report['threads'] or os.cpu_count()} threads, "
             f"measured in this run): **{peak:.0f} GFLOP/s**. Command: `{report['command']}`",
             "", "ms/step is the median over interleaved blocks; x fastest is the ratio to the "
             "fastest system of the same run among those whose losses agree; cold start = load "
             "the file + first step done, in a fresh process after imports (median of the fresh "
             "processes); process RSS = peak RSS of that fresh process after the first step and "
             "a few more (count per workload). "
             f"Losses: the first {report['loss_steps']} "
             f"steps against the reference system named per workload, max relative difference "
             f"(agree ≤ {LOSS_RTOL:g}, or ≤ {LOSS_NOISE_FACTOR:g}× the reference's own float32 "
             "vs float64 difference where rounding alone moves the losses more). "
             "Load average (1 min) at start / end: "
             f"{report['loadavg'][0]:.1f} / {report['loadavg'][1]:.1f} on {os.cpu_count()} "
             "cores (the machine is shared; ratios within one run are what to compare).", ""]
    if max(report["loadavg"]) > (os.cpu_count() or 1):
        lines += [f"**Warning: the machine was busy with other work during this run (load "
                  f"above {os.cpu_count()}).** Step times are inflated and noisy, and thread "
                  "pools that spin-wait (PyTorch's OpenMP pool above all) can stall for a "
                  "scheduler time slice per parallel region; rerun on a quiet machine, or "
                  "compare with `--threads 1`.", ""]
    lines += [f"{h2} Goals in this run", ""] + _goals_table(report)
    lines += _runtimes_table(report, h2)
    for res in report["workloads"]:
        lines.append(f"{h2} {res.get('title', res['workload'])}")
        lines.append("")
        if "unavailable" in res:
            lines += [f"unavailable: {res['unavailable']}", ""]
            continue
        noise = res.get("loss_float32_noise")
        tol = res.get("loss_tolerance", LOSS_RTOL)
        lines.append(f"{res['flops_per_step'] / 1e6:.1f} MFLOP per step; blocks of "
                     f"{res['block_steps']} steps x {res['repeats']} repeats after "
                     f"{res['warmup_steps']} warm-up steps; {res['cold_steps']} steps after the "
                     f"cold start for RSS; losses compared with "
                     f"{PEER_LABEL.get(res.get('loss_reference') or '', '–')}"
                     + ("" if noise is None else
                        f" (its float32 losses differ from its float64 ones by {noise:.1e}: "
                        f"agree ≤ {tol:.1e})") + ".")
        lines.append("")
        lines.append("| system | ms/step | x fastest | GFLOP/s | % of peak | model file | "
                     "cold start | process RSS | import | losses |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in res["peers"].values():
            if "ms_per_step" not in r:
                err = r.get("error", "failed").splitlines()[0][:160].replace("|", "/")
                lines.append(f"| {_system(r)} | {err} | | | | | | | | |")
                continue
            loss = ("–" if "loss_max_rel_diff" not in r else
                    f"{'agree' if r['losses_agree'] else 'DIFFER'} "
                    f"({r['loss_max_rel_diff']:.1e})")
            cold = f"{r['cold_ms']:.0f} ms" if "cold_ms" in r else r.get("cold_error", "–")
            rss = f"{r['process_rss_mb']:.0f} MB" if "process_rss_mb" in r else "–"
            imp = f"{r['cold_import_s']:.2f} s" if "cold_import_s" in r else "–"
            lines.append(
                f"| {_system(r)} | {_ms(r['ms_per_step'])} | {r['ratio_to_fastest']:.2f} | "
                f"{r['gflops']:.1f} | {100 * r['gflops'] / peak:.1f} % | "
                f"{_mb(r['file_bytes'])} | {cold} | {rss} | {imp} | {loss} |")
        lines += [""] + _memory_table(res)
        lines += [f"![{res['workload']}]({images}{res['workload']}.png)", ""]
    libs = report.get("device_runtimes") or {}
    if libs:
        lines += [f"{h2} Runtime a device ships", "",
                  "Native libraries that train the file on a device, as installed here "
                  "(x86-64 Linux wheels; see `DEVICE_LIBS` in benchmarks/run.py); for the JS "
                  "peers, the files a Node.js app or a web page ships (npm packages as "
                  "installed in js/ and web/; see `shipped` in benchmarks/peers/_js_tools.py).",
                  "",
                  "| runtime | MB | files |", "|---|---:|---|"]
        for name, m in libs.items():
            if "error" in m:
                lines.append(f"| {name} | {m['error']} | |")
            else:
                lines.append(f"| {name} | {m['bytes'] / 1e6:.1f} | "
                             f"{m.get('what') or ', '.join(m['files'])} |")
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
    """Replace the results section of a markdown file; its charts are copied into
    ``img/benchmarks/`` beside it, so the docs site holds every file it shows."""
    with open(path) as f:
        text = f.read()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise SystemExit(f"{path} has no {DOCS_BEGIN} ... {DOCS_END} section")
    img = os.path.join(os.path.dirname(os.path.abspath(path)), "img", "benchmarks")
    os.makedirs(img, exist_ok=True)
    for res in report["workloads"]:
        chart_file = os.path.join(out, f"{res['workload']}.png")
        if os.path.exists(chart_file):
            shutil.copyfile(chart_file, os.path.join(img, f"{res['workload']}.png"))
    body = markdown(report, images="img/benchmarks/", level=3)
    head, rest = text.split(DOCS_BEGIN, 1)
    tail = rest.split(DOCS_END, 1)[1]
    with open(path, "w") as f:
        f.write(f"{head}{DOCS_BEGIN}\n{body}\n{DOCS_END}{tail}")


# -- main ---------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", nargs="+", default=["W1", "W2", "W3", "W4", "W5", "W6",
                                                          "W7", "W8"])
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
