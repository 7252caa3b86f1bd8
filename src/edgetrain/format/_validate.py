"""Validation of untrusted trainable files before anything runs or allocates.

A device loads files that may be truncated, stale, foreign or hostile. Everything a file
declares is checked against itself here -- the metadata (:mod:`edgetrain.format._schema`), every
graph at every depth, every tensor, the graphs the signatures name, the tensors each step
updates -- so that a bad file ends in one :class:`~edgetrain.errors.FormatError` with a
message, never in another exception, a hang or an allocation the file merely declared.

Nothing in a file is executed or followed: there is no pickle; no tensor anywhere (initializer,
sparse initializer, ``Constant`` attribute, ``If``/``Loop``/``Scan`` body at any depth,
training or initialization graph) may keep its bytes in *external data* -- onnxruntime would
read that path relative to the process's working directory, since it is handed the model as
bytes -- and every op is a standard op of the default domain (no model-local functions, no
other opset imports), so no runtime extension or contrib op that reads files can be reached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import SparseTensorProto, TensorProto, helper, numpy_helper

from ._files import STATE_STORE, graph_reads, state_store
from ._schema import MAX_ELEMENTS, fail, quote, validate_meta
from ._spec import LoraSite, Metadata, SignatureSpec, TensorSpec

__all__ = ["MAX_ELEMENTS", "check_structure", "check_tensor", "count_elements", "iter_graphs",
           "iter_nodes", "iter_tensors", "validate", "validate_meta"]

#: Deepest nesting of graphs (an ``If`` inside a ``Loop`` body is depth 2).
MAX_GRAPH_DEPTH = 32
DEFAULT_DOMAINS = ("", "ai.onnx")
#: Largest dense shape of a sparse tensor (elements): unlike a dense tensor, whose stored bytes
#: bound it, a sparse one is made dense by a runtime from a handful of stored values.
MAX_SPARSE_ELEMENTS = 1 << 24
MIN_IR_VERSION = 7  # what the compiler writes at least
MIN_OPSET = 13  # the oldest opset the compiler accepts
_FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
_STATE_TYPES = (*_FLOATS, TensorProto.INT64, TensorProto.INT32)


# -- every graph, node and tensor of a file ----------------------------------------------------

def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """Every graph held by a node's attributes, whatever type the attribute claims."""
    for a in node.attribute:
        if a.HasField("g"):
            yield a.name, a.g
        for sub in a.graphs:
            yield a.name, sub


def iter_graphs(model: onnx.ModelProto) -> Iterator[tuple[onnx.GraphProto, str]]:
    """(graph, where) for every graph of ``model``: the main graph, each training graph and
    its initialization graph, and every subgraph nested in their nodes, at any depth."""
    stack: list[tuple[onnx.GraphProto, str, int]] = [(model.graph, "main", 0)]
    for i, ti in enumerate(model.training_info):
        stack.append((ti.algorithm, f"training_info/{i}", 0))
        if ti.HasField("initialization"):
            stack.append((ti.initialization, f"training_info/{i} initialization", 0))
    while stack:
        g, where, depth = stack.pop()
        yield g, where
        for node in g.node:
            for attr, sub in _subgraphs(node):
                if depth >= MAX_GRAPH_DEPTH:
                    raise fail(f"graphs in {where} are nested more than {MAX_GRAPH_DEPTH} deep")
                stack.append((sub, f"{where}, {attr} of node {quote(node.name)}", depth + 1))


def iter_nodes(model: onnx.ModelProto) -> Iterator[tuple[onnx.NodeProto, str]]:
    """(node, where) for every node of every graph of ``model`` (see :func:`iter_graphs`)."""
    for g, where in iter_graphs(model):
        for node in g.node:
            yield node, where


