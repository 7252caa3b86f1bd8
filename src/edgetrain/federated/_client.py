"""The device side: a Flower ``ClientApp`` whose client is an edgetrain trainable file.

get/set parameters are the file's *trainable* parameters (``Model.parameters()`` /
``Model.set_parameters()``), so a frozen backbone never travels and LoRA adapters travel
alone; fit runs local epochs through the ``train`` signature, evaluate runs ``eval``.

One handler serves both wire formats Flower uses: the Message API (``arrays`` + ``config``
records, what the ``flwr.serverapp.strategy`` strategies send) and the ``fitins``/``fitres``
records of Flower's compat workflows, which SecAgg+ still runs on.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import EdgetrainError, InputError
from ..training import Model
from ..training import load as et_load
from ._data import Dataset, load_partition

__all__ = ["ClientSettings", "LocalResult", "local_evaluate", "local_fit", "make_client_app"]

log = logging.getLogger("edgetrain.federated")

PARTITION_ID_KEY = "partition-id"


@dataclass(frozen=True)
class ClientSettings:
    """Where a client finds its trainable file and its local data.

    Either may be left ``None`` and given per node instead (``--node-config 'model="…"
    data="…"'`` on a SuperNode, which wins over these). ``data`` may hold ``{partition}``,
    replaced by the node's ``partition-id`` (the simulation engine sets it per virtual node).
    """

    model: str | None = None
    data: str | None = None
    backend: str = "onnxruntime"


@dataclass
class LocalResult:
    """What one local fit produced: the new trainable values and a few metrics."""

    parameters: dict[str, np.ndarray]
    num_examples: int
    loss: float
    steps: int
    seconds: float


# -- the local computation (no Flower here) ----------------------------------------------------

def local_fit(model: Model, data: Dataset, global_params: Mapping[str, np.ndarray], *,
              epochs: int = 1, batch_size: int = 32, seed: int = 0, lr: float | None = None,
              proximal_mu: float = 0.0) -> LocalResult:
    """Start from ``global_params`` and run ``epochs`` over ``data`` through ``train``.

    With ``proximal_mu > 0`` (FedProx) every step also takes the gradient of
    ``mu/2 * ||w - w_global||²`` at the pre-step weights: ``w ← w - lr·mu·(w_before - w_g)``.
    For plain SGD that is exactly a step on loss + proximal term; for stateful optimizers the
    proximal part is applied decoupled, as weight decay is in AdamW.
    """
    if epochs < 1:
        raise InputError(f"local epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    set_global(model, global_params)
    xs = model_inputs(model, data.x)
    y = data.y
    label = model.input_name("train", "label")
    lr_name = model.input_name("train", "lr")
    step_lr = float(lr) if lr is not None else float(model.meta.optimizer.lr)
    anchor = {k: np.array(v) for k, v in model.parameters().items()} if proximal_mu else None
    rng = np.random.default_rng(seed)
    n = len(y)
    t0 = time.perf_counter()
    losses: list[float] = []
    weights: list[int] = []
    steps = 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            feeds = {k: v[idx] for k, v in xs.items()}
            feeds[label] = y[idx]
            if lr is not None:
                feeds[lr_name] = np.asarray(step_lr)
            before = model.parameters() if anchor is not None else None
            out = model.run("train", **feeds)
            if anchor is not None and before is not None:
                after = model.parameters()
                model.set_parameters({
                    k: (after[k] - step_lr * proximal_mu * (before[k] - anchor[k]))
                    .astype(after[k].dtype) for k in after})
            losses.append(float(out["loss"]))
            weights.append(len(idx))
            steps += 1
    return LocalResult(parameters=model.parameters(), num_examples=n,
                       loss=float(np.average(losses, weights=weights)), steps=steps,
                       seconds=time.perf_counter() - t0)


def local_evaluate(model: Model, data: Dataset, params: Mapping[str, np.ndarray] | None = None,
                   batch_size: int = 256) -> dict[str, float]:
    """Metrics of ``eval`` over ``data`` (loss, and accuracy for classification)."""
    if params is not None:
        set_global(model, params)
    return model.evaluate(model_inputs(model, data.x), data.y, batch_size=batch_size)


def set_global(model: Model, params: Mapping[str, np.ndarray]) -> None:
    """Load global values into the model, cast to the file's dtypes (strategies such as
    FedAdam compute in float64); a name that is not one of its trainables is refused."""
    current = model.parameters()
    missing = sorted(set(current) - set(params))
    extra = sorted(set(params) - set(current))
    if missing or extra:
        raise EdgetrainError(
            "the federated parameters do not match this file's trainable parameters: "
            f"missing {missing[:5]}, unexpected {extra[:5]} — server and clients must hold "
            "the same trainable file")
    model.set_parameters({k: np.asarray(params[k]).astype(current[k].dtype, copy=False)
                          .reshape(current[k].shape) for k in current})


def model_inputs(model: Model, x: np.ndarray) -> dict[str, np.ndarray]:
    """``x`` under the model's input name; rows are reshaped when only the layout differs
    (an npz of flat 64-vectors feeds an [N, 8, 8] model)."""
    spec = model.signatures["infer"].inputs
    if len(spec) != 1:
        raise InputError(f"federated data is one array x; this model has inputs "
                         f"{[s.name for s in spec]}")
    want = [d for d in spec[0].shape[1:] if isinstance(d, int) and d > 0]
    if len(want) == len(spec[0].shape) - 1 and list(x.shape[1:]) != want:
        if int(np.prod(x.shape[1:])) == int(np.prod(want)):
            x = x.reshape(len(x), *want)
        else:
            raise InputError(f"data rows have shape {list(x.shape[1:])}; the model wants "
                             f"{want}")
    dtype = np.dtype(spec[0].dtype)
    if x.dtype != dtype and x.dtype.kind == dtype.kind == "f":
        x = x.astype(dtype)
    return {spec[0].name: x}


# -- per-process caches: a device loads its file and data once ------------------------------

class _Local:
    """A loaded model plus a pristine checkpoint: every round restarts the optimizer state and
    step count from it, so one client's momentum never leaks into another's round (the
    simulation engine reuses a worker process for many virtual clients)."""

    def __init__(self, path: str, backend: str) -> None:
        self.model = et_load(path, backend=backend)
        self._dir = tempfile.TemporaryDirectory(prefix="edgetrain-fl-")
        self._pristine = os.path.join(self._dir.name, "pristine.safetensors")
        self.model.save(self._pristine)

    def fresh(self) -> Model:
        self.model.restore(self._pristine)
        return self.model


_CACHE_LOCK = threading.Lock()
_MODELS: dict[tuple[str, int, str], _Local] = {}
_DATA: dict[tuple[str, int], Dataset] = {}


def _local_model(path: str, backend: str) -> _Local:
    key = (os.path.abspath(path), _mtime(path), backend)
    with _CACHE_LOCK:
        if key not in _MODELS:
            _MODELS[key] = _Local(path, backend)
        return _MODELS[key]


def _local_data(path: str) -> Dataset:
    key = (os.path.abspath(path), _mtime(path))
    with _CACHE_LOCK:
        if key not in _DATA:
            _DATA[key] = load_partition(path)
        return _DATA[key]


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError as e:
        raise InputError(f"file not found: {path}") from e


# -- Flower glue -----------------------------------------------------------------------------

def _resolve(settings: ClientSettings, context: Any) -> tuple[str, str, int]:
    node = dict(context.node_config)
    model = node.get("model") or settings.model or context.run_config.get("client-model")
    data = node.get("data") or settings.data or context.run_config.get("client-data")
    if not model:
        raise EdgetrainError("this client has no trainable file: start the SuperNode with "
                             "--node-config 'model=\"/path/model.onnx\" data=\"/path/x.npz\"'")
    if not data:
        raise EdgetrainError("this client has no local data: give --node-config "
                             "'data=\"/path/data.npz\"' (an npz with x and y)")
    partition = int(node.get(PARTITION_ID_KEY, 0))
    return str(model), str(data).replace("{partition}", str(partition)), partition


def _stall_if_asked(context: Any, server_round: int) -> None:
    """Fault injection for tests of the server's fault tolerance: a node configured with
    ``stall-at-round=R`` stops answering in round R, as a device that loses power mid-round
    does; whoever started it then kills it."""
    stall = context.node_config.get("stall-at-round")
    if stall is not None and int(stall) == server_round:
        log.warning("stall-at-round=%s: this client stops answering", stall)
        while True:
            time.sleep(3600)


def round_seed(server_round: int, partition: int) -> int:
    """The shuffling seed of a client's local epochs: fixed by round and partition, so a run
    is reproducible whatever node ids the engine hands out."""
    return int(np.random.SeedSequence([server_round, partition]).generate_state(1)[0])


def _names(model: Model) -> list[str]:
    return list(model.parameters())


def make_client_app(settings: ClientSettings | None = None, *, dp: str = "none",
                    secagg: bool = False) -> Any:
    """A ``flwr.clientapp.ClientApp`` training an edgetrain file on the node's data.

    ``dp="client"`` adds Flower's client-side clipping mod (for the server's
    ``DifferentialPrivacyClientSideFixedClipping``); ``secagg=True`` adds the SecAgg+ mod.
    """
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    settings = settings or ClientSettings()
    if dp not in ("none", "server", "client"):
        raise EdgetrainError(f"dp must be 'none', 'server' or 'client', got {dp!r}")
    # SecAgg+ (and the clipping under it) speak the compat records and let other messages
    # through; the Message-API clipping mod goes on the train function only, since it
    # refuses messages without a clipping norm (evaluate has none).
    mods: list[Any] = []
    train_mods: list[Any] = []
    if secagg:
        from flwr.client.mod import secaggplus_mod
        mods.append(secaggplus_mod)
        if dp == "client":
            from flwr.client.mod import fixedclipping_mod as compat_clipping_mod
            mods.append(compat_clipping_mod)
    elif dp == "client":
        from flwr.clientapp.mod import fixedclipping_mod
        train_mods.append(fixedclipping_mod)
    app = ClientApp(mods=mods)

    def fit_from(context: Any, server_round: int, params: Mapping[str, np.ndarray],
                 config: Mapping[str, Any]) -> tuple[LocalResult, Model]:
        model_path, data_path, partition = _resolve(settings, context)
        _stall_if_asked(context, server_round)
        local = _local_model(model_path, settings.backend)
        model = local.fresh()
        lr = config.get("lr")
        result = local_fit(model, _local_data(data_path), params,
                           epochs=int(config.get("local-epochs", 1)),
                           batch_size=int(config.get("batch-size", 32)),
                           seed=round_seed(server_round, partition),
                           lr=float(lr) if lr not in (None, "", 0) else None,
                           proximal_mu=float(config.get("proximal-mu", 0.0)))
        log.info("round %s: client %s trained %d steps on %d examples, loss %.4f",
                 server_round, partition, result.steps, result.num_examples, result.loss)
        return result, model

    def eval_from(context: Any, params: Mapping[str, np.ndarray]) -> tuple[int, dict]:
        model_path, data_path, _ = _resolve(settings, context)
        model = _local_model(model_path, settings.backend).fresh()
        data = _local_data(data_path)
        return len(data), local_evaluate(model, data, params)

    @app.train(mods=train_mods)
    def train(msg: Any, context: Any) -> Any:
        content = msg.content
        if "fitins.parameters" in content.array_records:
            return _compat_train(msg, context)
        arrays_key = next(iter(content.array_records))
        received = content.array_records[arrays_key]
        config = content.config_records.get("config", ConfigRecord())
        params = {k: v.numpy() for k, v in received.items()}
        result, _ = fit_from(context, int(config.get("server-round", 0)), params, config)
        # same keys, same order as received: Flower's clipping mod checks it
        out = ArrayRecord({k: Array(result.parameters[k]) for k in received})
        metrics = MetricRecord({"num-examples": result.num_examples,
                                "train-loss": result.loss, "train-steps": result.steps})
        return Message(content=RecordDict({arrays_key: out, "metrics": metrics}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Any, context: Any) -> Any:
        content = msg.content
        if "evaluateins.parameters" in content.array_records:
            return _compat_evaluate(msg, context)
        received = content.array_records[next(iter(content.array_records))]
        n, metrics = eval_from(context, {k: v.numpy() for k, v in received.items()})
        record: dict[str, Any] = {"num-examples": n, "eval-loss": float(metrics["loss"])}
        if "accuracy" in metrics:
            record["eval-accuracy"] = float(metrics["accuracy"])
        return Message(content=RecordDict({"metrics": MetricRecord(record)}), reply_to=msg)

    # Flower's compat records (fitins/fitres): the format SecAgg+ runs on. Parameters are a
    # list there, in the order of Model.parameters() on both sides.
    def _compat_train(msg: Any, context: Any) -> Any:
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
        from flwr.common import parameters_to_ndarrays as to_nd
        from flwr.compat.common import recorddict_compat as compat

        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        model_path, _, _ = _resolve(settings, context)
        names = _names(_local_model(model_path, settings.backend).model)
        arrays = to_nd(fitins.parameters)
        if len(arrays) != len(names):
            raise EdgetrainError(f"received {len(arrays)} arrays; this file has {len(names)} "
                                 "trainable parameters")
        config = dict(fitins.config)
        result, _ = fit_from(context, int(config.get("server-round", 0)),
                             dict(zip(names, arrays)), config)
        fitres = FitRes(status=Status(Code.OK, "ok"),
                        parameters=ndarrays_to_parameters([result.parameters[k]
                                                           for k in names]),
                        num_examples=result.num_examples,
                        metrics={"train-loss": result.loss, "train-steps": result.steps})
        return Message(content=compat.fitres_to_recorddict(fitres, keep_input=True),
                       reply_to=msg)

    def _compat_evaluate(msg: Any, context: Any) -> Any:
        from flwr.common import Code, EvaluateRes, Status
        from flwr.common import parameters_to_ndarrays as to_nd
        from flwr.compat.common import recorddict_compat as compat

        ins = compat.recorddict_to_evaluateins(msg.content, keep_input=True)
        model_path, _, _ = _resolve(settings, context)
        names = _names(_local_model(model_path, settings.backend).model)
        n, metrics = eval_from(context, dict(zip(names, to_nd(ins.parameters))))
        res = EvaluateRes(status=Status(Code.OK, "ok"), loss=float(metrics["loss"]),
                          num_examples=n,
                          metrics={k: float(v) for k, v in metrics.items() if k != "loss"})
        return Message(content=compat.evaluateres_to_recorddict(res), reply_to=msg)

    return app
