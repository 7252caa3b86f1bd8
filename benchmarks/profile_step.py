"""Where edgetrain's training step spends its time and memory, for one benchmark workload.

    python benchmarks/profile_step.py W7 [W5 ...] [--steps 5] [--threads N] [--json out.json]

The workload (``edgetrain.bench``) is compiled as the benchmark compiles it, and its train
graph runs as the runtime runs it (the standalone graph of the ``train`` signature, stock
onnxruntime, every graph optimization on) under onnxruntime's profiler. Each node's kernel time
is put in a group by what the node does, found from the graph's structure:

- forward: the ancestors of the loss (and the running-statistics updates of batch norm);
- backward, shared: nodes that lead to the updates of two or more parameters (the chain of
  input gradients: ConvTranspose, ReLU masks, batch-norm backward);
- per parameter: nodes that lead to one parameter's update only (its weight gradient: the
  patches and the Gemm, the bias and batch-norm scale/shift sums, and the optimizer update).

Memory is counted from the graph's static shapes: trainable parameters and optimizer state
(the runtime keeps two buffers of each, swapped after a step), frozen weights, the forward
values the backward reads (kept alive until their last reader), and the largest single
tensors of the step.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
import onnx

DATA_MOVES = {"Slice", "Pad", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Transpose",
              "Expand", "Flatten", "Identity", "Shape", "Size", "Gather", "Split", "Tile",
              "DepthToSpace", "SpaceToDepth", "ConstantOfShape", "Constant"}
REDUCTIONS = {"ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceMax", "ReduceL2",
              "GlobalAveragePool"}
MATMULS = {"Gemm", "MatMul", "FusedGemm", "FusedMatMul"}
CONVS = {"Conv", "FusedConv", "NhwcConv", "NhwcFusedConv"}


def train_graph(name: str) -> tuple[Any, onnx.ModelProto, dict[str, np.ndarray], dict[str, Any]]:
    """The workload, its standalone train graph, the feeds of one step, and the metadata."""
    from edgetrain import bench

    w = bench.workload(name)
    tm = bench.compile_workload(w)
    x, y = w.batches[0]
    m, feeds, meta = standalone_train(tm.proto, bench.feeds(w, x), y, w.optimizer["lr"])
    return w, m, feeds, meta


def standalone_train(proto: onnx.ModelProto, x: dict[str, np.ndarray], y: np.ndarray,
                     lr: float = 0.01) -> tuple[onnx.ModelProto, dict[str, np.ndarray],
                                                dict[str, Any]]:
    """A compiled model's standalone train graph (as the runtime runs it), the feeds of one
    step with the batch ``x``, ``y``, and its metadata with ``updates`` and ``file_bytes``."""
    from edgetrain import format as fmt

    typed = fmt.read_metadata(proto)
    meta = fmt.read_meta(proto)
    m, state_inputs, updates = fmt.standalone(proto, typed, "train")
    state = fmt.initial_state(proto, typed)
    feeds = {k: state[k] for k in state_inputs}
    feeds.update(x)
    feeds[meta["label"]] = y
    if any(i.name == "lr" for i in m.graph.input):
        feeds["lr"] = np.array(lr, dtype=np.float32)
    meta = dict(meta, updates=updates, file_bytes=proto.ByteSize())
    return m, feeds, meta


def saved_for_backward_mib(path: str, x: dict[str, np.ndarray], y: np.ndarray) -> float:
    """MiB of the forward values that the backward of a compiled file's train step reads
    (edgetrain's activation memory, counted from the graph's static shapes)."""
    from edgetrain import format as fmt

    m, feeds, meta = standalone_train(fmt.load_model(path), x, y)
    return _saved_bytes(m, _sizes(m, feeds), groups(m, meta)) / 2.0 ** 20


# -- grouping nodes -----------------------------------------------------------------------------

def _reach(g: onnx.GraphProto, targets: dict[str, int]) -> dict[str, int]:
    """For each node name, the bit set of targets (output name → bit) it leads to."""
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    reach: dict[str, int] = {}
    value_bits: dict[str, int] = dict(targets)
    for n in reversed(list(g.node)):  # the graph is topologically sorted
        bits = 0
        for o in n.output:
            bits |= value_bits.get(o, 0)
            for c in consumers.get(o, ()):
                bits |= reach.get(c.name, 0)
        reach[n.name] = bits
        for o in n.output:
            value_bits[o] = bits
    return reach


def groups(m: onnx.ModelProto, meta: dict[str, Any]) -> dict[str, str]:
    """node name → group (see the module docstring)."""
    g = m.graph
    loss = g.output[0].name
    trainable = list(meta["trainable"])
    owner = {}
    for k, out in meta["updates"].items():
        p = next((t for t in trainable if k == t or k.startswith(f"{t}.")), None)
        owner[out] = p if p is not None else f"state:{k}"
    params = sorted(set(owner.values()))
    bit = {p: 1 << i for i, p in enumerate(params)}
    param_bits = sum(bit[p] for p in params if not p.startswith("state:"))
    reach = _reach(g, {out: bit[p] for out, p in owner.items()})
    fwd = _reach(g, {loss: 1})
    attrs = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for n in g.node}
    out: dict[str, str] = {}
    for n in g.node:
        op, r = n.op_type, reach[n.name] & param_bits
        if fwd[n.name] or (r == 0 and reach[n.name]):  # forward, or running statistics
            if op in CONVS:
                out[n.name] = ("forward: depthwise Conv" if attrs[n.name].get("group", 1) > 1
                               else "forward: Conv")
            elif n.name.startswith("bn/") or op == "BatchNormalization":
                out[n.name] = "forward: batch norm (batch statistics, normalize)"
            elif op in MATMULS:
                out[n.name] = "forward: Gemm/MatMul"
            else:
                out[n.name] = "forward: element-wise, pooling, other"
        elif r & (r - 1):  # two or more parameters: the shared chain of input gradients
            out[n.name] = _backward_group(op, "backward dX")
        elif r:
            out[n.name] = _backward_group(op, "weight grad")
        else:
            out[n.name] = "other (step counter, checks)"
    return out


def _backward_group(op: str, where: str) -> str:
    if op == "ConvTranspose":
        return f"{where}: ConvTranspose"
    if op in CONVS:
        return f"{where}: Conv"
    if op in MATMULS:
        return f"{where}: Gemm/MatMul"
    if op in DATA_MOVES:
        return f"{where}: layout (Slice/Pad/Concat/Reshape/Transpose/...)"
    if op in REDUCTIONS:
        return f"{where}: reductions (ReduceSum/Mean)"
    if op in ("ScatterElements", "MaxUnpool", "MaxPool", "AveragePool"):
        return f"{where}: pooling backward"
    if where == "weight grad":
        return "weight grad: element-wise + optimizer update"
    return f"{where}: element-wise (ReLU masks, batch-norm backward, sums)"


# -- time ---------------------------------------------------------------------------------------

def profile_time(m: onnx.ModelProto, feeds: dict[str, np.ndarray], steps: int,
                 threads: int | None, warmup: int = 2) -> tuple[dict[str, tuple[str, float]],
                                                                  list[float]]:
    """node name → (op type, mean µs per step) and the wall ms of each profiled run.

    The session is set up as edgetrain's runtime sets it up (all graph optimizations), with
    the profiler on; runs before ``warmup`` are left out.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="et-prof-"), "ort")
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feed = {k: feeds[k] for k in names}
    walls = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        sess.run(None, feed)
        walls.append((time.perf_counter() - t0) * 1e3)
    path = sess.end_profiling()
    with open(path) as f:
        events = json.load(f)
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    start = runs[warmup] if len(runs) > warmup else 0
    per: dict[str, list[Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < start:
            continue
        node = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "?")
        per.setdefault(node, [op, 0.0])[1] += e["dur"]
    return {k: (op, us / steps) for k, (op, us) in per.items()}, walls[warmup:]


def breakdown(times: dict[str, tuple[str, float]], grouping: dict[str, str]
              ) -> list[tuple[str, float, dict[str, float]]]:
    """(group, ms per step, {op type: ms}) sorted by time. Nodes that onnxruntime fused or
    renamed are grouped by their own op type."""
    acc: dict[str, list[Any]] = {}
    for node, (op, us) in times.items():
        grp = grouping.get(node)
        if grp is None:
            grp = f"fused by onnxruntime: {op}"
        entry = acc.setdefault(grp, [0.0, collections.Counter()])
        entry[0] += us / 1e3
        entry[1][op] += us / 1e3
    return sorted(((k, v[0], dict(v[1])) for k, v in acc.items()), key=lambda t: -t[1])


# -- memory -------------------------------------------------------------------------------------

def _sizes(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Bytes of every value whose shape is known once the inputs' shapes are fixed."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(m)
    for i in fixed.graph.input:
        if i.name in feeds:
            dims = i.type.tensor_type.shape.dim
            for d, n in zip(dims, feeds[i.name].shape):
                d.Clear()
                d.dim_value = int(n)
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    itemsize = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.INT64: 8, onnx.TensorProto.BOOL: 1,
                onnx.TensorProto.INT32: 4, onnx.TensorProto.DOUBLE: 8,
                onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.UINT8: 1}
    out = {}
    for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if t.HasField("shape") and None not in dims and t.elem_type in itemsize:
            out[v.name] = int(np.prod(dims, dtype=np.int64)) * itemsize[t.elem_type]
    return out


def _saved_bytes(m: onnx.ModelProto, sizes: dict[str, int], grouping: dict[str, str]) -> int:
    """Bytes of the values that forward nodes make and backward nodes read."""
    def forward(node: onnx.NodeProto) -> bool:
        return grouping.get(node.name, "").startswith("forward")

    backward_reads = {i for n in m.graph.node if not forward(n) for i in n.input}
    return sum(sizes.get(o, 0) for n in m.graph.node if forward(n) for o in n.output
               if o in backward_reads)


def live_peak(m: onnx.ModelProto, sizes: dict[str, int], grouping: dict[str, str]
              ) -> tuple[int, dict[str, int]]:
    """The peak of the bytes alive when the nodes run in graph order and every value is freed
    after its last reader, and what is alive at that moment (by the group of the node that
    made each value: forward values kept for the backward, backward temporaries)."""
    nodes = list(m.graph.node)
    last: dict[str, int] = {}
    for k, n in enumerate(nodes):
        for i in n.input:
            last[i] = k
    outputs = {o.name for o in m.graph.output}
    alive: dict[str, tuple[int, str]] = {}
    peak, at_peak = 0, {}
    for k, n in enumerate(nodes):
        grp = grouping.get(n.name, "?")
        for o in n.output:
            if o in last or o in outputs:
                alive[o] = (sizes.get(o, 0), grp)
        total = sum(b for b, _ in alive.values())
        if total > peak:
            peak = total
            at_peak = collections.Counter()
            for b, g_ in alive.values():
                at_peak[g_.split(":")[0]] += b
        for i in n.input:
            if last.get(i) == k and i not in outputs:
                alive.pop(i, None)
    return peak, dict(at_peak)


def memory(m: onnx.ModelProto, feeds: dict[str, np.ndarray], meta: dict[str, Any],
           grouping: dict[str, str]) -> dict[str, Any]:
    """Static memory contributors of one step, in MiB (see the module docstring)."""
    sizes = _sizes(m, feeds)
    mib = 2.0 ** 20
    trainable = set(meta["trainable"])
    state = {k: v for k, v in feeds.items() if k in meta["updates"]}
    params = sum(v.nbytes for k, v in state.items() if k in trainable)
    opt_state = sum(v.nbytes for k, v in state.items() if k not in trainable)
    frozen = sum(int(np.prod(t.dims, dtype=np.int64)) * 4 for t in m.graph.initializer)
    producer = {o: n for n in m.graph.node for o in n.output}
    saved = _saved_bytes(m, sizes, grouping)
    biggest = sorted(((s, k) for k, s in sizes.items() if k in producer), reverse=True)[:8]
    peak, at_peak = live_peak(m, sizes, grouping)
    return {
        "trainable parameters (x2 buffers)": 2 * params / mib,
        "optimizer state (x2 buffers)": 2 * opt_state / mib,
        "frozen weights": frozen / mib,
        "model file (bytes the runtime keeps)": meta["file_bytes"] / mib,
        "forward values the backward reads": saved / mib,
        "peak of live values (graph order, freed after the last reader)": peak / mib,
        **{f"  alive at that peak: made by {k}": v / mib for k, v in sorted(at_peak.items())},
        "all values of one step (if none were freed)": sum(
            s for k, s in sizes.items() if k in producer) / mib,
        "largest tensors": [(k, producer[k].op_type, grouping.get(producer[k].name, "?"),
                             s / mib) for s, k in biggest],
    }


# -- report -------------------------------------------------------------------------------------

def report(name: str, steps: int, threads: int | None) -> dict[str, Any]:
    w, m, feeds, meta = train_graph(name)
    grouping = groups(m, meta)
    times, walls = profile_time(m, feeds, steps, threads)
    rows = breakdown(times, grouping)
    total = sum(ms for _, ms, _ in rows)
    mem = memory(m, feeds, meta, grouping)
    lines = [f"## {w.title}", "",
             f"{len(m.graph.node)} nodes; {steps} profiled steps after 2 warm-up steps; wall "
             f"time per step (session.run, no Python around it) median "
             f"{np.median(walls):.0f} ms; kernel time {total:.0f} ms. Load average "
             f"{os.getloadavg()[0]:.1f}.", "",
             "| group | ms/step | % | top op types (ms) |", "|---|---:|---:|---|"]
    for grp, ms, ops in rows:
        top = ", ".join(f"{op} {v:.1f}" for op, v in sorted(ops.items(), key=lambda t: -t[1])[:4])
        lines.append(f"| {grp} | {ms:.1f} | {100 * ms / total:.1f} % | {top} |")
    lines += ["", "| memory (static, MiB) | |", "|---|---:|"]
    for k, v in mem.items():
        if k != "largest tensors":
            lines.append(f"| {k} | {v:.0f} |")
    lines += ["", "Largest tensors of the step: " + "; ".join(
        f"`{k}` ({op}, {grp}) {s:.0f} MiB" for k, op, grp, s in mem["largest tensors"]), ""]
    text = "\n".join(lines)
    print(text, flush=True)
    return {"workload": name, "title": w.title, "wall_ms": walls, "kernel_ms": total,
            "groups": [{"group": g_, "ms": ms, "ops": ops} for g_, ms, ops in rows],
            "memory_mib": mem, "markdown": text, "loadavg": os.getloadavg()[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workloads", nargs="+")
    ap.add_argument("--steps", type=int, default=5, help="profiled steps (after 2 warm-up)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: "
                    "onnxruntime's default, as the benchmark)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    results = [report(w.upper(), args.steps, args.threads) for w in args.workloads]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
