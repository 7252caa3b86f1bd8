"""Typed JSON: one walk over dataclass type hints gives the JSON Schema, the checker, the codec.

The metadata is specified once, as frozen dataclasses (:mod:`edgetrain.format._spec`) whose
fields carry their constraints in ``Annotated`` hints: :class:`Str` (length, pattern,
printable), :class:`Range` (numeric bounds), :class:`Items` (list length, uniqueness),
:class:`Props` (object size, required keys). :func:`node_for` turns a hint into a
:class:`Node` that can

* write itself as JSON Schema (draft 2020-12) -- what every other driver validates against;
* check a parsed JSON value, raising a one-line :class:`~edgetrain.errors.FormatError` that
  names the field (``signatures.train.inputs[2].default must be …``);
* decode a checked value into dataclasses and tuples, and encode it back.

Because the schema and the checker are generated from the same nodes, they accept the same
documents; ``tests/test_format_spec.py`` checks that against ``jsonschema`` on many thousands
of documents. Semantics are JSON's: an integer is a number without a fraction (``2.0`` is one,
as every JavaScript parser sees it), a number is never a boolean, and bounds compare values.

Patterns are written so that ECMA-262 (with the ``u`` flag), RE2, Rust's ``regex`` and Python
read them alike: character classes and counted repetition only, anchored by ``^…$``, non-ASCII
characters as themselves (no ``\\u`` escapes, which the engines spell differently).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..errors import FormatError

__all__ = ["Def", "Items", "Node", "Props", "Range", "Str", "fail", "node_for", "quote",
           "schema_of"]


def fail(msg: str) -> FormatError:
    return FormatError(f"invalid edgetrain file: {msg}")


def quote(s: Any, limit: int = 60) -> str:
    """``s`` for a one-line message: repr (control characters escaped), shortened."""
    if isinstance(s, (str, bytes)):
        return repr(s[:limit]) + ("…" if len(s) > limit else "")
    return f"a {type(s).__name__}"


# -- constraints (the metadata of Annotated hints) ---------------------------------------------

@dataclass(frozen=True)
class Str:
    """A kind of string: ``what`` names it in messages, ``ref`` in the schema's ``$defs``.

    ``pattern`` must match the whole string; ``printable`` refuses the characters of
    ``forbidden`` (a character class body); lengths count code points.
    """

    what: str
    ref: str
    pattern: str | None = None
    min_length: int = 0
    max_length: int | None = None
    forbidden: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Range:
    """Inclusive numeric bounds (``ref`` names them in the schema's ``$defs``)."""

    lo: float
    hi: float
    ref: str | None = None


@dataclass(frozen=True)
class Items:
    """A list of at most ``max`` items, all different when ``unique``."""

    max: int
    unique: bool = False


@dataclass(frozen=True)
class Props:
    """An object of ``min`` to ``max`` entries that has the ``required`` keys."""

    max: int
    min: int = 0
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class Def:
    """Name a type in the schema's ``$defs`` (a union used in several places)."""

    ref: str


#: Field metadata key: the field holds the object's other keys (a flat config's parameters).
EXTRA = "extra"
#: Field metadata key: the field's description (schema ``description``, docs/format.md).
DOC = "doc"

_JSON_TYPES = {type(None): "null", bool: "boolean", int: "number", float: "number",
               str: "string", list: "array", dict: "object"}


def json_type(v: Any) -> str:
    return _JSON_TYPES.get(type(v), "other")


def shown(v: Any) -> str:
    """A JSON value in a message, bounded."""
    if isinstance(v, str):
        return quote(v)
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, (int, float)):
        text = repr(v)
        return text if len(text) <= 24 else text[:24] + "…"
    return {"array": "a list", "object": "an object"}.get(json_type(v), quote(v))


def path_key(path: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{quote(key)}]"


def _where(path: str) -> str:
    return path or "the metadata"


def _num(x: float) -> str:
    return f"{x:g}" if abs(x) < 2**53 or not float(x).is_integer() else f"{x:.6g}"


# -- nodes --------------------------------------------------------------------------------------

class Node:
    """One hint, compiled: schema, check, decode, encode."""

    what = "a value"
    types: frozenset[str] = frozenset()

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, v: Any, path: str) -> None:
        raise NotImplementedError

    def decode(self, v: Any) -> Any:
        return v

    def encode(self, v: Any) -> Any:
        return v

    def refuse(self, v: Any, path: str) -> FormatError:
        return fail(f"{_where(path)} must be {self.what}; got {shown(v)}")


