"""The file format: a valid standard ONNX file that any runtime opens, with edgetrain metadata.

Checks the promises of DESIGN.md "The file format": full onnx.checker pass, default domain in
every graph (main and training_info), the main graph is the untouched inference model (plain
onnxruntime runs it), ``export`` bakes the trained weights into a plain model, the metadata
JSON describes every signature, and the compiler refuses bad arguments with clear messages.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import edgetrain as et
from _models import data, forward, mlp
from edgetrain import format as fmt

CONFIGS: dict[str, dict[str, Any]] = {
    "sgd": {"optimizer": et.optim.SGD(lr=0.1)},
    "sgd_momentum_frozen_fc1": {"optimizer": et.optim.SGD(lr=0.1, momentum=0.9),
                                "trainable": ["fc2.*"]},
    "adam_onehot": {"optimizer": et.optim.Adam(lr=1e-3), "labels": "onehot"},
    "adamw_clip_smoothing": {"optimizer": et.optim.AdamW(lr=1e-3, clip_norm=1.0),
                             "loss": et.losses.CrossEntropy(label_smoothing=0.1)},
    "mse": {"optimizer": et.optim.SGD(lr=0.01), "loss": "mse"},
    "bce_sum": {"optimizer": et.optim.SGD(lr=0.01),
                "loss": et.losses.BCEWithLogits(reduction="sum")},
    "dropout": {"optimizer": et.optim.SGD(lr=0.1), "dropout": 0.25},
}


def _compile(name: str) -> tuple[onnx.ModelProto, et.TrainableModel]:
    cfg = dict(CONFIGS[name])
    source = mlp(dropout=cfg.pop("dropout", None))
    return source, et.compile(source, **cfg)


def _graphs(g: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A graph and every subgraph nested in its nodes' attributes."""
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            for sub in a.graphs:
                yield from _graphs(sub)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_saved_file_is_valid_standard_onnx(name: str, tmp_path: Any) -> None:
    _, tm = _compile(name)
    path = tm.save(tmp_path / "model.onnx")
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"], "temp files left behind"
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded, full_check=True)
    onnx.checker.check_model(path, full_check=True)
    assert {o.domain for o in loaded.opset_import} <= {"", "ai.onnx"}
    roots = [loaded.graph]
    for ti in loaded.training_info:
        roots += [ti.algorithm, ti.initialization]
    assert len(loaded.training_info) >= 2  # train and eval
    for root in roots:
        for g in _graphs(root):
            bad = [(n.name, n.domain, n.op_type) for n in g.node if n.domain not in ("", "ai.onnx")]
            assert not bad, f"non-default domains in graph {g.name!r}: {bad}"

    # update_binding: each key is an initializer of the main graph or of the train algorithm
    # (the ONNX spec's two places), each value an algorithm output, and the bindings are
    # exactly the metadata's "updates" of the train signature.
    meta = fmt.read_meta(loaded)
    train = meta["signatures"]["train"]
    ti = loaded.training_info[int(train["graph"].split("/")[1])]
    inits = {t.name: t for t in [*loaded.graph.initializer, *ti.algorithm.initializer]}
    outs = {o.name for o in ti.algorithm.output}
    binding = {b.key: b.value for b in ti.update_binding}
    assert binding == train["updates"]
    for key, value in binding.items():
        assert key in inits and value in outs
    assert set(binding) == set(meta["trainable"]) | set(meta["state"])
    for name, sig in meta["signatures"].items():  # eval and infer update nothing
        if name == "train_steps":  # K steps per call: the same state, through a Scan
            assert set(sig["updates"]) == set(train["updates"])
        elif sig is not train:
            assert not sig.get("updates")


