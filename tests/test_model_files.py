"""Hostile model files: tensors that point at other files, custom ops, FIFOs, tampered metadata.

Each attack is built for real (the hostile files leak a secret through plain onnxruntime, which
one test shows) and must end in a FormatError before any runtime sees the file: through the API
and through the command line run from the secret's folder, with the secret's bytes nowhere in
any output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgetrain as et
from _hostile import SECRET, VARIANTS, hostile
from _models import mlp
from edgetrain import format as fmt
from edgetrain.demos._models import seed_mlp
from edgetrain.format._validate import validate, validate_meta

X = np.zeros((2, 8, 8), np.float32)


@pytest.fixture(scope="module")
def compiled() -> onnx.ModelProto:
    return et.compile(seed_mlp(hidden=8), optimizer=et.optim.SGD(lr=0.1)).proto


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A user's home: secrets in it, in ``.ssh``, and a models folder below it."""
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_bytes(SECRET)
    (tmp_path / "secret.bin").write_bytes(SECRET)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "weights.bin").write_bytes(SECRET)
    return tmp_path


def _locations(home: Path) -> list[str]:
    """Relative to the working directory, above the model, absolute, and in its own folder."""
    return ["secret.bin", ".ssh/id_ed25519", "../secret.bin", str(home / "secret.bin"),
            "weights.bin"]


def _write(model: onnx.ModelProto, path: Path) -> str:
    path.write_bytes(model.SerializeToString())
    return str(path)


# -- external data ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["constant_sparse_value", "if_branch_sparse",
                                     "nested_if_sparse", "sparse_initializer"])
