"""``edgetrain federated simulate``: Flower's simulation engine over a partitioned data set.

The data set is split once (seeded): a held-out test share stays with the server, the rest is
cut over the virtual clients (IID, or Dirichlet label skew), one npz per client on disk, so a
simulated client reads its share exactly as a device would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..errors import EdgetrainError
from ._client import ClientSettings, make_client_app
from ._data import (
    dirichlet_partition,
    iid_partition,
    load_dataset,
    save_partition,
    train_test_split,
)
from ._seed import SEED_NAME, seed_trainable
from ._server import ServerSettings, make_server_app

__all__ = ["SimulationResult", "plot_history", "prepare_partitions", "round_line", "simulate"]


@dataclass
class SimulationResult:
    """Per-round records of the global model (round 0 = before training) and the outputs."""

    history: list[dict[str, Any]] = field(default_factory=list)
    out_dir: str = ""
    model: str = ""
    plot: str | None = None
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        """Held-out accuracy of the final global model."""
        if not self.history or "accuracy" not in self.history[-1]:
            raise EdgetrainError("no held-out accuracy was recorded")
        return float(self.history[-1]["accuracy"])

    @property
    def accuracies(self) -> list[float]:
        return [float(r["accuracy"]) for r in self.history if "accuracy" in r]


def prepare_partitions(out_dir: str, data: str | None, clients: int,
                       non_iid: float | None, seed: int = 0,
                       test_fraction: float = 0.25) -> tuple[str, str, list[int]]:
    """Write ``partitions/client_K.npz`` and ``partitions/heldout.npz``; returns the client
    path pattern (with ``{partition}``), the held-out path and the share sizes."""
    dataset = load_dataset(data)
    train, test = train_test_split(dataset, test_fraction, seed=seed)
    if non_iid is None:
        shares = iid_partition(len(train), clients, seed=seed)
    else:
        shares = dirichlet_partition(train.y, clients, non_iid, seed=seed)
    folder = os.path.join(out_dir, "partitions")
    for k, idx in enumerate(shares):
        save_partition(os.path.join(folder, f"client_{k}.npz"), train.take(idx))
    heldout = save_partition(os.path.join(folder, "heldout.npz"), test)
    return os.path.join(folder, "client_{partition}.npz"), heldout, [len(s) for s in shares]


def simulate(model: str | None = None, *, data: str | None = None, clients: int = 10,
             rounds: int = 20, non_iid: float | None = None, out_dir: str = "federated-sim",
             seed: int = 0, test_fraction: float = 0.25, plot: bool = True,
             engine: str = "ray", cpus: int | None = None, verbose: bool = False,
             stream: TextIO | None = None,
             on_round: Callable[[dict[str, Any]], None] | None = None,
             **settings: Any) -> SimulationResult:
    """Run a federated training of ``model`` over ``clients`` simulated devices.

    ``model`` is a trainable file, or None / ``"seed-mlp"`` for the seed MLP on 8x8 digits.
    Other keyword arguments are :class:`ServerSettings` fields (``strategy="fedprox"``,
    ``local_epochs=3``, ``dp="server"``, ``secagg=True``, …). Prints one line per round and
    ends with ``global accuracy: 0.xxxx``.

    ``engine="ray"`` is Flower's simulation engine (ClientApps in Ray actors, in parallel);
    ``engine="inline"`` runs the same apps one message after another in this process — no Ray
    start-up, for small runs and tests.
    """
    if engine not in ("ray", "inline"):
        raise EdgetrainError(f"engine must be 'ray' or 'inline', got {engine!r}")
    stream = stream or sys.stdout
    t0 = time.perf_counter()
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if clients < 1:
        raise EdgetrainError(f"clients must be at least 1, got {clients}")
    if model in (None, "", SEED_NAME):
        model_path = os.path.join(out_dir, f"{SEED_NAME}.onnx")
        seed_trainable(model_path, seed=seed)
        settings.setdefault("local_epochs", 3)
        settings.setdefault("batch_size", 16)
    else:
        model_path = os.path.abspath(os.fspath(model))
        if not os.path.exists(model_path):
            raise EdgetrainError(f"trainable file not found: {model_path}")
    pattern, heldout, sizes = prepare_partitions(out_dir, data, clients, non_iid, seed,
                                                 test_fraction)
    split = "IID" if non_iid is None else f"Dirichlet(alpha={non_iid})"
    print(f"{clients} clients, {split} split, examples per client: {sizes}", file=stream)
    settings.setdefault("min_available", clients)
    settings.setdefault("min_train", max(1, min(clients, 2)))
    settings.setdefault("min_evaluate", max(1, min(clients, 2)))
    unknown = set(settings) - {f for f in ServerSettings.__dataclass_fields__}
    if unknown:
        raise EdgetrainError(f"unknown federated settings {sorted(unknown)}")
    s = ServerSettings(model=model_path, out_dir=out_dir, rounds=rounds, eval_data=heldout,
                       **settings)
    s.validate()
    result = SimulationResult(out_dir=out_dir, model=model_path)

    def report(record: dict[str, Any]) -> None:
        result.history.append(record)
        print(round_line(record), file=stream, flush=True)
        if on_round is not None:
            on_round(record)

    server_app = make_server_app(s, on_round=report)
    client_app = make_client_app(ClientSettings(model=model_path, data=pattern,
                                                backend=s.backend),
                                 dp=s.dp, secagg=s.secagg)
    with _quiet(not verbose):
        if engine == "inline":
            from ._inline import run_inline

            run_inline(server_app, client_app, clients)
        else:
            with _without_tensorflow():
                from flwr.simulation import run_simulation

            cpus = cpus or os.cpu_count() or 1
            backend_config: dict[str, Any] = {
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                              "logging_level": "INFO" if verbose else "ERROR",
                              "log_to_driver": bool(verbose)},
            }
            run_simulation(server_app=server_app, client_app=client_app,
                           num_supernodes=clients, backend_config=backend_config,
                           verbose_logging=verbose)
    result.seconds = time.perf_counter() - t0
    if len(result.history) != rounds + 1:
        raise EdgetrainError(f"the simulation stopped after {len(result.history) - 1} of "
                             f"{rounds} rounds; run with --verbose to see Flower's log")
    if plot:
        result.plot = plot_history(result.history, os.path.join(out_dir, "accuracy.png"),
                                   title=f"{s.strategy}: {clients} clients, {split}")
        print(f"plot: {result.plot}", file=stream)
    print(f"global accuracy: {result.accuracy:.4f}", file=stream, flush=True)
    return result


def round_line(r: dict[str, Any]) -> str:
    """``round  3:  held-out accuracy 0.9311  loss 0.2423  (9 clients trained, 0 failed,
    1 dropped; accuracy on their own data 0.9402)`` from a round record."""
    line = f"round {r['round']:3d}:"
    if "accuracy" in r:
        line += f"  held-out accuracy {r['accuracy']:.4f}"
    if "loss" in r:
        line += f"  loss {r['loss']:.4f}"
    if "train_replies" in r:
        line += f"  ({int(r['train_replies'])} clients trained"
        if "train_failures" in r:
            line += f", {int(r['train_failures'])} failed"
        if r.get("train_dropped"):
            line += f", {int(r['train_dropped'])} dropped"
        if "clients_eval_accuracy" in r:
            line += f"; accuracy on their own data {r['clients_eval_accuracy']:.4f}"
        line += ")"
    return line


def plot_history(history: list[dict[str, Any]], path: str, title: str = "") -> str:
    """A PNG of the global held-out accuracy (and loss) per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in history if "accuracy" in r]
    acc = [r["accuracy"] for r in history if "accuracy" in r]
    loss = [r["loss"] for r in history if "loss" in r]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(rounds, acc, marker="o", color="tab:blue", label="held-out accuracy")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if loss and len(loss) == len(rounds):
        ax2 = ax.twinx()
        ax2.plot(rounds, loss, marker=".", color="tab:red", alpha=0.6, label="held-out loss")
        ax2.set_ylabel("loss")
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [str(ln.get_label()) for ln in lines], loc="center right")
    else:
        ax.legend(loc="lower right")
    ax.set_title(title or "global model per round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class _quiet:
    """Keeps Flower's chatter off the console unless asked for (--verbose): its INFO log, the
    deprecation notice of ``run_simulation`` (a WARNING) and Ray's FutureWarnings. Errors
    still show."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._levels: dict[str, int] = {}
        self._warnings = warnings.catch_warnings()

    def __enter__(self) -> None:
        if self.enabled:
            for name in ("flwr",):
                lg = logging.getLogger(name)
                self._levels[name] = lg.level
                lg.setLevel(logging.ERROR)
            self._warnings.__enter__()
            for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
                warnings.simplefilter("ignore", category)

    def __exit__(self, *exc: Any) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        if self.enabled:
            self._warnings.__exit__(*exc)


@contextlib.contextmanager
def _without_tensorflow() -> Iterator[None]:
    """Import Flower's simulation without TensorFlow.

    ``flwr.simulation`` imports TensorFlow when it is installed, only to offer TensorFlow
    clients GPU memory growth; edgetrain's clients never use it, and the import costs seconds
    and prints TensorFlow's start-up log. A ``None`` entry in ``sys.modules`` makes that
    import fail as if TensorFlow were absent, which Flower handles; the entry is removed
    afterwards, so TensorFlow stays importable.
    """
    if "tensorflow" in sys.modules:
        yield
        return
    sys.modules["tensorflow"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if "tensorflow" in sys.modules and sys.modules["tensorflow"] is None:
            del sys.modules["tensorflow"]
