"""Reading the ``edgetrain`` metadata: strict JSON, the spec's structure, the rules between fields.

The metadata travels further than the graphs: the Python runtime looks names up in it,
``edgetrain info`` prints it to a terminal, and the browser export copies it into a manifest
that a web page reads. So it is checked in full before anything reads it, in three stages:

1. **parsing** (:func:`parse_meta`): bounded size, strict JSON -- no duplicate keys (two
   readers could see different values), no ``NaN``/``Infinity``, no lone surrogate escapes
   (I-JSON: every string is Unicode text);
2. **structure**: the checker generated from :class:`~edgetrain.format._spec.Metadata`, the
   same spec the shipped JSON Schema is generated from (unknown keys refused, every string of
   its kind, every number in its range);
3. **rules between fields** (:data:`RULES`): what no schema expresses, written here once and
   listed in ``docs/format.md``; another driver applies them after the schema.

A version-1 document is then read as version 2 would say it (:func:`_upgrade`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import numpy as np

from ..errors import FormatError
from ._jsontypes import fail, path_key, quote
from ._spec import (
    FEATURE_SIGNATURES,
    MAX_ELEMENTS,
    Metadata,
    Role,
    SignatureSpec,
    TensorSpec,
    _node,
)

__all__ = ["MAX_ELEMENTS", "RULES", "RuleError", "decode_meta", "fail", "parse_meta", "quote",
           "validate_meta"]

#: Largest metadata JSON read (characters); a LoRA model's is a few tens of KiB.
MAX_META_CHARS = 8 << 20
_NUMERIC = {"float32", "float64", "float16", "int64", "int32", "int8", "uint8"}
_UPDATING = ("train", "train_features", "train_steps")
_KNOWN = ("infer", "train", "eval", "train_steps", *FEATURE_SIGNATURES)
_BUILTIN_IO = (TensorSpec(name="checkpoint_path", dtype="str", shape=()),)
_SURROGATE = re.compile("[\ud800-\udfff]")

#: The rules between fields, by name: every refusal after the structure names one.
RULES = {
    "unique-io": "The inputs of a signature have different names, and so do its outputs.",
    "default": "An input has a `default` exactly when it is `optional`; only numeric scalars "
               "have one, within their dtype's range (an integer for integer dtypes).",
    "unique-updates": "No two state tensors take their new value from the same output.",
    "builtin": "`save` and `restore`, and only they, are of kind `builtin`: no graph, no "
               "updates, input and output exactly `checkpoint_path` (`str`, shape `[]`).",
    "graph": "A signature of kind `graph` names its `graph`.",
    "infer-main": "`infer` is the main graph.",
    "updating": "`train`, `train_features` and `train_steps` update state; `infer`, `eval` "
                "and the other feature signatures do not.",
    "steps": "`train_steps` (K steps in one call) takes its rate as a vector, one per step "
             "(its `lr` input has rank 1 and no default), and returns the steps' losses as a "
             "vector (its `loss` output has rank 1); a driver commits its state only when the "
             "step counter advanced by the number of rates given.",
    "features": "The feature signatures (`features`, `train_features`, `eval_features`, "
                "`infer_features`) come all four or none.",
    "disjoint": "No tensor is listed in two of `trainable`, `frozen`, `state`.",
    "step-state": "`step` is listed in `state`.",
    "updates-cover": "A signature that updates state updates every `trainable` and `state` "
                     "tensor, and nothing else.",
    "output": "`output` is an output of `infer`.",
    "label": "`label` is an input of `train`.",
    "roles": "From format version 2 on, every input and output of a `graph` signature has a "
             "`role`, and `task` is given.",
}


class RuleError(FormatError):
    """A document of valid structure that breaks one of :data:`RULES`."""

    def __init__(self, rule: str, msg: str) -> None:
        assert rule in RULES
        super().__init__(f"invalid edgetrain file: {msg}")
        self.rule = rule


# -- parsing ---------------------------------------------------------------------------------

def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {quote(k)}")
        if _SURROGATE.search(k):
            raise ValueError(f"key {quote(k)} holds a lone surrogate")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _no_surrogates(value: Any) -> None:
    """Refuse strings that are not Unicode text (an escaped lone surrogate, ``"\\ud800"``)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                raise FormatError("the edgetrain metadata is not valid JSON: the string "
                                  f"{quote(v)} holds a lone surrogate")
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())


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
    _no_surrogates(meta)
    return meta


