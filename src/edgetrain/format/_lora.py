"""Folding LoRA adapters back into their weights, for export (protobuf only: a device that
exports a personalized model needs no compiler).

The compiler records each adapter in the metadata's ``lora_merge``: the weight, A, B, the
scale, and for each adapted layer the side-branch nodes and the value they fed.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from ._spec import LoraAdapter


def merge_lora(model: onnx.ModelProto, adapters: Iterable[LoraAdapter]) -> None:
    """Fold the adapters into their weights and remove the side branches (in place).

    ``model``'s initializers must hold the current values of the weights and adapters.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    drop: set[str] = set()
    rename: dict[str, str] = {}
    for ad in adapters:
        w = numpy_helper.to_array(inits[ad.weight])
        a = numpy_helper.to_array(inits[ad.A]).astype(np.float64)
        b = numpy_helper.to_array(inits[ad.B]).astype(np.float64)
        delta = float(ad.scale) * (a @ b)
        merged = (w.astype(np.float64) + (delta.T if ad.transposed else delta)).astype(w.dtype)
        inits[ad.weight].CopyFrom(numpy_helper.from_array(merged, ad.weight))
        for site in ad.sites:
            drop.update(site.nodes)
            rename[site.base] = site.output
    keep = [n for n in g.node if n.name not in drop]
    for n in keep:
        for k, o in enumerate(n.output):
            if o in rename:
                n.output[k] = rename[o]
    del g.node[:]
    g.node.extend(keep)
    vis = [v for v in g.value_info if v.name not in rename]
    del g.value_info[:]
    g.value_info.extend(vis)