def test_hostile_files_are_real_attacks(compiled: onnx.ModelProto, variant: str, home: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without edgetrain's checks onnxruntime, handed the bytes, reads the cwd's secret."""
    monkeypatch.chdir(home)
    bad = hostile(compiled, variant, "secret.bin")
    sess = ort.InferenceSession(bad.SerializeToString(), providers=["CPUExecutionProvider"])
    assert SECRET in sess.run(None, {"x": X})[0][0].tobytes()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tensors_pointing_at_other_files_are_refused(compiled: onnx.ModelProto, variant: str,
                                                     home: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(home)
    for location in _locations(home):
        bad = hostile(compiled, variant, location)
        path = _write(bad, home / "models" / "hostile.onnx")
        for source in (path, bad.SerializeToString(), bad):
            for backend in ("onnxruntime", "reference"):
                with pytest.raises(et.FormatError) as info:
                    et.load(source, backend=backend)
                msg = str(info.value)
                assert SECRET.decode() not in msg and "\n" not in msg
                if variant == "function_body":
                    assert "functions" in msg
                else:
                    assert "external data" in msg and "secret" in msg.replace("leak", "secret")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "edgetrain.cli", *args], cwd=cwd,
                          capture_output=True, timeout=120)


@pytest.mark.slow
def test_cli_run_from_the_secrets_folder_reads_nothing(compiled: onnx.ModelProto,
                                                        home: Path) -> None:
    data = home / "models" / "data.npz"
    np.savez(data, x=np.zeros((4, 8, 8), np.float32), y=np.zeros(4, np.int64))
    for variant, location in [("constant_sparse_value", "secret.bin"),
                              ("sparse_initializer", ".ssh/id_ed25519"),
                              ("train_graph_sparse", "secret.bin"),
                              ("nested_if_sparse", "weights.bin")]:
        path = _write(hostile(compiled, variant, location), home / "models" / "hostile.onnx")
        out = home / "models" / "out.npz"
        runs = [_cli("infer", path, "--data", str(data), "-o", str(out), cwd=home),
                _cli("info", path, cwd=home),
                _cli("train", path, "--data", str(data), "--no-progress", cwd=home)]
        for r in runs:
            assert r.returncode == 2, (variant, r.stderr)
            assert SECRET not in r.stdout + r.stderr
            lines = r.stderr.decode().strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("edgetrain: error:"), r.stderr
            assert "external data" in lines[0]
        assert not out.exists()


# -- custom ops, functions, other opsets -----------------------------------------------------

def _custom_in_if(model: onnx.ModelProto, graph: onnx.GraphProto) -> None:
    """An ``If`` whose then-branch calls a custom op, appended to ``graph``."""
    then = helper.make_graph([helper.make_node("Steal", [], ["t"], name="steal",
                                               domain="com.example")], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])])
    other = helper.make_graph([helper.make_node(
        "Constant", [], ["t"], name="zero", value=numpy_helper.from_array(
            np.zeros(1, np.float32), "z"))], "else", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])])
    graph.node.extend([
        helper.make_node("Constant", [], ["c"], name="c",
                         value=numpy_helper.from_array(np.array(True), "c")),
        helper.make_node("If", ["c"], ["unused"], name="branch", then_branch=then,
                         else_branch=other)])


def _custom_train(m: onnx.ModelProto) -> None:
    _custom_in_if(m, m.training_info[0].algorithm)


def _custom_init(m: onnx.ModelProto) -> None:
    m.training_info[1].initialization.CopyFrom(helper.make_graph([], "init", [], []))
    _custom_in_if(m, m.training_info[1].initialization)


def _other_opset(m: onnx.ModelProto) -> None:
    m.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))


def _local_function(m: onnx.ModelProto) -> None:
    m.functions.append(helper.make_function("com.example", "Nop", ["a"], ["b"], [
        helper.make_node("Identity", ["a"], ["b"])], [helper.make_opsetid("", 18)]))


@pytest.mark.parametrize("edit, words", [
    (lambda m: _custom_in_if(m, m.graph), "com.example"),
    (_custom_train, "com.example"),
    (_custom_init, "com.example"),
    (_other_opset, "ai.onnx.ml"),
    (_local_function, "functions"),
], ids=["if_branch", "train_graph_if", "initialization_graph", "opset_import", "function"])
def test_only_standard_ops_anywhere(compiled: onnx.ModelProto, edit: Callable[..., None],
                                    words: str) -> None:
    bad = onnx.ModelProto()
    bad.CopyFrom(compiled)
    edit(bad)
    with pytest.raises(et.FormatError, match=words.replace(".", r"\.")):
        et.load(bad.SerializeToString())


def test_compile_refuses_custom_ops_in_subgraphs_and_functions() -> None:
    source = seed_mlp(hidden=8)
    _custom_in_if(source, source.graph)
    with pytest.raises(et.EdgetrainError, match=r"com\.example::Steal"):
        et.compile(source)
    source = seed_mlp(hidden=8)
    _local_function(source)
    with pytest.raises(et.EdgetrainError, match="inline them"):
        et.compile(source)
    source = seed_mlp(hidden=8)
    _other_opset(source)  # imported but unused: dropped, so the trainable file loads
    m = et.load(et.compile(source).proto)
    assert {o.domain for o in m.proto.opset_import} <= {"", "ai.onnx"}
    assert {o.domain for o in source.opset_import} == {"", "ai.onnx.ml"}  # caller's untouched


def _with_sparse(model: onnx.ModelProto, dims: list[int], values: np.ndarray,
                 indices: np.ndarray) -> onnx.ModelProto:
    """``model`` whose logits become ``pre * 0 + dense(sparse constant)``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    sp = helper.make_sparse_tensor(numpy_helper.from_array(values, "sv"),
                                   numpy_helper.from_array(indices, "si"), dims)
    for n in out.graph.node:
        n.output[:] = ["pre" if o == "logits" else o for o in n.output]
    zero = numpy_helper.from_array(np.zeros((), np.float32), "z")
    out.graph.node.extend([
        helper.make_node("Constant", [], ["sp"], name="sparse", sparse_value=sp),
        helper.make_node("Constant", [], ["z"], name="z", value=zero),
        helper.make_node("Mul", ["pre", "z"], ["pre0"], name="pre0"),
        helper.make_node("Add", ["pre0", "sp"], ["logits"], name="out")])
    return out


def test_sparse_tensors_are_checked_and_bounded(compiled: onnx.ModelProto) -> None:
    ok = _with_sparse(compiled, [10], np.array([1.5, -2.0], np.float32),
                      np.array([3, 7], np.int64))
    want = np.zeros(10, np.float32)
    want[[3, 7]] = [1.5, -2.0]
    np.testing.assert_array_equal(et.load(ok).run("infer", x=X)["logits"], np.stack([want] * 2))
    for dims, values, indices, words in [
            ([1 << 30], np.ones(1, np.float32), np.array([5], np.int64), "at most"),
            ([10], np.ones(1, np.float32), np.array([10], np.int64), "outside its shape"),
            ([10], np.ones(1, np.float32), np.array([-1], np.int64), "outside its shape"),
            ([10], np.ones(2, np.float32), np.array([1], np.int64), "indices of shape"),
            ([10], np.ones(1, np.float32), np.array([1], np.int32), "indices of shape"),
            ([2, 5], np.ones(1, np.float32), np.array([[1, 5]], np.int64), "outside its shape"),
            ([10], np.ones((1, 1), np.float32), np.array([1], np.int64), "1-d")]:
        with pytest.raises(et.FormatError, match=words):
            et.load(_with_sparse(compiled, dims, values, indices))


# -- paths that are not regular files ----------------------------------------------------------

def _finishes(fn: Callable[[], Any], seconds: float = 20.0) -> BaseException | None:
    """Run ``fn`` in a thread; the exception it raised (it must finish in time)."""
    box: list[BaseException | None] = [None]

    def target() -> None:
        try:
            fn()
        except BaseException as e:  # handed to the test
            box[0] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "hung"
    return box[0]


def test_fifos_devices_and_huge_files_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.onnx"
    with open(huge, "wb") as f:
        f.truncate(3 << 30)  # sparse: no disk used
    for path, words in [(str(fifo), "not a regular file"), ("/dev/zero", "not a regular file"),
                        (str(tmp_path), "not a regular file"), (str(huge), "more than"),
                        (str(tmp_path / "nope.onnx"), "no such file|does not exist")]:
        for fn in (et.load, et.compile):
            err = _finishes(lambda: fn(path))  # noqa: B023 - called in this iteration
            assert isinstance(err, et.EdgetrainError) and re.search(words, str(err)), (path, err)
    r = _cli("info", str(fifo), cwd=tmp_path)
    assert r.returncode == 2 and b"not a regular file" in r.stderr


# -- external data of compiler input models --------------------------------------------------

def _external_model(folder: Path, location: str = "weights.bin") -> tuple[str, onnx.ModelProto]:
    """seed_mlp saved with every tensor in ``location`` (inside ``folder``)."""
    source = seed_mlp(hidden=8)
    copy = onnx.ModelProto()
    copy.CopyFrom(source)
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    path = str(folder / "model.onnx")
    onnx.save_model(copy, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path, source


def _relocate(path: str, location: str, **extra: str) -> None:
    """Point every external tensor of the model at ``path`` to ``location``."""
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
            elif e.key in extra:
                e.value = extra[e.key]
    onnx.save_model(m, path)


def test_compile_reads_external_data_inside_the_model_folder(tmp_path: Path) -> None:
    for location in ("weights.bin", "data/weights.bin"):
        path, source = _external_model(tmp_path / location.replace("/", "_"), location)
        m = et.load(et.compile(path).proto)
        for t in source.graph.initializer:
            np.testing.assert_array_equal(m.parameters()[t.name], numpy_helper.to_array(t))


def test_compile_refuses_external_data_outside_the_model_folder(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(home)
    folder = home / "models" / "net"
    path, _ = _external_model(folder)
    (folder / "link_out").symlink_to(home / "secret.bin")
    (folder / "link_dev").symlink_to("/dev/zero")
    os.mkfifo(folder / "fifo.bin")
    cases = [("secret.bin", "No such file"),  # in the cwd, not in the folder
             ("../../secret.bin", "plain relative path"),
             (str(home / "secret.bin"), "plain relative path"),
             ("link_out", "outside"), ("link_dev", "outside"),
             ("fifo.bin", "not a regular file"),
             (".", "outside")]
    for location, words in cases:
        _relocate(path, location)
        err = _finishes(lambda: et.compile(path))
        assert isinstance(err, et.EdgetrainError) and words in str(err), (location, err)
        assert SECRET.decode() not in str(err)
    _relocate(path, "weights.bin", offset="999999")
    with pytest.raises(et.EdgetrainError, match="ends at byte"):
        et.compile(path)
    _relocate(path, "weights.bin", offset="0", length="4")
    with pytest.raises(et.EdgetrainError, match="external data is 4 bytes"):
        et.compile(path)


# -- metadata --------------------------------------------------------------------------------

def _with_meta(model: onnx.ModelProto, raw: str) -> bytes:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for p in out.metadata_props:
        if p.key == fmt.META_KEY:
            p.value = raw
    return out.SerializeToString()


def _edited(model: onnx.ModelProto, edit: Callable[[dict[str, Any]], Any]) -> bytes:
    meta = fmt.read_meta(model)
    edit(meta)
    return _with_meta(model, json.dumps(meta))


def _sig_input(sig: str, i: int, **kw: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda m: m["signatures"][sig]["inputs"][i].update(kw)


META_EDITS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "loss_name_html": lambda m: m["loss"].update(name="cross_entropy<img src=x onerror=alert(1)>"),
    "optimizer_name_escape": lambda m: m["optimizer"].update(name="sgd\x1b[2J"),
    "config_key": lambda m: m["optimizer"].update({"lr\n": 1.0}),
    "config_value_nested": lambda m: m["loss"].update(reduction={"a": [1]}),
    "signature_name": lambda m: m["signatures"].update(
        {"<script>": m["signatures"]["eval"]}),
    "input_name_control": _sig_input("infer", 0, name="x\x00"),
    "input_name_long": _sig_input("infer", 0, name="x" * 300),
    "producer_control": lambda m: m.update(producer="edgetrain\r\n0.1"),
    "selection_long": lambda m: m.update(selection="s" * 5000),
    "optional_without_default": lambda m: m["signatures"]["train"]["inputs"][2].pop("default"),
    "default_not_optional": _sig_input("infer", 0, default=1.0),
    "default_overflows_dtype": _sig_input("train", 2, default=1e300),
    "default_not_number": _sig_input("train", 2, default="0.1"),
    "huge_int": lambda m: m["signatures"]["infer"]["inputs"][0]["shape"].__setitem__(1, 10**30),
    "bool_dim": lambda m: m["signatures"]["infer"]["inputs"][0]["shape"].__setitem__(1, True),
    "missing_output": lambda m: m.pop("output"),
    "output_not_infer_output": lambda m: m.update(output="loss"),
    "step_missing_tensor": lambda m: m.update(step="nothing"),
    "step_not_state": lambda m: m["state"].remove(m["step"]),
    "label_not_train_input": lambda m: m.update(label="z"),
    "unknown_key": lambda m: m.update(extra=1),
    "version_bool": lambda m: m.update(format_version=True),
    "lr_negative": lambda m: m["optimizer"].update(lr=-1.0),
    "trainable_twice": lambda m: m["trainable"].append(m["trainable"][0]),
    "trainable_and_frozen": lambda m: m["frozen"].append(m["trainable"][0]),
    "missing_eval": lambda m: m["signatures"].pop("eval"),
    "infer_not_main": lambda m: m["signatures"]["infer"].update(graph="training_info/1"),
    "builtin_graph": lambda m: m["signatures"]["save"].update(kind="graph", graph="main"),
    "builtin_inputs": lambda m: m["signatures"]["save"]["inputs"][0].update(name="path"),
    "eval_updates": lambda m: m["signatures"]["eval"].update(
        updates=m["signatures"]["train"]["updates"]),
    "train_no_updates": lambda m: m["signatures"]["train"].update(updates={}),
    "update_dropped": lambda m: m["signatures"]["train"]["updates"].pop("dense1.bias"),
    "update_extra": lambda m: m["signatures"]["train"]["updates"].update({"x": "loss"}),
    "duplicate_output_name": lambda m: m["signatures"]["eval"]["outputs"].append(
        m["signatures"]["eval"]["outputs"][0]),
    "feature_signatures_partial": lambda m: m["signatures"].update(
        features=m["signatures"]["eval"]),
    "dtype_unknown": _sig_input("infer", 0, dtype="complex64"),
    "shape_deep": _sig_input("infer", 0, shape=[1] * 17),
}

RAW_EDITS: dict[str, Callable[[str], str]] = {
    "nan": lambda raw: raw.replace('"lr": 0.1', '"lr": NaN'),
    "infinity": lambda raw: raw.replace('"lr": 0.1', '"lr": Infinity'),
    "float_overflow": lambda raw: raw.replace('"lr": 0.1', '"lr": 1e999'),
    "int_5000_digits": lambda raw: raw.replace(f'"format_version": {fmt.FORMAT_VERSION}',
                                               '"format_version": ' + "1" * 5000),
    "nested_1200_deep": lambda raw: raw[:-1] + ', "x": ' + "[" * 1200 + "]" * 1200 + "}",
    "nested_50000_deep": lambda raw: raw[:-1] + ', "x": ' + "[" * 50000 + "]" * 50000 + "}",
    "duplicate_key": lambda raw: raw[:-1] + ', "output": "logits"}',
    "not_object": lambda raw: "[" + raw + "]",
    "truncated": lambda raw: raw[: len(raw) // 2],
}


@pytest.mark.parametrize("edit", sorted(META_EDITS))
def test_metadata_is_validated_strictly(compiled: onnx.ModelProto, edit: str) -> None:
    meta = fmt.read_meta(compiled)
    META_EDITS[edit](meta)
    with pytest.raises(et.FormatError) as info:
        validate_meta(meta)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    with pytest.raises(et.FormatError):
        et.load(_with_meta(compiled, json.dumps(meta)))


@pytest.mark.parametrize("edit", sorted(RAW_EDITS))
def test_metadata_json_is_parsed_strictly(compiled: onnx.ModelProto, edit: str) -> None:
    raw = next(p.value for p in compiled.metadata_props if p.key == fmt.META_KEY)
    bad = RAW_EDITS[edit](json.dumps(json.loads(raw)))
    assert bad != raw
    with pytest.raises(et.FormatError) as info:
        et.load(_with_meta(compiled, bad))
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_cli_info_validates_and_prints_one_line(compiled: onnx.ModelProto,
                                                tmp_path: Path) -> None:
    for name, data in [("html", _edited(compiled, META_EDITS["loss_name_html"])),
                       ("step", _edited(compiled, META_EDITS["step_missing_tensor"])),
                       ("deep", _with_meta(compiled, RAW_EDITS["nested_50000_deep"](
                           json.dumps(fmt.read_meta(compiled)))))]:
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(data)
        r = _cli("info", str(path), cwd=tmp_path)
        lines = r.stderr.decode().strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "edgetrain: error:" in lines[0], r.stderr
        assert b"<img" not in r.stdout


def test_validate_meta_accepts_what_the_compiler_writes() -> None:
    for kw in ({}, {"optimizer": et.optim.AdamW(lr=1e-3, clip_norm=1.0)},
               {"trainable": et.select.lora(rank=2, targets=["fc*"])},
               {"trainable": ["fc2.*"], "split_features": True}):
        tm = et.compile(mlp(hidden=16), **kw)  # type: ignore[arg-type]
        doc = tm.meta.to_json()
        assert validate_meta(json.loads(json.dumps(doc))) == doc
        validate(tm.proto, tm.meta)


# -- updates ---------------------------------------------------------------------------------

def _bn_cnn() -> onnx.ModelProto:
    """conv → batch norm → relu → global pool → dense, for batch_norm="train"."""
    rng = np.random.default_rng(0)
    arrays = {"conv.w": rng.normal(0, 0.3, (4, 1, 3, 3)), "bn.s": np.ones(4),
              "bn.b": np.zeros(4), "bn.m": np.zeros(4), "bn.v": np.ones(4),
              "fc.w": rng.normal(0, 0.3, (4, 4)), "fc.b": np.zeros(4)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()]
    nodes = [helper.make_node("Conv", ["x", "conv.w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "bn.s", "bn.b", "bn.m", "bn.v"],
                              ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc")]
    g = helper.make_graph(nodes, "cnn",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                         ["batch", 1, 6, 6])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                         ["batch", 4])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


UPDATE_CONFIGS: dict[str, Callable[[], et.TrainableModel]] = {
    "sgd_fused": lambda: et.compile(mlp(hidden=10), optimizer=et.optim.SGD(lr=0.1)),
    "sgd_momentum_wd": lambda: et.compile(mlp(hidden=10), optimizer=et.optim.SGD(
        lr=0.1, momentum=0.9, weight_decay=0.01)),
    "sgd_dampening": lambda: et.compile(mlp(hidden=10), optimizer=et.optim.SGD(
        lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.01)),
    "sgd_nesterov_clip": lambda: et.compile(mlp(hidden=10), optimizer=et.optim.SGD(
        lr=0.1, momentum=0.9, nesterov=True, clip_norm=1.0)),
    "adam_l2": lambda: et.compile(mlp(hidden=10), optimizer=et.optim.Adam(weight_decay=0.1)),
    "adamw": lambda: et.compile(mlp(hidden=10), optimizer=et.optim.AdamW()),
    "lora_adam": lambda: et.compile(mlp(hidden=10), optimizer="adam",
                                    trainable=et.select.lora(rank=2, targets=["fc*"])),
    "split_features": lambda: et.compile(mlp(hidden=10), trainable=["fc2.*"],
                                         optimizer=et.optim.SGD(lr=0.1, momentum=0.5),
                                         split_features=True),
    "batch_norm_train_adam": lambda: et.compile(_bn_cnn(), optimizer="adam",
                                                batch_norm="train"),
    "batch_norm_train_sgd": lambda: et.compile(_bn_cnn(), optimizer=et.optim.SGD(lr=0.1),
                                               batch_norm="train"),
}


def _retarget(model: onnx.ModelProto, sig: str, updates: dict[str, str]
              ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``model`` whose signature ``sig`` (metadata and update_binding alike) has ``updates``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    meta = fmt.read_meta(out)
    meta["signatures"][sig]["updates"] = updates
    fmt.write_meta(out, meta)
    ti = out.training_info[int(meta["signatures"][sig]["graph"].split("/")[1])]
    del ti.update_binding[:]
    for k, v in updates.items():
        ti.update_binding.add(key=k, value=v)
    return out, meta


@pytest.mark.parametrize("config", sorted(UPDATE_CONFIGS))
def test_swapped_updates_are_refused(config: str) -> None:
    """Every optimizer's file loads, and swapping any two same-shaped updates is refused."""
    tm = UPDATE_CONFIGS[config]()
    m = et.load(tm.proto)  # the file as compiled: every update is recognized
    m.run("train", **{s.name: np.ones([d if isinstance(d, int) else 3 for d in s.shape],
                                      dtype=s.dtype) * 0
                       for s in m.signatures["train"].inputs if not s.optional})
    inits = {t.name: t for t in fmt.stored_tensors(tm.proto, tm.meta)}
    swaps = 0
    for sig, spec in tm.meta.signatures.items():
        keys = sorted(spec.updates)
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                ta, tb = inits[a], inits[b]
                if ta.data_type != tb.data_type or list(ta.dims) != list(tb.dims):
                    continue
                updates = dict(spec.updates, **{a: spec.updates[b], b: spec.updates[a]})
                bad, meta = _retarget(tm.proto, sig, updates)
                with pytest.raises(et.FormatError, match="computes"):
                    validate(bad, meta)
                swaps += 1
    assert swaps >= 1


def test_tampered_update_target_is_refused(compiled: onnx.ModelProto) -> None:
    for updates in ({"dense1.bias": "dense2.bias.new"},  # two tensors, one new value
                    {"dense2.bias": "loss"}):
        meta = fmt.read_meta(compiled)
        bad = dict(meta["signatures"]["train"]["updates"], **updates)
        model, _ = _retarget(compiled, "train", bad)
        with pytest.raises(et.FormatError):
            et.load(model)
    bad = onnx.ModelProto()  # the binding the ONNX spec reads disagrees with the metadata
    bad.CopyFrom(compiled)
    binding = bad.training_info[0].update_binding
    binding[0].value, binding[1].value = binding[1].value, binding[0].value
    with pytest.raises(et.FormatError, match="update_binding"):
        et.load(bad)


def test_state_tensor_redefined_by_a_step_graph_is_refused(compiled: onnx.ModelProto) -> None:
    bad = onnx.ModelProto()
    bad.CopyFrom(compiled)
    bad.training_info[0].algorithm.node.append(helper.make_node(
        "Constant", [], ["dense1.bias"], name="shadow",
        value=numpy_helper.from_array(np.zeros(8, np.float32), "z")))
    with pytest.raises(et.FormatError, match=r"redefines the state tensor 'dense1\.bias'"):
        et.load(bad)


def test_lora_merge_must_name_real_tensors_and_nodes() -> None:
    tm = et.compile(mlp(hidden=10), trainable=et.select.lora(rank=2, targets=["fc*"]))
    for edit in (lambda ad: ad.update(weight="fc1.bias"),
                 lambda ad: ad.update(A="nothing"),
                 lambda ad: ad["sites"][0]["nodes"].append("fc2")):
        meta = tm.meta.to_json()
        edit(meta["lora_merge"][0])
        with pytest.raises(et.FormatError, match="LoRA adapter 0"):
            et.load(_with_meta(tm.proto, json.dumps(meta)))


# -- where state is stored (format 3) ------------------------------------------------------------

def _moved(model: onnx.ModelProto, names: set[str], to_store: bool) -> onnx.ModelProto:
    """A copy with the named tensors moved into the state store (or back to the main graph)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    src, dst = out.graph, out.training_info[0].algorithm
    if not to_store:
        src, dst = dst, src
    keep = [t for t in src.initializer if t.name not in names]
    dst.initializer.extend(t for t in src.initializer if t.name in names)
    del src.initializer[:]
    src.initializer.extend(keep)
    return out


def test_state_is_stored_with_the_train_graph_and_nothing_else_is() -> None:
    tm = et.compile(seed_mlp(hidden=8), optimizer=et.optim.SGD(lr=0.1, momentum=0.9))
    stored = {t.name for t in tm.proto.training_info[0].algorithm.initializer
              if t.name in tm.meta.variables}
    assert stored == {fmt.STEP_NAME, *(f"{p}.momentum_buffer" for p in tm.meta.trainable)}
    assert not stored & {t.name for t in tm.proto.graph.initializer}
    # Back in the main graph (as version 2 stored it) the file is still valid.
    validate(_moved(tm.proto, stored, to_store=False), tm.meta)
    # A weight the inference graph reads may not move; state may not be stored twice.
    with pytest.raises(et.FormatError, match=r"the inference graph reads 'dense1\.weight'"):
        validate(_moved(tm.proto, {"dense1.weight"}, to_store=True), tm.meta)
    twice = onnx.ModelProto()
    twice.CopyFrom(tm.proto)
    twice.graph.initializer.extend(t for t in tm.proto.training_info[0].algorithm.initializer
                                   if t.name == fmt.STEP_NAME)
    with pytest.raises(et.FormatError, match="stored twice"):
        validate(twice, tm.meta)
    # A file that says it is of version 2 cannot use the store.
    old = fmt.Metadata.from_json(dict(tm.meta.to_json(), format_version=2))
    with pytest.raises(et.FormatError, match="format version 2 does not allow"):
        validate(tm.proto, old)
