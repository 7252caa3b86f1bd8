"""A real deployment: a Flower SuperLink, SuperNodes on the devices, and the edgetrain app
submitted to the SuperLink with ``flwr run``.

Flower's own processes do the work (``flower-superlink``, ``flower-supernode``, ``flwr``);
this module writes the Flower App (a ``pyproject.toml`` whose components are
``edgetrain.federated.app``), a private Flower config naming the SuperLink, and starts, follows
and stops the processes. Runtime dependency installation is off: edgetrain must already be
installed where the ServerApp and ClientApps run, and nothing is fetched at run time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from ..errors import EdgetrainError
from ._server import ServerSettings
from ._simulate import round_line

__all__ = [
    "TLS",
    "check_private_key",
    "follow_metrics",
    "free_port",
    "read_public_keys",
    "register_supernodes",
    "run_deployment_server",
    "start_superlink",
    "stop_process",
    "superlink_command",
    "supernode_command",
    "wait_for_port",
    "write_app",
    "write_flwr_config",
]

CONNECTION = "edgetrain"


@dataclass(frozen=True)
class TLS:
    """Transport security: ``insecure`` (plain HTTP, for 127.0.0.1 and tests) or certificates."""

    insecure: bool = False
    certfile: str | None = None      # server certificate (SuperLink)
    keyfile: str | None = None       # server key (SuperLink)
    ca_certfile: str | None = None   # CA that signed it (SuperLink; clients as root certs)

    def check(self, supernode_auth: bool = False) -> None:
        if supernode_auth and self.insecure:
            raise EdgetrainError("SuperNode authentication (--authorized-supernodes) needs "
                                 "TLS: give --ssl-certfile, --ssl-keyfile and "
                                 "--ssl-ca-certfile instead of --insecure")
        if not self.insecure and not (self.certfile and self.keyfile):
            raise EdgetrainError("give --insecure (plain HTTP, only on a trusted network) or "
                                 "--ssl-certfile and --ssl-keyfile")
        for flag, path in (("--ssl-certfile", self.certfile), ("--ssl-keyfile", self.keyfile),
                           ("--ssl-ca-certfile", self.ca_certfile)):
            if not self.insecure and path and not os.path.isfile(path):
                raise EdgetrainError(f"{flag}: file not found: {path}")


def _exe(name: str) -> str:
    """A Flower console script, next to this interpreter when PATH does not have it."""
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if not found:
        raise EdgetrainError(f"{name!r} not found: pip install 'edgetrain[federated]'")
    return found


def write_app(app_dir: str, settings: ServerSettings, clientapp: str | None = None) -> str:
    """A Flower App folder (``pyproject.toml`` only) running edgetrain's apps with
    ``settings`` as its run config; returns the folder."""
    import tomli_w

    from .app import SERVER_COMPONENT, client_component

    os.makedirs(app_dir, exist_ok=True)
    config = {
        "project": {"name": "edgetrain-federated", "version": "1.0.0",
                    "description": "Federated training of an edgetrain trainable file",
                    "license": "Apache-2.0", "dependencies": []},
        "tool": {"flwr": {"app": {
            "publisher": "edgetrain",
            "components": {"serverapp": SERVER_COMPONENT,
                           "clientapp": clientapp or client_component(settings.dp,
                                                                      settings.secagg)},
            "config": settings.to_run_config(),
        }}},
    }
    path = os.path.join(app_dir, "pyproject.toml")
    with open(path, "wb") as f:
        f.write(tomli_w.dumps(config).encode())
    return app_dir


def write_flwr_config(flwr_home: str, address: str, tls: TLS) -> str:
    """The Flower CLI config (``$FLWR_HOME/config.toml``) with one connection to ``address``."""
    import tomli_w

    os.makedirs(flwr_home, exist_ok=True)
    conn: dict[str, Any] = {"address": address}
    if tls.insecure:
        conn["insecure"] = True
    elif tls.ca_certfile:
        conn["root-certificates"] = os.path.abspath(tls.ca_certfile)
    path = os.path.join(flwr_home, "config.toml")
    with open(path, "wb") as f:
        f.write(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}).encode())
    return path


def superlink_command(host: str, port: int, tls: TLS, supernode_auth: bool = False,
                      ) -> list[str]:
    """``flower-superlink``; with ``supernode_auth`` only SuperNodes whose public key was
    registered (``flwr supernode register``) may join."""
    cmd = [_exe("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    if supernode_auth:
        cmd.append("--enable-supernode-auth")
    if tls.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-certfile", str(tls.certfile), "--ssl-keyfile", str(tls.keyfile)]
        if tls.ca_certfile:
            cmd += ["--ssl-ca-certfile", tls.ca_certfile]
    return cmd


def supernode_command(superlink: str, model: str, data: str, *, host: str = "127.0.0.1",
                      port: int = 9094, insecure: bool = False,
                      root_certificates: str | None = None,
                      node_config: Mapping[str, Any] | None = None,
                      auth_key: str | None = None) -> list[str]:
    """``flower-supernode`` for one device holding ``model`` and its local ``data``; with
    ``auth_key`` (an OpenSSH EC private key) it authenticates to the SuperLink."""
    cfg = {"model": os.path.abspath(model), "data": os.path.abspath(data),
           **dict(node_config or {})}
    cmd = [_exe("flower-supernode"), "--superlink", superlink, "--host", host,
           "--port", str(port), "--node-config", " ".join(f"{k}={_toml(v)}"
                                                          for k, v in cfg.items())]
    if insecure:
        cmd.append("--insecure")
    elif root_certificates:
        cmd += ["--root-certificates", root_certificates]
    if auth_key:
        cmd += ["--auth-supernode-private-key", os.path.abspath(auth_key)]
    return cmd


# -- SuperNode authentication ------------------------------------------------------------------

_NIST_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def read_public_keys(paths: Sequence[str]) -> list[str]:
    """The OpenSSH EC public keys in ``paths`` (one per line, ``#`` comments and blank lines
    skipped, duplicates once), each checked as Flower will: an EC key on a NIST curve."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    keys: list[str] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read(1 << 20).splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise EdgetrainError(f"--authorized-supernodes: cannot read {path}: {e}") from e
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                key = serialization.load_ssh_public_key(line.encode())
            except Exception as e:  # cryptography raises several types for bad input
                raise EdgetrainError(f"{path}:{number}: not an OpenSSH public key ({e})") from e
            if not isinstance(key, ec.EllipticCurvePublicKey) or \
                    key.curve.name not in _NIST_CURVES:
                raise EdgetrainError(f"{path}:{number}: SuperNode keys must be EC keys on a "
                                     "NIST curve (ssh-keygen -t ecdsa -b 384)")
            if line not in keys:
                keys.append(line)
    if paths and not keys:
        raise EdgetrainError("--authorized-supernodes: no key found in "
                             f"{', '.join(paths)}")
    return keys


