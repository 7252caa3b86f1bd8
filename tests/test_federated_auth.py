"""SuperNode authentication on a real deployment: a SuperLink with TLS and Flower's
``--enable-supernode-auth`` started by ``edgetrain federated server --authorized-supernodes``,
and SuperNodes started by ``edgetrain federated client``, all separate processes on 127.0.0.1.
Only SuperNodes holding a registered key join and train; the others are refused.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="needs the 'federated' extra (flwr)")

from _fed_procs import Procs, running_procs, wait_for
from edgetrain.federated import prepare_partitions, seed_trainable
from edgetrain.federated._deploy import free_port


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    span = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def builder(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey,
                ) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(span[0]).not_valid_after(span[1]))

    ca_key, key = (ec.generate_private_key(ec.SECP384R1()) for _ in range(2))
    ca = builder("test CA", "test CA", ca_key).add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(
        ca_key, hashes.SHA256())
    cert = builder("127.0.0.1", "test CA", key).add_extension(
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        critical=False).sign(ca_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    return (_write(folder / "ca.crt", ca.public_bytes(pem), 0o644),
            _write(folder / "server.pem", cert.public_bytes(pem), 0o644),
            _write(folder / "server.key", key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())))


def make_node_key(path: Path) -> tuple[Path, str]:
    """An OpenSSH EC P-384 key pair, as ``ssh-keygen -t ecdsa -b 384`` makes: (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    _write(path, key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return path, public


@pytest.fixture
def procs() -> Iterator[Procs]:
    yield from running_procs()


@pytest.mark.slow
def test_only_registered_supernodes_join(tmp_path: Path, procs: Procs) -> None:
    """Two SuperNodes with registered keys join and train; one with an unknown key and one
    with no key are refused by the SuperLink (and exit), so the round includes only the two."""
    model = str(tmp_path / "model.onnx")
    seed_trainable(model)
    pattern, heldout, _ = prepare_partitions(str(tmp_path), None, 4, None, seed=0)
    ca, cert, tls_key = make_tls(tmp_path)
    keys = [make_node_key(tmp_path / f"node{k}.key") for k in range(3)]
    authorized = tmp_path / "authorized_supernodes"
    authorized.write_text(f"# the devices of this federation\n{keys[0][1]}\n{keys[1][1]}\n")
    link_port = free_port()
    node_ports = [free_port() for _ in range(4)]
    procs.ports = [link_port, *node_ports]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    edgetrain = [sys.executable, "-m", "edgetrain.cli", "federated"]
    server_log = tmp_path / "server.log"
    server = procs.start(
        [*edgetrain, "server", model, "--port", str(link_port), "--ssl-certfile", str(cert),
         "--ssl-keyfile", str(tls_key), "--ssl-ca-certfile", str(ca),
         "--authorized-supernodes", str(authorized), "--rounds", "1", "--min-clients", "2",
         "--eval-data", heldout, "--out", str(out), "--fraction-evaluate", "0",
         "--local-epochs", "3", "--batch-size", "16", "--round-timeout", "60",
         "--timeout", "240"], server_log, env)
    wait_for(lambda: "2 key(s) registered" in server_log.read_text(errors="replace"), 90,
             "the keys to be registered", server, server_log)

    def node(k: int, key: Path | None) -> tuple[subprocess.Popen, Path]:
        args = [*edgetrain, "client", model, "--data", pattern.format(partition=k),
                "--superlink", f"127.0.0.1:{link_port}", "--root-certificates", str(ca),
                "--port", str(node_ports[k]), "--node-config", f"partition-id={k}"]
        log = tmp_path / f"node{k}.log"
        return procs.start(args + (["--auth-key", str(key)] if key else []), log,
                           {**env, "FLWR_HOME": str(tmp_path / f"flwr-node{k}")}), log

    # the refused ones first: were they let in, the first round would sample them too
    refused = [node(2, keys[2][0]), node(3, None)]
    for proc, log in refused:
        wait_for(lambda p=proc: p.poll() is not None, 90, "a refused SuperNode to exit",
                 log=log)
        text = log.read_text(errors="replace")
        assert proc.returncode != 0
        assert "could not establish a connection to the SuperLink" in text, text[-2000:]
    assert "Failed to activate SuperNode" in refused[0][1].read_text(errors="replace")
    assert "must be registered" in refused[1][1].read_text(errors="replace")
    joined = [node(0, keys[0][0]), node(1, keys[1][0])]
    server.wait(timeout=240)
    log = server_log.read_text(errors="replace")
    assert server.returncode == 0, log[-3000:]
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1]
    assert records[1]["train_replies"] == 2  # the two registered nodes, and only them
    assert records[1]["accuracy"] > records[0]["accuracy"] + 0.3
    for _, node_log in joined:
        assert node_log.read_text(errors="replace").count("Receiving: train") == 1
    link_log = (out / "superlink.log").read_text(errors="replace")
    assert link_log.count("[Fleet.ActivateNode] Activated node_id") == 2
    assert "ApiError:2001" in link_log and "ApiError:2004" in link_log  # the two refusals
