"""The file format (version 1) and checkpoints.

Model file: one ONNX ``ModelProto``. Main graph = the ``infer`` signature; weights and optimizer
state are its initializers; each training signature is a ``training_info[i].algorithm`` whose
``update_binding`` maps updated initializers to step outputs; ``metadata_props["edgetrain"]``
is JSON naming the signatures. Checkpoints are safetensors files whose metadata holds a checksum
over canonical bytes, the model's architecture hash and, with a key, a MAC (docs/format.md).
Every write is atomic: temp file in the same folder, fsync, rename.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import _checkpoint as _ckpt
from ._io import read_regular_file
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
    """Write ``data`` so that ``path`` holds either the old or the new content, never a mix.

    The temporary file is named after this process (``.edgetrain-<pid>-<random>.tmp``), so a
    later write can tell a writer's leftovers once it is gone (see :func:`_remove_stale_temps`).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    _remove_stale_temps(folder)  # first: a writer killed mid-write has cleaned up before it
    fd, tmp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-", suffix=_TEMP_SUFFIX,
                               dir=folder)
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


_TEMP_PREFIX, _TEMP_SUFFIX = ".edgetrain-", ".tmp"
_TEMP_NAME = re.compile(r"\.edgetrain-(?:(\d{1,10})-)?[A-Za-z0-9_]{6,16}\.tmp")
#: A dead writer's temp file is removed once untouched this long (seconds): a writer on another
#: machine sharing the folder, whose pid means nothing here, is still writing a younger file.
STALE_DEAD_WRITER = 60.0
#: Any temp file of edgetrain's untouched this long is removed, whoever wrote it (pids are
#: reused; files of releases without a pid in the name).
STALE_ANY = 3600.0


def _remove_stale_temps(folder: str) -> None:
    """Delete temp files that writers killed mid-write left in ``folder`` (never raises).

    Only regular files named like edgetrain's own temp files are candidates, and only when
    their writer is provably gone (its pid is not alive) and they are older than
    :data:`STALE_DEAD_WRITER`, or when they are older than :data:`STALE_ANY`. Temp files of
    live writers, this process's other threads included, are left alone.
    """
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for e in entries:
            m = _TEMP_NAME.fullmatch(e.name)
            if m is None:
                continue
            with contextlib.suppress(OSError):
                st = e.stat(follow_symlinks=False)
                age = now - st.st_mtime
                pid = int(m.group(1)) if m.group(1) else None
                gone = pid is not None and pid != os.getpid() and not _alive(pid)
                if stat.S_ISREG(st.st_mode) and (age > STALE_ANY
                                                 or (gone and age > STALE_DEAD_WRITER)):
                    os.unlink(e.path)


def _alive(pid: int) -> bool:
    """Whether a process with this id exists (one we may not signal counts as alive).

    On Windows ``os.kill`` terminates the process instead of probing it: every pid counts as
    alive there, and only the age rule removes temp files.
    """
    if pid <= 0 or os.name == "nt":
        return True  # not a process id: never treat its files as a dead writer's
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


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
# The layout is specified in docs/format.md; the canonical bytes of the checksum, the MAC and
# the architecture hash are in edgetrain._checkpoint.

Identity = _ckpt.Identity
identify = _ckpt.identify


