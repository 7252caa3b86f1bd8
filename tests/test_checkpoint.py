"""Checkpoints: exact round trips across processes, foreign and corrupt files refused, and a
process killed while saving never destroys the previous checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgetrain as et
from _models import data, mlp
from edgetrain import format as fmt


def _trained(tmp_path: Path, steps: int = 5, **kw: Any) -> tuple[et.Model, str]:
    kw.setdefault("optimizer", et.optim.Adam(lr=3e-3))
    hidden = kw.pop("hidden", 128)
    dtype = kw.pop("dtype", np.float32)
    path = et.compile(mlp(hidden=hidden, dtype=dtype), **kw).save(tmp_path / "model.onnx")
    m = et.load(path)
    x, y = data(32, dtype=dtype)
    for _ in range(steps):
        m.run("train", x=x, y=y)
    return m, path


def _same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _python(script: str, *args: str, timeout: float = 120) -> None:
    subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], check=True,
                   timeout=timeout, env={**os.environ, "PYTHONHASHSEED": "0"})


FRESH_PROCESS = """
    import sys
    import numpy as np
    import edgetrain as et
    model, ck, io = sys.argv[1:4]
    feeds = dict(np.load(io + ".in.npz"))
    m = et.load(model)
    m.run("restore", checkpoint_path=ck)
    out = {"logits": m.run("infer", x=feeds["x"])["logits"]}
    out.update({"state/" + k: v for k, v in m.state().items()})
    out["loss"] = m.run("train", x=feeds["x"], y=feeds["y"])["loss"]
    out.update({"after/" + k: v for k, v in m.state().items()})
    np.savez(io + ".out.npz", **out)
"""


@pytest.mark.slow
def test_restore_in_a_fresh_process_is_bit_identical(tmp_path: Path) -> None:
    m, path = _trained(tmp_path, optimizer=et.optim.SGD(lr=0.05, momentum=0.9, nesterov=True))
    ck = m.run("save", checkpoint_path=str(tmp_path / "ck" / "a.safetensors"))["checkpoint_path"]
    assert os.path.exists(ck)
    x, y = data(20, seed=9)
    np.savez(tmp_path / "io.in.npz", x=x, y=y)
    _python(FRESH_PROCESS, path, ck, str(tmp_path / "io"))
    got = dict(np.load(tmp_path / "io.out.npz"))
    want_logits = m.run("infer", x=x)["logits"]
    np.testing.assert_array_equal(got["logits"], want_logits)
    _same_state({k[6:]: v for k, v in got.items() if k.startswith("state/")}, m.state())
    # Training continues exactly where it stopped: optimizer state and step came back too.
    loss = m.run("train", x=x, y=y)["loss"]
    np.testing.assert_array_equal(got["loss"], loss)
    _same_state({k[6:]: v for k, v in got.items() if k.startswith("after/")}, m.state())
    assert m.step == 6


def test_restore_across_backends_and_after_more_training(tmp_path: Path) -> None:
    m, path = _trained(tmp_path)
    saved = m.state()
    ck = m.save(tmp_path / "ck.safetensors")
    x, y = data(32)
    for _ in range(3):
        m.run("train", x=x, y=y)
    m.restore(ck)
    _same_state(m.state(), saved)
    ref = et.load(path, backend="reference")
    ref.restore(ck)
    _same_state(ref.state(), saved)
    np.testing.assert_allclose(ref.run("infer", x=x)["logits"], m.run("infer", x=x)["logits"],
                               rtol=1e-5, atol=1e-6)
    assert fmt.read_metadata(et.load(path).proto) == m.meta  # the model file itself is unchanged


@pytest.mark.parametrize("other, message", [
    ({"hidden": 64}, "'fc1.weight' is float32[64, 64] in the checkpoint but float32[128, 64] "
                     "in the model"),
    ({"dtype": np.float64}, "'fc1.bias' is float64[128] in the checkpoint but float32[128] "
                            "in the model; "),
    ({"dtype": np.float64}, "and 7 more tensors differ"),
    ({"optimizer": et.optim.SGD(lr=0.1)}, "missing tensors 'fc1.bias.exp_avg'"),
    ({"trainable": ["fc2.*"]}, "missing tensors 'fc1.bias', 'fc1.bias.exp_avg'"),
    ({"optimizer": et.optim.SGD(lr=0.1, momentum=0.9)},
     "unexpected tensors 'fc1.bias.momentum_buffer'"),
])
def test_checkpoint_of_another_model_is_refused(tmp_path: Path, other: dict[str, Any],
                                                message: str) -> None:
    m, _ = _trained(tmp_path / "mine")
    foreign, _ = _trained(tmp_path / "other", steps=1, **other)
    ck = foreign.save(tmp_path / "foreign.safetensors")
    before = m.state()
    with pytest.raises(et.CheckpointError) as info:
        m.restore(ck)
    text = str(info.value)
    assert "belongs to another model" in text and message in text, text
    _same_state(m.state(), before)


def _corruptions(good: bytes, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    n = len(good)
    header = 8 + int.from_bytes(good[:8], "little")
    cases = [("empty", b""), ("seven bytes", good[:7]), ("header only", good[:header]),
             ("garbage", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())]
    for cut in rng.integers(9, n - 1, 4):
        cases.append((f"truncated at {cut}", good[:cut]))
    positions = ([int(p) for p in rng.integers(0, 8, 2)]  # the header length
                 + [int(p) for p in rng.integers(8, header, 3)]  # the JSON header
                 + [int(p) for p in rng.integers(header, n, 6)])  # the tensor data
    for pos in positions:
        flipped = bytearray(good)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        cases.append((f"bit flipped at {pos}", bytes(flipped)))
    return cases


@pytest.mark.parametrize("backend", ["onnxruntime", "reference"])
def test_corrupt_checkpoints_are_refused(tmp_path: Path, backend: str) -> None:
    m, path = _trained(tmp_path)
    good = Path(m.save(tmp_path / "good.safetensors")).read_bytes()
    m = et.load(path, backend=backend)
    before = m.state()
    bad = tmp_path / "bad.safetensors"
    for what, blob in _corruptions(good, np.random.default_rng(11)):
        bad.write_bytes(blob)
        with pytest.raises(et.CheckpointError):
            m.restore(bad)
        _same_state(m.state(), before)
        assert what  # (named cases make a failure readable in the traceback's locals)
    bad.write_bytes(good[:-3] + bytes([good[-3] ^ 0x10]) + good[-2:])
    with pytest.raises(et.CheckpointError, match="fails its checksum"):
        m.restore(bad)
    with pytest.raises(et.CheckpointError, match=r"missing\.safetensors.* does not exist"):
        m.restore(tmp_path / "missing.safetensors")
    from safetensors.numpy import save_file

    save_file({"fc1.weight": np.zeros((128, 64), np.float32)}, str(bad))
    with pytest.raises(et.CheckpointError, match="not an edgetrain checkpoint"):
        m.restore(bad)
    m.restore(tmp_path / "good.safetensors")  # the good one still restores
    _same_state(m.state(), _trained(tmp_path / "again")[0].state())


SAVE_LOOP = """
    import sys
    import numpy as np
    import edgetrain as et
    model, ck, ready = sys.argv[1:4]
    m = et.load(model, backend="reference")  # the checkpoint is backend-independent
    base = m.parameters()
    k = 0
    while True:  # version k: every parameter is base + k, so a mix of versions shows
        m.set_parameters({n: v + np.float32(k) for n, v in base.items()})
        m.save(ck)
        if k == 0:
            open(ready, "w").close()
        k += 1
