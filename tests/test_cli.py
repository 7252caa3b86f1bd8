"""The command line, run as a user runs it (a real subprocess per command).

Beyond the happy path: training is never lost by a rerun (``train`` resumes from FILE's default
checkpoint, ``--fresh`` keeps a backup), a missing ``--checkpoint`` is refused rather than
silently replaced by untrained weights, no command writes over one of its inputs, and every bad
argument, hostile data file or failed write ends in one ``edgetrain: error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgetrain.demos._data import digits
from edgetrain.demos._models import seed_mlp

# the command line end to end: each test compiles, trains and writes files
pytestmark = pytest.mark.slow


def cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgetrain.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("cli")
    onnx.save(seed_mlp(), str(d / "base.onnx"))
    x_tr, y_tr, x_te, y_te = digits()
    np.savez(d / "train.npz", x=x_tr, y=y_tr)
    np.savez(d / "test.npz", x=x_te, y=y_te)
    return str(d)


def test_compile_info_train_infer_export(workdir: str) -> None:
    j = lambda name: os.path.join(workdir, name)  # noqa: E731
    r = cli("compile", j("base.onnx"), "-o", j("model.onnx"), "--optimizer", "sgd",
            "--lr", "0.05", "--momentum", "0.9")
    assert r.returncode == 0, r.stderr
    assert "4 trainable" in r.stdout

    r = cli("info", j("model.onnx"))
    assert r.returncode == 0, r.stderr
    for word in ("train(", "infer(", "eval(", "save(", "restore(", "trainable: 4 tensors",
                 "optimizer: sgd"):
        assert word in r.stdout, r.stdout

    r = cli("train", j("model.onnx"), "--data", j("train.npz"), "--epochs", "5",
            "--checkpoint", j("ck.safetensors"), "--plot", j("train.png"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert os.path.exists(j("ck.safetensors")) and os.path.getsize(j("train.png")) > 1000
    losses = [float(v) for v in re.findall(r"loss (\d+\.\d+)", r.stdout)]
    assert len(losses) == 5 and losses[-1] < losses[0] / 3, r.stdout

    r = cli("infer", j("model.onnx"), "--data", j("test.npz"), "--checkpoint",
            j("ck.safetensors"), "-o", j("pred.npz"))
    assert r.returncode == 0, r.stderr
    acc = float(re.search(r"accuracy: (\d\.\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    assert acc > 0.9

    r = cli("export", j("model.onnx"), "--checkpoint", j("ck.safetensors"), "-o",
            j("plain.onnx"))
    assert r.returncode == 0, r.stderr
    plain = onnx.load(j("plain.onnx"))
    assert len(plain.training_info) == 0
    sess = ort.InferenceSession(j("plain.onnx"))
    logits = sess.run(None, {"x": np.load(j("test.npz"))["x"]})[0]
    np.testing.assert_array_equal(logits, np.load(j("pred.npz"))["logits"])

    # Training resumes from the checkpoint: the step count goes on.
    r = cli("train", j("model.onnx"), "--data", j("train.npz"), "--epochs", "1",
            "--checkpoint", j("ck.safetensors"), "--no-progress")
    assert r.returncode == 0 and "resuming from" in r.stdout, r.stderr
    steps = [int(s) for s in re.findall(r"step (\d+)", r.stdout)]
    assert steps[-1] > steps[0] > 0


def test_cli_errors_are_clear(workdir: str) -> None:
    j = lambda name: os.path.join(workdir, name)  # noqa: E731
    r = cli("info", j("base.onnx"))
    assert r.returncode == 2 and "not an edgetrain trainable file" in r.stderr
    r = cli("train", j("nope.onnx"), "--data", j("train.npz"))
    assert r.returncode == 2 and "no such file" in r.stderr
    np.savez(j("bad.npz"), features=np.zeros(3))
    cli("compile", j("base.onnx"), "-o", j("m2.onnx"))
    r = cli("train", j("m2.onnx"), "--data", j("bad.npz"))
    assert r.returncode == 2 and "lacks array(s) ['x', 'y']" in r.stderr
    r = cli("compile", j("base.onnx"), "-o", j("m3.onnx"), "--trainable", "nothing*")
    assert r.returncode == 2 and "matches no float initializer" in r.stderr


def test_demo_reaches_accuracy(tmp_path: os.PathLike[str]) -> None:
    r = cli("demo", "--out", str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr
    acc = float(re.search(r"test accuracy: (\d\.\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    assert acc >= 0.95, r.stdout
    for f in ("model.onnx", "checkpoint.safetensors", "training.png", "inference.onnx"):
        assert os.path.getsize(os.path.join(tmp_path, f)) > 0


# -- helpers ----------------------------------------------------------------------------------

def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> str:
    """Assert the run failed the way users are promised: exit 2, one stderr line, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgetrain: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def digests(folder: str) -> dict[str, str]:
    """Every file under ``folder`` with its SHA-256: what "nothing was touched" means."""
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def step_epoch(line_start: str, stdout: str) -> tuple[int, int]:
    m = re.search(re.escape(line_start) + r".*\(step (\d+), epoch (\d+)", stdout)
    assert m, stdout
    return int(m.group(1)), int(m.group(2))


