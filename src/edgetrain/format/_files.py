"""Model files: atomic writes, reading, the standalone per-signature graphs a driver runs, and
the plain inference model an export writes."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .._io import read_regular_file
from ..errors import FormatError
from ._constants import META_KEY
from ._spec import Metadata


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

    try:
        return read_regular_file(path, "model file", FormatError)
    except FormatError as e:
        if isinstance(e.__cause__, FileNotFoundError):
            raise FormatError(f"model file {os.fspath(path)!r}: no such file") from None
        raise


def standalone(model: onnx.ModelProto, meta: Metadata, sig: str
               ) -> tuple[onnx.ModelProto, list[str], dict[str, str]]:
    """A self-contained ONNX model for one graph signature, as the runtime (or a browser) runs it.

    Values the signature updates or that change between steps (trainables, optimizer state,
    step count) become graph inputs; frozen weights stay initializers. Returns the model, the
    names of its state inputs, and ``{state input: output holding its new value}``.
    """
    spec = meta.signatures[sig]
    where = spec.graph
    if where is None:
        raise FormatError(f"signature {sig!r} is not a graph")
    g = onnx.GraphProto()
    variable = meta.variables
    if where == "main":
        g.CopyFrom(model.graph)
        del g.initializer[:]
    else:
        g.CopyFrom(model.training_info[int(where.split("/")[1])].algorithm)
        own_consts = [t for t in g.initializer if t.name not in variable]
        del g.initializer[:]
        g.initializer.extend(own_consts)
    updates = dict(spec.updates)
    used = graph_reads(g)
    state_inputs: list[str] = []
    own = {t.name for t in g.initializer}
    for t in stored_tensors(model, meta):
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


# -- where the tensors live ------------------------------------------------------------------
# Weights and every state tensor the inference graph reads (batch-norm statistics) are
# initializers of the main graph. State that only training reads -- optimizer slots and the
# step counter -- is stored as initializers of the train graph, training_info[STATE_STORE]
# .algorithm (where the ONNX spec puts "optimizer states such as momentums"), so that a plain
# inference session neither loads it nor warns that it is unused. Version-2 files keep all
# state in the main graph; the readers below look in both places.

#: The training_info entry whose algorithm graph stores the training-only state.
STATE_STORE = 0


def state_store(model: onnx.ModelProto) -> onnx.GraphProto | None:
    return model.training_info[STATE_STORE].algorithm if model.training_info else None


def stored_tensors(model: onnx.ModelProto, meta: Metadata) -> list[onnx.TensorProto]:
    """The main graph's initializers, then the state tensors stored with the train graph."""
    out = list(model.graph.initializer)
    store = state_store(model)
    if store is not None:
        variable = meta.variables
        out += [t for t in store.initializer if t.name in variable]
    return out


def store_training_state(model: onnx.ModelProto, meta: Metadata) -> None:
    """Move the state tensors that the main graph does not read into the state store."""
    store = state_store(model)
    if store is None:
        return
    read = graph_reads(model.graph)
    variable = meta.variables
    move = [t for t in model.graph.initializer if t.name in variable and t.name not in read]
    keep = [t for t in model.graph.initializer if t.name not in {m.name for m in move}]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    store.initializer.extend(move)


def graph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every name the nodes of ``graph`` read, inside If/Loop/Scan bodies at any depth too
    (a weight read only inside a branch is still read by the graph)."""
    names: set[str] = set()
    for n in graph.node:
        names.update(n.input)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                names |= graph_reads(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    names |= graph_reads(sub)
    names.discard("")
    return names


_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data",
                "double_data", "uint64_data")


def without_state_values(model: onnx.ModelProto, meta: Metadata) -> onnx.ModelProto:
    """``model`` compacted into a new message whose state tensors (trainables, optimizer state,
    the step counter) keep their name, type and shape but not their values: what a runtime
    that holds the values itself keeps of the file, so the weights are not held twice.
    ``model`` itself loses those values (the caller gives up its own reference)."""
    variable = meta.variables
    for t in stored_tensors(model, meta):
        if t.name in variable:
            for f in _DATA_FIELDS:
                t.ClearField(f)
    compact = onnx.ModelProto()
    compact.ParseFromString(model.SerializeToString())
    return compact


def initial_state(model: onnx.ModelProto, meta: Metadata) -> dict[str, np.ndarray]:
    variable = meta.variables
    return {t.name: numpy_helper.to_array(t) for t in stored_tensors(model, meta)
            if t.name in variable}


def with_state(model: onnx.ModelProto, state: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers (the state store's too) carry the given state
    values."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    store = state_store(out)
    for graph in (out.graph, *([store] if store is not None else [])):
        for i, t in enumerate(graph.initializer):
            if t.name in state:
                graph.initializer[i].CopyFrom(numpy_helper.from_array(
                    np.asarray(state[t.name]), t.name))
    return out


# -- checkpoints -----------------------------------------------------------------------------
# The layout is specified in docs/format.md; the canonical bytes of the checksum, the MAC and
# the architecture hash are in edgetrain.format._integrity.



def plain_inference(model: onnx.ModelProto, meta: Metadata,
                    state: Mapping[str, np.ndarray], merge_lora: bool = True
                    ) -> onnx.ModelProto:
    """The main graph alone, with ``state`` baked in: a normal inference model for any tool.

    With ``merge_lora`` LoRA adapters are folded into their weights (the original graph).
    """
    out = with_state(model, state)
    if merge_lora and meta.lora_merge:
        from ._lora import merge_lora as fold

        fold(out, meta.lora_merge)
    del out.training_info[:]
    props = [p for p in out.metadata_props if p.key != META_KEY]
    del out.metadata_props[:]
    out.metadata_props.extend(props)
    used = {i for n in out.graph.node for i in n.input} | {o.name for o in out.graph.output}
    keep = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out
