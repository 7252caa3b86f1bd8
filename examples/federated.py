"""Federated learning with Flower: ten devices train the seed MLP on their own digits.

    pip install -e '.[federated]'
    python examples/federated.py                 # Flower's simulation engine, 10 clients
    python examples/federated.py --deploy        # a SuperLink + 3 SuperNodes on 127.0.0.1

Each device holds the same trainable file and only its own share of the data (a Dirichlet
label skew: most devices see a few digits). Every round the devices train a few local epochs
through the file's ``train`` signature and send back only the trainable parameters; the server
averages them (FedAvg), writes the global model as an edgetrain checkpoint and a plain ONNX
model, and scores it on held-out data.

The same runs from the shell:

    edgetrain federated simulate --clients 10 --rounds 20 --non-iid 0.5
    edgetrain federated server model.onnx --insecure --rounds 3 --min-clients 3 --eval-data held.npz
    edgetrain federated client model.onnx --insecure --data device0.npz --superlink 127.0.0.1:9093
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile

import edgetrain as et
from edgetrain.federated import load_dataset, prepare_partitions, seed_trainable, simulate
from edgetrain.federated._deploy import free_port


def run_simulation(out: str) -> None:
    # strategy: "fedavg", "fedprox", "fedadam" or the robust "fedmedian", "fedtrimmedavg",
    # "krum"; also dp="server", secagg=True
    result = simulate(None, clients=10, rounds=20, non_iid=0.5, out_dir=out,
                      strategy="fedavg")
    print(f"accuracy per round: {[round(a, 3) for a in result.accuracies]}")
    print(f"plot: {result.plot}")
    # the global model is an ordinary edgetrain checkpoint: restore it on any device
    m = et.load(result.model)
    m.restore(os.path.join(out, "global.safetensors"))
    held = load_dataset(os.path.join(out, "partitions", "heldout.npz"))
    print(f"restored global model: held-out accuracy {m.evaluate(held.x, held.y)['accuracy']:.4f}")


def run_deployment(out: str) -> None:
    """A SuperLink and three SuperNodes as separate processes on this machine."""
    os.makedirs(out, exist_ok=True)
    model = os.path.join(out, "model.onnx")
    seed_trainable(model)
    pattern, heldout, _ = prepare_partitions(out, None, 3, non_iid=0.5)
    port = free_port()
    edgetrain = [sys.executable, "-m", "edgetrain.cli", "federated"]
    nodes = [subprocess.Popen(
        [*edgetrain, "client", model, "--insecure", "--data", pattern.format(partition=k),
         "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
         "--node-config", f"partition-id={k}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "FLWR_HOME": os.path.join(out, f"device{k}")}) for k in range(3)]
    try:
        subprocess.run([*edgetrain, "server", model, "--insecure", "--port", str(port),
                        "--rounds", "3", "--min-clients", "3", "--eval-data", heldout,
                        "--local-epochs", "3", "--batch-size", "16",
                        "--out", os.path.join(out, "server"), "--timeout", "600"], check=True)
    finally:
        for p in nodes:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deploy", action="store_true",
                    help="real SuperLink/SuperNode processes instead of the simulation engine")
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="edgetrain-federated-")
    print(f"output: {out}")
    (run_deployment if args.deploy else run_simulation)(out)


if __name__ == "__main__":
    main()
