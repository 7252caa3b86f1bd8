"""Federated learning on Flower: many devices train one edgetrain file without sharing data.

Flower (``pip install 'edgetrain[federated]'``) is imported only when a federated function
runs, so ``import edgetrain.federated`` and the CLI work on a device install without it.
"""

from __future__ import annotations

from ._cli import add_cli
from ._client import ClientSettings, LocalResult, local_evaluate, local_fit, make_client_app
from ._data import Dataset, dirichlet_partition, iid_partition, load_dataset, train_test_split
from ._inline import run_inline
from ._seed import seed_mlp, seed_trainable
from ._server import ServerSettings, make_server_app, read_updates, run_server
from ._simulate import SimulationResult, plot_history, prepare_partitions, simulate

__all__ = [
    "ClientSettings", "Dataset", "LocalResult", "ServerSettings", "SimulationResult", "add_cli",
    "dirichlet_partition", "iid_partition", "load_dataset", "local_evaluate", "local_fit",
    "make_client_app", "make_server_app", "plot_history", "prepare_partitions", "read_updates",
    "run_inline", "run_server", "seed_mlp", "seed_trainable", "simulate",
    "train_test_split",
]
