"""Screening of client replies before the server aggregates them.

A federated server cannot trust what a device sends back: a broken or hostile client may
return NaN, infinities, absurdly large values, arrays of the wrong shape or dtype, unknown
names, or claim a huge number of examples to take over a weighted mean. Flower's strategies
aggregate whatever arrives (and some raise on an inconsistent reply, which ends the run), so
every reply is checked here first, and a reply that fails is dropped with a logged reason.
What passes is rewritten into one canonical form (one ``ArrayRecord`` with exactly the
trainable names in the file's order and dtypes, one ``MetricRecord`` of finite scalars), so
no later stage sees anything but well-formed updates.

Per reply: content (not an error), exactly one array record and one metric record, the names,
shapes and dtypes of the trainable parameters (read from the ``.npy`` header before any
bytes are decoded, so a lying header cannot make the server allocate), finite values, a
``num-examples`` between 1 and ``max_examples``, finite metrics and, when set, an update norm
``‖w_client − w_global‖₂`` of at most ``max_update_norm`` (and, under client-side DP, of at
most the clipping norm every client must have clipped to). Across a round (three replies or
more, an honest majority assumed): an update norm above ``outlier_factor`` times the round's
median is dropped, and a claimed example count above ``outlier_factor`` times the median
claim is weighted as that bound.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Accepted",
    "Rejected",
    "ReplyRules",
    "aggregate_is_sane",
    "screen_evaluate",
    "screen_train",
]

log = logging.getLogger("edgetrain.federated")

WEIGHT_KEY = "num-examples"
CLIP_SLACK = 1e-4   # float32 rounding of a clipped update
ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"


class Rejected(Exception):
    """A reply failed a check; the message is the reason that is logged."""


@dataclass(frozen=True)
class ReplyRules:
    """What a reply must satisfy. ``spec`` maps each trainable name to (shape, dtype)."""

    spec: Mapping[str, tuple[tuple[int, ...], np.dtype]]
    max_examples: int = 10_000_000
    max_update_norm: float = 0.0      # 0 = no absolute bound
    outlier_factor: float = 10.0      # 0 = no bounds relative to the round's median
    equal_weights: bool = False       # every accepted update counts once (DP)
    clip_norm: float = 0.0            # client-side DP: the norm every update was clipped to

    @classmethod
    def for_parameters(cls, params: Mapping[str, np.ndarray], **kw: Any) -> ReplyRules:
        return cls(spec={k: (tuple(int(d) for d in np.shape(v)), np.asarray(v).dtype)
                         for k, v in params.items()}, **kw)


@dataclass
class Accepted:
    """One reply that passed the per-reply checks."""

    message: Any
    node: int
    arrays: dict[str, np.ndarray]
    examples: int
    metrics: dict[str, float]
    norm: float = 0.0
    weight: float = field(default=0.0)


# -- one reply --------------------------------------------------------------------------------

def decode_array(name: str, arr: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The values of a Flower ``Array`` that must hold ``shape`` and ``dtype``.

    The ``.npy`` header is read and checked before the data: ``np.load`` allocates what the
    header declares, so a tiny message claiming a huge shape would otherwise cost memory.
    """
    if getattr(arr, "stype", None) != "numpy.ndarray":
        raise Rejected(f"array {name!r} is not a serialized numpy array")
    data = arr.data if isinstance(arr.data, bytes) else bytes(arr.data)
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy version {version}")
        got_shape, fortran, got_dtype = read_header(fp)
    except Exception as e:  # any malformed header is a refusal
        raise Rejected(f"array {name!r} cannot be read: {e}") from None
    if tuple(got_shape) != tuple(shape):
        raise Rejected(f"array {name!r} has shape {list(got_shape)}, expected {list(shape)}")
    if np.dtype(got_dtype) != dtype:
        raise Rejected(f"array {name!r} has dtype {np.dtype(got_dtype)}, expected {dtype}")
    count = int(np.prod(shape, dtype=np.int64))
    body = data[fp.tell():]
    if len(body) != count * dtype.itemsize:
        raise Rejected(f"array {name!r} holds {len(body)} bytes, expected "
                       f"{count * dtype.itemsize}")
    values = np.frombuffer(body, dtype=dtype, count=count)
    return values.reshape(shape, order="F" if fortran else "C")