# -- the rules between fields ----------------------------------------------------------------

def _check_default(s: TensorSpec, at: str) -> None:
    if s.optional != (s.default is not None):
        raise RuleError("default", f"{at} ({quote(s.name)}): an input has a default exactly "
                                   "when it is optional")
    if s.default is None:
        return
    if s.dtype not in _NUMERIC or s.shape != ():
        raise RuleError("default", f"{at} ({quote(s.name)}): only numeric scalars have "
                                   "defaults")
    dt = np.dtype(s.dtype)
    info = np.finfo(dt) if dt.kind == "f" else np.iinfo(dt)
    if not float(info.min) <= s.default <= float(info.max) or \
            (dt.kind != "f" and not float(s.default).is_integer()):
        raise RuleError("default", f"{at} ({quote(s.name)}): the default {s.default!r} is not "
                                   f"a {dt.name} value")


def _check_ios(sig: str, which: str, specs: tuple[TensorSpec, ...]) -> None:
    path = path_key(path_key("signatures", sig), which)
    seen: set[str] = set()
    for i, s in enumerate(specs):
        if s.name in seen:
            raise RuleError("unique-io", f"{path} name {quote(s.name)} twice")
        seen.add(s.name)
        _check_default(s, f"{path}[{i}]")


def _check_signature(sig: str, s: SignatureSpec) -> None:
    what = f"signature {quote(sig)}"
    _check_ios(sig, "inputs", s.inputs)
    _check_ios(sig, "outputs", s.outputs)
    if len(set(s.updates.values())) != len(s.updates):
        raise RuleError("unique-updates", f"{what}: two state tensors take their new value "
                                          "from the same output")
    if (s.kind == "builtin") != (sig in ("save", "restore")):
        raise RuleError("builtin", f"{what}: save and restore, and only they, are builtin "
                                   "signatures")
    if s.kind == "builtin":
        if s.graph is not None or s.updates or s.inputs != _BUILTIN_IO \
                or s.outputs != _BUILTIN_IO:
            raise RuleError("builtin", f"{what} is not one of the builtin signatures "
                                       "save(checkpoint_path) and restore(checkpoint_path)")
        return
    if s.graph is None:
        raise RuleError("graph", f"{what} is of kind 'graph' but names no graph")
    if sig in _KNOWN and bool(s.updates) != (sig in _UPDATING):
        raise RuleError("updating", f"{what} {'must' if sig in _UPDATING else 'cannot'} update "
                                    "state tensors")


def _check_steps(s: SignatureSpec) -> None:
    """``train_steps``: a rate per step in, a loss per step out (the commit rule counts them)."""
    lr, loss = s.input("lr"), s.output("loss")
    if lr is not None and (len(lr.shape) != 1 or lr.default is not None):
        raise RuleError("steps", f"signature 'train_steps': its rate {quote(lr.name)} must be "
                                 "a vector, one rate per step, with no default")
    if loss is not None and len(loss.shape) != 1:
        raise RuleError("steps", f"signature 'train_steps': its loss {quote(loss.name)} must "
                                 "be a vector, one loss per step")


def _check_signatures(meta: Metadata) -> None:
    sigs = meta.signatures
    for sig, spec in sigs.items():
        _check_signature(sig, spec)
    if "train_steps" in sigs:
        _check_steps(sigs["train_steps"])
    if sigs["infer"].kind != "graph" or sigs["infer"].graph != "main":
        raise RuleError("infer-main", "the 'infer' signature must be the main graph")
    present = [s for s in FEATURE_SIGNATURES if s in sigs]
    if present and len(present) != len(FEATURE_SIGNATURES):
        raise RuleError("features", "the feature signatures come together: "
                                    f"{', '.join(FEATURE_SIGNATURES)}")
    if meta.format_version >= 2:
        for sig, spec in sigs.items():
            unnamed = [x.name for x in (*spec.inputs, *spec.outputs) if x.role is None]
            if spec.kind == "graph" and unnamed:
                raise RuleError("roles", f"signature {quote(sig)}: {quote(unnamed[0])} has "
                                         "no role (format version 2)")
        if meta.task is None:
            raise RuleError("roles", "the metadata names no task (format version 2)")


