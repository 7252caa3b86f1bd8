"""LoRA adapters (``select.lora``) on small MatMul/Gemm models, against a reference LoRA in
PyTorch: the rewrite, exactness at B = 0, adapter gradients, training, merged export,
checkpoint contents and ``edgetrain info``. The real text model is in tests/test_text.py.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import edgetrain as et
from edgetrain import cli
from edgetrain.errors import EdgetrainError

RANK, ALPHA = 2, 3.0
SCALE = ALPHA / RANK
GEMM_ALPHA = float(np.float32(0.7))  # as the attribute stores it
N_IN, N_HID, N_OUT, BATCH = 6, 8, 3, 5


def mlp(dtype: type = np.float64, seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x → MatMul W1 → +b1 → Relu → Gemm(W2ᵀ, b2, alpha=0.7) → logits."""
    rng = np.random.default_rng(seed)
    w = {"W1": rng.standard_normal((N_IN, N_HID)) * 0.5, "b1": rng.standard_normal(N_HID) * 0.1,
         "W2": rng.standard_normal((N_OUT, N_HID)) * 0.5, "b2": rng.standard_normal(N_OUT)}
    w = {k: v.astype(dtype) for k, v in w.items()}
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1/MatMul"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1/Add"),
             helper.make_node("Relu", ["hb"], ["r"], name="act"),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["logits"], name="fc2/Gemm",
                              transB=1, alpha=0.7)]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", elem, ["N", N_IN])],
                          [helper.make_tensor_value_info("logits", elem, ["N", N_OUT])],
                          initializer=[numpy_helper.from_array(v, k) for k, v in w.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), w


def torch_lora_mlp(w: dict[str, np.ndarray], ad: dict[str, np.ndarray], x: np.ndarray):  # type: ignore[no-untyped-def]
    """The reference LoRA: frozen W, y = x·W + (α/r)·(x·A)·B (for the Gemm: α_gemm·(…))."""
    t = {k: torch.tensor(v, requires_grad=k in ad or k == "b2") for k, v in {**w, **ad}.items()}
    h = torch.tensor(x) @ t["W1"] + SCALE * (torch.tensor(x) @ t["A1"]) @ t["B1"] + t["b1"]
    r = torch.relu(h)
    logits = GEMM_ALPHA * (r @ t["W2"].T + SCALE * (r @ t["A2"]) @ t["B2"]) + t["b2"]
    return logits, t


def data(dtype: type = np.float64, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, N_IN)).astype(dtype), rng.integers(0, N_OUT, BATCH)


def compiled(dtype: type = np.float64, optimizer: et.optim.Optimizer | None = None,
             **lora_kw: object) -> Any:
    model, _ = mlp(dtype)
    kw = {"rank": RANK, "alpha": ALPHA, "targets": ["W1", "fc2/*"], "also": ["b2"], **lora_kw}
    return et.compile(model, loss="cross_entropy", trainable=et.select.lora(**kw),  # type: ignore[arg-type]
                      optimizer=optimizer or et.optim.SGD(lr=1.0))


NAMES = {"A1": "W1.lora_A", "B1": "W1.lora_B", "A2": "W2.lora_A", "B2": "W2.lora_B"}


def test_rewrite_adds_zero_b_adapters_and_trains_only_them() -> None:
    tm = compiled()
    meta = tm.meta
    assert set(meta.trainable) == {"b2", *NAMES.values()}, meta.trainable
    assert {"W1", "W2", "b1"} <= set(meta.frozen)
    inits = {t.name: numpy_helper.to_array(t) for t in tm.proto.graph.initializer}
    assert inits["W1.lora_A"].shape == (N_IN, RANK) and inits["W1.lora_B"].shape == (RANK, N_HID)
    assert inits["W2.lora_A"].shape == (N_HID, RANK) and inits["W2.lora_B"].shape == (RANK, N_OUT)
    assert not inits["W1.lora_B"].any() and not inits["W2.lora_B"].any()
    bound = 1 / np.sqrt(N_IN)
    assert 0 < np.abs(inits["W1.lora_A"]).max() <= bound
    lora = meta.lora
    assert lora is not None
    assert lora["rank"] == RANK and lora["alpha"] == ALPHA and lora["adapted_weights"] == 2
    assert lora["adapter_parameters"] == RANK * (N_IN + N_HID) + RANK * (N_HID + N_OUT)
    assert lora["adapter_bytes"] == 8 * lora["adapter_parameters"]
    assert meta.selection is not None and meta.selection.startswith("edgetrain.select.lora(rank=2")


