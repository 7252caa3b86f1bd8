"""Federated learning against bad clients: one hostile or broken device of five must neither
wreck the global model nor stop the run; robust aggregators resist updates that pass every
check; bad command-line input is a one-line error.

The aggregation attacks run Flower's real ServerApp, strategies, DP wrappers and ClientApps
over the inline engine (same apps, no Ray start-up); one run repeats an attack on Flower's Ray
simulation engine. SuperNode authentication is in ``test_federated_auth.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import _fed_attacks as attacks

pytest.importorskip("flwr", reason="needs the 'federated' extra (flwr)")

import edgetrain as et
from edgetrain.federated import (
    ServerSettings,
    make_client_app,
    make_server_app,
    prepare_partitions,
    read_updates,
    run_inline,
    seed_trainable,
)
from edgetrain.federated._client import ClientSettings

# runs Flower rounds
pytestmark = pytest.mark.slow

CLIENTS = 5
BAD = 4          # partition of the bad client; the honest run uses partitions 0-3 only
ROUNDS = 2


class Setup:
    """A seed MLP and digits cut over five IID clients, shared by the module."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.model = str(tmp / "seed.onnx")
        seed_trainable(self.model)
        self.pattern, self.heldout, _ = prepare_partitions(str(tmp), None, CLIENTS, None,
                                                           seed=0)
        self.runs = 0
        self._honest: dict[tuple, dict[str, Any]] = {}

    def run(self, nodes: int, attack: attacks.Attack | None = None,
            **settings: Any) -> dict[str, Any]:
        """``nodes`` clients (partitions 0..nodes-1); with ``attack``, partition BAD lies."""
        self.runs += 1
        out = self.tmp / f"run{self.runs}"
        settings = {"local_epochs": 3, "batch_size": 16, "rounds": ROUNDS, **settings}
        s = ServerSettings(model=self.model, out_dir=str(out), eval_data=self.heldout,
                           min_available=nodes, min_train=nodes, min_evaluate=nodes,
                           **settings)
        history: list[dict] = []
        client: Any = make_client_app(ClientSettings(model=self.model, data=self.pattern),
                                      dp=s.dp)
        if attack is not None:
            client = attacks.attacked_app(client, attack, BAD)
        run_inline(make_server_app(s, on_round=history.append), client, nodes)
        params = checkpoint_params(self.model, str(out / "global.safetensors"))
        return {"history": history, "params": params, "out": out,
                "accuracy": history[-1]["accuracy"]}

    def honest(self, **settings: Any) -> dict[str, Any]:
        """The run without the bad client: the four honest partitions alone."""
        key = tuple(sorted(settings.items()))
        if key not in self._honest:
            self._honest[key] = self.run(CLIENTS - 1, **settings)
        return self._honest[key]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(tmp_path_factory.mktemp("fedsec"))


def drops(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "edgetrain.federated" and "dropped the train reply" in r.getMessage()]


def checkpoint_params(model_path: str, checkpoint: str) -> dict[str, np.ndarray]:
    m = et.load(model_path)
    m.restore(checkpoint)
    return m.parameters()


