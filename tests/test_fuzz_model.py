"""Fuzzing model files: every mutation ends in an EdgetrainError or a model that works.

Mutations are structure-aware (edited metadata JSON at any depth, raw JSON edits, graph edits:
external-data references, sparse tensors, custom domains in subgraphs, renamed outputs,
swapped updates, bad dims and dtypes) or blind (bit flips, overwrites, truncations), drawn
by hypothesis with derandomized seeds. Every case runs in a folder next to a canary secret
(in the working directory and in the folder above the model): a case either raises an
``EdgetrainError`` with a one-line message, or loads, infers and trains with outputs of the
declared shapes; the secret's bytes appear in no output and no message, a case that points a
tensor at another file is always refused, and each case is time-bound (a hang kills the run
with a traceback dump instead of stalling CI). The default run takes a few thousand cases;
``-m slow`` adds a longer run of each fuzzer.
"""

from __future__ import annotations

import faulthandler
import itertools
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import edgetrain as et
from _hostile import SECRET, VARIANTS, external_tensor, hostile, sparse_external
from conftest import long_fuzz
from edgetrain import format as fmt
from edgetrain.demos._models import seed_mlp
from edgetrain.format._validate import iter_graphs, iter_tensors

# fuzz suites run thousands of cases
pytestmark = pytest.mark.slow

X = np.random.default_rng(0).random((3, 8, 8), dtype=np.float32)
Y = np.array([1, 2, 3], dtype=np.int64)
CASE_SECONDS = 30


def _fuzz(n: int) -> Any:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def base() -> onnx.ModelProto:
    return et.compile(seed_mlp(hidden=8), optimizer=et.optim.Adam(lr=0.01)).proto


@pytest.fixture(scope="module")
def base_bytes(base: onnx.ModelProto) -> bytes:
    return base.SerializeToString()


@pytest.fixture(scope="module")
def base_json(base: onnx.ModelProto) -> str:
    return json.dumps(fmt.read_meta(base), sort_keys=True)


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """root/secret.bin, root/work/secret.bin (the cwd), root/work/models/ (the model's folder)."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "secret.bin").write_bytes(SECRET)
    (root / "work" / "models").mkdir(parents=True)
    (root / "work" / "secret.bin").write_bytes(SECRET)
    before = os.getcwd()
    os.chdir(root / "work")
    try:
        yield root / "work" / "models"
    finally:
        os.chdir(before)


LOCATIONS = ["secret.bin", "../secret.bin", "../../secret.bin", "model.onnx", "/dev/zero"]


class CaseTimeout(Exception):
    """A case ran longer than CASE_SECONDS."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout(f"a case ran longer than {CASE_SECONDS} s")


_names = itertools.count()