class _Leaf(Node):
    """A JSON type with no parameters: the schema names the type, ``accepts`` tests a value."""

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return {"type": next(iter(self.types))}

    def check(self, v: Any, path: str) -> None:
        if not self.accepts(v):
            raise self.refuse(v, path)

    @staticmethod
    def accepts(v: Any) -> bool:
        raise NotImplementedError


class Null(_Leaf):
    what = "null"
    types = frozenset({"null"})

    @staticmethod
    def accepts(v: Any) -> bool:
        return v is None


class Bool(_Leaf):
    what = "true or false"
    types = frozenset({"boolean"})

    @staticmethod
    def accepts(v: Any) -> bool:
        return isinstance(v, bool)


class Number(Node):
    """A JSON number within bounds; ``integer`` also wants no fraction (``2.0`` is 2)."""

    types = frozenset({"number"})

    def __init__(self, integer: bool, bounds: Range) -> None:
        self.integer, self.bounds = integer, bounds
        kind = "an integer" if integer else "a number"
        self.what = f"{kind} in [{_num(bounds.lo)}, {_num(bounds.hi)}]"

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        lo, hi = self.bounds.lo, self.bounds.hi
        out: dict[str, Any] = ({"type": "integer", "minimum": int(lo), "maximum": int(hi)}
                               if self.integer else {"type": "number", "minimum": lo,
                                                     "maximum": hi})
        if self.bounds.ref is None:
            return out
        defs.setdefault(self.bounds.ref, out)
        return {"$ref": f"#/$defs/{self.bounds.ref}"}

    def check(self, v: Any, path: str) -> None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if ok and isinstance(v, float):
            ok = math.isfinite(v) and (not self.integer or v.is_integer())
        if not (ok and self.bounds.lo <= v <= self.bounds.hi):
            raise self.refuse(v, path)

    def decode(self, v: Any) -> Any:
        return int(v) if self.integer else v


class String(Node):
    types = frozenset({"string"})

    def __init__(self, spec: Str) -> None:
        self.spec = spec
        self.what = spec.what
        body = spec.pattern or (f"[^{spec.forbidden}]*" if spec.forbidden else None)
        self._python = re.compile(body) if body else None
        wrapped = f"(?:{body})" if body and "|" in body else body
        self._schema_pattern = f"^{wrapped}$" if body else None
        # The parse rule restated for values handed over directly: a lone surrogate is not
        # text (I-JSON); the JSON parser refuses it before any schema is consulted.
        self._surrogate = re.compile("[\ud800-\udfff]")

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        s = self.spec
        if s.ref not in defs:
            out: dict[str, Any] = {"type": "string"}
            if s.description:
                out["description"] = s.description
            if s.min_length:
                out["minLength"] = s.min_length
            if s.max_length is not None:
                out["maxLength"] = s.max_length
            if self._schema_pattern:
                out["pattern"] = self._schema_pattern
            defs[s.ref] = out
        return {"$ref": f"#/$defs/{s.ref}"}

    def check(self, v: Any, path: str) -> None:
        s = self.spec
        if not isinstance(v, str) or len(v) < s.min_length or \
                (s.max_length is not None and len(v) > s.max_length) or \
                (self._python is not None and not self._python.fullmatch(v)) or \
                self._surrogate.search(v):
            raise self.refuse(v, path)


class Enum(Node):
    types = frozenset({"string"})

    def __init__(self, values: tuple[str, ...]) -> None:
        self.values = values
        self.what = "one of " + ", ".join(values)

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return {"enum": list(self.values)}

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, str) or v not in self.values:
            raise self.refuse(v, path)


class AnyOf(Node):
    """Alternatives of different JSON types: a value is checked by the one of its type."""

    def __init__(self, alts: list[Node]) -> None:
        self.alts = alts
        seen: set[str] = set()
        for a in alts:
            if seen & a.types:
                raise TypeError("union alternatives must differ in their JSON types")
            seen |= a.types
        self.types = frozenset(seen)
        self.what = ", ".join(a.what for a in alts[:-1]) + f" or {alts[-1].what}"

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return {"anyOf": [a.schema(defs) for a in self.alts]}

    def _alt(self, t: str) -> Node | None:
        return next((a for a in self.alts if t in a.types), None)

    def check(self, v: Any, path: str) -> None:
        alt = self._alt(json_type(v))
        if alt is None:
            raise self.refuse(v, path)
        alt.check(v, path)

    def decode(self, v: Any) -> Any:
        alt = self._alt(json_type(v))
        return alt.decode(v) if alt else v

    def encode(self, v: Any) -> Any:
        alt = self._alt(json_type(list(v) if isinstance(v, tuple) else v))
        return alt.encode(v) if alt else v