@pytest.mark.parametrize("name", ["sgd", "adam_onehot", "dropout"])
def test_plain_onnxruntime_runs_the_trainable_file(name: str, tmp_path: Any,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """Any ONNX tool sees the original inference model: same outputs, no edgetrain needed,
    and no warning: the main graph holds only what inference reads (optimizer slots and the
    step counter are stored with the train graph)."""
    source, tm = _compile(name)
    path = tm.save(tmp_path / "model.onnx")
    x, _ = data(16)

    def session(model: Any) -> tuple[ort.InferenceSession, set[str]]:
        """The session, and the initializers onnxruntime warns it removes as unused."""
        capfd.readouterr()
        so = ort.SessionOptions()
        so.log_severity_level = 1  # info and above: what a plain session prints and more
        s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        printed = capfd.readouterr()
        return s, set(re.findall(r"Removing initializer '([^']*)'", printed.out + printed.err))

    trainable, warned = session(path)
    reference, source_warned = session(source.SerializeToString())
    assert warned == source_warned  # a Dropout's ratio, if any: the source model's own
    main = onnx.load(path).graph
    assert {t.name for t in main.initializer} <= fmt.graph_reads(main)
    got = trainable.run(None, {"x": x})
    want = reference.run(None, {"x": x})
    assert [o.name for o in onnx.load(path).graph.output] == ["logits"]
    np.testing.assert_array_equal(got[0], want[0])
    params = {t.name: onnx.numpy_helper.to_array(t) for t in source.graph.initializer}
    np.testing.assert_allclose(got[0], forward(params, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["onnxruntime", "reference"])
def test_export_bakes_in_the_trained_weights(backend: str, tmp_path: Any) -> None:
    source, tm = _compile("sgd_momentum_frozen_fc1")
    m = et.load(tm.save(tmp_path / "model.onnx"), backend=backend)
    x, y = data(32)
    before = m.run("infer", x=x)["logits"]
    for _ in range(5):
        m.run("train", x=x, y=y)
    after = m.run("infer", x=x)["logits"]
    assert np.abs(after - before).max() > 1e-3

    path = m.export(tmp_path / "personal.onnx")
    plain = onnx.load(path)
    onnx.checker.check_model(plain, full_check=True)
    assert len(plain.training_info) == 0
    assert fmt.META_KEY not in {p.key for p in plain.metadata_props}
    with pytest.raises(et.FormatError):
        et.load(path)  # a plain model is not a trainable file
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in plain.graph.initializer}
    assert not any(k.startswith("edgetrain") or ".momentum" in k for k in inits), \
        "optimizer state leaked into the plain model"
    for k, v in m.parameters().items():
        np.testing.assert_array_equal(inits[k], v)
    fc1 = onnx.numpy_helper.to_array(next(t for t in source.graph.initializer
                                          if t.name == "fc1.weight"))
    np.testing.assert_array_equal(inits["fc1.weight"], fc1)  # frozen: untouched
    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(out, after, rtol=1e-6, atol=1e-6)
    # The exported model is a normal inference model: it compiles again, weights included.
    again = et.load(et.compile(plain, optimizer=et.optim.SGD(lr=0.1)).proto)
    np.testing.assert_array_equal(again.parameters()["fc2.weight"],
                                  m.parameters()["fc2.weight"])


def test_metadata_lists_signatures_and_state() -> None:
    opt = et.optim.Adam(lr=2e-3, betas=(0.8, 0.99), weight_decay=0.01)
    loss = et.losses.CrossEntropy(label_smoothing=0.05, reduction="sum")
    tm = et.compile(mlp(), loss=loss, optimizer=opt, trainable=["fc2.*"])
    raw = next(p.value for p in tm.proto.metadata_props if p.key == "edgetrain")
    meta = json.loads(raw)
    assert meta == tm.meta.to_json()
    assert meta["format_version"] == fmt.FORMAT_VERSION
    assert set(meta["signatures"]) == {"train", "train_steps", "infer", "eval", "save",
                                       "restore"}
    assert meta["trainable"] == ["fc2.weight", "fc2.bias"]
    assert meta["frozen"] == ["fc1.weight", "fc1.bias"]
    assert set(meta["state"]) == {fmt.STEP_NAME} | {
        f"{p}.{s}" for p in meta["trainable"] for s in ("exp_avg", "exp_avg_sq")}
    sigs = meta["signatures"]
    names = [[s["name"] for s in sigs[k]["inputs"]] for k in ("infer", "train", "eval")]
    assert names == [["x"], ["x", "y", "lr"], ["x", "y"]]
    assert sigs["infer"]["outputs"] == [{"name": "logits", "dtype": "float32",
                                         "shape": ["batch", 10], "role": "prediction"}]
    assert sigs["train"]["inputs"][1] == {"name": "y", "dtype": "int64", "shape": ["batch"],
                                          "role": "label"}
    lr = sigs["train"]["inputs"][2]
    assert lr["optional"] and lr["default"] == pytest.approx(2e-3) and lr["shape"] == []
    assert lr["role"] == "lr"
    assert [o["name"] for o in sigs["train"]["outputs"]] == ["loss"]
    assert [o["name"] for o in sigs["eval"]["outputs"]] == ["loss", "accuracy"]
    assert sigs["save"]["kind"] == sigs["restore"]["kind"] == "builtin"
    steps = sigs["train_steps"]  # K stacked batches, one rate per step, one loss per step
    assert [(s["name"], s["shape"][0], s["role"]) for s in steps["inputs"]] == [
        ("x", "steps", "data"), ("y", "steps", "label"), ("lr", "steps", "lr")]
    assert steps["outputs"][0]["shape"] == ["steps"] and steps["outputs"][0]["role"] == "loss"
    assert sigs["save"]["inputs"][0]["name"] == "checkpoint_path"
    assert et.optim.from_config(meta["optimizer"]) == opt
    assert et.losses.from_config(meta["loss"]) == loss
    assert meta["output"] == "logits" and meta["label"] == "y" and meta["labels"] == "index"
    assert meta["classification"] is True
    # The runtime shows the same signatures.
    m = tm.load()
    assert set(m.signatures) == set(sigs)
    assert [s.name for s in m.signatures["train"].inputs] == ["x", "y", "lr"]
    assert "train(" in repr(m.signatures["train"])


def test_regression_loss_has_no_accuracy_and_float_labels() -> None:
    meta = et.compile(mlp(), loss="huber").meta
    assert [o.name for o in meta.signatures["eval"].outputs] == ["loss"]
    y = meta.signatures["train"].inputs[1]
    assert y.dtype == "float32" and y.shape == ("batch", 10) and y.role == "label"


def test_frozen_weights_stay_initializers_of_the_step_graph() -> None:
    """The runtime's standalone step graph feeds only state; frozen weights are constants."""
    tm = et.compile(mlp(), optimizer=et.optim.SGD(lr=0.1, momentum=0.9), trainable="fc2.*")
    step, state_inputs, updates = fmt.standalone(tm.proto, tm.meta, "train")
    onnx.checker.check_model(step, full_check=True)
    inputs = {i.name for i in step.graph.input}
    inits = {t.name for t in step.graph.initializer}
    assert {"fc2.weight", "fc2.bias", fmt.STEP_NAME} <= set(state_inputs) <= inputs
    assert {"fc1.weight", "fc1.bias"} <= inits and not {"fc1.weight", "fc1.bias"} & inputs
    assert set(updates) == set(state_inputs)


def test_model_file_errors(tmp_path: Any) -> None:
    source = mlp()
    with pytest.raises(et.FormatError, match="compile it first"):
        et.load(source)
    tm = et.compile(source)
    newer = onnx.ModelProto()
    newer.CopyFrom(tm.proto)
    meta = dict(tm.meta.to_json(), format_version=fmt.FORMAT_VERSION + 1)
    fmt.write_meta(newer, meta)
    with pytest.raises(et.FormatError, match=f"version {fmt.FORMAT_VERSION + 1}"):
        et.load(newer)
    broken = onnx.ModelProto()
    broken.CopyFrom(tm.proto)
    for p in broken.metadata_props:
        if p.key == "edgetrain":
            p.value = "{not json"
    with pytest.raises(et.FormatError, match="JSON"):
        et.load(broken)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffthis is no onnx file" * 10)
    with pytest.raises(et.FormatError):
        et.load(garbage)
    with pytest.raises(et.EdgetrainError, match="cannot read ONNX model"):
        et.compile(garbage)


@pytest.mark.parametrize("opset", [13, 15, 17, 21])
def test_accepted_opsets_compile_and_train(opset: int) -> None:
    m = et.compile(mlp(opset=opset), optimizer=et.optim.SGD(lr=0.1)).load()
    x, y = data(16)
    first = float(m.run("train", x=x, y=y)["loss"])
    for _ in range(5):
        last = float(m.run("train", x=x, y=y)["loss"])
    assert last < first
    onnx.checker.check_model(m.proto, full_check=True)


def test_compile_errors_are_clear() -> None:
    source = mlp()
    with pytest.raises(et.EdgetrainError, match=r"unknown loss 'nll'.*cross_entropy"):
        et.compile(source, loss="nll")
    with pytest.raises(et.EdgetrainError,
                       match=r"trainable pattern 'conv\*' matches no.*fc1\.weight"):
        et.compile(source, trainable=["fc2.*", "conv*"])
    with pytest.raises(et.EdgetrainError, match=r"output 'probs' is not a model output.*logits"):
        et.compile(source, output="probs")
    with pytest.raises(et.EdgetrainError, match=r"labels must be 'index' or 'onehot'.*'int'"):
        et.compile(source, labels="int")
    with pytest.raises(et.EdgetrainError, match=r"unknown optimizer 'rmsprop'.*sgd"):
        et.compile(source, optimizer="rmsprop")
    with pytest.raises(et.EdgetrainError, match="reduction must be"):
        et.losses.MSE(reduction="none")
    with pytest.raises(et.EdgetrainError, match="learning rate must be positive"):
        et.optim.SGD(lr=0.0)
    with pytest.raises(et.EdgetrainError, match="Nesterov"):
        et.optim.SGD(lr=0.1, nesterov=True)
    with pytest.raises(et.EdgetrainError, match="clip_norm"):
        et.optim.Adam(clip_norm=-1.0)
    old = mlp(opset=6)  # opsets 7..12 are converted up (test_import_models.py)
    with pytest.raises(et.EdgetrainError, match="opset 6 is too old"):
        et.compile(old)
    custom = mlp()
    custom.graph.node[2].domain = "com.microsoft"
    custom.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(et.EdgetrainError, match=r"com\.microsoft::Relu"):
        et.compile(custom)
    with pytest.raises(et.EdgetrainError, match=r"expected an onnx\.ModelProto"):
        et.compile(42)  # type: ignore[arg-type]
