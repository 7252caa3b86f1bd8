"""The ``edgetrain`` metadata of a trainable file, specified once, as typed dataclasses.

Everything else is derived from these classes: the JSON Schema that every driver validates
against (:func:`metadata_schema`, shipped as ``edgetrain/format/schema.json``), the structural
check of the Python reader, the decoding into these classes and the encoding back, and the
field table of ``docs/format.md``. The rules that relate fields to one another (the step
counter is state, ``output`` is an output of ``infer``, …) are not structure; they are written
once in :mod:`edgetrain.format._schema` and listed in ``docs/format.md``.

Every string is one of four kinds:

* **identifiers** -- signature names, loss and optimizer names, their parameter names and
  string values: ``[A-Za-z_][A-Za-z0-9_.-]{0,63}``;
* **names** -- tensor names, signature input and output names, update targets, symbolic
  dimensions, node and value names of LoRA sites: whatever ONNX allows (exporters use ``:``,
  ``/``, ``.``, brackets) but 1 to 256 characters, none of them :data:`NONPRINTABLE`, so a
  name stays one line in a terminal and in a message. They may contain ``<``, ``&`` or quotes:
  a page must escape them, as it must escape any name;
* **text** -- ``producer``, ``selection`` and the values of ``lora``: at most 1024 characters,
  none of them nonprintable;
* **graph references** -- ``main`` or ``training_info/<n>``.

Numbers are finite; integers lie within ±2⁵³ (exact in JavaScript), other numbers within
float32's range.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np

from ._constants import FORMAT_VERSION
from ._jsontypes import DOC, EXTRA, Def, Items, Object, Props, Range, Str, node_for, schema_of

MAX_NAME = 256
MAX_TEXT = 1024
MAX_INT = 2**53
MAX_FLOAT = float(np.finfo(np.float32).max)
#: Largest tensor a file may declare (elements); far above any on-device model.
MAX_ELEMENTS = 1 << 31
IDENT = r"[A-Za-z_][A-Za-z0-9_.-]{0,63}"
GRAPH_REF = r"main|training_info/(?:0|[1-9][0-9]{0,3})"
#: The characters no name or text may hold: Unicode 14.0's control (Cc), format (Cf),
#: separator (Zs but the space, Zl, Zp) and private-use (Co) characters. Frozen here, so that
#: every driver and every Python version refuses the same ones (``str.isprintable`` follows
#: the running Python's Unicode version, and a JavaScript driver has no such test).
NONPRINTABLE = (
    (0x0000, 0x001F), (0x007F, 0x00A0), (0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C),
    (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x1680, 0x1680),
    (0x180E, 0x180E), (0x2000, 0x200F), (0x2028, 0x202F), (0x205F, 0x2064), (0x2066, 0x206F),
    (0x3000, 0x3000), (0xE000, 0xF8FF), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD),
    (0x110CD, 0x110CD), (0x13430, 0x13438), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001), (0xE0020, 0xE007F), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD))
_FORBIDDEN = "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in NONPRINTABLE)

DTYPES = ("float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool", "str")
#: What a signature's input or output is for, so drivers find the label or the rate by role
#: rather than by a fixed name (the compiler picks names clear of the model's own).
ROLES = ("data", "label", "lr", "features", "prediction", "output", "loss", "metric")
TASKS = ("multiclass", "binary", "regression")
#: Signatures every trainable file has; the feature signatures come all four or none, and
#: ``train_steps`` (K steps in one call, rule ``steps``) is optional.
REQUIRED_SIGNATURES = ("infer", "train", "eval", "save", "restore")
FEATURE_SIGNATURES = ("features", "train_features", "eval_features", "infer_features")

Ident = Annotated[str, Str(
    f"an identifier ({IDENT})", "Identifier", pattern=IDENT,
    description="Signature, loss and optimizer names, their parameter names and values.")]
Name = Annotated[str, Str(
    f"a name (1 to {MAX_NAME} printable characters)", "Name", min_length=1,
    max_length=MAX_NAME, forbidden=_FORBIDDEN,
    description="An ONNX name: tensors, inputs, outputs, symbolic dims, nodes.")]
NodeName = Annotated[str, Str(
    f"a node name (up to {MAX_NAME} printable characters)", "NodeName",
    max_length=MAX_NAME, forbidden=_FORBIDDEN,
    description="An ONNX node name, which may be empty.")]
Text = Annotated[str, Str(
    f"printable text of at most {MAX_TEXT} characters", "Text", max_length=MAX_TEXT,
    forbidden=_FORBIDDEN, description="Free text.")]
GraphRef = Annotated[str, Str(
    "'main' or 'training_info/<n>'", "GraphRef", pattern=GRAPH_REF,
    description="The main graph, or the algorithm of training_info[n].")]
Float = Annotated[float, Range(-MAX_FLOAT, MAX_FLOAT, "Float")]
Dim = Annotated[int, Range(0, MAX_ELEMENTS - 1, "Size")] | Name | None
Shape = Annotated[tuple[Dim, ...], Items(16)]
Names = Annotated[tuple[Name, ...], Items(1 << 20, unique=True)]
DType = Literal["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool", "str"]
Role = Literal["data", "label", "lr", "features", "prediction", "output", "loss", "metric"]
Task = Literal["multiclass", "binary", "regression"]
IdentScalar = None | bool | Float | Ident
TextScalar = None | bool | Float | Text
IdentParam = Annotated[IdentScalar | Annotated[tuple[IdentScalar, ...], Items(64)],
                       Def("IdentParam")]
TextParam = Annotated[TextScalar | Annotated[tuple[TextScalar, ...], Items(64)], Def("TextParam")]


class Record:
    """A spec dataclass: ``to_json`` writes it as the JSON the spec describes."""

    def to_json(self) -> dict[str, Any]:
        """The JSON values (fields at their defaults are left out)."""
        out: dict[str, Any] = node_for(type(self)).encode(self)
        return out


def doc(text: str, extra: bool = False) -> dict[str, Any]:
    """Field metadata: the description every generated artefact carries."""
    return {DOC: text, EXTRA: True} if extra else {DOC: text}


@dataclass(frozen=True, kw_only=True)
class TensorSpec(Record):
    """One input or output of a signature."""

    name: Name = field(metadata=doc("Its name in the signature's graph."))
    dtype: DType = field(metadata=doc("Element type (numpy's name; 'str' for paths)."))
    shape: Shape = field(metadata=doc(
        "Dimensions: a size, a symbolic name shared by inputs (e.g. 'batch'), or null."))
    role: Role | None = field(default=None, metadata=doc(
        "What it is for; every input and output of a graph signature has one from version 2 "
        "on (version 1: derived when read)."))
    optional: bool = field(default=False, metadata=doc(
        "An input the caller may leave out; then it takes `default`."))
    default: Float | None = field(default=None, metadata=doc(
        "The value of an optional numeric scalar input left out."))


@dataclass(frozen=True, kw_only=True)
class SignatureSpec(Record):
    """A named entry point: a graph of the file, or a built-in (save, restore)."""

    kind: Literal["graph", "builtin"] = field(metadata=doc(
        "'graph' runs `graph`; 'builtin' is save or restore, which the driver implements."))
    inputs: Annotated[tuple[TensorSpec, ...], Items(1024)] = field(metadata=doc(
        "Public inputs, in order."))
    outputs: Annotated[tuple[TensorSpec, ...], Items(1024)] = field(metadata=doc(
        "Public outputs, in order."))
    graph: GraphRef | None = field(default=None, metadata=doc(
        "Which graph runs (kind 'graph' only)."))
    updates: Annotated[Mapping[Name, Name], Props(1 << 20)] = field(
        default_factory=dict, metadata=doc(
            "State tensor → the graph output holding its new value (training signatures)."))

    def input(self, role: str) -> TensorSpec | None:
        """The first input playing ``role``."""
        return next((s for s in self.inputs if s.role == role), None)

    def output(self, role: str) -> TensorSpec | None:
        return next((s for s in self.outputs if s.role == role), None)


@dataclass(frozen=True, kw_only=True)
class FeatureSpec(Record):
    """The frozen prefix's output that the feature signatures start from."""

    tensor: Name = field(metadata=doc("The value of the inference graph it is."))
    name: Name = field(metadata=doc("The input name of the feature signatures."))
    dtype: DType = field(metadata=doc("Its element type."))
    shape: Shape = field(metadata=doc("Its dimensions."))


