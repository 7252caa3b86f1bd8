"""Which parameters train: every float weight by default, names and glob patterns, or a
selector — ``last(n)``, ``bias_only()`` (TinyTL), ``head()`` — passed as ``compile(trainable=…)``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import onnx
import onnx_ir as ir

from ._ir import all_nodes, is_float
from .errors import EdgetrainError

if TYPE_CHECKING:
    from ._lora import LoRA


def _float_initializers(graph: ir.Graph) -> dict[str, ir.Value]:
    return {k: v for k, v in graph.initializers.items() if is_float(v.dtype)}


def candidate_parameters(graph: ir.Graph) -> list[str]:
    """Float initializers that look like weights: not rank-0 scalars (epsilons, constants).

    Exporters store scalar constants such as a layer norm's epsilon as initializers; training
    those would silently change the model's math, so they are never parameters by default.
    """
    stats = running_statistics(graph)
    return [k for k, v in _float_initializers(graph).items()
            if v.shape is not None and len(v.shape) > 0 and v.uses() and k not in stats]


def running_statistics(graph: ir.Graph) -> set[str]:
    """Batch-norm running means and variances: state, never trained by gradient descent."""
    out: set[str] = set()
    for n in all_nodes(graph):
        if n.op_type == "BatchNormalization":
            out.update(v.name for v in n.inputs[3:5] if v is not None and v.name)
    return out


def resolve(trainable: str | Iterable[str] | Selector | None, graph: ir.Graph) -> list[str]:
    """Names of the trainable initializers, in the graph's initializer order."""
    cands = candidate_parameters(graph)
    if trainable is None:
        return cands
    if isinstance(trainable, Selector):
        return _in_order(graph, _checked(trainable, graph))
    items = [trainable] if isinstance(trainable, str) else list(trainable)
    for item in items:
        if type(item).__name__ == "LoRA":
            raise EdgetrainError("select.lora(...) rewrites the graph, so it must be the whole "
                                 "trainable= argument; name other parameters to train with "
                                 "lora(..., also=[...])")
        if not isinstance(item, (str, Selector)):
            raise EdgetrainError(f"trainable entries must be names, glob patterns or "
                                 f"selectors, got {type(item).__name__}")
    picked: set[str] = set()
    for sel in [t for t in items if isinstance(t, Selector)]:
        picked.update(_checked(sel, graph))
    patterns: Sequence[str] = [t for t in items if not isinstance(t, Selector)]
    if not patterns:
        return _in_order(graph, picked)
    all_floats = set(_float_initializers(graph))
    chosen: set[str] = set()
    for pat in patterns:
        hits = [n for n in cands if fnmatch.fnmatchcase(n, pat)]
        if pat in all_floats:
            hits.append(pat)
        if not hits:
            raise EdgetrainError(
                f"trainable pattern {pat!r} matches no float initializer; parameters are: "
                f"{', '.join(cands[:20])}{' …' if len(cands) > 20 else ''}")
        chosen.update(hits)
    return _in_order(graph, chosen | picked)


def _in_order(graph: ir.Graph, names: Iterable[str]) -> list[str]:
    chosen = set(names)
    return [k for k in graph.initializers if k in chosen]


def _checked(sel: Selector, graph: ir.Graph) -> list[str]:
    names = sel(graph)
    if not names:
        raise EdgetrainError(f"trainable selector {sel!r} selects no parameter of this model")
    return names


# -- selectors ---------------------------------------------------------------------------------

class Selector:
    """Picks the trainable parameters from the model's graph (see ``last``, ``bias_only``,
    ``head``). Selectors and glob patterns may be mixed in a list; the union trains."""

    def __init__(self, name: str, pick: Callable[[ir.Graph], list[str]]) -> None:
        self.name = name
        self._pick = pick

    def __call__(self, graph: ir.Graph | onnx.GraphProto | onnx.ModelProto) -> list[str]:
        """The names this selector picks in ``graph`` (an IR graph, or an ONNX graph or model
        that has been shape-inferred)."""
        if isinstance(graph, onnx.ModelProto):
            graph = graph.graph
        if isinstance(graph, onnx.GraphProto):
            graph = ir.serde.deserialize_graph(graph)
        return self._pick(graph)

    def __repr__(self) -> str:
        return f"edgetrain.select.{self.name}"


