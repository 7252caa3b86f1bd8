"""Which parameters train: every float weight by default, names and glob patterns, or a
selector — ``last(n)``, ``bias_only()`` (TinyTL), ``head()`` — passed as ``compile(trainable=…)``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence

import onnx

from ._graph import is_float
from .errors import EdgetrainError


def candidate_parameters(graph: onnx.GraphProto) -> list[str]:
    """Float initializers that look like weights: not rank-0 scalars (epsilons, constants).

    Exporters store scalar constants such as a layer norm's epsilon as initializers; training
    those would silently change the model's math, so they are never parameters by default.
    """
    used = {i for n in graph.node for i in n.input}
    stats = running_statistics(graph)
    return [t.name for t in graph.initializer
            if is_float(t.data_type) and len(t.dims) > 0 and t.name in used
            and t.name not in stats]


def running_statistics(graph: onnx.GraphProto) -> set[str]:
    """Batch-norm running means and variances: state, never trained by gradient descent."""
    return {n.input[i] for n in graph.node if n.op_type == "BatchNormalization"
            for i in (3, 4) if i < len(n.input) and n.input[i]}


def resolve(trainable: str | Iterable[str] | Selector | None, graph: onnx.GraphProto
            ) -> list[str]:
    """Names of the trainable initializers, in the graph's initializer order."""
    cands = candidate_parameters(graph)
    if trainable is None:
        return cands
    if isinstance(trainable, Selector):
        return _in_order(graph, _checked(trainable, graph))
    items = [trainable] if isinstance(trainable, str) else list(trainable)
    picked: set[str] = set()
    for sel in [t for t in items if isinstance(t, Selector)]:
        picked.update(_checked(sel, graph))
    patterns: Sequence[str] = [t for t in items if not isinstance(t, Selector)]
    if not patterns:
        return _in_order(graph, picked)
    all_floats = {t.name for t in graph.initializer if is_float(t.data_type)}
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


def _in_order(graph: onnx.GraphProto, names: Iterable[str]) -> list[str]:
    chosen = set(names)
    return [t.name for t in graph.initializer if t.name in chosen]


def _checked(sel: Selector, graph: onnx.GraphProto) -> list[str]:
    names = sel(graph)
    if not names:
        raise EdgetrainError(f"trainable selector {sel!r} selects no parameter of this model")
    return names


# -- selectors ---------------------------------------------------------------------------------

class Selector:
    """Picks the trainable parameters from the model's graph (see ``last``, ``bias_only``,
    ``head``). Selectors and glob patterns may be mixed in a list; the union trains."""

    def __init__(self, name: str, pick: Callable[[onnx.GraphProto], list[str]]) -> None:
        self.name = name
        self._pick = pick

    def __call__(self, graph: onnx.GraphProto) -> list[str]:
        return self._pick(graph)

    def __repr__(self) -> str:
        return f"edgetrain.select.{self.name}"


def layers(graph: onnx.GraphProto) -> list[list[str]]:
    """Parameters grouped by layer, in topological order.

    A layer starts at each node that reads a weight of rank ≥ 2 (Conv, Gemm, MatMul, …);
    rank-1 parameters of the nodes that follow (a bias Add, a batch norm's scale and bias, a
    PRelu slope) belong to the layer before them, as a framework's layer would hold them.
    """
    cands = set(candidate_parameters(graph))
    ranks = {t.name: len(t.dims) for t in graph.initializer}
    groups: list[list[str]] = []
    seen: set[str] = set()
    for node in graph.node:
        params = [i for i in node.input if i in cands and i not in seen]
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

    def pick(graph: onnx.GraphProto) -> list[str]:
        return [p for group in layers(graph)[-n:] for p in group]

    return Selector(f"last({n})", pick)


_BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "BatchNormalization": 2,
               "InstanceNormalization": 2, "LayerNormalization": 2, "GroupNormalization": 2}


def bias_only() -> Selector:
    """Only the biases (TinyTL): Conv/Gemm biases, normalization shifts, bias Adds.

    Updating biases needs no stored activations of the layers' inputs, which is what makes
    this the memory-cheapest way to adapt every layer of a network.
    """

    def pick(graph: onnx.GraphProto) -> list[str]:
        cands = set(candidate_parameters(graph))
        ranks = {t.name: len(t.dims) for t in graph.initializer}
        out: list[str] = []
        for node in graph.node:
            i = _BIAS_INPUT.get(node.op_type)
            if i is not None and i < len(node.input) and node.input[i] in cands:
                out.append(node.input[i])
            elif node.op_type == "Add":
                out.extend(x for x in node.input if x in cands and ranks[x] == 1)
        return out

    return Selector("bias_only()", pick)


_POOLING = {"GlobalAveragePool", "GlobalMaxPool", "Flatten", "GlobalLpPool"}


def feature_point(graph: onnx.GraphProto) -> str | None:
    """The input of the classifier head: the output of the last global pooling or flatten."""
    point = None
    for node in graph.node:
        if node.op_type in _POOLING:
            point = node.output[0]
    return point


def head() -> Selector:
    """The parameters after the backbone: every parameter that the output of the last global
    pooling (or flatten) reaches. Without such a node, the last layer."""

    def pick(graph: onnx.GraphProto) -> list[str]:
        point = feature_point(graph)
        if point is None:
            return last(1)(graph)
        cands = set(candidate_parameters(graph))
        reached = {point}
        out: list[str] = []
        for node in graph.node:
            if any(i in reached for i in node.input):
                reached.update(o for o in node.output if o)
                out.extend(i for i in node.input if i in cands and i not in out)
        return out

    return Selector("head()", pick)


def lora(rank: int = 8, alpha: float = 16.0, targets: Sequence[str] | str = ("*query*", "*value*"),
         also: Sequence[str] | str = (), seed: int = 0) -> Selector:
    """LoRA adapters: each MatMul/Gemm weight W whose name (or its node's name) matches a
    ``targets`` glob is adapted to W + (alpha/rank)·A·B with new trainable A [in, rank] and
    B [rank, out] (B = 0 at first); everything else is frozen, except parameters named by the
    globs in ``also`` (e.g. a new classifier head). Must be the whole ``trainable=`` argument.
    See ``edgetrain._lora``.
    """
    from ._lora import LoRA

    return LoRA(rank, alpha, targets, also, seed)