@pytest.mark.parametrize("backend", ["reference", "onnxruntime"])
def test_first_step_forward_equals_base_exactly(backend: str) -> None:
    """With B = 0 the adapted model computes the base model's function bit for bit."""
    x, y = data()
    base = et.load(et.compile(mlp()[0], loss="cross_entropy").proto, backend=backend)
    m = et.load(compiled().proto, backend=backend)
    np.testing.assert_array_equal(m.run("infer", x=x)["logits"], base.run("infer", x=x)["logits"])
    np.testing.assert_array_equal(m.run("eval", x=x, y=y)["loss"],
                                  base.run("eval", x=x, y=y)["loss"])
    np.testing.assert_array_equal(m.run("train", x=x, y=y)["loss"],
                                  base.run("train", x=x, y=y)["loss"])


def _random_adapters(seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"A1": (N_IN, RANK), "B1": (RANK, N_HID), "A2": (N_HID, RANK), "B2": (RANK, N_OUT)}
    return {k: rng.standard_normal(s) * 0.5 for k, s in shapes.items()}


def test_adapter_gradients_match_torch_reference_lora() -> None:
    """Non-zero A and B (at B = 0 the gradient of A vanishes), one SGD step with lr = 1 in
    float64 on the exact reference backend: the weight change is the gradient."""
    x, y = data()
    _, w = mlp()
    ad = _random_adapters()
    m = et.load(compiled().proto, backend="reference")
    m.set_parameters({NAMES[k]: v for k, v in ad.items()}, strict=False)
    before = m.parameters()
    m.run("train", x=x, y=y)
    after = m.parameters()
    logits, t = torch_lora_mlp(w, ad, x)
    torch.nn.functional.cross_entropy(logits, torch.tensor(y)).backward()
    for k in [*NAMES, "b2"]:
        name = NAMES.get(k, k)
        want = t[k].grad.numpy()
        assert np.abs(want).max() > 1e-3, f"{k}: degenerate test, zero gradient"
        np.testing.assert_allclose(before[name] - after[name], want, rtol=1e-10, atol=1e-13,
                                   err_msg=f"d loss/d {name}")


def test_adam_training_matches_torch_reference_lora() -> None:
    x, y = data()
    _, w = mlp()
    opt = et.optim.Adam(lr=0.05)
    m = et.load(compiled(optimizer=opt).proto, backend="reference")
    init = m.parameters()
    ad = {k: init[v] for k, v in NAMES.items()}
    _, t = torch_lora_mlp(w, ad, x)
    params = [t[k] for k in [*NAMES, "b2"]]
    topt = torch.optim.Adam(params, lr=0.05)
    for step in range(5):
        loss = float(m.run("train", x=x, y=y)["loss"])
        topt.zero_grad()
        logits, _ = _forward_with(t, x)
        tl = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
        tl.backward()
        topt.step()
        assert loss == pytest.approx(float(tl.detach()), rel=1e-10), f"step {step}"
    got = m.parameters()
    for k in NAMES:
        np.testing.assert_allclose(got[NAMES[k]], t[k].detach().numpy(), rtol=1e-9, atol=1e-12)


def _forward_with(t: dict[str, torch.Tensor], x: np.ndarray):  # type: ignore[no-untyped-def]
    xt = torch.tensor(x)
    h = xt @ t["W1"] + SCALE * (xt @ t["A1"]) @ t["B1"] + t["b1"]
    r = torch.relu(h)
    return GEMM_ALPHA * (r @ t["W2"].T + SCALE * (r @ t["A2"]) @ t["B2"]) + t["b2"], t