def _graph_tensors(g: onnx.GraphProto, where: str
                   ) -> Iterator[tuple[TensorProto | SparseTensorProto, str]]:
    """Every tensor stored in ``g`` itself: initializers, sparse initializers, attributes."""
    for t in g.initializer:
        yield t, f"{where}, initializer"
    for s in g.sparse_initializer:
        yield s, f"{where}, sparse initializer"
    for node in g.node:
        at = f"{where}, node {quote(node.name)}"
        for a in node.attribute:  # every field, whatever type the attribute claims
            if a.HasField("t"):
                yield a.t, at
            yield from ((t, at) for t in a.tensors)
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor, at
            yield from ((s, at) for s in a.sparse_tensors)


def iter_tensors(model: onnx.ModelProto) -> Iterator[tuple[TensorProto, str]]:
    """(tensor, where) for every dense tensor of ``model``, the parts of sparse ones included."""
    for g, where in iter_graphs(model):
        for t, at in _graph_tensors(g, where):
            if isinstance(t, SparseTensorProto):
                yield t.values, at
                yield t.indices, at
            else:
                yield t, at


# -- tensors -----------------------------------------------------------------------------------

def count_elements(dims: Iterable[int], label: str,
                   error: Callable[[str], Exception] = fail) -> int:
    """The element count of ``dims``; ``error(message)`` for a negative or huge declaration."""
    n = 1
    for d in dims:
        if d < 0:
            raise error(f"{label} has a negative dimension {d}")
        n *= int(d)
        if n > MAX_ELEMENTS:
            raise error(f"{label} declares more than {MAX_ELEMENTS} elements")
    return n


def check_tensor(t: TensorProto, where: str) -> None:
    """Declared dims are sane and the stored bytes match them; no external data."""
    if not isinstance(t.name, str):
        raise fail(f"a tensor in {where} has a name that is not UTF-8 text")
    label = f"tensor {quote(t.name)} in {where}"
    if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
        where_to = next((e.value for e in t.external_data if e.key == "location"), "")
        raise fail(f"{label} refers to external data ({quote(where_to)}); edgetrain files "
                   "keep every tensor inside the file and never read another file")
    n = count_elements(t.dims, label)
    if t.data_type == TensorProto.STRING:
        if len(t.string_data) != n:
            raise fail(f"string {label} declares {n} elements but stores {len(t.string_data)}")
        return
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError) as e:
        raise fail(f"{label} has unknown data type {t.data_type}") from e
    if t.HasField("raw_data"):
        if len(t.raw_data) != n * itemsize:
            raise fail(f"{label} declares shape {list(t.dims)} ({n * itemsize} bytes) but "
                       f"stores {len(t.raw_data)} bytes")
        return
    stored = len(getattr(t, helper.tensor_dtype_to_field(t.data_type)))
    per = 2 if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else 1
    if stored != n * per:
        raise fail(f"{label} declares {n} elements but stores {stored}")


def check_sparse(s: SparseTensorProto, where: str) -> None:
    """A sparse tensor's parts are sane tensors, its indices lie inside its shape, and its
    dense shape is small enough to be made dense."""
    check_tensor(s.values, where)
    check_tensor(s.indices, where)
    label = f"sparse tensor {quote(s.values.name)} in {where}"
    n = count_elements(s.dims, label)
    if n > MAX_SPARSE_ELEMENTS:  # a runtime makes it dense: a few stored bytes, huge memory
        raise fail(f"{label} declares {n} elements; a sparse tensor may declare at most "
                   f"{MAX_SPARSE_ELEMENTS}")
    if len(s.values.dims) != 1:
        raise fail(f"{label} stores its values in a {len(s.values.dims)}-d tensor, not 1-d")
    nnz = int(s.values.dims[0])
    if s.indices.data_type != TensorProto.INT64 or nnz > n \
            or list(s.indices.dims) not in ([nnz], [nnz, len(s.dims)]):
        raise fail(f"{label} has indices of shape {list(s.indices.dims)} for {nnz} values")
    idx = numpy_helper.to_array(s.indices)  # its size was checked against its dims above
    bound = np.array(list(s.dims), dtype=np.int64) if idx.ndim == 2 else n
    if idx.size and (np.any(idx < 0) or np.any(idx >= bound)):
        raise fail(f"{label} has indices outside its shape {list(s.dims)}")


