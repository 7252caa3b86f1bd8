"""Checkpoints: safetensors files with the model's state, a checksum over canonical bytes, the
architecture it belongs to and, with a key, a MAC (see docs/format.md)."""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .._io import read_regular_file
from ..errors import CheckpointError
from . import _integrity as _ckpt
from ._constants import CHECKPOINT_KIND, FORMAT_VERSION, producer_version
from ._files import atomic_write
from ._integrity import Identity
from ._spec import Metadata


def fingerprint(meta: object, state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Names, dtypes and shapes: what a checkpoint must agree on with any model restoring it
    (``meta`` is not read; it stays for callers that pass it)."""
    return {name: [str(np.asarray(v).dtype), list(np.asarray(v).shape)]
            for name, v in sorted(state.items())}


def save_checkpoint(path: str | os.PathLike[str], meta: Metadata,
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
    _ckpt.check_values(tensors, meta.step, identity.nonnegative if identity else (),
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
        if identity.weights:
            info["weights_architecture"] = identity.weights
    info["checksum"] = _ckpt.checksum(tensors, info)
    if key is not None:
        info["mac"] = _ckpt.mac(key, info)
    try:
        return atomic_write(path, save(tensors, metadata=info))
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path!r}: {e.strerror or e}") from e


#: What a checkpoint holds, for ``load_checkpoint(parts=…)``: the weights (trainable tensors
#: and batch-norm running statistics) and the optimizer's state (its slots and the step count).
PARTS = ("weights", "optimizer")


def _check_kind_and_versions(info: Mapping[str, Any], path: str, where: str) -> int:
    """The header names an edgetrain checkpoint of a format and checksum this version reads;
    returns the checksum version."""
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
    return checksum_version


def load_checkpoint(path: str | os.PathLike[str], meta: Metadata,
                    expected: Mapping[str, np.ndarray], *, identity: Identity | None = None,
                    key: bytes | None = None, parts: Iterable[str] = PARTS,
                    frozen: Mapping[str, onnx.TensorProto] | None = None
                    ) -> dict[str, np.ndarray]:
    """Read and verify a checkpoint for a model whose current state is ``expected``.

    Verified, in order: the header's size and syntax, the kind and versions, the MAC (when a
    ``key`` is given: a checkpoint without a valid one is refused), the checksum, the tensor
    names, dtypes and shapes, the architecture (when both sides know it; checkpoints written
    before it was recorded restore on the other checks), and the values (finite, a step count
    in range). Any failure is a :class:`CheckpointError`.

    ``parts=("weights",)``: ``expected`` holds only the model's weights, and only those are
    read, from a checkpoint of the same network written with any optimizer or trainable
    selection: its other tensors (optimizer slots, step) are ignored, and the network is
    matched by the weights architecture. A checkpoint tensor that the model keeps frozen
    (``frozen``: its initializers by name) must hold the model's value.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = os.fspath(path)
    where, data = f"checkpoint {path!r}", read_regular_file(path, "checkpoint", CheckpointError)
    info = _header_metadata(data, path)
    checksum_version = _check_kind_and_versions(info, path, where)
    if key is not None:
        _ckpt.verify_mac(key, info, where)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, TypeError, OverflowError, OSError) as e:
        raise CheckpointError(f"{where} is corrupt: {e}") from e
    if not hmac.compare_digest(_ckpt.checksum(tensors, info, checksum_version).encode(),
                               info.get("checksum", "").encode("utf-8", "replace")):
        raise CheckpointError(f"{where} fails its checksum: the file is corrupt or was modified")
    parts = tuple(parts)
    if set(parts) == {"weights"}:
        # Every tensor must be possible state, also those not restored: a file holding NaN
        # anywhere is not a checkpoint any training run wrote.
        _ckpt.check_values(tensors, meta.step,
                           identity.nonnegative if identity else (), where)
        tensors = _weights_only(tensors, info, expected, identity, frozen or {}, where)
    elif set(parts) != set(PARTS):
        raise CheckpointError(f"parts must be ('weights',) or {PARTS}, got {parts}")
    want, got = fingerprint(meta, expected), fingerprint(meta, tensors)
    if want != got:
        weights_agree = all(want.get(k) == got.get(k) for k in meta.trainable)
        hint = ("; its weights fit: restore(parts=('weights',)) takes them with a fresh "
                "optimizer state") if weights_agree and set(parts) == set(PARTS) else ""
        raise CheckpointError(f"{where} belongs to another model: "
                              f"{_describe_diff(want, got)}{hint}")
    arch = info.get("architecture")
    if identity is not None and arch is not None and arch != identity.architecture \
            and set(parts) == set(PARTS):
        raise CheckpointError(f"{where} belongs to another model: its tensors have the same "
                              "names and shapes, but the network architecture or the optimizer "
                              "configuration differs (restore(parts=('weights',)) takes the "
                              "weights of the same network trained with another optimizer)")
    _ckpt.check_values(tensors, meta.step, identity.nonnegative if identity else (), where)
    return tensors


def _weights_only(tensors: Mapping[str, np.ndarray], info: Mapping[str, str],
                  expected: Mapping[str, np.ndarray], identity: Identity | None,
                  frozen: Mapping[str, onnx.TensorProto], where: str) -> dict[str, np.ndarray]:
    """The weights of a verified checkpoint, after checking that its network is the model's.

    The weights architecture decides; a checkpoint written before it was recorded must match
    the full architecture (the model that wrote it), and one with neither restores on names,
    dtypes and shapes, as a full restore does.
    """
    if identity is not None:
        weights, arch = info.get("weights_architecture"), info.get("architecture")
        if weights is not None and weights != identity.weights:
            raise CheckpointError(f"{where} belongs to another model: its network differs from "
                                  "this model's (weights-only restore needs the same network)")
        if weights is None and arch is not None and arch != identity.architecture:
            raise CheckpointError(f"{where} predates weights-only restore across optimizers; "
                                  "restore it fully into the model that wrote it and save it "
                                  "again with this edgetrain")
    for name in sorted(set(tensors) & set(frozen)):
        if not np.array_equal(tensors[name], numpy_helper.to_array(frozen[name])):
            raise CheckpointError(f"{where} holds trained values of {name!r}, which this model "
                                  "keeps frozen; compile it with that tensor trainable")
    return {k: tensors[k] for k in expected if k in tensors}


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
