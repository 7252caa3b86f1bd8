"""The ``edgetrain`` metadata of a trainable file: read (validated), written, checked."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..errors import FormatError
from ._constants import FORMAT_VERSION, META_KEY
from ._schema import parse_meta, validate_meta
from ._validate import DEFAULT_DOMAINS, iter_nodes


def default_opset(model: onnx.ModelProto) -> int | None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return None


# -- metadata --------------------------------------------------------------------------------

def read_meta(model: onnx.ModelProto) -> dict[str, Any]:
    """The file's edgetrain metadata, parsed strictly and checked against its schema.

    A newer format version is refused first, with the version it needs; then everything
    else (see :mod:`edgetrain.format._schema`), so no caller ever sees a malformed document.
    """

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

    onnx.checker.check_model(model, full_check=True)
    for n, where in iter_nodes(model):
        if n.domain not in DEFAULT_DOMAINS:
            raise FormatError(f"node {n.name!r} in {where} uses non-standard domain "
                              f"{n.domain!r}")


# -- model files -----------------------------------------------------------------------------