def test_merged_export_equals_unmerged(tmp_path: os.PathLike[str]) -> None:
    x, y = data(np.float32)
    m = et.load(compiled(np.float32, optimizer=et.optim.Adam(lr=0.05)).proto)
    for _ in range(5):
        m.run("train", x=x, y=y)
    assert np.abs(m.parameters()["W1.lora_B"]).max() > 1e-3
    merged, unmerged = os.path.join(tmp_path, "m.onnx"), os.path.join(tmp_path, "u.onnx")
    m.export(merged)
    m.export(unmerged, merge_lora=False)
    xs = np.random.default_rng(9).standard_normal((7, N_IN)).astype(np.float32)
    outs = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, {"x": xs})[0]
            for p in (merged, unmerged)]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs[1], m.run("infer", x=xs)["logits"], rtol=1e-6, atol=1e-7)
    plain, base = onnx.load(merged), mlp(np.float32)[0]
    onnx.checker.check_model(plain, full_check=True)
    assert [n.op_type for n in plain.graph.node] == [n.op_type for n in base.graph.node]
    assert sorted(t.name for t in plain.graph.initializer) == ["W1", "W2", "b1", "b2"]
    w1 = numpy_helper.to_array(next(t for t in plain.graph.initializer if t.name == "W1"))
    p = m.parameters()
    a, b = (p[k].astype(np.float64) for k in ("W1.lora_A", "W1.lora_B"))
    want = (mlp(np.float32)[1]["W1"].astype(np.float64) + SCALE * a @ b).astype(np.float32)
    np.testing.assert_array_equal(w1, want)  # W + (α/r)·A·B, computed in float64, rounded once


def test_checkpoint_holds_only_the_adapters(tmp_path: os.PathLike[str]) -> None:
    from safetensors.numpy import load_file

    tm = compiled(np.float32, optimizer=et.optim.AdamW(lr=0.01))
    path = os.path.join(tmp_path, "lora.onnx")
    tm.save(path)
    m = et.load(path)
    x, y = data(np.float32)
    m.run("train", x=x, y=y)
    ckpt = os.path.join(tmp_path, "ck.safetensors")
    m.run("save", checkpoint_path=ckpt)
    keys = set(load_file(ckpt))
    params = {"b2", *NAMES.values()}
    assert params <= keys
    assert not keys & {"W1", "W2", "b1"}, "frozen base weights must not be checkpointed"
    assert {k.rsplit(".", 1)[0] for k in keys - params - {"edgetrain.step"}} <= params
    fresh = et.load(path)
    fresh.run("restore", checkpoint_path=ckpt)
    xs = np.random.default_rng(5).standard_normal((4, N_IN)).astype(np.float32)
    np.testing.assert_array_equal(fresh.run("infer", x=xs)["logits"],
                                  m.run("infer", x=xs)["logits"])


def test_info_reports_the_adapters(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "lora.onnx")
    compiled(np.float32).save(path)
    d = cli.info(path)
    n = RANK * (N_IN + N_HID) + RANK * (N_HID + N_OUT)
    assert d["extra"]["lora"]["adapter_bytes"] == 4 * n
    assert d["trainable_params"] == n + N_OUT
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(["info", path]) == 0
    text = buf.getvalue()
    assert "lora:" in text and f"'adapter_bytes': {4 * n}" in text, text


