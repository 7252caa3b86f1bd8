"""The runtime: backends agree, bad input is refused before it can touch the weights, the step
graph guards against non-finite updates, fit() trains, Dropout trains and infers correctly."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

import edgetrain as et
from _models import CLASSES, data, forward, mlp
from edgetrain import format as fmt
from edgetrain.data import DataConversionWarning

BACKENDS = ["onnxruntime", "reference"]


def _model(backend: str = "onnxruntime", **kw: Any) -> et.Model:
    dropout = kw.pop("dropout", None)
    dtype = kw.pop("dtype", np.float32)
    kw.setdefault("optimizer", et.optim.SGD(lr=0.1, momentum=0.9))
    return et.compile(mlp(dropout=dropout, dtype=dtype), **kw).load(backend)


def _same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# -- backends --------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    {"optimizer": et.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)},
    {"optimizer": et.optim.Adam(lr=3e-3, weight_decay=1e-3)},
    {"optimizer": et.optim.AdamW(lr=3e-3, clip_norm=0.5),
     "loss": et.losses.CrossEntropy(label_smoothing=0.1)},
    {"optimizer": et.optim.SGD(lr=0.05), "loss": "huber"},
], ids=["sgd_nesterov", "adam", "adamw_clip", "huber"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_onnxruntime_and_reference_agree_over_10_steps(kw: dict[str, Any], dtype: Any) -> None:
    """Within rtol=1e-5 (atol=1e-7 for values near zero) in float32; in float64, where the
    rounding noise of different summation orders vanishes, within 1e-10."""
    rtol, atol = (1e-5, 1e-7) if dtype == np.float32 else (1e-10, 1e-13)
    ms = {b: _model(b, dtype=dtype, **kw) for b in BACKENDS}
    rng = np.random.default_rng(5)
    x, y = data(80, dtype=dtype)
    if kw.get("loss") == "huber":
        y = rng.standard_normal((80, CLASSES)).astype(dtype)
    for step in range(10):
        idx = rng.choice(80, 16, replace=False)
        feeds: dict[str, Any] = {"x": x[idx], "y": y[idx]}
        if step >= 5:
            feeds["lr"] = 0.5 * ms["onnxruntime"].meta.optimizer.lr
        losses = {b: m.run("train", **feeds)["loss"] for b, m in ms.items()}
        assert losses["onnxruntime"].dtype == dtype
        np.testing.assert_allclose(losses["onnxruntime"], losses["reference"], rtol=rtol,
                                   atol=atol)
    states = {b: m.state() for b, m in ms.items()}
    assert states["onnxruntime"].keys() == states["reference"].keys()
    for k, v in states["reference"].items():  # weights, optimizer state and step count
        np.testing.assert_allclose(states["onnxruntime"][k], v, rtol=rtol, atol=atol,
                                   err_msg=k)
    assert int(states["reference"][fmt.STEP_NAME]) == 10
    outs = {b: m.run("infer", x=x)["logits"] for b, m in ms.items()}
    # A logit near zero is a cancelling sum of terms of the logits' own magnitude: its rounding
    # error is relative to that scale, not to itself.
    scale = float(np.abs(outs["reference"]).max())
    np.testing.assert_allclose(outs["onnxruntime"], outs["reference"], rtol=rtol,
                               atol=rtol * scale)
    evals = {b: m.run("eval", x=x, y=y) for b, m in ms.items()}
    for k, v in evals["reference"].items():
        np.testing.assert_allclose(evals["onnxruntime"][k], v, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_infer_eval_and_parameters(backend: str) -> None:
    m = _model(backend)
    x, y = data(40)
    for _ in range(3):
        m.run("train", x=x, y=y)
    params = m.parameters()
    assert list(params) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    logits = m.run("infer", x=x)["logits"]
    np.testing.assert_allclose(logits, forward(params, x), rtol=1e-5, atol=1e-5)
    ev = m.run("eval", x=x, y=y)
    want_acc = float(np.mean(logits.argmax(1) == y))
    assert float(ev["accuracy"]) == pytest.approx(want_acc)
    z = logits - logits.max(1, keepdims=True)
    want_loss = float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))
    assert float(ev["loss"]) == pytest.approx(want_loss, rel=1e-5)
    # parameters() returns copies: changing them changes nothing in the model.
    params["fc2.bias"][:] = 100.0
    np.testing.assert_array_equal(m.run("infer", x=x)["logits"], logits)
    assert m.step == 3
    # evaluate() over batches is the size-weighted mean of eval; no update.
    before = m.state()
    full = m.evaluate(x, y, batch_size=16)
    assert full["loss"] == pytest.approx(float(ev["loss"]), rel=1e-5)
    _same_state(before, m.state())
    np.testing.assert_allclose(m.predict(x, batch_size=7), logits, rtol=1e-6, atol=1e-6)


def test_eval_metrics_for_onehot_labels_and_bce() -> None:
    """One-hot labels give the same loss and accuracy as indices; BCE reports thresholded
    accuracy over all outputs."""
    x, y = data(40)
    onehot = np.eye(CLASSES, dtype=np.float32)[y]
    by_index = _model().run("eval", x=x, y=y)
    by_onehot = _model(labels="onehot").run("eval", x=x, y=onehot)
    for k in ("loss", "accuracy"):
        assert float(by_onehot[k]) == pytest.approx(float(by_index[k]), rel=1e-6)
    m = _model(loss="bce_with_logits")
    ev = m.run("eval", x=x, y=onehot)
    logits = m.run("infer", x=x)["logits"]
    assert float(ev["accuracy"]) == pytest.approx(float(np.mean((logits > 0) == (onehot > 0.5))))
    want = np.mean(np.maximum(logits, 0) - logits * onehot + np.log1p(np.exp(-np.abs(logits))))
    assert float(ev["loss"]) == pytest.approx(float(want), rel=1e-5)


def test_set_parameters_validates_and_applies() -> None:
    m = _model()
    new = {k: np.full_like(v, 0.01) for k, v in m.parameters().items()}
    m.set_parameters(new)
    _same_state(m.parameters(), new)
    with pytest.raises(et.InputError, match=r"fc2\.weight"):
        m.set_parameters({"fc2.weight": np.zeros((3, 3), np.float32)}, strict=False)
    with pytest.raises(et.InputError, match="missing parameters"):
        m.set_parameters({"fc2.bias": np.zeros(10, np.float32)})
    with pytest.raises(et.InputError, match="not trainable"):
        m.set_parameters({**new, "bogus": np.zeros(1, np.float32)})
    _same_state(m.parameters(), new)


# -- bad input -------------------------------------------------------------------------------

def _bad_calls(x: np.ndarray, y: np.ndarray) -> list[tuple[str, dict[str, Any], type, str]]:
    """(signature, inputs, error type, text the message must contain)."""
    return [
        ("fly", {"x": x}, et.InputError, "unknown signature 'fly'"),
        ("train", {"x": x, "y": y, "z": y}, et.InputError, "unknown input(s) ['z']"),
        ("train", {"x": x}, et.InputError, "missing input 'y'"),
        ("infer", {}, et.InputError, "missing input 'x'"),
        ("train", {"x": x.astype(str), "y": y}, et.InputError, "'x' holds strings"),
        ("train", {"x": x.astype(np.float64) * 1e300, "y": y}, et.InputError,
         "'x' holds values beyond float32's range"),
        ("train", {"x": (x * 2 ** 30).astype(np.int64), "y": y}, et.InputError,
         "'x' holds integers beyond 16777216"),
        ("train", {"x": x, "y": y + 0.5}, et.InputError, "'y' holds non-integer values (e.g. "),
        ("train", {"x": x, "y": y.astype(np.uint64) + np.uint64(2 ** 63)}, et.InputError,
         "'y' holds values outside int64's range"),
        ("train", {"x": x, "y": np.eye(10, dtype=np.float32)[y] * 0.9}, et.InputError,
         "rows that are not exactly one-hot"),
        ("train", {"x": x.reshape(len(x), 64), "y": y}, et.InputError, "'x' has shape [8, 64]"),
        ("train", {"x": x[:, :, :7], "y": y}, et.InputError, "dim 2 must be 8"),
        ("infer", {"x": x[0]}, et.InputError, "input 'x' has shape [8, 8] (rank 2)"),
        ("train", {"x": x, "y": y[:5]}, et.InputError, "'y' dim 0 is 5 but 'x' has 8"),
        ("eval", {"x": x[:3], "y": y}, et.InputError, "dim 0 is 8 but 'x' has 3"),
        ("train", {"x": x[:0], "y": y[:0]}, et.InputError, "'x' is an empty batch"),
        ("infer", {"x": x[:0]}, et.InputError, "'x' is an empty batch"),
        ("train", {"x": x, "y": np.where(y == y[0], 10, y)}, et.InputError,
         "labels in 'y' must lie in [0, 10)"),
        ("eval", {"x": x, "y": np.where(y == y[0], -1, y)}, et.InputError, "got min -1"),
        ("train", {"x": np.where(x > 0.5, np.nan, x).astype(np.float32), "y": y},
         et.InputError, "'x' contains NaN"),
        ("train", {"x": np.where(x > 0.5, np.inf, x).astype(np.float32), "y": y},
         et.InputError, "'x' contains NaN or infinity"),
        ("train", {"x": x, "y": y, "lr": np.nan}, et.InputError, "'lr' must be finite and ≥ 0"),
        ("train", {"x": x, "y": y, "lr": np.inf}, et.InputError, "'lr' must be finite and ≥ 0"),
        ("train", {"x": x, "y": y, "lr": -0.5}, et.InputError,
         "'lr' must be finite and ≥ 0, got -0.5"),
        ("train", {"x": x, "y": y, "lr": np.ones(2, np.float32)}, et.InputError,
         "'lr' has shape [2]"),
        ("save", {"path": "a"}, et.InputError, "takes checkpoint_path and optionally key"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_is_refused_and_changes_nothing(backend: str) -> None:
    m = _model(backend)
    x, y = data(8)
    m.run("train", x=x, y=y)  # non-zero optimizer state, so "unchanged" means something
    before = m.state()
    for sig, inputs, err, text in _bad_calls(x, y):
        with pytest.raises(err) as info:
            m.run(sig, **inputs)
        assert text in str(info.value), (sig, str(info.value))
        _same_state(before, m.state())
    assert m.run("train", x=x, y=y)["loss"].shape == ()  # still works afterwards


def test_safe_conversions_train_exactly_like_converted_data() -> None:
    """float64 x, int32 / (N, 1) / one-hot y, Python lists and torch tensors are converted
    (one warning per call, naming every conversion, and only the first time) and train
    bit-for-bit like the same data given in the file's dtypes."""
    torch = pytest.importorskip("torch")
    ref, m = _model(), _model()
    x, y = data(8)
    calls = [
        ({"x": x.astype(np.float64), "y": y.astype(np.int32)},
         ["x float64 → float32", "y int32 → int64"]),
        ({"x": x, "y": y.reshape(-1, 1)}, ["y (N, 1) → (N,)"]),
        ({"x": x.tolist(), "y": np.eye(10)[y]}, ["y one-hot rows → class indices"]),
        ({"x": torch.from_numpy(x), "y": torch.from_numpy(y).to(torch.int32)}, []),
        ({"x": x.astype(np.float64), "y": y.astype(np.int32)}, []),  # reported already
    ]
    for inputs, notes in calls:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = m.run("train", **inputs)["loss"]
        conversions = [w for w in caught if issubclass(w.category, DataConversionWarning)]
        assert len(conversions) == (1 if notes else 0), [str(w.message) for w in caught]
        for n in notes:
            assert n in str(conversions[0].message)
        assert loss == ref.run("train", x=x, y=y)["loss"]
    _same_state(ref.state(), m.state())


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_loss_raises_and_keeps_weights(backend: str) -> None:
    """A learning rate that blows the weights up: the step whose loss is not finite raises
    NonFiniteError and writes nothing (weights, optimizer state, step count)."""
    m = _model(backend)
    x, y = data(16)
    with pytest.raises(et.NonFiniteError, match="loss") as info:
        for _ in range(10):
            before = m.state()
            m.run("train", x=x, y=y, lr=1e30)
    assert "unchanged" in str(info.value)
    _same_state(before, m.state())
    assert all(np.all(np.isfinite(v)) for v in m.state().values())
    # The model keeps working once the caller repairs it (here: fresh weights, small lr).
    fresh = _model(backend)
    m.set_parameters(fresh.parameters())
    assert np.isfinite(m.run("train", x=x, y=y, lr=1e-3)["loss"])


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_gradient_with_finite_loss_is_refused(backend: str) -> None:
    """Weights so large that the gradient overflows while the loss is still finite: the graph's
    guard skips the update, and the runtime must say so instead of returning quietly."""
    m = _model(backend, loss="l1", optimizer=et.optim.SGD(lr=0.1))
    x, _ = data(4)
    params = m.parameters()
    # Hidden units near 1e38 (finite), a zero second layer: the logits (= the bias) and the L1
    # loss are finite, but dL/dW2 = outer(dlogits, h) squares to infinity in the global norm.
    params["fc1.weight"] = np.full_like(params["fc1.weight"], 3e36)
    params["fc2.weight"] = np.zeros_like(params["fc2.weight"])
    m.set_parameters(params)
    y = np.zeros((4, CLASSES), np.float32)
    assert np.isfinite(m.run("eval", x=x, y=y)["loss"])
    before = m.state()
    with pytest.raises(et.NonFiniteError, match="are not finite"):
        m.run("train", x=x, y=y)
    _same_state(before, m.state())


