"""The server side: a Flower ``ServerApp`` that federates an edgetrain trainable file.

The server holds the same trainable file as the devices. Its trainable parameters are the
global model; after every round they are written as an edgetrain checkpoint
(``Model.run("save")``, restorable on any device) and as a plain inference ONNX model
(``Model.export``), and scored on held-out data when the server has some.

FedAvg, FedProx and FedAdam are Flower's own strategies (``flwr.serverapp.strategy``); DP is
Flower's fixed-clipping wrappers; SecAgg+ is Flower's ``SecAggPlusWorkflow``, which still runs
on Flower's compat strategies, so that path builds the compat twin of the chosen strategy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import EdgetrainError
from ..runtime import Model
from ..runtime import load as et_load
from ._client import local_evaluate, set_global
from ._data import Dataset, load_dataset

__all__ = ["STRATEGIES", "GlobalModelWriter", "ServerSettings", "make_server_app", "run_server"]

log = logging.getLogger("edgetrain.federated")

STRATEGIES = ("fedavg", "fedprox", "fedadam")
DP_MODES = ("none", "server", "client")


@dataclass
class ServerSettings:
    """Everything a federated run is configured by; mirrors the run config of a Flower App.

    Field names map to run-config keys with ``-`` for ``_`` (``local_epochs`` ↔
    ``local-epochs``), so ``flwr run --run-config 'rounds=5'`` and the Python API agree.
    Zero or empty means "not set" where a run config cannot hold None.
    """

    model: str = ""                  # the trainable file the server holds
    out_dir: str = "federated-out"   # global checkpoints, exports, metrics
    rounds: int = 3
    strategy: str = "fedavg"
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.0                  # client learning rate; 0 = the file's own
    proximal_mu: float = 0.01        # FedProx
    server_lr: float = 0.1           # FedAdam's eta
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_available: int = 2           # wait for this many connected nodes before a round
    min_train: int = 2
    min_evaluate: int = 2
    round_timeout: float = 600.0     # seconds; a round goes on with whoever answered by then
    dp: str = "none"                 # "server" | "client" fixed clipping + Gaussian noise
    dp_noise: float = 0.1            # noise multiplier
    dp_clip: float = 1.0             # clipping norm of each client's update
    dp_sampled: int = 0              # clients per round for the noise scale; 0 = derive
    secagg: bool = False
    secagg_shares: float = 3.0       # SecAgg+ num_shares (an int, or a fraction of clients)
    secagg_threshold: float = 2.0    # SecAgg+ reconstruction_threshold
    eval_data: str = ""              # npz held out on the server for the global accuracy
    save_updates: bool = False       # keep every client's returned parameters (audit, tests)
    backend: str = "onnxruntime"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise EdgetrainError(f"unknown strategy {self.strategy!r}; choose one of "
                                 f"{list(STRATEGIES)}")
        if self.dp not in DP_MODES:
            raise EdgetrainError(f"dp must be one of {list(DP_MODES)}, got {self.dp!r}")
        if self.secagg and self.dp == "server":
            raise EdgetrainError("server-side DP clips each client's update on the server, "
                                 "which SecAgg+ hides; use --dp client with --secagg")
        if self.rounds < 1:
            raise EdgetrainError(f"rounds must be at least 1, got {self.rounds}")
        if not self.model:
            raise EdgetrainError("the server needs the trainable file (model=…)")
        if min(self.min_available, self.min_train) < 1:
            raise EdgetrainError("min_available and min_train must be at least 1")

    def to_run_config(self) -> dict[str, Any]:
        """Flat TOML-able values (what a Flower App's ``[tool.flwr.app.config]`` holds)."""
        return {f.name.replace("_", "-"): getattr(self, f.name)
                for f in dataclasses.fields(self) if f.name != "extra"}

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> ServerSettings:
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f.name.replace("_", "-")
            if f.name == "extra" or key not in config:
                continue
            default = getattr(cls(), f.name)
            value = config[key]
            kw[f.name] = type(default)(value) if not isinstance(default, bool) else (
                value if isinstance(value, bool) else str(value).lower() in ("1", "true"))
        known = {f.name.replace("_", "-") for f in dataclasses.fields(cls)}
        kw["extra"] = {k: v for k, v in config.items() if k not in known}
        return cls(**kw)

    def train_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"local-epochs": int(self.local_epochs),
                               "batch-size": int(self.batch_size)}
        if self.lr:
            cfg["lr"] = float(self.lr)
        return cfg


