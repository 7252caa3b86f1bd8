"""The runtime conformance matrix: every driver × every model of ``_matrix_models``.

A cell passes when the driver trains the compiled file for 50 steps with losses equal to stock
onnxruntime's to 1e-5 (relative to max(1, |loss|)), and when checkpoints cross between it and
onnxruntime both ways mid-run and training goes on with the same losses. Drivers are entries
of ``DRIVERS``: a Python backend of ``et.load``, or a JavaScript driver (``_js_drivers``: the npm
package in js/ on onnxruntime-node, and in Chromium on onnxruntime-web's wasm build), which
trains the file's ``edgetrain export-web`` folder on the same batches and checkpoints.

A driver gets all of a cell's runs at once (``Job``s: the 50 steps; the first 25 saving a
checkpoint; the last 25 from onnxruntime's checkpoint), so a JavaScript driver starts node or
the browser once per model. Without their tools (node, the npm packages of js/ and web/,
Chromium: .ci/web-setup.sh) the JavaScript cells skip, naming what is missing, or fail when
CI=true.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import _js_drivers as js
import edgetrain as et
from _js_drivers import Job
from _matrix_models import MODELS, MatrixModel
from edgetrain.errors import BackendError, EdgetrainError

STEPS = 50
HALF = STEPS // 2
TOL = 1e-5


@dataclass(frozen=True)
class Driver:
    """How one runtime trains a compiled file (the matrix's column)."""

    name: str
    #: Python modules the driver needs (the cell is skipped, naming them, when absent).
    needs: tuple[str, ...]
    #: (model, jobs) → the losses of each job's steps; each job starts from the file's initial
    #: state (or the checkpoint it restores) and may save a checkpoint after its steps.
    train: Callable[[MatrixModel, Sequence[Job]], list[list[float]]]
    #: Other tools the driver needs: returns those missing (the cell skips naming them, or
    #: fails under CI=true, as the other tests of these tools do).
    missing: Callable[[], list[str]] = field(default=lambda: [])

    def train_one(self, mm: MatrixModel, job: Job) -> list[float]:
        return self.train(mm, [job])[0]


def _python_driver(backend: str, needs: tuple[str, ...] = ()) -> Driver:
    def train(mm: MatrixModel, jobs: Sequence[Job]) -> list[list[float]]:
        out = []
        for job in jobs:
            m = et.load(mm.proto, backend=backend)
            if job.restore:
                m.restore(job.restore)
            out.append([float(m.run("train", **mm.batch(job.start + i))["loss"])
                        for i in range(job.steps)])
            if job.save:
                m.save(job.save)
        return out

    return Driver(backend, needs, train)


def _js_driver(name: str, run: Callable[[js.Exports, MatrixModel, Sequence[Job]],
                                         list[list[float]]],
               missing: Callable[[], list[str]]) -> Driver:
    return Driver(name, (), lambda mm, jobs: run(_exports(), mm, jobs), missing)


DRIVERS: dict[str, Driver] = {d.name: d for d in (
    _python_driver("reference"),
    _python_driver("iree", ("iree.runtime", "iree.compiler")),
    _python_driver("openvino", ("openvino",)),
    _python_driver("tract", ("tract",)),
    _js_driver("onnxruntime-web", js.wasm_train, js.missing_wasm),
    _js_driver("onnxruntime-node", js.node_train, js.missing_node),
)}
ORT = _python_driver("onnxruntime")
JS_DRIVERS = ("onnxruntime-web", "onnxruntime-node")
PYTHON_DRIVERS = [d for d in DRIVERS if d not in JS_DRIVERS]
_export_root: list[js.Exports] = []


def _exports() -> js.Exports:
    assert _export_root, "the session fixture sets the export folder"
    return _export_root[0]


@pytest.fixture(scope="session", autouse=True)
def _private_folders(tmp_path_factory: pytest.TempPathFactory) -> None:
    """IREE compiles into a cache of this test session, not the user's; the JavaScript drivers'
    exports and runs go to a folder of the session too."""
    os.environ["EDGETRAIN_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgetrain-cache"))
    _export_root[:] = [js.Exports(tmp_path_factory.mktemp("js-exports"))]


_built: dict[str, MatrixModel | None] = {}
_ort_losses: dict[str, list[float]] = {}


def _model(name: str) -> MatrixModel:
    if name not in _built:
        _built[name] = MODELS[name]()
    mm = _built[name]
    if mm is None:
        pytest.skip(f"model {name} needs torch (and transformers): the test extra")
    return mm