@pytest.mark.parametrize("optimizer", [et.optim.SGD(lr=0.1), et.optim.Adam(lr=1e-3)],
                         ids=["sgd-fused-gemm", "adam"])
def test_the_step_graph_tells_any_driver_whether_to_commit(optimizer: Any) -> None:
    """Another driver (a browser, a phone) runs the standalone step graph without edgetrain's
    input checks. The graph's step-counter output advances only for a step whose loss, rate
    and gradients are finite, which is the driver's rule for committing the new state: NaN or
    infinite rates and data must leave the counter where it was.
    """
    ort = pytest.importorskip("onnxruntime")
    tm = et.compile(mlp(), optimizer=optimizer)
    step, state_inputs, updates = fmt.standalone(tm.proto, tm.meta, "train")
    sess = ort.InferenceSession(step.SerializeToString(), providers=["CPUExecutionProvider"])
    state = fmt.initial_state(tm.proto, tm.meta)
    x, y = data(8)
    lr = np.array(optimizer.lr, np.float32)
    outs = [o.name for o in step.graph.output]
    one_inf = x.copy()
    one_inf[0, 0, 0] = -np.inf  # may vanish behind a ReLU in the forward, not in dW
    for feeds in ({"x": x, "y": y, "lr": np.array(np.nan, np.float32)},
                  {"x": x, "y": y, "lr": np.array(np.inf, np.float32)},
                  {"x": np.full_like(x, np.nan), "y": y, "lr": lr},
                  {"x": one_inf, "y": y, "lr": lr}):
        res = dict(zip(outs, sess.run(None, {**feeds, **{k: state[k] for k in state_inputs}})))
        assert int(res[updates[fmt.STEP_NAME]]) == 0, feeds["lr"]
    res = dict(zip(outs, sess.run(None, {"x": x, "y": y, "lr": lr,
                                         **{k: state[k] for k in state_inputs}})))
    assert int(res[updates[fmt.STEP_NAME]]) == 1  # a normal step counts
    for k, out in updates.items():
        assert np.all(np.isfinite(res[out])), k


