"""Training state is never non-finite or impossible: the step graph commits only finite state,
learning rates are checked, and restore refuses forged values, hostile headers, special files,
foreign architectures and (with a key) unauthenticated checkpoints. Checksums follow the
written spec (docs/format.md), and writers killed mid-save leave no temp files behind."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import edgetrain as et
from _models import data, mlp
from edgetrain import format as fmt

BACKENDS = ["onnxruntime", "reference"]
KEY = b"k" * 16 + b"-a-test-key"


def _model(backend: str = "onnxruntime", steps: int = 3, proto: onnx.ModelProto | None = None,
           **kw: Any) -> et.Model:
    kw.setdefault("optimizer", et.optim.Adam(lr=3e-3))
    m = et.compile(proto if proto is not None else mlp(hidden=16), **kw).load(backend)
    x, y = data(16)
    for _ in range(steps):
        m.run("train", x=x, y=y)
    return m


def _same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].tobytes() == b[k].tobytes(), k  # bit-identical, NaN payloads included


# -- forging checkpoints, from the written spec ----------------------------------------------

def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def _text(s: str) -> bytes:
    b = s.encode("utf-8")
    return _u64(len(b)) + b


ST = {"float32": "F32", "float64": "F64", "int64": "I64", "int32": "I32", "float16": "F16",
      "bool": "BOOL", "uint8": "U8", "int8": "I8"}


def _spec_checksum(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> str:
    """checksum_version 2 exactly as docs/format.md defines it (written independently)."""
    out = [b"edgetrain-checkpoint-checksum-v2\x00"]
    keys = sorted((k for k in meta if k not in ("checksum", "mac")), key=str.encode)
    out.append(_u64(len(keys)))
    out += [_text(k) + _text(meta[k]) for k in keys]
    out.append(_u64(len(tensors)))
    for name in sorted(tensors, key=str.encode):
        a = np.asarray(tensors[name])  # (ascontiguousarray would make a scalar 1-d)
        out += [_text(name), _text(ST[a.dtype.name]), _u64(a.ndim),
                b"".join(struct.pack("<q", d) for d in a.shape), _u64(a.nbytes), a.tobytes()]
    return hashlib.sha256(b"".join(out)).hexdigest()


def _legacy_checksum(tensors: dict[str, np.ndarray]) -> str:
    """The checksum of checkpoints written before checksum_version existed."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.asarray(tensors[name])  # (ascontiguousarray would make a scalar 1-d)
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def _forge(path: Path, tensors: dict[str, np.ndarray], legacy: bool = False,
           **extra: str) -> Path:
    """A checkpoint with a valid checksum around arbitrary tensors, as anyone can write."""
    from safetensors.numpy import save

    meta = {"kind": fmt.CHECKPOINT_KIND, "format_version": "1", "producer": "forger",
            "fingerprint": json.dumps(fmt.fingerprint({}, tensors), sort_keys=True)}
    if not legacy:
        meta["checksum_version"] = "2"
    meta.update(extra)
    meta["checksum"] = _legacy_checksum(tensors) if legacy else _spec_checksum(tensors, meta)
    path.write_bytes(save(tensors, metadata=meta))
    return path


