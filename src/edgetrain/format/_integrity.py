"""Canonical bytes of checkpoints: the checksum, the MAC and the model's architecture hash.

Every digest here is over bytes defined in ``docs/format.md`` — lengths and numbers as
little-endian integers, text as UTF-8 — never over a Python ``repr``, so that any driver (the
browser's ``edgetrain.js``, a native one) computes the same value and so that a digest does not
change with the Python version. The file layout (safetensors, the metadata keys) and the checks
on restore live in :mod:`edgetrain.format`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import CheckpointError, InputError
from ._files import graph_reads, stored_tensors
from ._spec import Metadata

#: ``checksum_version`` written by this release: the canonical encoding of ``checksum_v2``.
CHECKSUM_VERSION = 2
#: Prefix of the ``mac`` metadata value (the algorithm and the version of its input bytes).
MAC_SCHEME = "hmac-sha256-v1"
#: Shortest key accepted for the MAC: HMAC's strength is the key's entropy.
MIN_KEY_BYTES = 16
#: Largest step count a checkpoint may hold: no device runs 2**53 steps, and the count must
#: stay exact in float64 (the optimizers' bias corrections read it as a double).
MAX_STEP = 2 ** 53

_CHECKSUM_TAG = b"edgetrain-checkpoint-checksum-v2\x00"
_MAC_TAG = b"edgetrain-checkpoint-mac-v1\x00"
_ARCH_TAG = b"edgetrain-architecture-v1\x00"
_WEIGHTS_TAG = b"edgetrain-weights-architecture-v1\x00"

#: numpy dtype name → the safetensors dtype code the canonical bytes name it by.
ST_DTYPES = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16",
             "uint32": "U32", "int32": "I32", "uint64": "U64", "int64": "I64",
             "float16": "F16", "float32": "F32", "float64": "F64"}


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def _text(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return _u64(len(b)) + b


def _name_order(names: Iterable[str]) -> list[str]:
    """Sorted by UTF-8 bytes (the same as code-point order), the order every digest uses."""
    return sorted(names, key=lambda n: n.encode("utf-8"))


# -- checksum -------------------------------------------------------------------------------

#: Metadata keys the checksum does not cover: itself, and the MAC computed over it.
UNCHECKED_KEYS = frozenset({"checksum", "mac"})


def checksum(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str],
             version: int = CHECKSUM_VERSION) -> str:
    """Hex SHA-256 of the canonical bytes of the metadata (but the checksum and the MAC) and
    of every tensor (``version`` 2), or the legacy digest of checkpoints written before
    ``checksum_version`` existed (``version`` 1: tensors only, Python's ``str(shape)``)."""
    if version == 1:
        return _checksum_v1(tensors)
    if version != 2:
        raise CheckpointError(f"unknown checksum version {version}")
    h = hashlib.sha256(_CHECKSUM_TAG)
    h.update(_metadata_bytes(metadata, UNCHECKED_KEYS))
    h.update(_u64(len(tensors)))
    for name in _name_order(tensors):
        a = np.asarray(tensors[name])
        code = ST_DTYPES.get(a.dtype.name)
        if code is None:
            raise CheckpointError(f"tensor {name!r} has dtype {a.dtype}, which checkpoints "
                                  "do not hold")
        a = np.require(a, dtype=a.dtype.newbyteorder("<"), requirements="C")
        h.update(_text(name))
        h.update(_text(code))
        h.update(_u64(a.ndim))
        h.update(b"".join(struct.pack("<q", d) for d in a.shape))
        h.update(_u64(a.nbytes))
        h.update(a.reshape(-1).view(np.uint8).data if a.size else b"")
    return h.hexdigest()


def _checksum_v1(tensors: Mapping[str, np.ndarray]) -> str:
    """The first checksum: it hashed Python's ``str(shape)``; kept to verify old files."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.require(tensors[name], requirements="C")
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# -- MAC ------------------------------------------------------------------------------------

def key_bytes(key: Any) -> bytes:
    """The MAC key as bytes; anything else is the caller's error, named."""
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise InputError(f"the checkpoint key must be bytes (e.g. os.urandom(32)), got "
                         f"{type(key).__name__}")
    b = bytes(key)
    if len(b) < MIN_KEY_BYTES:
        raise InputError(f"the checkpoint key has {len(b)} bytes; use at least "
                         f"{MIN_KEY_BYTES} random bytes")
    return b


def _metadata_bytes(metadata: Mapping[str, str], skip: Iterable[str]) -> bytes:
    """Count, then each key and value (length-prefixed UTF-8), keys in UTF-8 byte order."""
    keys = _name_order(k for k in metadata if k not in set(skip))
    return _u64(len(keys)) + b"".join(_text(k) + _text(metadata[k]) for k in keys)


def mac(key: bytes, metadata: Mapping[str, str]) -> str:
    """``mac`` metadata value: HMAC-SHA256 over the canonical bytes of every other key.

    The metadata holds the checksum, which covers every tensor and the rest of the metadata,
    so the MAC covers the whole file.
    """
    msg = _MAC_TAG + _metadata_bytes(metadata, {"mac"})
    digest = hmac.new(key_bytes(key), msg, hashlib.sha256).hexdigest()
    return f"{MAC_SCHEME}:{digest}"


def verify_mac(key: bytes, metadata: Mapping[str, str], where: str) -> None:
    """Raise unless ``metadata`` carries a MAC made with ``key`` (constant-time compare)."""
    want = mac(key, metadata)
    got = metadata.get("mac")
    if got is None:
        raise CheckpointError(f"{where} carries no MAC, but a key was given: it was not "
                              "saved with the key, or its MAC was removed")
    if not hmac.compare_digest(want.encode("utf-8"), got.encode("utf-8", "replace")):
        raise CheckpointError(f"{where} fails its MAC check: it was not saved with this "
                              "key, or it was modified")


# -- model identity -------------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """What a checkpoint must agree on with its model beyond tensor names and shapes.

    ``architecture``: hex SHA-256 over the model's structure (see :func:`architecture`).
    ``nonnegative``: state tensors that are nonnegative by construction (Adam's second
    moments, batch-norm running variances), so a negative value is a forged one.
    ``weights``: hex SHA-256 over the inference network alone (see
    :func:`weights_architecture`), what a weights-only restore must match.
    """

    architecture: str
    nonnegative: frozenset[str] = frozenset()
    weights: str = ""


def identify(model: onnx.ModelProto, meta: Metadata) -> Identity:
    return Identity(architecture(model, meta), nonnegative(model, meta),
                    weights_architecture(model))


def architecture(model: onnx.ModelProto, meta: Metadata) -> str:
    """Hex SHA-256 of what makes two trainable files the same model for a checkpoint.

    Hashed: the opsets, the infer graph's structure (inputs and outputs with their types, every
    node's op, wiring and attributes, every initializer's name, dtype and shape — not weight
    values), the trainable and state lists and the optimizer's configuration without its
    learning rate (which every step may override). So re-saving a file, either backend and
    every step of training agree, and a different network with the same tensor names does not.
    """
    h = hashlib.sha256(_ARCH_TAG)
    ops = sorted((o.domain, int(o.version)) for o in model.opset_import)
    h.update(_u64(len(ops)))
    for domain, version in ops:
        h.update(_text(domain) + struct.pack("<q", version))
    main = {t.name for t in model.graph.initializer}
    _graph(h, model.graph, extra=[t for t in stored_tensors(model, meta) if t.name not in main])
    opt = {k: v for k, v in meta.optimizer.to_json().items() if k != "lr"}
    h.update(canonical({"trainable": sorted(meta.trainable), "state": sorted(meta.state),
                        "step": meta.step, "optimizer": opt}))
    return h.hexdigest()


def weights_architecture(model: onnx.ModelProto) -> str:
    """Hex SHA-256 of the inference network as it reads its weights: the opsets and the infer
    graph's structure as :func:`architecture` hashes them, but only the initializers that its
    nodes read. Optimizer slots, the step counter, the trainable selection and the optimizer
    are left out, so the same network compiled with another optimizer (or other trainable
    weights) matches, and any other network does not."""
    h = hashlib.sha256(_WEIGHTS_TAG)
    ops = sorted((o.domain, int(o.version)) for o in model.opset_import)
    h.update(_u64(len(ops)))
    for domain, version in ops:
        h.update(_text(domain) + struct.pack("<q", version))
    _graph(h, model.graph, only=graph_reads(model.graph))
    return h.hexdigest()


def nonnegative(model: onnx.ModelProto, meta: Metadata) -> frozenset[str]:
    names: set[str] = set()
    if meta.optimizer.name in ("adam", "adamw"):
        names.update(f"{p}.exp_avg_sq" for p in meta.trainable)
    names.update(n.input[4] for n in model.graph.node
                 if n.op_type == "BatchNormalization" and len(n.input) > 4)
    return frozenset(names & set(meta.state))


def canonical(value: Any) -> bytes:
    """Defined bytes of a JSON value: a type tag, then the content (numbers as float64)."""
    if value is None:
        return b"n"
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, (int, float)):
        return b"d" + struct.pack("<d", float(value))
    if isinstance(value, str):
        return b"s" + _text(value)
    if isinstance(value, (list, tuple)):
        return b"l" + _u64(len(value)) + b"".join(canonical(v) for v in value)
    if isinstance(value, Mapping):
        keys = _name_order(str(k) for k in value)
        return b"m" + _u64(len(keys)) + b"".join(_text(k) + canonical(value[k]) for k in keys)
    raise TypeError(f"no canonical encoding for {type(value).__name__}")


def _graph(h: Any, g: onnx.GraphProto, only: set[str] | None = None,
           extra: Iterable[onnx.TensorProto] = ()) -> None:
    """The structure of ``g``; ``only`` limits its own initializers to these names; ``extra``
    are hashed as its initializers too (the state stored with the train graph, so that a
    file hashes alike whichever graph keeps its optimizer state)."""
    h.update(b"G")
    inits = sorted(((t.name, t.data_type, list(t.dims)) for t in (*g.initializer, *extra)
                    if only is None or t.name in only), key=lambda t: t[0].encode("utf-8"))
    inits += sorted(((s.values.name, s.values.data_type, list(s.dims))
                     for s in g.sparse_initializer if only is None or s.values.name in only),
                    key=lambda t: t[0].encode("utf-8"))
    h.update(_u64(len(inits)))
    for name, dtype, dims in inits:
        h.update(_text(name) + _u64(dtype) + _dims(dims))
    for values in (g.input, g.output):
        h.update(_u64(len(values)))
        for vi in values:
            h.update(_text(vi.name) + _text(vi.type.SerializeToString(deterministic=True)))
    h.update(_u64(len(g.node)))
    for n in g.node:
        h.update(_text(n.op_type) + _text(n.domain))
        for names in (n.input, n.output):
            h.update(_u64(len(names)) + b"".join(_text(v) for v in names))
        attrs = sorted(n.attribute, key=lambda a: a.name.encode("utf-8"))
        h.update(_u64(len(attrs)))
        for a in attrs:
            _attribute(h, a)


def _dims(dims: Iterable[int]) -> bytes:
    dims = list(dims)
    return _u64(len(dims)) + b"".join(struct.pack("<q", d) for d in dims)


def _attribute(h: Any, a: onnx.AttributeProto) -> None:
    A = onnx.AttributeProto
    h.update(_text(a.name) + _u64(a.type) + _text(a.ref_attr_name))
    if a.type == A.FLOAT:
        h.update(struct.pack("<f", a.f))
    elif a.type == A.INT:
        h.update(struct.pack("<q", a.i))
    elif a.type == A.STRING:
        h.update(_text(a.s))
    elif a.type == A.TENSOR:
        h.update(_tensor(a.t))
    elif a.type == A.GRAPH:
        _graph(h, a.g)
    elif a.type == A.FLOATS:
        h.update(_u64(len(a.floats)) + b"".join(struct.pack("<f", f) for f in a.floats))
    elif a.type == A.INTS:
        h.update(_u64(len(a.ints)) + b"".join(struct.pack("<q", i) for i in a.ints))
    elif a.type == A.STRINGS:
        h.update(_u64(len(a.strings)) + b"".join(_text(s) for s in a.strings))
    elif a.type == A.TENSORS:
        h.update(_u64(len(a.tensors)) + b"".join(_tensor(t) for t in a.tensors))
    elif a.type == A.GRAPHS:
        h.update(_u64(len(a.graphs)))
        for g in a.graphs:
            _graph(h, g)
    else:  # sparse tensors and type protos: their deterministic protobuf encoding
        h.update(_text(a.SerializeToString(deterministic=True)))


def _tensor(t: onnx.TensorProto) -> bytes:
    """A constant's dtype, dims and values (as little-endian numbers where numeric)."""
    head = _u64(t.data_type) + _dims(t.dims)
    try:
        arr = numpy_helper.to_array(t)
    except Exception:  # a tensor numpy cannot hold: its protobuf encoding stands in
        arr = None
    if arr is None or arr.dtype.kind not in "biufc":
        return head + _text(t.SerializeToString(deterministic=True))
    arr = np.require(arr, dtype=arr.dtype.newbyteorder("<"), requirements="C")
    return head + _text(arr.tobytes())


