"""Parity with PyTorch: same initial weights, same batches, 100 steps, losses and weights agree.

The model is the seed's MLP at digits size (flatten 8x8 -> 128 relu -> 10), exported with
``et.from_torch``; its weights are then copied from the torch module so both start equal. Each
step feeds the same mini-batch to edgetrain (stock onnxruntime) and to torch eager with the
matching ``torch.optim`` optimizer and ``torch.nn.functional`` loss.

Tolerance in float32: ``rtol=1e-5`` with ``atol=1e-7`` for the values near zero, where a
relative bound is meaningless (1e-7 is about one float32 ulp at magnitude 1, and 1e-5 relative
at a weight of 0.01). Different summation orders in the two runtimes' matmuls drift a few ulps
per step. Every case also runs in float64 with ``rtol=1e-9, atol=1e-12``: there rounding noise
vanishes, so any formula difference (a missing bias correction, a dampening detail, clipping's
epsilon) shows up by orders of magnitude.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
datasets = pytest.importorskip("sklearn.datasets")

import edgetrain as et  # noqa: E402

RTOL, ATOL = 1e-5, 1e-7
TOL = {np.float32: (RTOL, ATOL), np.float64: (1e-9, 1e-12)}
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
STEPS, BATCH, N_CLASSES = 100, 32, 10


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = datasets.load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def _mlp(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(),
                               torch.nn.Linear(128, N_CLASSES))


@dataclass
class Run:
    losses_et: np.ndarray
    losses_t: np.ndarray
    params_et: dict[str, np.ndarray]
    params_t: dict[str, np.ndarray]
    grad_norms: list[float]


def _train_pair(x_all: np.ndarray, targets: np.ndarray, optimizer: et.optim.Optimizer,
                torch_opt: Callable[[Any], Any], torch_loss: Callable[[Any, Any], Any],
                loss: Any = "cross_entropy", labels: str = "index",
                lrs: list[float] | None = None, clip: float | None = None,
                seed: int = 0, dtype: Any = np.float32) -> Run:
    """Train edgetrain and torch side by side on identical batches; collect both histories."""
    torch.set_num_threads(1)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    net = _mlp(seed).to(tdtype)
    x_all = x_all.astype(dtype)
    if targets.dtype.kind == "f":
        targets = targets.astype(dtype)
    tm = et.from_torch(copy.deepcopy(net), torch.zeros(2, 8, 8, dtype=tdtype), loss=loss,
                       optimizer=optimizer, labels=labels)
    m = et.load(tm.proto)
    m.set_parameters({k: v.detach().numpy().copy() for k, v in net.state_dict().items()})
    opt = torch_opt(net.parameters())
    rng = np.random.default_rng(seed)
    losses_et, losses_t, norms = [], [], []
    for step in range(STEPS):
        idx = rng.choice(len(x_all), BATCH, replace=False)
        xb, yb = x_all[idx], targets[idx]
        feeds: dict[str, Any] = {"x": xb, "y": yb}
        if lrs is not None:
            feeds["lr"] = np.asarray(lrs[step], dtype=dtype)
            for group in opt.param_groups:
                group["lr"] = lrs[step]
        losses_et.append(float(m.run("train", **feeds)["loss"]))
        opt.zero_grad()
        lt = torch_loss(net(torch.from_numpy(xb)), torch.from_numpy(yb))
        lt.backward()
        if clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(net.parameters(), clip)))
        opt.step()
        losses_t.append(float(lt.detach()))
    return Run(np.array(losses_et, dtype=dtype), np.array(losses_t, dtype=dtype),
               m.parameters(), {k: v.detach().numpy() for k, v in net.state_dict().items()},
               norms)


def _assert_parity(run: Run) -> None:
    rtol, atol = TOL[run.losses_et.dtype.type]
    np.testing.assert_allclose(run.losses_et, run.losses_t, rtol=rtol, atol=atol,
                               err_msg="per-step losses differ")
    assert run.params_et.keys() == run.params_t.keys()
    for name, want in run.params_t.items():
        assert run.params_et[name].dtype == run.losses_et.dtype
        np.testing.assert_allclose(run.params_et[name], want, rtol=rtol, atol=atol,
                                   err_msg=f"final weight {name!r} differs")
    # The run must have moved the weights, or the comparison proves nothing.
    start = _mlp().state_dict()
    moved = max(float(np.abs(run.params_t[k] - v.double().numpy()).max())
                for k, v in start.items())
    assert moved > 1e-3


def _onehot(y: np.ndarray) -> np.ndarray:
    return np.eye(N_CLASSES, dtype=np.float32)[y]


OPTIMIZERS: dict[str, tuple[et.optim.Optimizer, Callable[[Any], Any]]] = {
    "sgd": (et.optim.SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd_momentum": (et.optim.SGD(lr=0.05, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    "sgd_dampening": (et.optim.SGD(lr=0.05, momentum=0.9, dampening=0.3),
                      lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.3)),
    "sgd_nesterov": (et.optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    "sgd_weight_decay": (et.optim.SGD(lr=0.1, weight_decay=0.05),
                         lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.05)),
    "sgd_all": (et.optim.SGD(lr=0.05, momentum=0.8, dampening=0.1, weight_decay=0.01),
                lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.1,
                                          weight_decay=0.01)),
    "sgd_nesterov_wd": (et.optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
                        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                                  weight_decay=0.01)),
    "adam": (et.optim.Adam(lr=1e-3), lambda p: torch.optim.Adam(p, lr=1e-3)),
    "adam_wd_betas_eps": (
        et.optim.Adam(lr=2e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
        lambda p: torch.optim.Adam(p, lr=2e-3, betas=(0.8, 0.99), eps=1e-6,
                                   weight_decay=0.01)),
    "adamw_default_decay": (et.optim.AdamW(lr=1e-3), lambda p: torch.optim.AdamW(p, lr=1e-3)),
    "adamw_wd": (et.optim.AdamW(lr=3e-3, weight_decay=0.1, betas=(0.85, 0.995)),
                 lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.1, betas=(0.85, 0.995))),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_parity(name: str, dtype: Any, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    opt, torch_opt = OPTIMIZERS[name]
    run = _train_pair(x, y, opt, torch_opt, lambda o, t: F.cross_entropy(o, t), dtype=dtype)
    _assert_parity(run)
    assert run.losses_t[-10:].mean() < run.losses_t[:10].mean()  # it learned something


# loss name → (edgetrain loss, labels, torch loss, target kind, lr)
LOSSES: dict[str, tuple[Any, str, Callable[[Any, Any], Any], str, float]] = {
    "ce_index_mean": ("cross_entropy", "index", lambda o, t: F.cross_entropy(o, t), "index",
                      0.05),
    "ce_index_sum": (et.losses.CrossEntropy(reduction="sum"), "index",
                     lambda o, t: F.cross_entropy(o, t, reduction="sum"), "index", 0.002),
    "ce_index_smoothing": (et.losses.CrossEntropy(label_smoothing=0.1), "index",
                           lambda o, t: F.cross_entropy(o, t, label_smoothing=0.1), "index",
                           0.05),
    "ce_onehot_mean": ("cross_entropy", "onehot", lambda o, t: F.cross_entropy(o, t),
                       "onehot", 0.05),
    "ce_onehot_sum_smoothing": (
        et.losses.CrossEntropy(reduction="sum", label_smoothing=0.2), "onehot",
        lambda o, t: F.cross_entropy(o, t, reduction="sum", label_smoothing=0.2), "onehot",
        0.001),
    "mse_mean": ("mse", "index", lambda o, t: F.mse_loss(o, t), "regression", 0.02),
    "mse_sum": (et.losses.MSE(reduction="sum"), "index",
                lambda o, t: F.mse_loss(o, t, reduction="sum"), "regression", 1e-4),
    "l1_mean": ("l1", "index", lambda o, t: F.l1_loss(o, t), "regression", 0.05),
    "l1_sum": (et.losses.L1(reduction="sum"), "index",
               lambda o, t: F.l1_loss(o, t, reduction="sum"), "regression", 2e-4),
    "huber_mean": ("huber", "index", lambda o, t: F.huber_loss(o, t), "regression", 0.05),
    "huber_sum_delta": (et.losses.Huber(reduction="sum", delta=0.5), "index",
                        lambda o, t: F.huber_loss(o, t, reduction="sum", delta=0.5),
                        "regression", 2e-4),
    "bce_mean": ("bce_with_logits", "index",
                 lambda o, t: F.binary_cross_entropy_with_logits(o, t), "multilabel", 0.1),
    "bce_sum": (et.losses.BCEWithLogits(reduction="sum"), "index",
                lambda o, t: F.binary_cross_entropy_with_logits(o, t, reduction="sum"),
                "multilabel", 5e-4),
}


def _targets(kind: str, y: np.ndarray) -> np.ndarray:
    if kind == "index":
        return y
    if kind == "onehot":
        return _onehot(y)
    if kind == "multilabel":  # class and "class is even" as two independent labels
        t = _onehot(y)
        t[:, 0] = (y % 2 == 0).astype(np.float32)
        return t
    rng = np.random.default_rng(7)  # regression: a noisy scaled one-hot code
    return (_onehot(y) * 3.0 - 0.5 + 0.3 * rng.standard_normal((len(y), N_CLASSES))
            ).astype(np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_parity(name: str, dtype: Any, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    loss, labels, torch_loss, kind, lr = LOSSES[name]
    run = _train_pair(x, _targets(kind, y), et.optim.SGD(lr=lr, momentum=0.9),
                      lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9), torch_loss,
                      loss=loss, labels=labels, dtype=dtype)
    _assert_parity(run)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt_name", ["sgd_momentum", "adam", "adamw_default_decay"])
def test_clip_norm_parity(opt_name: str, dtype: Any,
                          digits: tuple[np.ndarray, np.ndarray]) -> None:
    """Global-norm clipping matches ``torch.nn.utils.clip_grad_norm_`` (and actually clips)."""
    x, y = digits
    base, torch_opt = OPTIMIZERS[opt_name]
    clip = 0.5
    opt = replace(base, clip_norm=clip)
    run = _train_pair(x, y, opt, torch_opt, lambda o, t: F.cross_entropy(o, t), clip=clip,
                      dtype=dtype)
    _assert_parity(run)
    assert sum(n > clip for n in run.grad_norms) >= 10, "clipping never engaged"
    assert opt.config()["clip_norm"] == clip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt_name", ["sgd_nesterov_wd", "adam", "adamw_wd"])
def test_lr_override_parity(opt_name: str, dtype: Any,
                            digits: tuple[np.ndarray, np.ndarray]) -> None:
    """The optional ``lr`` input overrides the rate per step, like editing torch's param_groups."""
    x, y = digits
    opt, torch_opt = OPTIMIZERS[opt_name]
    lrs = [opt.lr * (1.5 if s < 30 else 0.97 ** s) for s in range(STEPS)]
    run = _train_pair(x, y, opt, torch_opt, lambda o, t: F.cross_entropy(o, t), lrs=lrs,
                      dtype=dtype)
    # torch ran with the changed rates (never equal to the default), so matching it proves
    # the override took effect.
    assert all(lr != opt.lr for lr in lrs)
    _assert_parity(run)


def test_from_torch_exports_the_module(digits: tuple[np.ndarray, np.ndarray]) -> None:
    """from_torch keeps the module's weights and names, and infer reproduces its forward."""
    x, _ = digits
    net = _mlp(3)
    tm = et.from_torch(net, torch.zeros(2, 8, 8), loss="cross_entropy",
                       optimizer=et.optim.SGD(lr=0.1))
    assert net.training, "from_torch must restore the module's training mode"
    m = et.load(tm.proto)
    params = m.parameters()
    assert params.keys() == net.state_dict().keys()
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(params[k], v.numpy())
    assert m.signatures["infer"].inputs[0].name == "x"
    out = m.run("infer", x=x[:50])["logits"]
    with torch.no_grad():
        want = net(torch.from_numpy(x[:50])).numpy()
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=1e-6)
    # The batch dimension is dynamic: other batch sizes run too.
    assert m.run("infer", x=x[:3])["logits"].shape == (3, N_CLASSES)