def _header(blob: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _with_header(raw: bytes, rest: bytes) -> bytes:
    return len(raw).to_bytes(8, "little") + raw + rest


def _refused(m: et.Model, path: Path | str, match: str, **kw: Any) -> None:
    before = m.state()
    with pytest.raises(et.CheckpointError, match=match):
        m.restore(path, **kw)
    _same_state(before, m.state())


# -- the step commits only finite state ------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_at_a_huge_rate_commits_nothing(backend: str) -> None:
    """lr=1e38 is finite, but Adam's bias-corrected step overflows: before, the step counted
    (loss, rate and gradients finite) and committed infinite weights."""
    m = _model(backend)
    x, y = data(16)
    before = m.state()
    with pytest.raises(et.NonFiniteError, match="not finite"):
        m.run("train", x=x, y=y, lr=1e38)
    _same_state(before, m.state())
    m.run("train", x=x, y=y)  # and the model trains on
    assert m.step == before[fmt.STEP_NAME] + 1


def _bn_mlp() -> onnx.ModelProto:
    """x [B, 8, 8] → Gemm 16 → BatchNormalization → Relu → Gemm 10."""
    rng = np.random.default_rng(3)
    w = {"fc1.weight": rng.standard_normal((16, 64)) * 0.1, "fc1.bias": np.zeros(16),
         "bn.scale": np.ones(16), "bn.bias": np.zeros(16), "bn.mean": np.zeros(16),
         "bn.var": np.ones(16), "fc2.weight": rng.standard_normal((10, 16)) * 0.1,
         "fc2.bias": np.zeros(10)}
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["h"], transB=1),
             helper.make_node("BatchNormalization", ["h", "bn.scale", "bn.bias", "bn.mean",
                                                     "bn.var"], ["n"]),
             helper.make_node("Relu", ["n"], ["a"]),
             helper.make_node("Gemm", ["a", "fc2.weight", "fc2.bias"], ["logits"], transB=1)]
    g = helper.make_graph(
        nodes, "bn_mlp", [helper.make_tensor_value_info("x", 1, ["batch", 8, 8])],
        [helper.make_tensor_value_info("logits", 1, ["batch", 10])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


STEP_CONFIGS = {
    "sgd": lambda: et.compile(mlp(hidden=16), optimizer=et.optim.SGD(lr=0.1)),
    "sgd_momentum": lambda: et.compile(mlp(hidden=16),
                                       optimizer=et.optim.SGD(lr=0.1, momentum=0.9)),
    "adam": lambda: et.compile(mlp(hidden=16), optimizer=et.optim.Adam(lr=1e-3)),
    "adamw_clip": lambda: et.compile(mlp(hidden=16),
                                     optimizer=et.optim.AdamW(lr=1e-3, clip_norm=1.0)),
    "bn_train": lambda: et.compile(_bn_mlp(), optimizer=et.optim.Adam(lr=1e-3),
                                   batch_norm="train"),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("config", sorted(STEP_CONFIGS))
def test_every_committed_tensor_guards_the_step_counter(config: str) -> None:
    """Any driver runs the bare step graph and commits only when the counter advanced. For each
    tensor the step commits, a non-finite value in it must stop the counter — before, a
    non-finite optimizer slot or running statistic (loss and gradients still finite) counted,
    and e.g. an infinite ``exp_avg`` became NaN weights."""
    ort = pytest.importorskip("onnxruntime")
    tm = STEP_CONFIGS[config]()
    step, state_inputs, updates = fmt.standalone(tm.proto, tm.meta, "train")
    sess = ort.InferenceSession(step.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in step.graph.output]
    state = fmt.initial_state(tm.proto, tm.meta)
    x, y = data(8)
    feeds = {"x": x, "y": y, "lr": np.array(tm.meta.optimizer.lr, np.float32)}
    res = dict(zip(outs, sess.run(None, {**feeds, **{k: state[k] for k in state_inputs}})))
    assert int(res[updates[fmt.STEP_NAME]]) == 1
    state.update({k: res[out] for k, out in updates.items()})  # a real, trained state
    committed = [k for k in updates if k != fmt.STEP_NAME]
    assert len(committed) > len(tm.meta.trainable) or config.startswith("sgd")
    for k in committed:
        for bad in (np.inf, np.nan):
            forged = dict(state)
            forged[k] = state[k].copy()
            forged[k].reshape(-1)[0] = bad
            res = dict(zip(outs, sess.run(None, {**feeds,
                                                 **{s: forged[s] for s in state_inputs}})))
            assert int(res[updates[fmt.STEP_NAME]]) == int(state[fmt.STEP_NAME]), (k, bad)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_step_count_of_minus_one_never_commits() -> None:
    """Restore refuses step −1 (below); a driver that holds it anyway must not commit either:
    Adam's bias correction divides by 1 − β⁰ = 0, and before, the NaN weights counted."""
    ort = pytest.importorskip("onnxruntime")
    tm = STEP_CONFIGS["adam"]()
    step, state_inputs, updates = fmt.standalone(tm.proto, tm.meta, "train")
    sess = ort.InferenceSession(step.SerializeToString(), providers=["CPUExecutionProvider"])
    state = fmt.initial_state(tm.proto, tm.meta)
    state[fmt.STEP_NAME] = np.array(-1, np.int64)
    x, y = data(8)
    res = dict(zip([o.name for o in step.graph.output],
                   sess.run(None, {"x": x, "y": y, "lr": np.array(1e-3, np.float32),
                                   **{k: state[k] for k in state_inputs}})))
    assert int(res[updates[fmt.STEP_NAME]]) == -1


# -- learning rates --------------------------------------------------------------------------

@pytest.mark.parametrize("lr", [-0.1, float("inf"), float("nan"), 1e39])
def test_fit_refuses_a_bad_rate_before_any_step(lr: float) -> None:
    """1e39 is finite in float64 but infinite in the model's float32."""
    m = _model(steps=0)
    x, y = data(40)
    before = m.state()
    with pytest.raises(et.InputError, match="learning rate 'lr' must be finite and ≥ 0"):
        m.fit(x, y, epochs=1, batch_size=8, lr=lr, progress=False)
    _same_state(before, m.state())


def test_optimizer_hyperparameters_are_checked() -> None:
    for make, text in [
        (lambda: et.optim.SGD(lr=-1), "learning rate must be positive and finite, got -1"),
        (lambda: et.optim.SGD(lr=float("inf")), "learning rate must be positive and finite"),
        (lambda: et.optim.Adam(lr=float("nan")), "learning rate must be positive and finite"),
        (lambda: et.optim.SGD(lr=0.1, momentum=-0.5), "momentum must be nonnegative"),
        (lambda: et.optim.Adam(betas=(0.9, 1.0)), r"betas\[1\] must be a finite number in "
                                                  r"\[0, 1\)"),
        (lambda: et.optim.Adam(eps=0.0), "eps must be positive"),
        (lambda: et.optim.AdamW(weight_decay=float("inf")), "weight_decay must be nonneg"),
        (lambda: et.optim.SGD(lr=0.1, clip_norm=-1.0), "clip_norm must be positive"),
    ]:
        with pytest.raises(et.EdgetrainError, match=text):
            make()
    opt = et.optim.SGD(lr=0.1)
    opt.lr = -1.0  # changed after construction: compile checks again
    with pytest.raises(et.EdgetrainError, match="learning rate must be positive"):
        et.compile(mlp(hidden=16), optimizer=opt)


def test_a_files_bad_default_rate_is_refused() -> None:
    """The default rate comes from the model file, which may be hostile."""
    tm = et.compile(mlp(hidden=16), optimizer=et.optim.SGD(lr=0.1))
    meta = fmt.read_meta(tm.proto)
    for spec in meta["signatures"]["train"]["inputs"]:
        if spec["name"] == "lr":
            spec["default"] = -1.0
    fmt.write_meta(tm.proto, meta)
    x, y = data(8)
    try:
        m = et.load(tm.proto)
    except et.FormatError:
        return  # refused when the file is loaded: just as good
    before = m.state()
    with pytest.raises(et.InputError, match="'lr' \\(the model file's default\\) must be"):
        m.run("train", x=x, y=y)
    _same_state(before, m.state())


def test_set_parameters_and_save_refuse_non_finite_state(tmp_path: Path) -> None:
    m = _model()
    before = m.state()
    params = m.parameters()
    params["fc1.bias"] = params["fc1.bias"].copy()
    params["fc1.bias"][3] = np.nan
    with pytest.raises(et.InputError, match=r"'fc1\.bias' contains NaN or infinity"):
        m.set_parameters(params)
    _same_state(before, m.state())
    state = m.state()
    state["fc2.weight"] = np.full_like(state["fc2.weight"], np.inf)
    with pytest.raises(et.CheckpointError, match=r"refusing to save .*'fc2\.weight' contains"):
        fmt.save_checkpoint(tmp_path / "ck.safetensors", m.meta, state)
    assert not (tmp_path / "ck.safetensors").exists()


# -- restore refuses impossible values -------------------------------------------------------

def _impossible(state: dict[str, np.ndarray], case: str) -> dict[str, np.ndarray]:
    s = {k: v.copy() for k, v in state.items()}
    if case == "step -1":
        s[fmt.STEP_NAME] = np.array(-1, np.int64)
    elif case == "step 2**62":
        s[fmt.STEP_NAME] = np.array(2 ** 62, np.int64)
    elif case == "all NaN":
        s = {k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in s.items()}
    elif case == "all inf":
        s = {k: np.full_like(v, np.inf) if v.dtype.kind == "f" else v for k, v in s.items()}
    elif case == "one NaN in a slot":
        s["fc2.bias.exp_avg"][1] = np.nan
    elif case == "negative second moment":
        s["fc1.weight.exp_avg_sq"][0, 0] = -1e-3
    return s


IMPOSSIBLE = ["step -1", "step 2**62", "all NaN", "all inf", "one NaN in a slot",
              "negative second moment"]


@pytest.mark.parametrize("legacy", [False, True], ids=["v2", "legacy"])
@pytest.mark.parametrize("case", IMPOSSIBLE)
@pytest.mark.parametrize("backend", BACKENDS)
def test_impossible_state_is_refused(tmp_path: Path, backend: str, case: str,
                                     legacy: bool) -> None:
    """Before, all of these restored (their checksums are valid), and after "step -1" the next
    Adam step committed NaN weights with no error."""
    m = _model(backend)
    ck = _forge(tmp_path / "forged.safetensors", _impossible(m.state(), case), legacy=legacy)
    _refused(m, ck, "NaN or infinity|step count|negative values")
    x, y = data(16)
    m.run("train", x=x, y=y)
    assert all(np.isfinite(v).all() for v in m.state().values())


def test_negative_running_variance_is_refused(tmp_path: Path) -> None:
    m = et.compile(_bn_mlp(), optimizer=et.optim.SGD(lr=0.1), batch_norm="train").load()
    m.run("train", x=data(8)[0], y=data(8)[1])
    state = m.state()
    assert "bn.var" in state
    state["bn.var"] = state["bn.var"].copy()
    state["bn.var"][2] = -0.5
    _refused(m, _forge(tmp_path / "ck.safetensors", state), "'bn.var' holds negative values")


# -- hostile headers and files ---------------------------------------------------------------

def _good(tmp_path: Path) -> tuple[et.Model, bytes]:
    m = _model()
    return m, Path(m.save(tmp_path / "good.safetensors")).read_bytes()


def test_hostile_headers_are_checkpoint_errors(tmp_path: Path) -> None:
    """Before, a 5000-digit number raised ValueError and deep nesting RecursionError."""
    m, good = _good(tmp_path)
    header, rest = _header(good)
    name = next(k for k in header if k != "__metadata__")
    raw = json.dumps(header)
    bad = tmp_path / "bad.safetensors"
    cases = {
        "5000-digit int": raw.replace('"data_offsets": [', '"data_offsets": [' + "9" * 5000 + ", ",
                                      1),
        "nested 100000 deep": raw[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "nested 1500 deep": raw[:-1] + ', "x": ' + "{\"a\":" * 1500 + "1" + "}" * 1500 + "}",
        "duplicate key": raw[:-1] + f', "{name}": {json.dumps(header[name])}' + "}",
        "NaN literal": raw[:-1] + ', "x": NaN}',
        "non-string metadata": raw.replace('"__metadata__": {', '"__metadata__": {"n": 5, ', 1),
    }
    for version in ("1_0", "+1", " 1", "9" * 5000, "1.0", ""):
        h = dict(header, __metadata__=dict(header["__metadata__"], format_version=version))
        cases[f"format_version {version[:8]!r}"] = json.dumps(h)
    for what, text in cases.items():
        bad.write_bytes(_with_header(text.encode(), rest))
        _refused(m, bad, "corrupt header|invalid format_version|no metadata")
        assert what


DEEP_HEADER = """
import sys
import edgetrain as et
sys.setrecursionlimit(1_000_000)  # as some libraries do: the parser must not depend on it
m = et.load(sys.argv[1])
try:
    m.restore(sys.argv[2])
except et.CheckpointError as e:
    print(type(e).__name__, e)
"""


def test_deep_headers_fail_cleanly_whatever_the_recursion_limit(tmp_path: Path) -> None:
    """Nesting is bounded before parsing: with a raised recursion limit, a header nested a
    million deep used to reach the JSON parser's C recursion (a crash, not an error)."""
    path = et.compile(mlp(hidden=16)).save(tmp_path / "m.onnx")
    _, rest = _header(Path(et.load(path).save(tmp_path / "ck.safetensors")).read_bytes())
    depth = 1_000_000
    raw = ('{"__metadata__": {"kind": "edgetrain-checkpoint"}, "x": ' + "[" * depth
           + "]" * depth + "}").encode()
    (tmp_path / "deep.safetensors").write_bytes(_with_header(raw, rest))
    out = subprocess.run([sys.executable, "-c", DEEP_HEADER, path,
                          str(tmp_path / "deep.safetensors")], timeout=120, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("CheckpointError") and "nested deeper" in out.stdout


def test_fifo_device_and_folder_paths_are_refused_without_blocking(tmp_path: Path) -> None:
    """Before, a FIFO blocked restore for ever and /dev/zero read until memory ran out."""
    m, _ = _good(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def restore() -> None:
        try:
            m.restore(fifo)
        except BaseException as e:  # collected for the assertion below
            errors.append(e)

    t = threading.Thread(target=restore, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock the reader, then fail
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(5)
        pytest.fail("restore from a FIFO blocked")
    assert len(errors) == 1 and isinstance(errors[0], et.CheckpointError), errors
    assert "not a regular file" in str(errors[0])
    for path in ("/dev/zero", str(tmp_path)):
        if os.path.exists(path):
            _refused(m, path, "not a regular file")


# -- stale temp files ------------------------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temp_files_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    m, _ = _good(tmp_path)
    now = time.time()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        files = {  # name: (age in seconds, removed by the next save?)
            f".edgetrain-{_dead_pid()}-abcd1234.tmp": (120, True),   # dead writer, old
            f".edgetrain-{_dead_pid()}-abcd1235.tmp": (5, False),    # dead writer, too fresh
            f".edgetrain-{live.pid}-abcd1236.tmp": (600, False),     # live writer
            f".edgetrain-{os.getpid()}-abcd1237.tmp": (600, False),  # this process's thread
            f".edgetrain-{live.pid}-abcd1238.tmp": (7200, True),     # live pid, but 2 h old
            ".edgetrain-q1w2e3r4.tmp": (7200, True),                  # older release, 2 h old
            ".edgetrain-q1w2e3r5.tmp": (600, False),                  # older release, young
            "notes.tmp": (7200, False),                               # not ours
            f".edgetrain-{_dead_pid()}-abcd1239.tmp.keep": (7200, False),
        }
        for name, (age, _) in files.items():
            (tmp_path / name).write_bytes(b"partial")
            os.utime(tmp_path / name, (now - age, now - age))
        folder = tmp_path / f".edgetrain-{_dead_pid()}-abcd1240.tmp"  # a folder: kept
        folder.mkdir()
        os.utime(folder, (now - 7200, now - 7200))
        m.save(tmp_path / "ck.safetensors")
        for name, (_, removed) in files.items():
            assert (tmp_path / name).exists() != removed, name
        assert folder.is_dir()
    finally:
        live.kill()
        live.wait()


# -- architecture ----------------------------------------------------------------------------

def _with_activation(op: str) -> onnx.ModelProto:
    proto = mlp(hidden=16)
    for n in proto.graph.node:
        if n.op_type == "Relu":
            n.op_type = op
    return proto


def test_a_different_network_with_the_same_tensors_is_refused(tmp_path: Path) -> None:
    """Same names, dtypes and shapes, another activation: before, it restored silently."""
    m = _model()
    other = _model(proto=_with_activation("Tanh"))
    assert fmt.fingerprint({}, m.state()) == fmt.fingerprint({}, other.state())
    _refused(m, other.save(tmp_path / "tanh.safetensors"), "architecture")
    betas = _model(optimizer=et.optim.Adam(lr=3e-3, betas=(0.8, 0.99)))
    _refused(m, betas.save(tmp_path / "betas.safetensors"), "optimizer configuration")
    # The rate is not identity: every step may override it.
    m.restore(_model(optimizer=et.optim.Adam(lr=1e-1)).save(tmp_path / "lr.safetensors"))


def test_the_same_model_always_matches(tmp_path: Path) -> None:
    """Re-saved files, both backends and checkpoints of any step share one architecture; a
    checkpoint without it (an older release's) restores on the other checks."""
    path = et.compile(mlp(hidden=16), optimizer=et.optim.Adam(lr=3e-3)).save(
        tmp_path / "model.onnx")
    resaved = str(tmp_path / "resaved.onnx")
    onnx.save(onnx.load(path), resaved)
    m = et.load(path)
    x, y = data(16)
    cks = []
    for step in range(3):
        cks.append((m.save(tmp_path / f"s{step}.safetensors"), m.state()))
        m.run("train", x=x, y=y)
    for backend in BACKENDS:
        for file in (path, resaved):
            other = et.load(file, backend=backend)
            assert other.identity == m.identity
            for ck, state in cks:
                other.restore(ck)
                _same_state(other.state(), state)
    legacy = _forge(tmp_path / "legacy.safetensors", cks[1][1], legacy=True)
    m.restore(legacy)
    _same_state(m.state(), cks[1][1])


def test_architecture_does_not_depend_on_the_python_process(tmp_path: Path) -> None:
    """Defined bytes, not reprs or hash order: processes with other hash seeds agree."""
    path = et.compile(mlp(hidden=16), optimizer=et.optim.AdamW(lr=3e-3)).save(
        tmp_path / "m.onnx")
    script = ("import sys, edgetrain as et; "
              "print(et.load(sys.argv[1], backend='reference').identity.architecture)")
    seen = set()
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", script, path], check=True, timeout=120,
                             capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        seen.add(out.stdout.strip())
    assert seen == {et.load(path).identity.architecture}


# -- checksum and MAC ------------------------------------------------------------------------

def test_checksum_follows_the_written_spec_and_covers_the_metadata(tmp_path: Path) -> None:
    m, good = _good(tmp_path)
    header, rest = _header(good)
    meta = header["__metadata__"]
    from safetensors.numpy import load

    tensors = load(good)
    assert meta["checksum_version"] == "2"
    assert meta["checksum"] == _spec_checksum(tensors, meta)
    assert meta["architecture"] == m.identity.architecture
    for key, value in [("producer", "someone else"), ("architecture", "0" * 64),
                       ("fingerprint", "{}"), ("extra", "x")]:
        h = dict(header, __metadata__=dict(meta, **{key: value}))
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(_with_header(json.dumps(h).encode(), rest))
        _refused(m, bad, "fails its checksum")


def test_mac_authenticates_checkpoints(tmp_path: Path) -> None:
    m = _model()
    signed = m.save(tmp_path / "signed.safetensors", key=KEY)
    plain = m.save(tmp_path / "plain.safetensors")
    x, y = data(16)
    saved = m.state()
    m.run("train", x=x, y=y)
    m.restore(signed, key=KEY)
    _same_state(m.state(), saved)
    m.run("train", x=x, y=y)
    m.run("restore", checkpoint_path=signed)  # no key: integrity only, still restores
    _same_state(m.state(), saved)
    m.run("train", x=x, y=y)
    _refused(m, signed, "fails its MAC check", key=b"another key of 16+ bytes")
    _refused(m, plain, "carries no MAC, but a key was given", key=KEY)
    # A forger without the key: new values, a valid checksum, the old MAC (or none) → refused
    # with the key; without one it restores, since a checksum anyone can recompute.
    header, _ = _header(Path(signed).read_bytes())
    state = dict(saved, **{"fc2.bias": saved["fc2.bias"] + 1})
    forged = _forge(tmp_path / "forged.safetensors", state, mac=header["__metadata__"]["mac"],
                    architecture=header["__metadata__"]["architecture"])
    _refused(m, forged, "fails its MAC check", key=KEY)
    m.restore(forged)
    _same_state(m.state(), state)
    m.run("save", checkpoint_path=str(tmp_path / "run.safetensors"), key=KEY)  # via run too
    m.restore(tmp_path / "run.safetensors", key=KEY)


def test_keys_must_be_bytes_of_16_or_more(tmp_path: Path) -> None:
    m = _model()
    for key, text in [("a password", "must be bytes"), (b"short", "has 5 bytes")]:
        with pytest.raises(et.InputError, match=text):
            m.save(tmp_path / "ck.safetensors", key=key)  # type: ignore[arg-type]
        with pytest.raises(et.InputError, match=text):
            m.restore(tmp_path / "ck.safetensors", key=key)  # type: ignore[arg-type]
    assert not (tmp_path / "ck.safetensors").exists()


NODE_ROUND_TRIP = """
import { readFileSync, writeFileSync } from 'fs';
const [driver, python, legacy, out] = process.argv.slice(2);
const { decodeCheckpoint, encodeCheckpoint } = await import(driver);
const a = await decodeCheckpoint(new Uint8Array(readFileSync(python)));
await decodeCheckpoint(new Uint8Array(readFileSync(legacy)));  // checksum version 1
const bad = new Uint8Array(readFileSync(python));
bad[bad.length - 1] ^= 1;
let refused = false;
try { await decodeCheckpoint(bad); } catch (e) { refused = /fails its checksum/.test(e.message); }
if (!refused) throw new Error('a flipped bit was accepted');
writeFileSync(out, await encodeCheckpoint(a.tensors,
  { extra: { architecture: a.metadata.architecture } }));
"""


def test_the_browser_driver_computes_the_same_checksums(tmp_path: Path) -> None:
    """The JS driver (js/src/checkpoint.js, which pages, Node.js and React Native share) verifies
    Python's checkpoints (checksum versions 2 and 1) and writes ones that Python verifies, with
    the architecture carried along."""
    import shutil

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    from edgetrain.web._jsdriver import find_js_driver

    driver = (find_js_driver() / "checkpoint.js").as_uri()
    (tmp_path / "run.mjs").write_text(NODE_ROUND_TRIP)
    m = _model()
    ck = m.save(tmp_path / "python.safetensors")
    legacy = Path(__file__).parent / "fixtures" / "format_v1" / "checkpoint.safetensors"
    out = tmp_path / "node.safetensors"
    subprocess.run([node, str(tmp_path / "run.mjs"), driver, ck, str(legacy), str(out)],
                   check=True, timeout=60, cwd=tmp_path)
    header, _ = _header(out.read_bytes())
    assert header["__metadata__"]["checksum_version"] == "2"
    assert header["__metadata__"]["architecture"] == m.identity.architecture
    saved = m.state()
    m.run("train", x=data(16)[0], y=data(16)[1])
    m.restore(out)
    _same_state(m.state(), saved)


# -- weights-only restore --------------------------------------------------------------------

def _bn(optimizer: Any, steps: int = 3, **kw: Any) -> et.Model:
    """The BN MLP trained a few steps with batch statistics (so its running stats moved)."""
    m = et.compile(_bn_mlp(), optimizer=optimizer, batch_norm="train", **kw).load()
    x, y = data(32)
    for _ in range(steps):
        m.run("train", x=x, y=y)
    return m


def test_weights_restore_across_optimizers_keeps_batch_norm_statistics(tmp_path: Path) -> None:
    """An SGD checkpoint into the same network compiled with Adam: refused as a whole (the
    optimizer state differs), and its weights — batch-norm running statistics included —
    restore with a fresh optimizer state; the model then predicts exactly as the source.
    Loading only the trainable tensors leaves the statistics behind and predicts otherwise."""
    src = _bn(et.optim.SGD(lr=0.1, momentum=0.9), steps=20)
    ck = src.save(tmp_path / "sgd.safetensors")
    dst = _bn(et.optim.Adam(lr=1e-3), steps=2)
    _refused(dst, ck, r"belongs to another model.*parts=\('weights',\)")
    assert dst.weight_names() == [*dst.trainable, "bn.mean", "bn.var"]
    x, _ = data(64, seed=5)
    partial = _bn(et.optim.Adam(lr=1e-3), steps=0)
    partial.set_parameters(src.parameters())
    assert not np.array_equal(partial.predict(x), src.predict(x))  # stale statistics

    dst.restore(ck, parts=("weights",))
    _same_state(dst.weights(), src.weights())
    np.testing.assert_array_equal(dst.predict(x), src.predict(x))
    fresh = fmt.initial_state(dst.proto, dst.meta)
    for k, v in dst.state().items():
        if k not in dst.weight_names():
            assert v.tobytes() == fresh[k].tobytes(), k  # Adam's slots and the step: initial
    assert dst.step == 0
    dst.run("train", x=x, y=data(64, seed=5)[1])  # and it trains on
    partial.set_parameters(src.weights())  # set_parameters takes the statistics too
    np.testing.assert_array_equal(partial.predict(x), src.predict(x))


def test_a_file_loaded_from_disk_keeps_its_state_values_once(tmp_path: Path) -> None:
    """Loaded from a path, the parsed file keeps the state tensors' names, types and shapes,
    not their values (the backend holds those); everything that reads the file still works:
    a weights-only restore starts the optimizer afresh from the file's own start, the
    export carries the trained weights, and a ModelProto a caller passes stays untouched."""
    tm = et.compile(_bn_mlp(), optimizer=et.optim.Adam(lr=1e-3), batch_norm="train")
    path = tm.save(tmp_path / "model.onnx")
    m, shared = et.load(path), et.load(tm.proto)
    variable = m.meta.variables
    for t in fmt.stored_tensors(m.proto, m.meta):
        if t.name in variable:
            assert not t.raw_data and list(t.dims) == list(
                next(u for u in fmt.stored_tensors(tm.proto, tm.meta) if u.name == t.name).dims)
    assert all(t.raw_data for t in fmt.stored_tensors(tm.proto, tm.meta) if t.name in variable
               and t.dims)
    x, y = data(32)
    for model in (m, shared):
        for _ in range(3):
            model.run("train", x=x, y=y)
    _same_state(m.state(), shared.state())
    ck = m.save(tmp_path / "ck.safetensors")
    m.restore(ck, parts=("weights",))
    fresh = fmt.initial_state(tm.proto, tm.meta)
    for k, v in m.state().items():
        if k not in m.weight_names():
            assert v.tobytes() == fresh[k].tobytes(), k
    _same_state(m.weights(), shared.weights())
    plain = onnx.load(m.export(tmp_path / "plain.onnx"))
    baked = {t.name: onnx.numpy_helper.to_array(t) for t in plain.graph.initializer}
    for k, v in shared.parameters().items():
        np.testing.assert_array_equal(baked[k], v, err_msg=k)


def test_weights_restore_refuses_foreign_networks_and_impossible_values(tmp_path: Path) -> None:
    m = _model(optimizer=et.optim.SGD(lr=0.1))
    # Same tensor names and shapes, another activation: still another network.
    tanh = _model(proto=_with_activation("Tanh"), optimizer=et.optim.Adam(lr=1e-3))
    _refused(m, tanh.save(tmp_path / "tanh.safetensors"), "network differs",
             parts=("weights",))
    # A value no training run writes, in a tensor that would not even be restored.
    adam = _model(optimizer=et.optim.Adam(lr=1e-3))
    state = adam.state()
    state["fc1.bias.exp_avg"] = np.full_like(state["fc1.bias.exp_avg"], np.nan)
    forged = _forge(tmp_path / "nan.safetensors", state,
                    architecture=adam.identity.architecture,
                    weights_architecture=adam.identity.weights)
    _refused(m, forged, "NaN or infinity", parts=("weights",))
    # A tensor the checkpoint trained but this model keeps frozen: refused, not dropped.
    head = _model(steps=0, optimizer=et.optim.SGD(lr=0.1), trainable=["fc2.*"])
    _refused(head, adam.save(tmp_path / "adam.safetensors"), "keeps frozen",
             parts=("weights",))
    head_adam = _model(optimizer=et.optim.Adam(lr=1e-3), trainable=["fc2.*"])
    head.restore(head_adam.save(tmp_path / "head.safetensors"), parts=("weights",))
    _same_state(head.weights(), head_adam.weights())
    with pytest.raises(et.InputError, match="parts must be"):
        m.restore(tmp_path / "adam.safetensors", parts=("optimizer",))


def test_weights_restore_of_older_checkpoints(tmp_path: Path) -> None:
    """A checkpoint written before the weights architecture was recorded restores its weights
    only into the model that wrote it (its full architecture); one with no architecture at
    all restores on names, dtypes and shapes, as a full restore does."""
    sgd = _model(optimizer=et.optim.SGD(lr=0.1, momentum=0.9))
    state = sgd.state()
    older = _forge(tmp_path / "older.safetensors", state,
                   architecture=sgd.identity.architecture)
    adam = _model(optimizer=et.optim.Adam(lr=1e-3))
    _refused(adam, older, "predates weights-only restore", parts=("weights",))
    same = _model(steps=0, optimizer=et.optim.SGD(lr=0.1, momentum=0.9))
    same.restore(older, parts=("weights",))
    _same_state(same.weights(), sgd.weights())
    adam.restore(_forge(tmp_path / "oldest.safetensors", state), parts=("weights",))
    _same_state(adam.weights(), sgd.weights())
