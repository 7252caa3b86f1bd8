"""Validation of untrusted trainable files before anything runs or allocates.

A device loads files that may be truncated, stale, foreign or hostile. Everything a file
declares is checked against itself here — metadata schema, the graphs it names, the tensors it
updates, the byte sizes of every tensor against its declared shape — so that a bad file ends in
one :class:`~edgetrain.errors.FormatError` with a message, never in another exception, a hang or
an allocation the file merely declared. Nothing in a file is ever executed: there is no pickle,
and tensors stored as external data (which would make the runtime read other files) are refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from .errors import FormatError

#: Largest tensor a file may declare (elements); far above any on-device model.
MAX_ELEMENTS = 1 << 31
_DTYPES = {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int8", "uint8",
           "bool", "str"}
_GRAPH_REF = re.compile(r"^(main|training_info/(\d{1,4}))$")


def _fail(msg: str) -> FormatError:
    return FormatError(f"invalid edgetrain file: {msg}")


def check_tensor(t: TensorProto, where: str) -> None:
    """Declared dims are sane and the stored bytes match them; no external data."""
    if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
        raise _fail(f"tensor {t.name!r} in {where} refers to external data; edgetrain files "
                    "keep every tensor inside the file")
    n = 1
    for d in t.dims:
        if d < 0:
            raise _fail(f"tensor {t.name!r} in {where} has a negative dimension {d}")
        n *= int(d)
        if n > MAX_ELEMENTS:
            raise _fail(f"tensor {t.name!r} in {where} declares more than {MAX_ELEMENTS} "
                        "elements")
    if t.data_type == TensorProto.STRING:
        stored = len(t.string_data)
        if stored != n:
            raise _fail(f"string tensor {t.name!r} in {where} declares {n} elements but "
                        f"stores {stored}")
        return
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError) as e:
        raise _fail(f"tensor {t.name!r} in {where} has unknown data type {t.data_type}") from e
    if t.HasField("raw_data"):
        if len(t.raw_data) != n * itemsize:
            raise _fail(f"tensor {t.name!r} in {where} declares shape {list(t.dims)} "
                        f"({n * itemsize} bytes) but stores {len(t.raw_data)} bytes")
        return
    field = helper.tensor_dtype_to_field(t.data_type)
    stored = len(getattr(t, field))
    per = 2 if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else 1
    if stored != n * per:
        raise _fail(f"tensor {t.name!r} in {where} declares {n} elements but stores {stored}")


def _graph_tensors(g: onnx.GraphProto, where: str) -> Iterable[tuple[TensorProto, str]]:
    for t in g.initializer:
        yield t, where
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t, f"{where}, node {node.name!r}"
            elif a.type == onnx.AttributeProto.TENSORS:
                for t in a.tensors:
                    yield t, f"{where}, node {node.name!r}"
            elif a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
                for sub in subs:
                    yield from _graph_tensors(sub, f"{where}, subgraph of {node.name!r}")


def _spec_list(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _fail(f"{what} must be a list")
    for s in value:
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            raise _fail(f"{what} entries must be objects with a name")
        if s.get("dtype") not in _DTYPES:
            raise _fail(f"{what} entry {s.get('name')!r} has unknown dtype {s.get('dtype')!r}")
        shape = s.get("shape")
        if not isinstance(shape, list) or len(shape) > 16 or not all(
                d is None or isinstance(d, str) or (isinstance(d, int) and 0 <= d < MAX_ELEMENTS)
                for d in shape):
            raise _fail(f"{what} entry {s['name']!r} has an invalid shape {shape!r}")
    return value


def _names(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(f"{what} must be a list of names")
    return value


def validate(model: onnx.ModelProto, meta: Mapping[str, Any]) -> None:
    """Raise FormatError unless the file is self-consistent and safe to load."""
    if not model.HasField("graph"):
        raise _fail("no main graph")
    graphs: dict[str, onnx.GraphProto] = {"main": model.graph}
    for i, ti in enumerate(model.training_info):
        graphs[f"training_info/{i}"] = ti.algorithm
    for ref, g in graphs.items():
        for t, where in _graph_tensors(g, ref):
            check_tensor(t, where)
        for node in g.node:
            if node.domain not in ("", "ai.onnx"):
                raise _fail(f"node {node.name!r} in {ref} uses the non-standard op "
                            f"{node.domain}::{node.op_type}")
    inits = {t.name: t for t in model.graph.initializer}
    trainable = _names(meta.get("trainable"), "trainable")
    frozen = _names(meta.get("frozen"), "frozen")
    state = _names(meta.get("state"), "state")
    step = meta.get("step", "edgetrain.step")
    if not isinstance(step, str):
        raise _fail("step must be a name")
    variable = set(trainable) | set(state) | {step}
    for name in [*trainable, *frozen, *state]:
        if name not in inits:
            raise _fail(f"tensor {name!r} listed in the metadata is not in the file")
    sigs = meta.get("signatures")
    if not isinstance(sigs, dict) or not sigs:
        raise _fail("no signatures")
    for name, spec in sigs.items():
        if not isinstance(spec, dict):
            raise _fail(f"signature {name!r} is not an object")
        kind = spec.get("kind")
        ins = _spec_list(spec.get("inputs"), f"signature {name!r} inputs")
        outs = _spec_list(spec.get("outputs"), f"signature {name!r} outputs")
        updates = spec.get("updates", {})
        if not isinstance(updates, dict):
            raise _fail(f"signature {name!r} updates must be an object")
        if kind == "builtin":
            if name not in ("save", "restore"):
                raise _fail(f"unknown builtin signature {name!r}")
            if updates:
                raise _fail(f"builtin signature {name!r} cannot declare updates")
            continue
        if kind != "graph":
            raise _fail(f"signature {name!r} has unknown kind {kind!r}")
        graph_ref = spec.get("graph")
        if not isinstance(graph_ref, str) or not _GRAPH_REF.match(graph_ref) \
                or graph_ref not in graphs:
            raise _fail(f"signature {name!r} names a missing graph {graph_ref!r}")
        ref = graph_ref
        g = graphs[ref]
        g_inputs = {v.name: v for v in g.input}
        g_outputs = {v.name for v in g.output}
        for s in ins:
            vi = g_inputs.get(s["name"])
            if vi is None:
                raise _fail(f"signature {name!r} input {s['name']!r} is not an input of {ref}")
            tt = vi.type.tensor_type
            try:
                graph_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
            except (KeyError, TypeError, ValueError):
                graph_dtype = None
            if graph_dtype != s["dtype"]:
                raise _fail(f"signature {name!r} input {s['name']!r} dtype disagrees with "
                            "its graph")
            if tt.HasField("shape") and len(tt.shape.dim) != len(s["shape"]):
                raise _fail(f"signature {name!r} input {s['name']!r} rank disagrees with "
                            "its graph")
        for s in outs:
            if s["name"] not in g_outputs:
                raise _fail(f"signature {name!r} output {s['name']!r} is not an output of {ref}")
        for k, v in updates.items():
            if k not in variable or not isinstance(v, str) or v not in g_outputs:
                raise _fail(f"signature {name!r} updates {k!r} from {v!r}, which is not a "
                            "trainable/state tensor fed by an output of its graph")
            t_out = next(o for o in g.output if o.name == v).type.tensor_type
            if t_out.elem_type != inits[k].data_type:
                raise _fail(f"signature {name!r} update of {k!r} changes its dtype")
    for required in ("infer",):
        if required not in sigs:
            raise _fail(f"no {required!r} signature")
