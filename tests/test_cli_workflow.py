"""The training workflow on the command line, run as a user runs it (a real subprocess per
command): a CSV with a label column, validation split, early stopping and the best checkpoint;
an image folder; weights from another optimizer's checkpoint; quiet output when redirected."""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgetrain.demos._data import digits
from edgetrain.demos._models import seed_mlp

# the command line end to end: each test compiles, trains and writes files
pytestmark = pytest.mark.slow

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def cli(*args: str, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgetrain.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"p{i}" for i in range(64)] + ["label"])
        for xi, yi in zip(x.reshape(len(x), 64), y):
            w.writerow([repr(float(v)) for v in xi] + [WORDS[yi]])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("workflow")
    x, y, xt, yt = digits()
    write_csv(d / "data.csv", x, y)
    write_csv(d / "test.csv", xt, yt)
    np.savez(d / "test.npz", x=xt, y=yt)
    onnx.save(seed_mlp(), str(d / "base.onnx"))
    return d


def epochs_of(stdout: str) -> list[dict[str, float]]:
    rows = []
    for line in stdout.splitlines():
        m = re.match(r"epoch \d+: (.*)", line)
        if m:
            parts = m.group(1).split()
            rows.append({k: float(v) for k, v in zip(parts[::2], parts[1::2])})
    return rows


def test_csv_validation_early_stopping_and_the_best_checkpoint(folder: Path,
                                                               tmp_path: Path) -> None:
    """The promised command works end to end: a CSV with named classes, 20 % held out, early
    stopping on val_loss and the best epoch's checkpoint, which a rerun only ever improves."""
    model = str(tmp_path / "model.onnx")
    ok(cli("compile", str(folder / "base.onnx"), "-o", model, "--optimizer", "adam",
           "--lr", "0.01"))
    out = ok(cli("train", model, "--data", str(folder / "data.csv"), "--target", "label",
                 "--val-split", "0.2", "--early-stopping", "--save-best", "--epochs", "60",
                 "--csv-log", str(tmp_path / "log.csv")))
    assert "classes: 0=eight, 1=five" in out
    rows = epochs_of(out)
    assert 4 <= len(rows) < 60, out  # stopped early
    assert all({"loss", "accuracy", "val_loss", "val_accuracy"} <= set(r) for r in rows)
    stop = re.search(r"val_loss did not improve for 3 epoch\(s\); stopped after epoch (\d+)", out)
    assert stop and int(stop.group(1)) == len(rows), out
    best = int(np.argmin([r["val_loss"] for r in rows]))
    assert best == len(rows) - 4  # patience 3: three epochs after the best one
    assert f"saved the best checkpoint {tmp_path / 'model.best.safetensors'} (epoch " \
           f"{best + 1}, val_loss {rows[best]['val_loss']:.4f})" in out, out
    assert len(list(csv.DictReader((tmp_path / "log.csv").open()))) == len(rows)
    record = json.loads((tmp_path / "model.best.json").read_text())
    assert record["monitor"] == "val_loss" and record["epoch"] == best + 1
    assert record["classes"] == sorted(WORDS)

    # The best checkpoint predicts the held-out CSV (class names as trained) …
    out = ok(cli("infer", model, "--data", str(folder / "test.csv"), "--target", "label",
                 "--checkpoint", str(tmp_path / "model.best.safetensors")))
    assert float(re.search(r"accuracy: (\d\.\d+)", out).group(1)) > 0.93  # type: ignore[union-attr]
    assert "predictions: ['six', 'six'" in out, out
    # … and the .npz form of the same data agrees (its labels are indices of sorted names).
    out = ok(cli("infer", model, "--data", str(folder / "test.npz"), "--no-checkpoint"))
    assert "predictions: [" in out

    # A rerun resumes, and replaces the best checkpoint only with a better one.
    before = (tmp_path / "model.best.safetensors").read_bytes()
    out = ok(cli("train", model, "--data", str(folder / "data.csv"), "--target", "label",
                 "--val-split", "0.2", "--save-best", "--epochs", "2", "--lr", "1e-9"))
    assert "resuming from" in out and "so far has val_loss" in out, out
    assert "is unchanged: no epoch beat its val_loss" in out, out
    assert (tmp_path / "model.best.safetensors").read_bytes() == before


def test_every_train_flag_is_explained() -> None:
    out = ok(cli("train", "--help"))
    for flag in ("--data", "--target", "--val-data", "--val-split", "--epochs", "--batch-size",
                 "--lr", "--schedule", "--seed", "--skip-nonfinite", "--metrics", "--monitor",
                 "--early-stopping", "--save-best", "--checkpoint", "--fresh", "--weights-from",
                 "--plot", "--csv-log", "--tensorboard", "--progress", "--backend"):
        assert re.search(re.escape(flag) + r"\b", out), flag
    for words in ("one folder of images per class", "seeded", "PATIENCE epochs",
                  "FILE.best.safetensors", "fresh optimizer state", "only on a terminal"):
        assert words in " ".join(out.split()), words