def _check_names(g: onnx.GraphProto, where: str) -> None:
    """Every name is text: protobuf hands over strings that are not UTF-8 as bytes."""
    for v in (*g.input, *g.output, *g.value_info):
        if not isinstance(v.name, str):
            raise fail(f"a value name in {where} is not UTF-8 text")
    for n in g.node:
        if not all(isinstance(x, str) for x in (n.name, n.op_type, n.domain, *n.input,
                                                  *n.output)):
            raise fail(f"a node in {where} has a name that is not UTF-8 text")


def check_structure(model: onnx.ModelProto) -> None:
    """Standard ops only, everywhere, and every tensor sane and stored inside the file."""
    if not model.HasField("graph"):
        raise fail("no main graph")
    if len(model.functions):
        raise fail(f"the file defines model-local functions ({quote(model.functions[0].name)}"
                   "); edgetrain files use standard ONNX ops only")
    if not MIN_IR_VERSION <= model.ir_version <= onnx.IR_VERSION:
        raise fail(f"IR version {model.ir_version} is outside {MIN_IR_VERSION}.."
                   f"{onnx.IR_VERSION}, the versions this edgetrain's ONNX reads")
    for o in model.opset_import:
        if o.domain not in DEFAULT_DOMAINS:
            raise fail(f"the file imports the non-standard opset domain {quote(o.domain)}")
    opsets = [o.version for o in model.opset_import]
    if len(opsets) != 1 or not MIN_OPSET <= opsets[0] <= onnx.defs.onnx_opset_version():
        raise fail(f"the file must import one default ONNX opset in {MIN_OPSET}.."
                   f"{onnx.defs.onnx_opset_version()}; it imports {opsets[:3]}")
    for g, where in iter_graphs(model):
        _check_names(g, where)
        for node in g.node:
            if node.domain not in DEFAULT_DOMAINS:
                raise fail(f"node {quote(node.name)} in {where} uses the non-standard op "
                           f"{quote(node.domain)}::{quote(node.op_type)}")
        for t, at in _graph_tensors(g, where):
            if isinstance(t, SparseTensorProto):
                check_sparse(t, at)
            else:
                check_tensor(t, at)


# -- the file against its metadata -------------------------------------------------------------

def validate(model: onnx.ModelProto, meta: Metadata | Mapping[str, Any]) -> None:
    """Raise FormatError unless the file is self-consistent and safe to load.

    ``meta`` is the file's metadata, typed or as JSON values; it is checked in full again
    (typed metadata may have been built by hand).
    """
    if isinstance(meta, Metadata):
        validate_meta(meta.to_json())
    else:
        meta = Metadata.from_json(meta)
    _check_file(model, meta)


def _check_file(model: onnx.ModelProto, meta: Metadata) -> None:
    check_structure(model)
    inits: dict[str, TensorProto] = {}
    for t in model.graph.initializer:
        if t.name in inits:
            raise fail(f"the main graph has two initializers named {quote(t.name)}")
        inits[t.name] = t
    _stored_state(model, meta, inits)
    variables = _check_state_tensors(meta, inits)
    graphs = {"main": model.graph}
    graphs.update((f"training_info/{i}", ti.algorithm) for i, ti in
                  enumerate(model.training_info))
    for sig, spec in meta.signatures.items():
        if spec.kind == "graph":
            g = graphs.get(spec.graph or "")
            if g is None:
                raise fail(f"signature {quote(sig)} names a missing graph {quote(spec.graph)}")
            _check_signature(sig, spec, g, inits, variables)
    _check_bindings(model, meta)
    if meta.lora_merge:
        _check_lora(meta, inits, model.graph)


