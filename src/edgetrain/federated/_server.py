"""The server side: a Flower ``ServerApp`` that federates an edgetrain trainable file.

The server holds the same trainable file as the devices. Its trainable parameters are the
global model; after every round they are written as an edgetrain checkpoint
(``Model.run("save")``, restorable on any device) and as a plain inference ONNX model
(``Model.export``), and scored on held-out data when the server has some.

FedAvg, FedProx, FedAdam and the robust FedMedian, FedTrimmedAvg and Krum are Flower's own
strategies (``flwr.serverapp.strategy``); DP is Flower's fixed-clipping wrappers; SecAgg+ is
Flower's ``SecAggPlusWorkflow``, which still runs on Flower's compat strategies, so that path
builds the compat twin of the chosen strategy.

No client is trusted: every reply is screened (:mod:`._guard`) before any strategy or DP
wrapper sees it, and a bad one is dropped with a logged reason instead of poisoning the
global model or ending the run. Under DP the accepted updates count equally and the noise is
scaled to how many were averaged, so one client's influence stays what the noise covers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
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
from ._guard import (
    Accepted,
    ReplyRules,
    aggregate_is_sane,
    screen_evaluate,
    screen_train,
)

__all__ = ["STRATEGIES", "GlobalModelWriter", "ServerSettings", "make_server_app", "run_server"]

log = logging.getLogger("edgetrain.federated")

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
# aggregators that do not average: robust to a minority of bad updates that pass the checks
ROBUST = ("fedmedian", "fedtrimmedavg", "krum")
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
    save_updates: bool = False       # keep every accepted update as aggregated (audit, tests)
    max_examples: int = 10_000_000   # a reply claiming more examples (or < 1) is dropped
    max_update_norm: float = 0.0     # a reply with a larger ||w - w_global|| is dropped; 0 = off
    outlier_factor: float = 10.0     # norm / example claims vs the round's median; 0 = off
    trim_beta: float = 0.2           # FedTrimmedAvg: share cut off at each end
    byzantine: int = 1               # Krum: clients assumed malicious (f)
    backend: str = "onnxruntime"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def validate(self) -> None:
        """Refuse every setting that would crash later or silently train nothing."""
        if self.strategy not in STRATEGIES:
            raise EdgetrainError(f"unknown strategy {self.strategy!r}; choose one of "
                                 f"{list(STRATEGIES)}")
        if self.dp not in DP_MODES:
            raise EdgetrainError(f"dp must be one of {list(DP_MODES)}, got {self.dp!r}")
        if self.secagg and self.dp == "server":
            raise EdgetrainError("server-side DP clips each client's update on the server, "
                                 "which SecAgg+ hides; use --dp client with --secagg")
        if self.strategy in ROBUST and self.secagg:
            raise EdgetrainError(f"{self.strategy} needs every client's update, which "
                                 "SecAgg+ hides; use fedavg, fedprox or fedadam with --secagg")
        if self.strategy in ROBUST and self.dp != "none":
            raise EdgetrainError(f"the DP noise is calibrated to a mean of clipped updates; "
                                 f"{self.strategy} does not average, so it cannot take --dp")
        if not self.model:
            raise EdgetrainError("the server needs the trainable file (model=…)")
        for name, ok, want in self._rules():
            if not ok:
                raise EdgetrainError(f"{name} (--{name.replace('_', '-')}) must be {want}, "
                                     f"got {getattr(self, name)!r}")

    def _rules(self) -> list[tuple[str, bool, str]]:
        fin = math.isfinite
        shares = _int_or_fraction(self.secagg_shares) if fin(self.secagg_shares) else -1
        threshold = (_int_or_fraction(self.secagg_threshold)
                     if fin(self.secagg_threshold) else -1)
        return [
            ("rounds", self.rounds >= 1, "at least 1"),
            ("local_epochs", self.local_epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("lr", fin(self.lr) and self.lr >= 0, "a positive number (0: the file's own)"),
            ("proximal_mu", fin(self.proximal_mu) and self.proximal_mu >= 0,
             "a finite number >= 0"),
            ("server_lr", fin(self.server_lr) and self.server_lr > 0, "a positive number"),
            ("fraction_train", 0 < self.fraction_train <= 1, "in (0, 1]"),
            ("fraction_evaluate", 0 <= self.fraction_evaluate <= 1, "in [0, 1]"),
            ("min_available", self.min_available >= 1, "at least 1"),
            ("min_train", self.min_train >= 1, "at least 1"),
            ("min_evaluate", self.min_evaluate >= 0, "at least 0"),
            ("round_timeout", fin(self.round_timeout) and self.round_timeout > 0,
             "a positive number of seconds"),
            ("dp_noise", fin(self.dp_noise) and self.dp_noise >= 0, "a finite number >= 0"),
            ("dp_clip", fin(self.dp_clip) and self.dp_clip > 0, "a positive number"),
            ("dp_sampled", self.dp_sampled >= 0, "at least 0"),
            ("secagg_shares", shares == 1 or (isinstance(shares, int) and 3 <= shares <= 1024)
             or (isinstance(shares, float) and 0 < shares < 1),
             "1 (all), an integer from 3 to 1024, or a fraction in (0, 1)"),
            ("secagg_threshold", (isinstance(threshold, int) and threshold >= 1
                                  and (shares == 1 or not isinstance(shares, int)
                                       or threshold < shares))
             or (isinstance(threshold, float) and 0 < threshold < 1),
             "an integer >= 1 below secagg_shares, or a fraction in (0, 1)"),
            ("max_examples", self.max_examples >= 1, "at least 1"),
            ("max_update_norm", fin(self.max_update_norm) and self.max_update_norm >= 0,
             "a finite number >= 0 (0: no bound)"),
            ("outlier_factor", self.outlier_factor == 0 or (fin(self.outlier_factor)
                                                            and self.outlier_factor > 1),
             "0 (off) or a finite number above 1"),
            ("trim_beta", 0 <= self.trim_beta < 0.5, "in [0, 0.5)"),
            ("byzantine", self.byzantine >= 0, "at least 0"),
        ]

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
            try:
                kw[f.name] = type(default)(value) if not isinstance(default, bool) else (
                    value if isinstance(value, bool) else str(value).lower() in ("1", "true"))
            except (TypeError, ValueError) as e:
                raise EdgetrainError(f"run config {key}={value!r} is not a "
                                     f"{type(default).__name__}") from e
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

    strategy = build_strategy(s, reply_rules(s, initial), grid)

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


def build_strategy(s: ServerSettings, rules: ReplyRules, grid: Any = None) -> Any:
    """The Flower strategy for ``s``: FedAvg/FedProx/FedAdam or a robust aggregator, wrapped
    for DP, behind the reply screening of :mod:`._guard` and observed (round metrics; with
    ``save_updates`` every accepted update as it was weighted)."""
    from flwr.serverapp import strategy as fs

    common: dict[str, Any] = dict(
        fraction_train=s.fraction_train, fraction_evaluate=s.fraction_evaluate,
        min_train_nodes=s.min_train, min_evaluate_nodes=s.min_evaluate,
        min_available_nodes=s.min_available)
    make = {
        "fedavg": lambda: fs.FedAvg(**common),
        "fedprox": lambda: fs.FedProx(**common, proximal_mu=s.proximal_mu),
        "fedadam": lambda: fs.FedAdam(**common, eta=s.server_lr, eta_l=s.lr or 0.1),
        "fedmedian": lambda: fs.FedMedian(**common),
        "fedtrimmedavg": lambda: fs.FedTrimmedAvg(**common, beta=s.trim_beta),
        "krum": lambda: fs.Krum(**common, num_malicious_nodes=s.byzantine),
    }
    strategy: Any = make[s.strategy]()
    if s.dp != "none":
        wrapper = (fs.DifferentialPrivacyServerSideFixedClipping if s.dp == "server"
                   else fs.DifferentialPrivacyClientSideFixedClipping)
        strategy = wrapper(strategy, noise_multiplier=s.dp_noise, clipping_norm=s.dp_clip,
                           num_sampled_clients=_sampled_clients(s, grid))
    return _observed(strategy, rules,
                     os.path.join(s.out_dir, "updates") if s.save_updates else None)


def reply_rules(s: ServerSettings, params: Mapping[str, np.ndarray]) -> ReplyRules:
    """What every client reply must satisfy, from the settings and the server's parameters."""
    return ReplyRules.for_parameters(params, max_examples=s.max_examples,
                                     max_update_norm=s.max_update_norm,
                                     outlier_factor=s.outlier_factor,
                                     equal_weights=s.dp != "none",
                                     clip_norm=s.dp_clip if s.dp == "client" else 0.0)


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


