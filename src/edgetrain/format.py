"""The file format (version 1) and checkpoints.

Model file: one ONNX ``ModelProto``. Main graph = the ``infer`` signature; weights and optimizer
state are its initializers; each training signature is a ``training_info[i].algorithm`` whose
``update_binding`` maps updated initializers to step outputs; ``metadata_props["edgetrain"]``
is JSON naming the signatures. Checkpoints are safetensors files with a model fingerprint and a
checksum in their metadata. Every write is atomic: temp file in the same folder, fsync, rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import CheckpointError, FormatError

FORMAT_VERSION = 1
META_KEY = "edgetrain"
STEP_NAME = "edgetrain.step"
CHECKPOINT_KIND = "edgetrain-checkpoint"


def producer_version() -> str:
    from . import __version__

    return __version__


def default_opset(model: onnx.ModelProto) -> int | None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return None


# -- metadata --------------------------------------------------------------------------------

def read_meta(model: onnx.ModelProto) -> dict[str, Any]:
    """The file's edgetrain metadata, parsed strictly and checked against its schema.

    A newer format version is refused first, with the version it needs; then everything
    else (see :mod:`edgetrain._schema`), so no caller ever sees a malformed document.
    """
    from ._schema import parse_meta, validate_meta

    raws = [p.value for p in model.metadata_props if p.key == META_KEY]
    if not raws:
        raise FormatError("not an edgetrain trainable file (no 'edgetrain' metadata); compile "
                          "it first with edgetrain.compile or `edgetrain compile`")
    if len(raws) > 1:  # two readers might pick different ones
        raise FormatError("the file holds the edgetrain metadata twice")
    meta = parse_meta(raws[0])
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise FormatError("the edgetrain metadata has no integer format_version")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"this file uses edgetrain format version {version}; this edgetrain reads "
            f"version {FORMAT_VERSION} and older — upgrade edgetrain to a release that "
            f"supports format version {version}")
    return validate_meta(meta)


def write_meta(model: onnx.ModelProto, meta: Mapping[str, Any]) -> None:
    props = [p for p in model.metadata_props if p.key != META_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=META_KEY, value=json.dumps(meta, sort_keys=True))


def tensor_spec(vi: onnx.ValueInfoProto) -> dict[str, Any]:
    tt = vi.type.tensor_type
    dims: list[Any] = []
    for d in tt.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return {"name": vi.name, "dtype": np.dtype(helper.tensor_dtype_to_np_dtype(
        tt.elem_type)).name, "shape": dims}


def check(model: onnx.ModelProto) -> None:
    """Full ONNX check, and every graph at every depth uses the default domain only."""
    from ._validate import DEFAULT_DOMAINS, iter_nodes

    onnx.checker.check_model(model, full_check=True)
    for n, where in iter_nodes(model):
        if n.domain not in DEFAULT_DOMAINS:
            raise FormatError(f"node {n.name!r} in {where} uses non-standard domain "
                              f"{n.domain!r}")


# -- model files -----------------------------------------------------------------------------

def atomic_write(path: str | os.PathLike[str], data: bytes) -> str:
    """Write ``data`` so that ``path`` holds either the old or the new content, never a mix."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".edgetrain-", suffix=".tmp", dir=folder)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        try:
            mode = os.stat(path).st_mode & 0o777
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable (not possible everywhere)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> str:
    return atomic_write(path, model.SerializeToString())


def load_model(path: str | os.PathLike[str] | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Parse a model file (path or bytes); a path must name a regular file of at most 2 GiB.

    A FIFO or a device such as ``/dev/zero`` is refused without blocking or reading it.
    """
    if isinstance(path, onnx.ModelProto):
        return path
    data = path if isinstance(path, bytes) else read_model_bytes(path)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError, RuntimeError, ...
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise FormatError(f"cannot parse the model file: {first}") from e
    if not model.HasField("graph"):
        raise FormatError("the file holds no ONNX graph")
    return model


def read_model_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a model file, read with :func:`edgetrain._io.read_regular_file`."""
    from ._io import read_regular_file

    try:
        return read_regular_file(path, "model file", FormatError)
    except FormatError as e:
        if isinstance(e.__cause__, FileNotFoundError):
            raise FormatError(f"model file {os.fspath(path)!r}: no such file") from None
        raise


def standalone(model: onnx.ModelProto, meta: Mapping[str, Any], sig: str
               ) -> tuple[onnx.ModelProto, list[str], dict[str, str]]:
    """A self-contained ONNX model for one graph signature, as the runtime (or a browser) runs it.

    Values the signature updates or that change between steps (trainables, optimizer state,
    step count) become graph inputs; frozen weights stay initializers. Returns the model, the
    names of its state inputs, and ``{state input: output holding its new value}``.
    """
    spec = meta["signatures"][sig]
    where = spec["graph"]
    if where == "main":
        g = onnx.GraphProto()
        g.CopyFrom(model.graph)
        del g.initializer[:]
    else:
        idx = int(where.split("/")[1])
        g = onnx.GraphProto()
        g.CopyFrom(model.training_info[idx].algorithm)
    updates = dict(spec.get("updates", {}))
    used: set[str] = set()
    for n in g.node:
        used.update(n.input)
    variable = set(meta["trainable"]) | set(meta["state"]) | {meta.get("step", STEP_NAME)}
    state_inputs: list[str] = []
    own = {t.name for t in g.initializer}
    for t in model.graph.initializer:
        if t.name not in used or t.name in own:
            continue
        if t.name in variable:
            state_inputs.append(t.name)
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            g.initializer.append(t)
    for k in updates:
        if k not in state_inputs:
            raise FormatError(f"signature {sig!r} updates {k!r}, which it does not read")
    m = helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                          producer_name="edgetrain")
    return m, state_inputs, updates


