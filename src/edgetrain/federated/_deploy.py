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
    "follow_metrics",
    "free_port",
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

    def check(self) -> None:
        if not self.insecure and not (self.certfile and self.keyfile):
            raise EdgetrainError("give --insecure (plain HTTP, only on a trusted network) or "
                                 "--ssl-certfile and --ssl-keyfile")


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


def superlink_command(host: str, port: int, tls: TLS) -> list[str]:
    cmd = [_exe("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
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
                      node_config: Mapping[str, Any] | None = None) -> list[str]:
    """``flower-supernode`` for one device holding ``model`` and its local ``data``."""
    cfg = {"model": os.path.abspath(model), "data": os.path.abspath(data),
           **dict(node_config or {})}
    cmd = [_exe("flower-supernode"), "--superlink", superlink, "--host", host,
           "--port", str(port), "--node-config", " ".join(f"{k}={_toml(v)}"
                                                          for k, v in cfg.items())]
    if insecure:
        cmd.append("--insecure")
    elif root_certificates:
        cmd += ["--root-certificates", root_certificates]
    return cmd


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
                    flwr_home: str | None = None, timeout: float = 60.0) -> subprocess.Popen:
    """Start ``flower-superlink`` in its own process group and wait until it listens."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(superlink_command(host, port, tls), stdout=log,
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


def run_deployment_server(settings: ServerSettings, *, host: str = "127.0.0.1",
                          port: int = 9093, tls: TLS | None = None,
                          superlink: str | None = None, timeout: float | None = None,
                          stream: TextIO | None = None,
                          flwr_args: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Start a SuperLink on ``host:port`` (or use ``superlink``), submit the edgetrain app
    with ``settings``, print each round as it lands, stop what was started.

    Returns the per-round records; raises if the run does not finish all rounds.
    """
    stream = stream or sys.stdout
    tls = tls or TLS()
    tls.check()
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
                               flwr_home)
        print(f"SuperLink listening on {address} (log: {out_dir}/superlink.log); start "
              f"SuperNodes with: edgetrain federated client FILE --data DATA.npz "
              f"--superlink {address}{' --insecure' if tls.insecure else ''}",
              file=stream, flush=True)
    run_log_path = os.path.join(out_dir, "run.log")
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        with open(run_log_path, "wb") as run_log:
            run = subprocess.Popen([_exe("flwr"), "run", app_dir, CONNECTION, "--stream",
                                    *flwr_args], stdout=run_log, stderr=subprocess.STDOUT,
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
            seen = follow_metrics(metrics_path, seen, stream)
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