# -- fit -------------------------------------------------------------------------------------

def test_fit_history_matches_manual_steps() -> None:
    x, y = data(100)
    m, ref = _model(), _model()
    hist = m.fit(x, y, epochs=3, batch_size=32, shuffle=False, progress=False,
                 validation_data=(x[:20], y[:20]))
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in hist.history.values())
    assert hist.skipped_steps == 0 and hist.seconds > 0
    for epoch in range(3):
        losses, sizes = [], []
        for s in range(0, 100, 32):
            losses.append(float(ref.run("train", x=x[s:s + 32], y=y[s:s + 32])["loss"]))
            sizes.append(len(y[s:s + 32]))
        assert hist["loss"][epoch] == pytest.approx(np.average(losses, weights=sizes), rel=1e-6)
        assert hist["accuracy"][epoch] == pytest.approx(ref.evaluate(x, y)["accuracy"])
        assert hist["val_loss"][epoch] == pytest.approx(ref.evaluate(x[:20], y[:20])["loss"],
                                                        rel=1e-5)
    _same_state(m.state(), ref.state())
    assert hist["loss"][-1] < hist["loss"][0]
    assert m.step == 3 * 4


def test_fit_on_nonfinite_skip_and_raise() -> None:
    x, y = data(64)
    m = _model(optimizer=et.optim.SGD(lr=0.1))
    with pytest.raises(et.NonFiniteError):
        m.fit(x, y, epochs=2, batch_size=8, lr=1e30, progress=False)
    m = _model(optimizer=et.optim.SGD(lr=0.1))
    hist = m.fit(x, y, epochs=2, batch_size=8, lr=1e30, progress=False, on_nonfinite="skip")
    assert hist.skipped_steps > 0
    assert m.step == 2 * 8 - hist.skipped_steps
    assert all(np.all(np.isfinite(v)) for v in m.parameters().values())
    with pytest.raises(et.EdgetrainError, match="on_nonfinite"):
        m.fit(x, y, on_nonfinite="ignore", progress=False)
    with pytest.raises(et.InputError, match="rows"):
        m.fit(x, y[:10], progress=False)


