"""LoRA: low-rank adapters on the weights of MatMul/Gemm nodes (``select.lora``).

Each chosen weight W gets two new trainable initializers A [in, r] and B [r, out] and its
layer computes ``x·W + (α/r)·(x·A)·B`` — the adapter is a side branch added to the layer's
output, as in PEFT, rather than a dense ``W + (α/r)·A·B``, so the backward pass never forms a
gradient the size of W. B starts at zero, so the compiled model computes exactly the base
model's function until the first update. Everything else is frozen unless named in ``also``.

LoRA is a rewrite of the inference graph, not a selection: the compiler applies it before
choosing what trains. The rewrite is recorded in the metadata (``lora`` for people and
``edgetrain info``, ``lora_merge`` for the exporter), so that exporting can fold the adapters
back into plain weights, ``W ← W + (α/r)·A·B``, and drop the side branches: the deployed model
has the original graph and size (see ``edgetrain.format``).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from ._ir import Builder, is_float, np_dtype, redirect, static_dims
from .errors import EdgetrainError
from .format import LoraAdapter, LoraSite


@dataclass
class LoRAResult:
    """What the rewrite adds: trainable adapter names and the metadata's ``selection``,
    ``lora`` (for people and ``edgetrain info``) and ``lora_merge`` (for the exporter)."""

    trainable: list[str] = field(default_factory=list)
    selection: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    adapters: list[LoraAdapter] = field(default_factory=list)


class LoRA:
    """``select.lora(...)``: adapters on the MatMul/Gemm weights matching ``targets``."""

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

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def __repr__(self) -> str:
        also = f", also={self.also!r}" if self.also else ""
        return (f"edgetrain.select.lora(rank={self.rank}, alpha={self.alpha:g}, "
                f"targets={self.targets!r}{also})")

    def rewrite(self, graph: ir.Graph, op: Builder) -> LoRAResult:
        """Add the adapters to ``graph`` (in place, through ``op``)."""
        chosen = self._chosen(graph)
        rng = np.random.default_rng(self.seed)
        result = LoRAResult()
        adapters: list[LoraAdapter] = []
        n_params = n_bytes = 0
        for w, uses in chosen.items():
            a, b, transposed = self._adapter(graph, op, w, uses, rng)
            result.trainable += [str(a.name), str(b.name)]
            for v in (a, b):
                arr = v.const_value.numpy() if v.const_value is not None else np.zeros(0)
                n_params += arr.size
                n_bytes += arr.nbytes
            sites = [_branch(op.at(after=node), node, a, b, self.scale) for node in uses]
            adapters.append(LoraAdapter(weight=str(w.name), A=str(a.name), B=str(b.name),
                                        scale=self.scale, transposed=bool(transposed),
                                        sites=tuple(sites)))
        result.selection = repr(self)
        result.config = {"rank": self.rank, "alpha": self.alpha, "targets": tuple(self.targets),
                         "adapted_weights": len(adapters), "adapter_parameters": int(n_params),
                         "adapter_bytes": int(n_bytes), "adapter_size": _human(n_bytes),
                         "also": tuple(self.also)}
        result.adapters = adapters
        return result

    def _chosen(self, graph: ir.Graph) -> dict[ir.Value, list[ir.Node]]:
        sites = _sites(graph)
        chosen: dict[ir.Value, list[ir.Node]] = {}
        for node, w in sites:
            names = (w.name, node.name, node.outputs[0].name)
            if any(n and fnmatch.fnmatchcase(n, pat) for pat in self.targets for n in names):
                chosen.setdefault(w, []).append(node)
        if not chosen:
            listed = sorted({f"{w.name} (node {n.name!r})" for n, w in sites})
            raise EdgetrainError(
                f"lora targets {self.targets} match no MatMul/Gemm weight (patterns match the "
                f"weight's or the node's name); adaptable weights are: "
                f"{', '.join(listed[:12])}{' …' if len(listed) > 12 else ''}")
        return chosen

    def _adapter(self, graph: ir.Graph, op: Builder, w: ir.Value, uses: list[ir.Node],
                 rng: np.random.Generator) -> tuple[ir.Value, ir.Value, bool]:
        trans = [n.op_type == "Gemm" and _attr(n, "transB", 0) for n in uses]
        if any(trans) and not all(trans):
            raise EdgetrainError(f"weight {w.name!r} is read both transposed and not; "
                                 "lora cannot adapt it")
        shape = static_dims(w)
        assert shape is not None and len(shape) == 2
        d_out, d_in = shape if trans[0] else shape[::-1]
        dtype = np_dtype(w.dtype or ir.DataType.FLOAT)
        bound = 1.0 / math.sqrt(d_in)  # PEFT: kaiming_uniform(a=√5) on A
        a = _initializer(graph, op, f"{w.name}.lora_A",
                         rng.uniform(-bound, bound, size=(d_in, self.rank)).astype(dtype))
        b = _initializer(graph, op, f"{w.name}.lora_B", np.zeros((self.rank, d_out), dtype))
        return a, b, bool(trans[0])


def _initializer(graph: ir.Graph, op: Builder, hint: str, arr: np.ndarray) -> ir.Value:
    name = op.namer.fresh(hint)
    v = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(ir.DataType.from_numpy(
        arr.dtype)), const_value=ir.tensor(arr, name=name))
    graph.register_initializer(v)
    return v


def _sites(graph: ir.Graph) -> list[tuple[ir.Node, ir.Value]]:
    """(node, weight) for every MatMul/Gemm whose right operand is a float matrix initializer."""
    out = []
    for n in graph:
        if n.op_type not in ("MatMul", "Gemm") or len(n.inputs) < 2:
            continue
        w = n.inputs[1]
        if w is not None and w.is_initializer() and is_float(w.dtype) \
                and w.shape is not None and len(w.shape) == 2:
            out.append((n, w))
    return out


def _branch(op: Builder, node: ir.Node, a: ir.Value, b: ir.Value, scale: float
            ) -> LoraSite:
    """y = y_base + s·(x·A)·B after one MatMul/Gemm node; returns the merge record."""
    y, x = node.outputs[0], node.inputs[0]
    assert x is not None
    readers = list(y.uses())
    start = len(op.nodes)
    s = scale * (float(_attr(node, "alpha", 1.0)) if node.op_type == "Gemm" else 1.0)
    if node.op_type == "Gemm" and _attr(node, "transA", 0):
        x = op.Transpose(x, perm=[1, 0])
    xab = op.MatMul(op.MatMul(x, a), b)
    delta = op.Mul(xab, op.const(np.array(s, dtype=np_dtype(y.dtype or ir.DataType.FLOAT))))
    out = op.Add(y, delta)
    out.shape = y.shape
    redirect(y, out, readers, suffix="/lora_base")
    return LoraSite(node=node.name or "", base=str(y.name), output=str(out.name),
                    nodes=tuple(str(n.name) for n in op.nodes[start:]))


def _attr(node: ir.Node, name: str, default: Any) -> Any:
    a = node.attributes.get(name)
    return default if a is None else a.value


def _human(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


__all__ = ["LoRA", "LoRAResult"]