def _scalar_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric scalars of a metric record; a non-finite one refuses the reply."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue  # lists and other values are not carried into the aggregate
        if not math.isfinite(float(v)):
            raise Rejected(f"metric {k!r} is {v}")
        out[str(k)] = v
    return out


def _examples(metrics: Mapping[str, Any], limit: int) -> int:
    n = metrics.get(WEIGHT_KEY)
    if n is None:
        raise Rejected(f"no {WEIGHT_KEY!r} metric")
    if not float(n).is_integer() or not 1 <= n <= limit:
        raise Rejected(f"claims {n} examples; a reply must claim an integer between 1 and "
                       f"{limit} (max_examples)")
    return int(n)


def _content(msg: Any, want_arrays: bool) -> Any:
    if msg.has_error():
        reason = str(getattr(msg.error, "reason", "")).strip().splitlines()
        raise Rejected(f"the client failed: {reason[0] if reason else 'no reason given'}")
    content = msg.content
    if want_arrays and len(content.array_records) != 1:
        raise Rejected(f"{len(content.array_records)} array records, expected 1")
    if len(content.metric_records) != 1:
        raise Rejected(f"{len(content.metric_records)} metric records, expected 1")
    return content


def check_train_reply(msg: Any, rules: ReplyRules,
                      current: Mapping[str, np.ndarray]) -> Accepted:
    """Every per-reply check of a training reply; raises :class:`Rejected` with the reason."""
    content = _content(msg, want_arrays=True)
    record = next(iter(content.array_records.values()))
    names = set(record.keys())
    missing, extra = sorted(set(rules.spec) - names), sorted(names - set(rules.spec))
    if missing or extra:
        raise Rejected(f"parameter names differ from the model's: missing {missing[:5]}, "
                       f"unknown {extra[:5]}")
    arrays = {k: decode_array(k, record[k], *rules.spec[k]) for k in rules.spec}
    for k, v in arrays.items():
        if v.dtype.kind in "fc" and not np.isfinite(v).all():
            bad = v[~np.isfinite(v)].ravel()[0]
            raise Rejected(f"array {k!r} holds non-finite values ({bad})")
    metrics = _scalar_metrics(next(iter(content.metric_records.values())))
    examples = _examples(metrics, rules.max_examples)
    sq = 0.0
    for k, v in arrays.items():
        d = v.astype(np.float64) - np.asarray(current[k], dtype=np.float64)
        sq += float(np.dot(d.ravel(), d.ravel()))
    norm = math.sqrt(sq)
    if not math.isfinite(norm):
        raise Rejected("the update norm is not finite")
    if rules.max_update_norm and norm > rules.max_update_norm:
        raise Rejected(f"update norm {norm:.4g} exceeds max_update_norm "
                       f"{rules.max_update_norm:g}")
    if rules.clip_norm and norm > rules.clip_norm * (1 + CLIP_SLACK):
        raise Rejected(f"update norm {norm:.4g} exceeds the DP clipping norm "
                       f"{rules.clip_norm:g}: the client did not clip it")
    return Accepted(message=msg, node=_node(msg), arrays=arrays, examples=examples,
                    metrics=metrics, norm=norm, weight=float(examples))


def _node(msg: Any) -> int:
    try:
        return int(msg.metadata.src_node_id)
    except Exception:  # a reply without usable metadata is still dropped, as node -1
        return -1


# -- a round ----------------------------------------------------------------------------------

def _drop(server_round: int, what: str, node: int, reason: str) -> None:
    log.warning("round %d: dropped the %s reply of node %d: %s", server_round, what, node,
                reason)