def _check_tensors(meta: Metadata) -> None:
    trainable, frozen, state = meta.trainable, meta.frozen, meta.state
    for a, b, la, lb in ((trainable, frozen, "trainable", "frozen"),
                         (trainable, state, "trainable", "state"),
                         (frozen, state, "frozen", "state")):
        both = set(a) & set(b)
        if both:
            raise RuleError("disjoint", f"tensor {quote(min(both))} is listed as both {la} "
                                        f"and {lb}")
    if meta.step not in state:
        raise RuleError("step-state", f"the step counter {quote(meta.step)} is not listed as "
                                      "state")
    variables = set(trainable) | set(state)
    for sig, spec in meta.signatures.items():
        updates = set(spec.updates)
        extra, missing = sorted(updates - variables), sorted(variables - updates)
        if updates and extra:
            raise RuleError("updates-cover", f"signature {quote(sig)} updates "
                            f"{quote(extra[0])}, which is not a trainable or state tensor")
        if updates and missing:
            raise RuleError("updates-cover", f"signature {quote(sig)} does not update "
                            f"{quote(missing[0])}; a training signature updates every "
                            "trainable and state tensor")
    if meta.output not in {o.name for o in meta.signatures["infer"].outputs}:
        raise RuleError("output", f"output {quote(meta.output)} is not an output of 'infer'")
    if meta.label not in {i.name for i in meta.signatures["train"].inputs}:
        raise RuleError("label", f"label {quote(meta.label)} is not an input of 'train'")


# -- reading -----------------------------------------------------------------------------------

def _read(meta: Any) -> Metadata:
    """Structure, then the rules: the document as typed metadata, exactly as written."""
    node = _node()
    node.check(meta, "")
    typed: Metadata = node.decode(meta)
    _check_signatures(typed)
    _check_tensors(typed)
    return typed


def validate_meta(meta: Any) -> dict[str, Any]:
    """Raise FormatError unless ``meta`` is well-formed edgetrain metadata; return it.

    Checks the metadata alone (no graphs): its structure (the spec), then :data:`RULES`.
    :func:`edgetrain.format.validate` checks the rest against the file's graphs.
    """
    _read(meta)
    out: dict[str, Any] = meta
    return out


def decode_meta(meta: Any) -> Metadata:
    """The validated document as :class:`Metadata`, a version-1 one read as version 2."""
    return _upgrade(_read(meta))


# -- version 1 ---------------------------------------------------------------------------------

def _input_role(meta: Metadata, sig: str, s: TensorSpec) -> Role:
    if s.name == "lr" and s.optional:
        return "lr"
    if s.name == meta.label:
        return "label"
    if meta.features is not None and s.name == meta.features.name and sig != "features":
        return "features"
    return "data"


def _output_role(meta: Metadata, sig: str, s: TensorSpec) -> Role:
    if s.name == "loss":
        return "loss"
    if sig == "features":
        return "features"
    if s.name == meta.output:
        return "prediction"
    return "metric" if sig.startswith("eval") else "output"


def _upgrade(meta: Metadata) -> Metadata:
    """A version-1 document as version 2 says it: version 1 fixed the names (``lr``,
    ``loss``, the label ``meta.label``) where version 2 gives roles, and had no ``task``."""
    if meta.format_version >= 2:
        return meta
    sigs: dict[str, SignatureSpec] = {}
    for name, s in meta.signatures.items():
        if s.kind == "graph":
            s = dataclasses.replace(
                s, inputs=tuple(x if x.role else dataclasses.replace(
                    x, role=_input_role(meta, name, x)) for x in s.inputs),
                outputs=tuple(x if x.role else dataclasses.replace(
                    x, role=_output_role(meta, name, x)) for x in s.outputs))
        sigs[name] = s
    task = meta.task or ("multiclass" if meta.classification else "binary"
                         if meta.loss.name == "bce_with_logits" else "regression")
    return dataclasses.replace(meta, signatures=sigs, task=task)

