"""LoRA: low-rank adapters on the weights of MatMul/Gemm nodes (``select.lora``).

Each chosen weight W gets two new trainable initializers A [in, r] and B [r, out] and its
layer computes ``x·W + (α/r)·(x·A)·B`` — the adapter is a side branch added to the layer's
output, as in PEFT, rather than a dense ``W + (α/r)·A·B``, so the backward pass never forms a
gradient the size of W. B starts at zero, so the compiled model computes exactly the base
model's function until the first update. Everything else is frozen unless named in ``also``.

The rewrite is recorded in the metadata (``lora`` for people and ``edgetrain info``,
``lora_merge`` for the exporter), so that ``Model.export`` can fold the adapters back into
plain weights, ``W ← W + (α/r)·A·B``, and drop the side branches: the deployed model has the
original graph and size.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ._graph import graph_names, is_float, np_dtype, unique_name
from .errors import EdgetrainError
from .select import Selector


class LoRA(Selector):
    """A trainable-parameter choice that rewrites the graph first (see module docstring).

    ``compile(trainable=select.lora(...))`` calls :meth:`rewrite`, which returns the new model,
    the names to train (adapters and ``also``) and metadata entries.
    """

    def __init__(self, rank: int, alpha: float, targets: Sequence[str] | str,
                 also: Sequence[str] | str = (), seed: int = 0) -> None:
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise EdgetrainError(f"lora rank must be a positive integer, got {rank!r}")
        if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise EdgetrainError(f"lora alpha must be a positive number, got {alpha!r}")
        self.rank = rank
        self.alpha = float(alpha)
        self.targets = [targets] if isinstance(targets, str) else list(targets)
        self.also = [also] if isinstance(also, str) else list(also)
        self.seed = seed
        if not self.targets:
            raise EdgetrainError("lora needs at least one target pattern, e.g. ['*query*']")
        super().__init__(repr(self).removeprefix("edgetrain.select."), self._refuse)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def __repr__(self) -> str:
        also = f", also={self.also!r}" if self.also else ""
        return (f"edgetrain.select.lora(rank={self.rank}, alpha={self.alpha:g}, "
                f"targets={self.targets!r}{also})")

    def _refuse(self, graph: onnx.GraphProto) -> list[str]:
        raise EdgetrainError("select.lora(...) rewrites the graph, so it must be the whole "
                             "trainable= argument; name other parameters to train with "
                             "lora(..., also=[...])")

    # -- the rewrite ---------------------------------------------------------------------------
    def rewrite(self, model: onnx.ModelProto
                ) -> tuple[onnx.ModelProto, list[str], dict[str, Any]]:
        """Add the adapters; return (model, trainable names, metadata entries)."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        g = out.graph
        inits = {t.name: t for t in g.initializer}
        sites = _sites(g, inits)
        chosen: dict[str, list[tuple[int, onnx.NodeProto]]] = {}
        for pos, node, w in sites:
            names = (w, node.name, node.output[0])
            if any(fnmatch.fnmatchcase(n, pat) for pat in self.targets for n in names):
                chosen.setdefault(w, []).append((pos, node))
        if not chosen:
            listed = sorted({f"{w} (node {n.name!r})" for _, n, w in sites})
            raise EdgetrainError(
                f"lora targets {self.targets} match no MatMul/Gemm weight (patterns match the "
                f"weight's or the node's name); adaptable weights are: "
                f"{', '.join(listed[:12])}{' …' if len(listed) > 12 else ''}")

        taken = graph_names(g)
        vinfo = {v.name: v for v in list(g.input) + list(g.value_info) + list(g.output)}
        rng = np.random.default_rng(self.seed)
        inserts: dict[int, list[onnx.NodeProto]] = {}
        new_vis: list[onnx.ValueInfoProto] = []
        adapters: list[dict[str, Any]] = []
        trainable: list[str] = []
        n_params = n_bytes = 0
        for w, uses in chosen.items():
            t = inits[w]
            dtype = np_dtype(t.data_type)
            transposed = any(n.op_type == "Gemm" and _attr(n, "transB", 0) for _, n in uses)
            if transposed and not all(n.op_type == "Gemm" and _attr(n, "transB", 0)
                                      for _, n in uses):
                raise EdgetrainError(f"weight {w!r} is read both transposed and not; "
                                     "lora cannot adapt it")
            d_out, d_in = (t.dims if transposed else t.dims[::-1])
            a_name, b_name = unique_name(f"{w}.lora_A", taken), unique_name(f"{w}.lora_B", taken)
            bound = 1.0 / math.sqrt(d_in)  # PEFT: kaiming_uniform(a=√5) on A
            a = rng.uniform(-bound, bound, size=(d_in, self.rank)).astype(dtype)
            b = np.zeros((self.rank, d_out), dtype=dtype)
            g.initializer.extend([numpy_helper.from_array(a, a_name),
                                  numpy_helper.from_array(b, b_name)])
            trainable += [a_name, b_name]
            n_params += a.size + b.size
            n_bytes += a.nbytes + b.nbytes
            entry: dict[str, Any] = {"weight": w, "A": a_name, "B": b_name,
                                     "scale": self.scale, "transposed": bool(transposed),
                                     "sites": []}
            for pos, node in uses:
                nodes, vis, site = _branch(node, a_name, b_name, self.rank, self.scale,
                                           t.data_type, taken, vinfo)
                inserts.setdefault(pos, []).extend(nodes)
                new_vis.extend(vis)
                entry["sites"].append(site)
            adapters.append(entry)

        ordered: list[onnx.NodeProto] = []
        for pos, node in enumerate(g.node):
            ordered.append(node)
            ordered.extend(inserts.get(pos, []))
        del g.node[:]
        g.node.extend(ordered)
        g.value_info.extend(new_vis)

        if self.also:
            from .select import resolve

            extra = resolve(self.also, g)
            trainable += [n for n in extra if n not in trainable]
        meta = {
            "selection": repr(self),
            "lora": {"rank": self.rank, "alpha": self.alpha, "targets": self.targets,
                     "adapted_weights": len(adapters), "adapter_parameters": int(n_params),
                     "adapter_bytes": int(n_bytes), "adapter_size": _human(n_bytes),
                     "also": self.also},
            "lora_merge": adapters,
        }
        return out, trainable, meta