def _outliers(server_round: int, accepted: list[Accepted], rules: ReplyRules,
              ) -> list[Accepted]:
    """Bounds relative to the round: they need three replies and an honest majority, since
    the median of the round is their reference."""
    if not rules.outlier_factor or len(accepted) < 3:
        return accepted
    f = rules.outlier_factor
    median_norm = float(np.median([a.norm for a in accepted]))
    kept = []
    for a in accepted:
        if median_norm > 0 and a.norm > f * median_norm:
            _drop(server_round, "train", a.node, f"update norm {a.norm:.4g} is more than "
                  f"{f:g} times the round's median {median_norm:.4g} (outlier_factor)")
        else:
            kept.append(a)
    if len(kept) >= 3:
        cap = f * float(np.median([a.examples for a in kept]))
        for a in kept:
            if a.examples > cap:
                log.warning("round %d: node %d claims %d examples, more than %g times the "
                            "round's median; it is weighted as %d", server_round, a.node,
                            a.examples, f, int(cap))
                a.weight = float(int(cap))
    return kept


def screen_train(server_round: int, replies: Iterable[Any], rules: ReplyRules,
                 current: Mapping[str, np.ndarray]) -> tuple[list[Accepted], int, int]:
    """The replies fit to aggregate, rewritten in canonical form; plus the numbers of failed
    clients (error replies) and of dropped replies."""
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    accepted: list[Accepted] = []
    failed = dropped = 0
    for msg in replies:
        try:
            accepted.append(check_train_reply(msg, rules, current))
        except Rejected as e:
            failed += bool(msg.has_error())
            dropped += not msg.has_error()
            _drop(server_round, "train", _node(msg), str(e))
    kept = _outliers(server_round, accepted, rules)
    dropped += len(accepted) - len(kept)
    common = _common_keys(a.metrics for a in kept)
    for a in kept:
        if rules.equal_weights:
            a.weight = 1.0
        metrics: dict[str, Any] = {k: a.metrics[k] for k in common if k != WEIGHT_KEY}
        metrics[WEIGHT_KEY] = a.weight
        a.message.content = RecordDict({
            ARRAYS_KEY: ArrayRecord({k: Array(np.ascontiguousarray(a.arrays[k]))
                                     for k in rules.spec}),
            METRICS_KEY: MetricRecord(metrics)})
    return kept, failed, dropped


def screen_evaluate(server_round: int, replies: Iterable[Any], rules: ReplyRules,
                    ) -> list[Any]:
    """Evaluation replies with one metric record of finite scalars and a sane example count,
    reduced to the keys all of them share (Flower refuses replies whose keys differ)."""
    from flwr.app import MetricRecord, RecordDict

    good: list[tuple[Any, dict[str, float]]] = []
    for msg in replies:
        try:
            content = _content(msg, want_arrays=False)
            metrics = _scalar_metrics(next(iter(content.metric_records.values())))
            _examples(metrics, rules.max_examples)
            good.append((msg, metrics))
        except Rejected as e:
            if not msg.has_error():
                _drop(server_round, "evaluate", _node(msg), str(e))
    common = _common_keys(m for _, m in good)
    for msg, metrics in good:
        msg.content = RecordDict({METRICS_KEY: MetricRecord({k: metrics[k] for k in common})})
    return [msg for msg, _ in good]


def _common_keys(records: Iterable[Mapping[str, Any]]) -> list[str]:
    keys: list[str] | None = None
    for r in records:
        keys = list(r) if keys is None else [k for k in keys if k in r]
    return keys or []


def aggregate_is_sane(server_round: int, arrays: Any, rules: ReplyRules) -> bool:
    """The aggregate has the model's names and shapes and finite values; otherwise the round
    keeps the previous global model (a last line of defence, e.g. for a server optimizer)."""
    if arrays is None:
        return False
    try:
        got = {k: v.numpy() if hasattr(v, "numpy") else np.asarray(v)
               for k, v in arrays.items()}
    except Exception as e:  # whatever the strategy returned
        log.error("round %d: the aggregate cannot be read (%s); the global model is kept",
                  server_round, e)
        return False
    if set(got) != set(rules.spec):
        log.error("round %d: the aggregate has other names than the model; the global model "
                  "is kept", server_round)
        return False
    for k, v in got.items():
        if tuple(v.shape) != rules.spec[k][0] or not np.isfinite(v).all():
            log.error("round %d: the aggregate of %r is not finite or has shape %s; the "
                      "global model is kept", server_round, k, list(v.shape))
            return False
    return True