def test_fit_dict_inputs_and_progress_bar() -> None:
    x, y = data(40)
    m = _model()
    hist = m.fit({"x": x}, y, epochs=1, batch_size=16, progress=True)
    assert len(hist["loss"]) == 1 and m.step == 3


# -- dropout ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_trains_in_training_mode_and_infers_deterministically(backend: str) -> None:
    m = _model(backend, dropout=0.5, optimizer=et.optim.SGD(lr=1e-3))
    x, y = data(32)
    tiny = 1e-30  # the weights barely move, so loss differences come from the masks
    losses = {float(m.run("train", x=x, y=y, lr=tiny)["loss"]) for _ in range(5)}
    assert len(losses) > 1, "train does not apply dropout (same loss for every mask)"
    ev = m.run("eval", x=x, y=y)
    assert float(ev["loss"]) not in losses
    a, b = m.run("infer", x=x)["logits"], m.run("infer", x=x)["logits"]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, forward(m.parameters(), x), rtol=1e-5, atol=1e-6)
    for _ in range(20):
        m.run("train", x=x, y=y, lr=0.05)
    assert float(m.run("eval", x=x, y=y)["loss"]) < float(ev["loss"])


def test_dropout_gradient_uses_the_forward_mask() -> None:
    """One float64 SGD step on a single example: the gradients of both layers must be those of
    the *same* dropout mask the forward pass used (recovered from the update itself)."""
    p_drop, lr = 0.5, 1.0
    m = _model("onnxruntime", dropout=p_drop, dtype=np.float64, optimizer=et.optim.SGD(lr=lr))
    x, y = data(1, dtype=np.float64)
    w0 = m.parameters()
    m.run("train", x=x, y=y)
    w1 = m.parameters()
    g = {k: (w0[k] - w1[k]) / lr for k in w0}
    xf = x.reshape(1, -1)
    h = np.maximum(xf @ w0["fc1.weight"].T + w0["fc1.bias"], 0)[0]
    dlogits = g["fc2.bias"]  # batch of one: dL/dlogits
    c = int(np.argmax(np.abs(dlogits)))
    h_dropped = g["fc2.weight"][c] / dlogits[c]  # dL/dW2 = outer(dlogits, h_dropped)
    kept = np.isclose(h_dropped, h / (1 - p_drop), rtol=1e-9, atol=1e-12) & (h > 0)
    dropped = np.isclose(h_dropped, 0.0, atol=1e-12)
    assert np.all(kept | dropped)
    assert 0 < kept.sum() < (h > 0).sum(), "mask keeps all or nothing"
    logits = w0["fc2.weight"] @ h_dropped + w0["fc2.bias"]
    prob = np.exp(logits - logits.max())
    prob /= prob.sum()
    np.testing.assert_allclose(dlogits, prob - np.eye(CLASSES)[y[0]], rtol=1e-9, atol=1e-12)
    mask = kept / (1 - p_drop)
    dh = (w0["fc2.weight"].T @ dlogits) * mask * (h > 0)
    np.testing.assert_allclose(g["fc1.bias"], dh, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g["fc1.weight"], np.outer(dh, xf[0]), rtol=1e-9, atol=1e-12)
