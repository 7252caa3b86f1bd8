"""What a web export may put in its manifest: plain names and numbers, nothing a page could run.

The manifest (``edgetrain-web.json``) carries names taken from the model file — signatures,
inputs, outputs, tensors, loss and optimizer — and the demo page shows some of them. A model
file is data from wherever it came from, so ``export-web`` checks every string it writes against
a strict pattern of its own (whatever ``edgetrain.load`` accepted): names are letters, digits and
``_ . / : ; @ + - [ ]``, at most 256 characters, so no markup, quote, backslash, space or control
character reaches the page; signature names also become file names and are stricter still.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from ..errors import FormatError
from ..format import Metadata

#: Tensor, input, output, dimension and hyper-parameter names.
NAME = re.compile(r"[A-Za-z0-9_./:;@+\[\]-]{1,256}")
#: Signature names, which also name the graph files (``train.onnx``).
SIGNATURE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: The few descriptive strings edgetrain writes itself (the producer, the data set's split).
TEXT = re.compile(r"[A-Za-z0-9 _.,:;/@+%()=\[\]-]{0,256}")
FREE_TEXT = frozenset({"manifest.producer", "manifest.dataset.split"})
MAX_DEPTH = 12
#: The fields of the model's metadata a manifest copies.
META_FIELDS = ("signatures", "trainable", "frozen", "step", "output", "label", "labels", "loss",
               "optimizer")
_RULES = "letters, digits and _ . / : ; @ + - [ ], 1 to 256 characters"


def _refuse(where: str, value: object, rule: str = _RULES) -> FormatError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return FormatError(f"refusing to export {where} = {shown}: a web export allows only "
                       f"{rule}")


def check_tree(value: Any, where: str = "manifest", depth: int = 0) -> None:
    """Refuse (FormatError naming the field) any string that is not a plain name.

    Also refuses non-finite numbers (not JSON), non-JSON types and absurd nesting.
    """
    if depth > MAX_DEPTH:
        raise _refuse(where, "...", f"at most {MAX_DEPTH} levels of nesting")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not NAME.fullmatch(key):
                raise _refuse(f"a key of {where}", key)
            check_tree(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_tree(item, f"{where}[{i}]", depth + 1)
    elif isinstance(value, str):
        if where in FREE_TEXT:
            if not TEXT.fullmatch(value):
                raise _refuse(where, value, "letters, digits, spaces and _ . , : ; / @ + % ( ) "
                              "= [ ] -, at most 256 characters")
        elif not NAME.fullmatch(value):
            raise _refuse(where, value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _refuse(where, value, "finite numbers")
    elif not (value is None or isinstance(value, (bool, int))):
        raise _refuse(where, type(value).__name__, "strings, numbers, lists and objects")


def check_meta(meta: Metadata) -> None:
    """Check the metadata fields a manifest copies, before anything is built or written."""
    for name in meta.signatures:
        if not SIGNATURE.fullmatch(name):
            raise _refuse("a signature name", name, "signature names of letters, digits and _, "
                          "1 to 64 characters, not starting with a digit")
    doc = meta.to_json()
    check_tree({k: doc[k] for k in META_FIELDS if k in doc})


def check_manifest(manifest: Mapping[str, Any]) -> None:
    """The whole manifest, as written: every string a plain name (or edgetrain's own text)."""
    for name in manifest.get("signatures", {}):
        if not SIGNATURE.fullmatch(name):
            raise _refuse("a signature name", name)
    check_tree(manifest)