def test_tied_weight_gets_one_adapter_used_twice() -> None:
    """A weight read by two MatMuls: one A/B pair, two side branches, merged once."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 4)) * 0.5
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["t", "W"], ["out"])]
    g = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.DOUBLE,
                                                                        ["N", 4])],
                          [helper.make_tensor_value_info("out", TensorProto.DOUBLE, ["N", 4])],
                          [numpy_helper.from_array(w, "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    tm = et.compile(model, loss="mse", optimizer=et.optim.SGD(lr=1.0),
                    trainable=et.select.lora(rank=2, alpha=2.0, targets=["W"]))
    assert tm.meta.trainable == ("W.lora_A", "W.lora_B")
    assert len(tm.meta.lora_merge[0].sites) == 2
    m = et.load(tm.proto, backend="reference")
    a, b = rng.standard_normal((4, 2)), rng.standard_normal((2, 4))
    m.set_parameters({"W.lora_A": a, "W.lora_B": b})
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    m.run("train", x=x, y=y)
    got = m.parameters()
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a, b))
    weff = torch.tensor(w) + ta @ tb  # alpha/rank = 1
    out = torch.tanh(torch.tensor(x) @ weff) @ weff
    torch.nn.functional.mse_loss(out, torch.tensor(y)).backward()
    np.testing.assert_allclose(a - got["W.lora_A"], ta.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(b - got["W.lora_B"], tb.grad.numpy(), rtol=1e-10)
    plain = et.format.plain_inference(m.proto, m.meta, m.state())
    assert [n.op_type for n in plain.graph.node] == ["MatMul", "Tanh", "MatMul"]
    from onnx.reference import ReferenceEvaluator

    np.testing.assert_allclose(ReferenceEvaluator(plain).run(None, {"x": x})[0],
                               m.run("infer", x=x)["out"], rtol=1e-12)


def test_targets_match_node_names_and_errors_list_the_weights() -> None:
    model, _ = mlp()
    tm = et.compile(model, trainable=et.select.lora(rank=1, alpha=1, targets=["fc1/*"]))
    assert tm.meta.trainable == ("W1.lora_A", "W1.lora_B")
    with pytest.raises(EdgetrainError, match=r"match no MatMul/Gemm weight.*W1 \(node 'fc1"):
        et.compile(model, trainable=et.select.lora(rank=1, alpha=1, targets=["*query*"]))
    with pytest.raises(EdgetrainError, match="whole trainable= argument"):
        et.compile(model, trainable=[et.select.lora(rank=1, alpha=1, targets=["W1"]), "b2"])
    for bad in [dict(rank=0), dict(rank=2.5), dict(alpha=-1.0), dict(targets=[])]:
        with pytest.raises(EdgetrainError):
            et.select.lora(**{"rank": 2, "alpha": 1.0, "targets": ["W1"], **bad})  # type: ignore[arg-type]


def test_gemm_with_transposed_input_and_weight_layouts() -> None:
    """Gemm(transA=1): the adapter branch reads xᵀ; without transB the weight is [in, out]."""
    rng = np.random.default_rng(6)
    w, c = rng.standard_normal((4, 3)), rng.standard_normal(3)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["xt", "W", "C"], ["out"], transA=1, alpha=0.5, beta=1.0)],
        "gemm", [helper.make_tensor_value_info("xt", TensorProto.DOUBLE, [4, "N"])],
        [helper.make_tensor_value_info("out", TensorProto.DOUBLE, ["N", 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(c, "C")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    tm = et.compile(model, loss="mse", optimizer=et.optim.SGD(lr=1.0),
                    trainable=et.select.lora(rank=2, alpha=4.0, targets=["W"]))
    m = et.load(tm.proto, backend="reference")
    a, b = rng.standard_normal((4, 2)), rng.standard_normal((2, 3))
    m.set_parameters({"W.lora_A": a, "W.lora_B": b})
    xt, y = rng.standard_normal((4, 5)), rng.standard_normal((5, 3))
    out_before = m.run("infer", xt=xt)["out"]
    m.run("train", xt=xt, y=y)
    got = m.parameters()
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a, b))
    x = torch.tensor(xt).T
    out = 0.5 * (x @ torch.tensor(w) + 2.0 * (x @ ta) @ tb) + torch.tensor(c)
    np.testing.assert_allclose(out_before, out.detach().numpy(), rtol=1e-12)
    torch.nn.functional.mse_loss(out, torch.tensor(y)).backward()
    np.testing.assert_allclose(a - got["W.lora_A"], ta.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(b - got["W.lora_B"], tb.grad.numpy(), rtol=1e-10)
    m.set_parameters({"W.lora_A": a, "W.lora_B": b})
    plain = et.format.plain_inference(m.proto, m.meta, m.state())
    from onnx.reference import ReferenceEvaluator

    assert [n.op_type for n in plain.graph.node] == ["Gemm"]
    np.testing.assert_allclose(ReferenceEvaluator(plain).run(None, {"xt": xt})[0], out_before,
                               rtol=1e-12)