"""


@pytest.mark.slow
def test_sigkill_during_save_never_loses_the_previous_checkpoint(tmp_path: Path) -> None:
    """Children save in a loop and are killed at random moments: each time, the file at the
    path is a whole checkpoint of one version, and it restores."""
    trials, parallel = 12, 3
    # A bigger hidden layer, so a write takes long enough for kills to land inside it.
    m, path = _trained(tmp_path, steps=0, hidden=1024)
    base = m.parameters()
    rng = np.random.default_rng(2024)
    script = textwrap.dedent(SAVE_LOOP)
    versions = []
    for start in range(0, trials, parallel):
        procs = []
        for t in range(start, min(trials, start + parallel)):
            ck, ready = tmp_path / f"ck{t}.safetensors", tmp_path / f"ready{t}"
            procs.append((subprocess.Popen([sys.executable, "-c", script, path, str(ck),
                                            str(ready)]), ck, ready))
        for proc, ck, ready in procs:
            deadline = time.monotonic() + 60
            while not ready.exists():
                assert proc.poll() is None, "the saving child died on its own"
                assert time.monotonic() < deadline, "the saving child never got ready"
                time.sleep(0.01)
            time.sleep(float(rng.uniform(0.0, 0.3)))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
            m.restore(ck)  # raises if the file is not a whole, valid checkpoint
            params = m.parameters()
            k = float(params["fc2.bias"][0] - base["fc2.bias"][0])
            assert k == round(k) and k >= 0
            for name, v in params.items():
                np.testing.assert_array_equal(v, base[name] + np.float32(k), err_msg=name)
            versions.append(int(k))
    assert max(versions) > 0, "no kill landed after the first save"