def _observed(inner: Any, rules: ReplyRules, updates_dir: str | None) -> Any:
    """The outermost strategy: it screens every reply (:mod:`._guard`) before ``inner`` sees
    it, refuses a non-finite aggregate, notes each round's counts and client metrics, and
    with ``updates_dir`` keeps every accepted update as ``round_RRR_node_N.npz``."""
    from flwr.serverapp.strategy import Strategy

    class Observed(Strategy):
        def __init__(self) -> None:
            self.inner = inner
            self.round_metrics: dict[int, dict[str, float]] = {}
            self.current: dict[int, dict[str, np.ndarray]] = {}
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
            # the global model the replies are updates of (for their norms)
            self.current = {server_round: {k: v.numpy() for k, v in arrays.items()}}
            return self.inner.configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> Any:
            accepted, failed, dropped = screen_train(
                server_round, replies, rules, self.current.get(server_round, {}))
            self._note(server_round, {"train_replies": len(accepted),
                                      "train_failures": failed, "train_dropped": dropped})
            if updates_dir:
                _save_updates(updates_dir, server_round, accepted)
            if not accepted:
                log.warning("round %d: no update to aggregate; the global model is kept",
                            server_round)
                return None, None
            if hasattr(self.inner, "num_sampled_clients"):
                # DP: the noise std is multiplier * clip / clients; with the replies actually
                # averaged, one client's share of the mean is what the noise is scaled to
                self.inner.num_sampled_clients = len(accepted)
            arrays, metrics = self.inner.aggregate_train(server_round,
                                                         [a.message for a in accepted])
            if not aggregate_is_sane(server_round, arrays, rules):
                return None, metrics
            if metrics is not None:
                self._note(server_round, {f"clients_{k}": v for k, v in metrics.items()})
            return arrays, metrics

        def configure_evaluate(self, server_round: int, arrays: Any, config: Any,
                               grid: Any) -> Iterable[Any]:
            return self.inner.configure_evaluate(server_round, arrays, config, grid)

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Any]) -> Any:
            metrics = self.inner.aggregate_evaluate(
                server_round, screen_evaluate(server_round, replies, rules))
            if metrics is not None:
                self._note(server_round, {f"clients_{k}": v for k, v in metrics.items()})
            return metrics

    return Observed()