def _sites(g: onnx.GraphProto, inits: Mapping[str, onnx.TensorProto]
           ) -> list[tuple[int, onnx.NodeProto, str]]:
    """(position, node, weight) for every MatMul/Gemm whose right operand is a float matrix."""
    out = []
    for pos, n in enumerate(g.node):
        if n.op_type not in ("MatMul", "Gemm") or len(n.input) < 2:
            continue
        w = inits.get(n.input[1])
        if w is not None and is_float(w.data_type) and len(w.dims) == 2:
            out.append((pos, n, w.name))
    return out


def _branch(node: onnx.NodeProto, a: str, b: str, rank: int, scale: float, elem: int,
            taken: set[str], vinfo: Mapping[str, onnx.ValueInfoProto]
            ) -> tuple[list[onnx.NodeProto], list[onnx.ValueInfoProto], dict[str, Any]]:
    """The side branch y = y_base + s·(x·A)·B for one MatMul/Gemm node (edited in place)."""
    y = node.output[0]
    x = node.input[0]
    base = unique_name(f"{y}/lora_base", taken)
    node.output[0] = base
    tag = unique_name(f"{node.name or y}/lora", taken)

    def v(hint: str) -> str:
        return unique_name(f"{tag}/{hint}", taken)

    s = scale * (float(_attr(node, "alpha", 1.0)) if node.op_type == "Gemm" else 1.0)
    nodes: list[onnx.NodeProto] = []
    if node.op_type == "Gemm" and _attr(node, "transA", 0):
        xt = v("xT")
        nodes.append(helper.make_node("Transpose", [x], [xt], name=v("Transpose"), perm=[1, 0]))
        x = xt
    xa, xab, sc, d = v("xA"), v("xAB"), v("scale"), v("delta")
    nodes += [
        helper.make_node("MatMul", [x, a], [xa], name=v("MatMul_A")),
        helper.make_node("MatMul", [xa, b], [xab], name=v("MatMul_B")),
        helper.make_node("Constant", [], [sc], name=v("Constant"),
                         value=numpy_helper.from_array(np.array(s, dtype=np_dtype(elem)))),
        helper.make_node("Mul", [xab, sc], [d], name=v("Mul")),
        helper.make_node("Add", [base, d], [y], name=v("Add")),
    ]
    vis: list[onnx.ValueInfoProto] = []
    if y in vinfo:  # shapes for the autodiff's static facts (y_base, x·A·B and s·x·A·B = y's)
        for name in (base, xab, d):
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(vinfo[y])
            vi.name = name
            vis.append(vi)
    xin = node.input[0]
    if xin in vinfo and vinfo[xin].type.tensor_type.HasField("shape"):
        dims = [(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
                for d in vinfo[xin].type.tensor_type.shape.dim]
        if x != xin:
            dims = dims[::-1]
            vis.append(helper.make_tensor_value_info(x, elem, dims))
        vis.append(helper.make_tensor_value_info(xa, elem, dims[:-1] + [rank]))
    site = {"node": node.name, "base": base, "output": y,
            "nodes": [n.name for n in nodes]}
    return nodes, vis, site


def merge(model: onnx.ModelProto, adapters: Iterable[Mapping[str, Any]]) -> None:
    """Fold the adapters into their weights and remove the side branches (in place).

    ``model``'s initializers must hold the current values of the weights and adapters.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    drop: set[str] = set()
    rename: dict[str, str] = {}
    for ad in adapters:
        w = numpy_helper.to_array(inits[ad["weight"]])
        a = numpy_helper.to_array(inits[ad["A"]]).astype(np.float64)
        b = numpy_helper.to_array(inits[ad["B"]]).astype(np.float64)
        delta = float(ad["scale"]) * (a @ b)
        merged = (w.astype(np.float64) + (delta.T if ad["transposed"] else delta)).astype(w.dtype)
        inits[ad["weight"]].CopyFrom(numpy_helper.from_array(merged, ad["weight"]))
        for site in ad["sites"]:
            drop.update(site["nodes"])
            rename[site["base"]] = site["output"]
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


# -- small helpers -----------------------------------------------------------------------------

def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _human(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"




__all__ = ["LoRA", "merge"]