class Named(Node):
    """A node written once under ``$defs`` and referred to elsewhere."""

    def __init__(self, node: Node, ref: str) -> None:
        self.node, self.ref = node, ref
        self.what, self.types = node.what, node.types

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        if self.ref not in defs:
            defs[self.ref] = {}  # reserved first: the definition may refer to itself
            defs[self.ref] = self.node.schema(defs)
        return {"$ref": f"#/$defs/{self.ref}"}

    def check(self, v: Any, path: str) -> None:
        self.node.check(v, path)

    def decode(self, v: Any) -> Any:
        return self.node.decode(v)

    def encode(self, v: Any) -> Any:
        return self.node.encode(v)


class Array(Node):
    types = frozenset({"array"})

    def __init__(self, item: Node, items: Items) -> None:
        self.item, self.items = item, items
        self.what = f"a list of at most {items.max} entries"

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        out = {"type": "array", "items": self.item.schema(defs), "maxItems": self.items.max}
        if self.items.unique:
            out["uniqueItems"] = True
        return out

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, list) or len(v) > self.items.max:
            raise self.refuse(v, path)
        for i, x in enumerate(v):
            self.item.check(x, f"{path}[{i}]")
        if self.items.unique and len(set(v)) != len(v):
            twice = next(x for i, x in enumerate(v) if x in v[:i])
            raise fail(f"{_where(path)} lists {shown(twice)} twice")

    def decode(self, v: Any) -> Any:
        return tuple(self.item.decode(x) for x in v)

    def encode(self, v: Any) -> Any:
        return [self.item.encode(x) for x in v]


class Dict(Node):
    """An object whose keys are strings of one kind and whose values are of one type."""

    types = frozenset({"object"})

    def __init__(self, key: String, value: Node, props: Props) -> None:
        self.key, self.value, self.props = key, value, props
        self.what = f"an object of {props.min} to {props.max} entries"

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "object", "propertyNames": self.key.schema(defs),
                               "additionalProperties": self.value.schema(defs)}
        if self.props.min:
            out["minProperties"] = self.props.min
        out["maxProperties"] = self.props.max
        if self.props.required:
            out["required"] = list(self.props.required)
        return out

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, dict) or not self.props.min <= len(v) <= self.props.max:
            raise self.refuse(v, path)
        for k, x in v.items():
            self.key.check(k, f"a key of {_where(path)}")
            self.value.check(x, path_key(path, k))
        missing = [k for k in self.props.required if k not in v]
        if missing:
            raise fail(f"{_where(path)} has no {missing[0]!r}")

    def decode(self, v: Any) -> Any:
        return {k: self.value.decode(x) for k, x in v.items()}

    def encode(self, v: Any) -> Any:
        return {k: self.value.encode(x) for k, x in v.items()}


@dataclass
class _Field:
    name: str
    node: Node
    required: bool
    default: Any
    doc: str