def _reference(mm: MatrixModel) -> list[float]:
    """onnxruntime's 50 losses, which must also show that the model learns."""
    if mm.name not in _ort_losses:
        losses = ORT.train_one(mm, Job(STEPS))
        assert np.mean(losses[-10:]) < np.mean(losses[:10]), f"{mm.name} does not learn"
        _ort_losses[mm.name] = losses
    return _ort_losses[mm.name]


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _driver(name: str) -> Driver:
    d = DRIVERS[name]
    missing = [m for m in d.needs if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"driver {name} needs {missing}")
    tools = d.missing()
    if tools:
        msg = f"driver {name} needs {', '.join(tools)}; run .ci/web-setup.sh"
        if _ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return d


def _rel_diff(got: list[float], want: list[float]) -> np.ndarray:
    assert len(got) == len(want)
    diff: np.ndarray = np.abs(np.asarray(got, np.float64) - want) / \
        np.maximum(1.0, np.abs(want))
    return diff


def _assert_same(got: list[float], want: list[float], what: str) -> None:
    diff = _rel_diff(got, want)
    assert diff.max() <= TOL, f"{what}: step {int(diff.argmax())} differs by {diff.max():.2e}"


@dataclass
class Cell:
    """A driver's runs on a model: the 50 steps; the first half, saving ``checkpoint``; and the
    second half from onnxruntime's checkpoint after the first half."""

    losses: list[float]
    first: list[float]
    checkpoint: Path
    second: list[float]


_cells: dict[tuple[str, str], Cell] = {}


def _cell(driver: str, model: str, tmp_path_factory: pytest.TempPathFactory) -> Cell:
    """All of a cell's runs in one call of the driver (one node, one browser per model)."""
    d, mm = _driver(driver), _model(model)
    if (driver, model) not in _cells:
        where = tmp_path_factory.mktemp(f"{driver}-{model}")
        mine, theirs = where / "driver.safetensors", where / "ort.safetensors"
        ORT.train_one(mm, Job(HALF, save=str(theirs)))
        losses, first, second = d.train(mm, [Job(STEPS), Job(HALF, save=str(mine)),
                                             Job(HALF, HALF, restore=str(theirs))])
        _cells[driver, model] = Cell(losses, first, mine, second)
    return _cells[driver, model]


CELLS = [pytest.param(d, m, id=f"{d}-{m}", marks=pytest.mark.slow)
         for d in DRIVERS for m in MODELS]