def _run_case(place: Path, data: bytes, must_refuse: bool = False) -> str:
    """Load ``data`` from a file and use it; 'refused' or 'worked'. Fails on anything else.

    Each case is time-bound: SIGALRM interrupts Python code and blocking system calls (a
    FIFO read), and a faulthandler watchdog ends the whole run, with every thread's stack,
    should native code hang where no signal reaches it.
    """
    path = place / f"model-{next(_names)}.onnx"  # a fresh name: truncating costs a flush
    path.write_bytes(data)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        outcome, seen = _use(str(path))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        path.unlink()
    assert SECRET not in seen, "the canary secret came out"
    if must_refuse:
        assert outcome == "refused", "a file pointing at another file was accepted"
    return outcome


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    faulthandler.dump_traceback_later(1800, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _use(path: str) -> tuple[str, bytes]:
    try:
        m = et.load(path)
        logits = m.run("infer", x=X)[m.meta.output]
        assert logits.shape[0] == len(X)
        seen = logits.tobytes()
        try:
            loss = m.run("train", x=X, y=Y)["loss"]
            assert np.shape(loss) == ()
            seen += m.run("infer", x=X)[m.meta.output].tobytes()
        except et.NonFiniteError:
            pass  # flipped weights may overflow: refused and counted as such
        seen += b"".join(v.tobytes() for v in m.state().values())
        return "worked", seen
    except et.EdgetrainError as e:
        msg = str(e)
        assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"
        return "refused", msg.encode("utf-8", "surrogateescape")


# -- blind byte mutations --------------------------------------------------------------------

def _mutate_bytes(data: st.DataObject, raw: bytes) -> bytes:
    buf = bytearray(raw)
    kind = data.draw(st.sampled_from(["truncate", "flip", "overwrite"]))
    if kind == "truncate":
        return bytes(buf[:data.draw(st.integers(0, len(buf) - 1))])
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(buf)
    i = data.draw(st.integers(0, len(buf) - 1))
    chunk = data.draw(st.binary(min_size=1, max_size=16))
    buf[i:i + len(chunk)] = chunk
    return bytes(buf)


@_fuzz(400)
@given(data=st.data())
def test_byte_mutations(base_bytes: bytes, place: Path, data: st.DataObject) -> None:
    _run_case(place, _mutate_bytes(data, base_bytes))


@pytest.mark.slow
@long_fuzz
@_fuzz(4000)
@given(data=st.data())
def test_byte_mutations_long(base_bytes: bytes, place: Path, data: st.DataObject) -> None:
    _run_case(place, _mutate_bytes(data, base_bytes))


# -- metadata edits --------------------------------------------------------------------------

NASTY = ["<img src=x onerror=alert(1)>", "\x1b[2J\x1b[31m", "a\nb", "\u202etxt", "x" * 300, "",
         "../../secret.bin", "edgetrain.step", "logits", "loss", "dense1.bias.new",
         "dense2.bias", "training_info/7", "training_info/1", "main", "builtin", "graph",
         "float32", "str", "cross_entropy", "sgd", "\ud800", "null", "y", "lr", "x"]
NAMES = [n for n in NASTY if n != "\ud800"]  # protobuf strings must be encodable
_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                  st.sampled_from([10**400, 2**53 + 1, 2**31, -1, 0, 10**3000]),
                  st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(NASTY),
                  st.text(max_size=10))
_JSON = st.recursive(_LEAF, lambda ch: st.lists(ch, max_size=3)
                     | st.dictionaries(st.sampled_from(NASTY) | st.text(max_size=6), ch,
                                       max_size=3), max_leaves=8)


def _slots(doc: Any) -> list[tuple[Any, Any]]:
    """(container, key) for every value inside the document, at any depth."""
    out, stack = [], [doc]
    while stack:
        c = stack.pop()
        keys = list(c) if isinstance(c, dict) else range(len(c)) if isinstance(c, list) else []
        for k in keys:
            out.append((c, k))
            stack.append(c[k])
    return out


def _edit_meta(data: st.DataObject, meta: dict[str, Any]) -> str:
    """One structural edit of the metadata document; its JSON text."""
    slots = _slots(meta)
    c, k = slots[data.draw(st.integers(0, len(slots) - 1))]
    op = data.draw(st.sampled_from(["delete", "replace", "retype", "rename", "move"]))
    if op == "delete":
        del c[k]
    elif op == "replace":
        c[k] = data.draw(_JSON)
    elif op == "retype":
        v = c[k]
        c[k] = data.draw(st.sampled_from([str(v)[:50], [v], {"v": v}, None, 1, 1.5, True]))
    elif op == "rename" and isinstance(c, dict):
        c[data.draw(st.sampled_from(NASTY))] = c.pop(k)
    else:
        c2, k2 = slots[data.draw(st.integers(0, len(slots) - 1))]
        c[k] = json.loads(json.dumps(c2[k2]))  # a copy: an ancestor must not become a cycle
    return json.dumps(meta, sort_keys=True)


RAW_EDITS: list[Callable[[str, Any], str]] = [
    lambda raw, d: raw[:d.draw(st.integers(0, len(raw)))] + d.draw(st.text(max_size=4)),
    lambda raw, d: raw.replace("0.01", d.draw(st.sampled_from(
        ["NaN", "Infinity", "-Infinity", "1e999", "1" * 5000, "01", "0x1", "true"])), 1),
    lambda raw, d: raw[:-1] + ', "deep": ' + "[" * d.draw(st.integers(500, 60000))
    + "]" * 3 + "}",
    lambda raw, d: raw[:-1] + f', "{d.draw(st.sampled_from(["output", "step", "trainable"]))}'
    '": "logits"}',
    lambda raw, d: raw.replace('"', "'", d.draw(st.integers(1, 3))),
]


