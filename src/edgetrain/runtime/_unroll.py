"""``train_steps`` for runtimes without ``Scan``: the Scan unrolled for one K.

The file's ``train_steps`` is one ``Scan`` over K stacked batches (fast on onnxruntime, and K
may change from call to call). IREE's ONNX importer lowers no Scan (nor Loop), and tract's
analysis rejects this one; but each of them runs a plain graph of the same ops. For a given K
the Scan is exactly K copies of its body in a row:

- copy i reads slice i of every scanned input (``Gather(x, i)``, which drops the steps axis,
  as the Scan slices), and the carried values of copy i − 1 (the Scan's initial values for
  copy 0); values the body reads from the enclosing graph (the weights) are read as they are;
- the last copy's carried values are the Scan's final ones, and the scan outputs of all copies
  stacked along a new first axis are its scan outputs.

The arithmetic is that of the Scan step by step, so the state after K steps is the same, and
the portable rewrites (:mod:`._portable`) then reach every step (they do not look into bodies).
A native backend builds this graph once per K it is called with (``fit`` calls one K).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ._portable import graph_names, unique_name


def unroll_steps(model: onnx.ModelProto, steps: int) -> onnx.ModelProto:
    """A copy of ``model`` (a standalone graph) whose ``Scan`` nodes run ``steps`` steps each,
    unrolled (see the module docstring)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    taken = graph_names(g)
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                taken |= graph_names(a.g)
    nodes: list[onnx.NodeProto] = []
    for n in g.node:
        if n.op_type == "Scan" and n.domain in ("", "ai.onnx"):
            nodes.extend(_unrolled(n, steps, g, taken))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    return out


def _unrolled(scan: onnx.NodeProto, steps: int, g: onnx.GraphProto, taken: set[str]
              ) -> list[onnx.NodeProto]:
    """The nodes of ``steps`` copies of ``scan``'s body (initializers of the body go to ``g``
    once), ending in the Scan's own output names."""
    attrs = {a.name: a for a in scan.attribute}
    body = attrs["body"].g
    scanned = int(attrs["num_scan_inputs"].i)
    if any(k in attrs for k in ("scan_input_axes", "scan_input_directions",
                                "scan_output_axes", "scan_output_directions")):
        raise ValueError("unroll_steps: only Scans along axis 0, forward, are unrolled")
    n_state = len(scan.input) - scanned
    carried = list(scan.input[:n_state])
    shared = {t.name: unique_name(f"{t.name}.unrolled", taken) for t in body.initializer}
    for t in body.initializer:
        g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(t), shared[t.name]))
    nodes: list[onnx.NodeProto] = []
    outs: list[list[str]] = [[] for _ in body.output[n_state:]]
    for i in range(steps):
        index = unique_name(f"steps.{i}", taken)
        g.initializer.append(numpy_helper.from_array(_i64(i), index))
        names = dict(shared)
        names.update(zip((v.name for v in body.input[:n_state]), carried))
        for v, x in zip(body.input[n_state:], scan.input[n_state:]):
            names[v.name] = unique_name(f"{v.name}.{i}", taken)
            nodes.append(helper.make_node("Gather", [x, index], [names[v.name]], axis=0))
        for node in body.node:
            nodes.append(_copy(node, names, i, taken))
        carried = [names[v.name] for v in body.output[:n_state]]
        for acc, v in zip(outs, body.output[n_state:]):
            acc.append(names[v.name])
    axis0 = unique_name("steps.axis0", taken)
    g.initializer.append(numpy_helper.from_array(_i64([0]), axis0))
    for final, value in zip(scan.output[:n_state], carried):
        nodes.append(helper.make_node("Identity", [value], [final]))
    for stacked, values in zip(scan.output[n_state:], outs):
        rows = [unique_name(f"{v}.row", taken) for v in values]
        nodes += [helper.make_node("Unsqueeze", [v, axis0], [r]) for v, r in zip(values, rows)]
        nodes.append(helper.make_node("Concat", rows, [stacked], axis=0))
    return nodes


def _copy(node: onnx.NodeProto, names: dict[str, str], i: int, taken: set[str]
          ) -> onnx.NodeProto:
    """``node`` of copy ``i``: its outputs renamed (recorded in ``names``), its inputs and the
    outer reads of its subgraphs renamed by ``names``."""
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.name = unique_name(f"{node.name or node.op_type}.{i}", taken)
    new.input[:] = [names.get(x, x) for x in node.input]
    for a in new.attribute:
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            _rename_reads(sub, names)
    for k, y in enumerate(node.output):
        if y:
            names[y] = unique_name(f"{y}.{i}", taken)
            new.output[k] = names[y]
    return new


def _rename_reads(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    """Rename the reads of enclosing values inside ``graph`` (not those of its own values)."""
    own = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    for n in graph.node:
        n.input[:] = [x if x in own else names.get(x, x) for x in n.input]
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _rename_reads(sub, {k: v for k, v in names.items() if k not in own})
        own.update(n.output)


def _i64(v: int | list[int]) -> np.ndarray:
    return np.array(v, dtype=np.int64)