def fingerprint(meta: Mapping[str, Any], state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Names, dtypes and shapes: what a checkpoint must agree on with any model restoring it."""
    return {name: [str(np.asarray(v).dtype), list(np.asarray(v).shape)]
            for name, v in sorted(state.items())}


def save_checkpoint(path: str | os.PathLike[str], meta: Mapping[str, Any],
                    state: Mapping[str, np.ndarray], *, identity: Identity | None = None,
                    key: bytes | None = None) -> str:
    """Write ``state`` as a checkpoint, atomically.

    ``identity`` (:func:`identify`) records the model's architecture, so that a restore into
    another network with the same tensor names is refused. ``key`` adds an HMAC-SHA256 over
    the metadata, which holds the checksum of every tensor: only holders of the key can make
    a checkpoint that a restore with the key accepts.
    """
    from safetensors.numpy import save

    path = os.fspath(path)
    tensors = {k: np.require(v, requirements="C") for k, v in state.items()}
    _ckpt.check_values(tensors, str(meta.get("step", STEP_NAME)),
                       identity.nonnegative if identity else (),
                       f"refusing to save checkpoint {path!r}")
    info = {
        "kind": CHECKPOINT_KIND,
        "format_version": str(FORMAT_VERSION),
        "fingerprint": json.dumps(fingerprint(meta, tensors), sort_keys=True),
        "checksum_version": str(_ckpt.CHECKSUM_VERSION),
        "producer": f"edgetrain {producer_version()}",
    }
    if identity is not None:
        info["architecture"] = identity.architecture
    info["checksum"] = _ckpt.checksum(tensors, info)
    if key is not None:
        info["mac"] = _ckpt.mac(key, info)
    try:
        return atomic_write(path, save(tensors, metadata=info))
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path!r}: {e.strerror or e}") from e


def load_checkpoint(path: str | os.PathLike[str], meta: Mapping[str, Any],
                    expected: Mapping[str, np.ndarray], *, identity: Identity | None = None,
                    key: bytes | None = None) -> dict[str, np.ndarray]:
    """Read and verify a checkpoint for a model whose current state is ``expected``.

    Verified, in order: the header's size and syntax, the kind and versions, the MAC (when a
    ``key`` is given: a checkpoint without a valid one is refused), the checksum, the tensor
    names, dtypes and shapes, the architecture (when both sides know it; checkpoints written
    before it was recorded restore on the other checks), and the values (finite, a step count
    in range). Any failure is a :class:`CheckpointError`.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = os.fspath(path)
    where = f"checkpoint {path!r}"
    data = read_regular_file(path, "checkpoint", CheckpointError)
    info = _header_metadata(data, path)
    if info.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path!r} is a safetensors file but not an edgetrain checkpoint")
    version = _version(info, "format_version", where, default=None)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{where} uses format version {version}; this edgetrain reads "
                              f"version {FORMAT_VERSION} and older — upgrade edgetrain")
    checksum_version = _version(info, "checksum_version", where, default=1)
    if checksum_version > _ckpt.CHECKSUM_VERSION:
        raise CheckpointError(f"{where} uses checksum version {checksum_version}; this "
                              f"edgetrain reads version {_ckpt.CHECKSUM_VERSION} and older — "
                              "upgrade edgetrain")
    if key is not None:
        _ckpt.verify_mac(key, info, where)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, TypeError, OverflowError, OSError) as e:
        raise CheckpointError(f"{where} is corrupt: {e}") from e
    if not hmac.compare_digest(_ckpt.checksum(tensors, info, checksum_version).encode(),
                               info.get("checksum", "").encode("utf-8", "replace")):
        raise CheckpointError(f"{where} fails its checksum: the file is corrupt or was modified")
    want = fingerprint(meta, expected)
    got = fingerprint(meta, tensors)
    if want != got:
        raise CheckpointError(f"{where} belongs to another model: {_describe_diff(want, got)}")
    arch = info.get("architecture")
    if identity is not None and arch is not None and arch != identity.architecture:
        raise CheckpointError(f"{where} belongs to another model: its tensors have the same "
                              "names and shapes, but the network architecture or the optimizer "
                              "configuration differs")
    _ckpt.check_values(tensors, str(meta.get("step", STEP_NAME)),
                       identity.nonnegative if identity else (), where)
    return tensors


def _version(info: Mapping[str, str], name: str, where: str, default: int | None) -> int:
    """A version number from the metadata: plain decimal digits, nothing Python's int() adds
    (signs, spaces, underscores, thousands of digits)."""
    value = info.get(name)
    if value is None and default is not None:
        return default
    if value is None or not re.fullmatch(r"[0-9]{1,6}", value):
        raise CheckpointError(f"{where} has an invalid {name} ({_clip(value)})")
    return int(value)


def _clip(value: object, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "…"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"the JSON constant {name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {_clip(k)}")
        out[k] = v
    return out


#: A safetensors header nests three deep; anything far deeper is hostile. Checked before parsing,
#: since how deep the JSON parser may recurse depends on the process's recursion limit.
_MAX_HEADER_DEPTH = 16
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _nesting(raw: bytes) -> int:
    """How deep the JSON text nests arrays and objects (brackets inside strings excluded)."""
    arr = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    if not arr.size:
        return 0
    opens = (arr == ord("[")) | (arr == ord("{"))
    closes = (arr == ord("]")) | (arr == ord("}"))
    return int(np.cumsum(opens.astype(np.int64) - closes).max())


def _header_metadata(data: bytes, path: str) -> dict[str, str]:
    """The safetensors header's ``__metadata__``, parsed with size checks before reading.

    The header is hostile input: a length beyond the file, numbers of thousands of digits,
    nesting a thousand deep, duplicate keys and non-string metadata are all refused here.
    """
    if len(data) < 8:
        raise CheckpointError(f"checkpoint {path!r} is truncated ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or n > len(data) - 8 or n > 100_000_000:
        raise CheckpointError(f"checkpoint {path!r} is corrupt or truncated (header length {n})")
    raw = data[8:8 + n]
    if _nesting(raw) > _MAX_HEADER_DEPTH:
        raise CheckpointError(f"checkpoint {path!r} has a corrupt header: JSON nested deeper "
                              f"than {_MAX_HEADER_DEPTH} levels")
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys,
                            parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # JSON and Unicode errors are ValueErrors
        raise CheckpointError(f"checkpoint {path!r} has a corrupt header: "
                              f"{_clip(str(e), 120)}") from e
    md = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(md, dict):
        raise CheckpointError(f"{path!r} is not an edgetrain checkpoint (no metadata)")
    if not all(isinstance(v, str) for v in md.values()):
        raise CheckpointError(f"checkpoint {path!r} has a corrupt header: metadata values must "
                              "be strings")
    return md


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