def weighted_mean(updates: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    total = sum(n for n, _ in updates)
    return {k: sum(n * u[k].astype(np.float64) for n, u in updates) / total
            for k in updates[0][1]}


def assert_finite(params: dict[str, np.ndarray]) -> None:
    for k, v in params.items():
        assert np.isfinite(v).all(), f"{k} is not finite"


# -- one bad client of five -------------------------------------------------------------------

ATTACKS = {
    "nan": (attacks.nan, "non-finite values (nan)"),
    "inf": (attacks.inf, "non-finite values (inf)"),
    "scaled-1e30": (attacks.scaled, "times the round's median"),
    "1e12-examples": (attacks.many_examples, "claims 1000000000000 examples"),
    "wrong-shape": (attacks.wrong_shape, "has shape"),
    "wrong-dtype": (attacks.wrong_dtype, "has dtype <U4, expected float32"),
    "lying-npy-header": (attacks.lying_header, "has shape [1000000000, 64]"),
    "float64": (attacks.float64, "has dtype float64, expected float32"),
    "unknown-name": (attacks.unknown_name, "unknown ['fc9.weight']"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_bad_update_is_dropped_and_the_global_model_stays_honest(
        setup: Setup, caplog: pytest.LogCaptureFixture, name: str) -> None:
    """FedAvg over 5 clients, one of which lies in every round: the run finishes, the bad reply
    is dropped with its reason logged, each round's global model is the weighted mean of the
    four honest updates alone, and it ends where the four honest clients end without it."""
    attack, reason = ATTACKS[name]
    honest = setup.honest()
    assert honest["accuracy"] > 0.85
    caplog.set_level(logging.WARNING, logger="edgetrain.federated")
    got = setup.run(CLIENTS, attack, save_updates=True)
    assert_finite(got["params"])
    assert got["accuracy"] == pytest.approx(honest["accuracy"], abs=0.02)
    assert [(r["train_replies"], r["train_dropped"]) for r in got["history"][1:]] == \
        [(CLIENTS - 1, 1)] * ROUNDS
    for rnd in range(1, ROUNDS + 1):
        updates = read_updates(str(got["out"] / "updates"), rnd)
        expected = weighted_mean(updates)
        glob = checkpoint_params(setup.model, got["history"][rnd]["checkpoint"])
        for k, v in expected.items():
            np.testing.assert_allclose(glob[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    # round 1 starts from the same model as the honest run: the same four updates
    first = checkpoint_params(setup.model, got["history"][1]["checkpoint"])
    for k, v in checkpoint_params(setup.model, honest["history"][1]["checkpoint"]).items():
        np.testing.assert_allclose(first[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    logged = drops(caplog)
    assert len(logged) == ROUNDS and all(reason in line for line in logged), logged


@pytest.mark.parametrize("settings", [{"strategy": "fedadam", "server_lr": 0.05},
                                      {"dp": "server", "dp_noise": 0.01, "dp_clip": 20.0}],
                         ids=["fedadam", "dp-server"])
def test_nan_from_one_client_is_dropped_under_fedadam_and_server_dp(
        setup: Setup, caplog: pytest.LogCaptureFixture, settings: dict[str, Any]) -> None:
    honest = setup.honest(**settings)
    caplog.set_level(logging.WARNING, logger="edgetrain.federated")
    got = setup.run(CLIENTS, attacks.nan, **settings)
    assert_finite(got["params"])
    assert got["accuracy"] > honest["accuracy"] - 0.03
    assert got["accuracy"] > got["history"][0]["accuracy"] + 0.5
    assert len(drops(caplog)) == ROUNDS


def test_a_failing_client_does_not_stop_server_side_dp(setup: Setup) -> None:
    """Flower's server-side DP wrapper skips a round in which any client failed; the failure is
    dropped before it sees the replies, and the Gaussian noise is scaled to the updates
    actually averaged (std = multiplier · clip / 4), with equal weights."""
    sigma, clip = 0.01, 20.0
    got = setup.run(CLIENTS, attacks.fails, rounds=1, dp="server", dp_noise=sigma,
                    dp_clip=clip, save_updates=True)
    record = got["history"][1]
    assert (record["train_replies"], record["train_failures"]) == (CLIENTS - 1, 1)
    assert got["accuracy"] > got["history"][0]["accuracy"] + 0.5
    updates = read_updates(str(got["out"] / "updates"), 1)
    assert [n for n, _ in updates] == [1] * (CLIENTS - 1)  # equal weights under DP
    g0 = checkpoint_params(setup.model, got["history"][0]["checkpoint"])
    assert max(np.sqrt(sum(float(((u[k] - g0[k]) ** 2).sum()) for k in u))
               for _, u in updates) < clip  # nothing was clipped
    mean = {k: np.mean([u[k].astype(np.float64) for _, u in updates], axis=0) for k in g0}
    noise = np.concatenate([(got["params"][k] - mean[k]).ravel() for k in g0])
    assert abs(noise.std() / (sigma * clip / (CLIENTS - 1)) - 1) < 0.05


def test_client_side_dp_drops_an_update_that_was_not_clipped(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    """Under client-side DP every device must clip its update to the clipping norm (Flower's
    mod does); a reply above it was not clipped and is dropped, so the noise still covers
    one client's influence. The aggregate is the plain mean of the four clipped updates."""
    clip = 1.0
    caplog.set_level(logging.WARNING, logger="edgetrain.federated")
    got = setup.run(CLIENTS, attacks.reversed_update(6.0), rounds=1, dp="client", dp_noise=0.0,
                    dp_clip=clip, save_updates=True)
    assert (got["history"][1]["train_replies"], got["history"][1]["train_dropped"]) == \
        (CLIENTS - 1, 1)
    start = checkpoint_params(setup.model, got["history"][0]["checkpoint"])
    updates = [u for _, u in read_updates(str(got["out"] / "updates"), 1)]
    for u in updates:  # the honest ones were clipped on the device
        norm = np.sqrt(sum(float(((u[k] - start[k]) ** 2).sum()) for k in u))
        assert norm == pytest.approx(clip, rel=1e-4)
    for k, v in got["params"].items():
        mean = np.mean([u[k].astype(np.float64) for u in updates], axis=0)
        np.testing.assert_allclose(v, mean, rtol=1e-6, atol=1e-7, err_msg=k)
    assert any("exceeds the DP clipping norm 1: the client did not clip it" in line
               for line in drops(caplog))


def test_a_non_finite_or_misshapen_aggregate_is_not_adopted() -> None:
    """The last check before a round's aggregate becomes the global model."""
    from edgetrain.federated._guard import ReplyRules, aggregate_is_sane

    rules = ReplyRules.for_parameters({"w": np.zeros((2, 3), np.float32)})
    assert aggregate_is_sane(1, {"w": np.ones((2, 3))}, rules)
    assert not aggregate_is_sane(1, {"w": np.full((2, 3), np.nan)}, rules)
    assert not aggregate_is_sane(1, {"w": np.ones((3, 2))}, rules)
    assert not aggregate_is_sane(1, {"w": np.ones((2, 3)), "v": np.ones(1)}, rules)
    assert not aggregate_is_sane(1, None, rules)


def test_bad_evaluation_replies_are_dropped(setup: Setup,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """A client whose evaluation metrics are NaN or carry keys the others lack would make
    Flower refuse the round's replies with an exception; it is dropped instead."""
    from flwr.clientapp import ClientApp

    honest = make_client_app(ClientSettings(model=setup.model, data=setup.pattern))
    app = ClientApp()

    @app.train()
    def train(msg: Any, context: Any) -> Any:
        return honest(msg, context)

    @app.evaluate()
    def evaluate(msg: Any, context: Any) -> Any:
        reply = honest(msg, context)
        metrics = reply.content["metrics"]
        if int(context.node_config["partition-id"]) == BAD:
            metrics["eval-accuracy"] = float("nan")
        elif int(context.node_config["partition-id"]) == 0:
            metrics["extra"] = 1.0
        return reply

    caplog.set_level(logging.WARNING, logger="edgetrain.federated")
    s = ServerSettings(model=setup.model, out_dir=str(setup.tmp / "evalrun"), rounds=1,
                       eval_data=setup.heldout, min_available=CLIENTS, min_train=CLIENTS,
                       min_evaluate=CLIENTS, local_epochs=1, batch_size=16)
    history: list[dict] = []
    run_inline(make_server_app(s, on_round=history.append), app, CLIENTS)
    assert 0 < history[1]["clients_eval_accuracy"] <= 1
    assert any("dropped the evaluate reply" in r.getMessage() and "'eval-accuracy' is nan"
               in r.getMessage() for r in caplog.records)


def test_max_update_norm_drops_larger_updates(setup: Setup,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """An absolute bound below every honest update's norm: every reply is dropped, the round
    keeps the previous global model, and the run still finishes."""
    caplog.set_level(logging.WARNING, logger="edgetrain.federated")
    got = setup.run(CLIENTS - 1, rounds=1, max_update_norm=1e-3)
    assert got["history"][1]["train_replies"] == 0
    assert got["history"][1]["accuracy"] == got["history"][0]["accuracy"]
    assert len(drops(caplog)) == CLIENTS - 1
    assert all("exceeds max_update_norm 0.001" in line for line in drops(caplog))


def test_a_failed_secure_aggregation_round_does_not_end_the_run(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    """Under SecAgg+ the server sees only the masked sum, so a client's wrongly shaped vector
    makes Flower's unmasking raise: that round keeps the global model (logged) and the run
    goes on to its end."""
    honest = make_client_app(ClientSettings(model=setup.model, data=setup.pattern))
    caplog.set_level(logging.WARNING, logger="edgetrain.federated")
    s = ServerSettings(model=setup.model, out_dir=str(setup.tmp / "secagg"), rounds=1,
                       eval_data=setup.heldout, min_available=CLIENTS, min_train=CLIENTS,
                       min_evaluate=CLIENTS, local_epochs=3, batch_size=16, secagg=True,
                       secagg_shares=1.0, secagg_threshold=1.0, fraction_evaluate=0.0)
    history: list[dict] = []
    run_inline(make_server_app(s, on_round=history.append),
               attacks.secagg_wrong_shape_app(honest, BAD), CLIENTS)
    assert [r["round"] for r in history] == [0, 1]
    assert history[1]["accuracy"] == history[0]["accuracy"]  # the round changed nothing
    assert any("round 1: secure aggregation failed" in r.getMessage() for r in caplog.records)


# -- robust aggregation -----------------------------------------------------------------------

def test_robust_strategies_resist_an_update_that_passes_every_check(setup: Setup) -> None:
    """A reversed, six-fold update is finite, well-formed and within the outlier bound, so it
    reaches the aggregator: FedAvg is dragged backwards, while the median and the trimmed mean
    end where they end over the honest clients alone, and Krum adopts an honest update every
    round."""
    attack = attacks.reversed_update(6.0)
    fedavg = setup.run(CLIENTS, attack)
    honest = setup.honest()
    assert fedavg["accuracy"] < honest["accuracy"] - 0.3
    assert fedavg["history"][-1]["train_dropped"] == 0  # it passed the checks
    for strategy in ("fedmedian", "fedtrimmedavg"):
        got = setup.run(CLIENTS, attack, strategy=strategy)["accuracy"]
        assert got == pytest.approx(setup.honest(strategy=strategy)["accuracy"], abs=0.02)
    krum = setup.run(CLIENTS, attack, strategy="krum", save_updates=True)
    for rnd in range(1, ROUNDS + 1):
        glob = checkpoint_params(setup.model, krum["history"][rnd]["checkpoint"])
        start = checkpoint_params(setup.model, krum["history"][rnd - 1]["checkpoint"])
        updates = [u for _, u in read_updates(str(krum["out"] / "updates"), rnd)]
        norms = [np.sqrt(sum(float(((u[k] - start[k]) ** 2).sum()) for k in u))
                 for u in updates]
        chosen = [i for i, u in enumerate(updates)
                  if all(np.array_equal(glob[k], u[k]) for k in u)]
        assert len(chosen) == 1 and norms[chosen[0]] < 2 * np.median(norms)  # an honest one
        assert max(norms) > 4 * np.median(norms)  # and the bad one was there to choose
    assert krum["accuracy"] > honest["accuracy"] - 0.1


# -- command line -----------------------------------------------------------------------------

SIM = ["simulate", "--engine", "inline", "--rounds", "1", "--no-plot"]
BAD_ARGS = [
    ([*SIM, "--dp", "server", "--dp-clip", "-1"], "--dp-clip"),
    ([*SIM, "--lr", "nan"], "--lr"),
    ([*SIM, "--lr", "0"], "--lr"),
    ([*SIM, "--local-epochs", "0"], "--local-epochs"),
    ([*SIM, "--batch-size", "0"], "--batch-size"),
    ([*SIM, "--rounds", "0"], "--rounds"),
    ([*SIM, "--clients", "0"], "--clients"),
    ([*SIM, "--seed", "-1"], "--seed"),
    ([*SIM, "--test-fraction", "1"], "--test-fraction"),
    ([*SIM, "--non-iid", "nan"], "--non-iid"),
    ([*SIM, "--fraction-train", "0"], "--fraction-train"),
    ([*SIM, "--fraction-evaluate", "1.5"], "--fraction-evaluate"),
    ([*SIM, "--round-timeout", "0"], "--round-timeout"),
    ([*SIM, "--dp", "server", "--dp-noise", "-1"], "--dp-noise"),
    ([*SIM, "--strategy", "fedadam", "--server-lr", "inf"], "--server-lr"),
    ([*SIM, "--strategy", "fedprox", "--proximal-mu", "nan"], "--proximal-mu"),
    ([*SIM, "--secagg", "--secagg-shares", "2"], "--secagg-shares"),
    ([*SIM, "--max-examples", "0"], "--max-examples"),
    ([*SIM, "--max-update-norm", "-1"], "--max-update-norm"),
    ([*SIM, "--outlier-factor", "0.5"], "--outlier-factor"),
    ([*SIM, "--strategy", "fedtrimmedavg", "--trim-beta", "0.5"], "--trim-beta"),
    ([*SIM, "--strategy", "krum", "--byzantine", "-1"], "--byzantine"),
    ([*SIM, "--strategy", "krum", "--dp", "server"], "krum"),
    ([*SIM, "--strategy", "fedmedian", "--secagg"], "fedmedian"),
    ([*SIM, "--data", "no-such.npz"], "--data"),
    (["server", "--insecure", "--port", "0"], "--port"),
    (["server", "--insecure", "--min-clients", "0"], "--min-clients"),
    (["server", "--insecure", "--timeout", "-5"], "--timeout"),
    (["server", "--insecure", "--authorized-supernodes", "keys.pub"], "TLS"),
    (["client", "seed-mlp", "--data", "x.npz", "--insecure", "--auth-key", "k"], "--auth-key"),
    (["client", "seed-mlp", "--data", "x.npz", "--insecure", "--port", "70000"], "--port"),
]


@pytest.mark.parametrize("args,flag", BAD_ARGS, ids=[" ".join(a[len(SIM):] if a[0] ==
                                                              "simulate" else a)
                                                     for a, _ in BAD_ARGS])
def test_bad_federated_arguments_are_one_line_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], flag: str) -> None:
    """Checked before anything is written or started: exit 2 and one line naming the flag."""
    from edgetrain.cli import main

    out = tmp_path / "out"
    code = main(["federated", *args, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("edgetrain: error: ") and flag in err[0], err
    assert not out.exists()


# -- Flower's Ray simulation engine -----------------------------------------------------------

@pytest.mark.slow
def test_ray_engine_drops_a_nan_update(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    """The same attack on Flower's simulation engine (ClientApps in Ray actors): the NaN reply
    is dropped with its reason, and round 1's global model is the honest clients' alone."""
    import cloudpickle
    from flwr.simulation import run_simulation

    cloudpickle.register_pickle_by_value(attacks)  # the Ray workers cannot import tests/
    out = setup.tmp / "ray"
    s = ServerSettings(model=setup.model, out_dir=str(out), eval_data=setup.heldout, rounds=1,
                       min_available=CLIENTS, min_train=CLIENTS, min_evaluate=CLIENTS,
                       fraction_evaluate=0.0, local_epochs=3, batch_size=16)
    history: list[dict] = []
    client = attacks.attacked_app(
        make_client_app(ClientSettings(model=setup.model, data=setup.pattern)), attacks.nan, BAD)
    caplog.set_level(logging.WARNING, logger="edgetrain.federated")
    run_simulation(server_app=make_server_app(s, on_round=history.append), client_app=client,
                   num_supernodes=CLIENTS, backend_config={
                       "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                       "init_args": {"num_cpus": 2, "num_gpus": 0, "include_dashboard": False,
                                     "logging_level": "ERROR", "log_to_driver": False}})
    assert [r["round"] for r in history] == [0, 1]
    got = checkpoint_params(setup.model, history[1]["checkpoint"])
    assert_finite(got)
    assert (history[1]["train_replies"], history[1]["train_dropped"]) == (CLIENTS - 1, 1)
    honest = checkpoint_params(setup.model, setup.honest()["history"][1]["checkpoint"])
    for k, v in honest.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    assert any("non-finite values (nan)" in line for line in drops(caplog))
