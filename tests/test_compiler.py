"""The compiler's passes, one at a time, and the IR facts they rely on (subgraph reads)."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgetrain as et
from edgetrain import compiler
from edgetrain.compiler import PIPELINE, Compilation, Options

ROOT = pathlib.Path(__file__).resolve().parents[1] / "src" / "edgetrain"


def _mlp(names: dict[str, str] | None = None) -> onnx.ModelProto:
    """x [batch, 4] → Gemm → Relu → Gemm → logits [batch, 3]; ``names`` renames values."""
    n = {"x": "x", "W1": "W1", "b1": "b1", "h": "h", "a": "a", "W2": "W2", "b2": "b2",
         "logits": "logits", **(names or {})}
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.5, n[k])
             for k, s in [("W1", (4, 5)), ("b1", (5,)), ("W2", (5, 3)), ("b2", (3,))]]
    nodes = [helper.make_node("Gemm", [n["x"], n["W1"], n["b1"]], [n["h"]]),
             helper.make_node("Relu", [n["h"]], [n["a"]]),
             helper.make_node("Gemm", [n["a"], n["W2"], n["b2"]], [n["logits"]])]
    g = helper.make_graph(nodes, "mlp",
                          [helper.make_tensor_value_info(n["x"], TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info(n["logits"], TensorProto.FLOAT,
                                                         ["batch", 3])],
                          initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _run_until(last: str, model: onnx.ModelProto, **options: object) -> Compilation:
    opts = Options(source=model, loss=et.losses.get("cross_entropy"),
                   optimizer=et.optim.get(options.pop("optimizer", None)), **options)  # type: ignore[arg-type]
    c = Compilation(opts)
    for p in PIPELINE:
        p(c)
        if p.__name__ == last:
            return c
    raise AssertionError(f"no pass named {last}")


# -- passes alone --------------------------------------------------------------------------------

def test_import_pass_infers_shapes_and_reserves_public_names() -> None:
    c = _run_until("import_model", _mlp({"h": "y", "a": "loss", "W2": "lr"}))
    assert c.names.label != "y" and c.names.loss != "loss" and c.names.lr != "lr"
    assert {c.names.label, c.names.loss, c.names.lr} <= c.namer.taken
    h = next(n.outputs[0] for n in c.main if n.op_type == "Gemm")
    assert h.shape is not None and h.shape[1] == 5  # shapes come with the values


def test_differentiate_pass_reaches_exactly_the_selected_weights() -> None:
    c = _run_until("differentiate", _mlp(), trainable=["W2", "b2"])
    assert sorted(c.grads) == ["W2", "b2"]
    assert c.trainable == ["W2", "b2"]
    # Backward pruning: nothing before the trainable layer is differentiated.
    relu_grads = [n for n in c.step().graph if n.op_type == "Greater"]
    assert relu_grads == []


def test_plain_sgd_update_is_fused_into_the_weight_gradient_gemm() -> None:
    c = _run_until("fuse_gemm_updates", _mlp(), optimizer="sgd")
    for w in ("W1", "W2"):
        producer = c.new_state[w].producer()
        assert producer is not None and producer.op_type == "Gemm"
        assert producer.inputs[2] is not None and producer.inputs[2].name == w
        assert producer.attributes["alpha"].as_float() == -1.0
    assert not any(n.op_type == "Sub" and n.inputs[0] is not None and n.inputs[0].name == "W1"
                   for n in c.step().graph)


def test_adam_goes_through_optimizer_update_and_guard_counts_every_committed_tensor() -> None:
    c = _run_until("guard", _mlp(), optimizer="adam")
    slots = [k for k in c.new_state if k.endswith(("exp_avg", "exp_avg_sq"))]
    assert len(slots) == 8
    guard = next(n for n in c.step().graph if n.op_type == "Sum")  # the one guard Sum
    checked = [v.producer() for v in guard.inputs if v is not None and v.producer() is not None
               and v.producer().op_type == "ReduceSum"]
    assert len(checked) == len(c.new_state) - 1  # everything but the counter itself


def test_finish_names_outputs_after_the_state_they_update() -> None:
    c = _run_until("finish_train", _mlp(), optimizer="adam")
    outs = [o.name for o in c.step().graph.outputs]
    assert outs[0] == c.names.loss
    assert set(c.updates) == set(c.new_state)
    assert all(c.updates[k] in outs for k in c.updates)


def test_public_names_clear_of_the_models_own_train_and_infer() -> None:
    """A model whose values are called y, loss and lr still compiles and trains."""
    model = _mlp({"h": "y", "a": "loss", "W2": "lr"})
    tm = et.compile(model)
    m = tm.load()
    sig = m.signatures["train"]
    roles = {s.role: s.name for s in sig.inputs if s.role}
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    before = m.parameters()["lr"].copy()
    out = m.run("train", **{"x": x, roles["label"]: y})
    assert np.isfinite(float(next(iter(out.values()))))
    assert not np.array_equal(m.parameters()["lr"], before)  # the weight called lr trained
    assert m.run("infer", x=x)["logits"].shape == (6, 3)


# -- subgraphs ------------------------------------------------------------------------------------

def _if_model() -> onnx.ModelProto:
    """A weight read only inside an If branch (frozen), then a trainable Gemm."""
    inner = numpy_helper.from_array(np.full((4, 4), 0.25, np.float32), "W_inner")
    then = helper.make_graph([helper.make_node("MatMul", ["x", "W_inner"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 4])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT,
                                                             ["batch", 4])])
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["h"], name="branch", then_branch=then,
                              else_branch=other),
             helper.make_node("Gemm", ["h", "W2", "b2"], ["logits"])]
    g = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[inner, numpy_helper.from_array(np.array(0, np.float32), "zero"),
                     numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32),
                                             "W2"),
                     numpy_helper.from_array(np.zeros(3, np.float32), "b2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("backend", ["onnxruntime", "reference"])
def test_frozen_weight_read_only_inside_an_if_branch_infers_and_trains(backend: str) -> None:
    tm = et.compile(_if_model(), trainable=["W2", "b2"])
    assert "W_inner" in tm.meta.frozen
    m = tm.load(backend=backend)
    x = np.abs(np.random.default_rng(3).standard_normal((5, 4))).astype(np.float32)
    want = (x @ np.full((4, 4), 0.25, np.float32)) @ m.parameters()["W2"]
    np.testing.assert_allclose(m.run("infer", x=x)["logits"], want, rtol=1e-5)
    losses = [float(m.run("train", x=x, y=np.array([0, 1, 2, 0, 1]))["loss"])
              for _ in range(5)]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("backend", ["onnxruntime", "reference"])
def test_weight_read_only_inside_an_if_branch_trains(backend: str) -> None:
    """The branch taken (positive inputs: then) moves its weight; the loss falls."""
    m = et.compile(_if_model(), trainable=["W_inner", "W2"]).load(backend=backend)
    before = m.parameters()["W_inner"]
    x = np.abs(np.random.default_rng(3).standard_normal((5, 4))).astype(np.float32)
    losses = [float(m.run("train", x=x, y=np.array([0, 1, 2, 0, 1]))["loss"])
              for _ in range(5)]
    assert losses[-1] < losses[0]
    assert np.any(m.parameters()["W_inner"] != before)


# -- structure ------------------------------------------------------------------------------------

def _long_functions(folder: pathlib.Path, limit: int) -> list[str]:
    long = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > limit:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({n} lines)")
    return long


def test_compiler_passes_and_rules_are_small_functions() -> None:
    long = []
    for folder in ("compiler", "autodiff", "_ir"):
        long += _long_functions(ROOT / folder, 60)
    assert long == []


def test_pipeline_is_the_documented_order() -> None:
    names = [p.__name__ for p in PIPELINE]
    doc = compiler.__doc__ or ""
    positions = [doc.index(f"    {n} ") for n in names]
    assert positions == sorted(positions), names