class GlobalModelWriter:
    """After each round: the global model into the server's file, then a checkpoint
    (``global.safetensors`` and ``rounds/round_RRR.safetensors``), a plain inference model
    (``global.onnx``) and a line of ``metrics.jsonl``."""

    def __init__(self, model: Model, out_dir: str, eval_data: Dataset | None = None) -> None:
        self.model = model
        self.out_dir = os.path.abspath(out_dir)
        self.eval_data = eval_data
        self.history: list[dict[str, Any]] = []
        os.makedirs(os.path.join(self.out_dir, "rounds"), exist_ok=True)
        self._metrics_path = os.path.join(self.out_dir, "metrics.jsonl")
        self._t0 = time.perf_counter()
        with open(self._metrics_path, "w", encoding="utf-8"):
            pass

    def write(self, server_round: int, params: Mapping[str, np.ndarray],
              **extra: float) -> dict[str, Any]:
        set_global(self.model, params)
        ck = os.path.join(self.out_dir, "rounds", f"round_{server_round:03d}.safetensors")
        self.model.run("save", checkpoint_path=ck)
        self.model.run("save", checkpoint_path=os.path.join(self.out_dir,
                                                            "global.safetensors"))
        self.model.export(os.path.join(self.out_dir, "global.onnx"))
        record: dict[str, Any] = {"round": server_round, "checkpoint": ck}
        if self.eval_data is not None:
            metrics = local_evaluate(self.model, self.eval_data)
            record.update({k: float(v) for k, v in metrics.items()})
        record.update({k: float(v) for k, v in extra.items()})
        record["seconds"] = round(time.perf_counter() - self._t0, 3)
        self.history.append(record)
        with open(self._metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        acc = f", held-out accuracy {record['accuracy']:.4f}" if "accuracy" in record else ""
        log.info("round %d: global model written to %s%s", server_round, ck, acc)
        return record


def make_server_app(settings: ServerSettings | None = None,
                    on_round: Any = None) -> Any:
    """A ``flwr.serverapp.ServerApp``; without ``settings`` it reads the run config."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        s = settings if settings is not None else ServerSettings.from_run_config(
            context.run_config)
        run_server(grid, s, context=context, on_round=on_round)

    return app


def run_server(grid: Any, s: ServerSettings, context: Any = None,
               on_round: Any = None) -> list[dict[str, Any]]:
    """Run ``s.rounds`` rounds on ``grid``; returns the per-round records (round 0 first)."""
    s.validate()
    model = et_load(s.model, backend=s.backend)
    eval_data = load_dataset(s.eval_data) if s.eval_data else None
    writer = GlobalModelWriter(model, s.out_dir, eval_data)
    names = list(model.parameters())
    initial = model.parameters()

    def on_params(server_round: int, params: Mapping[str, np.ndarray],
                  **extra: float) -> dict[str, Any]:
        record = writer.write(server_round, params, **extra)
        if on_round is not None:
            on_round(record)
        return record

    if s.secagg:
        _run_compat_secagg(grid, s, context, names, initial, on_params)
    else:
        _run_message_api(grid, s, initial, on_params)
    return writer.history


# -- Message API path ----------------------------------------------------------------------

def _run_message_api(grid: Any, s: ServerSettings, initial: Mapping[str, np.ndarray],
                     on_params: Any) -> None:
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

    strategy = build_strategy(s, grid)

    def evaluate_fn(server_round: int, arrays: Any) -> Any:
        # Flower calls this after the round's client evaluation: its aggregate joins the record
        extra = strategy.round_metrics.pop(server_round, {})
        record = on_params(server_round, {k: v.numpy() for k, v in arrays.items()}, **extra)
        return MetricRecord({k: v for k, v in record.items()
                             if isinstance(v, float) and k != "seconds"})

    strategy.start(grid=grid, initial_arrays=ArrayRecord({k: Array(np.asarray(v))
                                                           for k, v in initial.items()}),
                   num_rounds=s.rounds, timeout=s.round_timeout,
                   train_config=ConfigRecord(s.train_config()),
                   evaluate_config=ConfigRecord({}), evaluate_fn=evaluate_fn)


def build_strategy(s: ServerSettings, grid: Any = None) -> Any:
    """The Flower strategy for ``s``: FedAvg/FedProx/FedAdam, wrapped for DP, and observed
    (round metrics of the clients; with ``save_updates`` every client's returned values)."""
    from flwr.serverapp import strategy as fs

    common: dict[str, Any] = dict(
        fraction_train=s.fraction_train, fraction_evaluate=s.fraction_evaluate,
        min_train_nodes=s.min_train, min_evaluate_nodes=s.min_evaluate,
        min_available_nodes=s.min_available)
    strategy: Any
    if s.strategy == "fedavg":
        strategy = fs.FedAvg(**common)
    elif s.strategy == "fedprox":
        strategy = fs.FedProx(**common, proximal_mu=s.proximal_mu)
    else:
        strategy = fs.FedAdam(**common, eta=s.server_lr, eta_l=s.lr or 0.1)
    if s.dp != "none":
        wrapper = (fs.DifferentialPrivacyServerSideFixedClipping if s.dp == "server"
                   else fs.DifferentialPrivacyClientSideFixedClipping)
        strategy = wrapper(strategy, noise_multiplier=s.dp_noise, clipping_norm=s.dp_clip,
                           num_sampled_clients=_sampled_clients(s, grid))
    return _observed(strategy, os.path.join(s.out_dir, "updates") if s.save_updates else None)


def _sampled_clients(s: ServerSettings, grid: Any) -> int:
    """Clients per round, for the DP noise scale (noise std = multiplier · clip / clients)."""
    if s.dp_sampled:
        return int(s.dp_sampled)
    if grid is None:
        return max(1, s.min_train)
    deadline = time.monotonic() + s.round_timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < s.min_available and time.monotonic() < deadline:
        time.sleep(1.0)
        nodes = list(grid.get_node_ids())
    return max(int(len(nodes) * s.fraction_train), s.min_train, 1)


def _observed(inner: Any, updates_dir: str | None) -> Any:
    """A pass-through strategy (outermost, so it sees what the clients really sent) that
    notes each round's answer counts and aggregated client metrics, and with ``updates_dir``
    keeps every reply's arrays and ``num_examples`` as ``round_RRR_node_N.npz``."""
    from flwr.serverapp.strategy import Strategy

    class Observed(Strategy):
        def __init__(self) -> None:
            self.inner = inner
            self.round_metrics: dict[int, dict[str, float]] = {}
            if updates_dir:
                os.makedirs(updates_dir, exist_ok=True)

        def _note(self, server_round: int, values: Mapping[str, Any]) -> None:
            self.round_metrics.setdefault(server_round, {}).update(
                {k.replace("-", "_"): float(v) for k, v in values.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)})

        def summary(self) -> None:
            self.inner.summary()

        def configure_train(self, server_round: int, arrays: Any, config: Any,
                            grid: Any) -> Iterable[Any]:
            return self.inner.configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> Any:
            replies = list(replies)
            ok = [m for m in replies if not m.has_error()]
            self._note(server_round, {"train_replies": len(ok),
                                      "train_failures": len(replies) - len(ok)})
            for msg in ok if updates_dir else ():
                content = msg.content
                arrays = content.array_records[next(iter(content.array_records))]
                metrics = content.metric_records[next(iter(content.metric_records))]
                path = os.path.join(str(updates_dir), f"round_{server_round:03d}_node_"
                                                      f"{msg.metadata.src_node_id}.npz")
                np.savez(path, __num_examples__=np.asarray(metrics["num-examples"]),
                         **{f"p:{k}": v.numpy() for k, v in arrays.items()})
            arrays, metrics = self.inner.aggregate_train(server_round, replies)
            if metrics is not None:
                self._note(server_round, {f"clients_{k}": v for k, v in metrics.items()})
            return arrays, metrics

        def configure_evaluate(self, server_round: int, arrays: Any, config: Any,
                               grid: Any) -> Iterable[Any]:
            return self.inner.configure_evaluate(server_round, arrays, config, grid)

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Any]) -> Any:
            metrics = self.inner.aggregate_evaluate(server_round, replies)
            if metrics is not None:
                self._note(server_round, {f"clients_{k}": v for k, v in metrics.items()})
            return metrics

    return Observed()


