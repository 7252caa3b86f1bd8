"""Faults and hostile input: crash safety, fuzzed files, concurrency, format compatibility."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import threading
import time
from typing import Any

import numpy as np
import onnx
import pytest

import edgetrain as et
from edgetrain import format as fmt
from edgetrain.demos._models import seed_mlp
from edgetrain.format import _files as fmt_files

# kills and races processes
pytestmark = pytest.mark.slow

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _digest(params: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k]).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    tm = et.compile(seed_mlp(hidden=32), optimizer=et.optim.Adam(lr=0.01))
    return bytes(tm.proto.SerializeToString())


@pytest.fixture(scope="module")
def ckpt_bytes(model_bytes: bytes, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    m = et.load(model_bytes)
    rng = np.random.default_rng(0)
    m.run("train", x=rng.random((8, 8, 8), dtype=np.float32), y=rng.integers(0, 10, 8))
    path = tmp_path_factory.mktemp("ck") / "ck.safetensors"
    m.run("save", checkpoint_path=str(path))
    return path.read_bytes()


# -- crash safety ----------------------------------------------------------------------------

def _saver(model_bytes: bytes, folder: str, ready: mp.synchronize.Event) -> None:
    """Train and save in a loop; after each completed save, log the step and a digest."""
    m = et.load(model_bytes)
    rng = np.random.default_rng(os.getpid())
    path = os.path.join(folder, "ck.safetensors")
    log = os.open(os.path.join(folder, "log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    m.restore(path)
    ready.set()
    while True:
        m.run("train", x=rng.random((4, 8, 8), dtype=np.float32), y=rng.integers(0, 10, 4))
        # The line is ready before the save, so that a kill rarely lands between the save and
        # its log line (those trials are checked on the next one instead of exactly).
        line = f"{m.step} {_digest(m.parameters())}\n".encode()
        m.save(path)
        os.write(log, line)


def _temp_files(folder: str) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(".edgetrain-") and n.endswith(".tmp")]


def test_sigkill_during_save_never_loses_the_checkpoint(model_bytes: bytes, tmp_path,
                                                        monkeypatch) -> None:
    """≥100 SIGKILLs at random moments of repeated saves: the latest checkpoint always restores,
    and the temp files of killed writers do not pile up (the next save removes them)."""
    # Writers here die within milliseconds, so no grace period is needed to tell a dead
    # writer's file from a live one's (the forked savers inherit the setting).
    monkeypatch.setattr(fmt_files, "STALE_DEAD_WRITER", 0.0)
    ctx = mp.get_context("fork")
    rng = np.random.default_rng(1234)
    folder = str(tmp_path)
    first = et.load(model_bytes)
    first.save(os.path.join(folder, "ck.safetensors"))
    logged: dict[int, str] = {0: _digest(first.parameters())}
    trials, exact, most_temps = 100, 0, 0
    for trial in range(trials):
        ready = ctx.Event()
        p = ctx.Process(target=_saver, args=(model_bytes, folder, ready))
        p.start()
        assert ready.wait(30), "saver did not start"
        time.sleep(float(rng.uniform(0.0, 0.05)))
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        with open(os.path.join(folder, "log")) as f:
            for line in f.read().splitlines():
                step, digest = line.split()
                logged[int(step)] = digest
        m = et.load(model_bytes)
        m.restore(os.path.join(folder, "ck.safetensors"))  # must not raise
        step = m.step
        latest = max(logged)
        assert step in (latest, latest + 1), f"trial {trial}: restored step {step}, log {latest}"
        if step in logged:
            assert _digest(m.parameters()) == logged[step], f"trial {trial}: not bit-identical"
            exact += 1
        else:  # saved but killed before its log line: the next trial resumes from it
            logged[step] = _digest(m.parameters())
        most_temps = max(most_temps, len(_temp_files(folder)))
    # At most the last victims' files remain (a saver killed before its first save cleans
    # nothing), and the next save removes those too.
    assert most_temps <= 3, f"{most_temps} temp files piled up"
    first.save(os.path.join(folder, "ck.safetensors"))
    assert _temp_files(folder) == []
    # Most kills land between a save and its log line only rarely; nearly all are checked exactly.
    assert exact >= trials * 0.8


# -- hostile files ---------------------------------------------------------------------------
# Model files are fuzzed in test_fuzz_model.py; checkpoints here.

def _edit_meta(model_bytes: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    proto = fmt.load_model(model_bytes)
    meta = fmt.read_meta(proto)
    edit(meta)
    fmt.write_meta(proto, meta)
    return bytes(proto.SerializeToString())


# Model files are fuzzed in test_fuzz_model.py, checkpoints in test_fuzz_checkpoint.py.


# -- concurrency -----------------------------------------------------------------------------

def test_inference_during_training_sees_whole_weight_sets(model_bytes: bytes) -> None:
    m = et.load(model_bytes)
    rng = np.random.default_rng(7)
    x = rng.random((3, 8, 8), dtype=np.float32)
    snapshots = [m.parameters()]
    seen: list[np.ndarray] = []
    stop = threading.Event()

    def trainer() -> None:
        r = np.random.default_rng(8)
        for _ in range(60):
            m.run("train", x=r.random((16, 8, 8), dtype=np.float32), y=r.integers(0, 10, 16))
            snapshots.append(m.parameters())
        stop.set()

    def reader() -> None:
        while not stop.is_set():
            seen.append(m.run("infer", x=x)["logits"])

    threads = [threading.Thread(target=trainer)] + [threading.Thread(target=reader)
                                                    for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(seen) > 10
    oracle = et.load(model_bytes)
    expected = []
    for snap in snapshots:
        oracle.set_parameters(snap)
        expected.append(oracle.run("infer", x=x)["logits"])
    for out in seen:
        assert any(np.array_equal(out, e) for e in expected), "a half-updated weight set was used"


# -- compatibility ---------------------------------------------------------------------------

def test_newer_format_versions_are_refused(model_bytes: bytes, ckpt_bytes: bytes,
                                           tmp_path) -> None:
    newer_version = fmt.FORMAT_VERSION + 1
    newer = _edit_meta(model_bytes, lambda meta: meta.update(format_version=newer_version))
    with pytest.raises(et.FormatError, match=f"format version {newer_version}"):
        et.load(newer)
    n = int.from_bytes(ckpt_bytes[:8], "little")
    header = json.loads(ckpt_bytes[8:8 + n])
    header["__metadata__"]["format_version"] = str(newer_version)
    raw = json.dumps(header).encode()
    path = tmp_path / "new.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + ckpt_bytes[8 + n:])
    with pytest.raises(et.CheckpointError, match=f"format version {newer_version}"):
        et.load(model_bytes).restore(str(path))


@pytest.mark.parametrize("version", ["format_v1", "format_v2"])
def test_stored_fixtures_of_older_versions_keep_loading(version: str) -> None:
    """A file and checkpoint written by format version 1 or 2 load, restore, infer and train
    as recorded."""
    folder = os.path.join(FIXTURES, version)
    m = et.load(os.path.join(folder, "model.onnx"))
    m.restore(os.path.join(folder, "checkpoint.safetensors"))
    ref = np.load(os.path.join(folder, "expected.npz"))
    out = m.run("infer", x=ref["x"])["logits"]
    np.testing.assert_allclose(out, ref["logits"], rtol=1e-6, atol=1e-6)
    loss = m.run("train", x=ref["x"], y=ref["y"])["loss"]
    np.testing.assert_allclose(loss, ref["next_loss"], rtol=1e-6)


def test_version_2_checkpoints_restore_into_version_3_files(tmp_path: Any) -> None:
    """Format 3 moved the optimizer state out of the inference graph; the model's identity
    (what a checkpoint must match) did not change, so a version-2 checkpoint restores into
    the same model compiled today, and training goes on exactly as recorded."""
    from edgetrain.demos._models import seed_mlp

    folder = os.path.join(FIXTURES, "format_v2")
    old = onnx.load(os.path.join(folder, "model.onnx"))
    assert all(not ti.algorithm.initializer or not {t.name for t in ti.algorithm.initializer}
               & set(fmt.read_metadata(old).state) for ti in old.training_info)
    tm = et.compile(seed_mlp(hidden=16, seed=3), optimizer=et.optim.Adam(lr=0.01))
    assert tm.meta.format_version == fmt.FORMAT_VERSION == 3
    main = {t.name for t in tm.proto.graph.initializer}
    assert "edgetrain.step" not in main and not any(n.endswith(".exp_avg") for n in main)
    m = et.load(tm.save(tmp_path / "model.onnx"))
    assert m.identity.architecture == fmt.identify(old, fmt.read_metadata(old)).architecture
    m.restore(os.path.join(folder, "checkpoint.safetensors"))
    ref = np.load(os.path.join(folder, "expected.npz"))
    np.testing.assert_allclose(m.run("infer", x=ref["x"])["logits"], ref["logits"],
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.run("train", x=ref["x"], y=ref["y"])["loss"],
                               ref["next_loss"], rtol=1e-6)