def _stored_state(model: onnx.ModelProto, meta: Metadata, inits: dict[str, TensorProto]
                  ) -> None:
    """Add the state kept with the train graph (format 3) to ``inits``: only state tensors,
    once, not read by the inference graph, and not in a file of an older format."""
    store = state_store(model)
    if store is None:
        return
    variables, read = meta.variables, None
    for t in store.initializer:
        if t.name not in variables:
            continue
        if meta.format_version < 3:
            raise fail(f"state tensor {quote(t.name)} is stored with training_info/"
                       f"{STATE_STORE}, which format version {meta.format_version} does not "
                       "allow")
        if t.name in inits:
            raise fail(f"state tensor {quote(t.name)} is stored twice")
        read = graph_reads(model.graph) if read is None else read
        if t.name in read:
            raise fail(f"the inference graph reads {quote(t.name)}, which is stored with the "
                       "train graph")
        inits[t.name] = t


def _check_state_tensors(meta: Metadata, inits: Mapping[str, TensorProto]) -> set[str]:
    """The listed tensors exist; what trains or changes has a type the runtimes keep."""
    for key, names in (("trainable", meta.trainable), ("frozen", meta.frozen),
                       ("state", meta.state)):
        for n in names:
            if n not in inits:
                raise fail(f"tensor {quote(n)} listed as {key} in the metadata is not in the file")
    for n in meta.trainable:
        if inits[n].data_type not in _FLOATS:
            raise fail(f"trainable tensor {quote(n)} is not a float tensor")
    for n in meta.state:
        if inits[n].data_type not in _STATE_TYPES:
            raise fail(f"state tensor {quote(n)} has an unsupported data type")
    step = inits[meta.step]
    if step.data_type != TensorProto.INT64 or len(step.dims):
        raise fail(f"the step counter {quote(meta.step)} is not an int64 scalar")
    return set(meta.trainable) | set(meta.state)


def _np_name(elem_type: int) -> str | None:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return None


def _check_io(sig: str, specs: tuple[TensorSpec, ...],
              table: Mapping[str, onnx.ValueInfoProto], kind: str, ref: str) -> None:
    """Each declared input/output is one of the graph's, with the same dtype and shape."""
    for s in specs:
        label = f"signature {quote(sig)} {kind} {quote(s.name)}"
        vi = table.get(s.name)
        if vi is None:
            raise fail(f"{label} is not an {kind} of {ref}")
        tt = vi.type.tensor_type
        if _np_name(tt.elem_type) != s.dtype:
            raise fail(f"{label} dtype disagrees with its graph")
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if len(dims) != len(s.shape):
                raise fail(f"{label} rank disagrees with its graph")
            if any(isinstance(a, int) and b is not None and a != b
                   for a, b in zip(s.shape, dims)):
                raise fail(f"{label} shape {list(s.shape)} disagrees with its graph")


def _check_signature(sig: str, spec: SignatureSpec, g: onnx.GraphProto,
                     inits: Mapping[str, TensorProto], variables: set[str]) -> None:
    ref = spec.graph or ""
    g_inputs = {v.name: v for v in g.input}
    _check_io(sig, spec.inputs, g_inputs, "input", ref)
    _check_io(sig, spec.outputs, {v.name: v for v in g.output}, "output", ref)
    declared = {s.name for s in spec.inputs}
    for n in g_inputs:
        if n not in declared and n not in inits:
            raise fail(f"{ref} has an input {quote(n)} that signature {quote(sig)} does not "
                       "declare")
    # A state tensor is read from the main graph's initializers; a graph that defines its
    # own value of that name would make the runtime read something else.
    own = {o for n in g.node for o in n.output} | set(g_inputs)
    if ref != "main":
        # the state store's state tensors are the state itself, not a redefinition
        own |= {t.name for t in g.initializer
                if not (ref == f"training_info/{STATE_STORE}" and t.name in variables)}
    shadowed = sorted(variables & own)
    if shadowed:
        raise fail(f"{ref} redefines the state tensor {quote(shadowed[0])}")
    if spec.updates and ref == "main":
        raise fail(f"signature {quote(sig)} updates state from the main graph")
    if spec.updates:
        _check_updates(sig, spec, g, inits, variables)


