"""Hostile federated clients for the security tests: a real Flower ``ClientApp`` that trains
honestly through edgetrain's own ClientApp, then tampers with its reply on one partition.

Kept in a module of its own so that Flower's Ray engine can ship it to its workers by value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Attack = Callable[[dict[str, np.ndarray], Any], None]


def _arrays(content: Any) -> Any:
    return content.array_records[next(iter(content.array_records))]


def _metrics(content: Any) -> Any:
    return content.metric_records[next(iter(content.metric_records))]


def _replace(content: Any, values: dict[str, np.ndarray]) -> None:
    from flwr.app import Array

    record = _arrays(content)
    for k, v in values.items():
        record[k] = Array(np.asarray(v))


def _first(content: Any) -> str:
    return next(iter(_arrays(content).keys()))


def nan(sent: dict[str, np.ndarray], content: Any) -> None:
    k = _first(content)
    v = _arrays(content)[k].numpy().copy()
    v.flat[0] = np.nan
    _replace(content, {k: v})


def inf(sent: dict[str, np.ndarray], content: Any) -> None:
    _replace(content, {k: np.full_like(v.numpy(), np.inf)
                       for k, v in _arrays(content).items()})


def scaled(sent: dict[str, np.ndarray], content: Any) -> None:
    """Every returned value times 1e30: finite in float32, and a wrecked mean."""
    _replace(content, {k: v.numpy() * np.float32(1e30) for k, v in _arrays(content).items()})


def reversed_update(factor: float) -> Attack:
    """``w_global − factor·Δ``: the client's own update, turned around and enlarged; finite,
    right shapes, a norm ``factor`` times an honest one."""
    def attack(sent: dict[str, np.ndarray], content: Any) -> None:
        _replace(content, {k: (sent[k] - factor * (v.numpy() - sent[k])).astype(v.dtype)
                           for k, v in _arrays(content).items()})
    return attack


def many_examples(sent: dict[str, np.ndarray], content: Any) -> None:
    """Claims 10^12 examples to own the weighted mean, with a reversed update."""
    reversed_update(6.0)(sent, content)
    _metrics(content)["num-examples"] = 10**12


def wrong_shape(sent: dict[str, np.ndarray], content: Any) -> None:
    k = _first(content)
    v = _arrays(content)[k].numpy()
    _replace(content, {k: np.zeros((v.shape[0] + 1, *v.shape[1:]), dtype=v.dtype)})


def wrong_dtype(sent: dict[str, np.ndarray], content: Any) -> None:
    k = _first(content)
    _replace(content, {k: np.full(_arrays(content)[k].numpy().shape, "1e9", dtype="<U4")})


def lying_header(sent: dict[str, np.ndarray], content: Any) -> None:
    """A few bytes whose ``.npy`` header declares 10^9 rows: ``np.load`` would allocate
    hundreds of gigabytes before noticing the data is missing."""
    import io

    from flwr.app import Array

    k = _first(content)
    shape = _arrays(content)[k].numpy().shape
    fp = io.BytesIO()
    np.lib.format.write_array_header_1_0(fp, {"descr": "<f4", "fortran_order": False,
                                              "shape": (10**9, *shape[1:])})
    _arrays(content)[k] = Array(dtype="float32", shape=shape, stype="numpy.ndarray",
                                data=fp.getvalue() + b"\0" * 64)


def float64(sent: dict[str, np.ndarray], content: Any) -> None:
    _replace(content, {k: v.numpy().astype(np.float64) for k, v in _arrays(content).items()})


def unknown_name(sent: dict[str, np.ndarray], content: Any) -> None:
    _replace(content, {"fc9.weight": np.ones((4, 4), dtype=np.float32)})


def fails(sent: dict[str, np.ndarray], content: Any) -> None:
    raise RuntimeError("this device crashed mid-round")


def attacked_app(honest: Any, attack: Attack, bad_partition: int) -> Any:
    """A ClientApp that answers as ``honest`` does, except that the node with
    ``partition-id == bad_partition`` passes its training reply through ``attack``."""
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Any, context: Any) -> Any:
        sent = {k: v.numpy().copy() for k, v in _arrays(msg.content).items()}
        reply = honest(msg, context)
        if int(context.node_config["partition-id"]) == bad_partition:
            attack(sent, reply.content)
        return reply

    @app.evaluate()
    def evaluate(msg: Any, context: Any) -> Any:
        return honest(msg, context)

    return app


def secagg_wrong_shape_app(honest: Any, bad_partition: int) -> Any:
    """A SecAgg+ ClientApp (Flower's ``secaggplus_mod``) whose node ``bad_partition`` returns
    one array a row too long in its compat ``fitres`` record, before the mod masks it."""
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    app = ClientApp(mods=[secaggplus_mod])

    @app.train()
    def train(msg: Any, context: Any) -> Any:
        reply = honest(msg, context)
        if int(context.node_config["partition-id"]) == bad_partition:
            res = compat.recorddict_to_fitres(reply.content, keep_input=True)
            arrays = parameters_to_ndarrays(res.parameters)
            arrays[0] = np.zeros((arrays[0].shape[0] + 1, *arrays[0].shape[1:]),
                                 dtype=arrays[0].dtype)
            res.parameters = ndarrays_to_parameters(arrays)
            reply.content = compat.fitres_to_recorddict(res, keep_input=True)
        return reply

    @app.evaluate()
    def evaluate(msg: Any, context: Any) -> Any:
        return honest(msg, context)

    return app
