"""Import: read the inference model, normalize it, and bring it into the IR."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import onnx
import onnx_ir as ir

from .. import format as fmt
from .._io import read_regular_file
from .._ir import Namer, value_names
from ..errors import EdgetrainError, FormatError
from ..format._external import load_external_data
from ..format._validate import DEFAULT_DOMAINS, iter_nodes
from ._fold import fold_constants
from ._lift import (
    clear_invalid_dims,
    lift_constant_weights,
    one_line,
    refuse_half_precision,
    set_input_shapes,
)
from ._state import Compilation

MIN_OPSET = 7  # the oldest opset ONNX's version converter takes up reliably
TARGET_OPSET = 18  # older models are converted up; newer ones keep their opset
META_KEY = "edgetrain"


def read_model(source: onnx.ModelProto | str | os.PathLike[str]
               ) -> tuple[onnx.ModelProto, str | None]:
    """The model as a ModelProto and the folder it came from (``None`` for an object).

    A path must name a regular file of bounded size. Tensors it keeps as external data are
    read by edgetrain from the model's own folder only (see ``edgetrain.format._external``), never
    by ``onnx.load`` or a runtime; an object with external references has no folder to
    confine them to and is refused there.
    """
    if isinstance(source, onnx.ModelProto):
        model, folder, what = source, None, "the ONNX model"
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            model = fmt.load_model(read_regular_file(path, "ONNX model", EdgetrainError))
        except FormatError as e:
            raise EdgetrainError(f"cannot read ONNX model {path!r}: {e}") from e
        folder, what = os.path.dirname(os.path.abspath(path)), f"ONNX model {path!r}"
    else:
        raise EdgetrainError(f"expected an onnx.ModelProto or a path, got "
                             f"{type(source).__name__}")
    _standard_ops_only(model)
    if any(o.domain not in DEFAULT_DOMAINS for o in model.opset_import) or folder is None:
        model = _copy(model)  # the caller's object stays as it was
        keep = [o for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
        del model.opset_import[:]
        model.opset_import.extend(keep)
    load_external_data(model, folder, what)
    return model, folder


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _standard_ops_only(model: onnx.ModelProto) -> None:
    """Every node at every depth is a standard op (other opset imports are then unused)."""
    if len(model.functions):
        raise EdgetrainError(f"the model defines local functions ({model.functions[0].name!r}); "
                             "inline them first (onnx.inliner.inline_local_functions)")
    for node, where in iter_nodes(model):
        if node.domain not in DEFAULT_DOMAINS:
            raise EdgetrainError(
                f"node {node.name!r} in {where} uses op {node.domain}::{node.op_type}; "
                "edgetrain compiles standard ONNX ops only (export without custom or contrib "
                "ops)")


def normalize(model: onnx.ModelProto,
              input_shapes: Mapping[str, Sequence[int | str | None]] | None = None
              ) -> onnx.ModelProto:
    """Standard ops only, opset ≥ 18, weights kept as Constant nodes made initializers, the
    caller's input shapes applied, constant shape arithmetic folded (small results only, see
    ``_fold``), shapes inferred. The signature stays as it came: it is the inference
    signature of the file."""
    if any(p.key == META_KEY for p in model.metadata_props):
        raise EdgetrainError("this file is already a trainable edgetrain file; compile its "
                             "original inference model instead (or load it with "
                             "edgetrain.load)")
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")),
                 None)
    if opset is None:
        raise EdgetrainError("the model imports no default-domain ONNX opset")
    if opset < MIN_OPSET:
        raise EdgetrainError(f"opset {opset} is too old; edgetrain accepts opsets "
                             f"{MIN_OPSET}..{onnx.defs.onnx_opset_version()}")
    refuse_half_precision(model)
    if opset < TARGET_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, TARGET_OPSET)
        except Exception as e:
            raise EdgetrainError(f"cannot convert the model from opset {opset} to "
                                 f"{TARGET_OPSET}: {one_line(e)}") from e
    model.ir_version = max(model.ir_version, 7)
    lift_constant_weights(model)
    if input_shapes:
        set_input_shapes(model, input_shapes)
    clear_invalid_dims(model)
    return _inferred(fold_constants(model))


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX's strict shape inference; when the file's own declared output shapes are what
    contradicts it (some converters write them wrong), once more without them."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as e:
        first = e
    if any(o.type.tensor_type.HasField("shape") for o in model.graph.output):
        for o in model.graph.output:
            o.type.tensor_type.ClearField("shape")
        del model.graph.value_info[:]
        try:
            return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        except Exception:
            pass
    raise EdgetrainError(f"the model fails ONNX shape inference: {one_line(first)}") from first


def import_model(c: Compilation) -> None:
    """Pass: read and normalize the model; the IR of it becomes ``c.model``."""
    proto = normalize(read_model(c.options.source)[0], c.options.input_shapes)
    c.model = ir.serde.deserialize_model(proto)
    c.opset = c.model.opset_imports.get("", TARGET_OPSET)
    c.namer = Namer(value_names(c.main))
    taken = c.namer.taken
    c.names.label = _pick(["y", "label", "target"], taken)
    c.names.lr = _pick(["lr", "learning_rate"], taken)
    c.names.loss = _pick(["loss", "training_loss"], taken)
    c.names.step = _pick(["edgetrain.step"], taken)


def _pick(preferred: list[str], taken: set[str]) -> str:
    """The first of ``preferred`` no model value uses (else a numbered variant); reserved."""
    for name in preferred:
        if name not in taken:
            taken.add(name)
            return name
    base, i = preferred[0], 1
    while f"{base}_{i}" in taken:
        i += 1
    taken.add(f"{base}_{i}")
    return f"{base}_{i}"
