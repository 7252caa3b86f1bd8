"""The documentation and the typed API: the docs site builds without a warning, the package
ships its types (a user's mypy catches a wrong argument), and every public module says what it
exports."""

from __future__ import annotations

import importlib
import pydoc
import subprocess
import sys
from pathlib import Path

import pytest

import edgetrain as et

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = ["edgetrain", "edgetrain.losses", "edgetrain.optim", "edgetrain.select",
                  "edgetrain.errors", "edgetrain.format", "edgetrain.runtime",
                  "edgetrain.training", "edgetrain.frontends", "edgetrain.web",
                  "edgetrain.federated", "edgetrain.callbacks", "edgetrain.data",
                  "edgetrain.training.metrics"]


@pytest.mark.slow
def test_docs_site_builds_strict(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link, a missing page or a docstring the API reference
    cannot render fails the build."""
    pytest.importorskip("mkdocstrings")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                          str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin",
                                           "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("compile", "TrainableModel", "fit", "CrossEntropy", "AdamW", "lora"):
        assert name in api


USER_SCRIPT = """
import numpy as np
import edgetrain as et

tm = et.compile("model.onnx", loss="cross_entropy", optimizer=et.optim.SGD(lr=0.1))
m = et.load("model.onnx")
history = m.fit(np.zeros((4, 3), np.float32), np.zeros(4, np.int64), epochs={epochs})
print(history.history["loss"][-1] + 1.0)
"""


@pytest.mark.slow
def test_users_mypy_checks_calls_into_edgetrain(tmp_path: Path) -> None:
    """py.typed ships, so mypy reads edgetrain's annotations in a user's script: fit(epochs="3")
    is reported, fit(epochs=3) is clean."""
    pytest.importorskip("mypy")
    assert (Path(et.__file__).parent / "py.typed").exists()
    for label, epochs in (("good", "3"), ("bad", '"3"')):
        (tmp_path / f"{label}.py").write_text(USER_SCRIPT.format(epochs=epochs))
    r = subprocess.run(  # one run over both scripts: mypy reads edgetrain's types once
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", str(tmp_path / "c"),
         "--python-version", "3.11", "good.py", "bad.py"], cwd=tmp_path, capture_output=True,
        text=True, timeout=600)
    assert r.returncode == 1, r.stdout
    errors = [line for line in r.stdout.splitlines() if ": error:" in line]
    assert errors and all(line.startswith("bad.py:") for line in errors), r.stdout
    results = {"bad": r}
    assert 'Argument "epochs"' in results["bad"].stdout and "int" in results["bad"].stdout


def test_help_on_compile_names_the_choices() -> None:
    text = pydoc.render_doc(et.compile, renderer=pydoc.plaintext)
    for word in ("cross_entropy", "mse", "bce_with_logits", "adamw", "momentum", "index",
                 "onehot", "head.*", "select.lora", "batch_norm", "multi_step"):
        assert word in text, word


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_public_modules_declare_their_exports(module: str) -> None:
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    assert names, f"{module} has no __all__"
    for name in names:
        assert hasattr(mod, name), f"{module}.__all__ names {name!r}, which it does not have"


def test_public_names_have_docstrings() -> None:
    missing = []
    for owner in (et.Model, et.TrainableModel):
        for name in dir(owner):
            if name.startswith("_"):
                continue
            attr = getattr(owner, name)
            if callable(attr) or isinstance(attr, property):
                if not (getattr(attr, "__doc__", None) or "").strip():
                    missing.append(f"{owner.__name__}.{name}")
    for name in et.__all__:
        obj = getattr(et, name)
        if callable(obj) and not (obj.__doc__ or "").strip():
            missing.append(name)
    assert not missing, missing


def test_version_lives_in_one_place() -> None:
    from importlib.metadata import version

    assert version("edgetrain") == et.__version__
    assert 'version = "' not in (ROOT / "pyproject.toml").read_text().split("[project]")[1] \
        .split("[")[0]