@pytest.fixture()
def model_dir(workdir: str, tmp_path: os.PathLike[str]) -> str:
    """A fresh folder with a compiled trainable model.onnx and the digits data."""
    d = str(tmp_path)
    for f in ("base.onnx", "train.npz", "test.npz"):
        shutil.copy(os.path.join(workdir, f), d)
    r = cli("compile", os.path.join(d, "base.onnx"), "-o", os.path.join(d, "model.onnx"),
            "--lr", "0.05", "--momentum", "0.9")
    assert r.returncode == 0, r.stderr
    return d


# -- training is never lost -------------------------------------------------------------------

def test_train_resumes_from_the_default_checkpoint(model_dir: str) -> None:
    model, data = os.path.join(model_dir, "model.onnx"), os.path.join(model_dir, "train.npz")
    with open(model, "rb") as f:
        model_bytes = f.read()
    r = cli("train", model, "--data", data, "--epochs", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert step_epoch("saved", r.stdout) == (90, 2)
    ckpt = os.path.join(model_dir, "model.ckpt.safetensors")
    assert os.path.isfile(ckpt) and os.path.isfile(os.path.join(model_dir, "model.ckpt.json"))
    first_loss = float(re.findall(r"loss (\d+\.\d+)", r.stdout)[-1])

    r = cli("train", model, "--data", data, "--epochs", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert step_epoch("resuming from", r.stdout) == (90, 2)
    assert "epoch 3: " in r.stdout and "epoch 1: " not in r.stdout, r.stdout
    assert step_epoch("saved", r.stdout) == (135, 3)
    # A continued run starts where the last one stopped, not from the untrained weights.
    assert float(re.findall(r"loss (\d+\.\d+)", r.stdout)[-1]) < first_loss
    with open(model, "rb") as f:
        assert f.read() == model_bytes  # FILE itself is never written

    # Without its progress file (say, deleted) the epoch count is estimated from the step.
    os.remove(os.path.join(model_dir, "model.ckpt.json"))
    r = cli("train", model, "--data", data, "--epochs", "1", "--no-progress")
    assert r.returncode == 0 and "estimated from the step count" in r.stdout, r.stdout
    assert step_epoch("saved", r.stdout) == (180, 4)


def test_fresh_starts_over_and_keeps_a_backup(model_dir: str) -> None:
    model, data = os.path.join(model_dir, "model.onnx"), os.path.join(model_dir, "train.npz")
    ckpt = os.path.join(model_dir, "model.ckpt.safetensors")
    assert cli("train", model, "--data", data, "--epochs", "2", "--no-progress").returncode == 0
    with open(ckpt, "rb") as f:
        old = f.read()
    r = cli("train", model, "--data", data, "--fresh", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "resuming" not in r.stdout and "epoch 1: " in r.stdout, r.stdout
    assert step_epoch("saved", r.stdout) == (45, 1)
    backup = re.search(r"kept the previous checkpoint as (\S+)", r.stdout)
    assert backup, r.stdout
    with open(backup.group(1), "rb") as f:
        assert f.read() == old
    # The backup is a checkpoint like any other, with its progress file: it can be used again.
    r = cli("infer", model, "--data", os.path.join(model_dir, "test.npz"), "--checkpoint",
            backup.group(1))
    assert r.returncode == 0, r.stderr
    assert step_epoch("using checkpoint", r.stdout) == (90, 2)

    # Recompiled with another optimizer, FILE no longer fits its checkpoint: refused, with the
    # way out named; --fresh then keeps that checkpoint too.
    r = cli("compile", os.path.join(model_dir, "base.onnx"), "-o", model, "--optimizer", "adam")
    assert r.returncode == 0 and "note: " in r.stdout and "--fresh" in r.stdout, r.stdout
    with open(ckpt, "rb") as f:
        sgd_ckpt = f.read()
    one_line_error(cli("train", model, "--data", data, "--no-progress"),
                   "model.ckpt.safetensors", "pass --fresh")
    r = cli("train", model, "--data", data, "--fresh", "--no-progress")
    assert r.returncode == 0, r.stderr
    backup2 = re.search(r"kept the previous checkpoint as (\S+)", r.stdout)
    assert backup2 and backup2.group(1) != backup.group(1), r.stdout
    with open(backup2.group(1), "rb") as f:
        assert f.read() == sgd_ckpt


def test_infer_and_export_use_the_default_checkpoint(model_dir: str) -> None:
    j = lambda name: os.path.join(model_dir, name)  # noqa: E731
    assert cli("train", j("model.onnx"), "--data", j("train.npz"), "--epochs", "5",
               "--no-progress").returncode == 0
    r = cli("infer", j("model.onnx"), "--data", j("test.npz"), "-o", j("pred.npz"))
    assert r.returncode == 0, r.stderr
    assert step_epoch("using the default checkpoint", r.stdout) == (225, 5)
    acc = float(re.search(r"accuracy: (\d\.\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    assert acc > 0.9, r.stdout

    r = cli("infer", j("model.onnx"), "--data", j("test.npz"), "--no-checkpoint")
    assert r.returncode == 0 and "using the weights stored in" in r.stdout, r.stderr
    untrained = float(re.search(r"accuracy: (\d\.\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    assert untrained < 0.5

    r = cli("export", j("model.onnx"), "-o", j("plain.onnx"))
    assert r.returncode == 0 and "using the default checkpoint" in r.stdout, r.stderr
    logits = ort.InferenceSession(j("plain.onnx")).run(None, {"x": np.load(j("test.npz"))["x"]})[0]
    np.testing.assert_array_equal(logits, np.load(j("pred.npz"))["logits"])


@pytest.mark.parametrize("command", ["infer", "export", "export-web"])
def test_a_missing_checkpoint_is_refused(model_dir: str, command: str) -> None:
    j = lambda name: os.path.join(model_dir, name)  # noqa: E731
    before = digests(model_dir)
    args = {"infer": ["--data", j("test.npz"), "-o", j("pred.npz")],
            "export": ["-o", j("plain.onnx")], "export-web": [j("site")]}[command]
    r = cli(command, j("model.onnx"), *args, "--checkpoint", j("typo.safetensors"))
    one_line_error(r, "--checkpoint", "typo.safetensors", "does not exist")
    assert digests(model_dir) == before and not os.path.exists(j("site"))


def test_a_closed_output_pipe_does_not_cost_the_checkpoint(model_dir: str) -> None:
    """`edgetrain train … | head -1`: the reader leaves early, the training is still saved."""
    j = lambda name: os.path.join(model_dir, name)  # noqa: E731
    p = subprocess.Popen([sys.executable, "-m", "edgetrain.cli", "train", j("model.onnx"),
                          "--data", j("train.npz"), "--epochs", "2", "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.readline()
    p.stdout.close()  # like `head -1`
    err = p.stderr.read()
    assert p.wait(timeout=300) == 0 and "Traceback" not in err, err
    r = cli("infer", j("model.onnx"), "--data", j("test.npz"))
    assert step_epoch("using the default checkpoint", r.stdout) == (90, 2)


# -- no command writes over its own input -------------------------------------------------------

OVERWRITES = {
    "compile -o IN": ["compile", "base.onnx", "-o", "base.onnx"],
    "compile -o IN via ./": ["compile", "base.onnx", "-o", "./sub/../base.onnx"],
    "export -o FILE": ["export", "model.onnx", "-o", "model.onnx"],
    "export -o FILE via a hard link": ["export", "model.onnx", "-o", "hardlink.onnx"],
    "export -o FILE via a symlink": ["export", "model.onnx", "-o", "symlink.onnx"],
    "export -o the default checkpoint": ["export", "model.onnx", "-o", "model.ckpt.safetensors"],
    "export -o the progress file": ["export", "model.onnx", "-o", "model.ckpt.json"],
    "export -o --checkpoint": ["export", "model.onnx", "--checkpoint", "model.ckpt.safetensors",
                               "-o", "model.ckpt.safetensors"],
    "train --checkpoint FILE": ["train", "model.onnx", "--data", "train.npz", "--checkpoint",
                                "model.onnx"],
    "train --checkpoint DATA": ["train", "model.onnx", "--data", "train.npz", "--checkpoint",
                                "train.npz"],
    "train --plot FILE": ["train", "model.onnx", "--data", "train.npz", "--plot", "model.onnx"],
    "train --plot the checkpoint": ["train", "model.onnx", "--data", "train.npz", "--plot",
                                    "model.ckpt.safetensors"],
    "infer -o DATA": ["infer", "model.onnx", "--data", "test.npz", "-o", "test.npz"],
    "infer -o DATA without .npz": ["infer", "model.onnx", "--data", "test.npz", "-o", "test"],
    "export-web into FILE's folder": ["export-web", "model.onnx", "."],
    "export-web into a parent of FILE's folder": ["export-web", "sub/model2.onnx", "."],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(OVERWRITES))
def test_no_command_overwrites_its_input(model_dir: str, case: str) -> None:
    j = lambda name: os.path.join(model_dir, name)  # noqa: E731
    assert cli("train", j("model.onnx"), "--data", j("train.npz"), "--no-progress",
               cwd=model_dir).returncode == 0
    os.makedirs(j("sub"))
    shutil.copy(j("model.onnx"), j("sub/model2.onnx"))
    os.link(j("model.onnx"), j("hardlink.onnx"))
    os.symlink("model.onnx", j("symlink.onnx"))
    before = digests(model_dir)
    r = cli(*OVERWRITES[case], cwd=model_dir)
    line = one_line_error(r)
    assert "refusing to overwrite" in line or "could overwrite it" in line, line
    assert digests(model_dir) == before


def test_outputs_must_not_be_folders(model_dir: str) -> None:
    j = lambda name: os.path.join(model_dir, name)  # noqa: E731
    os.makedirs(j("out"))
    one_line_error(cli("export", j("model.onnx"), "-o", j("out")), "is a folder")
    one_line_error(cli("compile", j("base.onnx"), "-o", j("out")), "is a folder")
    os.makedirs(j("out.npz"))
    one_line_error(cli("infer", j("model.onnx"), "--data", j("test.npz"), "-o", j("out.npz")),
                   "is a folder")
    one_line_error(cli("export-web", j("model.onnx"), j("test.npz")), "is not a folder")
    one_line_error(cli("bench", "--json", j("out")), "is a folder")  # before any timing
    assert sorted(os.listdir(j("out"))) == [] and sorted(os.listdir(j("out.npz"))) == []


def test_compile_refuses_a_trainable_file(model_dir: str) -> None:
    j = lambda name: os.path.join(model_dir, name)  # noqa: E731
    r = cli("compile", j("model.onnx"), "-o", j("again.onnx"))
    one_line_error(r, "already a trainable edgetrain file")
    assert not os.path.exists(j("again.onnx"))


# -- bad arguments ----------------------------------------------------------------------------

BAD_ARGS = {
    "--epochs 0": (["train", "M", "--data", "D", "--epochs", "0"], "--epochs"),
    "--epochs -3": (["train", "M", "--data", "D", "--epochs", "-3"], "--epochs"),
    "--batch-size 0": (["train", "M", "--data", "D", "--batch-size", "0"], "--batch-size"),
    "--batch-size -1": (["train", "M", "--data", "D", "--batch-size", "-1"], "--batch-size"),
    "infer --batch-size 0": (["infer", "M", "--data", "D", "--batch-size", "0"], "--batch-size"),
    "--seed -1": (["train", "M", "--data", "D", "--seed", "-1"], "--seed"),
    "--lr nan": (["train", "M", "--data", "D", "--lr", "nan"], "--lr"),
    "--lr -1": (["train", "M", "--data", "D", "--lr", "-1"], "--lr"),
    "--epochs x": (["train", "M", "--data", "D", "--epochs", "x"], "--epochs"),
    "compile --momentum 1.5": (["compile", "B", "-o", "out.onnx", "--momentum", "1.5"],
                               "--momentum"),
    "bench --workloads W9": (["bench", "--workloads", "W9"], "W1, W2, W3, W4"),
    "bench --steps 0": (["bench", "--steps", "0"], "--steps"),
    "demo --epochs 0": (["demo", "--epochs", "0"], "--epochs"),
    "demo text --epochs 0": (["demo", "text", "--epochs", "0"], "--epochs"),
    "demo transfer --batch-size 0": (["demo", "transfer", "--batch-size", "0"], "--batch-size"),
    "demo nope": (["demo", "nope"], "unknown demo"),
    "unknown flag": (["train", "M", "--data", "D", "--epochz", "3"], "--epochz"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_arguments_are_one_line_errors(model_dir: str, case: str) -> None:
    args, word = BAD_ARGS[case]
    sub = {"M": "model.onnx", "D": "train.npz", "B": "base.onnx"}
    before = digests(model_dir)
    r = cli(*[sub.get(a, a) for a in args], cwd=model_dir)
    one_line_error(r, word)
    assert digests(model_dir) == before  # nothing written, no checkpoint, no plot


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action


def test_every_flag_has_help() -> None:
    from edgetrain.cli import build_parser
    from edgetrain.demos import text, transfer

    parsers = [(build_parser(), "edgetrain"), (text.parser(), "edgetrain demo text"),
               (transfer.parser(), "edgetrain demo transfer")]
    actions = [(path, a) for p, name in parsers for path, a in _walk(p, name)]
    assert len(actions) > 60  # the walk reached the sub-commands
    missing = [f"{path} {'/'.join(a.option_strings) or a.dest}" for path, a in actions
               if not (a.help or "").strip()]
    assert missing == []


# -- hostile and odd data files ---------------------------------------------------------------

def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def test_data_declaring_36_tib_is_refused_before_allocating(model_dir: str) -> None:
    j = lambda name: os.path.join(model_dir, name)  # noqa: E731
    huge = (36 << 40) // (64 * 4)  # float32 [huge, 8, 8] = 36 TiB
    with zipfile.ZipFile(j("huge.npz"), "w") as z:
        z.writestr("x.npy", _npy_header((huge, 8, 8)))
        z.writestr("y.npy", _npy_header((huge,), "<i8"))
    with zipfile.ZipFile(j("bomb.npz"), "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npy_header((huge, 8, 8)) + bytes(1 << 20))  # 1 MiB of real zeros
        z.writestr("y.npy", _npy_header((4,), "<i8") + bytes(32))
    with open(j("huge.npy"), "wb") as f:
        f.write(_npy_header((huge, 8, 8)))
    for cmd, data in (("train", "huge.npz"), ("train", "bomb.npz"), ("infer", "huge.npz"),
                      ("infer", "huge.npy")):
        r = cli(cmd, j("model.onnx"), "--data", j(data))
        one_line_error(r, data, "'x' declares shape", "but the file holds at most")


def test_data_file_forms(model_dir: str) -> None:
    j = lambda name: os.path.join(model_dir, name)  # noqa: E731
    x_te = np.load(j("test.npz"))["x"]
    np.save(j("x.npy"), x_te)
    r = cli("train", j("model.onnx"), "--data", j("x.npy"))
    one_line_error(r, "x.npy", "needs an .npz with arrays x, y")
    r = cli("infer", j("model.onnx"), "--data", j("x.npy"), "-o", j("pred.npz"))
    assert r.returncode == 0 and "predictions:" in r.stdout, r.stderr  # .npy serves as x
    assert np.load(j("pred.npz"))["logits"].shape == (len(x_te), 10)

    np.savez(j("empty.npz"), x=x_te[:0])
    one_line_error(cli("infer", j("model.onnx"), "--data", j("empty.npz")), "holds no samples")
    np.savez(j("short_y.npz"), x=x_te, y=np.zeros(3, np.int64))
    one_line_error(cli("train", j("model.onnx"), "--data", j("short_y.npz")), "'y' has shape")
    with open(j("text.npz"), "w") as f:
        f.write("x,y\n1,2\n")
    one_line_error(cli("infer", j("model.onnx"), "--data", j("text.npz")),
                   "neither an .npz nor an .npy")
    np.save(j("objects.npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    one_line_error(cli("infer", j("model.onnx"), "--data", j("objects.npy")),
                   "Python objects")
    os.mkfifo(j("fifo.npz"))  # must not block for ever
    one_line_error(cli("infer", j("model.onnx"), "--data", j("fifo.npz")),
                   "not a regular file")


# -- the file system says no ------------------------------------------------------------------

@pytest.fixture()
def small_fs(tmp_path: os.PathLike[str]) -> Iterator[str]:
    """A 128 KiB tmpfs: room for one checkpoint of the seed MLP (77 KiB), not two."""
    mnt = os.path.join(str(tmp_path), "small")
    os.makedirs(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", mnt],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({r.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)


def test_a_full_disk_is_a_clear_error_and_keeps_the_old_checkpoint(model_dir: str,
                                                                   small_fs: str) -> None:
    j = lambda name: os.path.join(model_dir, name)  # noqa: E731
    ckpt = os.path.join(small_fs, "ck.safetensors")
    r = cli("train", j("model.onnx"), "--data", j("train.npz"), "--checkpoint", ckpt,
            "--no-progress")
    assert r.returncode == 0, r.stderr
    with open(ckpt, "rb") as f:
        old = f.read()
    # The new checkpoint is written next to the old one before it replaces it: no room.
    r = cli("train", j("model.onnx"), "--data", j("train.npz"), "--checkpoint", ckpt,
            "--no-progress")
    one_line_error(r, "ck.safetensors", "No space left on device")
    with open(ckpt, "rb") as f:
        assert f.read() == old
    assert sorted(os.listdir(small_fs)) == ["ck.json", "ck.safetensors"]  # no temp file left
    with open(os.path.join(small_fs, "filler"), "wb", buffering=0) as f, \
            pytest.raises(OSError):
        while True:  # fill the rest: nothing fits now
            f.write(bytes(4096))
    r = cli("export", j("model.onnx"), "--checkpoint", ckpt, "-o",
            os.path.join(small_fs, "plain.onnx"))
    one_line_error(r, "No space left on device")


@pytest.fixture()
def read_only_dir(tmp_path: os.PathLike[str]) -> Iterator[str]:
    """A folder nobody may write: a read-only tmpfs as root (chmod does not stop root)."""
    d = os.path.join(str(tmp_path), "ro")
    os.makedirs(d)
    if os.geteuid() != 0:
        os.chmod(d, 0o555)
        yield d
        os.chmod(d, 0o755)
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", d],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"running as root and cannot mount a read-only tmpfs ({r.stderr.strip()})")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", d], check=False)


def test_a_read_only_folder_is_refused_before_training(model_dir: str,
                                                       read_only_dir: str) -> None:
    j = lambda name: os.path.join(model_dir, name)  # noqa: E731
    out = os.path.join(read_only_dir, "x")
    for args in (["train", j("model.onnx"), "--data", j("train.npz"), "--checkpoint", out],
                 ["export", j("model.onnx"), "-o", out],
                 ["infer", j("model.onnx"), "--data", j("test.npz"), "-o", out + ".npz"],
                 ["compile", j("base.onnx"), "-o", out]):
        r = cli(*args)
        one_line_error(r, "not writable")
        assert "epoch 1" not in r.stdout  # refused up front, no training thrown away
    assert os.listdir(read_only_dir) == []


def test_plot_without_matplotlib_names_the_extra(model_dir: str) -> None:
    j = lambda name: os.path.join(model_dir, name)  # noqa: E731
    hide = ("import sys; sys.modules['matplotlib'] = None; from edgetrain.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", hide, "train", j("model.onnx"), "--data",
                        j("train.npz"), "--plot", j("curve.png"), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    one_line_error(r, "--plot needs matplotlib", "pip install 'edgetrain[plot]'")
    assert not os.path.exists(j("model.ckpt.safetensors"))  # refused before training
