"""Federated learning on Flower: the real flwr apps, strategies, mods and processes.

Fast checks run Flower's ServerApp and ClientApp through the inline engine (same apps, no Ray);
the acceptance runs use Flower's Ray simulation engine and a real SuperLink with three
SuperNodes as separate processes on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="needs the 'federated' extra (flwr)")

import edgetrain as et
from _fed_procs import Procs, running_procs, wait_for
from edgetrain.federated import (
    ServerSettings,
    dirichlet_partition,
    load_dataset,
    local_evaluate,
    local_fit,
    make_client_app,
    make_server_app,
    prepare_partitions,
    read_updates,
    run_inline,
    seed_mlp,
    seed_trainable,
)
from edgetrain.federated._client import ClientSettings, round_seed
from edgetrain.federated._deploy import free_port


def checkpoint_params(model_path: str, checkpoint: str) -> dict[str, np.ndarray]:
    m = et.load(model_path)
    m.restore(checkpoint)
    return m.parameters()


def weighted_mean(updates: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    total = sum(n for n, _ in updates)
    names = updates[0][1].keys()
    return {k: sum(n * u[k].astype(np.float64) for n, u in updates) / total for k in names}


def inline_run(tmp: Path, model_path: str, clients: int, rounds: int, *,
               non_iid: float | None = None, **settings: object) -> tuple[list[dict], str]:
    """Flower's ServerApp and ClientApp over the inline grid; returns history and partitions.
    Local training defaults to 3 epochs of batch 16 (what ``simulate`` uses for the seed)."""
    settings = {"local_epochs": 3, "batch_size": 16, **settings}
    pattern, heldout, _ = prepare_partitions(str(tmp), None, clients, non_iid, seed=0)
    s = ServerSettings(model=model_path, out_dir=str(tmp / "out"), rounds=rounds,
                       eval_data=heldout, min_available=clients, min_train=clients,
                       min_evaluate=clients, **settings)  # type: ignore[arg-type]
    history: list[dict] = []
    client = make_client_app(ClientSettings(model=model_path, data=pattern), dp=s.dp,
                             secagg=s.secagg)
    run_inline(make_server_app(s, on_round=history.append), client, clients)
    return history, pattern


# -- data ------------------------------------------------------------------------------------

def test_dirichlet_split_is_seeded_complete_and_skewed() -> None:
    y = load_dataset(None).y
    a = dirichlet_partition(y, 10, alpha=0.5, seed=3)
    b = dirichlet_partition(y, 10, alpha=0.5, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    together = np.sort(np.concatenate(a))
    assert np.array_equal(together, np.arange(len(y)))  # every example exactly once
    assert min(len(p) for p in a) >= 10

    def mean_entropy(parts: list[np.ndarray]) -> float:
        ent = []
        for p in parts:
            freq = np.bincount(y[p], minlength=10) / len(p)
            freq = freq[freq > 0]
            ent.append(-(freq * np.log(freq)).sum())
        return float(np.mean(ent))

    iid_like = dirichlet_partition(y, 10, alpha=1000.0, seed=3)
    assert mean_entropy(a) < mean_entropy(iid_like) - 0.3  # alpha=0.5: few dominant classes
    with pytest.raises(et.EdgetrainError, match="alpha"):
        dirichlet_partition(y, 10, alpha=0.0)


# -- aggregation, exactly ---------------------------------------------------------------------

def test_fedavg_is_the_weighted_mean_of_the_client_updates(tmp_path: Path) -> None:
    """Two clients with unequal shares; every round's global checkpoint equals the
    num-examples-weighted mean of what the clients sent back, and each client's update is
    exactly edgetrain's local training from the previous global model."""
    model = str(tmp_path / "seed.onnx")
    seed_trainable(model)
    history, pattern = inline_run(tmp_path, model, clients=2, rounds=2, non_iid=0.5,
                                  save_updates=True, local_epochs=1, batch_size=16)
    assert [r["round"] for r in history] == [0, 1, 2]
    sizes = {k: len(load_dataset(pattern.format(partition=k))) for k in range(2)}
    assert len(set(sizes.values())) == 2, "shares must differ for the weights to matter"
    by_size = {n: k for k, n in sizes.items()}
    for rnd in (1, 2):
        updates = read_updates(str(tmp_path / "out" / "updates"), rnd)
        assert sorted(n for n, _ in updates) == sorted(sizes.values())
        expected = weighted_mean(updates)
        glob = checkpoint_params(model, history[rnd]["checkpoint"])
        for k, v in expected.items():
            np.testing.assert_allclose(glob[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
        # the clients' updates are the local fits from the previous global model
        previous = checkpoint_params(model, history[rnd - 1]["checkpoint"])
        local = et.load(model)
        for n, sent in updates:
            k = by_size[n]
            mine = local_fit(local, load_dataset(pattern.format(partition=k)), previous,
                             epochs=1, batch_size=16, seed=round_seed(rnd, k)).parameters
            for name in sent:
                np.testing.assert_array_equal(sent[name], mine[name], err_msg=name)
        # the clients evaluated the new global model on their own data (eval signature)
        evals = [local_evaluate(local, load_dataset(pattern.format(partition=k)), glob)
                 for k in range(2)]
        mean_acc = sum(sizes[k] * e["accuracy"] for k, e in enumerate(evals)) / sum(
            sizes.values())
        assert history[rnd]["clients_eval_accuracy"] == pytest.approx(mean_acc, rel=1e-6)
        assert history[rnd]["train_replies"] == 2 and history[rnd]["train_failures"] == 0
    assert history[-1]["accuracy"] > history[0]["accuracy"] + 0.3


def test_only_trainable_parameters_travel(tmp_path: Path) -> None:
    """A frozen first layer never leaves the device (and stays as it was in the global
    model); with LoRA only the adapters do."""
    frozen_fc1 = str(tmp_path / "head.onnx")
    et.compile(seed_mlp(), loss="cross_entropy", optimizer=et.optim.SGD(lr=0.2),
               trainable=["fc2.*"]).save(frozen_fc1)
    lora = str(tmp_path / "lora.onnx")  # (alpha/rank = 4 scales its steps: a smaller rate)
    et.compile(seed_mlp(), loss="cross_entropy", optimizer=et.optim.SGD(lr=0.05),
               trainable=et.select.lora(rank=4, targets=("fc1*", "fc2*"))).save(lora)
    for path, travelling in ((frozen_fc1, {"fc2.weight", "fc2.bias"}),
                             (lora, {"fc1.weight.lora_A", "fc1.weight.lora_B",
                                     "fc2.weight.lora_A", "fc2.weight.lora_B"})):
        run_dir = tmp_path / Path(path).stem
        history, _ = inline_run(run_dir, path, clients=2, rounds=1, save_updates=True,
                                local_epochs=3, batch_size=16)
        for _, sent in read_updates(str(run_dir / "out" / "updates"), 1):
            assert set(sent) == travelling
        # the frozen weights in the exported global model are the file's originals
        import onnx
        from onnx import numpy_helper

        def weights(p: str) -> dict[str, np.ndarray]:
            return {t.name: numpy_helper.to_array(t) for t in onnx.load(p).graph.initializer}

        if path == frozen_fc1:  # (a LoRA export merges the adapters into its weights)
            original, exported = weights(path), weights(str(run_dir / "out" / "global.onnx"))
            for name in ("fc1.weight", "fc1.bias"):
                np.testing.assert_array_equal(exported[name], original[name])
        assert history[1]["loss"] < history[0]["loss"] - 0.1  # the travelling part learns


# -- strategies, DP, SecAgg+ -----------------------------------------------------------------

@pytest.fixture(scope="module")
def fedavg_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """One FedAvg round over 2 IID clients: the baseline the DP and SecAgg+ runs differ from."""
    tmp = tmp_path_factory.mktemp("fedavg")
    model = str(tmp / "seed.onnx")
    seed_trainable(model)
    history, _ = inline_run(tmp, model, clients=2, rounds=1, save_updates=True)
    return model, {"history": history, "updates": read_updates(str(tmp / "out" / "updates"), 1),
                   "global": checkpoint_params(model, history[1]["checkpoint"])}


def test_secagg_plus_aggregates_to_fedavg(tmp_path: Path,
                                          fedavg_reference: tuple[str, dict]) -> None:
    """Flower's SecAgg+ workflow: the server only unmasks the sum, which matches plain FedAvg
    up to SecAgg+'s quantisation (step 2·8/2^22 ≈ 4e-6, divided by the weights n/1000)."""
    model, ref = fedavg_reference
    history, _ = inline_run(tmp_path, model, clients=2, rounds=1, secagg=True,
                            secagg_shares=1.0, secagg_threshold=1.0)
    got = checkpoint_params(model, history[1]["checkpoint"])
    moved = max(float(np.abs(ref["global"][k] - checkpoint_params(
        model, ref["history"][0]["checkpoint"])[k]).max()) for k in got)
    for k, v in got.items():
        np.testing.assert_allclose(v, ref["global"][k], rtol=0, atol=5e-5, err_msg=k)
    assert moved > 100 * 5e-5  # the tolerance is far below what one round changes


def test_dp_server_side_adds_noise_of_the_documented_scale(
        tmp_path: Path, fedavg_reference: tuple[str, dict]) -> None:
    """Server-side fixed clipping: with a clip above every update norm nothing is clipped, so
    the DP aggregate is FedAvg plus N(0, (sigma·clip/clients)²) per value."""
    model, ref = fedavg_reference
    start = checkpoint_params(model, ref["history"][0]["checkpoint"])
    norms = [np.sqrt(sum(float(((u[k] - start[k]) ** 2).sum()) for k in u))
             for _, u in ref["updates"]]
    clip, sigma = 4.0 * max(norms), 0.01
    history, _ = inline_run(tmp_path, model, clients=2, rounds=1, dp="server", dp_noise=sigma,
                            dp_clip=clip)
    got = checkpoint_params(model, history[1]["checkpoint"])
    noise = np.concatenate([(got[k] - ref["global"][k]).ravel() for k in got])
    expected_std = sigma * clip / 2
    assert noise.size > 9000
    assert abs(noise.std() / expected_std - 1) < 0.05
    assert abs(noise.mean()) < 4 * expected_std / np.sqrt(noise.size)


def test_dp_client_side_clips_every_update(tmp_path: Path,
                                           fedavg_reference: tuple[str, dict]) -> None:
    """Client-side fixed clipping (Flower's mod on the device): with no noise, the global step
    is a mean of updates of norm <= clip, so its norm is <= clip."""
    model, ref = fedavg_reference
    start = checkpoint_params(model, ref["history"][0]["checkpoint"])
    clip = 0.05
    history, _ = inline_run(tmp_path, model, clients=2, rounds=1, dp="client", dp_noise=0.0,
                            dp_clip=clip)
    got = checkpoint_params(model, history[1]["checkpoint"])
    step = np.sqrt(sum(float(((got[k] - start[k]) ** 2).sum()) for k in got))
    assert 0.5 * clip < step <= clip * (1 + 1e-5)


def test_fedprox_keeps_clients_closer_and_fedadam_learns(
        tmp_path: Path, fedavg_reference: tuple[str, dict]) -> None:
    model, ref = fedavg_reference
    start = checkpoint_params(model, ref["history"][0]["checkpoint"])

    def dist(u: dict[str, np.ndarray]) -> float:
        return float(np.sqrt(sum(((u[k] - start[k]) ** 2).sum() for k in u)))

    prox_dir = tmp_path / "prox"
    history, _ = inline_run(prox_dir, model, clients=2, rounds=1, strategy="fedprox",
                            proximal_mu=0.1, save_updates=True)
    prox = sorted(read_updates(str(prox_dir / "out" / "updates"), 1), key=lambda t: t[0])
    plain = sorted(ref["updates"], key=lambda t: t[0])
    for (n1, p), (n2, a) in zip(prox, plain, strict=True):
        assert n1 == n2
        assert dist(p) < 0.95 * dist(a)
    assert history[1]["accuracy"] > history[0]["accuracy"] + 0.3

    history, _ = inline_run(tmp_path / "adam", model, clients=2, rounds=2, strategy="fedadam",
                            server_lr=0.1)
    assert history[2]["accuracy"] > history[0]["accuracy"] + 0.3


# -- acceptance: Flower's simulation engine ----------------------------------------------------

def cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgetrain.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_simulation_non_iid_digits_reaches_90_percent(tmp_path: Path) -> None:
    """``edgetrain federated simulate``: 10 clients, Dirichlet(0.5) digits, the seed MLP,
    Flower's Ray engine; >= 0.9 held-out accuracy within 20 rounds, plotted per round."""
    out = tmp_path / "sim"
    r = cli("federated", "simulate", "--clients", "10", "--rounds", "20", "--non-iid", "0.5",
            "--fraction-evaluate", "0.5", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rounds = re.findall(r"^round\s+(\d+):\s+held-out accuracy (\d\.\d+)", r.stdout, re.M)
    assert [int(k) for k, _ in rounds] == list(range(21))
    assert r.stdout.count("(10 clients trained, 0 failed; accuracy on their own data") == 20
    last = r.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"global accuracy: (0\.\d{4})", last)
    assert m, last
    assert float(m.group(1)) >= 0.9
    assert float(rounds[0][1]) < 0.5  # it is the federation that learned
    png = out / "accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec["accuracy"] for rec in records] == pytest.approx([float(a) for _, a in rounds],
                                                                 abs=5e-5)


# -- acceptance: a real deployment -------------------------------------------------------------

@pytest.fixture
def procs() -> Iterator[Procs]:
    yield from running_procs()


@pytest.mark.slow
def test_deployment_superlink_and_three_supernodes(tmp_path: Path, procs: Procs) -> None:
    """SuperLink + 3 SuperNodes as separate processes on 127.0.0.1, 3 rounds of FedAvg. One
    device stops answering in round 3 and is killed mid-round: the round still completes with
    the two others (round timeout, min nodes 2), the global checkpoint is written every round,
    improves on round 0, and round 3's global model is the mean of the two survivors."""
    model = str(tmp_path / "model.onnx")
    seed_trainable(model)
    pattern, heldout, _ = prepare_partitions(str(tmp_path), None, 3, None, seed=0)
    link_port = free_port()
    node_ports = [free_port() for _ in range(3)]
    procs.ports = [link_port, *node_ports]
    out = tmp_path / "out"
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server_log = tmp_path / "server.log"
    server = procs.start(
        [sys.executable, "-m", "edgetrain.cli", "federated", "server", model, "--host",
         "127.0.0.1", "--port", str(link_port), "--insecure", "--rounds", "3",
         "--min-clients", "3", "--eval-data", heldout, "--out", str(out),
         "--round-timeout", "25", "--fraction-evaluate", "0", "--save-updates",
         "--local-epochs", "1", "--batch-size", "16", "--timeout", "240"],
        server_log, base_env)
    node_logs = [tmp_path / f"node{k}.log" for k in range(3)]
    nodes = []
    for k in range(3):
        args = [sys.executable, "-m", "edgetrain.cli", "federated", "client", model,
                "--data", pattern.format(partition=k), "--superlink", f"127.0.0.1:{link_port}",
                "--insecure", "--port", str(node_ports[k]),
                "--node-config", f"partition-id={k}"]
        if k == 2:
            args += ["--node-config", "stall-at-round=3"]
        env = {**base_env, "FLWR_HOME": str(tmp_path / f"flwr-node{k}")}
        nodes.append(procs.start(args, node_logs[k], env))

    metrics = out / "metrics.jsonl"

    def rounds_done() -> int:
        return len(metrics.read_text().splitlines()) if metrics.exists() else 0

    wait_for(lambda: rounds_done() >= 3, 200, "rounds 0-2", server, server_log)
    # round 3 is under way: wait until device 2 has taken its instruction, then kill it
    wait_for(lambda: node_logs[2].read_text(errors="replace").count("Receiving: train") >= 3,
             60, "device 2 to receive round 3", nodes[2], node_logs[2])
    procs.kill(nodes[2])
    assert nodes[2].returncode is not None
    server.wait(timeout=240)
    log = server_log.read_text(errors="replace")
    assert server.returncode == 0, log[-3000:]
    assert "global accuracy:" in log

    records = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    for r in records:
        assert Path(r["checkpoint"]).exists()
    assert (out / "global.safetensors").exists() and (out / "global.onnx").exists()
    # improvement measured by the test itself: restore the checkpoints into a fresh model
    data = load_dataset(heldout)
    m = et.load(model)

    def accuracy(ck: str) -> float:
        m.restore(ck)
        return m.evaluate(data.x, data.y)["accuracy"]

    first, last = accuracy(records[0]["checkpoint"]), accuracy(records[3]["checkpoint"])
    assert last > first + 0.4
    m.restore(str(out / "global.safetensors"))
    assert m.evaluate(data.x, data.y)["accuracy"] == pytest.approx(last)
    # rounds 1-2 aggregated 3 devices, round 3 the 2 survivors — exactly their weighted mean
    assert [r.get("train_replies") for r in records[1:]] == [3, 3, 2]
    assert "(2 clients trained" in log
    updates_dir = str(out / "updates")
    assert [len(read_updates(updates_dir, r)) for r in (1, 2, 3)] == [3, 3, 2]
    expected = weighted_mean(read_updates(updates_dir, 3))
    got = checkpoint_params(model, records[3]["checkpoint"])
    for k, v in expected.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    # the plain inference export runs on stock onnxruntime with the global weights
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "global.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"x": data.x})[0]
    assert float((logits.argmax(1) == data.y).mean()) == pytest.approx(last, abs=1e-6)