def read_updates(folder: str, server_round: int) -> list[tuple[int, dict[str, np.ndarray]]]:
    """The client updates recorded for a round: ``[(num_examples, {name: array}), …]``."""
    out = []
    prefix = f"round_{server_round:03d}_node_"
    for name in sorted(os.listdir(folder)):
        if name.startswith(prefix) and name.endswith(".npz"):
            with np.load(os.path.join(folder, name)) as z:
                out.append((int(z["__num_examples__"]),
                            {k[2:]: z[k] for k in z.files if k.startswith("p:")}))
    return out


# -- SecAgg+ path (Flower's compat workflow) ---------------------------------------------------

def _run_compat_secagg(grid: Any, s: ServerSettings, context: Any, names: list[str],
                       initial: Mapping[str, np.ndarray], on_params: Any) -> None:
    from flwr.app import Context, RecordDict
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server import strategy as cs
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    # the compat workflow evaluates centrally right after the (secure) fit of a round, so the
    # fit metrics noted here belong to the round evaluate_fn is called for
    last_fit: dict[str, float] = {}

    def weighted(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        total = sum(n for n, _ in results) or 1
        keys = {k for _, m in results for k, v in m.items() if isinstance(v, (int, float))}
        return {k: sum(n * float(m.get(k, 0.0)) for n, m in results) / total for k in keys}

    def fit_metrics(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        agg = weighted(results)
        last_fit.clear()
        last_fit.update({"train_replies": float(len(results)),
                         **{f"clients_{k.replace('-', '_')}": v for k, v in agg.items()}})
        return agg

    def evaluate_fn(server_round: int, arrays: list[np.ndarray],
                    config: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        extra = dict(last_fit) if server_round > 0 else {}
        last_fit.clear()
        record = on_params(server_round, dict(zip(names, arrays)), **extra)
        metrics = {k: v for k, v in record.items() if isinstance(v, float) and k != "loss"}
        return float(record.get("loss", 0.0)), metrics

    def fit_config(server_round: int) -> dict[str, Any]:
        return {**s.train_config(), "server-round": server_round,
                **({"proximal-mu": s.proximal_mu} if s.strategy == "fedprox" else {})}

    common: dict[str, Any] = dict(
        fraction_fit=s.fraction_train, fraction_evaluate=s.fraction_evaluate,
        min_fit_clients=s.min_train, min_evaluate_clients=s.min_evaluate,
        min_available_clients=s.min_available, evaluate_fn=evaluate_fn,
        on_fit_config_fn=fit_config, accept_failures=True,
        fit_metrics_aggregation_fn=fit_metrics, evaluate_metrics_aggregation_fn=weighted,
        initial_parameters=ndarrays_to_parameters([initial[k] for k in names]))
    strategy: Any
    if s.strategy == "fedavg":
        strategy = cs.FedAvg(**common)
    elif s.strategy == "fedprox":
        strategy = cs.FedProx(**common, proximal_mu=s.proximal_mu)
    else:
        strategy = cs.FedAdam(**common, eta=s.server_lr, eta_l=s.lr or 0.1)
    if s.dp == "client":
        strategy = cs.DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=s.dp_noise, clipping_norm=s.dp_clip,
            num_sampled_clients=_sampled_clients(s, grid))
    if context is None:
        context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                          run_config={})
    legacy = LegacyContext(context=context, strategy=strategy,
                           config=ServerConfig(num_rounds=s.rounds,
                                               round_timeout=s.round_timeout))
    secagg = SecAggPlusWorkflow(num_shares=_int_or_fraction(s.secagg_shares),
                                reconstruction_threshold=_int_or_fraction(s.secagg_threshold),
                                timeout=s.round_timeout)
    DefaultWorkflow(fit_workflow=secagg)(grid, legacy)


def _int_or_fraction(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)