def test_image_folder_train_and_infer(tmp_path: Path) -> None:
    from PIL import Image

    x, y, xt, yt = digits()
    for name, xs, ys in (("train", x, y), ("test", xt, yt)):
        for i, (img, label) in enumerate(zip(xs, ys)):
            d = tmp_path / name / WORDS[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 255).round().astype(np.uint8), "L").resize(
                (32, 32), Image.Resampling.BILINEAR).save(d / f"{i}.png")
    model = str(tmp_path / "model.onnx")
    ok(cli("compile", str(folder_base(tmp_path)), "-o", model, "--lr", "0.05",
           "--momentum", "0.9"))
    out = ok(cli("train", model, "--data", str(tmp_path / "train"), "--epochs", "8"))
    assert epochs_of(out)[-1]["accuracy"] > 0.9, out
    out = ok(cli("infer", model, "--data", str(tmp_path / "test")))
    assert float(re.search(r"accuracy: (\d\.\d+)", out).group(1)) > 0.9  # type: ignore[union-attr]
    assert re.search(r"predictions: \['(zero|one|two|three|four|five|six|seven|eight|nine)'",
                     out), out


def folder_base(tmp_path: Path) -> Path:
    path = tmp_path / "base.onnx"
    onnx.save(seed_mlp(), str(path))
    return path


def test_weights_of_another_optimizer(folder: Path, tmp_path: Path) -> None:
    """FILE recompiled with Adam: its SGD checkpoint still serves infer and export (weights
    only), train refuses to resume it and names both ways out, and --weights-from works."""
    sgd, adam = str(tmp_path / "sgd.onnx"), str(tmp_path / "adam.onnx")
    ok(cli("compile", str(folder / "base.onnx"), "-o", sgd, "--lr", "0.05", "--momentum", "0.9"))
    ok(cli("compile", str(folder / "base.onnx"), "-o", adam, "--optimizer", "adam"))
    ok(cli("train", sgd, "--data", str(folder / "data.csv"), "--target", "label", "--epochs",
           "4"))
    ck = str(tmp_path / "sgd.ckpt.safetensors")
    out = ok(cli("infer", adam, "--data", str(folder / "test.csv"), "--target", "label",
                 "--checkpoint", ck))
    assert "using the weights of checkpoint" in out
    assert float(re.search(r"accuracy: (\d\.\d+)", out).group(1)) > 0.9  # type: ignore[union-attr]
    r = cli("train", adam, "--data", str(folder / "data.csv"), "--target", "label",
            "--checkpoint", ck)
    assert r.returncode == 2 and "--fresh" in r.stderr and "--weights-from" in r.stderr
    out = ok(cli("train", adam, "--data", str(folder / "data.csv"), "--target", "label",
                 "--weights-from", ck, "--lr", "1e-4"))
    assert "starting from the weights of" in out
    assert epochs_of(out)[0]["accuracy"] > 0.9  # it kept the SGD weights


def test_label_forms_and_hints_lead_to_working_commands(folder: Path, tmp_path: Path) -> None:
    """One-hot and index labels train either model form; a table without --target says how
    to name the label column, and that command works."""
    x, y, _, _ = digits()
    np.savez(tmp_path / "onehot.npz", x=x.astype(np.float64), y=np.eye(10)[y])
    np.savez(tmp_path / "index.npz", x=x, y=y.astype(np.int32))
    for labels in ("index", "onehot"):
        model = str(tmp_path / f"{labels}.onnx")
        ok(cli("compile", str(folder / "base.onnx"), "-o", model, "--labels", labels))
        for data in ("onehot.npz", "index.npz"):
            r = cli("train", model, "--data", str(tmp_path / data), "--fresh")
            assert r.returncode == 0 and r.stderr == "", (labels, data, r.stderr)
            notes = [line for line in r.stdout.splitlines() if line.startswith("note:")]
            assert len(notes) == 1 and "converted" in notes[0], r.stdout
    model = str(tmp_path / "index.onnx")
    r = cli("train", model, "--data", str(folder / "data.csv"))
    assert r.returncode == 2 and "--target COLUMN" in r.stderr, r.stderr
    r = cli("infer", model, "--data", str(folder / "test.csv"))
    assert r.returncode == 2 and "if it is the label column, name it (--target" in r.stderr
    ok(cli("infer", model, "--data", str(folder / "test.csv"), "--target", "label"))