# -- updates: each state tensor's new value is computed from that very tensor -----------------

def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for _, sub in _subgraphs(node):
        for n in sub.node:
            names.update(n.input)
            names |= _subgraph_reads(n)
    return names


def _varying(g: onnx.GraphProto, variables: set[str]) -> set[str]:
    """The values of ``g`` that depend on some state tensor."""
    dep = set(variables)
    for n in g.node:
        if any(i in dep for i in n.input) or not dep.isdisjoint(_subgraph_reads(n)):
            dep.update(n.output)
    return dep


def _carriers(node: onnx.NodeProto, varying: set[str], output: str = "") -> list[str]:
    """The operands of ``node`` that may carry the old value of the tensor being updated.

    Every update the compiler emits is ``old ± delta``, where ``old`` may be scaled by a
    factor that depends on no state (momentum, β, 1 - lr·λ) or chosen by a ``Where``:
    ``Sub(p, Δ)`` (SGD, Adam), ``Gemm(A, B, C=p)`` (plain SGD fused into the weight
    gradient), ``Add(Mul(m, β), Δ)`` (optimizer slots, batch-norm running statistics),
    ``Add(step, ok)`` (the counter), ``Where(first_step, g, Add(Mul(buf, μ), Δ))``
    (momentum with dampening), ``Identity`` (a value passed through), and a ``Scan``'s or
    ``Loop``'s carried output (``train_steps``: the final value of the carried value it was
    initialized with: a Scan now, a Loop in earlier files). Only these operands are followed,
    so a walk never wanders into the gradient, which reads every weight.
    """
    ins = list(node.input)
    op = node.op_type if node.domain in ("", "ai.onnx") else ""
    if op == "Loop":
        k = list(node.output).index(output) if output in node.output else len(ins)
        return ins[k + 2:k + 3] if k < len(ins) - 2 else []
    if op == "Scan":
        scanned = next((a.i for a in node.attribute if a.name == "num_scan_inputs"), 0)
        k = list(node.output).index(output) if output in node.output else len(ins)
        return ins[k:k + 1] if k < len(ins) - scanned else []
    if op == "Identity" or op == "Sub":
        return ins[:1]
    if op == "Add":
        return ins[:2]
    if op == "Mul" and len(ins) == 2:
        return [x for x, other in ((ins[0], ins[1]), (ins[1], ins[0])) if other not in varying]
    if op == "Where":
        return ins[2:3]
    if op == "Gemm" and len(ins) == 3 and ins[2]:
        beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
        return ins[2:3] if beta != 0 else []
    return []


def _anchor(value: str, producers: Mapping[str, onnx.NodeProto], varying: set[str],
            variables: set[str]) -> set[str]:
    """The state tensors nearest to ``value`` along carrier operands (see :func:`_carriers`)."""
    frontier, seen = [value], {value}
    while frontier:
        found = {x for x in frontier if x in variables}
        if found:
            return found
        nxt = []
        for x in frontier:
            node = producers.get(x)
            for i in _carriers(node, varying, x) if node is not None else ():
                if i and i not in seen:
                    seen.add(i)
                    nxt.append(i)
        frontier = nxt
    return set()