def check_private_key(path: str) -> None:
    """Refuse what ``flower-supernode --auth-supernode-private-key`` would refuse."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        with open(path, "rb") as f:
            key = serialization.load_ssh_private_key(f.read(1 << 20), None)
    except Exception as e:  # unreadable, encrypted, or not an OpenSSH private key
        raise EdgetrainError(f"--auth-key {path}: not an unencrypted OpenSSH private key "
                             f"({e})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise EdgetrainError(f"--auth-key {path}: SuperNode keys must be EC keys "
                             "(ssh-keygen -t ecdsa -b 384)")


def register_supernodes(keys: Sequence[str], flwr_home: str, folder: str) -> None:
    """``flwr supernode register`` every key on the connection in ``flwr_home``."""
    os.makedirs(folder, exist_ok=True)
    for k, key in enumerate(keys):
        path = os.path.join(folder, f"supernode_{k}.pub")
        with open(path, "w", encoding="utf-8") as f:
            f.write(key + "\n")
        r = subprocess.run([_exe("flwr"), "supernode", "register", path, CONNECTION],
                           capture_output=True, text=True, env=_env(flwr_home), timeout=120)
        if r.returncode != 0:
            tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
            raise EdgetrainError(f"registering SuperNode key {k + 1} failed: "
                                 f"{' '.join(tail)}")


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None,
                  ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EdgetrainError(f"the process serving {host}:{port} exited with code "
                                 f"{proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise EdgetrainError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def _env(flwr_home: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if flwr_home:
        env["FLWR_HOME"] = os.path.abspath(flwr_home)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start_superlink(host: str, port: int, tls: TLS, log_path: str,
                    flwr_home: str | None = None, timeout: float = 60.0,
                    supernode_auth: bool = False) -> subprocess.Popen:
    """Start ``flower-superlink`` in its own process group and wait until it listens."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(superlink_command(host, port, tls, supernode_auth), stdout=log,
                            stderr=subprocess.STDOUT, env=_env(flwr_home),
                            start_new_session=True)
    log.close()
    try:
        wait_for_port(host, port, timeout, proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process group (Flower's servers spawn helpers), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def follow_metrics(path: str, seen: int, stream: TextIO) -> int:
    """Print the per-round lines the ServerApp appended since the last call."""
    if not os.path.exists(path):
        return seen
    with open(path, encoding="utf-8") as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    for line in lines[seen:]:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            return seen
        print(round_line(r), file=stream, flush=True)
        seen += 1
    return seen


def _run_and_follow(cmd: list[str], flwr_home: str, metrics_path: str, run_log_path: str,
                    timeout: float | None, stream: TextIO) -> None:
    """Run ``flwr run`` to its end, printing each round the ServerApp records."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with open(run_log_path, "wb") as run_log:
        run = subprocess.Popen(cmd, stdout=run_log, stderr=subprocess.STDOUT,
                               env=_env(flwr_home), start_new_session=True)
        seen = 0
        try:
            while run.poll() is None:
                seen = follow_metrics(metrics_path, seen, stream)
                if deadline is not None and time.monotonic() > deadline:
                    raise EdgetrainError(f"the federated run did not finish within "
                                         f"{timeout:.0f} s (log: {run_log_path})")
                time.sleep(0.5)
        finally:
            stop_process(run)
        follow_metrics(metrics_path, seen, stream)


def run_deployment_server(settings: ServerSettings, *, host: str = "127.0.0.1",
                          port: int = 9093, tls: TLS | None = None,
                          superlink: str | None = None, timeout: float | None = None,
                          stream: TextIO | None = None,
                          flwr_args: Sequence[str] = (),
                          authorized_keys: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Start a SuperLink on ``host:port`` (or use ``superlink``), submit the edgetrain app
    with ``settings``, print each round as it lands, stop what was started.

    With ``authorized_keys`` (OpenSSH EC public keys) the SuperLink runs Flower's SuperNode
    authentication and only SuperNodes holding one of the matching private keys may join.

    Returns the per-round records; raises if the run does not finish all rounds.
    """
    stream = stream or sys.stdout
    tls = tls or TLS()
    tls.check(supernode_auth=bool(authorized_keys))
    settings.validate()
    out_dir = os.path.abspath(settings.out_dir)
    settings.out_dir = out_dir
    os.makedirs(out_dir, exist_ok=True)
    flwr_home = os.path.join(out_dir, "flwr-home")
    address = superlink or f"{host}:{port}"
    write_flwr_config(flwr_home, address, tls)
    app_dir = write_app(os.path.join(out_dir, "app"), settings)
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    if os.path.exists(metrics_path):
        os.remove(metrics_path)
    link = None
    if superlink is None:
        link = start_superlink(host, port, tls, os.path.join(out_dir, "superlink.log"),
                               flwr_home, supernode_auth=bool(authorized_keys))
        how = (" --root-certificates CA.pem --auth-key KEY" if authorized_keys else
               " --insecure" if tls.insecure else " --root-certificates CA.pem")
        print(f"SuperLink listening on {address} (log: {out_dir}/superlink.log); start "
              f"SuperNodes with: edgetrain federated client FILE --data DATA.npz "
              f"--superlink {address}{how}", file=stream, flush=True)
    run_log_path = os.path.join(out_dir, "run.log")
    try:
        if authorized_keys:
            register_supernodes(authorized_keys, flwr_home, os.path.join(out_dir, "auth"))
            print(f"SuperNode authentication: {len(authorized_keys)} key(s) registered; "
                  "other SuperNodes are refused", file=stream, flush=True)
        _run_and_follow([_exe("flwr"), "run", app_dir, CONNECTION, "--stream", *flwr_args],
                        flwr_home, metrics_path, run_log_path, timeout, stream)
    finally:
        if link is not None:
            stop_process(link)
    history = []
    if os.path.exists(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            history = [json.loads(ln) for ln in f if ln.strip()]
    if len(history) != settings.rounds + 1:
        raise EdgetrainError(f"the run ended after {max(len(history) - 1, 0)} of "
                             f"{settings.rounds} rounds; see {run_log_path}")
    return history