@dataclass(frozen=True, kw_only=True)
class LoraSite(Record):
    """One place a LoRA adapter's side branch joins the graph."""

    node: NodeName = field(metadata=doc("The adapted MatMul or Gemm node."))
    base: Name = field(metadata=doc("The value that node computes."))
    output: Name = field(metadata=doc("The sum of base and branch that replaced it."))
    nodes: Annotated[tuple[Name, ...], Items(64)] = field(metadata=doc(
        "The side branch's nodes, which an export removes."))


@dataclass(frozen=True, kw_only=True)
class LoraAdapter(Record):
    """A low-rank adapter W + scale·A·B that an export folds into W."""

    weight: Name = field(metadata=doc("The adapted weight W."))
    sites: Annotated[tuple[LoraSite, ...], Items(4096)] = field(metadata=doc(
        "Every node reading W."))
    transposed: bool = field(metadata=doc("W is read transposed (Gemm transB)."))
    A: Name = field(metadata=doc(
        "The trainable down-projection A, [inputs, rank], drawn as PEFT draws it."))
    B: Name = field(metadata=doc(
        "The trainable up-projection B, [rank, outputs], zeros at first (A·B starts at 0)."))
    scale: Float = field(metadata=doc("alpha / rank."))


@dataclass(frozen=True, kw_only=True)
class LossConfig(Record):
    """The loss: its name and its parameters, side by side in one flat object."""

    name: Ident = field(metadata=doc("cross_entropy, bce_with_logits, mse, l1, huber."))
    params: Annotated[Mapping[Ident, IdentParam], Props(64)] = field(
        default_factory=dict, metadata=doc("The loss's parameters.", extra=True))


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig(Record):
    """The optimizer: its name, default learning rate and parameters, in one flat object."""

    name: Ident = field(metadata=doc("sgd, adam, adamw."))
    lr: Annotated[float, Range(1e-30, MAX_FLOAT)] = field(metadata=doc(
        "The learning rate a step uses when the caller gives none."))
    params: Annotated[Mapping[Ident, IdentParam], Props(64)] = field(
        default_factory=dict, metadata=doc("The optimizer's parameters.", extra=True))


