"""The schema of the ``edgetrain`` metadata JSON, checked in full before anything reads it.

The metadata travels further than the graphs: the Python runtime looks names up in it,
``edgetrain info`` prints it to a terminal, and the browser export copies it into a manifest
that a web page reads. So every value in it is checked against a strict schema (unknown keys
are refused, so nothing unchecked can ride along), and every string is one of three kinds:

* **identifiers** -- signature names, loss and optimizer names, their config keys and string
  values, ``labels``, ``kind``: ``[A-Za-z_][A-Za-z0-9_.-]{0,63}``;
* **ONNX names** -- tensor names, signature input and output names, update targets, symbolic
  dimensions, node and value names of LoRA sites: whatever ONNX allows (exporters use ``:``,
  ``/``, ``.``, brackets) but 1 to 256 characters, all printable (``str.isprintable``: no
  control, format or line-separator characters, so a name stays one line in a terminal and
  in a message). They may contain ``<``, ``&`` or quotes: a page must escape them, as it must
  escape any name;
* **free text** -- ``producer``, ``selection`` and the descriptive strings of ``lora``:
  printable, at most 1024 characters.

Numbers are finite (JSON's ``NaN`` and ``Infinity`` are refused), integers lie within
±2⁵³ (exact in JavaScript), floats within float32's range; duplicate keys are refused (two
readers could otherwise see different values), and so are strings that are not UTF-8.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .errors import FormatError

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
MAX_NAME = 256
MAX_TEXT = 1024
MAX_INT = 2**53
MAX_FLOAT = float(np.finfo(np.float32).max)
#: Largest metadata JSON read (characters); a LoRA model's is a few tens of KiB.
MAX_META_CHARS = 8 << 20
#: Largest tensor a file may declare (elements); far above any on-device model.
MAX_ELEMENTS = 1 << 31
DTYPES = ("float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool", "str")
_NUMERIC = {"float32", "float64", "float16", "int64", "int32", "int8", "uint8"}
GRAPH_REF = re.compile(r"main|training_info/(?:0|[1-9]\d{0,3})")
#: Signatures every trainable file has; the feature signatures come all four or none.
REQUIRED_SIGNATURES = ("infer", "train", "eval", "save", "restore")
FEATURE_SIGNATURES = ("features", "train_features", "eval_features", "infer_features")
_UPDATING = ("train", "train_features")
_BUILTIN_IO = [{"name": "checkpoint_path", "dtype": "str", "shape": []}]

Check = Callable[[Any, str], Any]


def fail(msg: str) -> FormatError:
    return FormatError(f"invalid edgetrain file: {msg}")


def quote(s: Any, limit: int = 60) -> str:
    """``s`` for a one-line message: repr (control characters escaped), shortened."""
    if isinstance(s, (str, bytes)):
        return repr(s[:limit]) + ("…" if len(s) > limit else "")
    return f"a {type(s).__name__}"


# -- parsing ---------------------------------------------------------------------------------

def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {quote(k)}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_meta(raw: Any) -> dict[str, Any]:
    """The metadata JSON as a dict, or FormatError: bounded size, strict JSON, no duplicates."""
    if isinstance(raw, bytes):  # protobuf hands over strings that are not UTF-8 as bytes
        raise FormatError("the edgetrain metadata is not UTF-8 text")
    if not isinstance(raw, str):
        raise FormatError("the edgetrain metadata is not text")
    if len(raw) > MAX_META_CHARS:
        raise FormatError(f"the edgetrain metadata is {len(raw)} characters long, more than "
                          f"the {MAX_META_CHARS} edgetrain reads")
    try:
        meta = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError as e:
        raise FormatError("the edgetrain metadata is not valid JSON: nested too deeply") from e
    except (ValueError, TypeError) as e:  # JSONDecodeError, int-string limit, our hooks
        raise FormatError(f"the edgetrain metadata is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise FormatError("the edgetrain metadata is not a JSON object")
    return meta


# -- values ----------------------------------------------------------------------------------

def ident(v: Any, what: str) -> str:
    if not isinstance(v, str) or not IDENT.fullmatch(v):
        raise fail(f"{what} {quote(v)} is not an identifier ([A-Za-z_][A-Za-z0-9_.-]{{0,63}})")
    return v


def name(v: Any, what: str, empty: bool = False) -> str:
    """An ONNX name: 1..256 printable characters (``empty`` also allows "")."""
    if not isinstance(v, str) or len(v) > MAX_NAME or not v.isprintable() \
            or (not v and not empty):
        raise fail(f"{what} {quote(v)} is not a valid name (1 to {MAX_NAME} printable "
                   "characters)")
    return v


def text(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) > MAX_TEXT or not v.isprintable():
        raise fail(f"{what} must be printable text of at most {MAX_TEXT} characters")
    return v


def number(v: Any, what: str, lo: float = -MAX_FLOAT, hi: float = MAX_FLOAT) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    if ok and isinstance(v, int):
        ok = abs(v) <= MAX_INT and lo <= v <= hi
    elif ok:
        ok = math.isfinite(v) and lo <= v <= hi
    if not ok:
        raise fail(f"{what} must be a finite number in [{lo:g}, {hi:g}]")
    return v


def integer(v: Any, what: str, lo: int = 0, hi: int = MAX_INT) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise fail(f"{what} must be an integer in [{lo}, {hi}]")
    return v


def boolean(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise fail(f"{what} must be true or false")
    return v


def listing(item: Check, limit: int = 1 << 20, unique: bool = False) -> Check:
    def check(v: Any, what: str) -> list[Any]:
        if not isinstance(v, list) or len(v) > limit:
            raise fail(f"{what} must be a list of at most {limit} entries")
        for i, x in enumerate(v):
            item(x, f"{what}[{i}]")
        if unique and len(set(v)) != len(v):
            raise fail(f"{what} lists a name twice")
        return v
    return check


def obj(v: Any, what: str, required: Mapping[str, Check],
        optional: Mapping[str, Check] | None = None) -> dict[str, Any]:
    """An object with exactly the given keys (``optional`` ones may be absent)."""
    optional = optional or {}
    if not isinstance(v, dict):
        raise fail(f"{what} must be an object")
    for k in v:
        if k not in required and k not in optional:
            raise fail(f"{what} has an unknown key {quote(k)}")
    for k, check in required.items():
        if k not in v:
            raise fail(f"{what} lacks {k!r}")
        check(v[k], f"{what} {k}")
    for k, check in optional.items():
        if k in v:
            check(v[k], f"{what} {k}")
    return v


def _scalar(string: Check) -> Check:
    """null, true/false, a bounded number, or a string checked by ``string``."""
    def check(v: Any, what: str) -> Any:
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, str):
            return string(v, what)
        return number(v, what)
    return check


def _config(string: Check, required: Mapping[str, Check]) -> Check:
    """A flat object: identifier keys, scalar values or short lists of scalars."""
    scalar = _scalar(string)
    short = listing(scalar, limit=64)

    def check(v: Any, what: str) -> dict[str, Any]:
        if not isinstance(v, dict) or len(v) > 64:
            raise fail(f"{what} must be an object of at most 64 entries")
        for k, x in v.items():
            ident(k, f"{what} key")
            (short if isinstance(x, list) else scalar)(x, f"{what} {k}")
        obj({k: v[k] for k in required if k in v}, what, required)
        return v
    return check


# -- the document ----------------------------------------------------------------------------

def _dim(v: Any, what: str) -> Any:
    if v is None or isinstance(v, str):
        return v if v is None else name(v, what)
    return integer(v, what, 0, MAX_ELEMENTS - 1)


_shape = listing(_dim, limit=16)
_dtype_names = set(DTYPES)


def _dtype(v: Any, what: str) -> str:
    if not isinstance(v, str) or v not in _dtype_names:
        raise fail(f"{what} is not one of {', '.join(DTYPES)}")
    return str(v)


def _io(v: Any, what: str) -> dict[str, Any]:
    """One input or output: name, dtype, shape; an optional input has a scalar default."""
    obj(v, what, {"name": name, "dtype": _dtype, "shape": _shape},
        {"optional": boolean, "default": number})
    if v.get("optional", False) != ("default" in v):
        raise fail(f"{what} {quote(v['name'])}: an input has a default exactly when it is "
                   "optional")
    if "default" in v:
        if v["dtype"] not in _NUMERIC or v["shape"] != []:
            raise fail(f"{what} {quote(v['name'])}: only numeric scalars have defaults")
        dt = np.dtype(v["dtype"])
        info = np.finfo(dt) if dt.kind == "f" else np.iinfo(dt)
        number(v["default"], f"{what} {quote(v['name'])} default", float(info.min),
               float(info.max))
        if dt.kind != "f" and not isinstance(v["default"], int):
            raise fail(f"{what} {quote(v['name'])} default must be an integer")
    return v


def _ios(v: Any, what: str) -> list[dict[str, Any]]:
    listing(_io, limit=1024)(v, what)
    names = [s["name"] for s in v]
    if len(set(names)) != len(names):
        raise fail(f"{what} name the same value twice")
    return v


def _updates(v: Any, what: str) -> dict[str, str]:
    if not isinstance(v, dict) or len(v) > 1 << 20:
        raise fail(f"{what} must be an object")
    for k, out in v.items():
        name(k, f"{what} key")
        name(out, f"{what} value for {quote(k)}")
    if len(set(v.values())) != len(v):
        raise fail(f"{what}: two state tensors take their new value from the same output")
    return v


def _graph_ref(v: Any, what: str) -> str:
    if not isinstance(v, str) or not GRAPH_REF.fullmatch(v):
        raise fail(f"{what} {quote(v)} is not 'main' or 'training_info/<n>'")
    return v


def _signature(sig: str, v: Any) -> None:
    what = f"signature {quote(sig)}"
    kind = obj(v, what, {"kind": ident, "inputs": _ios, "outputs": _ios},
               {"graph": _graph_ref, "updates": _updates})["kind"]
    if (kind == "builtin") != (sig in ("save", "restore")):
        raise fail(f"{what}: save and restore, and only they, are builtin signatures")
    if kind == "builtin":
        if sig not in ("save", "restore") or "graph" in v or v.get("updates") \
                or v["inputs"] != _BUILTIN_IO or v["outputs"] != _BUILTIN_IO:
            raise fail(f"{what} is not one of the builtin signatures save(checkpoint_path) "
                       "and restore(checkpoint_path)")
        return
    if kind != "graph" or "graph" not in v:
        raise fail(f"{what} must be of kind 'graph' with a graph, or 'builtin'")
    if bool(v.get("updates")) != (sig in _UPDATING) and sig in (*REQUIRED_SIGNATURES,
                                                                *FEATURE_SIGNATURES):
        raise fail(f"{what} {'must' if sig in _UPDATING else 'cannot'} update state tensors")


def _signatures(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict) or not 0 < len(v) <= 64:
        raise fail(f"{what} must be an object of 1 to 64 signatures")
    for sig, spec in v.items():
        ident(sig, "signature name")
        _signature(sig, spec)
    missing = [s for s in REQUIRED_SIGNATURES if s not in v]
    if missing:
        raise fail(f"no {missing[0]!r} signature")
    if v["infer"]["kind"] != "graph" or v["infer"]["graph"] != "main":
        raise fail("the 'infer' signature must be the main graph")
    present = [s for s in FEATURE_SIGNATURES if s in v]
    if present and len(present) != len(FEATURE_SIGNATURES):
        raise fail(f"the feature signatures come together: {', '.join(FEATURE_SIGNATURES)}")
    return v


def _one_of(v: Any, what: str, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise fail(f"{what} must be one of {', '.join(choices)}")
    return str(v)


def _version(v: Any, what: str) -> int:
    from .format import FORMAT_VERSION

    return integer(v, what, 1, FORMAT_VERSION)


def _lora_site(v: Any, what: str) -> dict[str, Any]:
    return obj(v, what, {"node": lambda x, w: name(x, w, empty=True), "base": name,
                         "output": name, "nodes": listing(name, limit=64)})


def _lora_adapter(v: Any, what: str) -> dict[str, Any]:
    return obj(v, what, {"weight": name, "A": name, "B": name, "scale": number,
                         "transposed": boolean, "sites": listing(_lora_site, limit=4096)})


def _features(v: Any, what: str) -> dict[str, Any]:
    return obj(v, what, {"tensor": name, "name": name, "dtype": _dtype, "shape": _shape})


_names = listing(name, unique=True)
_TOP_REQUIRED: dict[str, Check] = {
    "format_version": _version, "signatures": _signatures, "trainable": _names,
    "frozen": _names, "state": _names, "step": name, "output": name, "label": name,
    "labels": lambda v, w: _one_of(v, w, ("index", "onehot")),
    "loss": _config(ident, {"name": ident}),
    "optimizer": _config(ident, {"name": ident,
                                 "lr": lambda v, w: number(v, w, 1e-30, MAX_FLOAT)}),
    "classification": boolean,
}
_TOP_OPTIONAL: dict[str, Check] = {
    "producer": text, "selection": text, "lora": _config(text, {}),
    "lora_merge": listing(_lora_adapter, limit=4096), "features": _features,
}


def validate_meta(meta: Any) -> dict[str, Any]:
    """Raise FormatError unless ``meta`` is well-formed edgetrain metadata; return it.

    Checks the metadata alone (no graphs): the schema above, and that its names agree with
    one another -- the state lists are disjoint, the step counter is state, a training
    signature updates exactly the trainable and state tensors, ``output`` is an output of
    ``infer`` and ``label`` an input of ``train``. :func:`edgetrain._validate.validate` checks
    the rest against the file's graphs.
    """
    obj(meta, "the metadata", _TOP_REQUIRED, _TOP_OPTIONAL)
    trainable, frozen, state = meta["trainable"], meta["frozen"], meta["state"]
    for a, b, la, lb in ((trainable, frozen, "trainable", "frozen"),
                         (trainable, state, "trainable", "state"),
                         (frozen, state, "frozen", "state")):
        both = set(a) & set(b)
        if both:
            raise fail(f"tensor {quote(min(both))} is listed as both {la} and {lb}")
    if meta["step"] not in state:
        raise fail(f"the step counter {quote(meta['step'])} is not listed as state")
    variables = set(trainable) | set(state)
    sigs = meta["signatures"]
    for sig, spec in sigs.items():
        updates = set(spec.get("updates") or {})
        extra, missing = sorted(updates - variables), sorted(variables - updates)
        if updates and extra:
            raise fail(f"signature {quote(sig)} updates {quote(extra[0])}, which is not a "
                       "trainable or state tensor")
        if updates and missing:
            raise fail(f"signature {quote(sig)} does not update {quote(missing[0])}; a "
                       "training signature updates every trainable and state tensor")
    if meta["output"] not in {o["name"] for o in sigs["infer"]["outputs"]}:
        raise fail(f"output {quote(meta['output'])} is not an output of 'infer'")
    if meta["label"] not in {i["name"] for i in sigs["train"]["inputs"]}:
        raise fail(f"label {quote(meta['label'])} is not an input of 'train'")
    return meta