def _save_updates(folder: str, server_round: int, accepted: list[Accepted]) -> None:
    for a in accepted:
        path = os.path.join(folder, f"round_{server_round:03d}_node_{a.node}.npz")
        arrays: dict[str, Any] = {f"p:{k}": v for k, v in a.arrays.items()}
        np.savez(path, __num_examples__=np.asarray(a.weight), **arrays)


def read_updates(folder: str, server_round: int) -> list[tuple[int, dict[str, np.ndarray]]]:
    """The accepted client updates of a round: ``[(weight, {name: array}), …]``, the weight
    being the example count the aggregate used (see :mod:`._guard`)."""
    out = []
    prefix = f"round_{server_round:03d}_node_"
    for name in sorted(os.listdir(folder)):
        if name.startswith(prefix) and name.endswith(".npz"):
            with np.load(os.path.join(folder, name)) as z:
                out.append((int(float(z["__num_examples__"])),
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
    strategy.aggregate_fit = _checked_fit(strategy.aggregate_fit, reply_rules(s, initial),
                                          names)
    if context is None:
        context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                          run_config={})
    legacy = LegacyContext(context=context, strategy=strategy,
                           config=ServerConfig(num_rounds=s.rounds,
                                               round_timeout=s.round_timeout))
    secagg = SecAggPlusWorkflow(num_shares=_int_or_fraction(s.secagg_shares),
                                reconstruction_threshold=_int_or_fraction(s.secagg_threshold),
                                timeout=s.round_timeout)
    DefaultWorkflow(fit_workflow=_round_survives(secagg))(grid, legacy)


def _round_survives(fit_workflow: Any) -> Any:
    """A SecAgg+ round that raises (a client's masked vector of the wrong length makes
    Flower's unmasking fail) is logged and leaves the global model as it was, instead of
    ending the run; the next round starts afresh."""
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key

    def run(grid: Any, context: Any) -> None:
        try:
            fit_workflow(grid, context)
        except Exception as e:  # one hostile reply must not end the federation
            cfg = context.state.config_records.get(MAIN_CONFIGS_RECORD, {})
            log.warning("round %s: secure aggregation failed (%s: %s); the global model is "
                        "kept", cfg.get(Key.CURRENT_ROUND, "?"), type(e).__name__, e)

    return run


def _checked_fit(aggregate_fit: Any, rules: ReplyRules, names: list[str]) -> Any:
    """``aggregate_fit`` whose result is refused unless sane: under SecAgg+ the server sees
    only the sum, so the aggregate is all that can be checked."""
    from flwr.common import parameters_to_ndarrays

    def checked(server_round: int, results: Any, failures: Any) -> Any:
        params, metrics = aggregate_fit(server_round, results, failures)
        if params is None:
            return params, metrics
        try:
            values: Any = dict(zip(names, parameters_to_ndarrays(params), strict=True))
        except ValueError:
            values = {}
        if not aggregate_is_sane(server_round, values, rules):
            return None, metrics
        return params, metrics

    return checked


def _int_or_fraction(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)