def _with_raw_meta(model: onnx.ModelProto, raw: str) -> bytes:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for p in out.metadata_props:
        if p.key == fmt.META_KEY:
            p.value = raw
    return out.SerializeToString()


def _meta_case(base: onnx.ModelProto, base_json: str, place: Path,
               data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        raw = _edit_meta(data, json.loads(base_json))
    else:
        raw = data.draw(st.sampled_from(RAW_EDITS))(base_json, data)
    _run_case(place, _with_raw_meta(base, raw))


@_fuzz(800)
@given(data=st.data())
def test_metadata_mutations(base: onnx.ModelProto, base_json: str, place: Path,
                            data: st.DataObject) -> None:
    _meta_case(base, base_json, place, data)


@pytest.mark.slow
@long_fuzz
@_fuzz(5000)
@given(data=st.data())
def test_metadata_mutations_long(base: onnx.ModelProto, base_json: str, place: Path,
                                 data: st.DataObject) -> None:
    _meta_case(base, base_json, place, data)


# -- graph edits -----------------------------------------------------------------------------

def _pick(data: st.DataObject, items: list[Any]) -> Any:
    return items[data.draw(st.integers(0, len(items) - 1))]


def _external(m: onnx.ModelProto, data: st.DataObject) -> bool:
    t, _ = _pick(data, list(iter_tensors(m)))
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    t.external_data.add(key="location", value=data.draw(st.sampled_from(LOCATIONS)))
    if data.draw(st.booleans()):
        t.ClearField("raw_data")
    return True


def _hostile_variant(m: onnx.ModelProto, data: st.DataObject) -> bool:
    m.CopyFrom(hostile(m, data.draw(st.sampled_from(sorted(VARIANTS))),
                       data.draw(st.sampled_from(LOCATIONS))))
    return True


def _attr_tensor(m: onnx.ModelProto, data: st.DataObject) -> bool:
    """An attribute of any claimed type smuggling an external tensor in one of its fields."""
    node = _pick(data, [n for g, _ in iter_graphs(m) for n in g.node])
    a = node.attribute.add()
    a.name = data.draw(st.sampled_from(["value", "alpha", "extra"]))
    a.type = data.draw(st.sampled_from([1, 4, 5, 11]))
    field = data.draw(st.sampled_from(["t", "tensors", "sparse_tensor", "sparse_tensors"]))
    loc = data.draw(st.sampled_from(LOCATIONS))
    if field == "t":
        a.t.CopyFrom(external_tensor("smuggled", loc))
    elif field == "tensors":
        a.tensors.append(external_tensor("smuggled", loc))
    elif field == "sparse_tensor":
        a.sparse_tensor.CopyFrom(sparse_external("smuggled", loc))
    else:
        a.sparse_tensors.append(sparse_external("smuggled", loc))
    return True


def _sparse(m: onnx.ModelProto, data: st.DataObject) -> bool:
    """A sparse tensor with drawn (possibly inconsistent or huge) shape, values, indices."""
    dims = data.draw(st.lists(st.integers(-1, 2**40), min_size=0, max_size=3))
    nnz = data.draw(st.integers(0, 6))
    vals = numpy_helper.from_array(np.ones(nnz, np.float32), "sp")
    rank2 = data.draw(st.booleans()) and len(dims) > 0
    idx = np.array(data.draw(st.lists(st.integers(-3, 2**41), min_size=nnz * (len(dims) if
                                      rank2 else 1), max_size=nnz * (len(dims) if rank2
                                                                     else 1))), np.int64)
    idx_t = numpy_helper.from_array(idx.reshape((nnz, -1)) if rank2 and nnz else idx, "sp.i")
    sp = helper.make_sparse_tensor(vals, idx_t, dims)
    if data.draw(st.booleans()):
        m.graph.sparse_initializer.append(sp)
    else:
        g, _ = _pick(data, list(iter_graphs(m)))
        g.node.append(helper.make_node("Constant", [], ["sp_out"], name="sp", sparse_value=sp))
    return False


def _domain(m: onnx.ModelProto, data: st.DataObject) -> bool:
    node = _pick(data, [n for g, _ in iter_graphs(m) for n in g.node])
    node.domain = data.draw(st.sampled_from(["com.microsoft", "ai.onnx.ml", "evil", ""]))
    return node.domain != ""


def _rename_output(m: onnx.ModelProto, data: st.DataObject) -> bool:
    g, _ = _pick(data, list(iter_graphs(m)))
    if not len(g.output):
        return False
    out = _pick(data, list(g.output))
    new = data.draw(st.sampled_from(NAMES))
    for n in g.node:
        for i, o in enumerate(n.output):
            if o == out.name and data.draw(st.booleans()):
                n.output[i] = new
    out.name = new
    return False


def _swap_updates(m: onnx.ModelProto, data: st.DataObject) -> bool:
    meta = fmt.read_meta(m)
    ups = meta["signatures"]["train"]["updates"]
    a, b = data.draw(st.lists(st.sampled_from(sorted(ups)), min_size=2, max_size=2,
                              unique=True))
    ups[a], ups[b] = ups[b], ups[a]
    fmt.write_meta(m, meta)
    if data.draw(st.booleans()):  # the update_binding too, or not
        for bnd in m.training_info[0].update_binding:
            bnd.value = ups[bnd.key]
    return True


def _tensor_edit(m: onnx.ModelProto, data: st.DataObject) -> bool:
    inits = m.graph.initializer
    t = _pick(data, list(inits))
    kind = data.draw(st.sampled_from(["dims", "dtype", "drop", "extra"]))
    if kind == "dims":
        del t.dims[:]
        t.dims.extend(data.draw(st.lists(st.integers(-2, 2**40), max_size=5)))
    elif kind == "dtype":
        t.data_type = data.draw(st.integers(0, 30))
    elif kind == "drop":
        inits.remove(t)
    else:
        e = inits.add()
        e.name = data.draw(st.sampled_from(NAMES) | st.text(max_size=8))
        e.data_type = TensorProto.FLOAT
        e.dims.extend([data.draw(st.integers(0, 2**33))])
    return False


def _imports(m: onnx.ModelProto, data: st.DataObject) -> bool:
    if data.draw(st.booleans()):
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    else:
        m.functions.append(helper.make_function("evil", "F", ["a"], ["b"], [
            helper.make_node("Identity", ["a"], ["b"])], [helper.make_opsetid("", 18)]))
    return True


#: edit(model, data) -> whether the file must be refused.
GRAPH_EDITS: dict[str, Callable[[onnx.ModelProto, st.DataObject], bool]] = {
    "external": _external, "hostile": _hostile_variant, "attr_tensor": _attr_tensor,
    "sparse": _sparse, "domain": _domain, "rename_output": _rename_output,
    "swap_updates": _swap_updates, "tensor": _tensor_edit, "imports": _imports,
}


def _graph_case(base_bytes: bytes, place: Path, data: st.DataObject) -> None:
    m = onnx.ModelProto()
    m.ParseFromString(base_bytes)
    must_refuse = GRAPH_EDITS[data.draw(st.sampled_from(sorted(GRAPH_EDITS)))](m, data)
    _run_case(place, m.SerializeToString(), must_refuse)


@_fuzz(800)
@given(data=st.data())
def test_graph_mutations(base_bytes: bytes, place: Path, data: st.DataObject) -> None:
    _graph_case(base_bytes, place, data)


@pytest.mark.slow
@long_fuzz
@_fuzz(5000)
@given(data=st.data())
def test_graph_mutations_long(base_bytes: bytes, place: Path, data: st.DataObject) -> None:
    _graph_case(base_bytes, place, data)


def test_fuzzers_reach_both_outcomes(base: onnx.ModelProto, place: Path) -> None:
    """The harness itself: the intact file works, an external reference is refused."""
    assert _run_case(place, base.SerializeToString()) == "worked"
    bad = hostile(base, "constant_sparse_value", "secret.bin")
    assert _run_case(place, bad.SerializeToString(), must_refuse=True) == "refused"
