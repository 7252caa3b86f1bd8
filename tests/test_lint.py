"""The code base stays ruff- and mypy-clean (both configured in pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name: str) -> list[str]:
    if shutil.which(name) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (the test extra installs it)")
        pytest.skip(f"{name} is not installed")
    return [sys.executable, "-m", name]


def test_ruff_clean() -> None:
    r = subprocess.run([*_tool("ruff"), "check", "src", "tests", "benchmarks", "examples"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_clean() -> None:
    r = subprocess.run(_tool("mypy"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


#: Layers, lowest first: a module may import its own layer and those below, never above.
#: format ← IR/autodiff ← compiler ← runtime ← training ← compile API ← front-ends ← apps.
LAYERS = [
    {"errors", "_io", "_casting", "_datafile"},
    {"format"},
    {"_ir"},
    {"autodiff", "losses", "optim", "select", "_lora"},
    {"compiler"},
    {"runtime"},
    {"training", "data", "callbacks"},
    {"_api"},
    {"frontends", "iree_export"},
    {"cli", "web", "federated", "demos", "bench", "_args", "_cli_files", "_cli_train",
     "_torch_nets"},
    {"__init__"},
]


def _imports(path: str, package: list[str]) -> list[tuple[str, int]]:
    """The edgetrain modules a file imports (at any depth, lazy imports included)."""
    import ast

    with open(path) as f:
        tree = ast.parse(f.read())
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[:len(package) - node.level + 1]
            names = [node.module] if node.module else [a.name for a in node.names]
            found += [(".".join([*base, n]), node.lineno) for n in names]
        elif node.module and node.module.split(".")[0] == "edgetrain":
            found.append((node.module.partition(".")[2] or "__init__", node.lineno))
    return found


def test_layers_import_downward_only() -> None:
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    src = os.path.join(ROOT, "src", "edgetrain")
    wrong, unplaced = [], set()
    for folder, _, files in os.walk(src):
        for file in files:
            if not file.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, file), src)[:-3].split(os.sep)
            me = rel[0]
            unplaced |= {me} - set(rank)
            for target, line in _imports(os.path.join(folder, file), rel[:-1]):
                top = target.split(".")[0] or "__init__"
                if top != me and rank.get(top, -1) > rank.get(me, len(LAYERS)):
                    wrong.append(f"{'/'.join(rel)}.py:{line} imports {target}")
    assert not unplaced, f"modules with no layer (add them to LAYERS): {sorted(unplaced)}"
    assert not wrong, wrong


def test_mypy_strict_on_autodiff_and_format() -> None:
    # A cache of its own: the strict options would otherwise invalidate the plain run's cache
    # and each run would check everything again (50 s instead of 2 in a developer's loop).
    r = subprocess.run([*_tool("mypy"), "--strict", "--cache-dir", ".mypy_cache/strict",
                        "src/edgetrain/autodiff", "src/edgetrain/format"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_functions_stay_short_in_the_core() -> None:
    """No function over 60 lines in the compiler, the rules, the format or the runtime."""
    import ast

    long = []
    for part in ("compiler", "autodiff", "format", "runtime"):
        for folder, _, files in os.walk(os.path.join(ROOT, "src", "edgetrain", part)):
            for file in files:
                if not file.endswith(".py"):
                    continue
                path = os.path.join(folder, file)
                with open(path) as f:
                    tree = ast.parse(f.read())
                long += [f"{os.path.relpath(path, ROOT)}:{n.lineno} {n.name}"
                         for n in ast.walk(tree)
                         if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                         and n.end_lineno is not None and n.end_lineno - n.lineno + 1 > 60]
    assert not long, long
