"""The runtime conformance matrix: every driver × every model of ``_matrix_models``.

A cell passes when the driver trains the compiled file for 50 steps with losses equal to stock
onnxruntime's to 1e-5 (relative to max(1, |loss|)), and when checkpoints cross between it and
onnxruntime both ways mid-run and training goes on with the same losses. Drivers are entries
of ``DRIVERS``: a Python backend of ``et.load`` here; the JavaScript drivers (onnxruntime-web,
onnxruntime-node) join by adding an entry whose ``train`` runs them on the same file, batches
and checkpoints.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import edgetrain as et
from _matrix_models import MODELS, MatrixModel
from edgetrain.errors import BackendError, EdgetrainError

STEPS = 50
TOL = 1e-5


@dataclass(frozen=True)
class Driver:
    """How one runtime trains a compiled file (the matrix's column)."""

    name: str
    #: Python modules the driver needs (the cell is skipped, naming them, when absent).
    needs: tuple[str, ...]
    #: (model, steps, checkpoint to restore first or None, checkpoint to save after or None)
    #: → the losses of the steps.
    train: Callable[[MatrixModel, int, int, str | None, str | None], list[float]]


def _python_driver(backend: str, needs: tuple[str, ...] = ()) -> Driver:
    def train(mm: MatrixModel, steps: int, start: int, restore: str | None,
              save: str | None) -> list[float]:
        m = et.load(mm.proto, backend=backend)
        if restore:
            m.restore(restore)
        losses = [float(m.run("train", **mm.batch(start + i))["loss"]) for i in range(steps)]
        if save:
            m.save(save)
        return losses

    return Driver(backend, needs, train)


DRIVERS: dict[str, Driver] = {d.name: d for d in (
    _python_driver("reference"),
    _python_driver("iree", ("iree.runtime", "iree.compiler")),
    _python_driver("openvino", ("openvino",)),
    _python_driver("tract", ("tract",)),
)}
ORT = _python_driver("onnxruntime")


@pytest.fixture(scope="session", autouse=True)
def _private_module_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """IREE compiles into a cache of this test session, not the user's."""
    os.environ["EDGETRAIN_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgetrain-cache"))


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
        losses = ORT.train(mm, STEPS, 0, None, None)
        assert np.mean(losses[-10:]) < np.mean(losses[:10]), f"{mm.name} does not learn"
        _ort_losses[mm.name] = losses
    return _ort_losses[mm.name]


def _driver(name: str) -> Driver:
    d = DRIVERS[name]
    missing = [m for m in d.needs if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"driver {name} needs {missing}")
    return d


def _assert_same(got: list[float], want: list[float], what: str) -> None:
    diff = np.abs(np.asarray(got, np.float64) - want) / np.maximum(1.0, np.abs(want))
    assert len(got) == len(want)
    assert diff.max() <= TOL, f"{what}: step {int(diff.argmax())} differs by {diff.max():.2e}"


CELLS = [pytest.param(d, m, id=f"{d}-{m}", marks=pytest.mark.slow)
         for d in DRIVERS for m in MODELS]


@pytest.mark.parametrize(("driver", "model"), CELLS)
def test_losses_equal_onnxruntime(driver: str, model: str) -> None:
    d, mm = _driver(driver), _model(model)
    _assert_same(d.train(mm, STEPS, 0, None, None), _reference(mm), f"{driver} on {model}")


@pytest.mark.parametrize(("driver", "model"), CELLS)
def test_checkpoints_cross_with_onnxruntime(driver: str, model: str, tmp_path: Any) -> None:
    """Half the run on one runtime, a checkpoint, the other half on the other: both ways."""
    d, mm = _driver(driver), _model(model)
    want = _reference(mm)
    half = STEPS // 2
    mine, theirs = str(tmp_path / "driver.safetensors"), str(tmp_path / "ort.safetensors")
    first = d.train(mm, half, 0, None, mine)
    ORT.train(mm, half, 0, None, theirs)
    _assert_same(first + ORT.train(mm, half, half, mine, None), want,
                 f"{driver} → checkpoint → onnxruntime on {model}")
    _assert_same(want[:half] + d.train(mm, half, half, theirs, None), want,
                 f"onnxruntime → checkpoint → {driver} on {model}")


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
@pytest.mark.parametrize("driver", [d for d in DRIVERS if d != "reference"])
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