@pytest.mark.parametrize(("driver", "model"), CELLS)
def test_losses_equal_onnxruntime(driver: str, model: str,
                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    cell, want = _cell(driver, model, tmp_path_factory), _reference(_model(model))
    print(f"{driver} on {model}: largest relative loss difference "
          f"{_rel_diff(cell.losses, want).max():.1e}")
    _assert_same(cell.losses, want, f"{driver} on {model}")


@pytest.mark.parametrize(("driver", "model"), CELLS)
def test_checkpoints_cross_with_onnxruntime(driver: str, model: str,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """Half the run on one runtime, a checkpoint, the other half on the other: both ways."""
    cell, mm = _cell(driver, model, tmp_path_factory), _model(model)
    want = _reference(mm)
    on_ort = ORT.train_one(mm, Job(HALF, HALF, restore=str(cell.checkpoint)))
    _assert_same(cell.first + on_ort, want, f"{driver} → checkpoint → onnxruntime on {model}")
    _assert_same(want[:HALF] + cell.second, want,
                 f"onnxruntime → checkpoint → {driver} on {model}")


@pytest.mark.parametrize("driver", JS_DRIVERS)
def test_js_driver_names_missing_tools(driver: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without node (or the npm packages, or Chromium) a JavaScript cell says what is missing:
    a skip on a developer's machine, a failure under CI=true."""
    monkeypatch.setattr(js.shutil, "which", lambda name: None)
    monkeypatch.setattr(js, "JS", Path("/nonexistent"))
    monkeypatch.setattr(js, "WEB", Path("/nonexistent"))
    monkeypatch.setattr(js, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as e:
        _driver(driver)
    msg = str(e.value)
    assert "node (Debian package nodejs)" in msg and "onnxruntime-web (npm ci --prefix web)" in msg
    if driver == "onnxruntime-node":
        assert "onnxruntime-node (ONNXRUNTIME_NODE_INSTALL=skip npm ci --prefix js)" in msg
    else:
        assert "playwright-core" in msg and "/nonexistent/chromium" in msg
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"driver {driver} needs node"):
        _driver(driver)


# -- refusals and errors -------------------------------------------------------------------


def test_unknown_backend_lists_the_native_ones() -> None:
    with pytest.raises(EdgetrainError, match=r"iree.*openvino.*reference.*tract"):
        et.load(MODELS["mlp_sgd"]().proto, backend="tensorrt")


def test_missing_runtime_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend whose runtime is not installed says which extra installs it."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(BackendError, match=r"pip install 'edgetrain\[openvino\]'"):
        et.load(MODELS["mlp_sgd"]().proto, backend="openvino")


@pytest.mark.skipif(importlib.util.find_spec("iree.runtime") is None, reason="needs IREE")
def test_iree_refuses_a_module_cache_others_can_write(tmp_path: Any) -> None:
    """Modules are machine code: a cache another user could write to is not used."""
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    with pytest.raises(BackendError, match="not private"):
        et.load(MODELS["mlp_sgd"]().proto, backend="iree", cache_dir=str(cache))


@pytest.mark.skipif(importlib.util.find_spec("iree.runtime") is None, reason="needs IREE")
def test_iree_backend_runs_host_modules_only() -> None:
    with pytest.raises(BackendError, match="export-iree"):
        et.load(MODELS["mlp_sgd"]().proto, backend="iree", target="metal")


@pytest.mark.slow
@pytest.mark.parametrize("driver", [d for d in PYTHON_DRIVERS if d != "reference"])
def test_infer_eval_and_fit_on_the_backend(driver: str) -> None:
    """The other signatures too, and ``fit`` with a short last batch (a second batch size)."""
    _driver(driver)
    mm = _model("cnn_adam")
    x = np.concatenate([b["x"] for b in mm.batches])
    y = np.concatenate([b["y"] for b in mm.batches])
    ours, theirs = et.load(mm.proto, backend=driver), et.load(mm.proto)
    np.testing.assert_allclose(ours.run("infer", x=x[:5])["logits"],
                               theirs.run("infer", x=x[:5])["logits"], rtol=1e-5, atol=1e-6)
    got, want = ours.evaluate(x, y, batch_size=12), theirs.evaluate(x, y, batch_size=12)
    assert got.keys() == want.keys() == {"loss", "accuracy"}
    for k in got:
        assert abs(got[k] - want[k]) <= 1e-5 * max(1.0, abs(want[k]))
    h1 = ours.fit(x, y, epochs=2, batch_size=12, progress=False)
    h2 = theirs.fit(x, y, epochs=2, batch_size=12, progress=False)
    _assert_same(h1["loss"], h2["loss"], f"fit on {driver}")
    assert ours.step == theirs.step == 6


@pytest.mark.slow
@pytest.mark.parametrize("backend,needs,exact", [("openvino", "openvino", False),
                                                 ("tract", "tract", True),
                                                 ("iree", "iree.compiler", True)])
def test_native_runtimes_run_train_steps_unrolled(backend: str, needs: str, exact: bool) -> None:
    """The native runtimes run ``train_steps`` as its Scan unrolled for the call's K: the
    state of K single steps on the same runtime, bit for bit on IREE and tract (OpenVINO
    compiles the K-step graph's arithmetic differently: within float32 rounding); fit calls
    it with whole groups."""
    pytest.importorskip(needs)
    from _models import data, mlp

    tm = et.compile(mlp(hidden=16), optimizer=et.optim.SGD(lr=0.1, momentum=0.9))
    one, many = et.load(tm.proto, backend=backend), et.load(tm.proto, backend=backend)
    assert many.multi_step
    x, y = data(32)
    xs, ys = x.reshape(4, 8, 8, 8), y.reshape(4, 8)
    for xb, yb in zip(xs, ys):
        one.run("train", x=xb, y=yb, lr=np.float32(0.1))
    many.run("train_steps", x=xs, y=ys, lr=np.full(4, 0.1, np.float32))
    for k, v in one.state().items():
        if exact:
            np.testing.assert_array_equal(many.state()[k], v, err_msg=k)
        else:
            np.testing.assert_allclose(many.state()[k], v, rtol=1e-5, atol=1e-7, err_msg=k)
    many.steps_per_call = 4
    many.fit(x, y, epochs=1, batch_size=8, progress=False)
    assert many.step == 8