def _check_updates(sig: str, spec: SignatureSpec, g: onnx.GraphProto,
                   inits: Mapping[str, TensorProto], variables: set[str]) -> None:
    """Each update names an output of the step that is the new value of that very tensor.

    Names alone prove nothing (``updates["fc1.bias"] = "fc2.bias.new"`` would zero a weight
    after one step), so the output must be computed from the tensor it replaces: the
    nearest state tensor along the carrier operands must be that one tensor, and nothing
    else. Shapes and dtypes must agree, and no two updates share an output (schema).
    """
    ref = spec.graph
    outs = {o.name: o for o in g.output}
    public = {s.name for s in spec.outputs}
    producers = {o: n for n in g.node for o in n.output if o}
    varying = _varying(g, variables)
    for k, v in spec.updates.items():
        label = f"signature {quote(sig)} updates {quote(k)} from {quote(v)}"
        vi = outs.get(v)
        if vi is None or v in public:
            raise fail(f"{label}, which is not a state output of {ref}")
        t, tt = inits[k], vi.type.tensor_type
        if tt.elem_type != t.data_type:
            raise fail(f"{label}, which changes its dtype")
        if tt.HasField("shape") and (len(tt.shape.dim) != len(t.dims) or any(
                d.HasField("dim_value") and d.dim_value != n for d, n in zip(tt.shape.dim,
                                                                            t.dims))):
            raise fail(f"{label}, which changes its shape")
        anchor = _anchor(v, producers, varying, variables)
        if anchor != {k}:
            found = ", ".join(quote(a) for a in sorted(anchor)[:3]) or "no state tensor"
            raise fail(f"{label}, but {ref} computes {quote(v)} from {found}, not from "
                       f"{quote(k)}")


def _check_bindings(model: onnx.ModelProto, meta: Metadata) -> None:
    """Each training graph's update_binding is exactly what the metadata says it updates."""
    by_graph: dict[str, dict[str, str]] = {}
    for sig, spec in meta.signatures.items():
        if spec.kind == "graph" and spec.graph and spec.graph != "main":
            updates = dict(spec.updates)
            if by_graph.setdefault(spec.graph, updates) != updates:
                raise fail(f"signature {quote(sig)} and another one update differently from "
                           f"the same graph {spec.graph}")
    for i, ti in enumerate(model.training_info):
        binding = [(b.key, b.value) for b in ti.update_binding]
        if len(dict(binding)) != len(binding) or \
                dict(binding) != by_graph.get(f"training_info/{i}", {}):
            raise fail(f"the update_binding of training_info/{i} disagrees with the "
                       "updates in the metadata")


def _check_lora(meta: Metadata, inits: Mapping[str, TensorProto],
                main: onnx.GraphProto) -> None:
    """What ``export`` folds together exists and fits, and removing a site's nodes leaves a
    whole graph: what they compute is read only by themselves, except the site's output,
    which the merge hands back to the node that computes the base value."""
    for i, ad in enumerate(meta.lora_merge):
        label = f"LoRA adapter {i} ({quote(ad.weight)})"
        try:
            w, a, b = (inits[n] for n in (ad.weight, ad.A, ad.B))
        except KeyError as e:
            raise fail(f"{label} names a missing tensor {quote(e.args[0])}") from None
        if ad.A not in meta.trainable or ad.B not in meta.trainable:
            raise fail(f"{label}: its A and B must be trainable")
        if any(t.data_type not in _FLOATS or len(t.dims) != 2 for t in (w, a, b)):
            raise fail(f"{label}: the weight and the adapters must be float matrices")
        d_in, d_out = int(a.dims[0]), int(b.dims[1])
        want = [d_out, d_in] if ad.transposed else [d_in, d_out]
        if a.dims[1] != b.dims[0] or list(w.dims) != want:
            raise fail(f"{label}: shapes {list(w.dims)}, {list(a.dims)} and {list(b.dims)} "
                       "do not fit together")
        for site in ad.sites:
            if not _removable(site, main):
                raise fail(f"{label} names nodes that are not exactly its own side branch")


def _removable(site: LoraSite, main: onnx.GraphProto) -> bool:
    names = set(site.nodes)
    inside = [n for n in main.node if n.name in names]
    if len(inside) != len(names):
        return False
    made = {o for n in inside for o in n.output}
    outside_reads = {i for n in main.node if n.name not in names for i in n.input}
    outside_reads |= {o.name for o in main.output}
    base_made_outside = any(site.base in n.output for n in main.node if n.name not in names)
    return site.output in made and base_made_outside \
        and not (made - {site.output}) & outside_reads