@dataclass(frozen=True, kw_only=True)
class Metadata(Record):
    """The JSON document in ``metadata_props["edgetrain"]`` of a trainable file."""

    format_version: Annotated[int, Range(1, FORMAT_VERSION)] = field(metadata=doc(
        "The format version the file was written in; a reader refuses newer ones."))
    producer: Text | None = field(default=None, metadata=doc("What wrote the file."))
    signatures: Annotated[Mapping[Ident, SignatureSpec], Props(
        64, min=1, required=REQUIRED_SIGNATURES)] = field(metadata=doc(
            "Every entry point by name: infer, train, eval, save, restore; optionally "
            "train_steps (K steps per call) and the four feature signatures."))
    trainable: Names = field(metadata=doc("The tensors a training step optimizes."))
    frozen: Names = field(metadata=doc("Float weights that do not train."))
    state: Names = field(metadata=doc(
        "Other tensors a step updates: optimizer slots, running statistics, the step "
        "counter."))
    step: Name = field(metadata=doc("The step counter (an int64 scalar state tensor)."))
    output: Name = field(metadata=doc("The prediction: an output of 'infer'."))
    label: Name = field(metadata=doc("The label: an input of 'train'."))
    labels: Literal["index", "onehot"] = field(metadata=doc(
        "How class labels are given."))
    task: Task | None = field(default=None, metadata=doc(
        "What the model predicts (from version 2 on; version 1: derived when read)."))
    loss: LossConfig = field(metadata=doc("The loss and its parameters."))
    optimizer: OptimizerConfig = field(metadata=doc("The optimizer and its parameters."))
    classification: bool = field(metadata=doc("The task is multiclass."))
    selection: Text | None = field(default=None, metadata=doc(
        "How the trainable tensors were chosen."))
    lora: Annotated[Mapping[Ident, TextParam], Props(64)] | None = field(
        default=None, metadata=doc("LoRA's configuration and sizes (informational)."))
    lora_merge: Annotated[tuple[LoraAdapter, ...], Items(4096)] = field(
        default=(), metadata=doc("The adapters an export folds into their weights."))
    features: FeatureSpec | None = field(default=None, metadata=doc(
        "The feature tensor of the feature signatures."))

    @classmethod
    def from_json(cls, obj: Any) -> Metadata:
        """Validate a parsed document (structure and semantics; see ``_schema``) and read it.

        A version-1 document is read as version 2 would say it (roles and task derived);
        ``format_version`` keeps saying what the file is.
        """
        from ._schema import decode_meta

        return decode_meta(obj)

    @property
    def variables(self) -> frozenset[str]:
        """Every tensor a training step changes: trainable, state, the step counter."""
        return frozenset((*self.trainable, *self.state, self.step))


@functools.cache
def _node() -> Object:
    node = node_for(Metadata)
    assert isinstance(node, Object)
    return node


#: Document keys of the schema itself (the rest is generated).
SCHEMA_HEAD = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$comment": "Generated from edgetrain.format._spec by tools/format_schema.py; do not edit.",
    "title": "edgetrain metadata",
}


@functools.cache
def _schema() -> dict[str, Any]:
    out = schema_of(Metadata, SCHEMA_HEAD)
    out["description"] = (
        f"The JSON in metadata_props['edgetrain'] of a trainable ONNX file, format versions 1 "
        f"to {FORMAT_VERSION}. Patterns are ECMA-262 regular expressions (u flag). Rules "
        "between fields that a schema does not express are listed in docs/format.md.")
    return out


def metadata_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the metadata, generated from :class:`Metadata`.

    The same document ships as ``edgetrain/format/schema.json`` for drivers in other
    languages.
    """
    return copy.deepcopy(_schema())