def initial_state(model: onnx.ModelProto, meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    variable = set(meta["trainable"]) | set(meta["state"]) | {meta.get("step", STEP_NAME)}
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
            if t.name in variable}


def with_state(model: onnx.ModelProto, state: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers carry the given state values."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, t in enumerate(out.graph.initializer):
        if t.name in state:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(
                np.asarray(state[t.name]), t.name))
    return out


# -- checkpoints -----------------------------------------------------------------------------

def fingerprint(meta: Mapping[str, Any], state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """What a checkpoint must agree on with the model that restores it."""
    return {name: [str(np.asarray(v).dtype), list(np.asarray(v).shape)]
            for name, v in sorted(state.items())}


def _checksum(tensors: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.require(tensors[name], requirements="C")
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], meta: Mapping[str, Any],
                    state: Mapping[str, np.ndarray]) -> str:
    from safetensors.numpy import save

    tensors = {k: np.require(v, requirements="C") for k, v in state.items()}
    info = {
        "kind": CHECKPOINT_KIND,
        "format_version": str(FORMAT_VERSION),
        "fingerprint": json.dumps(fingerprint(meta, tensors), sort_keys=True),
        "checksum": _checksum(tensors),
        "producer": f"edgetrain {producer_version()}",
    }
    return atomic_write(path, save(tensors, metadata=info))


def load_checkpoint(path: str | os.PathLike[str], meta: Mapping[str, Any],
                    expected: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Read and verify a checkpoint against the model's state (names, shapes, dtypes)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {e.strerror or e}") from e
    info = _header_metadata(data, path)
    if info.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path!r} is a safetensors file but not an edgetrain checkpoint")
    try:
        version = int(info.get("format_version", "0"))
    except ValueError as e:
        raise CheckpointError(f"{path!r} has an invalid format_version") from e
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path!r} uses format version {version}; this "
                              f"edgetrain reads version {FORMAT_VERSION} and older — upgrade "
                              f"edgetrain")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"checkpoint {path!r} is corrupt: {e}") from e
    if _checksum(tensors) != info.get("checksum"):
        raise CheckpointError(f"checkpoint {path!r} fails its checksum: the file is corrupt "
                              "or was modified")
    want = fingerprint(meta, expected)
    got = fingerprint(meta, tensors)
    if want != got:
        raise CheckpointError(f"checkpoint {path!r} belongs to another model: "
                              f"{_describe_diff(want, got)}")
    return tensors


def _header_metadata(data: bytes, path: str) -> dict[str, str]:
    """The safetensors header's ``__metadata__``, parsed with size checks before reading."""
    if len(data) < 8:
        raise CheckpointError(f"checkpoint {path!r} is truncated ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or n > len(data) - 8 or n > 100_000_000:
        raise CheckpointError(f"checkpoint {path!r} is corrupt or truncated (header length {n})")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path!r} has a corrupt header: {e}") from e
    md = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(md, dict):
        raise CheckpointError(f"{path!r} is not an edgetrain checkpoint (no metadata)")
    return {str(k): str(v) for k, v in md.items()}


def _describe_diff(want: Mapping[str, Any], got: Mapping[str, Any]) -> str:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    parts = []
    if missing:
        parts.append(f"missing tensors {_few(missing)}")
    if extra:
        parts.append(f"unexpected tensors {_few(extra)}")
    differ = [k for k in sorted(set(want) & set(got)) if want[k] != got[k]]
    for k in differ[:5]:
        parts.append(f"{k!r} is {got[k][0]}{got[k][1]} in the checkpoint but "
                     f"{want[k][0]}{want[k][1]} in the model")
    if len(differ) > 5:
        parts.append(f"and {len(differ) - 5} more tensors differ")
    return "; ".join(parts)


def _few(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def plain_inference(model: onnx.ModelProto, meta: Mapping[str, Any],
                    state: Mapping[str, np.ndarray], merge_lora: bool = True
                    ) -> onnx.ModelProto:
    """The main graph alone, with ``state`` baked in: a normal inference model for any tool.

    With ``merge_lora`` LoRA adapters are folded into their weights (the original graph).
    """
    out = with_state(model, state)
    if merge_lora and meta.get("lora_merge"):
        from ._lora import merge

        merge(out, meta["lora_merge"])
    del out.training_info[:]
    props = [p for p in out.metadata_props if p.key != META_KEY]
    del out.metadata_props[:]
    out.metadata_props.extend(props)
    used = {i for n in out.graph.node for i in n.input} | {o.name for o in out.graph.output}
    keep = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out