def layers(graph: ir.Graph) -> list[list[str]]:
    """Parameters grouped by layer, in topological order.

    A layer starts at each node that reads a weight of rank ≥ 2 (Conv, Gemm, MatMul, …);
    rank-1 parameters of the nodes that follow (a bias Add, a batch norm's scale and bias, a
    PRelu slope) belong to the layer before them, as a framework's layer would hold them.
    """
    cands = set(candidate_parameters(graph))
    ranks = _ranks(graph)
    groups: list[list[str]] = []
    seen: set[str] = set()
    for node in graph:
        params = [v.name for v in node.inputs
                  if v is not None and v.name in cands and v.name not in seen]
        if not params:
            continue
        seen.update(params)
        if any(ranks[p] >= 2 for p in params) or not groups:
            groups.append(params)
        else:
            groups[-1].extend(params)
    return groups


def last(n: int) -> Selector:
    """The parameters of the last ``n`` layers (see :func:`layers`)."""
    if not isinstance(n, int) or n < 1:
        raise EdgetrainError(f"last(n) needs a positive layer count, got {n!r}")

    def pick(graph: ir.Graph) -> list[str]:
        return [p for group in layers(graph)[-n:] for p in group]

    return Selector(f"last({n})", pick)


_BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "BatchNormalization": 2,
               "InstanceNormalization": 2, "LayerNormalization": 2, "GroupNormalization": 2}


def bias_only() -> Selector:
    """Only the biases (TinyTL): Conv/Gemm biases, normalization shifts, bias Adds.

    Updating biases needs no stored activations of the layers' inputs, which is what makes
    this the memory-cheapest way to adapt every layer of a network.
    """

    def pick(graph: ir.Graph) -> list[str]:
        cands = set(candidate_parameters(graph))
        ranks = _ranks(graph)
        out: list[str] = []
        for node in graph:
            names = [v.name if v is not None else None for v in node.inputs]
            i = _BIAS_INPUT.get(node.op_type)
            if i is not None and i < len(names) and names[i] in cands:
                out.append(str(names[i]))
            elif node.op_type == "Add":
                out.extend(x for x in names if x in cands and ranks[x] == 1)
        return out

    return Selector("bias_only()", pick)


_POOLING = {"GlobalAveragePool", "GlobalMaxPool", "Flatten", "GlobalLpPool"}


def feature_point(graph: ir.Graph) -> ir.Value | None:
    """The input of the classifier head: the output of the last global pooling or flatten."""
    point = None
    for node in graph:
        if node.op_type in _POOLING:
            point = node.outputs[0]
    return point


def head() -> Selector:
    """The parameters after the backbone: every parameter that the output of the last global
    pooling (or flatten) reaches. Without such a node, the last layer."""

    def pick(graph: ir.Graph) -> list[str]:
        point = feature_point(graph)
        if point is None:
            return last(1)(graph)
        cands = set(candidate_parameters(graph))
        reached = {id(point)}
        out: list[str] = []
        for node in graph:
            if any(v is not None and id(v) in reached for v in node.inputs):
                reached.update(id(o) for o in node.outputs)
                out.extend(v.name for v in node.inputs
                           if v is not None and v.name in cands and v.name not in out)
        return out

    return Selector("head()", pick)


def lora(rank: int = 8, alpha: float = 16.0, targets: Sequence[str] | str = ("*query*", "*value*"),
         also: Sequence[str] | str = (), seed: int = 0) -> LoRA:
    """LoRA adapters: each MatMul/Gemm weight W whose name (or its node's name) matches a
    ``targets`` glob is adapted to W + (alpha/rank)·A·B with new trainable A [in, rank] and
    B [rank, out] (B = 0 at first); everything else is frozen, except parameters named by the
    globs in ``also`` (e.g. a new classifier head). Must be the whole ``trainable=`` argument.
    See ``edgetrain._lora``.
    """
    from ._lora import LoRA

    return LoRA(rank, alpha, targets, also, seed)


def _ranks(graph: ir.Graph) -> dict[str, int]:
    return {k: len(v.shape) if v.shape is not None else 0 for k, v in graph.initializers.items()}


__all__ = ["Selector", "bias_only", "candidate_parameters", "head", "last", "layers", "lora",
           "resolve", "running_statistics"]
