"""K training steps per runtime call on onnxruntime: which form of ``train_steps`` wins, and
by how much over one ``train`` call per step, for the small workloads (W1, W3).

    python benchmarks/ksteps.py [--workloads W1 W3] [--ks 4 8 16 32] [--repeats 21]
                                [--threads N] [--backends onnxruntime iree openvino tract]
                                [--out benchmarks/results/ksteps]

Everything runs in this one process. Each form is timed against one ``train`` call per step
(``single``), the two interleaved (each repeat runs both, in alternating order; two models at
a time, so that no third one's buffers evict theirs): the medians over the repeats, and the
median (with quartiles) of the per-repeat ratio form / single.
The forms of ``train_steps``, for each K:

- ``scan``: the file as compiled, ``train_steps`` one ``Scan`` over the K stacked batches;
- ``loop``: the same body in an ONNX ``Loop`` that gathers each step's slice (the first form
  of ``train_steps``, rebuilt here from the Scan);
- ``unrolled``: the Scan unrolled into K copies of the step (``edgetrain.runtime._unroll``,
  what the native runtimes run), here on onnxruntime.

Two levels: ``fit`` (milliseconds per step of ``Model.fit`` over one epoch of 64 steps of
shuffled array data, ``steps_per_call`` = K; the per-epoch evaluation is left out, it is the
same for every form) and ``call`` (the same K batches as K ``train`` calls or as one
``train_steps`` call on them stacked beforehand). Also: compile time and file size with and
without ``train_steps``, and the unrolled graph's size and load + first call time per K.
With ``--backends``, the native runtimes too: one step per call against the
file's ``train_steps``, which they run unrolled for K (``unrolled K``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper

import edgetrain as et
from edgetrain import bench
from edgetrain import format as fmt
from edgetrain.runtime._unroll import unroll_steps
from edgetrain.training import _loop

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_NOTE = "CPU time of the one thread; OpenVINO, which runs on threads of its own: wall time"
STEPS_PER_EPOCH = 64  # a multiple of every K: no partial group (the unrolled form has one K)


def _steps_index(proto: onnx.ModelProto) -> int:
    meta = fmt.read_metadata(proto)
    return int(str(meta.signatures["train_steps"].graph).split("/")[1])


def _with_steps_graph(proto: onnx.ModelProto, graph: onnx.GraphProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.training_info[_steps_index(proto)].algorithm.CopyFrom(graph)
    return out


def unrolled_file(proto: onnx.ModelProto, k: int) -> onnx.ModelProto:
    """The file with ``train_steps`` unrolled for K steps (it then takes exactly K)."""
    g = proto.training_info[_steps_index(proto)].algorithm
    m = helper.make_model(g, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    return _with_steps_graph(proto, unroll_steps(m, k).graph)


def loop_file(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The file with ``train_steps``' Scan turned into a Loop whose body gathers its slice."""
    g = onnx.GraphProto()
    g.CopyFrom(proto.training_info[_steps_index(proto)].algorithm)
    nodes = list(g.node)
    at, scan = next((i, n) for i, n in enumerate(nodes) if n.op_type == "Scan")
    body = next(a.g for a in scan.attribute if a.name == "body")
    scanned = next(a.i for a in scan.attribute if a.name == "num_scan_inputs")
    n_state = len(scan.input) - scanned
    step = {v.name: f"loop.{v.name}" for v in body.input[n_state:]}  # outer names clash
    gathers = [helper.make_node("Gather", [x, "loop.i"], [step[v.name]], axis=0)
               for x, v in zip(scan.input[n_state:], body.input[n_state:])]
    for n in body.node:
        n.input[:] = [step.get(i, i) for i in n.input]
    loop_body = helper.make_graph(
        [*gathers, helper.make_node("Identity", ["loop.cond"], ["loop.cond.out"]), *body.node],
        "train_step",
        [helper.make_tensor_value_info("loop.i", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("loop.cond", onnx.TensorProto.BOOL, []),
         *body.input[:n_state]],
        [helper.make_tensor_value_info("loop.cond.out", onnx.TensorProto.BOOL, []),
         *body.output], list(body.initializer))
    trip = helper.make_node("Size", [scan.input[-1]], ["loop.trip"])  # the rates: one a step
    loop = helper.make_node("Loop", ["loop.trip", "", *scan.input[:n_state]], list(scan.output),
                            body=loop_body)
    del g.node[:]
    g.node.extend([*nodes[:at], trip, loop, *nodes[at + 1:]])
    return _with_steps_graph(proto, g)


def _data(w: bench.Workload) -> tuple[np.ndarray, np.ndarray]:
    x0, y0 = w.batches[0]
    assert isinstance(x0, np.ndarray)
    n = STEPS_PER_EPOCH * len(y0)
    rng = np.random.default_rng(0)
    classes = int(w.arch["classes"])
    return (rng.random((n, *x0.shape[1:]), dtype=np.float32),
            rng.integers(0, classes, n).astype(np.int64))


def _timed(fns: dict[str, Callable[[], int]], repeats: int, clock: Callable[[], float]
           ) -> dict[str, list[float]]:
    """ms per step of each function (it returns its step count), interleaved, rotating."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm-up: sessions, buffers
        f()
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = clock()
            steps = fns[name]()
            times[name].append((clock() - t0) * 1e3 / steps)
    return times


def _models(w: bench.Workload, ks: list[int], threads: int | None, backend: str
            ) -> tuple[dict[str, et.training.Model], dict[str, Any]]:
    """The variants' models by name (``single``, ``scan K``, ``loop K``, ``unrolled K``), and
    the compile times and sizes. On a native backend: ``single`` and ``unrolled K``, the file
    as compiled (the backend unrolls its Scan)."""
    opts: dict[str, Any] = {"threads": threads} if threads and backend != "tract" else {}
    if backend != "onnxruntime":
        plain = bench.compile_workload(w)
        native = {"single": et.load(plain.proto, backend=backend, **opts)}
        native["single"].steps_per_call = 1
        for k in ks:
            native[f"unrolled {k}"] = et.load(plain.proto, backend=backend, **opts)
            native[f"unrolled {k}"].steps_per_call = k
        return native, {}
    t0 = time.perf_counter()
    plain = bench.compile_workload(w)  # with train_steps (the default)
    t1 = time.perf_counter()
    from edgetrain._api import compile as et_compile
    one = et_compile(w.model, loss="cross_entropy",
                     optimizer=bench.optimizer_from_spec(w.optimizer), multi_step=False)
    t2 = time.perf_counter()
    sizes: dict[str, Any] = {"compile_s": t1 - t0, "compile_s_without": t2 - t1,
                             "file_bytes": plain.proto.ByteSize(),
                             "file_bytes_without": one.proto.ByteSize(), "unrolled": {}}
    loop = loop_file(plain.proto)
    models: dict[str, et.training.Model] = {"single": et.load(plain.proto, **opts)}
    models["single"].steps_per_call = 1  # (fit's default runs train_steps)
    for k in ks:
        unrolled = unrolled_file(plain.proto, k)
        t0 = time.perf_counter()
        m = et.load(unrolled, **opts)
        m.run("train_steps", **_stacked(w, k), lr=np.full(k, 0.01, np.float32))
        sizes["unrolled"][k] = {"file_bytes": unrolled.ByteSize(),
                                "load_and_first_call_s": time.perf_counter() - t0}
        for name, proto in (("scan", plain.proto), ("loop", loop), ("unrolled", unrolled)):
            models[f"{name} {k}"] = m if name == "unrolled" else et.load(proto, **opts)
            models[f"{name} {k}"].steps_per_call = k
    return models, sizes


def _stacked(w: bench.Workload, k: int) -> dict[str, np.ndarray]:
    batches = [w.batches[i % len(w.batches)] for i in range(k)]
    return {"x": np.stack([b[0] for b in batches]), "y": np.stack([b[1] for b in batches])}


def run_workload(name: str, ks: list[int], repeats: int, threads: int | None,
                 backend: str = "onnxruntime") -> dict[str, Any]:
    """For each K and form in turn, the form against one step per call, interleaved (two
    models at a time: no third one's buffers evict theirs), at the fit and the call level."""
    w = bench.workload(name)
    models, sizes = _models(w, ks, threads, backend)
    x, y = _data(w)
    batch = len(w.batches[0][1])

    def fit(m: et.training.Model) -> Callable[[], int]:
        return lambda: len(m.fit(x, y, batch_size=batch, epochs=1, progress=False,
                                 seed=1)["loss"]) * STEPS_PER_EPOCH

    def call(m: et.training.Model, k: int, single: bool) -> Callable[[], int]:
        stacked = {**_stacked(w, k), "lr": np.full(k, 0.01, np.float32)}
        rows = [{"x": stacked["x"][i], "y": stacked["y"][i]} for i in range(k)]
        if single:  # the same K batches, one call each
            return lambda: len([m.run("train", **r) for r in rows])
        return lambda: (m.run("train_steps", **stacked), k)[1]

    clock = _clock(threads, backend)
    evaluate, cap = _loop.Loop._epoch_logs, _loop.STACK_BYTES
    _loop.Loop._epoch_logs = lambda self, loss: {"loss": loss}  # type: ignore[method-assign]
    _loop.STACK_BYTES = 1 << 40  # every K as asked (fit stacks at most 8 MiB by default)
    per_k: dict[int, Any] = {}
    try:
        for k in ks:
            per_k[k] = {"fit": {}, "call": {}}
            for name in (n for n in models if n.endswith(f" {k}")):
                pair = {"single": models["single"], name: models[name]}
                per_k[k]["fit"][name] = _paired(
                    _timed({n: fit(m) for n, m in pair.items()}, repeats, clock), name)
                per_k[k]["call"][name] = _paired(
                    _timed({n: call(m, k, n == "single") for n, m in pair.items()},
                           repeats, clock), name)
    finally:
        _loop.Loop._epoch_logs, _loop.STACK_BYTES = evaluate, cap  # type: ignore[method-assign]
    return {"workload": name, "title": w.title, "backend": backend, "sizes": sizes,
            "ks": per_k}


def _clock(threads: int | None, backend: str) -> Callable[[], float]:
    """CPU time of this thread when the runtime runs on it alone (``--threads 1``:
    onnxruntime, IREE's local-sync driver, tract): on a shared machine it leaves out the time
    other processes take; else (and for OpenVINO, which runs a call on threads of its own)
    wall time."""
    alone = threads == 1 and backend in ("onnxruntime", "iree", "tract")
    return time.thread_time if alone else time.perf_counter


def _paired(times: dict[str, list[float]], name: str) -> dict[str, Any]:
    """A form against ``single`` timed in the same repeats: the medians, and the median and
    quartiles of the per-repeat ratio (each repeat's form time over its single time)."""
    ratios = [a / b for a, b in zip(times[name], times["single"])]
    q1, q2, q3 = (float(v) for v in np.percentile(ratios, [25, 50, 75]))
    return {"ms_per_step": statistics.median(times[name]),
            "single_ms_per_step": statistics.median(times["single"]),
            "x_single": q2, "x_single_quartiles": [q1, q3], "blocks": times}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# K steps per call ({report['date']})", "",
             f"Machine: {report['machine']}; threads: {report['threads'] or 'defaults'} "
             f"({CPU_NOTE if report['threads'] == 1 else 'wall time'}); "
             f"load average (1 min) at start / end: {report['load'][0]:.1f} / "
             f"{report['load'][1]:.1f}. Command: `{report['command']}`", "",
             "Each form against one `train` call per step (`single`), the two interleaved; "
             "ms/step: medians over the repeats; x single: the median of the per-repeat "
             "ratio form / single (below 1: faster), with its quartiles. fit: one epoch of "
             "64 steps per repeat; call: the same K batches as K `train` calls or one "
             "`train_steps` call.", ""]
    for r in report["workloads"]:
        s = r["sizes"]
        lines += [f"## {r['title']}, {r['backend']}", ""]
        if s:
            lines += [f"compile {s['compile_s']:.2f} s with `train_steps`, "
                      f"{s['compile_s_without']:.2f} s without; file "
                      f"{s['file_bytes'] / 1e6:.2f} MB with, "
                      f"{s['file_bytes_without'] / 1e6:.2f} MB without.", ""]
        lines += ["| K | form | fit ms/step (single) | fit x single (quartiles) | "
                  "call ms/step (single) | call x single (quartiles) |",
                  "|---:|---|---:|---:|---:|---:|"]
        for k, res in r["ks"].items():
            for name, f in res["fit"].items():
                cells = [f"{v['ms_per_step']:.3f} ({v['single_ms_per_step']:.3f}) | "
                         f"**{v['x_single']:.2f}** ({v['x_single_quartiles'][0]:.2f}–"
                         f"{v['x_single_quartiles'][1]:.2f})"
                         for v in (f, res["call"][name])]
                lines.append(f"| {k} | {name.split()[0]} | {' | '.join(cells)} |")
        if s:
            lines += ["", "| unrolled K | file MB | load + first call s |",
                      "|---:|---:|---:|"]
            lines += [f"| {k} | {u['file_bytes'] / 1e6:.2f} | "
                      f"{u['load_and_first_call_s']:.2f} |" for k, u in s["unrolled"].items()]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", nargs="+", default=["W1", "W3"])
    ap.add_argument("--ks", nargs="+", type=int, default=[4, 8, 16, 32])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backends", nargs="+", default=["onnxruntime"],
                    help="also iree, openvino, tract: single steps against the file's "
                         "train_steps, which these unroll")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "ksteps"))
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    results = [run_workload(w.upper(), args.ks, args.repeats, args.threads, b)
               for b in args.backends for w in args.workloads]
    report = {"date": time.strftime("%Y-%m-%d %H:%M"),
              "command": "python benchmarks/ksteps.py" + "".join(f" {a}" for a in sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}, onnxruntime "
                         f"{__import__('onnxruntime').__version__}",
              "threads": args.threads, "load": [load0, os.getloadavg()[0]],
              "workloads": results}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "forms.json"), "w") as f:
        json.dump(report, f, indent=1)
    md = markdown(report)
    with open(os.path.join(args.out, "forms.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