# -- values ---------------------------------------------------------------------------------

def check_values(tensors: Mapping[str, np.ndarray], step_name: str,
                 nonnegative: Iterable[str], where: str) -> None:
    """Refuse state no training run can reach: non-finite floats, a step count outside
    [0, MAX_STEP], negative values where the optimizer or batch norm only make nonnegative
    ones."""
    for name in _name_order(tensors):
        a = tensors[name]
        if a.dtype.kind == "f" and a.size and not bool(np.isfinite(a).all()):
            raise CheckpointError(f"{where}: tensor {name!r} contains NaN or infinity; no "
                                  "training step commits such a value")
    step = tensors.get(step_name)
    if step is not None:
        if step.dtype.kind not in "iu" or step.size != 1:
            raise CheckpointError(f"{where}: the step count {step_name!r} is {step.dtype}"
                                  f"{list(step.shape)}, not an integer scalar")
        value = int(step.reshape(-1)[0])
        if not 0 <= value <= MAX_STEP:
            raise CheckpointError(f"{where}: the step count is {value}; it must lie in "
                                  f"[0, {MAX_STEP}]")
    for name in _name_order(set(nonnegative) & set(tensors)):
        a = tensors[name]
        if a.size and float(a.min()) < 0:
            raise CheckpointError(f"{where}: tensor {name!r} holds negative values "
                                  f"(min {float(a.min())}); it is nonnegative by "
                                  "construction")
