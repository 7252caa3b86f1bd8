"""The ``edgetrain`` metadata of a trainable file: read (validated), written, checked."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import onnx

from ..errors import FormatError
from ._constants import FORMAT_VERSION, META_KEY
from ._schema import parse_meta, validate_meta
from ._spec import Metadata
from ._validate import DEFAULT_DOMAINS, iter_nodes


def default_opset(model: onnx.ModelProto) -> int | None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return None


# -- metadata --------------------------------------------------------------------------------

def _raw_meta(model: onnx.ModelProto) -> dict[str, Any]:
    """The metadata JSON parsed strictly; a newer format version is refused first, with the
    version it needs."""
    raws = [p.value for p in model.metadata_props if p.key == META_KEY]
    if not raws:
        raise FormatError("not an edgetrain trainable file (no 'edgetrain' metadata); compile "
                          "it first with edgetrain.compile or `edgetrain compile`")
    if len(raws) > 1:  # two readers might pick different ones
        raise FormatError("the file holds the edgetrain metadata twice")
    meta = parse_meta(raws[0])
    version = meta.get("format_version")
    if isinstance(version, (int, float)) and not isinstance(version, bool) \
            and version > FORMAT_VERSION:
        raise FormatError(
            f"this file uses edgetrain format version {version}; this edgetrain reads "
            f"version {FORMAT_VERSION} and older — upgrade edgetrain to a release that "
            f"supports format version {version}")
    return meta


def read_meta(model: onnx.ModelProto) -> dict[str, Any]:
    """The file's edgetrain metadata as JSON values, validated in full (see
    :mod:`edgetrain.format._schema`), so no caller ever sees a malformed document."""
    return validate_meta(_raw_meta(model))


def read_metadata(model: onnx.ModelProto) -> Metadata:
    """The file's edgetrain metadata, validated in full, as :class:`Metadata` (a version-1
    file read as version 2 says it: roles and task derived)."""
    return Metadata.from_json(_raw_meta(model))


def write_meta(model: onnx.ModelProto, meta: Metadata | Mapping[str, Any]) -> None:
    doc = meta.to_json() if isinstance(meta, Metadata) else meta
    props = [p for p in model.metadata_props if p.key != META_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=META_KEY, value=json.dumps(doc, sort_keys=True))


def check(model: onnx.ModelProto) -> None:
    """Full ONNX check, and every graph at every depth uses the default domain only."""

    onnx.checker.check_model(model, full_check=True)
    for n, where in iter_nodes(model):
        if n.domain not in DEFAULT_DOMAINS:
            raise FormatError(f"node {n.name!r} in {where} uses non-standard domain "
                              f"{n.domain!r}")


# -- model files -----------------------------------------------------------------------------
