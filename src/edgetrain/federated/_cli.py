"""``edgetrain federated simulate | server | client``.

Registered into the main CLI by :func:`add_cli`; ``python -m edgetrain.federated`` runs the
same commands on their own. Flower is imported only when a command runs, so the parser builds
on a device install without the ``federated`` extra.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import EdgetrainError

__all__ = ["add_cli", "main"]

_DESCRIPTION = """Federated learning on Flower: many devices train one edgetrain file.

  simulate  Flower's simulation engine over a partitioned data set (digits by default)
  server    a SuperLink plus the edgetrain ServerApp; writes the global model every round
  client    a SuperNode for one device: its trainable file and its local data
"""


def _command(sub: Any, name: str, summary: str, description: str, file_help: str,
             required: bool = False) -> argparse.ArgumentParser:
    """A sub-command whose first argument is the trainable file (the seed MLP by default)."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=description)
    if required:
        p.add_argument("file", help=file_help)
    else:
        p.add_argument("file", nargs="?", default="seed-mlp", help=file_help)
    return p


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``federated`` command group to an argparse sub-parser collection."""
    fed = subparsers.add_parser(
        "federated", help="federated learning on Flower (simulate | server | client)",
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = fed.add_subparsers(dest="federated_command", required=True)

    s = _command(sub, "simulate", "simulate N clients on one machine",
                 "Flower's simulation engine over a partitioned data set; prints and plots "
                 "global held-out accuracy per round and ends with 'global accuracy: 0.xxxx'.",
                 "trainable file, or 'seed-mlp' (default): the seed MLP for 8x8 digits")
    s.add_argument("--data", help="npz with arrays x and y (default: scikit-learn's digits)")
    s.add_argument("--clients", type=int, default=10, help="number of simulated devices")
    s.add_argument("--rounds", type=int, default=20, help="federated rounds (default 20)")
    s.add_argument("--non-iid", type=float, default=None, metavar="ALPHA",
                   help="Dirichlet label skew with concentration ALPHA (default: IID)")
    s.add_argument("--test-fraction", type=float, default=0.25,
                   help="share of the data held out for the global accuracy")
    s.add_argument("--seed", type=int, default=0, help="seed of the split and the seed MLP")
    s.add_argument("--engine", choices=("ray", "inline"), default="ray",
                   help="ray: Flower's simulation engine (default); inline: the same apps "
                   "run one message at a time in this process")
    s.add_argument("--out", default="federated-sim", help="output folder")
    s.add_argument("--no-plot", action="store_true", help="do not write accuracy.png")
    s.add_argument("--verbose", action="store_true", help="show Flower's log")
    _strategy_args(s)
    s.set_defaults(func=cmd_simulate)

    v = _command(sub, "server", "run a SuperLink and the federated training",
                 "Starts a Flower SuperLink on HOST:PORT (or uses --superlink), submits the "
                 "edgetrain ServerApp with 'flwr run', prints each round and writes the global "
                 "model as a checkpoint and a plain ONNX model.",
                 "the trainable file (the devices hold the same one), or 'seed-mlp'")
    v.add_argument("--host", default="127.0.0.1", help="address the SuperLink binds")
    v.add_argument("--port", type=int, default=9093, help="SuperLink port (Fleet + Control)")
    v.add_argument("--superlink", help="use this running SuperLink (HOST:PORT) instead")
    v.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    v.add_argument("--min-clients", type=int, default=2,
                   help="connected devices to wait for before each round")
    v.add_argument("--eval-data", help="npz held out on the server for the global accuracy")
    v.add_argument("--out", default="federated-server", help="output folder")
    v.add_argument("--timeout", type=float, default=None,
                   help="give up if the whole run takes longer (seconds)")
    _tls_args(v, server=True)
    _strategy_args(v)
    v.set_defaults(func=cmd_server)

    c = _command(sub, "client", "run a SuperNode for one device",
                 "Runs a Flower SuperNode whose ClientApp trains FILE on DATA (an npz with x "
                 "and y) whenever the server asks.",
                 "the trainable file on this device, or 'seed-mlp'", required=True)
    c.add_argument("--data", required=True, help="this device's npz with arrays x and y")
    c.add_argument("--superlink", default="127.0.0.1:9093", help="SuperLink HOST:PORT")
    c.add_argument("--host", default="127.0.0.1", help="address of this node's local API")
    c.add_argument("--port", type=int, default=9094, help="port of this node's local API")
    c.add_argument("--node-config", action="append", default=[], metavar="KEY=VALUE",
                   help="extra node config for the ClientApp (repeatable)")
    c.add_argument("--out", default="federated-client",
                   help="folder for a 'seed-mlp' file built here")
    _tls_args(c, server=False)
    c.set_defaults(func=cmd_client)
    return fed


def _strategy_args(p: argparse.ArgumentParser) -> None:
    from ._server import STRATEGIES

    g = p.add_argument_group("training and aggregation")
    g.add_argument("--strategy", choices=STRATEGIES, default="fedavg",
                   help="fedavg, fedprox, fedadam average the updates; fedmedian, "
                   "fedtrimmedavg, krum resist a minority of bad ones (default: fedavg)")
    g.add_argument("--local-epochs", type=int, default=None,
                   help="epochs per round on each device (seed-mlp: 3, else 1)")
    g.add_argument("--batch-size", type=int, default=None, help="(seed-mlp: 16, else 32)")
    g.add_argument("--lr", type=float, default=None, help="client learning rate "
                   "(default: the file's own)")
    g.add_argument("--proximal-mu", type=float, default=0.01, help="FedProx's mu")
    g.add_argument("--server-lr", type=float, default=0.1, help="FedAdam's eta")
    g.add_argument("--trim-beta", type=float, default=0.2,
                   help="fedtrimmedavg: share of values cut off at each end")
    g.add_argument("--byzantine", type=int, default=1,
                   help="krum: number of clients assumed malicious")
    g.add_argument("--fraction-train", type=float, default=1.0,
                   help="share of devices asked to train in each round")
    g.add_argument("--fraction-evaluate", type=float, default=1.0,
                   help="share of devices that also evaluate the global model locally")
    g.add_argument("--round-timeout", type=float, default=600.0,
                   help="seconds a round waits for devices; it goes on with those that answered")
    g.add_argument("--save-updates", action="store_true",
                   help="keep every accepted update under OUT/updates")
    c = p.add_argument_group("checks on every client reply (a failing reply is dropped)")
    c.add_argument("--max-examples", type=int, default=10_000_000,
                   help="largest example count a reply may claim")
    c.add_argument("--max-update-norm", type=float, default=0.0,
                   help="largest L2 norm of a reply's update (0: no bound)")
    c.add_argument("--outlier-factor", type=float, default=10.0,
                   help="with 3+ replies: drop an update norm above this many times the "
                   "round's median, weight an example claim at most this many times the "
                   "median (0: off)")
    d = p.add_argument_group("privacy")
    d.add_argument("--dp", choices=("none", "server", "client"), default="none",
                   help="differential privacy: clip each update (on the server or on the "
                   "device) and add Gaussian noise to the aggregate")
    d.add_argument("--dp-noise", type=float, default=0.1, help="noise multiplier")
    d.add_argument("--dp-clip", type=float, default=1.0, help="clipping norm")
    d.add_argument("--secagg", action="store_true",
                   help="secure aggregation (SecAgg+): the server sees only the sum")
    d.add_argument("--secagg-shares", type=float, default=3.0,
                   help="SecAgg+ shares per secret (an int, or a fraction of the clients)")
    d.add_argument("--secagg-threshold", type=float, default=2.0,
                   help="SecAgg+ shares needed to reconstruct (an int, or a fraction)")


def _tls_args(p: argparse.ArgumentParser, server: bool) -> None:
    g = p.add_argument_group("transport security")
    g.add_argument("--insecure", action="store_true",
                   help="plain HTTP without TLS: only on 127.0.0.1 or a trusted network")
    if server:
        g.add_argument("--ssl-certfile", help="PEM certificate the SuperLink presents")
        g.add_argument("--ssl-keyfile", help="PEM private key of that certificate")
        g.add_argument("--ssl-ca-certfile", help="PEM of the CA that signed the certificate")
        g.add_argument("--authorized-supernodes", action="append", default=[],
                       metavar="KEYS.pub",
                       help="OpenSSH EC public keys (one per line; repeatable) of the only "
                       "SuperNodes allowed to join: Flower's SuperNode authentication "
                       "(needs TLS)")
    else:
        g.add_argument("--root-certificates", help="PEM of the CA that signed the SuperLink")
        g.add_argument("--auth-key", metavar="KEY",
                       help="this SuperNode's OpenSSH EC private key, whose public key the "
                       "server lists in --authorized-supernodes (needs TLS)")


def _settings(args: argparse.Namespace, seeded: bool) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "strategy": args.strategy, "proximal_mu": args.proximal_mu,
        "server_lr": args.server_lr, "fraction_train": args.fraction_train,
        "fraction_evaluate": args.fraction_evaluate, "round_timeout": args.round_timeout,
        "dp": args.dp, "dp_noise": args.dp_noise, "dp_clip": args.dp_clip,
        "secagg": args.secagg, "secagg_shares": args.secagg_shares,
        "secagg_threshold": args.secagg_threshold, "save_updates": args.save_updates,
        "max_examples": args.max_examples, "max_update_norm": args.max_update_norm,
        "outlier_factor": args.outlier_factor, "trim_beta": args.trim_beta,
        "byzantine": args.byzantine,
    }
    if args.lr is not None:
        kw["lr"] = args.lr
    epochs = args.local_epochs if args.local_epochs is not None else (3 if seeded else None)
    batch = args.batch_size if args.batch_size is not None else (16 if seeded else None)
    if epochs is not None:
        kw["local_epochs"] = epochs
    if batch is not None:
        kw["batch_size"] = batch
    return kw


def _check(flag: str, value: Any, ok: bool, want: str) -> None:
    if not ok:
        raise EdgetrainError(f"{flag} must be {want}, got {value!r}")


def _check_port(flag: str, port: int) -> None:
    _check(flag, port, 1 <= port <= 65535, "a port from 1 to 65535")


def _check_common(args: argparse.Namespace) -> None:
    """Every training and aggregation flag, before anything is written or started: a bad
    value would otherwise crash deep inside Flower or train nothing and exit 0."""
    from ._server import ServerSettings

    _check_positive("--lr", args.lr)
    for flag, value in (("--local-epochs", args.local_epochs),
                        ("--batch-size", args.batch_size)):
        if value is not None:
            _check(flag, value, value >= 1, "at least 1")
    ServerSettings(model="(checked later)", rounds=args.rounds,
                   **_settings(args, _seeded(args.file))).validate()


def _seeded(file: str | None) -> bool:
    from ._seed import SEED_NAME

    return file in (None, "", SEED_NAME)


def _model_file(file: str, out: str) -> str:
    """``file`` itself, or the seed MLP written into ``out``."""
    from ._seed import SEED_NAME, seed_trainable

    if _seeded(file):
        os.makedirs(out, exist_ok=True)
        path = os.path.abspath(os.path.join(out, f"{SEED_NAME}.onnx"))
        seed_trainable(path)
        return path
    if not os.path.isfile(file):
        raise EdgetrainError(f"trainable file not found: {file}")
    return os.path.abspath(file)


def _need_file(flag: str, path: str | None) -> None:
    if path is not None and not os.path.isfile(path):
        raise EdgetrainError(f"{flag}: file not found: {path}")


def _need_flwr() -> None:
    try:
        import flwr  # noqa: F401
    except ImportError as e:
        raise EdgetrainError("federated learning needs Flower: "
                             "pip install 'edgetrain[federated]'") from e


def _need_inputs(args: argparse.Namespace, flag: str, data: str | None) -> None:
    """The data file, the model file (unless it is the seed model) and Flower exist."""
    _need_file(flag, data)
    if not _seeded(args.file):
        _need_file("FILE", args.file)
    _need_flwr()


def _check_positive(flag: str, value: float | None, what: str = "a positive number") -> None:
    if value is not None:
        _check(flag, value, math.isfinite(value) and value > 0, what)


def cmd_simulate(args: argparse.Namespace) -> int:
    _check_common(args)
    _check("--clients", args.clients, args.clients >= 1, "at least 1")
    _check("--test-fraction", args.test_fraction, 0 < args.test_fraction < 1, "in (0, 1)")
    _check("--seed", args.seed, 0 <= args.seed < 2**32, "an integer from 0 to 2**32 - 1")
    _check_positive("--non-iid", args.non_iid)
    _need_inputs(args, "--data", args.data)
    from ._simulate import simulate

    seeded = _seeded(args.file)
    simulate(None if seeded else args.file, data=args.data, clients=args.clients,
             rounds=args.rounds, non_iid=args.non_iid, out_dir=args.out, seed=args.seed,
             test_fraction=args.test_fraction, plot=not args.no_plot, engine=args.engine,
             verbose=args.verbose, **_settings(args, seeded))
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    _check_common(args)
    _check_port("--port", args.port)
    _check("--min-clients", args.min_clients, args.min_clients >= 1, "at least 1")
    _check_positive("--timeout", args.timeout, "a positive number of seconds")
    _need_inputs(args, "--eval-data", args.eval_data)
    from ._deploy import TLS, read_public_keys, run_deployment_server
    from ._server import ServerSettings

    tls = TLS(insecure=args.insecure, certfile=args.ssl_certfile, keyfile=args.ssl_keyfile,
              ca_certfile=args.ssl_ca_certfile)
    tls.check(supernode_auth=bool(args.authorized_supernodes))
    keys = read_public_keys(args.authorized_supernodes)
    model = _model_file(args.file, args.out)
    min_clients = args.min_clients
    settings = ServerSettings(model=model, out_dir=os.path.abspath(args.out),
                              rounds=args.rounds, min_available=min_clients,
                              min_train=min(2, min_clients), min_evaluate=min(2, min_clients),
                              eval_data=os.path.abspath(args.eval_data) if args.eval_data
                              else "", **_settings(args, _seeded(args.file)))
    history = run_deployment_server(settings, host=args.host, port=args.port, tls=tls,
                                    superlink=args.superlink, timeout=args.timeout,
                                    authorized_keys=keys)
    print(f"global model: {settings.out_dir}/global.safetensors, "
          f"{settings.out_dir}/global.onnx")
    if "accuracy" in history[-1]:
        print(f"global accuracy: {history[-1]['accuracy']:.4f}")
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    _check_port("--port", args.port)
    if not args.insecure and not args.root_certificates:
        raise EdgetrainError("give --insecure (plain HTTP, only on a trusted network) or "
                             "--root-certificates CA.pem")
    if args.auth_key and (args.insecure or not args.root_certificates):
        raise EdgetrainError("--auth-key needs TLS: give --root-certificates CA.pem instead "
                             "of --insecure")
    _need_file("--root-certificates", args.root_certificates)
    extra: dict[str, Any] = {}
    for item in args.node_config:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EdgetrainError(f"--node-config takes KEY=VALUE, got {item!r}")
        extra[key.strip()] = _scalar(value.strip())
    _need_inputs(args, "--data", args.data)
    from ._deploy import check_private_key, supernode_command

    if args.auth_key:
        check_private_key(args.auth_key)
    model = _model_file(args.file, args.out)
    cmd = supernode_command(args.superlink, model, args.data, host=args.host, port=args.port,
                            insecure=args.insecure, root_certificates=args.root_certificates,
                            node_config=extra, auth_key=args.auth_key)
    sys.stdout.flush()
    sys.stderr.flush()
    # become the SuperNode: signals sent to this process reach Flower directly
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover - execv does not return


def _scalar(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text.strip('"')


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgetrain.federated …`` (the same as ``edgetrain federated …``)."""
    parser = argparse.ArgumentParser(prog="python -m edgetrain.federated")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    args = parser.parse_args(["federated", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except EdgetrainError as e:
        print(f"edgetrain: error: {e}", file=sys.stderr)
        return 2
