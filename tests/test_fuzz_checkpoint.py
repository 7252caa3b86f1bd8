"""Fuzzing checkpoints (hypothesis, derandomized: the same cases every run).

Four families of mutations of a valid checkpoint, each case ending in exactly one of two ways:
a ``CheckpointError`` with a message and the model's state bit-identical to before, or a
restore that loads exactly the file's tensors, which are valid (finite, a step count in range,
nonnegative second moments). Anything else — another exception, a hang — fails the test.

- raw bytes: truncations, bit flips, overwrites, insertions, deletions;
- the JSON header: shapes, dtypes, offsets, dropped or extra entries, 5000-digit numbers,
  nesting thousands deep, duplicate keys, NaN literals, non-string metadata, a wrong length;
- forged files with a recomputed checksum: NaN, infinity, negative steps, random values, other
  dtypes, shapes and names, edited metadata and versions — here the outcome is predicted
  exactly, so a valid forgery must restore and an invalid one must be refused;
- the same forgeries of a MAC'd checkpoint restored with the key: all refused.

The default run has about 3,000 cases; ``-m slow`` runs ten times as many.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load, save

import edgetrain as et
from _models import data, mlp
from conftest import long_fuzz
from edgetrain import format as fmt
from edgetrain.format import _integrity as ckpt

# fuzz suites run thousands of cases
pytestmark = pytest.mark.slow

KEY = b"fuzzing-key-0123456789"
BUDGET = [pytest.param(1, id="default"),
          pytest.param(10, id="x10", marks=[pytest.mark.slow, long_fuzz])]


class Target:
    """A trained model, its checkpoint (plain and MAC'd) and a scratch file."""

    def __init__(self, backend: str, folder: Path) -> None:
        self.model = et.compile(mlp(hidden=16), optimizer=et.optim.Adam(lr=3e-3)).load(backend)
        x, y = data(16)
        for _ in range(2):
            self.model.run("train", x=x, y=y)
        self.good = Path(self.model.save(folder / "good.safetensors")).read_bytes()
        self.signed = Path(self.model.save(folder / "signed.safetensors", key=KEY)).read_bytes()
        self.state = self.model.state()
        self.path = folder / "case.safetensors"
        self.pristine = folder / "good.safetensors"
        self.dirty = False

    def restore(self, blob: bytes, key: bytes | None = None) -> str:
        """'refused' or 'restored', after checking what each outcome promises."""
        m = self.model
        if self.dirty:  # every case starts from the same state
            m.restore(self.pristine)
            self.dirty = False
        before = m.state()
        self.path.write_bytes(blob)
        try:
            m.restore(self.path, key=key)
        except et.CheckpointError as e:
            assert str(e) and "Traceback" not in str(e)
            after = m.state()
            assert all(before[k].tobytes() == after[k].tobytes() for k in before), "changed"
            return "refused"
        self.dirty = True
        after = m.state()
        tensors = load(blob)
        assert after.keys() == tensors.keys()
        for k, v in after.items():
            assert v.dtype == tensors[k].dtype and v.tobytes() == tensors[k].tobytes(), k
        assert _valid(after)
        return "restored"


def _valid(tensors: dict[str, np.ndarray]) -> bool:
    """What restore promises of the values it accepts (independent of its implementation)."""
    for name, a in tensors.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return False
        if name.endswith(".exp_avg_sq") and a.size and a.min() < 0:
            return False
    step = tensors[fmt.STEP_NAME]
    return step.shape == () and 0 <= int(step) <= 2 ** 53


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Target:
    return Target("onnxruntime", tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def reference_target(tmp_path_factory: pytest.TempPathFactory) -> Target:
    return Target("reference", tmp_path_factory.mktemp("fuzz-ref"))


def _run(examples: int, body: Callable[[st.DataObject], None]) -> None:
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        body(data)

    run()


# -- raw bytes -------------------------------------------------------------------------------

def _raw(blob: bytes, data: st.DataObject) -> bytes:
    buf = bytearray(blob)
    header_end = 8 + int.from_bytes(blob[:8], "little")
    where = data.draw(st.sampled_from(["anywhere", "length", "header", "tensors"]))
    lo, hi = {"anywhere": (0, len(buf)), "length": (0, 8), "header": (8, header_end),
              "tensors": (header_end, len(buf))}[where]
    i = data.draw(st.integers(lo, hi - 1))
    kind = data.draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete"]))
    if kind == "truncate":
        return bytes(buf[:i])
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
            i = data.draw(st.integers(lo, hi - 1))
    elif kind == "overwrite":
        chunk = data.draw(st.binary(min_size=1, max_size=16))
        buf[i:i + len(chunk)] = chunk
    elif kind == "insert":
        buf[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        del buf[i:i + data.draw(st.integers(1, 16))]
    return bytes(buf)


@pytest.mark.parametrize("budget", BUDGET)
def test_raw_byte_mutations(target: Target, budget: int) -> None:
    seen: Counter[str] = Counter()

    def case(data: st.DataObject) -> None:
        blob = _raw(target.good, data)
        outcome = target.restore(blob)
        if outcome == "restored":  # the checksum covers everything that matters
            assert all(target.model.state()[k].tobytes() == v.tobytes()
                       for k, v in target.state.items())
        seen[outcome] += 1

    _run(1000 * budget, case)
    assert seen["refused"] > 900 * budget


# -- the JSON header -------------------------------------------------------------------------

def _split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _header_text(header: dict[str, Any], data: st.DataObject) -> str:
    names = sorted(k for k in header if k != "__metadata__")
    name = data.draw(st.sampled_from(names))
    entry = header[name]
    what = data.draw(st.sampled_from(["shape", "dtype", "drop", "offsets", "extra", "meta",
                                      "meta_type", "huge_int", "deep", "duplicate", "nan"]))
    if what == "shape":
        entry["shape"] = data.draw(st.lists(st.integers(-2, 2 ** 64), max_size=5))
    elif what == "dtype":
        entry["dtype"] = data.draw(st.sampled_from(["F64", "F16", "BF16", "I8", "I64", "BOOL",
                                                    "U64", "F8_E4M3", "X", ""]))
    elif what == "drop":
        del header[data.draw(st.sampled_from(names + ["__metadata__"]))]
    elif what == "offsets":
        entry["data_offsets"] = data.draw(st.lists(st.integers(-1, 2 ** 65), max_size=3))
    elif what == "extra":
        header[data.draw(st.text(max_size=6))] = {"dtype": "F32", "shape": [1],
                                                  "data_offsets": [0, 4]}
    elif what == "meta":
        md = header["__metadata__"]
        key = data.draw(st.sampled_from(sorted(md) + ["mac", "other"]))
        md[key] = data.draw(st.text(max_size=12))
    elif what == "meta_type":
        md = header["__metadata__"]
        md[data.draw(st.sampled_from(sorted(md)))] = data.draw(st.one_of(
            st.integers(), st.none(), st.lists(st.integers(), max_size=2), st.booleans()))
    text = json.dumps(header)
    if what == "huge_int":
        digits = "9" * data.draw(st.integers(4000, 20000))
        text = re.sub(r"\[(\d+)", "[" + digits, text, count=1)
    elif what == "deep":
        depth = data.draw(st.integers(900, 100_000))
        text = text[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    elif what == "duplicate":
        text = text[:-1] + f", {json.dumps(name)}: {json.dumps(entry)}" + "}"
    elif what == "nan":
        text = text[:-1] + ', "x": ' + data.draw(st.sampled_from(["NaN", "Infinity"])) + "}"
    return text


@pytest.mark.parametrize("budget", BUDGET)
def test_header_mutations(target: Target, budget: int) -> None:
    def case(data: st.DataObject) -> None:
        header, rest = _split(target.good)
        raw = _header_text(header, data).encode()
        length = len(raw) + data.draw(st.sampled_from([0, 0, 0, -1, 1, 2 ** 40, -len(raw)]))
        blob = max(length, 0).to_bytes(8, "little") + raw + rest
        if target.restore(blob) == "restored":
            assert all(target.model.state()[k].tobytes() == v.tobytes()
                       for k, v in target.state.items())

    _run(800 * budget, case)


# -- forged files with a valid checksum ------------------------------------------------------

def _forge_tensors(tensors: dict[str, np.ndarray], data: st.DataObject) -> bool:
    """Edit the tensors in place; False when the names, dtypes or shapes no longer match."""
    names = sorted(tensors)
    name = data.draw(st.sampled_from(names))
    a = tensors[name]
    what = data.draw(st.sampled_from(["values", "special", "step", "dtype", "shape", "drop",
                                      "extra", "rename"]))
    if what == "values" and a.dtype.kind == "f":
        scale = data.draw(st.sampled_from([1e-30, 1.0, 1e30, 3e38]))
        seed = data.draw(st.integers(0, 2 ** 32 - 1))
        with np.errstate(over="ignore"):  # 3e38 × a normal overflows float32 at times: fine
            tensors[name] = (np.random.default_rng(seed).standard_normal(a.shape) * scale
                             ).astype(a.dtype)
    elif what == "special" and a.dtype.kind == "f":
        b = a.copy()
        b.reshape(-1)[data.draw(st.integers(0, b.size - 1))] = data.draw(
            st.sampled_from([np.nan, np.inf, -np.inf, -1.0, -0.0, 1e-45]))
        tensors[name] = b
    elif what == "step" or (a.dtype.kind != "f" and what in ("values", "special")):
        value = data.draw(st.one_of(st.integers(-2 ** 63, 2 ** 63 - 1),
                                    st.sampled_from([-1, 0, 2 ** 53, 2 ** 53 + 1, 2 ** 62])))
        tensors[fmt.STEP_NAME] = np.array(value, np.int64)
    elif what == "dtype":
        tensors[name] = a.astype(data.draw(st.sampled_from(
            [np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_])))
        return tensors[name].dtype == a.dtype
    elif what == "shape":
        tensors[name] = a.reshape(-1) if a.ndim != 1 else a.reshape(1, -1)
        return False
    elif what == "drop":
        del tensors[name]
        return False
    elif what == "extra":
        tensors[data.draw(st.text(min_size=1, max_size=8))] = np.zeros(2, np.float32)
        return False  # an extra tensor, or one replaced by another shape
    elif what == "rename":
        tensors[name + data.draw(st.text(min_size=1, max_size=4))] = tensors.pop(name)
        return False
    return True


def _forge_metadata(md: dict[str, str], data: st.DataObject) -> bool:
    """Edit the metadata in place; False when a correct reader must refuse the result."""
    key = data.draw(st.sampled_from(["none", "producer", "fingerprint", "extra", "kind",
                                     "format_version", "checksum_version", "architecture",
                                     "drop_architecture"]))
    if key == "none":
        return True
    if key in ("producer", "fingerprint"):  # informational: covered by the checksum only
        md[key] = data.draw(st.text(max_size=20))
        return True
    if key == "extra":
        md["x-" + data.draw(st.text(max_size=6))] = data.draw(st.text(max_size=6))
        return True
    if key == "drop_architecture":  # as written before architectures were recorded
        del md["architecture"]
        return True
    if key == "kind":
        md["kind"] = data.draw(st.sampled_from(["", "edgetrain-checkpoinT", "model"]))
        return False
    if key == "architecture":
        md["architecture"] = data.draw(st.sampled_from(["", "0" * 64, md["architecture"][::-1]]))
        return False
    value = data.draw(st.one_of(st.sampled_from(["0", "1", "01", "000002", "2", "3", "+1",
                                                 "1_0", " 1", "1.0", "", "9" * 5000, "٣"]),
                                st.text(max_size=5)))
    md[key] = value
    if not re.fullmatch(r"[0-9]{1,6}", value):
        return False
    return int(value) <= fmt.FORMAT_VERSION if key == "format_version" else int(value) == 2


def _forged(target: Target, data: st.DataObject, signed: bool) -> tuple[bytes, bool]:
    """A forgery with a valid checksum, and whether a correct reader restores it."""
    source = target.signed if signed else target.good
    header, _ = _split(source)
    md = dict(header["__metadata__"])
    tensors = {k: v.copy() for k, v in load(source).items()}
    ok = _forge_tensors(tensors, data) if data.draw(st.booleans()) else True
    ok = _forge_metadata(md, data) and ok
    mac = md.pop("mac", None)
    md.pop("checksum")
    md["checksum"] = ckpt.checksum(tensors, md)
    if mac is not None:
        md["mac"] = data.draw(st.sampled_from([mac, "", ckpt.mac(b"not-the-key-0123456789", md)]))
    return save(tensors, metadata=md), ok and _valid(tensors)


@pytest.mark.parametrize("budget", BUDGET)
@pytest.mark.parametrize("backend", ["onnxruntime", "reference"])
def test_forged_checkpoints_have_predictable_outcomes(target: Target, reference_target: Target,
                                                      backend: str, budget: int) -> None:
    t = target if backend == "onnxruntime" else reference_target
    seen: Counter[tuple[str, bool]] = Counter()

    def case(data: st.DataObject) -> None:
        blob, ok = _forged(t, data, signed=False)
        outcome = t.restore(blob)
        assert outcome == ("restored" if ok else "refused")
        seen[outcome, ok] += 1

    _run((800 if backend == "onnxruntime" else 200) * budget, case)
    assert seen["restored", True] > 20 and seen["refused", False] > 100, seen


@pytest.mark.parametrize("budget", BUDGET)
def test_forged_mac_checkpoints_are_refused_with_the_key(target: Target, budget: int) -> None:
    def case(data: st.DataObject) -> None:
        blob, _ = _forged(target, data, signed=True)
        unchanged = load(blob).keys() == target.state.keys() and all(
            v.tobytes() == target.state[k].tobytes() and v.dtype == target.state[k].dtype
            for k, v in load(blob).items()) and _split(blob)[0]["__metadata__"] == _split(
                target.signed)[0]["__metadata__"]
        assert target.restore(blob, key=KEY) == ("restored" if unchanged else "refused")

    _run(400 * budget, case)