def test_progress_is_quiet_unless_asked_and_rate_limited(folder: Path, tmp_path: Path) -> None:
    """450 steps with the output redirected: no bar at all by default; with --progress at
    most a few redraws (it used to be 40 KB, one line per step)."""
    model = str(tmp_path / "model.onnx")
    ok(cli("compile", str(folder / "base.onnx"), "-o", model))
    r = cli("train", model, "--data", str(folder / "data.csv"), "--target", "label",
            "--epochs", "10")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = cli("train", model, "--data", str(folder / "data.csv"), "--target", "label",
            "--epochs", "10", "--progress", "--fresh")
    assert r.returncode == 0 and "450" in r.stderr, r.stderr
    assert len(r.stderr) < 2000, len(r.stderr)


def test_plain_runtimes_open_exports_without_warnings(folder: Path, tmp_path: Path) -> None:
    """A plain onnxruntime session opens the trainable file and the exported inference model
    without a word: the optimizer state (4 momentum buffers and the step counter, which the
    main graph does not read) is stored with the train graph, not in the main graph."""
    model = str(tmp_path / "model.onnx")
    ok(cli("compile", str(folder / "base.onnx"), "-o", model, "--momentum", "0.9"))
    ok(cli("export", model, "-o", str(tmp_path / "plain.onnx"), "--no-checkpoint"))
    script = "import sys, onnxruntime as ort; ort.InferenceSession(sys.argv[1])"
    counts = {}
    for name in ("model.onnx", "plain.onnx"):
        r = subprocess.run([sys.executable, "-c", script, str(tmp_path / name)],
                           capture_output=True, text=True, timeout=120)
        counts[name] = r.stderr.count("Removing initializer")
    assert counts == {"model.onnx": 0, "plain.onnx": 0}


def test_demo_text_takes_out_like_the_others() -> None:
    from edgetrain.demos import seed, text, transfer

    assert text.parser().parse_args(["--out", "a"]).out == "a"
    assert text.parser().parse_args(["--out-dir", "b"]).out == "b"  # the old spelling
    assert transfer.parser().parse_args(["--out", "c"]).out == "c"
    assert seed.main.__module__  # the seed demo's --out is tested by test_cli
    ignored = subprocess.run(["git", "check-ignore", "edgetrain-demo/", "edgetrain-transfer/",
                              "edgetrain-text-demo/", "federated-sim/", "federated-server/",
                              "federated-client/"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
    assert len(ignored.stdout.split()) == 6, ignored.stdout


def test_federated_simulation_is_quiet_without_verbose(tmp_path: Path) -> None:
    """Flower's deprecation notice, Ray's FutureWarning and TensorFlow's start-up log (Flower
    imports TensorFlow when it is installed) stay behind --verbose."""
    pytest.importorskip("flwr")
    r = cli("federated", "simulate", "--clients", "2", "--rounds", "1", "--out",
            str(tmp_path / "sim"), "--no-plot")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    assert "global accuracy" in r.stdout


def test_validation_file_cosine_schedule_and_metrics(folder: Path, tmp_path: Path) -> None:
    """--val-data in CSV form is what the model is judged on after every epoch (the last
    epoch's val_accuracy is what infer then reports on the same file), --schedule cosine
    lowers the rate every epoch, and --metrics adds their val_ columns."""
    model = str(tmp_path / "model.onnx")
    ok(cli("compile", str(folder / "base.onnx"), "-o", model, "--lr", "0.05", "--momentum",
           "0.9"))
    out = ok(cli("train", model, "--data", str(folder / "data.csv"), "--target", "label",
                 "--val-data", str(folder / "test.csv"), "--schedule", "cosine", "--epochs",
                 "4", "--metrics", "f1", "top_3_accuracy"))
    rows = epochs_of(out)
    assert len(rows) == 4
    assert all({"val_loss", "val_accuracy", "val_f1", "val_top_3_accuracy", "lr"} <= set(r)
               for r in rows), out
    rates = [r["lr"] for r in rows]
    assert all(a > b for a, b in itertools.pairwise(rates)) and rates[0] < 0.05, rates
    assert all(r["val_top_3_accuracy"] >= r["val_accuracy"] for r in rows)
    out = ok(cli("infer", model, "--data", str(folder / "test.csv"), "--target", "label"))
    accuracy = float(re.search(r"accuracy: (\d\.\d+)", out).group(1))  # type: ignore[union-attr]
    assert abs(accuracy - rows[-1]["val_accuracy"]) < 1e-4, (accuracy, rows[-1])
    r = cli("train", model, "--data", str(folder / "data.csv"), "--target", "label",
            "--val-data", str(folder / "test.csv"), "--val-split", "0.2")
    assert r.returncode == 2 and "not both" in r.stderr, r.stderr