class Object(Node):
    """A dataclass: its fields are the object's keys (those with a default may be absent).

    A field marked ``extra`` (a ``Mapping``) holds every other key, so flat configurations
    (``{"name": "adam", "lr": 0.01, "betas": […]}``) keep their JSON shape.
    """

    types = frozenset({"object"})

    def __init__(self, cls: type[Any]) -> None:
        self.cls = cls
        self.what = "an object"
        self.fields: list[_Field] = []
        self.extra: tuple[str, Dict] | None = None

    def build(self) -> None:
        hints = get_type_hints(self.cls, include_extras=True)
        for f in dataclasses.fields(self.cls):
            hint = hints[f.name]
            if f.metadata.get(EXTRA):
                node = node_for(hint)
                assert isinstance(node, Dict)
                self.extra = (f.name, node)
                continue
            has_default = f.default is not dataclasses.MISSING or \
                f.default_factory is not dataclasses.MISSING
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            if has_default and default is None:
                hint = _without_none(hint)
            self.fields.append(_Field(f.name, node_for(hint), not has_default, default,
                                      str(f.metadata.get(DOC, ""))))

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        name = self.cls.__name__
        if name not in defs:
            defs[name] = {}  # reserved first: the definition may refer to itself
            defs[name] = self.definition(defs)
        return {"$ref": f"#/$defs/{name}"}

    def definition(self, defs: dict[str, Any]) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for f in self.fields:
            props[f.name] = f.node.schema(defs)
            if f.doc:
                props[f.name] = {**props[f.name], "description": f.doc}
        out: dict[str, Any] = {"type": "object"}
        doc = (self.cls.__doc__ or "").strip().split("\n\n")[0]
        if doc:
            out["description"] = " ".join(doc.split())
        out["properties"] = props
        out["required"] = [f.name for f in self.fields if f.required]
        if self.extra is None:
            out["additionalProperties"] = False
        else:
            extra = self.extra[1]
            out["propertyNames"] = extra.key.schema(defs)
            out["additionalProperties"] = extra.value.schema(defs)
            out["maxProperties"] = extra.props.max
        return out

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, dict):
            raise self.refuse(v, path)
        known = {f.name: f for f in self.fields}
        extra = self.extra[1] if self.extra else None
        if extra is not None and len(v) > extra.props.max:
            raise fail(f"{_where(path)} must have at most {extra.props.max} entries")
        for k, x in v.items():
            if k in known:
                continue
            if extra is None:
                raise fail(f"{_where(path)} has an unknown key {quote(k)}")
            extra.key.check(k, f"a key of {_where(path)}")
            extra.value.check(x, path_key(path, k))
        for f in self.fields:
            if f.name in v:
                f.node.check(v[f.name], path_key(path, f.name))
            elif f.required:
                raise fail(f"{_where(path)} lacks {f.name!r}")

    def decode(self, v: Any) -> Any:
        kw = {f.name: f.node.decode(v[f.name]) for f in self.fields if f.name in v}
        if self.extra is not None:
            name, extra = self.extra
            kw[name] = extra.decode({k: x for k, x in v.items()
                                     if k not in {f.name for f in self.fields}})
        return self.cls(**kw)

    def encode(self, v: Any) -> Any:
        out: dict[str, Any] = {}
        for f in self.fields:
            x = getattr(v, f.name)
            if f.required or x != f.default:
                out[f.name] = f.node.encode(x)
        if self.extra is not None:
            name, extra = self.extra
            out.update(extra.encode(getattr(v, name)))
        return out


# -- hints → nodes ------------------------------------------------------------------------------

def _without_none(hint: Any) -> Any:
    """``X | None`` → ``X``: an optional field is absent rather than null."""
    if get_origin(hint) in (Union, types.UnionType):
        rest = [a for a in get_args(hint) if a is not type(None)]
        return rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
    return hint


_OBJECTS: dict[type[Any], Object] = {}


def _annotated(base: Any, meta: tuple[Any, ...]) -> Node:
    for m in meta:
        if isinstance(m, Def):
            return Named(node_for(base), m.ref)
        if isinstance(m, Str):
            return String(m)
        if isinstance(m, Range):
            return Number(base is int, m)
        if isinstance(m, Items):
            return Array(node_for(get_args(base)[0]), m)
        if isinstance(m, Props):
            key, value = get_args(base)
            k = node_for(key)
            assert isinstance(k, String), "object keys are constrained strings"
            return Dict(k, node_for(value), m)
    raise TypeError(f"no constraint among {meta}")


def node_for(hint: Any) -> Node:
    """The node of a type hint (dataclasses are built once and shared)."""
    origin = get_origin(hint)
    if origin is typing.Annotated:
        base, *meta = get_args(hint)
        return _annotated(base, tuple(meta))
    if origin is Literal:
        return Enum(tuple(get_args(hint)))
    if origin in (Union, types.UnionType):
        return AnyOf([node_for(a) for a in get_args(hint)])
    if hint is bool:
        return Bool()
    if hint is type(None) or hint is None:
        return Null()
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        node = _OBJECTS.get(hint)
        if node is None:
            node = _OBJECTS[hint] = Object(hint)
            node.build()
        return node
    raise TypeError(f"no JSON form for {hint!r}: annotate it with its constraints")


def schema_of(cls: type[Any], head: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON Schema of dataclass ``cls``: ``head`` keys, the definition, then ``$defs``."""
    node = node_for(cls)
    assert isinstance(node, Object)
    defs: dict[str, Any] = {}
    body = node.definition(defs)
    return {**head, **body, "$defs": dict(sorted(defs.items()))}

